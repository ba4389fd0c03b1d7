//! `rpc`: svp/1 over stdio with the daemon's own client ([`bkg::rpc::RpcClient`]) against the
//! real echo plug-in process, started the way the supervisor starts plug-ins.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use bkg::rpc::{CallOptions, ClientConfig, RpcClient};
use bkg_plugin_sdk::protocol::{self, methods};
use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::stats::{Goal, Metric, Samples};

const BENCH: &str = "rpc";

/// Sizes of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RpcOpts {
    pub(crate) sequential_calls: usize,
    pub(crate) callers: usize,
    pub(crate) calls_per_caller: usize,
}

/// The same environment allowlist the supervisor passes (`src/supervisor/process.rs`).
const ENV_ALLOWLIST: &[&str] = &["PATH", "HOME", "LANG", "TZ"];

pub(crate) async fn run(bkg: &Path, opts: RpcOpts) -> anyhow::Result<Vec<Metric>> {
    let dir = tempfile::tempdir()?;
    let mut cmd = tokio::process::Command::new(bkg);
    cmd.args(["plugin", "echo"])
        .env_clear()
        .envs(ENV_ALLOWLIST.iter().filter_map(|k| std::env::var_os(k).map(|v| (*k, v))))
        .env(protocol::COOKIE_ENV, protocol::COOKIE_VALUE)
        .env(protocol::TRANSPORT_ENV, "stdio")
        .env(protocol::LOG_ENV, "info")
        .current_dir(dir.path())
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let spawned = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("cannot spawn {} plugin echo", bkg.display()))?;
    let (Some(stdin), Some(stdout), Some(mut stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        anyhow::bail!("child stdio not piped");
    };
    // Drained from the first moment, like the daemon does.
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(stderr.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let client = RpcClient::start(stdout, stdin, ClientConfig::default());

    let init = json!({
        "protocolVersions": protocol::SUPPORTED_PROTOCOL_VERSIONS,
        "host": {"name": "bkg-bench", "version": env!("CARGO_PKG_VERSION"), "pid": std::process::id()},
        "plugin": {"name": "echo", "instance": "echo#1"},
        "config": null,
        "dataDir": dir.path(),
        "logLevel": "info",
        "limits": {"maxMessageBytes": protocol::DEFAULT_MAX_MESSAGE_BYTES},
        "capabilities": {"cancel": {}, "stream": {}, "setLogLevel": {}},
    });
    client.call(methods::INITIALIZE, init, CallOptions::default()).await.context("initialize")?;
    let startup = spawned.elapsed();
    client.notify(methods::INITIALIZED, json!({}));

    let params = json!({"text": "hello, bench"});
    // Warm-up: page in both binaries, grow buffers and the pending map.
    for _ in 0..2_000 {
        client.call("echo.echo", params.clone(), CallOptions::default()).await.context("echo.echo")?;
    }

    let mut seq = Samples::with_capacity(opts.sequential_calls);
    let started = Instant::now();
    for _ in 0..opts.sequential_calls {
        let t = Instant::now();
        client.call("echo.echo", params.clone(), CallOptions::default()).await.context("echo.echo")?;
        seq.push(t.elapsed());
    }
    let seq_wall = started.elapsed();

    let started = Instant::now();
    let mut tasks = Vec::with_capacity(opts.callers);
    for _ in 0..opts.callers {
        let client = client.clone();
        let params = params.clone();
        let n = opts.calls_per_caller;
        tasks.push(tokio::spawn(async move {
            let mut s = Samples::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                client.call("echo.echo", params.clone(), CallOptions::default()).await?;
                s.push(t.elapsed());
            }
            Ok::<_, bkg::rpc::Error>(s)
        }));
    }
    let mut conc = Samples::with_capacity(opts.callers * opts.calls_per_caller);
    for task in tasks {
        conc.extend(task.await?.context("concurrent echo.echo")?);
    }
    let conc_wall = started.elapsed();
    let rate = conc.len() as f64 / conc_wall.as_secs_f64();

    // EOF on stdin is the plug-in's signal to exit.
    client.close_stdin();
    if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
        let _ = child.kill().await;
    }

    let c = opts.callers;
    Ok(vec![
        Metric::info(BENCH, "spawn `bkg plugin echo` → `initialize` answered", "ms", startup.as_secs_f64() * 1e3),
        Metric::target(
            BENCH,
            "sequential round trip p50",
            "µs",
            seq.percentile(50.0),
            Goal::Below(200.0),
            "< 200 µs (#3)",
        ),
        Metric::info(BENCH, "sequential round trip p90", "µs", seq.percentile(90.0)),
        Metric::info(BENCH, "sequential round trip p99", "µs", seq.percentile(99.0)),
        Metric::info(BENCH, "sequential calls/s (1 caller)", "calls/s", seq.len() as f64 / seq_wall.as_secs_f64()),
        Metric::target(
            BENCH,
            format!("throughput, {c} concurrent callers"),
            "calls/s",
            rate,
            Goal::AtLeast(50_000.0),
            "≥ 50,000 calls/s (#3)",
        ),
        Metric::info(BENCH, format!("round trip p50, {c} concurrent callers"), "µs", conc.percentile(50.0)),
        Metric::info(BENCH, format!("round trip p99, {c} concurrent callers"), "µs", conc.percentile(99.0)),
    ])
}
