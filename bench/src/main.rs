//! `bkg-bench`: the performance benchmarks of issue 3 (and issue 4's HTTP numbers, issue 6's llm
//! relay latency), against the real `bkg` binary. Programs that print numbers, never timed
//! assertions.
//!
//! Every benchmark runs `--runs` times (fresh processes each time); the markdown table on stdout
//! shows the median and the range over the runs, the target and PASS/MISS of the
//! median. Progress and notes go to stderr. `bench/run.sh` builds release and runs them all.

// A benchmark's whole output is its report on stdout.
#![allow(clippy::print_stdout)]

mod daemon;
mod http;
mod peers;
mod relay;
mod restart;
mod rpc;
mod startup;
mod stats;
mod stderr;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::stats::Metric;

#[derive(Parser)]
#[command(name = "bkg-bench", about = "Benchmarks of the bkg daemon; prints a markdown table")]
struct Cli {
    /// The `bkg` binary (default: `bkg` next to this executable, i.e. target/release/bkg).
    #[arg(long, global = true)]
    bkg: Option<PathBuf>,
    /// Repetitions of each benchmark; the table shows median and range.
    #[arg(long, global = true, default_value_t = 3)]
    runs: usize,
    #[command(subcommand)]
    bench: Bench,
}

#[derive(clap::Args, Clone, Copy)]
struct RpcArgs {
    /// Sequential `echo.echo` calls (after 2,000 warm-up calls).
    #[arg(long, default_value_t = 20_000)]
    rpc_calls: usize,
    /// Concurrent callers.
    #[arg(long, default_value_t = 32)]
    rpc_callers: usize,
    /// Calls per concurrent caller.
    #[arg(long, default_value_t = 5_000)]
    rpc_calls_per_caller: usize,
}

#[derive(clap::Args, Clone, Copy)]
struct RestartArgs {
    /// Measured SIGKILLs per run (after 3 warm-up kills).
    #[arg(long, default_value_t = 50)]
    kills: usize,
}

#[derive(clap::Args, Clone, Copy)]
struct StderrArgs {
    /// Lines the plug-in writes to stderr.
    #[arg(long, default_value_t = 200_000)]
    lines: u64,
}

#[derive(clap::Args, Clone, Copy)]
struct HttpArgs {
    /// Sequential `GET /admin/plugins` requests (after 500 warm-up requests).
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    /// Log lines timed from plug-in to SSE client.
    #[arg(long, default_value_t = 500)]
    sse_lines: usize,
    /// SSE clients for the fan-out measurement (0 skips it).
    #[arg(long, default_value_t = 1_000)]
    fanout_clients: usize,
    /// Lines written during the fan-out measurement (below the limiter's burst of 10,000).
    #[arg(long, default_value_t = 1_000)]
    fanout_lines: u64,
}

#[derive(clap::Args, Clone, Copy)]
struct RelayArgs {
    /// Content tokens per stream (the upstream fixture emits them at a fixed pace).
    #[arg(long, default_value_t = 200)]
    tokens: usize,
    /// Milliseconds between two tokens of a stream.
    #[arg(long, default_value_t = 5)]
    pace_ms: u64,
    /// Rounds per run; a round streams over every path once alone and once `--streams` at once.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent streams of the second measurement.
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// The llm plug-in's `stream_interval_ms` (its default is 20; 0 sends each token at once).
    #[arg(long, default_value_t = 20)]
    stream_interval_ms: u64,
}

#[derive(clap::Args, Clone)]
struct RelayDump {
    /// Also append every token (CSV: emission and arrival times, relayed chunk) to this file.
    #[arg(long)]
    dump: Option<PathBuf>,
}

#[derive(clap::Args, Clone)]
struct PeersArgs {
    /// Children per supervisor (all but one are `/bin/sleep`; one is the log writer).
    #[arg(long, default_value_t = 50)]
    children: usize,
    /// Measured `kill -9`s per tool and run (after 2 warm-up kills), each of another child.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Seconds the three supervisors sit idle for the CPU/RSS measurement.
    #[arg(long, default_value_t = 30)]
    idle_s: u64,
    /// Lines (100 bytes each) the log writer puts on its stdout.
    #[arg(long, default_value_t = 200_000)]
    log_lines: u64,
    /// `supervisord` (default: target/peers-venv/bin/supervisord, from bench/peers-setup.sh).
    #[arg(long)]
    supervisord: Option<PathBuf>,
    /// `pm2` (default: target/pm2/node_modules/.bin/pm2, from bench/peers-setup.sh).
    #[arg(long)]
    pm2: Option<PathBuf>,
    /// Python for the log writer (default: `sys.executable` of `python3` on PATH).
    #[arg(long)]
    python: Option<PathBuf>,
}

#[derive(Subcommand, Clone)]
enum Bench {
    /// svp/1 over stdio: sequential and 32-caller `echo.echo` through `bkg::rpc::RpcClient`.
    Rpc(RpcArgs),
    /// SIGKILL a ready plug-in; time to the next ready process.
    Restart(RestartArgs),
    /// `bkg serve` to 4 fake plug-ins ready; daemon RSS with them idle.
    Startup,
    /// Daemon CPU per stderr line for 200,000 lines from one plug-in.
    Stderr(StderrArgs),
    /// `GET /admin/plugins` latency; SSE latency and fan-out when the logs route exists.
    Http(HttpArgs),
    /// llm `openai` backend: latency added per streamed token over a direct upstream (issue 6).
    Relay {
        #[command(flatten)]
        sizes: RelayArgs,
        #[command(flatten)]
        dump: RelayDump,
    },
    /// Plain processes under bkg, supervisord and pm2 (issue 8); not part of `all`.
    Peers(PeersArgs),
    /// Everything above but `peers`, in this order.
    All {
        #[command(flatten)]
        rpc: RpcArgs,
        #[command(flatten)]
        restart: RestartArgs,
        #[command(flatten)]
        stderr: StderrArgs,
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        relay: RelayArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bkg-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(table) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bkg-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<String> {
    let bkg = match cli.bkg {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("bkg"),
    };
    anyhow::ensure!(
        bkg.is_file(),
        "{} not found: build it (cargo build --release -p bkg) or pass --bkg",
        bkg.display()
    );
    let runs = cli.runs.max(1);
    if let Bench::Peers(a) = &cli.bench {
        return run_peers(&bkg, runs, a).await;
    }
    let mut all: Vec<Vec<Metric>> = (0..runs).map(|_| vec![]).collect();
    let (rpc, restart, startup, stderr, http, relay) = match cli.bench {
        Bench::Rpc(a) => (Some(a), None, false, None, None, None),
        Bench::Restart(a) => (None, Some(a), false, None, None, None),
        Bench::Startup => (None, None, true, None, None, None),
        Bench::Stderr(a) => (None, None, false, Some(a), None, None),
        Bench::Http(a) => (None, None, false, None, Some(a), None),
        Bench::Relay { sizes, dump } => (None, None, false, None, None, Some((sizes, dump.dump))),
        Bench::All { rpc, restart, stderr, http, relay } => {
            (Some(rpc), Some(restart), true, Some(stderr), Some(http), Some((relay, None)))
        }
        Bench::Peers(_) => (None, None, false, None, None, None),
    };
    // Runs are interleaved per benchmark (run 1, 2, 3 of rpc, then of restart…) so that one
    // benchmark's runs see the same machine state.
    if let Some(a) = rpc {
        let opts = rpc::RpcOpts {
            sequential_calls: a.rpc_calls,
            callers: a.rpc_callers,
            calls_per_caller: a.rpc_calls_per_caller,
        };
        for (i, run) in all.iter_mut().enumerate() {
            eprintln!("rpc: run {}/{runs}", i + 1);
            run.extend(rpc::run(&bkg, opts).await?);
        }
    }
    if let Some(a) = restart {
        for policy in [restart::Policy::Immediate, restart::Policy::Backoff1ms] {
            for (i, run) in all.iter_mut().enumerate() {
                eprintln!("restart ({policy:?}): run {}/{runs}", i + 1);
                run.extend(restart::run(&bkg, a.kills, policy).await?);
            }
        }
    }
    if startup {
        for (i, run) in all.iter_mut().enumerate() {
            eprintln!("startup: run {}/{runs}", i + 1);
            run.extend(startup::run(&bkg).await?);
        }
    }
    if let Some(a) = stderr {
        let variants = [
            (stderr::Source::Log, a.lines),
            (stderr::Source::Flood, a.lines),
            (stderr::Source::Log, stderr::BELOW_BURST),
        ];
        for (source, lines) in variants {
            for (i, run) in all.iter_mut().enumerate() {
                eprintln!("stderr ({source:?}, {lines} lines): run {}/{runs}", i + 1);
                run.extend(stderr::run(&bkg, lines, source).await?);
            }
        }
    }
    if let Some(a) = http {
        let opts = http::HttpOpts {
            requests: a.requests,
            sse_lines: a.sse_lines,
            fanout_clients: a.fanout_clients,
            fanout_lines: a.fanout_lines,
        };
        for (i, run) in all.iter_mut().enumerate() {
            eprintln!("http: run {}/{runs}", i + 1);
            run.extend(http::run(&bkg, opts).await?);
        }
    }
    if let Some((a, dump)) = relay {
        let opts = relay::RelayOpts {
            tokens: a.tokens,
            pace: std::time::Duration::from_millis(a.pace_ms.max(1)),
            rounds: a.rounds,
            streams: a.streams,
            stream_interval_ms: a.stream_interval_ms,
        };
        for (i, run) in all.iter_mut().enumerate() {
            eprintln!("relay: run {}/{runs}", i + 1);
            run.extend(relay::run(&bkg, opts, &dump).await?);
        }
    }
    Ok(stats::markdown(&all))
}

async fn run_peers(bkg: &std::path::Path, runs: usize, a: &PeersArgs) -> anyhow::Result<String> {
    // target/release/bkg-bench → target/
    let exe = std::env::current_exe()?;
    let target = exe.parent().and_then(std::path::Path::parent).unwrap_or(std::path::Path::new("target"));
    let supervisord = a.supervisord.clone().unwrap_or_else(|| target.join("peers-venv/bin/supervisord"));
    let pm2 = a.pm2.clone().unwrap_or_else(|| target.join("pm2/node_modules/.bin/pm2"));
    // Absolute: the tools are spawned in their own working directories.
    let found = |what: &str, path: PathBuf| {
        std::fs::canonicalize(&path).map_err(|e| {
            anyhow::anyhow!("{what} not found at {}: {e}; run bench/peers-setup.sh or pass --{what}", path.display())
        })
    };
    let supervisord = found("supervisord", supervisord)?;
    let pm2 = found("pm2", pm2)?;
    let python = match &a.python {
        Some(p) => p.clone(),
        None => peers::resolve_python()?,
    };
    let opts = peers::PeersOpts {
        children: a.children,
        kills: a.kills,
        idle: std::time::Duration::from_secs(a.idle_s),
        log_lines: a.log_lines,
        supervisord,
        pm2,
        python,
    };
    let mut all = vec![];
    for i in 0..runs {
        eprintln!("peers: run {}/{runs}", i + 1);
        all.push(peers::run(bkg, &opts, i).await?);
    }
    Ok(peers::report(&all))
}
