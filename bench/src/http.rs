//! `http` (issue 4): `GET /admin/plugins` latency over one keep-alive connection, and — when
//! the route exists — plug-in log line → SSE client latency and SSE fan-out CPU.
//!
//! Every guarded request carries the `admin` session token from `POST /auth/login`; the daemon
//! checks it with an `auth.validate` call to the apikeys plug-in on every request (no cache), so
//! that round trip is part of each number. `/health` is public.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use reqwest::StatusCode;
use reqwest::header::ACCEPT;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::daemon::{self, Daemon};
use crate::stats::{Goal, Metric, Samples};

const BENCH: &str = "http";
const NAMES: [&str; 4] = ["f1", "f2", "f3", "f4"];
const LOGS: &str = "/admin/plugins/f1/logs?tail=0";

/// Sizes of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpOpts {
    pub(crate) requests: usize,
    pub(crate) sse_lines: usize,
    pub(crate) fanout_clients: usize,
    pub(crate) fanout_lines: u64,
}

pub(crate) async fn run(bkg: &Path, opts: HttpOpts) -> anyhow::Result<Vec<Metric>> {
    let tmp = tempfile::tempdir()?;
    let plugins: Vec<Value> = NAMES.iter().map(|n| json!({"name": n, "builtin": "fake"})).collect();
    let registry = daemon::write_registry(tmp.path(), &plugins)?;
    let d = Daemon::start_logged_in(bkg, &tmp.path().join("data"), &registry).await?;
    d.wait_ready(&NAMES).await?;

    let mut out = vec![];
    // An API key with the `viewer` role, the credential a script or dashboard would use.
    let (status, created) = d.post("/admin/keys", &json!({"name": "bench", "role": "viewer"})).await?;
    ensure!(status.is_success(), "POST /admin/keys: {status} {created}");
    let api_key = created["key"].as_str().context("no key in the reply")?.to_owned();

    // A client with at most one idle connection, so every request reuses the same one. The
    // three kinds of request are interleaved so that all see the same machine conditions.
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(1).build()?;
    let kinds: [(&str, &str, Option<&str>); 3] = [
        ("GET /admin/plugins, session token", "/admin/plugins", Some(&d.token)),
        ("GET /admin/plugins, API key", "/admin/plugins", Some(&api_key)),
        ("GET /health (public, no auth)", "/health", None),
    ];
    let get = |path: &str, token: Option<&str>| {
        let req = client.get(d.url(path));
        match token {
            Some(t) => req.bearer_auth(t).send(),
            None => req.send(),
        }
    };
    let mut samples: Vec<Samples> = kinds.iter().map(|_| Samples::with_capacity(opts.requests)).collect();
    for i in 0..500 + opts.requests {
        for ((_, path, token), s) in kinds.iter().zip(samples.iter_mut()) {
            let t = Instant::now();
            let res = get(path, *token).await?;
            ensure!(res.status() == StatusCode::OK, "GET {path}: {}", res.status());
            res.bytes().await?;
            if i >= 500 {
                s.push(t.elapsed());
            }
        }
    }
    let n = crate::stats::fmt_int(opts.requests as u64);
    for (k, ((what, _, _), s)) in kinds.iter().zip(&samples).enumerate() {
        let label = format!("{what}, keep-alive, ×{n} (apikeys + 4 fake plug-ins)");
        if k == 0 {
            out.push(Metric::target(
                BENCH,
                format!("{label}: p50"),
                "ms",
                s.percentile(50.0) / 1e3,
                Goal::Below(1.0),
                "< 1 ms (#4)",
            ));
        } else {
            out.push(Metric::info(BENCH, format!("{label}: p50"), "ms", s.percentile(50.0) / 1e3));
        }
        out.push(Metric::info(BENCH, format!("{label}: p90"), "ms", s.percentile(90.0) / 1e3));
        out.push(Metric::info(BENCH, format!("{label}: p99"), "ms", s.percentile(99.0) / 1e3));
    }

    let probe = d.http.get(d.url(LOGS)).bearer_auth(&d.token).header(ACCEPT, "text/event-stream").send().await?;
    if probe.status() == StatusCode::NOT_FOUND {
        eprintln!("  http: {LOGS} is not routed (404): SSE benchmarks skipped");
    } else {
        ensure!(probe.status() == StatusCode::OK, "GET {LOGS}: {}", probe.status());
        drop(probe);
        out.extend(sse_latency(&d, opts.sse_lines).await?);
        if opts.fanout_clients > 0 {
            out.extend(sse_fanout(&d, opts.fanout_clients, opts.fanout_lines).await?);
        }
    }
    d.stop().await?;
    Ok(out)
}

/// Opens an SSE stream of `f1` and calls `on_lines` with the number of `fake line` events in
/// every chunk received.
async fn open_stream(d: &Daemon, on_lines: impl Fn(u64) + Send + 'static) -> anyhow::Result<()> {
    let mut res = d.http.get(d.url(LOGS)).bearer_auth(&d.token).header(ACCEPT, "text/event-stream").send().await?;
    ensure!(res.status() == StatusCode::OK, "GET {LOGS}: {}", res.status());
    tokio::spawn(async move {
        // Events may straddle chunks: count complete events only.
        let mut pending: Vec<u8> = vec![];
        while let Ok(Some(chunk)) = res.chunk().await {
            pending.extend_from_slice(&chunk);
            let Some(end) = pending.windows(2).rposition(|w| w == b"\n\n") else { continue };
            let complete: Vec<u8> = pending.drain(..end + 2).collect();
            let n = count(&complete, b"fake line ");
            if n > 0 {
                on_lines(n);
            }
        }
    });
    Ok(())
}

fn count(haystack: &[u8], needle: &[u8]) -> u64 {
    haystack.windows(needle.len()).filter(|w| *w == needle).count() as u64
}

/// Plug-in writes one line → an SSE client has it. The plug-in writes it while serving
/// `POST /admin/plugins/f1/rpc fake.log {lines: 1}`, so the time from sending that POST is an
/// upper bound: it includes the HTTP request and the RPC to the plug-in.
async fn sse_latency(d: &Daemon, lines: usize) -> anyhow::Result<Vec<Metric>> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    open_stream(d, move |n| {
        for _ in 0..n {
            let _ = tx.send(Instant::now());
        }
    })
    .await?;
    // The stream is open once the daemon answered; give it a moment to subscribe.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let body = json!({"method": "fake.log", "params": {"lines": 1}});
    let mut upper = Samples::with_capacity(lines);
    let mut rpc = Samples::with_capacity(lines);
    for i in 0..lines + 20 {
        let t0 = Instant::now();
        let (status, reply) = d.post("/admin/plugins/f1/rpc", &body).await?;
        let answered = t0.elapsed();
        ensure!(status.is_success(), "fake.log: {status} {reply}");
        let received = match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(at)) => at,
            _ => bail!("no SSE event within 5 s of the line"),
        };
        if i >= 20 {
            upper.push(received.duration_since(t0));
            rpc.push(answered);
        }
        // 1 line per ms stays far below the rate limit (2,000/s).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(vec![
        Metric::target(
            BENCH,
            "log line → SSE client, p99 (upper bound: from POST fake.log sent)",
            "ms",
            upper.percentile(99.0) / 1e3,
            Goal::Below(5.0),
            "< 5 ms (#4)",
        ),
        Metric::info(BENCH, "log line → SSE client, p50 (upper bound)", "ms", upper.percentile(50.0) / 1e3),
        Metric::info(BENCH, "of which POST /rpc fake.log round trip, p50", "ms", rpc.percentile(50.0) / 1e3),
    ])
}

/// `clients` SSE streams follow `f1` while it writes `lines` lines (below the rate limiter's
/// burst, so all are kept); daemon CPU over the whole delivery / (lines × clients).
async fn sse_fanout(d: &Daemon, clients: usize, lines: u64) -> anyhow::Result<Vec<Metric>> {
    let received = Arc::new(AtomicU64::new(0));
    for _ in 0..clients {
        let received = Arc::clone(&received);
        open_stream(d, move |n| {
            received.fetch_add(n, Ordering::Relaxed);
        })
        .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The limiter's bucket refills at 2,000 lines/s: wait for it to be full again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = d.pid();
    let cpu_before = daemon::cpu_seconds(pid)?;
    let t0 = Instant::now();
    let body = json!({"method": "fake.log", "params": {"lines": lines}, "timeout_ms": 120_000});
    let (status, reply) = d.post("/admin/plugins/f1/rpc", &body).await?;
    ensure!(status.is_success(), "fake.log: {status} {reply}");
    let want = lines * clients as u64;
    while received.load(Ordering::Relaxed) < want {
        if t0.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = t0.elapsed();
    let cpu = daemon::cpu_seconds(pid)? - cpu_before;
    let got = received.load(Ordering::Relaxed);
    eprintln!(
        "  http fan-out: {clients} clients × {lines} lines: {got} of {want} delivered in {} ms, daemon CPU {} ms",
        wall.as_millis(),
        (cpu * 1e3).round()
    );
    Ok(vec![
        Metric::info(
            BENCH,
            format!("SSE fan-out {clients} clients × {lines} lines: daemon CPU per delivered line"),
            "µs",
            cpu * 1e6 / got.max(1) as f64,
        ),
        Metric::info(
            BENCH,
            format!("SSE fan-out {clients} clients × {lines} lines: delivered"),
            "%",
            got as f64 * 100.0 / want as f64,
        ),
        Metric::info(
            BENCH,
            format!("SSE fan-out {clients} clients × {lines} lines: wall time"),
            "ms",
            wall.as_secs_f64() * 1e3,
        ),
    ])
}
