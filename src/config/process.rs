//! Registry fields about the process itself rather than the protocol: `protocol` (`svp/1` or
//! `none` for plain processes), readiness and liveness probes, the stop signal, user and group,
//! and the `after:` dependencies with their cycle check.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

/// What the child speaks on its stdio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Protocol {
    /// JSON-RPC over stdio with the svp/1 handshake (protocol.md).
    #[default]
    #[serde(rename = "svp/1")]
    Svp1,
    /// Any program: stdout and stderr are captured as logs, readiness comes from probes.
    #[serde(rename = "none")]
    None,
}

impl Protocol {
    pub fn is_default(&self) -> bool {
        *self == Protocol::Svp1
    }
}

/// An HTTP GET that must answer with a status in `status` (inclusive range).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    /// `http://host:port/path` (plain HTTP: probes talk to local processes).
    pub url: String,
    #[serde(default = "default_status")]
    pub status: [u16; 2],
}

fn default_status() -> [u16; 2] {
    [200, 399]
}

/// A TCP connect that must succeed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProbe {
    #[serde(default = "localhost")]
    pub host: String,
    pub port: u16,
}

fn localhost() -> String {
    "127.0.0.1".into()
}

/// A command (argv, no shell) that must exit 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecProbe {
    pub command: std::path::PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
}

/// A log line of this process (stdout or stderr) that matches `regex`; readiness only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogProbe {
    pub regex: String,
}

/// One probe: exactly one of `http`, `tcp`, `exec`, `log`, and its timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogProbe>,
    /// Wait after spawn before the first check.
    #[serde(default)]
    pub initial_delay_ms: u64,
    #[serde(default = "default_period")]
    pub period_ms: u64,
    /// Budget of one check.
    #[serde(default = "default_probe_timeout")]
    pub timeout_ms: u64,
    /// Consecutive failures that count: readiness → degraded, liveness → restart.
    #[serde(default = "default_threshold")]
    pub failure_threshold: u32,
}

fn default_period() -> u64 {
    1_000
}
fn default_probe_timeout() -> u64 {
    1_000
}
fn default_threshold() -> u32 {
    3
}

/// The kind of check a probe runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind<'a> {
    Http(&'a HttpProbe),
    Tcp(&'a TcpProbe),
    Exec(&'a ExecProbe),
    Log(&'a LogProbe),
}

impl Probe {
    /// The check this probe runs; `None` only for an unvalidated probe with no kind.
    pub fn kind(&self) -> Option<ProbeKind<'_>> {
        match (&self.http, &self.tcp, &self.exec, &self.log) {
            (Some(h), None, None, None) => Some(ProbeKind::Http(h)),
            (None, Some(t), None, None) => Some(ProbeKind::Tcp(t)),
            (None, None, Some(e), None) => Some(ProbeKind::Exec(e)),
            (None, None, None, Some(l)) => Some(ProbeKind::Log(l)),
            _ => None,
        }
    }

    pub fn period(&self) -> Duration {
        Duration::from_millis(self.period_ms)
    }
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
    pub fn initial_delay(&self) -> Duration {
        Duration::from_millis(self.initial_delay_ms)
    }

    /// Problems with this probe, each as `(.path, reason)` relative to `path`.
    fn check(&self, path: &str, liveness: bool, errors: &mut Vec<String>) {
        let kinds = [self.http.is_some(), self.tcp.is_some(), self.exec.is_some(), self.log.is_some()];
        if kinds.iter().filter(|k| **k).count() != 1 {
            errors.push(format!("{path}: set exactly one of \"http\", \"tcp\", \"exec\", \"log\""));
        }
        if self.period_ms == 0 || self.timeout_ms == 0 {
            errors.push(format!("{path}: period_ms and timeout_ms must be positive"));
        }
        if self.failure_threshold == 0 {
            errors.push(format!("{path}.failure_threshold: must be at least 1"));
        }
        if let Some(http) = &self.http {
            if let Err(e) = parse_http_url(&http.url) {
                errors.push(format!("{path}.http.url: {e}"));
            }
            let [lo, hi] = http.status;
            if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
                errors.push(format!("{path}.http.status: must be [low, high] within 100..=599"));
            }
        }
        if let Some(exec) = &self.exec
            && !exec.command.is_absolute()
        {
            errors.push(format!("{path}.exec.command: must be an absolute path"));
        }
        if let Some(log) = &self.log {
            if liveness {
                errors.push(format!("{path}.log: a log probe can only be a readiness probe"));
            } else if let Err(e) = regex::Regex::new(&log.regex) {
                errors.push(format!("{path}.log.regex: {e}"));
            }
        }
    }
}

/// `http://host[:port][/path]` → (host, port, path); IPv6 hosts in brackets.
pub fn parse_http_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or("must start with http:// (probes do not speak TLS)")?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or("unclosed '[' in the host")?;
        (host, after.strip_prefix(':'))
    } else {
        authority.split_once(':').map_or((authority, None), |(h, p)| (h, Some(p)))
    };
    if host.is_empty() || host.contains('@') {
        return Err("needs a host (and no user info)".into());
    }
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| format!("invalid port {p:?}"))?,
        None => 80,
    };
    Ok((host.to_owned(), port, path.to_owned()))
}

/// Readiness and liveness probes of a plain process.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probes {
    /// Until it passes the process is `starting`; afterwards failures mark it `degraded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Probe>,
    /// `failure_threshold` consecutive failures after it became ready kill and restart it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Probe>,
}

impl Probes {
    pub fn is_empty(&self) -> bool {
        self.readiness.is_none() && self.liveness.is_none()
    }

    pub(super) fn check(&self, errors: &mut Vec<String>) {
        if let Some(p) = &self.readiness {
            p.check(".probes.readiness", false, errors);
        }
        if let Some(p) = &self.liveness {
            p.check(".probes.liveness", true, errors);
        }
    }
}

/// Parses a signal name such as `TERM`, `SIGINT` or `hup`.
pub fn parse_signal(name: &str) -> Result<Signal, String> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    full.parse::<Signal>().map_err(|_| format!("unknown signal {name:?}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Colour {
    New,
    OnStack,
    Done,
}

/// Every dependency problem of a registry: `after` naming an unknown entry, and cycles (each
/// listed as `a → b → a`). Input: `(name, after)` in registry order; output: errors with paths.
pub fn check_dependencies(entries: &[(usize, &str, &[String])]) -> Vec<String> {
    let index: HashMap<&str, usize> = entries.iter().enumerate().map(|(i, (_, name, _))| (*name, i)).collect();
    let mut errors = Vec::new();
    let mut edges: Vec<Vec<usize>> = vec![vec![]; entries.len()];
    for (i, (pos, _, after)) in entries.iter().enumerate() {
        for (j, dep) in after.iter().enumerate() {
            match index.get(dep.as_str()) {
                Some(&d) => edges[i].push(d),
                None => errors.push(format!("$.plugins[{pos}].after[{j}]: unknown plug-in {dep:?}")),
            }
        }
    }
    // Depth-first search with colours; each cycle is reported once, from its first member in
    // registry order.
    let mut colour = vec![Colour::New; entries.len()];
    let mut reported: BTreeSet<Vec<usize>> = BTreeSet::new();
    for start in 0..entries.len() {
        if colour[start] != Colour::New {
            continue;
        }
        colour[start] = Colour::OnStack;
        // (node, index of its next edge to follow); the stack is the current path.
        let mut stack = vec![(start, 0usize)];
        while let Some((node, next)) = stack.last_mut() {
            let node = *node;
            let Some(&dep) = edges[node].get(*next) else {
                colour[node] = Colour::Done;
                stack.pop();
                continue;
            };
            *next += 1;
            match colour[dep] {
                Colour::New => {
                    colour[dep] = Colour::OnStack;
                    stack.push((dep, 0));
                }
                Colour::OnStack => {
                    let from = stack.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                    let members: Vec<usize> = stack[from..].iter().map(|(n, _)| *n).collect();
                    let mut key = members.clone();
                    key.sort_unstable();
                    if reported.insert(key) {
                        let names: Vec<&str> = members.iter().chain([&dep]).map(|n| entries[*n].1).collect();
                        errors.push(format!("$.plugins: dependency cycle in \"after\": {}", names.join(" → ")));
                    }
                }
                Colour::Done => {}
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(list: &[(&str, &[&str])]) -> Vec<String> {
        let owned: Vec<(usize, &str, Vec<String>)> =
            list.iter().enumerate().map(|(i, (n, a))| (i, *n, a.iter().map(|s| (*s).to_owned()).collect())).collect();
        let borrowed: Vec<(usize, &str, &[String])> = owned.iter().map(|(i, n, a)| (*i, *n, a.as_slice())).collect();
        check_dependencies(&borrowed)
    }

    #[test]
    fn cycles_are_listed_with_their_members() {
        let errs = deps(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"])]);
        assert_eq!(errs, vec!["$.plugins: dependency cycle in \"after\": a → b → c → a"]);
        let errs = deps(&[("a", &["a"])]);
        assert_eq!(errs, vec!["$.plugins: dependency cycle in \"after\": a → a"]);
        assert!(deps(&[("a", &[]), ("b", &["a"]), ("c", &["a", "b"])]).is_empty());
    }

    #[test]
    fn unknown_dependencies_have_a_path() {
        let errs = deps(&[("a", &[]), ("b", &["a", "zz"])]);
        assert_eq!(errs, vec!["$.plugins[1].after[1]: unknown plug-in \"zz\""]);
    }

    #[test]
    fn http_urls_and_signals() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:8080/health").unwrap(),
            ("127.0.0.1".into(), 8080, "/health".into())
        );
        assert_eq!(parse_http_url("http://localhost").unwrap(), ("localhost".into(), 80, "/".into()));
        assert_eq!(parse_http_url("http://[::1]:9/x").unwrap(), ("::1".into(), 9, "/x".into()));
        assert!(parse_http_url("https://x").is_err());
        assert!(parse_http_url("http://h:99999/").is_err());
        assert_eq!(parse_signal("term").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("SIGINT").unwrap(), Signal::SIGINT);
        assert!(parse_signal("NOPE").is_err());
    }
}
