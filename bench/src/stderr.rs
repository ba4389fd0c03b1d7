//! `stderr`: one plug-in writes 200,000 stderr lines; how much CPU does the daemon spend?
//!
//! The daemon's CPU time (utime + stime of every thread, /proc/<pid>/stat) is read before the
//! `POST /admin/plugins/f/rpc` that makes the fake plug-in write, and again once the daemon has
//! gone quiet (no new re-emitted line and no new CPU tick for two 100 ms checks). So the number
//! includes that one HTTP request and any idle ticks in the settle time: it errs high.
//!
//! Kept vs dropped: every line the rate limiter admits is re-emitted on the daemon's own log
//! (target `plugin`), which the bench reads and counts; dropped is the change of
//! `bkg_plugin_log_dropped_total{plugin="f"}` on `/metrics`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::json;

use crate::daemon::{self, Daemon};
use crate::stats::{Metric, fmt_int, fmt_num};

const BENCH: &str = "stderr";

/// How the plug-in produces the lines.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source {
    /// `fake.log {lines}`: JSON lines from the SDK's `tracing` subscriber (the normal case).
    Log,
    /// `fake.flood {bytes, line_len: 100}`: raw, non-JSON 100-byte lines written in 64 KiB blocks.
    Flood,
}

/// Lines offered in the "all kept" variant: below the limiter's burst of 10,000.
pub(crate) const BELOW_BURST: u64 = 9_000;

pub(crate) async fn run(bkg: &Path, lines: u64, source: Source) -> anyhow::Result<Vec<Metric>> {
    let tmp = tempfile::tempdir()?;
    let registry = daemon::write_registry(tmp.path(), &[json!({"name": "f", "builtin": "fake"})])?;
    let d = Daemon::start_logged_in(bkg, &tmp.path().join("data"), &registry).await?;
    d.wait_ready(&["f"]).await?;
    let pid = d.pid();

    // Idle baseline (and time for the limiter's bucket to refill after the start-up lines).
    let idle_start = daemon::cpu_seconds(pid)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_cpu_ms_per_s = (daemon::cpu_seconds(pid)? - idle_start) * 1_000.0 / 2.0;

    let (method, params, word, label) = match source {
        Source::Log => ("fake.log", json!({"lines": lines}), "fake", "fake.log (JSON lines)"),
        Source::Flood => {
            ("fake.flood", json!({"bytes": lines * 100, "line_len": 100}), "flood", "fake.flood (raw 100-byte lines)")
        }
    };
    let kept_before = d.plugin_lines("f", word);
    let dropped_before = d.metric("bkg_plugin_log_dropped_total", "f").await?;
    let cpu_before = daemon::cpu_seconds(pid)?;
    let sched_before = daemon::sched_seconds(pid)?;
    let t0 = Instant::now();
    let body = json!({"method": method, "params": params, "timeout_ms": 120_000});
    let (status, reply) = d.post("/admin/plugins/f/rpc", &body).await?;
    let written = t0.elapsed();
    ensure!(status.is_success(), "{method} failed: {status} {reply}");
    let reported = reply["result"]["lines"].as_u64().context("no line count in the result")?;
    ensure!(reported == lines, "the plug-in wrote {reported} lines, expected {lines}: {reply}");

    let settled = settle(&d, pid, word).await?;
    let cpu = daemon::cpu_seconds(pid)? - cpu_before;
    let sched = daemon::sched_seconds(pid)? - sched_before;
    let kept = d.plugin_lines("f", word) - kept_before;
    let dropped = (d.metric("bkg_plugin_log_dropped_total", "f").await? - dropped_before) as u64;
    let (_, view) = d.get("/admin/plugins/f").await?;
    let notes: Vec<String> = view["last_lines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["msg"].as_str())
        .filter(|m| m.starts_with("dropped "))
        .map(str::to_owned)
        .collect();
    d.stop().await?;
    eprintln!(
        "  stderr {label}: {lines} lines offered, {kept} kept (re-emitted), {dropped} dropped (/metrics), {} \
         unaccounted; daemon CPU {} ms; settled {} ms \
         after the reply; last drop notes: {notes:?}",
        lines as i64 - kept as i64 - dropped as i64,
        fmt_num(cpu * 1e3),
        settled.as_millis()
    );

    let n = fmt_int(lines);
    if kept == lines {
        // Nothing dropped: the cost of a line that is parsed, stored and re-emitted.
        return Ok(vec![
            Metric::info(
                BENCH,
                format!("{label} ×{n} (all kept): daemon CPU per line"),
                "µs",
                cpu * 1e6 / lines as f64,
            ),
            Metric::info(
                BENCH,
                format!("{label} ×{n} (all kept): daemon CPU per line (schedstat, ns resolution)"),
                "µs",
                sched * 1e6 / lines as f64,
            ),
            Metric::info(BENCH, format!("{label} ×{n} (all kept): lines kept"), "lines", kept as f64),
        ]);
    }
    Ok(vec![
        Metric::info(BENCH, format!("{label} ×{n}: daemon CPU per line offered"), "µs", cpu * 1e6 / lines as f64),
        Metric::info(
            BENCH,
            format!("{label} ×{n}: same, from schedstat (ns resolution)"),
            "µs",
            sched * 1e6 / lines as f64,
        ),
        Metric::info(BENCH, format!("{label} ×{n}: daemon CPU total"), "ms", cpu * 1e3),
        Metric::info(BENCH, format!("{label} ×{n}: lines kept (re-emitted on the daemon log)"), "lines", kept as f64),
        Metric::info(BENCH, format!("{label} ×{n}: lines dropped (rate limit, /metrics)"), "lines", dropped as f64),
        Metric::info(
            BENCH,
            format!("{label} ×{n}: daemon CPU per kept line (all CPU / kept)"),
            "µs",
            cpu * 1e6 / kept.max(1) as f64,
        ),
        Metric::info(BENCH, format!("{label} ×{n}: plug-in write time (RPC reply)"), "ms", written.as_secs_f64() * 1e3),
        Metric::info(BENCH, format!("{label}: idle daemon CPU before"), "ms/s", idle_cpu_ms_per_s),
    ])
}

/// Waits until neither the re-emitted line count nor the daemon's CPU time moves for two
/// consecutive 100 ms checks; returns how long that took.
async fn settle(d: &Daemon, pid: u32, word: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut last = (d.plugin_lines("f", word), daemon::cpu_seconds(pid)?);
    let mut quiet = 0;
    while quiet < 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = (d.plugin_lines("f", word), daemon::cpu_seconds(pid)?);
        quiet = if now == last { quiet + 1 } else { 0 };
        last = now;
        ensure!(start.elapsed() < Duration::from_secs(120), "the daemon did not go quiet within 120 s");
    }
    Ok(start.elapsed())
}
