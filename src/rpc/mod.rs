//! The daemon's JSON-RPC client for one plug-in connection: request ids, the pending map,
//! per-call deadlines, cancellation and `$/stream` routing.
//!
//! Architecture Invariant: `rpc` knows nothing about which plug-in it talks to or why. Every
//! call has a deadline. The reader never waits on a caller: replies go to oneshots and stream
//! chunks to bounded channels with `try_send`, so one slow consumer cannot stall the pipe.

mod transport;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use std::time::{Duration, Instant};

use bkg_plugin_sdk::protocol::{self, CancelParams, Limits, MethodInfo, RequestId, RpcError, codes, methods};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Errors of a call, as seen by the daemon. Local conditions are kept apart from errors the
/// plug-in sent (protocol.md §2.10: they must not be mistaken for each other).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The connection is closed: the plug-in exited, is stopping, or was never ready.
    #[error("plug-in unavailable")]
    Unavailable,
    /// The daemon's own deadline passed; the call was cancelled in the plug-in.
    #[error("deadline of {0:?} exceeded")]
    Timeout(Duration),
    /// Too many calls in flight or the write queue is full; retry later.
    #[error("plug-in overloaded")]
    Overloaded,
    /// The request is larger than the plug-in accepts.
    #[error("request of {0} bytes exceeds the plug-in's limit")]
    TooLarge(usize),
    /// The stream consumer fell behind and the call was cancelled.
    #[error("stream consumer too slow")]
    SlowConsumer,
    /// The plug-in answered with an error.
    #[error(transparent)]
    Remote(#[from] RpcError),
}

/// Per-call options.
#[derive(Debug, Default)]
pub struct CallOptions {
    /// Deadline of the call; the client's default when `None`.
    pub timeout: Option<Duration>,
    /// Where `$/stream` chunks go; also sets `params.stream = true`.
    pub stream: Option<mpsc::Sender<Value>>,
}

/// Counters of one connection.
#[derive(Debug, Default)]
pub struct Stats {
    pub calls: AtomicU64,
    pub junk_lines: AtomicU64,
    pub oversized_frames: AtomicU64,
    pub late_messages: AtomicU64,
    pub timeouts: AtomicU64,
    /// Call latency by method (exported by `/metrics`).
    pub latency: crate::metrics::MethodLatency,
}

struct Pending {
    reply: oneshot::Sender<Result<Box<RawValue>, RpcError>>,
    stream: Option<mpsc::Sender<Value>>,
}

struct Inner {
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
    out: mpsc::Sender<Vec<u8>>,
    closed: CancellationToken,
    close_input: CancellationToken,
    shutting_down: AtomicBool,
    default_timeout: Duration,
    negotiated: RwLock<Negotiated>,
    stats: Stats,
    /// Time of the last message from the plug-in, as ms since `epoch`.
    last_activity_ms: AtomicU64,
    epoch: Instant,
}

/// Limits learnt from the plug-in's handshake.
struct Negotiated {
    /// Application calls in flight at most (`limits.maxConcurrentRequests`).
    max_concurrent: usize,
    /// Largest request line the plug-in accepts (`limits.maxMessageBytes`).
    max_message_bytes: usize,
    /// Declared `timeoutMs` per method.
    timeouts: HashMap<String, Duration>,
}

/// A cheap-clone handle to one plug-in connection.
#[derive(Clone)]
pub struct RpcClient(Arc<Inner>);

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub struct ClientConfig {
    pub default_timeout: Duration,
    /// Cap on lines the plug-in sends us (16 MiB by default).
    pub max_incoming_bytes: usize,
    /// Cap on lines we send (the plug-in's declared input cap).
    pub max_outgoing_bytes: usize,
    /// Bounded write queue (protocol.md §2.7).
    pub queue: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_secs(30),
            max_incoming_bytes: protocol::DEFAULT_MAX_MESSAGE_BYTES,
            max_outgoing_bytes: protocol::DEFAULT_MAX_MESSAGE_BYTES,
            queue: 1024,
        }
    }
}

impl RpcClient {
    /// Starts the reader and writer tasks over a child's stdout and stdin.
    pub fn start<R, W>(stdout: R, stdin: W, config: ClientConfig) -> Self
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (out_tx, out_rx) = mpsc::channel(config.queue);
        let inner = Arc::new(Inner {
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            out: out_tx,
            closed: CancellationToken::new(),
            close_input: CancellationToken::new(),
            shutting_down: AtomicBool::new(false),
            default_timeout: config.default_timeout,
            negotiated: RwLock::new(Negotiated {
                max_concurrent: usize::MAX,
                max_message_bytes: config.max_outgoing_bytes,
                timeouts: HashMap::new(),
            }),
            stats: Stats::default(),
            last_activity_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let client = RpcClient(inner);
        tokio::spawn(transport::write_loop(stdin, out_rx, client.0.close_input.clone(), client.clone()));
        tokio::spawn(transport::read_loop(stdout, config.max_incoming_bytes, client.clone()));
        client
    }

    /// Calls `method` and waits for its final response, at most until the deadline.
    ///
    /// Dropping the returned future (an HTTP client went away) cancels the call in the plug-in.
    pub async fn call(&self, method: &str, params: Value, options: CallOptions) -> Result<Value, Error> {
        let raw = self.call_raw(method, params, options).await?;
        serde_json::from_str(raw.get()).map_err(|e| Error::Remote(RpcError::internal(format!("bad result: {e}"))))
    }

    /// Like [`RpcClient::call`], returning the result unparsed.
    pub async fn call_raw(&self, method: &str, params: Value, options: CallOptions) -> Result<Box<RawValue>, Error> {
        if self.0.closed.is_cancelled() || self.0.shutting_down.load(Ordering::Acquire) && method != methods::SHUTDOWN {
            return Err(Error::Unavailable);
        }
        let (timeout, max_bytes, max_concurrent) = {
            let n = self.0.negotiated.read();
            // A plug-in may shorten the daemon's default deadline for a method, never lengthen it;
            // an explicit deadline from the caller wins.
            let declared = n.timeouts.get(method).copied().unwrap_or(self.0.default_timeout);
            let timeout = options.timeout.unwrap_or_else(|| declared.min(self.0.default_timeout));
            (timeout, n.max_message_bytes, n.max_concurrent)
        };
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let params = with_meta(params, timeout, options.stream.is_some());
        let line = protocol::encode_request(&RequestId::from(id), method, &params);
        if line.len() - 1 > max_bytes {
            return Err(Error::TooLarge(line.len() - 1));
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.0.pending.lock();
            // Fail fast instead of queueing behind a full plug-in (protocol.md §2.7). Protocol
            // calls (`$/ping`, `plugin.health`, `shutdown`) are never refused, so an application
            // flood cannot make a healthy plug-in look hung.
            let is_protocol = method.starts_with("$/") || method == methods::HEALTH || method == methods::SHUTDOWN;
            if !is_protocol && pending.len() >= max_concurrent {
                return Err(Error::Overloaded);
            }
            pending.insert(id, Pending { reply: tx, stream: options.stream });
        }
        let mut guard = CancelOnDrop { client: self, id: Some(id) };
        if self.0.out.try_send(line).is_err() {
            self.0.pending.lock().remove(&id);
            guard.id = None;
            return Err(if self.0.closed.is_cancelled() { Error::Unavailable } else { Error::Overloaded });
        }
        self.0.stats.calls.fetch_add(1, Ordering::Relaxed);
        let sent_at = Instant::now();
        let outcome = tokio::time::timeout(timeout, rx).await;
        self.0.stats.latency.observe(method, sent_at.elapsed());
        guard.id = None;
        match outcome {
            Ok(Ok(Ok(raw))) => Ok(raw),
            Ok(Ok(Err(e))) if e.code == codes::OVERLOADED => Err(Error::Overloaded),
            // The plug-in enforces the same `_meta.deadlineMs` and may answer first: it is the
            // same deadline, not a plug-in failure.
            Ok(Ok(Err(e))) if e.code == codes::DEADLINE_EXCEEDED => Err(Error::Timeout(timeout)),
            Ok(Ok(Err(e))) => Err(Error::Remote(e)),
            // The sender was dropped: the connection closed, or the reader cancelled a slow stream.
            Ok(Err(_)) => Err(if self.0.closed.is_cancelled() { Error::Unavailable } else { Error::SlowConsumer }),
            Err(_) => {
                self.0.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                self.cancel(id, "deadline");
                Err(Error::Timeout(timeout))
            }
        }
    }

    /// Applies the limits and per-method deadlines a plug-in declared in its handshake.
    pub fn apply_handshake(&self, limits: &Limits, declared: &BTreeMap<String, MethodInfo>) {
        let mut n = self.0.negotiated.write();
        if let Some(max) = limits.max_concurrent_requests.filter(|m| *m > 0) {
            n.max_concurrent = max;
        }
        if let Some(max) = limits.max_message_bytes.filter(|m| *m > 0) {
            n.max_message_bytes = n.max_message_bytes.min(max);
        }
        n.timeouts = declared
            .iter()
            .filter_map(|(name, info)| Some((name.clone(), Duration::from_millis(info.timeout_ms.filter(|t| *t > 0)?))))
            .collect();
    }

    /// Sends a notification (fire and forget; dropped when the queue is full or closed).
    pub fn notify(&self, method: &str, params: Value) {
        let _ = self.0.out.try_send(protocol::encode_notification(method, params));
    }

    /// Retires `id` and tells the plug-in to stop working on it. Late chunks and the late final
    /// response for that id are dropped by the reader (it no longer knows the id).
    fn cancel(&self, id: u64, reason: &str) {
        if self.0.pending.lock().remove(&id).is_some() {
            let params = CancelParams { id: RequestId::from(id), reason: Some(reason.to_owned()) };
            let _ = self.0.out.try_send(protocol::encode_notification(methods::CANCEL, params));
        }
    }

    /// Refuses new calls (except `shutdown`); in-flight calls continue.
    pub fn begin_shutdown(&self) {
        self.0.shutting_down.store(true, Ordering::Release);
    }

    /// Closes the plug-in's stdin (after queued messages are written): its EOF signal to exit.
    pub fn close_stdin(&self) {
        self.begin_shutdown();
        self.0.close_input.cancel();
    }

    /// True once the plug-in's stdout closed or the writer failed.
    pub fn is_closed(&self) -> bool {
        self.0.closed.is_cancelled()
    }

    /// Completes when the connection closes.
    pub async fn closed(&self) {
        self.0.closed.cancelled().await
    }

    pub fn stats(&self) -> &Stats {
        &self.0.stats
    }

    /// Time since the plug-in last sent anything.
    pub fn idle_for(&self) -> Duration {
        let now = self.0.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.0.last_activity_ms.load(Ordering::Relaxed)))
    }

    /// Number of calls waiting for their response.
    pub fn in_flight(&self) -> usize {
        self.0.pending.lock().len()
    }

    /// Fails every pending call with [`Error::Unavailable`] and refuses new ones.
    fn close(&self) {
        self.0.closed.cancel();
        self.0.close_input.cancel();
        // Dropping the senders wakes every waiting caller at once instead of at its deadline.
        self.0.pending.lock().clear();
    }

    fn touch(&self) {
        let now = self.0.epoch.elapsed().as_millis() as u64;
        self.0.last_activity_ms.store(now, Ordering::Relaxed);
    }

    fn complete(&self, id: u64, outcome: Result<Box<RawValue>, RpcError>) {
        match self.0.pending.lock().remove(&id) {
            Some(pending) => {
                let _ = pending.reply.send(outcome);
            }
            None => {
                self.0.stats.late_messages.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn stream_chunk(&self, id: u64, data: Value) {
        let mut pending = self.0.pending.lock();
        let Some(entry) = pending.get(&id) else {
            drop(pending);
            self.0.stats.late_messages.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(stream) = &entry.stream else { return };
        if stream.try_send(data).is_err() {
            // The consumer is too slow (or gone): cancel this request only, keep the pipe flowing.
            pending.remove(&id);
            drop(pending);
            let params = CancelParams { id: RequestId::from(id), reason: Some("consumer too slow".into()) };
            let _ = self.0.out.try_send(protocol::encode_notification(methods::CANCEL, params));
        }
    }
}

/// Cancels the call in the plug-in when the caller's future is dropped before the response.
struct CancelOnDrop<'a> {
    client: &'a RpcClient,
    id: Option<u64>,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.client.cancel(id, "caller went away");
        }
    }
}

/// Adds `_meta.deadlineMs` (and `stream: true`) to an object of params.
fn with_meta(params: Value, timeout: Duration, stream: bool) -> Value {
    let mut obj = match params {
        Value::Object(obj) => obj,
        Value::Null => Default::default(),
        other => {
            let mut obj = serde_json::Map::new();
            obj.insert("value".into(), other);
            obj
        }
    };
    let meta = obj.entry("_meta").or_insert_with(|| Value::Object(Default::default()));
    if let Value::Object(meta) = meta {
        meta.insert("deadlineMs".into(), Value::from(timeout.as_millis() as u64));
    }
    if stream {
        obj.insert("stream".into(), Value::Bool(true));
    }
    Value::Object(obj)
}

#[cfg(test)]
mod tests;
