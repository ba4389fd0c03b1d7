//! The OpenAI wire format over the llm plug-in: `POST /v1/chat/completions` (JSON, or SSE
//! chunks ending in `data: [DONE]`) and `GET /v1/models`, so that existing clients and SDKs work
//! unchanged. Scope `llm:use`.
//!
//! Stream shape (llm.md §2): a first chunk with `delta: {role: "assistant", content: ""}`, one
//! chunk per piece of content, a finish chunk (`delta: {}`, `finish_reason`), a usage chunk with
//! `choices: []` only when `stream_options.include_usage` asks for it, then `data: [DONE]`. Errors
//! before the first byte are real HTTP statuses with `{"error": {message, type, param, code}}`;
//! after it, one `data: {"error": …}` frame and the stream closes without `[DONE]`, so the
//! truncation stays visible. Unknown request fields are ignored, as OpenAI-compatible servers do.

use std::convert::Infallible;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::AppState;
use super::guard::Caller;
use super::history::Recorder;
use super::llm::{self, Generation, Item, LlmError};
use crate::rpc::CallOptions;

/// An [`LlmError`] answered in OpenAI's error shape.
pub(super) struct OpenAiError(LlmError);

impl From<LlmError> for OpenAiError {
    fn from(e: LlmError) -> Self {
        OpenAiError(e)
    }
}

/// OpenAI's `{"error": {message, type, param, code}}` for an error.
fn error_body(e: &LlmError) -> Value {
    let (kind, code) = match e.status.as_u16() {
        400 if e.code == "context_length_exceeded" => ("invalid_request_error", Some("context_length_exceeded")),
        400 | 413 => ("invalid_request_error", None),
        401 => ("authentication_error", None),
        403 => ("permission_error", None),
        404 => ("not_found_error", Some("model_not_found")),
        429 => ("rate_limit_error", Some("server_overloaded")),
        502 => ("upstream_error", None),
        503 => ("unavailable_error", None),
        504 => ("timeout", None),
        _ => ("server_error", None),
    };
    let param = if e.status == StatusCode::NOT_FOUND { Some("model".to_owned()) } else { e.param.clone() };
    json!({"error": {"message": e.message, "type": kind, "param": param, "code": code}})
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let e = self.0;
        if e.status.is_server_error() {
            tracing::warn!(status = e.status.as_u16(), message = %e.message, "chat completion failed");
        }
        let mut response = (e.status, Json(error_body(&e))).into_response();
        e.add_retry_headers(&mut response);
        response
    }
}

/// The parts of a chat completion request we use.
struct ChatRequest {
    params: Map<String, Value>,
    stream: bool,
    include_usage: bool,
    model: Option<String>,
}

fn bad(param: &str, message: impl Into<String>) -> OpenAiError {
    OpenAiError(LlmError::bad_request(param, message))
}

/// Reads an OpenAI request body into `llm.generate` params. Value ranges are checked by the
/// plug-in (one place for both APIs); here only the OpenAI-specific shape.
fn chat_request(body: Result<Json<Value>, JsonRejection>) -> Result<ChatRequest, OpenAiError> {
    let Json(body) = body.map_err(|r| OpenAiError(LlmError::from(super::json_rejection(r))))?;
    let Value::Object(mut body) = body else { return Err(bad("body", "the body must be a JSON object")) };
    let mut params = Map::new();
    match body.remove("messages") {
        Some(m @ Value::Array(_)) => params.insert("messages".into(), m),
        Some(_) => return Err(bad("messages", "messages must be an array")),
        None => return Err(bad("messages", "messages is required")),
    };
    let model = match body.remove("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) => Some(m),
        Some(_) => return Err(bad("model", "model must be a string")),
    };
    if let Some(m) = &model {
        params.insert("model".into(), json!(m));
    }
    // `max_completion_tokens` is the newer name; either works.
    let max_tokens = match (body.remove("max_completion_tokens"), body.remove("max_tokens")) {
        (Some(v), _) if !v.is_null() => Some(v),
        (_, Some(v)) if !v.is_null() => Some(v),
        _ => None,
    };
    if let Some(v) = max_tokens {
        params.insert("max_tokens".into(), v);
    }
    for key in ["temperature", "top_p", "stop", "seed"] {
        if let Some(v) = body.remove(key)
            && !v.is_null()
        {
            params.insert(key.into(), v);
        }
    }
    match body.remove("n") {
        None | Some(Value::Null) => {}
        Some(n) if n.as_u64() == Some(1) => {}
        Some(_) => return Err(bad("n", "only n = 1 is supported")),
    }
    for key in ["tools", "functions"] {
        if body.get(key).is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty())) {
            return Err(bad(key, "tool calls are not supported by this server"));
        }
    }
    let stream = match body.remove("stream") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => return Err(bad("stream", "stream must be a boolean")),
    };
    let include_usage =
        body.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);
    Ok(ChatRequest { params, stream, include_usage, model })
}

fn completion_id() -> String {
    format!("chatcmpl-{}", hex::encode(rand::random::<[u8; 12]>()))
}

/// OpenAI `finish_reason` from ours.
fn finish_reason(summary: &Value) -> Value {
    match summary["finish_reason"].as_str() {
        Some("length") => json!("length"),
        _ => json!("stop"),
    }
}

fn usage(summary: &Value) -> Value {
    let prompt = summary["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
    let completion = summary["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    json!({
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
    })
}

/// `POST /v1/chat/completions`.
pub(super) async fn chat_completions(
    caller: Caller,
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, OpenAiError> {
    let request = chat_request(body)?;
    let mut recorder = Recorder::start(&state, &caller, "/v1/chat/completions", &request.params, request.stream);
    let id = completion_id();
    let created = llm::unix_now();
    if !request.stream {
        // Dropping this future (the client disconnected) cancels the generation.
        let result = llm::generate(&state, Value::Object(request.params)).await;
        recorder.finish(&result);
        let result = result?;
        let model = result["model"].as_str().map(str::to_owned).or(request.model).unwrap_or_default();
        let mut body = json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": result["text"], "refusal": null},
                "logprobs": null,
                "finish_reason": finish_reason(&result),
            }],
            "usage": usage(&result),
            "system_fingerprint": null,
        });
        body["timings"] = result["timings"].clone();
        return Ok(Json(body).into_response());
    }
    let generation = llm::start_stream_recorded(&state, Value::Object(request.params), recorder).await?;
    let model = request.model.unwrap_or_default();
    let chunks =
        ChunkStream { generation, id, created, model, include_usage: request.include_usage, phase: Phase::Role };
    let events = futures_util::stream::unfold(chunks, |mut s| async move {
        let events = s.next_events().await?;
        Some((futures_util::stream::iter(events.into_iter().map(Ok::<_, Infallible>)), s))
    });
    let events = futures_util::StreamExt::flatten(events);
    let mut response = Sse::new(events).keep_alive(KeepAlive::new().interval(llm::KEEP_ALIVE)).into_response();
    llm::stream_headers(&mut response);
    Ok(response)
}

/// Where a chunk stream is.
#[derive(PartialEq, Eq)]
enum Phase {
    /// The role chunk has not been sent.
    Role,
    Content,
    Over,
}

/// Turns a generation's items into OpenAI chunks.
struct ChunkStream {
    generation: Generation,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    phase: Phase,
}

impl ChunkStream {
    fn chunk(&self, choices: Value) -> Event {
        Event::default().data(
            json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "system_fingerprint": null, "choices": choices,
            })
            .to_string(),
        )
    }

    fn delta(&self, delta: Value, finish: Value) -> Event {
        self.chunk(json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]))
    }

    /// The events for the next item (several at the start and at the end); `None` when over.
    async fn next_events(&mut self) -> Option<Vec<Event>> {
        if self.phase == Phase::Over {
            return None;
        }
        let mut events = Vec::new();
        if self.phase == Phase::Role {
            events.push(self.delta(json!({"role": "assistant", "content": ""}), Value::Null));
            self.phase = Phase::Content;
        }
        loop {
            let Some(item) = self.generation.next().await else {
                self.phase = Phase::Over;
                return Some(events);
            };
            match item {
                Item::Chunk(chunk) => {
                    // Status chunks (queued, started) have no OpenAI form; the keep-alive covers them.
                    if let Some(delta) = chunk.get("delta").and_then(Value::as_str) {
                        events.push(self.delta(json!({"content": delta}), Value::Null));
                        return Some(events);
                    }
                }
                Item::Done(Ok(summary)) => {
                    if self.model.is_empty() {
                        self.model = summary["model"].as_str().unwrap_or_default().to_owned();
                    }
                    events.push(self.delta(json!({}), finish_reason(&summary)));
                    if self.include_usage {
                        let chunk = json!({
                            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                            "model": self.model, "system_fingerprint": null, "choices": [],
                            "usage": usage(&summary),
                        });
                        events.push(Event::default().data(chunk.to_string()));
                    }
                    events.push(Event::default().data("[DONE]"));
                    self.phase = Phase::Over;
                    return Some(events);
                }
                Item::Done(Err(e)) => {
                    events.push(Event::default().data(error_body(&e).to_string()));
                    self.phase = Phase::Over;
                    return Some(events);
                }
            }
        }
    }
}

/// `GET /v1/models`: `{"object": "list", "data": [{id, object, created, owned_by, status}]}`.
pub(super) async fn models(_caller: Caller, State(state): State<AppState>) -> Result<Json<Value>, OpenAiError> {
    let client = llm::client(&state)?;
    let options = CallOptions { timeout: Some(std::time::Duration::from_secs(5)), stream: None };
    let result = client.call("llm.models", json!({}), options).await.map_err(llm::map_rpc)?;
    let created = llm::unix_now();
    let data: Vec<Value> = result["models"]
        .as_array()
        .map(|models| {
            models
                .iter()
                .map(|m| {
                    json!({
                        "id": m["id"], "object": "model", "created": created, "owned_by": "bkg",
                        "status": m["status"], "backend": m["backend"],
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Json(json!({"object": "list", "data": data})))
}
