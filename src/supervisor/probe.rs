//! Readiness and liveness checks of plain (`protocol: "none"`) processes: HTTP GET with a status
//! range, TCP connect, a command that must exit 0, or a log line matching a regex.
//!
//! A check never takes longer than its probe's `timeout_ms`; its outcome is `Ok` or a short
//! human-readable reason that ends up in the plug-in's state and log.

use std::process::Stdio;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::process::{ExecProbe, HttpProbe, TcpProbe, parse_http_url};
use crate::config::{Probe, ProbeKind};
use crate::logs::PluginLog;

/// Largest HTTP response head read to find the status line.
const MAX_STATUS_LINE: usize = 1024;

/// Runs the checks of one probe for one process.
pub(super) struct Checker {
    probe: Probe,
    /// For a log probe: the pattern, the log, and the sequence number of the next line to look at
    /// (the first line of this process at spawn).
    lines: Option<(regex::Regex, Arc<PluginLog>, u64)>,
    /// A log probe passes once and stays passed.
    matched: bool,
}

impl Checker {
    /// `first_seq`: the log sequence number of the process's first line.
    pub(super) fn new(probe: &Probe, log: &Arc<PluginLog>, first_seq: u64) -> Self {
        let lines = match probe.kind() {
            Some(ProbeKind::Log(l)) => regex::Regex::new(&l.regex).ok().map(|re| (re, Arc::clone(log), first_seq)),
            _ => None,
        };
        Self { probe: probe.clone(), lines, matched: false }
    }

    pub(super) fn probe(&self) -> &Probe {
        &self.probe
    }

    /// One check, bounded by the probe's timeout.
    pub(super) async fn check(&mut self) -> Result<(), String> {
        let timeout = self.probe.timeout();
        let outcome = match self.probe.kind() {
            Some(ProbeKind::Http(http)) => tokio::time::timeout(timeout, check_http(http)).await,
            Some(ProbeKind::Tcp(tcp)) => tokio::time::timeout(timeout, check_tcp(tcp)).await,
            Some(ProbeKind::Exec(exec)) => tokio::time::timeout(timeout, check_exec(exec)).await,
            Some(ProbeKind::Log(_)) => return self.check_log(),
            None => return Err("probe has no check".into()),
        };
        outcome.unwrap_or_else(|_| Err(format!("no answer within {} ms", self.probe.timeout_ms)))
    }

    /// Looks at the lines logged since the last check (from the ring, so a burst between two
    /// checks is not missed); passes once one of them matched.
    fn check_log(&mut self) -> Result<(), String> {
        if self.matched {
            return Ok(());
        }
        let Some((re, log, next_seq)) = &mut self.lines else { return Err("invalid regex".into()) };
        let after = next_seq.checked_sub(1);
        for line in log.subscribe(after, usize::MAX).backlog {
            *next_seq = line.seq + 1;
            if line.stream != "daemon" && re.is_match(&line.msg) {
                self.matched = true;
                return Ok(());
            }
        }
        Err(format!("no log line matched /{}/ yet", re.as_str()))
    }
}

async fn check_tcp(tcp: &TcpProbe) -> Result<(), String> {
    TcpStream::connect((tcp.host.as_str(), tcp.port))
        .await
        .map(drop)
        .map_err(|e| format!("tcp {}:{}: {e}", tcp.host, tcp.port))
}

/// A minimal HTTP/1.0 GET: enough to read the status line of a local health endpoint.
async fn check_http(http: &HttpProbe) -> Result<(), String> {
    let (host, port, path) = parse_http_url(&http.url)?;
    let mut stream = TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("GET {}: {e}", http.url))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: bkg-probe\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("GET {}: {e}", http.url))?;
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < MAX_STATUS_LINE {
        let n = stream.read(&mut buf).await.map_err(|e| format!("GET {}: {e}", http.url))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let status_line = String::from_utf8_lossy(&head);
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("GET {}: no HTTP status line in the answer", http.url))?;
    let [lo, hi] = http.status;
    if (lo..=hi).contains(&status) { Ok(()) } else { Err(format!("GET {} answered {status}", http.url)) }
}

async fn check_exec(exec: &ExecProbe) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(&exec.command);
    cmd.args(&exec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    let status = cmd.status().await.map_err(|e| format!("{}: {e}", exec.command.display()))?;
    if status.success() { Ok(()) } else { Err(format!("{} exited with {status}", exec.command.display())) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn probe(json: serde_json::Value) -> Probe {
        serde_json::from_value(json).unwrap()
    }

    async fn serve_once(status: u16) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_checks_the_status_range() {
        let log = crate::logs::LogHub::new().plugin("p");
        let ok = serve_once(204).await;
        let bad = serve_once(503).await;
        let mut c =
            Checker::new(&probe(serde_json::json!({"http": {"url": format!("http://127.0.0.1:{ok}/h")}})), &log, 0);
        assert_eq!(c.check().await, Ok(()));
        let mut c =
            Checker::new(&probe(serde_json::json!({"http": {"url": format!("http://127.0.0.1:{bad}/")}})), &log, 0);
        assert!(c.check().await.unwrap_err().contains("answered 503"));
    }

    #[tokio::test]
    async fn tcp_and_exec_checks() {
        let log = crate::logs::LogHub::new().plugin("p");
        let port = serve_once(200).await;
        let mut c = Checker::new(&probe(serde_json::json!({"tcp": {"port": port}})), &log, 0);
        assert_eq!(c.check().await, Ok(()));
        let mut c = Checker::new(&probe(serde_json::json!({"exec": {"command": "/bin/false"}})), &log, 0);
        assert!(c.check().await.is_err());
        let mut c = Checker::new(&probe(serde_json::json!({"exec": {"command": "/bin/true"}})), &log, 0);
        assert_eq!(c.check().await, Ok(()));
    }
}
