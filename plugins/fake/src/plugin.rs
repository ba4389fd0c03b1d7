//! The fake's [`Plugin`] implementation: config-driven behaviour and the `fake.*` methods.
//!
//! | Method | Params | Does | Result |
//! |---|---|---|---|
//! | `fake.echo` | anything | nothing | the params without `_meta` and `stream` |
//! | `fake.sleep` | `{ms}` | sleeps (cancellable) | `{"slept_ms": ms}` |
//! | `fake.hang` | | never returns | |
//! | `fake.freeze` | | SIGSTOPs the whole process 50 ms later | `{"freezing": true}` |
//! | `fake.crash` | `{code?: i32, signal?: "abort"\|"segv"\|"kill"}` | 20 ms later exits with `code` (default 1) or raises `signal` | `{"crashing": true}` if it gets out in time |
//! | `fake.junk` | `{lines}` | writes `lines` non-JSON lines to the protocol pipe, the last one invalid UTF-8 | `{"written": lines}` |
//! | `fake.big_line` | `{bytes}` | writes `bytes` × `x` and one `\n` to the protocol pipe | `{"written": bytes}` |
//! | `fake.flood` | `{bytes, line_len?}` | writes `bytes` bytes of `line_len`-byte lines (default 100, `\n` included) to stderr | `{"written": bytes, "lines": k}` |
//! | `fake.log` | `{lines, level?}` | emits `lines` tracing events `fake line <i>` at `level` (default `info`) | `{"lines": lines}` |
//! | `fake.spawn` | `{count}` | starts `count` × `sleep 1000` in the plug-in's process group, reaped in the background | `{"pids": [...]}` |
//! | `fake.stream` | `{chunks, interval_ms?}` | sends `$/stream` `{"i": i}` chunks (if asked to stream), `interval_ms` apart | `{"chunks": sent}` |
//! | `fake.set_health` | `{status, detail?}` | changes what `plugin.health` reports from now on | `{}` |
//! | `fake.stdout_println` | `{text}` | `println!` (lands on stderr: the SDK owns fd 1) | `{}` |
//! | `fake.pids` | | | `{"pid", "pgid", "ppid"}` |
//!
//! With `crash_after_calls: n`, application call n+1 exits the process before anything else.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bkg_plugin_sdk::protocol::{DEFAULT_MAX_MESSAGE_BYTES, codes};
use bkg_plugin_sdk::{
    CallContext, Health, HealthStatus, InitializeParams, Limits, MethodInfo, Plugin, PluginInfo, RpcError,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{getpgrp, getpid, getppid};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::config::{self, FakeConfig};
use crate::raw;

/// The concurrency limit declared when the config sets none (the SDK's own default).
const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 64;
/// Upper bound for `fake.spawn`, so that a typo cannot fork-bomb the test machine.
const MAX_SPAWN: u64 = 100;

/// The fake plug-in. Its state lives behind `&self` because calls run concurrently.
#[derive(Debug, Default)]
pub(crate) struct Fake {
    /// Set once, by `initialize`.
    config: OnceLock<FakeConfig>,
    /// Application calls received so far (for `crash_after_calls`).
    calls: AtomicU64,
    /// Application calls running now (for `max_concurrent_requests`).
    in_flight: AtomicUsize,
    health: Mutex<HealthState>,
}

/// What `plugin.health` reports.
#[derive(Debug)]
struct HealthState {
    current: Health,
    /// Until then, report `starting` (config `starting_ms`; cleared by `fake.set_health`).
    starting_until: Option<Instant>,
}

impl Default for HealthState {
    fn default() -> Self {
        Self { current: Health::serving(), starting_until: None }
    }
}

/// Frees a concurrency slot when the call ends, however it ends (the SDK drops cancelled calls).
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Fake {
    fn config(&self) -> Option<&FakeConfig> {
        self.config.get()
    }

    fn health_state(&self) -> std::sync::MutexGuard<'_, HealthState> {
        // Poisoning only means a panic elsewhere while holding the lock; the state is still valid.
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a concurrency slot, or fails fast with `-32011` when `max_concurrent_requests` are
    /// already running.
    fn admit(&self) -> Result<Slot<'_>, RpcError> {
        let running = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(&self.in_flight);
        match self.config().and_then(|c| c.max_concurrent_requests) {
            Some(max) if running >= max => Err(RpcError::new(
                codes::OVERLOADED,
                format!("too many concurrent requests (max_concurrent_requests = {max})"),
            )),
            _ => Ok(slot),
        }
    }
}

impl Plugin for Fake {
    fn info(&self) -> PluginInfo {
        PluginInfo { name: "fake".into(), version: env!("CARGO_PKG_VERSION").into(), sdk: None }
    }

    fn methods(&self) -> BTreeMap<String, MethodInfo> {
        let method = |timeout_ms: u64, idempotent: bool, stream: bool| MethodInfo {
            timeout_ms: Some(timeout_ms),
            idempotent,
            stream,
        };
        [
            ("fake.echo", method(5_000, true, false)),
            ("fake.sleep", method(30_000, false, false)),
            ("fake.hang", method(2_000, false, false)),
            ("fake.freeze", method(5_000, false, false)),
            ("fake.crash", method(5_000, false, false)),
            ("fake.junk", method(5_000, false, false)),
            ("fake.big_line", method(60_000, false, false)),
            ("fake.flood", method(120_000, false, false)),
            ("fake.log", method(10_000, false, false)),
            ("fake.spawn", method(5_000, false, false)),
            ("fake.stream", method(60_000, false, true)),
            ("fake.set_health", method(5_000, true, false)),
            ("fake.stdout_println", method(5_000, false, false)),
            ("fake.pids", method(5_000, true, false)),
        ]
        .into_iter()
        .map(|(name, info)| (name.to_string(), info))
        .collect()
    }

    fn limits(&self) -> Limits {
        // Called before `initialize` (the SDK's own semaphore keeps its default then) and again
        // for the handshake reply, which declares the configured limit.
        let max = self.config().and_then(|c| c.max_concurrent_requests);
        Limits {
            max_message_bytes: Some(DEFAULT_MAX_MESSAGE_BYTES),
            max_concurrent_requests: Some(max.unwrap_or(DEFAULT_MAX_CONCURRENT_REQUESTS)),
        }
    }

    fn config_schema(&self) -> Option<Value> {
        Some(config::schema())
    }

    async fn initialize(&self, params: &InitializeParams) -> Result<(), RpcError> {
        let config = config::parse_config(&params.config)?;
        if config.fail_initialize {
            tracing::error!("failing initialize on purpose (config fail_initialize)");
            return Err(RpcError::internal("fake: initialize fails on purpose (config `fail_initialize: true`)"));
        }
        tracing::info!(?config, "fake plug-in initialized");
        {
            let mut health = self.health_state();
            if let Some(status) = config.health {
                health.current = Health { status, detail: None, checks: None };
            }
            health.starting_until = config.starting_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
        }
        // The SDK calls `initialize` at most once, so the cell is always empty here.
        let _ = self.config.set(config);
        Ok(())
    }

    async fn health(&self) -> Health {
        let health = self.health_state();
        match health.starting_until {
            Some(until) if Instant::now() < until => {
                Health::with_status(HealthStatus::Starting, "starting (config starting_ms)")
            }
            _ => health.current.clone(),
        }
    }

    async fn shutdown(&self) {
        if self.config().is_some_and(|c| c.ignore_shutdown) {
            tracing::warn!("never answering shutdown (config ignore_shutdown)");
            std::future::pending::<()>().await;
        }
        tracing::info!("shutdown");
    }

    async fn call(&self, method: &str, params: Value, ctx: CallContext) -> Result<Value, RpcError> {
        let call = self.calls.fetch_add(1, Ordering::AcqRel) + 1;
        let crash_after_calls = self.config().and_then(|c| c.crash_after_calls);
        if config::crash_due(crash_after_calls, call) {
            tracing::error!(call, crash_after_calls, method, "crashing on purpose (config crash_after_calls)");
            exit_now(1);
        }
        let _slot = self.admit()?;
        tracing::debug!(method, call, "call");
        match method {
            "fake.echo" => Ok(without_protocol_keys(params)),
            "fake.sleep" => {
                let SleepParams { ms } = parse(method, params)?;
                // A cancel or the deadline drops this future, which ends the sleep.
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(json!({ "slept_ms": ms }))
            }
            "fake.hang" => std::future::pending().await,
            "fake.freeze" => freeze(),
            "fake.crash" => crash(parse(method, params)?),
            "fake.junk" => junk(parse(method, params)?).await,
            "fake.big_line" => big_line(parse(method, params)?, &ctx).await,
            "fake.flood" => flood(parse(method, params)?, &ctx).await,
            "fake.log" => log(parse(method, params)?),
            "fake.spawn" => spawn_sleepers(parse(method, params)?),
            "fake.stream" => stream(parse(method, params)?, &ctx).await,
            "fake.set_health" => {
                let SetHealthParams { status, detail } = parse(method, params)?;
                let mut health = self.health_state();
                health.current = Health { status, detail, checks: None };
                health.starting_until = None;
                Ok(json!({}))
            }
            "fake.stdout_println" => {
                let TextParams { text } = parse(method, params)?;
                // This goes to fd 1, which the SDK pointed at stderr: it proves that a stray print
                // cannot corrupt the protocol.
                #[allow(clippy::print_stdout)]
                {
                    println!("{text}");
                }
                Ok(json!({}))
            }
            "fake.pids" => Ok(json!({
                "pid": getpid().as_raw(),
                "pgid": getpgrp().as_raw(),
                "ppid": getppid().as_raw(),
            })),
            other => Err(RpcError::method_not_found(other)),
        }
    }
}

/// Ends the process at once, skipping the SDK's orderly exit: that abruptness is the point.
#[allow(clippy::exit)]
fn exit_now(code: i32) -> ! {
    std::process::exit(code)
}

/// Parses a method's params, mapping failures to `-32602` with the method name.
fn parse<T: DeserializeOwned>(method: &str, params: Value) -> Result<T, RpcError> {
    serde_json::from_value(params).map_err(|e| RpcError::invalid_params(format!("{method}: {e}")))
}

/// The params without the protocol's own keys.
fn without_protocol_keys(mut params: Value) -> Value {
    if let Value::Object(map) = &mut params {
        map.remove("_meta");
        map.remove("stream");
    }
    params
}

fn io_error(method: &str, e: impl std::fmt::Display) -> RpcError {
    RpcError::internal(format!("{method}: {e}"))
}

/// Runs `f` on its own thread after `delay`, detached from the call and from the runtime.
fn after(delay: Duration, name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), RpcError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            std::thread::sleep(delay);
            f();
        })
        .map(drop)
        .map_err(|e| io_error(name, e))
}

#[derive(Deserialize)]
struct SleepParams {
    ms: u64,
}

#[derive(Deserialize)]
struct TextParams {
    text: String,
}

#[derive(Deserialize)]
struct SetHealthParams {
    status: HealthStatus,
    #[serde(default)]
    detail: Option<String>,
}

fn freeze() -> Result<Value, RpcError> {
    after(Duration::from_millis(50), "fake.freeze", || {
        tracing::warn!("freezing: SIGSTOP to the whole process");
        if let Err(e) = kill(getpid(), Signal::SIGSTOP) {
            tracing::error!(error = %e, "cannot SIGSTOP myself");
        }
    })?;
    Ok(json!({ "freezing": true }))
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum CrashSignal {
    Abort,
    Segv,
    Kill,
}

#[derive(Deserialize)]
struct CrashParams {
    #[serde(default)]
    code: Option<i32>,
    #[serde(default)]
    signal: Option<CrashSignal>,
}

/// `fake.crash`: after 20 ms, so the reply may or may not get out first.
fn crash(params: CrashParams) -> Result<Value, RpcError> {
    let CrashParams { code, signal } = params;
    after(Duration::from_millis(20), "fake.crash", move || match signal {
        None => {
            let code = code.unwrap_or(1);
            tracing::error!(code, "crashing on purpose: exit");
            exit_now(code);
        }
        Some(CrashSignal::Abort) => {
            tracing::error!("crashing on purpose: abort");
            raw::disable_core_dump();
            std::process::abort();
        }
        Some(CrashSignal::Segv) => {
            tracing::error!("crashing on purpose: SIGSEGV");
            // std handles SIGSEGV to report stack overflows, and a SIGSEGV that is sent
            // rather than caused by a fault would just return from that handler: restore
            // the default action first.
            if let Err(e) = raw::set_signal(Signal::SIGSEGV, false) {
                tracing::warn!(error = %e, "cannot restore the default action of SIGSEGV");
            }
            raw::disable_core_dump();
            signal_myself(Signal::SIGSEGV);
        }
        Some(CrashSignal::Kill) => {
            tracing::error!("crashing on purpose: SIGKILL");
            signal_myself(Signal::SIGKILL);
        }
    })?;
    Ok(json!({ "crashing": true }))
}

/// Sends `signal` to the whole process; exits with code 1 should that fail or not be fatal.
fn signal_myself(signal: Signal) -> ! {
    if let Err(e) = kill(getpid(), signal) {
        tracing::error!(error = %e, %signal, "cannot signal myself");
    }
    // A fatal signal sent to ourselves is delivered before `kill` returns or very soon after.
    std::thread::sleep(Duration::from_secs(1));
    tracing::error!(%signal, "still alive after signalling myself; exiting instead");
    exit_now(1);
}

#[derive(Deserialize)]
struct LinesParams {
    lines: u64,
}

async fn junk(params: LinesParams) -> Result<Value, RpcError> {
    let LinesParams { lines } = params;
    tracing::warn!(lines, "writing junk to the protocol pipe");
    // A task of its own: if the call is cancelled, the line being written is still finished.
    tokio::spawn(raw::write_junk(lines))
        .await
        .map_err(|e| io_error("fake.junk", e))?
        .map_err(|e| io_error("fake.junk", e))?;
    Ok(json!({ "written": lines }))
}

#[derive(Deserialize)]
struct BytesParams {
    bytes: u64,
}

async fn big_line(params: BytesParams, ctx: &CallContext) -> Result<Value, RpcError> {
    let BytesParams { bytes } = params;
    tracing::warn!(bytes, "writing one huge line to the protocol pipe");
    let written = tokio::spawn(raw::write_big_line(bytes, ctx.cancellation_token()))
        .await
        .map_err(|e| io_error("fake.big_line", e))?
        .map_err(|e| io_error("fake.big_line", e))?;
    Ok(json!({ "written": written }))
}

#[derive(Deserialize)]
struct FloodParams {
    bytes: u64,
    #[serde(default)]
    line_len: Option<usize>,
}

async fn flood(params: FloodParams, ctx: &CallContext) -> Result<Value, RpcError> {
    let FloodParams { bytes, line_len } = params;
    let line_len = line_len.unwrap_or(100);
    if line_len == 0 {
        return Err(RpcError::invalid_params("fake.flood: line_len must be at least 1"));
    }
    let cancel = ctx.cancellation_token();
    let flooded = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let stderr = std::io::stderr();
        raw::flood(|buf| stderr.lock().write_all(buf), bytes, line_len, &cancel)
    })
    .await
    .map_err(|e| io_error("fake.flood", e))?
    .map_err(|e| io_error("fake.flood", e))?;
    Ok(json!({ "written": flooded.bytes, "lines": flooded.lines }))
}

#[derive(Deserialize)]
struct LogParams {
    lines: u64,
    #[serde(default)]
    level: Option<String>,
}

fn log(params: LogParams) -> Result<Value, RpcError> {
    let LogParams { lines, level } = params;
    let level = level.as_deref().unwrap_or("info");
    // `tracing` needs the level at compile time, hence one macro per level.
    let emit: fn(u64) = match level {
        "trace" => |i| tracing::trace!("fake line {i}"),
        "debug" => |i| tracing::debug!("fake line {i}"),
        "info" => |i| tracing::info!("fake line {i}"),
        "warn" => |i| tracing::warn!("fake line {i}"),
        "error" => |i| tracing::error!("fake line {i}"),
        other => {
            return Err(RpcError::invalid_params(format!(
                "fake.log: unknown level {other:?} (trace, debug, info, warn or error)"
            )));
        }
    };
    (0..lines).for_each(emit);
    Ok(json!({ "lines": lines }))
}

#[derive(Deserialize)]
struct SpawnParams {
    count: u64,
}

/// `fake.spawn`: grandchildren in our process group, for the daemon's group-kill tests.
fn spawn_sleepers(params: SpawnParams) -> Result<Value, RpcError> {
    let SpawnParams { count } = params;
    if count > MAX_SPAWN {
        return Err(RpcError::invalid_params(format!("fake.spawn: count must be at most {MAX_SPAWN}")));
    }
    // The daemon clears the environment, so PATH may be unset: prefer an absolute path.
    let program =
        ["/usr/bin/sleep", "/bin/sleep"].into_iter().find(|p| std::path::Path::new(p).exists()).unwrap_or("sleep");
    let mut pids = Vec::new();
    for _ in 0..count {
        let mut child = std::process::Command::new(program)
            .arg("1000")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| io_error("fake.spawn", format!("cannot start {program}: {e}")))?;
        pids.push(child.id());
        // Reap it when it dies, so that no zombie is left while the plug-in lives.
        std::thread::Builder::new()
            .name("fake.spawn-reaper".into())
            .spawn(move || {
                let _ = child.wait();
            })
            .map_err(|e| io_error("fake.spawn", e))?;
    }
    tracing::info!(?pids, "spawned grandchildren");
    Ok(json!({ "pids": pids }))
}

#[derive(Deserialize)]
struct StreamParams {
    chunks: u64,
    #[serde(default)]
    interval_ms: Option<u64>,
}

/// `fake.stream`: `chunks` chunks, unless cancelled or not asked to stream (then none are sent).
async fn stream(params: StreamParams, ctx: &CallContext) -> Result<Value, RpcError> {
    let StreamParams { chunks, interval_ms } = params;
    let interval = Duration::from_millis(interval_ms.unwrap_or(0));
    let mut sent = 0u64;
    for i in 0..chunks {
        if ctx.is_cancelled() {
            break;
        }
        if i > 0 && !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
        if !ctx.stream(json!({ "i": i })).await {
            break;
        }
        sent += 1;
    }
    Ok(json!({ "chunks": sent }))
}

#[cfg(test)]
mod tests {
    //! The fake served in-process over in-memory pipes. Behaviours that end or freeze the process
    //! are left to the daemon's integration tests.

    use super::*;
    use bkg_plugin_sdk::testing::TestHost;

    fn start() -> TestHost {
        TestHost::start(Fake::default(), "error", 64 * 1024)
    }

    async fn health(daemon: &mut TestHost) -> Value {
        daemon.call("plugin.health", json!({})).await["result"].clone()
    }

    #[tokio::test]
    async fn handshake_declares_methods_limits_and_schema() {
        let mut daemon = start();
        let response = daemon.handshake(json!({"max_concurrent_requests": 3})).await;
        let result = &response["result"];
        assert_eq!(result["plugin"]["name"], "fake");
        assert_eq!(result["limits"]["maxConcurrentRequests"], 3);
        assert_eq!(result["methods"]["fake.hang"]["timeoutMs"], 2000);
        assert_eq!(result["methods"]["fake.stream"]["stream"], true);
        assert_eq!(result["methods"].as_object().expect("methods").len(), 14);
        assert_eq!(result["capabilities"]["configSchema"]["additionalProperties"], false);
        daemon.close().await;
    }

    #[tokio::test]
    async fn bad_or_failing_config_fails_the_handshake() {
        let mut daemon = start();
        let response = daemon.handshake(json!({"crash_after": 1})).await;
        assert_eq!(response["error"]["code"], -32602, "{response}");
        daemon.close().await;

        let mut daemon = start();
        let response = daemon.handshake(json!({"fail_initialize": true})).await;
        assert_eq!(response["error"]["code"], -32603, "{response}");
        let message = response["error"]["message"].as_str().expect("message");
        assert!(message.contains("fail_initialize"), "{message}");
        // Still not initialized: calls are refused.
        assert_eq!(daemon.call("fake.echo", json!({})).await["error"]["code"], -32002);
        daemon.close().await;
    }

    #[tokio::test]
    async fn echo_returns_params_without_protocol_keys() {
        let mut daemon = start();
        daemon.handshake(Value::Null).await;
        let params = json!({"x": [1, 2], "_meta": {"deadlineMs": 500}, "stream": true});
        assert_eq!(daemon.call("fake.echo", params).await["result"], json!({"x": [1, 2]}));
        let response = daemon.call("fake.sleep", json!({"ms": "soon"})).await;
        assert_eq!(response["error"]["code"], -32602);
        daemon.close().await;
    }

    #[tokio::test]
    async fn health_follows_config_then_set_health() {
        let mut daemon = start();
        daemon.handshake(json!({"health": "degraded", "starting_ms": 300})).await;
        assert_eq!(health(&mut daemon).await["status"], "starting");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(health(&mut daemon).await, json!({"status": "degraded"}));

        let params = json!({"status": "not_serving", "detail": "store offline"});
        assert_eq!(daemon.call("fake.set_health", params).await["result"], json!({}));
        assert_eq!(health(&mut daemon).await, json!({"status": "not_serving", "detail": "store offline"}));
        let response = daemon.call("fake.set_health", json!({"status": "fine"})).await;
        assert_eq!(response["error"]["code"], -32602);
        daemon.close().await;
    }

    #[tokio::test]
    async fn max_concurrent_requests_is_enforced() {
        let mut daemon = start();
        daemon.handshake(json!({"max_concurrent_requests": 1})).await;
        let slow = daemon.request("fake.sleep", json!({"ms": 300})).await;
        let rejected = daemon.request("fake.pids", json!({})).await;
        let response = daemon.recv().await;
        assert_eq!(response["id"], rejected);
        assert_eq!(response["error"]["code"], -32011);
        let response = daemon.recv().await;
        assert_eq!(response["id"], slow);
        assert_eq!(response["result"], json!({"slept_ms": 300}));
        // The slot is free again.
        let pids = daemon.call("fake.pids", json!({})).await;
        assert_eq!(pids["result"]["pid"], std::process::id());
        daemon.close().await;
    }

    #[tokio::test]
    async fn stream_sends_chunks_then_the_count() {
        let mut daemon = start();
        daemon.handshake(Value::Null).await;
        let id = daemon.request("fake.stream", json!({"chunks": 3, "stream": true})).await;
        for seq in 0..3 {
            let chunk = daemon.recv().await;
            assert_eq!(chunk["params"], json!({"id": id, "seq": seq, "data": {"i": seq}}));
        }
        assert_eq!(daemon.recv().await["result"], json!({"chunks": 3}));
        // Not asked to stream: nothing is sent.
        assert_eq!(daemon.call("fake.stream", json!({"chunks": 3})).await["result"], json!({"chunks": 0}));
        daemon.close().await;
    }

    #[tokio::test]
    async fn sleep_and_hang_are_cancellable() {
        let mut daemon = start();
        daemon.handshake(Value::Null).await;
        for (method, params) in [("fake.hang", json!({})), ("fake.sleep", json!({"ms": 60_000}))] {
            let id = daemon.request(method, params).await;
            daemon.send(json!({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": id}})).await;
            let response = daemon.recv().await;
            assert_eq!(response["id"], id);
            assert_eq!(response["error"]["code"], -32800);
        }
        daemon.close().await;
    }

    #[tokio::test]
    async fn log_checks_its_level() {
        let mut daemon = start();
        daemon.handshake(Value::Null).await;
        let response = daemon.call("fake.log", json!({"lines": 3, "level": "warn"})).await;
        assert_eq!(response["result"], json!({"lines": 3}));
        let response = daemon.call("fake.log", json!({"lines": 1, "level": "loud"})).await;
        assert_eq!(response["error"]["code"], -32602);
        daemon.close().await;
    }

    #[test]
    fn junk_lines_are_not_json_and_the_last_is_not_utf8() {
        let lines: Vec<Vec<u8>> = (0..3).map(|i| raw::junk_line(i, 3)).collect();
        assert_eq!(lines[0], b"this is not json 0\n");
        assert!(lines.iter().all(|l| l.ends_with(b"\n") && serde_json::from_slice::<Value>(l).is_err()));
        assert!(std::str::from_utf8(&lines[1]).is_ok());
        assert!(std::str::from_utf8(&lines[2]).is_err());
    }

    #[test]
    fn flood_writes_exactly_the_requested_bytes_in_whole_lines() {
        let cancel = tokio_util::sync::CancellationToken::new();
        for (bytes, line_len) in [(0, 100), (1, 100), (250, 100), (300, 100), (200_000, 7), (5, 1)] {
            let mut out = Vec::new();
            let flooded = raw::flood(
                |buf| {
                    out.extend_from_slice(buf);
                    Ok(())
                },
                bytes,
                line_len,
                &cancel,
            )
            .expect("flood");
            assert_eq!(out.len() as u64, bytes);
            assert_eq!(flooded.bytes, bytes);
            let newlines = out.iter().filter(|b| **b == b'\n').count() as u64;
            assert_eq!(flooded.lines, newlines, "bytes {bytes}, line_len {line_len}");
            assert_eq!(flooded.lines, bytes.div_ceil(line_len as u64));
            assert!(out.split(|b| *b == b'\n').all(|line| line.len() < line_len));
        }
    }
}
