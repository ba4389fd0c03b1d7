//! The plug-in side of svp/1: a plug-in author implements [`Plugin`], calls [`run`], and the
//! SDK does the rest (handshake, version negotiation, `$/ping`, `plugin.health`, deadlines,
//! streaming, cancellation with exactly one final response, `shutdown`, exit on stdin EOF, the
//! parent-death watch and the claim of fd 1).
//!
//! Reading never waits for a handler: every request runs in its own task, so a slow call cannot
//! delay `$/ping`, `$/cancelRequest` or another request (protocol.md §2.7). Notifications are
//! handled in arrival order, inline.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::codec::{Frame, LineDecoder, Overflow};
use crate::logging::{self, LogLevelHandle};
use crate::protocol::{
    self, CancelParams, Capabilities, DEFAULT_MAX_MESSAGE_BYTES, Health, InitializeParams, InitializeResult, Limits,
    Message, Meta, MethodInfo, PluginInfo, RequestId, RpcError, SUPPORTED_PROTOCOL_VERSIONS, SetLogLevelParams,
    StreamParams, codes, methods,
};

/// What a plug-in author implements. Every method but [`Plugin::info`], [`Plugin::methods`] and
/// [`Plugin::call`] has a sensible default.
pub trait Plugin: Send + Sync + 'static {
    /// Name and version of this plug-in.
    fn info(&self) -> PluginInfo;

    /// The application methods this plug-in serves. Calls to anything else get `-32601`.
    fn methods(&self) -> BTreeMap<String, MethodInfo>;

    /// Called once with the `initialize` params (config, data dir). An error fails the handshake,
    /// and the daemon marks the plug-in `failed` without restarting it.
    fn initialize(&self, _params: &InitializeParams) -> impl Future<Output = Result<(), RpcError>> + Send {
        async { Ok(()) }
    }

    /// Readiness (`plugin.health`).
    fn health(&self) -> impl Future<Output = Health> + Send {
        async { Health::serving() }
    }

    /// Serves one application call. When the call is cancelled or its deadline passes, the SDK
    /// drops this future and answers for it; long synchronous work should poll
    /// [`CallContext::is_cancelled`].
    fn call(
        &self,
        method: &str,
        params: Value,
        ctx: CallContext,
    ) -> impl Future<Output = Result<Value, RpcError>> + Send;

    /// Called on `shutdown` after in-flight calls have finished: persist state here.
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Limits declared in the handshake.
    fn limits(&self) -> Limits {
        Limits { max_message_bytes: Some(DEFAULT_MAX_MESSAGE_BYTES), max_concurrent_requests: Some(64) }
    }

    /// An optional JSON schema for this plug-in's config.
    fn config_schema(&self) -> Option<Value> {
        None
    }
}

/// Per-call context: cancellation, the deadline and the stream sink.
#[derive(Clone)]
pub struct CallContext {
    id: RequestId,
    cancel: CancellationToken,
    stream_requested: bool,
    finished: Arc<AtomicBool>,
    seq: Arc<AtomicU64>,
    out: mpsc::Sender<Vec<u8>>,
}

impl CallContext {
    /// A context not attached to any connection, for calling [`Plugin::call`] directly in unit
    /// tests: never cancelled, and [`CallContext::stream`] sends nothing.
    pub fn detached() -> Self {
        let (out, _) = mpsc::channel(1);
        Self {
            id: RequestId::Num(0),
            cancel: CancellationToken::new(),
            stream_requested: false,
            finished: Arc::new(AtomicBool::new(false)),
            seq: Arc::new(AtomicU64::new(0)),
            out,
        }
    }

    /// A streaming context whose `$/stream` lines go to the returned receiver, for unit tests of
    /// code that streams.
    #[cfg(feature = "testing")]
    pub fn capturing() -> (Self, mpsc::Receiver<Vec<u8>>) {
        let (out, lines) = mpsc::channel(1024);
        let ctx = Self { stream_requested: true, out, ..Self::detached() };
        (ctx, lines)
    }

    /// True once the daemon cancelled the call or its deadline passed.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes when the call is cancelled.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// A token that is cancelled with the call; hand it to blocking work.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Whether the caller asked for `$/stream` chunks (`params.stream: true`).
    pub fn streaming(&self) -> bool {
        self.stream_requested
    }

    /// Sends one `$/stream` chunk. Returns false (and sends nothing) once the call has finished or
    /// was cancelled, or when the caller did not ask for a stream.
    pub async fn stream(&self, data: Value) -> bool {
        if !self.stream_requested || self.finished.load(Ordering::Acquire) || self.cancel.is_cancelled() {
            return false;
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let line = protocol::encode_notification(methods::STREAM, StreamParams { id: self.id.clone(), seq, data });
        self.out.send(line).await.is_ok()
    }
}

/// Options for [`serve_io`]; [`run`] fills them from the environment.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Poll `getppid()` and exit when the parent changes (protocol.md §2.1.6).
    pub watch_parent: bool,
    /// On exit, kill the rest of our process group when we lead it (no orphaned grandchildren).
    pub reap_group: bool,
}

/// How the serve loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// stdin EOF after `shutdown`: exit code 0.
    Shutdown,
    /// stdin EOF without `shutdown`, or the parent died: exit code 1.
    Abandoned,
}

/// Entry point for a plug-in binary: checks the cookie, claims stdio, installs logging, serves.
pub fn run<P: Plugin>(plugin: P) -> ExitCode {
    if std::env::var(protocol::COOKIE_ENV).as_deref() != Ok(protocol::COOKIE_VALUE) {
        eprintln!(
            "{}: this is a bkg plug-in; it speaks svp/1 on stdin/stdout and is started by `bkg serve` \
             (see plugins.json), not by hand",
            plugin.info().name
        );
        return ExitCode::from(1);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let reason = runtime.block_on(async move {
        let level = std::env::var(protocol::LOG_ENV).unwrap_or_else(|_| "info".into());
        let log_handle = logging::install(&level);
        let stdio = match crate::stdio::claim() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot claim stdio");
                return ExitReason::Abandoned;
            }
        };
        let options = ServeOptions { watch_parent: true, reap_group: true };
        serve_io(plugin, stdio.input, stdio.output, log_handle, options).await
    });
    // Blocking tasks (for example a model thread) must not keep a plug-in alive after EOF.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match reason {
        ExitReason::Shutdown => ExitCode::SUCCESS,
        ExitReason::Abandoned => ExitCode::from(1),
    }
}

struct Shared<P> {
    plugin: P,
    out: mpsc::Sender<Vec<u8>>,
    in_flight: Mutex<HashMap<RequestId, CancellationToken>>,
    /// Counts running application calls; `shutdown` waits for it to drain.
    tracker: tokio_util::task::TaskTracker,
    permits: Arc<Semaphore>,
    initialized: AtomicBool,
    shutting_down: AtomicBool,
    methods: BTreeMap<String, MethodInfo>,
    log_level: LogLevelHandle,
}

/// Serves svp/1 over the given byte streams until stdin EOF or parent death.
pub async fn serve_io<P: Plugin>(
    plugin: P,
    input: Pin<Box<dyn AsyncRead + Send>>,
    output: Pin<Box<dyn AsyncWrite + Send>>,
    log_level: LogLevelHandle,
    options: ServeOptions,
) -> ExitReason {
    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(1024);
    let writer = tokio::spawn(write_loop(output, out_rx));
    let limits = plugin.limits();
    let max_in = limits.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
    let shared = Arc::new(Shared {
        methods: plugin.methods(),
        plugin,
        out: out_tx,
        in_flight: Mutex::new(HashMap::new()),
        tracker: tokio_util::task::TaskTracker::new(),
        permits: Arc::new(Semaphore::new(limits.max_concurrent_requests.unwrap_or(64).max(1))),
        initialized: AtomicBool::new(false),
        shutting_down: AtomicBool::new(false),
        log_level,
    });

    let parent_gone = CancellationToken::new();
    if options.watch_parent {
        tokio::spawn(watch_parent(parent_gone.clone()));
    }

    let mut frames = FramedRead::with_capacity(input, LineDecoder::new(max_in, Overflow::Discard), 64 * 1024);
    let reason = loop {
        let frame = tokio::select! {
            frame = frames.next() => frame,
            () = parent_gone.cancelled() => {
                tracing::warn!("parent process went away; exiting");
                break ExitReason::Abandoned;
            }
        };
        match frame {
            None => {
                break if shared.shutting_down.load(Ordering::Acquire) {
                    ExitReason::Shutdown
                } else {
                    tracing::info!("stdin closed without shutdown; exiting");
                    ExitReason::Abandoned
                };
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "reading stdin failed; exiting");
                break ExitReason::Abandoned;
            }
            Some(Ok(Frame::Oversized(n))) => {
                tracing::error!(bytes = n, cap = max_in, "discarded an oversized message");
            }
            Some(Ok(Frame::Truncated(_))) => {}
            Some(Ok(Frame::Line(line))) => handle_line(&shared, &line).await,
        }
    };

    // Cancel whatever still runs so that blocking work stops, give the calls a moment to send
    // their final responses, then let the writer flush what is queued. Both waits are bounded:
    // a handler that ignores cancellation must not keep the process alive.
    for token in shared.in_flight.lock().values() {
        token.cancel();
    }
    shared.tracker.close();
    let _ = tokio::time::timeout(Duration::from_millis(500), shared.tracker.wait()).await;
    drop(shared);
    let _ = tokio::time::timeout(Duration::from_millis(500), writer).await;
    if options.reap_group {
        kill_rest_of_group();
    }
    reason
}

async fn write_loop(mut output: Pin<Box<dyn AsyncWrite + Send>>, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        crate::codec::coalesce(&mut batch, &first, &mut rx);
        if output.write_all(&batch).await.is_err() || output.flush().await.is_err() {
            // The daemon is gone; the reader will see EOF.
            return;
        }
    }
}

async fn send<P: Plugin>(shared: &Shared<P>, line: Vec<u8>) {
    let _ = shared.out.send(line).await;
}

async fn reply<P: Plugin>(shared: &Shared<P>, id: &RequestId, outcome: Result<&Value, &RpcError>) {
    send(shared, protocol::encode_response(Some(id), outcome)).await;
}

async fn handle_line<P: Plugin>(shared: &Arc<Shared<P>>, line: &[u8]) {
    match protocol::decode(line) {
        Err(e) => {
            tracing::warn!(error = %e, "undecodable message");
            send(shared, protocol::encode_response(None, Err(&e.to_rpc_error()))).await;
        }
        Ok(Message::Response { id, .. }) => {
            tracing::warn!(%id, "ignoring a response: plug-ins send no requests in svp/1");
        }
        Ok(Message::Notification { method, params }) => handle_notification(shared, &method, params.as_deref()),
        Ok(Message::Request { id, method, params }) => handle_request(shared, id, method, params).await,
    }
}

fn handle_notification<P: Plugin>(shared: &Shared<P>, method: &str, params: Option<&RawValue>) {
    match method {
        methods::INITIALIZED => tracing::debug!("handshake complete"),
        methods::CANCEL => match protocol::parse_params::<CancelParams>(params) {
            // Unknown or finished ids are ignored: the race is expected (protocol.md §2.9).
            Ok(p) => {
                if let Some(token) = shared.in_flight.lock().get(&p.id) {
                    token.cancel();
                }
            }
            Err(e) => tracing::warn!(error = %e, "bad $/cancelRequest"),
        },
        methods::SET_LOG_LEVEL => match protocol::parse_params::<SetLogLevelParams>(params) {
            Ok(p) => {
                if let Err(e) = shared.log_level.set(&p.level) {
                    tracing::warn!(error = %e, "bad $/setLogLevel");
                }
            }
            Err(e) => tracing::warn!(error = %e, "bad $/setLogLevel"),
        },
        other => tracing::debug!(method = other, "ignoring unknown notification"),
    }
}

async fn handle_request<P: Plugin>(
    shared: &Arc<Shared<P>>,
    id: RequestId,
    method: String,
    params: Option<Box<RawValue>>,
) {
    if method == methods::INITIALIZE {
        let outcome = initialize(shared, params.as_deref()).await;
        match &outcome {
            Ok(v) => reply(shared, &id, Ok(v)).await,
            Err(e) => reply(shared, &id, Err(e)).await,
        }
        return;
    }
    if !shared.initialized.load(Ordering::Acquire) {
        let err = RpcError::new(codes::NOT_INITIALIZED, "initialize first");
        return reply(shared, &id, Err(&err)).await;
    }
    // `$/ping` is answered straight from the dispatch loop: it measures that this loop is alive.
    if method == methods::PING {
        return reply(shared, &id, Ok(&Value::Object(Default::default()))).await;
    }
    if shared.shutting_down.load(Ordering::Acquire) {
        let err = RpcError::new(codes::SHUTTING_DOWN, "shutting down");
        return reply(shared, &id, Err(&err)).await;
    }
    match method.as_str() {
        methods::SHUTDOWN => {
            shared.shutting_down.store(true, Ordering::Release);
            let shared = Arc::clone(shared);
            tokio::spawn(async move {
                shared.tracker.close();
                shared.tracker.wait().await;
                shared.plugin.shutdown().await;
                reply(&shared, &id, Ok(&Value::Null)).await;
            });
        }
        methods::HEALTH => {
            let shared = Arc::clone(shared);
            tokio::spawn(async move {
                let health = shared.plugin.health().await;
                let value = serde_json::to_value(health).unwrap_or(Value::Null);
                reply(&shared, &id, Ok(&value)).await;
            });
        }
        m if m.starts_with("$/") || !shared.methods.contains_key(m) => {
            reply(shared, &id, Err(&RpcError::method_not_found(m))).await;
        }
        _ => {
            let Ok(permit) = Arc::clone(&shared.permits).try_acquire_owned() else {
                let err = RpcError::new(codes::OVERLOADED, "too many concurrent requests");
                return reply(shared, &id, Err(&err)).await;
            };
            let params_value: Value = match params.as_deref().map(|p| serde_json::from_str(p.get())) {
                None => Value::Object(Default::default()),
                Some(Ok(v)) => v,
                Some(Err(e)) => return reply(shared, &id, Err(&RpcError::invalid_params(e.to_string()))).await,
            };
            let meta: Meta =
                params_value.get("_meta").and_then(|m| serde_json::from_value(m.clone()).ok()).unwrap_or_default();
            let stream_requested = params_value.get("stream").and_then(Value::as_bool).unwrap_or(false);
            let token = CancellationToken::new();
            shared.in_flight.lock().insert(id.clone(), token.clone());
            let ctx = CallContext {
                id: id.clone(),
                cancel: token.clone(),
                stream_requested,
                finished: Arc::new(AtomicBool::new(false)),
                seq: Arc::new(AtomicU64::new(0)),
                out: shared.out.clone(),
            };
            let shared2 = Arc::clone(shared);
            shared.tracker.spawn(async move {
                let _permit = permit;
                let finished = Arc::clone(&ctx.finished);
                let deadline = meta.deadline_ms.map(Duration::from_millis);
                let work = shared2.plugin.call(&method, params_value, ctx);
                let outcome = run_with_deadline(work, &token, deadline).await;
                // Exactly one final response: mark the call finished so that no chunk follows it.
                finished.store(true, Ordering::Release);
                shared2.in_flight.lock().remove(&id);
                match &outcome {
                    Ok(v) => reply(&shared2, &id, Ok(v)).await,
                    Err(e) => reply(&shared2, &id, Err(e)).await,
                }
            });
        }
    }
}

async fn run_with_deadline(
    work: impl Future<Output = Result<Value, RpcError>>,
    token: &CancellationToken,
    deadline: Option<Duration>,
) -> Result<Value, RpcError> {
    let sleep = async {
        match deadline {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    // `biased`: if the work finished in the same poll as a cancel, its result wins (one response).
    tokio::select! {
        biased;
        res = work => res,
        () = token.cancelled() => Err(RpcError::cancelled()),
        () = sleep => {
            token.cancel();
            Err(RpcError::new(codes::DEADLINE_EXCEEDED, "deadline exceeded"))
        }
    }
}

async fn initialize<P: Plugin>(shared: &Shared<P>, params: Option<&RawValue>) -> Result<Value, RpcError> {
    if shared.initialized.load(Ordering::Acquire) {
        return Err(RpcError::new(codes::INVALID_REQUEST, "already initialized"));
    }
    let params: InitializeParams = protocol::parse_params(params)?;
    let Some(version) =
        params.protocol_versions.iter().copied().filter(|v| SUPPORTED_PROTOCOL_VERSIONS.contains(v)).max()
    else {
        return Err(RpcError::new(codes::UNSUPPORTED_PROTOCOL_VERSION, "unsupported protocol version").with_data(
            serde_json::json!({
                "supported": SUPPORTED_PROTOCOL_VERSIONS, "requested": params.protocol_versions,
            }),
        ));
    };
    if let Some(level) = &params.log_level {
        let _ = shared.log_level.set(level);
    }
    shared.plugin.initialize(&params).await?;
    shared.initialized.store(true, Ordering::Release);
    let result = InitializeResult {
        protocol_version: version,
        plugin: PluginInfo {
            sdk: Some(format!("bkg-plugin-sdk/{}", env!("CARGO_PKG_VERSION"))),
            ..shared.plugin.info()
        },
        methods: shared.methods.clone(),
        capabilities: Capabilities {
            health: Some(serde_json::json!({})),
            cancel: Some(serde_json::json!({})),
            stream: Some(serde_json::json!({})),
            set_log_level: Some(serde_json::json!({})),
            config_schema: shared.plugin.config_schema(),
        },
        limits: shared.plugin.limits(),
    };
    serde_json::to_value(result).map_err(|e| RpcError::internal(e.to_string()))
}

async fn watch_parent(gone: CancellationToken) {
    let original = nix::unistd::getppid();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        if nix::unistd::getppid() != original {
            gone.cancel();
            return;
        }
    }
}

/// When this process leads its own process group (the daemon spawns plug-ins that way), kill
/// every other member so that no grandchild outlives the plug-in, even when the daemon itself
/// was SIGKILLed and cannot do it.
fn kill_rest_of_group() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::{Pid, getpgrp, getpid};
    let me = getpid();
    if getpgrp() != me {
        return;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid == me.as_raw() {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // Fields after the command name (which may contain spaces) start after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let pgrp = rest.split_whitespace().nth(2).and_then(|s| s.parse::<i32>().ok());
        if pgrp == Some(me.as_raw()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}
