//! One plug-in process from spawn to reap: handshake, readiness, liveness pings, health polls,
//! misbehaviour checks, and the graceful stop that escalates `shutdown` → EOF → SIGTERM →
//! SIGKILL on the whole process group.
//!
//! An instance task owns its `Child` and nothing else; it reports to the actor with
//! [`InstanceEvent`]s and always ends with exactly one `Exited` after the child was reaped and
//! the rest of its process group killed.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bkg_plugin_sdk::codec::{Frame, LineDecoder, Overflow};
use bkg_plugin_sdk::protocol::{self, Health, HealthStatus, InitializeResult, codes, methods};
use futures_util::StreamExt;
use nix::sys::signal::Signal;
use serde_json::json;
use tokio::io::AsyncRead;
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::plain;
use super::process::{self, SpawnError};
use super::state::ExitInfo;
use crate::config::{Launch, PluginName, PluginSpec, Protocol};
use crate::logs::{Level, LogSink, MAX_LINE_BYTES, PluginLog};
use crate::rpc::{self, CallOptions, ClientConfig, RpcClient};

/// Oversized frames within [`MISBEHAVIOUR_WINDOW`] that trigger a restart (protocol.md §2.2).
const MAX_OVERSIZED: u64 = 3;
/// Junk lines per window that mark the plug-in degraded.
const MAX_JUNK: u64 = 100;
const MISBEHAVIOUR_WINDOW: Duration = Duration::from_secs(60);
/// Period of readiness polls while starting.
const READY_POLL: Duration = Duration::from_millis(250);
/// The final SIGKILL wait; only a process stuck in the kernel outlives it.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// What an instance reports to the actor.
#[derive(Debug)]
pub(super) enum InstanceEvent {
    Spawned {
        name: PluginName,
        generation: u64,
        pid: u32,
    },
    /// Ready to serve; an svp/1 plug-in brings its client and handshake, a plain process neither.
    Ready {
        name: PluginName,
        generation: u64,
        client: Option<RpcClient>,
        init: Option<Box<InitializeResult>>,
    },
    Health {
        name: PluginName,
        generation: u64,
        health: Health,
    },
    Exited {
        name: PluginName,
        generation: u64,
        exit: ExitInfo,
    },
}

/// Everything an instance needs; built by the actor.
pub(super) struct InstanceCtx {
    pub spec: Arc<PluginSpec>,
    pub generation: u64,
    pub work_dir: PathBuf,
    pub log: Arc<PluginLog>,
    pub log_level: String,
    /// See `SupervisorConfig::owner`.
    pub owner: String,
    pub events: mpsc::UnboundedSender<InstanceEvent>,
    /// Cancelled to ask for a graceful stop.
    pub stop: CancellationToken,
    /// Cancelled to skip straight to SIGKILL (second signal, daemon exit deadline).
    pub force: CancellationToken,
    /// Keys the daemon adds to this built-in's config (see `SupervisorConfig::injected`).
    pub injected: Option<serde_json::Map<String, serde_json::Value>>,
}

/// How the running phase ended.
pub(super) enum Ending {
    Exited(ExitStatus),
    StopRequested,
    Kill { reason: String, fatal: bool },
}

pub(super) async fn run(ctx: InstanceCtx) {
    let name = ctx.spec.name.clone();
    let generation = ctx.generation;
    let exit = run_inner(&ctx).await;
    let level = if exit.fatal || exit.code != Some(0) { Level::Warn } else { Level::Info };
    LogSink::note(&ctx.log, level, format!("process ended: {}", exit.reason));
    let _ = ctx.events.send(InstanceEvent::Exited { name, generation, exit });
}

async fn run_inner(ctx: &InstanceCtx) -> ExitInfo {
    let spec = Arc::clone(&ctx.spec);
    let work_dir = ctx.work_dir.clone();
    let level = ctx.log_level.clone();
    let instance = process::instance_marker(ctx.spec.name.as_str(), ctx.generation);
    let marks = process::Marks { instance: instance.clone(), owner: ctx.owner.clone() };
    // Lines of this process start here (a log readiness probe looks only at these).
    let first_seq = ctx.log.next_seq();
    // Hashing the executable for the sha256 pin is blocking file I/O.
    let spawned = tokio::task::spawn_blocking(move || process::spawn(&spec, &work_dir, &level, &marks)).await;
    let mut child = match spawned {
        Ok(Ok(child)) => child,
        Ok(Err(e)) => return fatal_spawn(e),
        Err(e) => return ExitInfo { code: None, signal: None, reason: format!("spawn task failed: {e}"), fatal: true },
    };
    let Some(pid) = child.id() else {
        return ExitInfo { code: None, signal: None, reason: "child exited before it had a pid".into(), fatal: false };
    };
    let svp = ctx.spec.protocol == Protocol::Svp1;
    let stdin = if svp { child.stdin.take() } else { None };
    let (Some(stdout), Some(stderr), true) = (child.stdout.take(), child.stderr.take(), stdin.is_some() || !svp) else {
        process::signal_group(pid, Signal::SIGKILL);
        let _ = child.wait().await;
        return ExitInfo { code: None, signal: None, reason: "child stdio was not piped".into(), fatal: true };
    };
    // stderr is drained from the first moment, always: an undrained pipe blocks the child after
    // 64 KiB (protocol.md §1 E). A plain process's stdout is a log stream too.
    let mut drains = vec![tokio::spawn(drain_lines(stderr, LogSink::new(Arc::clone(&ctx.log), "stderr")))];
    let client = match stdin {
        Some(stdin) => Some(RpcClient::start(
            stdout,
            stdin,
            ClientConfig { default_timeout: ctx.spec.timeouts.call(), ..ClientConfig::default() },
        )),
        None => {
            drains.push(tokio::spawn(drain_lines(stdout, LogSink::new(Arc::clone(&ctx.log), "stdout"))));
            None
        }
    };
    LogSink::note(&ctx.log, Level::Info, format!("process started (pid {pid}, generation {})", ctx.generation));
    let _ = ctx.events.send(InstanceEvent::Spawned { name: ctx.spec.name.clone(), generation: ctx.generation, pid });

    let ending = match &client {
        Some(client) => supervise(ctx, client, &mut child).await,
        None => plain::supervise(ctx, &mut child, first_seq).await,
    };
    let on_its_own = matches!(ending, Ending::Exited(_));
    let status = match ending {
        Ending::Exited(status) => Ok(status),
        Ending::StopRequested => stop_gracefully(ctx, client.as_ref(), &mut child, pid).await,
        Ending::Kill { reason, fatal } => {
            tracing::warn!(plugin = %ctx.spec.name, %reason, "killing plug-in");
            process::signal_group(pid, Signal::SIGKILL);
            let status = wait_bounded(&mut child, KILL_WAIT).await;
            Err((reason, fatal, status))
        }
    };
    // Whatever happened, nothing of this instance survives it: grandchildren that ignored
    // SIGTERM, that the plug-in never told about its exit, or that left the group (`setsid`) are
    // killed. They are found by the marker in their environment (a /proc scan: blocking I/O).
    let marker = instance.clone();
    let leftovers = tokio::task::spawn_blocking(move || process::instance_members(&marker)).await.unwrap_or_default();
    process::signal_group(pid, Signal::SIGKILL);
    for leftover in &leftovers {
        process::kill_process(*leftover);
    }
    // Still running after the main process exited on its own: it forked into the background.
    let left_behind = if on_its_own { leftovers } else { vec![] };
    if let Some(client) = &client {
        client.close_stdin();
    }
    // Let the last lines (a panic message) reach the ring before reporting the exit.
    let _ = tokio::time::timeout(Duration::from_secs(1), futures_util::future::join_all(drains)).await;
    let mut exit = match status {
        Ok(status) => exit_info(status, String::new(), false),
        Err((reason, fatal, Some(status))) => exit_info(status, reason, fatal),
        Err((reason, fatal, None)) => ExitInfo { code: None, signal: None, reason, fatal },
    };
    if !left_behind.is_empty() {
        exit.reason = format!(
            "{}, leaving {} process(es) running (pid {}): it daemonized; supervised programs must stay in \
             the foreground (look for a --foreground / --nodaemon / -f option). They were killed.",
            exit.reason,
            left_behind.len(),
            left_behind.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        );
    }
    exit
}

fn fatal_spawn(e: SpawnError) -> ExitInfo {
    ExitInfo { code: None, signal: None, reason: e.to_string(), fatal: true }
}

/// Builds the exit record; a non-empty `reason` (why we killed it) wins over the raw status.
fn exit_info(status: ExitStatus, reason: String, fatal: bool) -> ExitInfo {
    use std::os::unix::process::ExitStatusExt;
    let described = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("killed by signal {}", s.as_str()),
            Err(_) => format!("killed by signal {sig}"),
        },
        (None, None) => "exited".to_string(),
    };
    let reason = if reason.is_empty() { described } else { format!("{reason} ({described})") };
    ExitInfo { code: status.code(), signal: status.signal(), reason, fatal }
}

/// Handshake, readiness, then the running phase; returns how it ended.
async fn supervise(ctx: &InstanceCtx, client: &RpcClient, child: &mut Child) -> Ending {
    let init = tokio::select! {
        res = handshake(ctx, client) => match res {
            Ok(init) => init,
            Err(Ending::Kill { reason, fatal }) => {
                // If the process died on its own, report its real exit (code 78 matters).
                if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_millis(200), child.wait()).await {
                    return Ending::Exited(status);
                }
                return Ending::Kill { reason, fatal };
            }
            Err(other) => return other,
        },
        status = child.wait() => return exited(status),
        () = ctx.stop.cancelled() => return Ending::StopRequested,
    };
    let _ = ctx.events.send(InstanceEvent::Ready {
        name: ctx.spec.name.clone(),
        generation: ctx.generation,
        client: Some(client.clone()),
        init: Some(Box::new(init)),
    });

    let (verdict_tx, verdicts) = mpsc::channel(8);
    let monitor_stop = CancellationToken::new();
    let _stop_monitor = monitor_stop.clone().drop_guard();
    tokio::spawn(monitor(ctx.spec.clone(), client.clone(), verdict_tx, monitor_stop));
    run_until_ending(ctx, child, verdicts).await
}

/// The running phase of any process: until it exits, a stop or kill is requested, or its monitor
/// says to kill it; health verdicts are passed on to the actor.
pub(super) async fn run_until_ending(
    ctx: &InstanceCtx,
    child: &mut Child,
    mut verdicts: mpsc::Receiver<Verdict>,
) -> Ending {
    loop {
        tokio::select! {
            status = child.wait() => return exited(status),
            () = ctx.stop.cancelled() => return Ending::StopRequested,
            () = ctx.force.cancelled() => return Ending::Kill { reason: "forced stop".into(), fatal: false },
            Some(verdict) = verdicts.recv() => match verdict {
                Verdict::Health(health) => {
                    let _ = ctx.events.send(InstanceEvent::Health {
                        name: ctx.spec.name.clone(), generation: ctx.generation, health,
                    });
                }
                Verdict::Kill(reason) => return Ending::Kill { reason, fatal: false },
            },
        }
    }
}

pub(super) fn exited(status: std::io::Result<ExitStatus>) -> Ending {
    match status {
        Ok(status) => Ending::Exited(status),
        Err(e) => Ending::Kill { reason: format!("waiting for the child failed: {e}"), fatal: false },
    }
}

/// `initialize` → checks → `initialized` → `plugin.health` until `serving`.
async fn handshake(ctx: &InstanceCtx, client: &RpcClient) -> Result<InitializeResult, Ending> {
    let spec = &ctx.spec;
    let fatal = |reason: String| Ending::Kill { reason, fatal: true };
    let mut config = spec.config.clone();
    if let (Some(extra), Some(obj)) = (&ctx.injected, config.as_object_mut()) {
        obj.extend(extra.clone());
    }
    let params = json!({
        "protocolVersions": protocol::SUPPORTED_PROTOCOL_VERSIONS,
        "host": {"name": "bkg", "version": env!("CARGO_PKG_VERSION"), "pid": std::process::id()},
        "plugin": {"name": spec.name, "instance": format!("{}#{}", spec.name, ctx.generation)},
        "config": config,
        "dataDir": ctx.work_dir,
        "logLevel": ctx.log_level,
        "limits": {"maxMessageBytes": protocol::DEFAULT_MAX_MESSAGE_BYTES},
        "capabilities": {"cancel": {}, "stream": {}, "setLogLevel": {}},
    });
    let timeout = spec.timeouts.startup();
    let options = CallOptions { timeout: Some(timeout), stream: None };
    let value = match client.call(methods::INITIALIZE, params, options).await {
        Ok(v) => v,
        Err(rpc::Error::Timeout(_)) => {
            return Err(fatal(format!("handshake failed: no answer to initialize within {timeout:?}")));
        }
        Err(rpc::Error::Remote(e)) if e.code == codes::UNSUPPORTED_PROTOCOL_VERSION => {
            let supported = e.data.as_ref().and_then(|d| d.get("supported")).cloned().unwrap_or_default();
            return Err(fatal(format!(
                "handshake failed: unsupported protocol version (daemon offers {:?}, plug-in supports {supported})",
                protocol::SUPPORTED_PROTOCOL_VERSIONS
            )));
        }
        Err(rpc::Error::Remote(e)) => {
            return Err(fatal(format!("handshake failed: initialize returned: {}", e.message)));
        }
        // The process went away; the caller reports its real exit status.
        Err(e) => return Err(Ending::Kill { reason: format!("handshake failed: {e}"), fatal: false }),
    };
    let init: InitializeResult = serde_json::from_value(value)
        .map_err(|e| fatal(format!("handshake failed: malformed initialize result: {e}")))?;
    if !protocol::SUPPORTED_PROTOCOL_VERSIONS.contains(&init.protocol_version) {
        return Err(fatal(format!(
            "handshake failed: plug-in chose protocol version {} which was not offered",
            init.protocol_version
        )));
    }
    // A built-in must be the plug-in it claims to be. A third-party executable may be registered
    // under any name (two instances of one binary), so its self-reported name is advisory.
    match &spec.launch {
        Launch::Builtin { builtin } if init.plugin.name != *builtin => {
            return Err(fatal(format!("handshake failed: built-in {builtin:?} answered as {:?}", init.plugin.name)));
        }
        Launch::Command { .. } if init.plugin.name != spec.name.as_str() => {
            tracing::info!(plugin = %spec.name, reported = %init.plugin.name, "plug-in reports a different name");
        }
        _ => {}
    }
    if init.limits.max_message_bytes == Some(0) || init.limits.max_concurrent_requests == Some(0) {
        return Err(fatal("handshake failed: plug-in declared zero limits".into()));
    }
    client.apply_handshake(&init.limits, &init.methods);
    client.notify(methods::INITIALIZED, json!({}));
    if init.capabilities.health.is_none() {
        return Ok(init);
    }
    let deadline = tokio::time::Instant::now() + spec.timeouts.ready();
    loop {
        let options = CallOptions { timeout: Some(Duration::from_secs(2)), stream: None };
        match client.call(methods::HEALTH, json!({}), options).await {
            Ok(v) => match serde_json::from_value::<Health>(v) {
                Ok(h) if matches!(h.status, HealthStatus::Serving | HealthStatus::Degraded) => return Ok(init),
                Ok(_) => {}
                Err(e) => return Err(fatal(format!("handshake failed: malformed plugin.health result: {e}"))),
            },
            Err(rpc::Error::Unavailable) => {
                return Err(Ending::Kill { reason: "exited while starting".into(), fatal: false });
            }
            Err(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Ending::Kill { reason: format!("not ready within {:?}", spec.timeouts.ready()), fatal: false });
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// What a monitor task tells the instance.
pub(super) enum Verdict {
    Health(Health),
    Kill(String),
}

/// Liveness pings, periodic health, and the misbehaviour counters of the connection.
async fn monitor(spec: Arc<PluginSpec>, client: RpcClient, out: mpsc::Sender<Verdict>, stop: CancellationToken) {
    let t = &spec.timeouts;
    let tick = (t.ping_idle() / 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut misses = 0u32;
    let mut last_health = tokio::time::Instant::now();
    let mut window_start = tokio::time::Instant::now();
    let (mut oversized_base, mut junk_base) = (0, 0);
    let mut junk_degraded = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(tick) => {}
        }
        // Liveness: any traffic proves it; ping only after `ping_idle` of silence.
        if client.idle_for() >= t.ping_idle() {
            let options = CallOptions { timeout: Some(t.ping_timeout()), stream: None };
            match client.call(methods::PING, json!({}), options).await {
                Ok(_) => misses = 0,
                Err(rpc::Error::Unavailable) => return,
                Err(_) => {
                    misses += 1;
                    if misses >= t.ping_misses {
                        let _ = out.send(Verdict::Kill(format!("hung: {misses} pings missed"))).await;
                        return;
                    }
                }
            }
        } else {
            misses = 0;
        }
        let stats = client.stats();
        if window_start.elapsed() >= MISBEHAVIOUR_WINDOW {
            window_start = tokio::time::Instant::now();
            oversized_base = stats.oversized_frames.load(Ordering::Relaxed);
            junk_base = stats.junk_lines.load(Ordering::Relaxed);
        }
        let oversized = stats.oversized_frames.load(Ordering::Relaxed) - oversized_base;
        if oversized >= MAX_OVERSIZED {
            let reason = format!("misbehaving: {oversized} oversized messages within {MISBEHAVIOUR_WINDOW:?}");
            let _ = out.send(Verdict::Kill(reason)).await;
            return;
        }
        let junk = stats.junk_lines.load(Ordering::Relaxed) - junk_base;
        let junk_now = junk > MAX_JUNK;
        if junk_now != junk_degraded {
            junk_degraded = junk_now;
            let health = if junk_now {
                Health::with_status(HealthStatus::Degraded, format!("{junk} junk lines on stdout within a minute"))
            } else {
                Health::serving()
            };
            let _ = out.send(Verdict::Health(health)).await;
            last_health = tokio::time::Instant::now();
        }
        if !junk_degraded && last_health.elapsed() >= t.health_interval() {
            last_health = tokio::time::Instant::now();
            let options = CallOptions { timeout: Some(Duration::from_secs(2)), stream: None };
            if let Ok(Ok(health)) =
                client.call(methods::HEALTH, json!({}), options).await.map(serde_json::from_value::<Health>)
            {
                let _ = out.send(Verdict::Health(health)).await;
            }
        }
    }
}

/// svp/1: `shutdown` → close stdin → stop signal → SIGKILL, each step bounded (protocol.md
/// §2.12). A plain process (no client) starts at the stop signal.
async fn stop_gracefully(
    ctx: &InstanceCtx,
    client: Option<&RpcClient>,
    child: &mut Child,
    pid: u32,
) -> Result<ExitStatus, (String, bool, Option<ExitStatus>)> {
    let t = &ctx.spec.timeouts;
    if let Some(client) = client {
        client.begin_shutdown();
        if !client.is_closed() {
            let options = CallOptions { timeout: Some(t.shutdown()), stream: None };
            tokio::select! {
                _ = client.call(methods::SHUTDOWN, json!({}), options) => {}
                status = child.wait() => return status.map_err(|e| (e.to_string(), false, None)),
                () = ctx.force.cancelled() => {}
            }
        }
        client.close_stdin();
        if !ctx.force.is_cancelled()
            && let Some(status) = wait_or_force(child, t.stop_grace(), &ctx.force).await
        {
            return Ok(status);
        }
    }
    if !ctx.force.is_cancelled() {
        let signal = ctx.spec.stop_signal();
        let (level, why) =
            if client.is_some() { (Level::Warn, "did not exit after stdin closed; ") } else { (Level::Info, "") };
        LogSink::note(&ctx.log, level, format!("{why}sending {} to its process group", signal.as_str()));
        process::signal_group(pid, signal);
        if let Some(status) = wait_or_force(child, t.stop_grace(), &ctx.force).await {
            return Ok(status);
        }
    }
    LogSink::note(&ctx.log, Level::Warn, "still running; sending SIGKILL to its process group");
    process::signal_group(pid, Signal::SIGKILL);
    match wait_bounded(child, KILL_WAIT).await {
        Some(status) => Ok(status),
        None => Err(("did not die after SIGKILL".into(), false, None)),
    }
}

async fn wait_or_force(child: &mut Child, grace: Duration, force: &CancellationToken) -> Option<ExitStatus> {
    tokio::select! {
        status = tokio::time::timeout(grace, child.wait()) => status.ok().and_then(Result::ok),
        () = force.cancelled() => None,
    }
}

async fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    tokio::time::timeout(limit, child.wait()).await.ok().and_then(Result::ok)
}

/// Reads a pipe to EOF into the plug-in's log, never stalling the child.
async fn drain_lines(pipe: impl AsyncRead + Unpin, mut sink: LogSink) {
    let mut frames = FramedRead::with_capacity(pipe, LineDecoder::new(MAX_LINE_BYTES, Overflow::Split), 64 * 1024);
    while let Some(frame) = frames.next().await {
        match frame {
            Ok(Frame::Line(line)) => sink.line(&line, false),
            Ok(Frame::Truncated(piece)) => sink.line(&piece, true),
            Ok(Frame::Oversized(_)) => {}
            Err(_) => break,
        }
    }
}
