//! `GET /admin/system`: resource use of the daemon and of each running plug-in, read from
//! `/proc` (pid, cpu seconds, resident memory, threads, open fds, uptime).
//!
//! A plug-in's numbers are summed over its whole process group (the plug-in and any helpers it
//! started), because that is what the plug-in costs the host. Reading `/proc` is blocking file
//! I/O over possibly hundreds of entries, so it runs on the blocking pool.
//! This module only reads; it never signals (that is the supervisor's job).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::guard::Caller;
use crate::supervisor::process::group_members;

/// What `/proc/<pid>` says about one process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(super) struct ProcStats {
    /// User plus system CPU time.
    pub(super) cpu_seconds: f64,
    pub(super) rss_bytes: u64,
    pub(super) threads: u64,
    /// `None` when `/proc/<pid>/fd` is not readable (another user's process).
    pub(super) open_fds: Option<u64>,
    /// Time since the process started.
    pub(super) uptime_s: f64,
}

/// Clock ticks per second and page size, read once per request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Host {
    ticks: f64,
    page_size: u64,
    /// Seconds since boot (`/proc/uptime`).
    uptime_s: f64,
}

impl Host {
    pub(super) fn read() -> Self {
        use nix::unistd::{SysconfVar, sysconf};
        // USER_HZ is 100 on every Linux architecture we run on; sysconf is the authority.
        let ticks = sysconf(SysconfVar::CLK_TCK).ok().flatten().filter(|t| *t > 0).map_or(100.0, |t| t as f64);
        let page_size =
            sysconf(SysconfVar::PAGE_SIZE).ok().flatten().and_then(|p| u64::try_from(p).ok()).unwrap_or(4096);
        let uptime_s = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        Self { ticks, page_size, uptime_s }
    }

    /// Reads one process; `None` when it is gone.
    pub(super) fn process(&self, pid: u32) -> Option<ProcStats> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let mut stats = parse_stat(&stat, self)?;
        stats.open_fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok().map(|d| d.count() as u64);
        Some(stats)
    }
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may contain spaces and parentheses,
/// so fields are counted from the last `)`.
fn parse_stat(stat: &str, host: &Host) -> Option<ProcStats> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts at field 3 (state), so field n is at index n - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let (utime, stime) = (field(14)?, field(15)?);
    let threads = field(20)?;
    let start_ticks = field(22)?;
    let rss_pages = field(24)?;
    Some(ProcStats {
        cpu_seconds: (utime + stime) as f64 / host.ticks,
        rss_bytes: rss_pages * host.page_size,
        threads,
        open_fds: None,
        uptime_s: (host.uptime_s - start_ticks as f64 / host.ticks).max(0.0),
    })
}

/// Sums a process group; the uptime is the leader's.
fn group_stats(host: &Host, leader: u32) -> Option<(ProcStats, Vec<u32>)> {
    let lead = host.process(leader)?;
    let mut members = group_members(leader);
    members.sort_unstable();
    let mut total = ProcStats { uptime_s: lead.uptime_s, ..ProcStats::default() };
    let mut fds = Some(0);
    let mut live = Vec::with_capacity(members.len());
    for pid in members {
        let Some(p) = (if pid == leader { Some(lead) } else { host.process(pid) }) else { continue };
        total.cpu_seconds += p.cpu_seconds;
        total.rss_bytes += p.rss_bytes;
        total.threads += p.threads;
        fds = fds.zip(p.open_fds).map(|(a, b)| a + b);
        live.push(pid);
    }
    // A leader that already left its own group (or a racing exit) still reports itself.
    if live.is_empty() {
        return Some((lead, vec![leader]));
    }
    total.open_fds = fds;
    Some((total, live))
}

fn stats_json(pid: u32, stats: Option<&ProcStats>) -> Value {
    match stats {
        Some(s) => json!({
            "pid": pid,
            "cpu_seconds": round3(s.cpu_seconds),
            "rss_bytes": s.rss_bytes,
            "threads": s.threads,
            "open_fds": s.open_fds,
            "uptime_s": round3(s.uptime_s),
        }),
        None => json!({ "pid": pid }),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Handler of `GET /admin/system`.
pub(super) async fn get(_caller: Caller, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let snapshot = state.supervisor().snapshot();
    let plugins: Vec<(String, &'static str, Option<u32>)> =
        snapshot.plugins.iter().map(|p| (p.name.clone(), p.state.as_str(), p.pid)).collect();
    let daemon_uptime = state.uptime();
    let body = tokio::task::spawn_blocking(move || report(&plugins, daemon_uptime))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("reading /proc failed: {e}")))?;
    Ok(Json(body))
}

/// Builds the report (blocking: reads `/proc`).
fn report(plugins: &[(String, &'static str, Option<u32>)], daemon_uptime: Duration) -> Value {
    let host = Host::read();
    let pid = std::process::id();
    let mut daemon = stats_json(pid, host.process(pid).as_ref());
    // The daemon's uptime is the time since it started serving, like `/health`'s `uptime_s`.
    daemon["uptime_s"] = json!(round3(daemon_uptime.as_secs_f64()));
    let plugins: Vec<Value> = plugins
        .iter()
        .map(|(name, state, pid)| {
            let mut entry = match pid.and_then(|pid| Some((pid, group_stats(&host, pid)?))) {
                Some((pid, (stats, members))) => {
                    let mut v = stats_json(pid, Some(&stats));
                    v["processes"] = json!(members.len());
                    v["group_pids"] = json!(members);
                    v
                }
                None => json!({ "pid": pid }),
            };
            entry["name"] = json!(name);
            entry["state"] = json!(state);
            entry
        })
        .collect();
    json!({
        "time": crate::logs::now_rfc3339(),
        "clock_ticks_per_s": host.ticks,
        "daemon": daemon,
        "plugins": plugins,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_hostile_command_name() {
        let host = Host { ticks: 100.0, page_size: 4096, uptime_s: 1000.0 };
        // Fields 3.. after the name: state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime(14) stime(15) cutime cstime prio nice threads(20) itreal
        // starttime(22) vsize rss(24) ...
        let stat = "42 (evil) name (x)) S 1 42 42 0 -1 4194560 10 0 0 0 250 50 0 0 20 0 7 0 40000 123456 300 18446744073709551615";
        let s = parse_stat(stat, &host).unwrap();
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.threads, 7);
        assert_eq!(s.rss_bytes, 300 * 4096);
        assert_eq!(s.uptime_s, 600.0);
        assert!(parse_stat("42 (truncated", &host).is_none());
        assert!(parse_stat("42 (x) S 1", &host).is_none());
    }

    #[test]
    fn reads_this_process() {
        let host = Host::read();
        let me = host.process(std::process::id()).unwrap();
        assert!(me.rss_bytes > 0);
        assert!(me.threads >= 1);
        assert!(me.open_fds.unwrap() >= 3);
        let (group, members) = group_stats(&host, std::process::id()).unwrap();
        assert!(!members.is_empty());
        assert!(group.rss_bytes >= me.rss_bytes || members == vec![std::process::id()]);
    }
}
