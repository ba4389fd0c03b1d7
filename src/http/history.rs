//! LLM request history: the [`Recorder`] every generation route builds at the start of a
//! request, and the routes that read it (`GET /llm/history`, `GET /llm/history/{id}`) and re-run
//! an entry (`POST /llm/history/replay`). Scope `llm:use`; a caller who also holds `audit:read`
//! sees every actor's entries, anyone else only their own.
//!
//! A recorder is finished with the request's result, or, when it is dropped unfinished (the
//! client disconnected, a WebSocket `cancel`, the task aborted), records the request as
//! `cancelled` with what it had seen so far: the output streamed, the prompt tokens and queue
//! time of the plug-in's `started` status, the time to first token. Recording never blocks or
//! fails a request: the row is queued on the store thread, which logs a failed write.

use std::collections::HashMap;
use std::time::Instant;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::AppState;
use super::error::ApiError;
use super::guard::Caller;
use super::llm::{self, Item, LlmError};
use crate::store::{LlmEntry, LlmHistoryBounds, LlmHistoryQuery, Store};

/// Routes a history row can name (the `route` filter).
const ROUTES: &[&str] = &["/llm/infer", "/llm/stream", "/v1/chat/completions", "/rag/answer", "replay"];
/// Rows per page of `GET /llm/history`: default and most.
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 200;
/// The scope that lets a caller see (and replay) other actors' entries.
const SEE_ALL_SCOPE: &str = "audit:read";

/// Records one generation; see the module docs. Inert when history is off.
pub(super) struct Recorder(Option<Box<Pending>>);

struct Pending {
    store: Store,
    bounds: LlmHistoryBounds,
    entry: LlmEntry,
    started: Instant,
}

fn ms(n: u128) -> Option<i64> {
    i64::try_from(n).ok()
}

impl Recorder {
    /// A recorder that records nothing.
    pub(super) fn off() -> Self {
        Self(None)
    }

    /// Starts recording a request of `caller` through `route` with these `llm.generate` params.
    pub(super) fn start(
        state: &AppState,
        caller: &Caller,
        route: &'static str,
        params: &Map<String, Value>,
        stream: bool,
    ) -> Self {
        let bounds = state.settings().llm_history_bounds();
        if bounds.max_rows == 0 {
            return Self::off();
        }
        let entry = LlmEntry {
            req_id: caller.request_id.clone(),
            actor: caller.actor.clone(),
            route: route.to_owned(),
            model: params.get("model").and_then(Value::as_str).map(str::to_owned),
            request: Value::Object(params.clone()),
            stream,
            ..LlmEntry::default()
        };
        Self(Some(Box::new(Pending { store: state.store().clone(), bounds, entry, started: Instant::now() })))
    }

    /// Marks the request as a re-run of history row `id`.
    pub(super) fn replay_of(mut self, id: i64) -> Self {
        if let Some(p) = &mut self.0 {
            p.entry.replay_of = Some(id);
        }
        self
    }

    /// Replaces the request id (a WebSocket request: the socket's id plus the client's `req_id`).
    pub(super) fn with_req_id(mut self, req_id: String) -> Self {
        if let Some(p) = &mut self.0 {
            p.entry.req_id = Some(req_id);
        }
        self
    }

    /// Takes note of one item of a streaming generation; the final one finishes the record.
    pub(super) fn observe(&mut self, item: &Item) {
        let Some(p) = &mut self.0 else { return };
        match item {
            Item::Chunk(chunk) => {
                if let Some(delta) = chunk.get("delta").and_then(Value::as_str) {
                    if p.entry.ttft_ms.is_none() {
                        p.entry.ttft_ms = ms(p.started.elapsed().as_millis());
                    }
                    p.entry.output.push_str(delta);
                    // Tokens generated so far: the usage of a request cancelled midway.
                    p.entry.completion_tokens = chunk["tokens"].as_i64().or(p.entry.completion_tokens);
                } else if let Some(status) = chunk.get("status")
                    && status["phase"] == "started"
                {
                    p.entry.queue_ms = status["queue_ms"].as_i64().or(p.entry.queue_ms);
                    p.entry.prompt_tokens = status["prompt_tokens"].as_i64().or(p.entry.prompt_tokens);
                }
            }
            Item::Done(result) => self.finish(result),
        }
    }

    /// Records the request's end: the plug-in's summary (or whole answer) or its error.
    pub(super) fn finish(&mut self, result: &Result<Value, LlmError>) {
        let Some(mut p) = self.0.take() else { return };
        let e = &mut p.entry;
        match result {
            Ok(summary) => {
                e.outcome = "ok".into();
                if let Some(text) = summary["text"].as_str() {
                    e.output = text.to_owned();
                }
                e.finish_reason = summary["finish_reason"].as_str().map(str::to_owned);
                e.model = summary["model"].as_str().map(str::to_owned).or(e.model.take());
                let usage = &summary["usage"];
                e.prompt_tokens = usage["prompt_tokens"].as_i64().or(e.prompt_tokens);
                e.completion_tokens = usage["completion_tokens"].as_i64().or(e.completion_tokens);
                let timings = &summary["timings"];
                e.queue_ms = timings["queue_ms"].as_i64().or(e.queue_ms);
                // Without a stream the first token is not seen here; the plug-in's queue and
                // prefill time is when it was produced.
                if e.ttft_ms.is_none()
                    && let (Some(q), Some(prefill)) = (timings["queue_ms"].as_i64(), timings["prefill_ms"].as_i64())
                {
                    e.ttft_ms = Some(q + prefill);
                }
            }
            Err(err) => {
                e.outcome = "error".into();
                e.error = Some(json!({"status": err.status.as_u16(), "code": err.code, "message": err.message}));
            }
        }
        p.write();
    }
}

impl Pending {
    fn write(mut self) {
        self.entry.total_ms = ms(self.started.elapsed().as_millis());
        self.store.record_llm(self.entry, self.bounds);
    }
}

impl Drop for Recorder {
    /// Unfinished at drop: the request was cancelled (client gone, WebSocket `cancel`).
    fn drop(&mut self) {
        if let Some(mut p) = self.0.take() {
            p.entry.outcome = "cancelled".into();
            p.entry.finish_reason = Some("cancelled".into());
            p.write();
        }
    }
}

/// Whether `caller` may see `actor`'s entries.
fn may_see(caller: &Caller, actor: &str) -> bool {
    caller.actor == actor || caller.principal.has(SEE_ALL_SCOPE)
}

/// `GET /llm/history?limit=&before=&actor=&route=` → `{entries: [...], next_before}`, newest
/// first; `next_before` is the cursor of the next (older) page, `null` on the last one.
pub(super) async fn list(
    caller: Caller,
    State(state): State<AppState>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = query.map_err(|e| ApiError::bad_request("query", e.body_text()))?;
    let mut q = LlmHistoryQuery { limit: DEFAULT_PAGE, ..LlmHistoryQuery::default() };
    for (key, value) in params {
        match key.as_str() {
            "limit" => {
                q.limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| ApiError::bad_request("limit", format!("must be between 1 and {MAX_PAGE}")))?;
            }
            "before" => {
                let id = value.parse::<i64>().ok().filter(|n| *n > 0);
                q.before = Some(id.ok_or_else(|| ApiError::bad_request("before", "must be a positive entry id"))?);
            }
            "actor" => {
                if value.is_empty() || value.len() > 128 {
                    return Err(ApiError::bad_request("actor", "must be user:<name> or key:<id>"));
                }
                q.actor = Some(value);
            }
            "route" => {
                if !ROUTES.contains(&value.as_str()) {
                    return Err(ApiError::bad_request("route", format!("must be one of {}", ROUTES.join(", "))));
                }
                q.route = Some(value);
            }
            other => return Err(ApiError::bad_request(other, "unknown query parameter")),
        }
    }
    match &q.actor {
        Some(actor) if !may_see(&caller, actor) => {
            return Err(ApiError::Forbidden(format!("other actors' history needs scope {SEE_ALL_SCOPE}")));
        }
        Some(_) => {}
        None if caller.principal.has(SEE_ALL_SCOPE) => {}
        None => q.actor = Some(caller.actor.clone()),
    }
    let limit = q.limit;
    let entries = state.store().llm_history(q).await?;
    let next_before = (entries.len() == limit as usize).then(|| entries.last().map(|e| e.id)).flatten();
    Ok(Json(json!({ "entries": entries, "next_before": next_before })))
}

/// Parses an entry id from the path.
fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| ApiError::bad_request("id", "must be a positive entry id"))
}

/// The entry `id` if `caller` may see it; others' entries are 404, like missing ones.
async fn visible_entry(state: &AppState, caller: &Caller, id: i64) -> Result<LlmEntry, ApiError> {
    let not_found = || ApiError::NotFound(format!("no llm history entry {id}"));
    let entry = state.store().llm_history_entry(id).await.map_err(|e| match e {
        crate::store::Error::NotFound => not_found(),
        other => other.into(),
    })?;
    if !may_see(caller, &entry.actor) {
        return Err(not_found());
    }
    Ok(entry)
}

/// `GET /llm/history/{id}` → the entry; 404 when unknown (or another actor's).
pub(super) async fn get(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<LlmEntry>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(visible_entry(&state, &caller, id).await?))
}

/// `POST /llm/history/replay {"id": N, "stream": bool?}`: runs the stored request again as a
/// new request (new request id, new history row with `replay_of`), answered exactly like
/// `POST /llm/infer`. `stream` defaults to how the original was asked.
pub(super) async fn replay(
    caller: Caller,
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let (id, stream) = match replay_body(body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let entry = match visible_entry(&state, &caller, id).await {
        Ok(e) => e,
        Err(e) => return e.into_response(),
    };
    let Value::Object(params) = entry.request else {
        let e = anyhow::anyhow!("llm history entry {id} holds no request object");
        return ApiError::Internal(e).into_response();
    };
    let stream = stream.unwrap_or(entry.stream);
    let recorder = Recorder::start(&state, &caller, "replay", &params, stream).replay_of(id);
    match llm::run_infer(&state, params, stream, recorder).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// `{"id": N, "stream": bool?}`, nothing else.
fn replay_body(body: Result<Json<Value>, JsonRejection>) -> Result<(i64, Option<bool>), ApiError> {
    let Json(body) = body.map_err(super::json_rejection)?;
    let Value::Object(mut body) = body else { return Err(ApiError::bad_request("body", "must be a JSON object")) };
    let id = match body.remove("id") {
        Some(v) => {
            v.as_i64().filter(|n| *n > 0).ok_or_else(|| ApiError::bad_request("id", "must be a positive entry id"))?
        }
        None => return Err(ApiError::bad_request("id", "is required")),
    };
    let stream = match body.remove("stream") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(b),
        Some(_) => return Err(ApiError::bad_request("stream", "must be a boolean")),
    };
    if let Some(k) = body.keys().next() {
        return Err(ApiError::bad_request(k, "unknown field (expected id, stream)"));
    }
    Ok((id, stream))
}
