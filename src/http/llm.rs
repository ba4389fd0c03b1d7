//! Text generation over the llm plug-in: `POST /llm/infer` (JSON or SSE), `GET /llm/stream`
//! (WebSocket, several requests per socket), and the OpenAI wire format
//! (`POST /v1/chat/completions`, `GET /v1/models`, in `openai.rs`). Scope `llm:use`.
//!
//! Every route calls `llm.generate` through the daemon's `RpcClient`; generation never runs in
//! the daemon. Cancellation is the call future being dropped: a client that disconnects (the SSE
//! body or the non-streaming handler is dropped), a WebSocket `cancel` or close, the deadline, or
//! the daemon shutting down drops it, and the `RpcClient` sends `$/cancelRequest`.
//!
//! Errors are decided before the first byte whenever possible: a streaming request waits for the
//! plug-in's first chunk (or its error) before it answers, so bad input is 400, a full queue 429
//! with `Retry-After`, a missing plug-in 503, each with a real status. After the first byte an
//! error is an `error` event and the stream ends.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::AppState;
use super::error::ApiError;
use super::guard::Caller;
use super::history::Recorder;
use crate::rpc::{self, CallOptions};

/// The plug-in behind these routes.
pub(super) const PLUGIN: &str = "llm";
/// The whole budget of one generation (protocol.md §2.6: 10 minutes for `llm.generate`).
pub(super) const GENERATE_TIMEOUT: Duration = Duration::from_secs(600);
/// SSE comment pings while nothing else is sent (queue wait, prefill).
pub(super) const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Requests one WebSocket may run at once.
const WS_MAX_REQUESTS: usize = 8;
/// Largest WebSocket text frame accepted (the HTTP body limit's size).
const WS_MAX_FRAME: usize = super::BODY_LIMIT;
/// Chunks buffered per request between the plug-in and the client.
const CHUNK_BUFFER: usize = 256;

/// Keys `POST /llm/infer` accepts; the plug-in checks their values.
const INFER_KEYS: &[&str] =
    &["prompt", "messages", "raw", "max_tokens", "temperature", "top_p", "stop", "seed", "model", "stream"];

/// A failure of an llm route, with everything both error shapes need.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub(super) struct LlmError {
    pub(super) status: StatusCode,
    /// Short machine code: `bad_request`, `too_many_requests`, `unavailable`, …
    pub(super) code: &'static str,
    pub(super) message: String,
    /// The offending request field, for 400s.
    pub(super) param: Option<String>,
    pub(super) retry_after_ms: Option<u64>,
}

impl LlmError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), param: None, retry_after_ms: None }
    }

    pub(super) fn bad_request(param: &str, message: impl Into<String>) -> Self {
        Self { param: Some(param.to_owned()), ..Self::new(StatusCode::BAD_REQUEST, "bad_request", message) }
    }

    /// Seconds for `Retry-After` (at least 1).
    fn retry_after_s(&self) -> Option<u64> {
        self.retry_after_ms.map(|ms| ms.div_ceil(1000).max(1))
    }

    /// The daemon's error body `{"error": {code, message, details?}}`.
    fn body(&self) -> Value {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if let Some(p) = &self.param {
            body["error"]["details"] = json!({"field": p, "reason": self.message});
        }
        if let Some(ms) = self.retry_after_ms {
            body["error"]["retry_after_ms"] = json!(ms);
        }
        body
    }

    /// Adds `Retry-After` (and `retry-after-ms`, which the OpenAI SDKs read) to a response.
    pub(super) fn add_retry_headers(&self, response: &mut Response) {
        if let (Some(s), Some(ms)) = (self.retry_after_s(), self.retry_after_ms) {
            let headers = response.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                headers.insert(header::RETRY_AFTER, v);
            }
            if let Ok(v) = HeaderValue::from_str(&ms.to_string()) {
                headers.insert("retry-after-ms", v);
            }
        }
    }

    /// The `error` payload of an SSE or WebSocket event.
    pub(super) fn event_payload(&self) -> Value {
        let mut v = self.body();
        v["error"]["status"] = json!(self.status.as_u16());
        v["error"]["retryable"] =
            json!(self.retry_after_ms.is_some() || self.status == StatusCode::SERVICE_UNAVAILABLE);
        v
    }
}

impl IntoResponse for LlmError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), message = %self.message, "llm request failed");
        }
        let mut response = (self.status, Json(self.body())).into_response();
        self.add_retry_headers(&mut response);
        response
    }
}

impl From<ApiError> for LlmError {
    /// Only body rejections (`json_rejection`) reach here.
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::BadRequest { field, reason } => LlmError::bad_request(&field, reason),
            ApiError::PayloadTooLarge(n) => LlmError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body too large (limit {n} bytes)"),
            ),
            other => LlmError::new(StatusCode::BAD_REQUEST, "bad_request", other.to_string()),
        }
    }
}

/// Maps a failed `llm.generate` call onto HTTP.
pub(super) fn map_rpc(e: rpc::Error) -> LlmError {
    match e {
        rpc::Error::Unavailable => LlmError {
            retry_after_ms: Some(1000),
            ..LlmError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the llm plug-in is not running; retry shortly",
            )
        },
        rpc::Error::Overloaded => LlmError {
            retry_after_ms: Some(1000),
            ..LlmError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", "the llm plug-in is overloaded")
        },
        rpc::Error::SlowConsumer => {
            LlmError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the client read the stream too slowly")
        }
        rpc::Error::Timeout(d) => {
            LlmError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", format!("generation took longer than {d:?}"))
        }
        rpc::Error::TooLarge(n) => LlmError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request is {n} bytes, more than the plug-in accepts"),
        ),
        rpc::Error::Remote(err) => {
            let data = err.data.as_ref();
            let param = data.and_then(|d| d.get("param")).and_then(Value::as_str).map(str::to_owned);
            let status = data.and_then(|d| d.get("httpStatus")).and_then(Value::as_u64);
            let retry_after_ms = data.and_then(|d| d.get("retryAfterMs")).and_then(Value::as_u64);
            let (status, code) = match (err.code, status) {
                (bkg_plugin_sdk::protocol::codes::INVALID_PARAMS, _) | (_, Some(400)) => {
                    (StatusCode::BAD_REQUEST, "bad_request")
                }
                (_, Some(404)) => (StatusCode::NOT_FOUND, "not_found"),
                (_, Some(429)) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
                (_, Some(502)) => (StatusCode::BAD_GATEWAY, "upstream_error"),
                (_, Some(503)) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
                (_, Some(504)) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
                (bkg_plugin_sdk::protocol::codes::REQUEST_CANCELLED, _) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "cancelled")
                }
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            };
            let code = match data.and_then(|d| d.get("kind")).and_then(Value::as_str) {
                Some("llm.context_length_exceeded") => "context_length_exceeded",
                _ => code,
            };
            let param = param.or_else(|| (status == StatusCode::BAD_REQUEST).then(|| "prompt".to_owned()));
            LlmError { status, code, message: err.message, param, retry_after_ms }
        }
    }
}

/// Seconds since the Unix epoch.
pub(super) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The llm plug-in's connection, or why there is none (503).
pub(super) fn client(state: &AppState) -> Result<rpc::RpcClient, LlmError> {
    let supervisor = state.supervisor();
    supervisor.client(PLUGIN).ok_or_else(|| {
        let snapshot = supervisor.snapshot();
        let why = match snapshot.get(PLUGIN) {
            Some(view) => match &view.reason {
                Some(reason) => format!("the llm plug-in is {}: {reason}", view.state.as_str()),
                None => format!("the llm plug-in is {}", view.state.as_str()),
            },
            None => "no llm plug-in is registered".to_owned(),
        };
        LlmError { retry_after_ms: Some(1000), ..LlmError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why) }
    })
}

/// What a running generation produces, in order.
#[derive(Debug)]
pub(super) enum Item {
    /// A `$/stream` chunk: `{"delta": "…"}` or `{"status": {…}}`.
    Chunk(Value),
    /// The final response (a summary: finish reason, usage, timings) or the error.
    Done(Result<Value, LlmError>),
}

/// Aborts a task when dropped, which drops its rpc call and so cancels the generation.
pub(super) struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A streaming generation that has produced its first item without failing. Dropping it
/// cancels the generation.
pub(super) struct Generation {
    first: Option<Item>,
    rx: mpsc::Receiver<Item>,
    _task: AbortOnDrop,
    /// Sees every item; dropped unfinished, it records the request as cancelled.
    recorder: Recorder,
}

impl Generation {
    /// The next item; `None` after the final one.
    pub(super) async fn next(&mut self) -> Option<Item> {
        let item = match self.first.take() {
            Some(first) => Some(first),
            None => self.rx.recv().await,
        };
        if let Some(item) = &item {
            self.recorder.observe(item);
        }
        item
    }
}

/// [`start_stream`], recorded in the LLM history by `recorder` (an error before the first
/// item included).
pub(super) async fn start_stream_recorded(
    state: &AppState,
    params: Value,
    mut recorder: Recorder,
) -> Result<Generation, LlmError> {
    match start_stream(state, params).await {
        Ok(mut g) => {
            g.recorder = recorder;
            Ok(g)
        }
        Err(e) => {
            recorder.finish(&Err(e.clone()));
            Err(e)
        }
    }
}

/// Starts `llm.generate` with `stream: true` and waits for its first chunk, so that an error
/// that comes before any output is returned as such (with its HTTP status).
pub(super) async fn start_stream(state: &AppState, params: Value) -> Result<Generation, LlmError> {
    let client = client(state)?;
    let shutdown = state.shutdown().graceful.clone();
    let (tx, mut rx) = mpsc::channel::<Item>(CHUNK_BUFFER);
    let task = tokio::spawn(async move {
        let (chunk_tx, mut chunks) = mpsc::channel::<Value>(CHUNK_BUFFER);
        let options = CallOptions { timeout: Some(GENERATE_TIMEOUT), stream: Some(chunk_tx) };
        let call = client.call("llm.generate", params, options);
        tokio::pin!(call);
        loop {
            tokio::select! {
                biased;
                Some(chunk) = chunks.recv() => {
                    if tx.send(Item::Chunk(chunk)).await.is_err() {
                        return; // the client is gone: dropping `call` cancels the generation
                    }
                }
                result = &mut call => {
                    // Chunks are routed before the final response, so whatever is left is in
                    // the channel already.
                    while let Ok(chunk) = chunks.try_recv() {
                        if tx.send(Item::Chunk(chunk)).await.is_err() {
                            return;
                        }
                    }
                    let _ = tx.send(Item::Done(result.map_err(map_rpc))).await;
                    return;
                }
                () = shutdown.cancelled() => {
                    let err = LlmError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the daemon is shutting down");
                    let _ = tx.send(Item::Done(Err(err))).await;
                    return;
                }
            }
        }
    });
    let task = AbortOnDrop(task);
    match rx.recv().await {
        Some(Item::Done(Err(e))) => Err(e),
        Some(first) => Ok(Generation { first: Some(first), rx, _task: task, recorder: Recorder::off() }),
        None => Err(LlmError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the generation task ended early")),
    }
}

/// Headers every event stream carries (llm.md §2).
pub(super) fn stream_headers(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
}

/// Checks a JSON body: an object with only `allowed` keys.
fn object(body: Result<Json<Value>, JsonRejection>, allowed: &[&str]) -> Result<Map<String, Value>, LlmError> {
    let Json(body) = body.map_err(|r| LlmError::from(super::json_rejection(r)))?;
    let Value::Object(map) = body else { return Err(LlmError::bad_request("body", "must be a JSON object")) };
    if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(LlmError::bad_request(k, format!("unknown field {k:?} (expected one of {})", allowed.join(", "))));
    }
    Ok(map)
}

/// `POST /llm/infer`: `{prompt | messages, max_tokens, temperature, top_p, stop, seed, model,
/// raw, stream}` → `{text, finish_reason, usage, model, timings}`, or with `stream: true` an SSE
/// stream of `token` events (`{"delta"}`), `status` events, and one `end` (the summary) or
/// `error` event.
pub(super) async fn infer(
    caller: Caller,
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, LlmError> {
    let mut params = object(body, &[INFER_KEYS, &["rag"]].concat())?;
    let rag = params.remove("rag").filter(|r| !r.is_null());
    let stream = match params.remove("stream") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => return Err(LlmError::bad_request("stream", "must be a boolean")),
    };
    if let Some(rag) = rag {
        // Answers with sources: retrieval, numbered sources, checked citations (`http::answer`).
        return super::answer::infer_with_rag(&state, &caller, params, rag, stream).await;
    }
    let recorder = Recorder::start(&state, &caller, "/llm/infer", &params, stream);
    run_infer(&state, params, stream, recorder).await
}

/// One non-streaming `llm.generate` call. Dropping this future (the client disconnected)
/// cancels the generation.
pub(super) async fn generate(state: &AppState, params: Value) -> Result<Value, LlmError> {
    let client = client(state)?;
    let options = CallOptions { timeout: Some(GENERATE_TIMEOUT), stream: None };
    client.call("llm.generate", params, options).await.map_err(map_rpc)
}

/// Runs checked `/llm/infer` params (without `stream`) and answers as `/llm/infer` does;
/// `POST /llm/history/replay` uses it too.
pub(super) async fn run_infer(
    state: &AppState,
    params: Map<String, Value>,
    stream: bool,
    mut recorder: Recorder,
) -> Result<Response, LlmError> {
    let params = Value::Object(params);
    if !stream {
        let result = generate(state, params).await;
        recorder.finish(&result);
        return Ok(Json(result?).into_response());
    }
    let generation = start_stream_recorded(state, params, recorder).await?;
    let events = futures_util::stream::unfold(Some(generation), |state| async move {
        let mut g = state?;
        let (event, done) = infer_event(g.next().await?);
        Some((Ok::<_, Infallible>(event), if done { None } else { Some(g) }))
    });
    let mut response = Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response();
    stream_headers(&mut response);
    Ok(response)
}

/// The SSE event of one item, and whether it ends the stream.
fn infer_event(item: Item) -> (Event, bool) {
    match item {
        Item::Chunk(chunk) => {
            if let Some(status) = chunk.get("status") {
                (Event::default().event("status").data(status.to_string()), false)
            } else {
                (Event::default().event("token").data(chunk.to_string()), false)
            }
        }
        Item::Done(Ok(summary)) => (Event::default().event("end").data(summary.to_string()), true),
        Item::Done(Err(e)) => (Event::default().event("error").data(e.event_payload().to_string()), true),
    }
}

/// `GET /llm/stream`: a WebSocket carrying `{type, req_id, source, event, payload, ts}`
/// messages. The client sends `{type: "request", req_id, event: "start", payload: {prompt |
/// messages, …}}` or `{type: "request", req_id, event: "cancel"}`; the server answers with
/// `event` ∈ `status | token | error | end` for that `req_id`. Up to 8 requests run at once per
/// socket; closing the socket cancels all of them.
pub(super) async fn ws(
    caller: Caller,
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, LlmError> {
    // Browsers send cookies with cross-site WebSocket handshakes; the Origin check stops a page
    // elsewhere from using a logged-in operator's session (no CSRF token exists for a GET).
    if !headers.contains_key(header::AUTHORIZATION) && !super::guard::same_origin(&headers) {
        return Err(LlmError::new(StatusCode::FORBIDDEN, "forbidden", "cross-origin WebSocket"));
    }
    // Frames up to 16 MiB are read so that an oversized prompt gets an `error` event instead of
    // a dropped connection; more than `WS_MAX_FRAME` is refused by us.
    Ok(upgrade.max_message_size(16 << 20).on_upgrade(move |socket| serve_socket(socket, state, caller)))
}

/// One server message.
fn ws_message(req_id: &Value, event: &str, payload: Value) -> Message {
    let msg = json!({"type": "response", "req_id": req_id, "source": PLUGIN, "event": event, "payload": payload, "ts": unix_ms()});
    Message::Text(msg.to_string().into())
}

fn ws_error(req_id: &Value, e: &LlmError) -> Message {
    ws_message(req_id, "error", e.event_payload())
}

/// What a request's forwarding task hands to the socket loop.
enum Out {
    Send(Message),
    /// The request with this key and serial number is over.
    Finished(String, u64),
}

/// The requests running on one socket: key (the `req_id` as JSON text) → serial and task.
#[derive(Default)]
struct Running {
    next_serial: u64,
    tasks: HashMap<String, (u64, AbortOnDrop)>,
}

async fn serve_socket(mut socket: WebSocket, state: AppState, caller: Caller) {
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(CHUNK_BUFFER);
    let mut running = Running::default();
    let shutdown = state.shutdown().graceful.clone();
    loop {
        tokio::select! {
            incoming = socket.recv() => {
                let message = match incoming {
                    Some(Ok(m)) => m,
                    // Closed or broken: dropping `running` cancels every generation.
                    _ => return,
                };
                let reply = match message {
                    Message::Text(text) => handle_ws_text(&state, &caller, text.as_str(), &mut running, &out_tx),
                    Message::Binary(_) => Some(ws_error(
                        &Value::Null,
                        &LlmError::bad_request("frame", "binary frames are not supported; send JSON text"),
                    )),
                    Message::Close(_) => return,
                    Message::Ping(_) | Message::Pong(_) => None,
                };
                if let Some(reply) = reply
                    && socket.send(reply).await.is_err()
                {
                    return;
                }
            }
            Some(out) = out_rx.recv() => match out {
                Out::Send(m) => {
                    if socket.send(m).await.is_err() {
                        return;
                    }
                }
                Out::Finished(key, serial) => {
                    if running.tasks.get(&key).is_some_and(|(s, _)| *s == serial) {
                        running.tasks.remove(&key);
                    }
                }
            },
            () = shutdown.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
        }
    }
}

/// Handles one client frame; returns an immediate reply, if any.
fn handle_ws_text(
    state: &AppState,
    caller: &Caller,
    text: &str,
    running: &mut Running,
    out: &mpsc::Sender<Out>,
) -> Option<Message> {
    if text.len() > WS_MAX_FRAME {
        let e = LlmError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("a frame may be at most {WS_MAX_FRAME} bytes, got {}", text.len()),
        );
        return Some(ws_error(&Value::Null, &e));
    }
    let msg: Value = match serde_json::from_str(text) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return Some(ws_error(&Value::Null, &LlmError::bad_request("frame", "expected a JSON object"))),
        Err(e) => return Some(ws_error(&Value::Null, &LlmError::bad_request("frame", format!("malformed JSON: {e}")))),
    };
    let req_id = msg.get("req_id").cloned().unwrap_or(Value::Null);
    if !matches!(&req_id, Value::String(s) if !s.is_empty() && s.len() <= 128) && !req_id.is_u64() {
        let e = LlmError::bad_request("req_id", "req_id must be a non-empty string (at most 128 bytes) or a number");
        return Some(ws_error(&req_id, &e));
    }
    if msg.get("type").and_then(Value::as_str) != Some("request") {
        return Some(ws_error(&req_id, &LlmError::bad_request("type", "type must be \"request\"")));
    }
    let unknown = msg.as_object().and_then(|o| {
        o.keys().find(|k| !matches!(k.as_str(), "type" | "req_id" | "event" | "payload" | "source" | "ts"))
    });
    if let Some(k) = unknown {
        return Some(ws_error(&req_id, &LlmError::bad_request(k, format!("unknown field {k:?}"))));
    }
    let key = req_id.to_string();
    match msg.get("event").and_then(Value::as_str) {
        Some("cancel") => {
            // Dropping the forwarding task drops the rpc call: `$/cancelRequest`.
            if running.tasks.remove(&key).is_some() {
                Some(ws_message(&req_id, "end", json!({"finish_reason": "cancelled"})))
            } else {
                let e = LlmError::new(StatusCode::NOT_FOUND, "not_found", "no running request with this req_id");
                Some(ws_error(&req_id, &e))
            }
        }
        Some("start") => {
            if running.tasks.contains_key(&key) {
                let e = LlmError::new(StatusCode::CONFLICT, "conflict", "a request with this req_id is running");
                return Some(ws_error(&req_id, &e));
            }
            if running.tasks.len() >= WS_MAX_REQUESTS {
                let e = LlmError {
                    retry_after_ms: Some(1000),
                    ..LlmError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too_many_requests",
                        format!("at most {WS_MAX_REQUESTS} requests may run at once on one socket"),
                    )
                };
                return Some(ws_error(&req_id, &e));
            }
            let mut params = match msg.get("payload") {
                Some(Value::Object(p)) => p.clone(),
                _ => return Some(ws_error(&req_id, &LlmError::bad_request("payload", "payload must be an object"))),
            };
            if let Some(k) = params.keys().find(|k| !INFER_KEYS.contains(&k.as_str())) {
                return Some(ws_error(&req_id, &LlmError::bad_request(k, format!("unknown field {k:?} in payload"))));
            }
            params.remove("stream");
            let req = format!("{}/{}", caller.request_id.as_deref().unwrap_or("-"), req_id.as_str().unwrap_or(&key));
            let recorder = Recorder::start(state, caller, "/llm/stream", &params, true).with_req_id(req);
            running.next_serial += 1;
            let serial = running.next_serial;
            let out = out.clone();
            let state = state.clone();
            let task_key = key.clone();
            let task = tokio::spawn(async move {
                forward_ws(&state, Value::Object(params), &req_id, &out, recorder).await;
                let _ = out.send(Out::Finished(task_key, serial)).await;
            });
            running.tasks.insert(key, (serial, AbortOnDrop(task)));
            None
        }
        _ => Some(ws_error(&req_id, &LlmError::bad_request("event", "event must be \"start\" or \"cancel\""))),
    }
}

/// Runs one WebSocket request and forwards its events.
async fn forward_ws(state: &AppState, params: Value, req_id: &Value, out: &mpsc::Sender<Out>, recorder: Recorder) {
    let send = |m: Message| out.send(Out::Send(m));
    let mut g = match start_stream_recorded(state, params, recorder).await {
        Ok(g) => g,
        Err(e) => {
            let _ = send(ws_error(req_id, &e)).await;
            return;
        }
    };
    let _ = send(ws_message(req_id, "status", json!({"phase": "accepted"}))).await;
    let mut seq = 0u64;
    while let Some(item) = g.next().await {
        let message = match item {
            Item::Chunk(chunk) => match (chunk.get("delta"), chunk.get("status")) {
                (Some(delta), _) => {
                    seq += 1;
                    ws_message(req_id, "token", json!({"delta": delta, "seq": seq}))
                }
                (None, Some(status)) => ws_message(req_id, "status", status.clone()),
                (None, None) => ws_message(req_id, "status", chunk),
            },
            Item::Done(Ok(summary)) => ws_message(req_id, "end", summary),
            Item::Done(Err(e)) => ws_error(req_id, &e),
        };
        if send(message).await.is_err() {
            return;
        }
    }
}
