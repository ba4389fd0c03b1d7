//! Answers with sources: `POST /rag/answer` and the `rag` option of `POST /llm/infer`.
//!
//! The daemon composes, the plug-ins do the work: `rag.query` retrieves, [`crate::answer`]
//! numbers the passages and builds the prompt, `llm.generate` answers through the same RPC path
//! as `/llm/infer` (admission and 429, deadline, cancellation when the client goes away), and
//! [`crate::answer::CitationFilter`] removes `[n]` markers that name no source, in the whole
//! answer or in the stream as it goes.
//!
//! Scopes: retrieval reads documents and generation spends the model, so both routes need both
//! `rag:query` and `llm:use`. The guard's table holds one scope per route (`rag:query` for
//! `/rag/answer`, `llm:use` for `/llm/infer`); the other one is checked here (403).
//!
//! When retrieval finds nothing, the llm is not called: the answer is `null` with
//! `reason: "no sources"` and `finish_reason: "no_sources"`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::AppState;
use super::error::ApiError;
use super::guard::Caller;
use super::history::Recorder;
use super::llm::{self, Generation, Item, LlmError};
use crate::answer::{self, CitationFilter, Source};

/// Keys `POST /rag/answer` accepts.
const ANSWER_KEYS: &[&str] = &["question", "k", "mode", "max_tokens", "temperature", "stream"];
/// Keys of the `rag` option of `POST /llm/infer`.
const RAG_OPTION_KEYS: &[&str] = &["k", "mode"];
/// Retrieval is fast; a slow one is a sick plug-in, not a reason to hold the generation slot.
const RETRIEVE_TIMEOUT: Duration = Duration::from_secs(30);
const NO_SOURCES: &str = "no sources";

/// What to retrieve.
#[derive(Debug, Clone, PartialEq)]
struct Retrieval {
    question: String,
    k: u64,
    mode: String,
}

/// A checked `POST /rag/answer` body.
#[derive(Debug, Clone, PartialEq)]
struct AnswerRequest {
    retrieval: Retrieval,
    /// Generation options passed to `llm.generate` (`max_tokens`, `temperature`).
    generation: Map<String, Value>,
    stream: bool,
}

/// Which route's shapes a response takes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Flavor {
    /// `/rag/answer`: `{answer, sources, …}`; the stream ends with `summary`.
    Answer,
    /// `/llm/infer`: the llm's result with `sources`; the stream ends with `end`.
    Infer,
}

/// `POST /rag/answer {question, k?, mode?, max_tokens?, temperature?, stream?}` →
/// `{answer, sources: [{n, path, start, end, heading, headings, text, sha256, chunk_id, score,
/// cited}], usage, finish_reason, dropped_citations, model}`; with `stream: true` SSE events
/// `sources`, `status`, `token` (`{"delta"}`), then `summary` (the same object) or `error`.
pub(super) async fn answer(
    caller: Caller,
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, LlmError> {
    let Json(body) = body.map_err(|r| LlmError::from(super::json_rejection(r)))?;
    let req = parse_answer(body)?;
    require(&caller, "llm:use")?;
    compose(&state, &caller, req.retrieval, req.generation, req.stream, Flavor::Answer).await
}

/// `POST /llm/infer` with `rag: {k?, mode?}`: the prompt is the question. `params` are the other
/// generation options, already stripped of `stream`.
pub(super) async fn infer_with_rag(
    state: &AppState,
    caller: &Caller,
    mut params: Map<String, Value>,
    rag: Value,
    stream: bool,
) -> Result<Response, LlmError> {
    let (k, mode) = parse_rag_option(rag)?;
    if params.contains_key("messages") {
        return Err(LlmError::bad_request("messages", "`rag` takes the question as `prompt`, not `messages`"));
    }
    if params.contains_key("raw") {
        return Err(LlmError::bad_request("raw", "`raw` cannot be combined with `rag`"));
    }
    let question = match params.remove("prompt") {
        Some(Value::String(s)) => check_question("prompt", s)?,
        Some(_) => return Err(LlmError::bad_request("prompt", "must be a string")),
        None => return Err(LlmError::bad_request("prompt", "is required with `rag`")),
    };
    require(caller, "rag:query")?;
    compose(state, caller, Retrieval { question, k, mode }, params, stream, Flavor::Infer).await
}

/// The route's own scope was checked by the guard; this is the other one.
fn require(caller: &Caller, scope: &str) -> Result<(), LlmError> {
    if caller.principal.has(scope) {
        return Ok(());
    }
    Err(LlmError::new(StatusCode::FORBIDDEN, "forbidden", format!("forbidden: this request also needs scope {scope}")))
}

fn check_question(field: &str, s: String) -> Result<String, LlmError> {
    if s.trim().is_empty() {
        return Err(LlmError::bad_request(field, "must not be empty"));
    }
    if s.len() > super::rag::MAX_QUERY_BYTES {
        return Err(LlmError::bad_request(field, format!("must be at most {} bytes", super::rag::MAX_QUERY_BYTES)));
    }
    Ok(s)
}

fn parse_k(field: &str, v: Option<Value>) -> Result<u64, LlmError> {
    match v {
        None | Some(Value::Null) => Ok(answer::DEFAULT_K),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=answer::MAX_K).contains(&n) => Ok(n),
            _ => Err(LlmError::bad_request(field, format!("must be an integer between 1 and {}", answer::MAX_K))),
        },
    }
}

fn parse_mode(field: &str, v: Option<Value>) -> Result<String, LlmError> {
    match v {
        None | Some(Value::Null) => Ok("hybrid".to_owned()),
        Some(Value::String(m)) if matches!(m.as_str(), "bm25" | "vector" | "hybrid") => Ok(m),
        Some(_) => Err(LlmError::bad_request(field, "must be one of bm25, vector, hybrid")),
    }
}

fn unknown_key(map: &Map<String, Value>, allowed: &[&str], prefix: &str) -> Result<(), LlmError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(LlmError::bad_request(
            &format!("{prefix}{k}"),
            format!("unknown field {k:?} (expected one of {})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

/// Checks a `/rag/answer` body. Generation options are checked for their type here, so that
/// bad input is refused before anything is called; their limits are the llm plug-in's.
fn parse_answer(body: Value) -> Result<AnswerRequest, LlmError> {
    let Value::Object(mut map) = body else { return Err(LlmError::bad_request("body", "must be a JSON object")) };
    unknown_key(&map, ANSWER_KEYS, "")?;
    let question = match map.remove("question") {
        Some(Value::String(s)) => check_question("question", s)?,
        Some(_) => return Err(LlmError::bad_request("question", "must be a string")),
        None => return Err(LlmError::bad_request("question", "is required")),
    };
    let k = parse_k("k", map.remove("k"))?;
    let mode = parse_mode("mode", map.remove("mode"))?;
    let stream = match map.remove("stream") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => return Err(LlmError::bad_request("stream", "must be a boolean")),
    };
    let mut generation = Map::new();
    match map.remove("max_tokens") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_u64().is_some_and(|n| n >= 1) => {
            generation.insert("max_tokens".into(), v);
        }
        Some(_) => return Err(LlmError::bad_request("max_tokens", "must be a positive integer")),
    }
    match map.remove("temperature") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_f64().is_some_and(|t| (0.0..=2.0).contains(&t)) => {
            generation.insert("temperature".into(), v);
        }
        Some(_) => return Err(LlmError::bad_request("temperature", "must be a number in [0, 2]")),
    }
    Ok(AnswerRequest { retrieval: Retrieval { question, k, mode }, generation, stream })
}

/// Checks the `rag` option of `/llm/infer`: `{k?, mode?}` (`true` or `{}` for the defaults).
fn parse_rag_option(rag: Value) -> Result<(u64, String), LlmError> {
    let mut map = match rag {
        Value::Object(map) => map,
        Value::Bool(true) => Map::new(),
        _ => return Err(LlmError::bad_request("rag", "must be an object {k?, mode?}")),
    };
    unknown_key(&map, RAG_OPTION_KEYS, "rag.")?;
    Ok((parse_k("rag.k", map.remove("k"))?, parse_mode("rag.mode", map.remove("mode"))?))
}

/// A failure of the rag side, in the llm routes' error shape (same status, field and reason).
fn from_api(e: ApiError) -> LlmError {
    let (status, code) = e.status_and_code();
    match e {
        ApiError::BadRequest { field, reason } => LlmError::bad_request(&field, reason),
        ApiError::Unavailable(why) => LlmError { retry_after_ms: Some(1000), ..LlmError::new(status, code, why) },
        ApiError::TooManyRequests(s) => {
            LlmError { retry_after_ms: Some(s.saturating_mul(1000)), ..LlmError::new(status, code, e.to_string()) }
        }
        ApiError::Internal(err) => {
            tracing::error!(error.cause_chain = ?err, "internal error");
            LlmError::new(status, code, "internal error")
        }
        other => LlmError::new(status, code, other.to_string()),
    }
}

/// Retrieves and numbers the sources.
async fn retrieve(state: &AppState, r: &Retrieval) -> Result<Vec<Source>, LlmError> {
    let params = json!({"query": r.question, "top_k": r.k, "mode": r.mode});
    let mut found = super::rag::call(state, "rag.query", params, RETRIEVE_TIMEOUT).await.map_err(from_api)?;
    let results: Vec<answer::Retrieved> = serde_json::from_value(found["results"].take())
        .map_err(|e| from_api(ApiError::Internal(anyhow::anyhow!("rag.query answered an unexpected shape: {e}"))))?;
    Ok(answer::number_sources(results))
}

/// Retrieves, prompts and answers, whole or streamed.
async fn compose(
    state: &AppState,
    caller: &Caller,
    retrieval: Retrieval,
    generation: Map<String, Value>,
    stream: bool,
    flavor: Flavor,
) -> Result<Response, LlmError> {
    let mut sources = retrieve(state, &retrieval).await?;
    let prompt = answer::build_prompt(&retrieval.question, &sources, answer::PROMPT_BUDGET_CHARS);
    // Only what the model saw is numbered and returned.
    sources.truncate(prompt.shown);
    if sources.is_empty() {
        return Ok(no_sources(flavor, stream));
    }
    let mut params = generation;
    params.insert(
        "messages".into(),
        json!([{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user}]),
    );
    // History records the generation as the llm saw it (the prompt with the sources), so a
    // replay re-runs exactly that.
    let route = if flavor == Flavor::Answer { "/rag/answer" } else { "/llm/infer" };
    let mut recorder = Recorder::start(state, caller, route, &params, stream);
    let params = Value::Object(params);
    if stream {
        let generation = llm::start_stream_recorded(state, params, recorder).await?;
        return Ok(sse(generation, sources, flavor));
    }
    // Dropping this future (the client disconnected) cancels the generation, and the recorder
    // records it as cancelled.
    let result = llm::generate(state, params).await;
    recorder.finish(&result);
    Ok(Json(finish_whole(result?, sources, flavor)).into_response())
}

/// The whole answer: the llm's result with its text cleaned and the sources flagged.
fn finish_whole(mut result: Value, mut sources: Vec<Source>, flavor: Flavor) -> Value {
    let raw = result.get("text").and_then(Value::as_str).unwrap_or_default();
    let cleaned = answer::clean_citations(raw, sources.len());
    answer::mark_cited(&mut sources, &cleaned.cited);
    match flavor {
        Flavor::Answer => json!({
            "answer": cleaned.text,
            "sources": sources,
            "usage": result["usage"],
            "finish_reason": result["finish_reason"],
            "dropped_citations": cleaned.dropped,
            "model": result["model"],
        }),
        Flavor::Infer => {
            result["text"] = json!(cleaned.text);
            result["sources"] = json!(sources);
            result["dropped_citations"] = json!(cleaned.dropped);
            result
        }
    }
}

/// The answer when retrieval found nothing (the llm was not called).
fn no_sources_body(flavor: Flavor) -> Value {
    let usage = json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0});
    let mut body = json!({
        "sources": [],
        "reason": NO_SOURCES,
        "finish_reason": "no_sources",
        "usage": usage,
        "dropped_citations": 0,
    });
    body[if flavor == Flavor::Answer { "answer" } else { "text" }] = Value::Null;
    body
}

fn no_sources(flavor: Flavor, stream: bool) -> Response {
    let body = no_sources_body(flavor);
    if !stream {
        return Json(body).into_response();
    }
    let last = if flavor == Flavor::Answer { "summary" } else { "end" };
    let events = [
        Event::default().event("sources").data(json!({"sources": []}).to_string()),
        Event::default().event(last).data(body.to_string()),
    ];
    let mut response = Sse::new(futures_util::stream::iter(events.map(Ok::<_, Infallible>))).into_response();
    llm::stream_headers(&mut response);
    response
}

/// A streamed answer in progress.
struct Streaming {
    generation: Generation,
    filter: CitationFilter,
    sources: Vec<Source>,
    /// The cleaned text sent so far.
    text: String,
    flavor: Flavor,
    queue: VecDeque<Event>,
    done: bool,
}

impl Streaming {
    /// The next event, or `None` after the last one.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            let Some(item) = self.generation.next().await else {
                self.done = true;
                continue;
            };
            self.on_item(item);
        }
    }

    fn token(&mut self, delta: String) {
        if !delta.is_empty() {
            self.queue.push_back(Event::default().event("token").data(json!({"delta": delta}).to_string()));
            self.text.push_str(&delta);
        }
    }

    fn on_item(&mut self, item: Item) {
        match item {
            Item::Chunk(chunk) => match (chunk.get("delta").and_then(Value::as_str), chunk.get("status")) {
                (Some(delta), _) => {
                    let shown = self.filter.push(delta);
                    self.token(shown);
                }
                (None, Some(status)) => {
                    self.queue.push_back(Event::default().event("status").data(status.to_string()));
                }
                (None, None) => {}
            },
            Item::Done(Ok(mut summary)) => {
                let tail = self.filter.finish();
                self.token(tail);
                answer::mark_cited(&mut self.sources, self.filter.cited());
                let dropped = self.filter.dropped();
                let (name, data) = match self.flavor {
                    Flavor::Answer => {
                        let body = json!({
                            "answer": self.text,
                            "sources": self.sources,
                            "usage": summary["usage"],
                            "finish_reason": summary["finish_reason"],
                            "dropped_citations": dropped,
                            "model": summary["model"],
                        });
                        ("summary", body)
                    }
                    Flavor::Infer => {
                        summary["sources"] = json!(self.sources);
                        summary["dropped_citations"] = json!(dropped);
                        ("end", summary)
                    }
                };
                self.queue.push_back(Event::default().event(name).data(data.to_string()));
                self.done = true;
            }
            Item::Done(Err(e)) => {
                self.queue.push_back(Event::default().event("error").data(e.event_payload().to_string()));
                self.done = true;
            }
        }
    }
}

/// The SSE response of a streamed answer: `sources` first (without `cited`), then the
/// generation's `status` and `token` events (markers already checked), then the last event.
fn sse(generation: Generation, sources: Vec<Source>, flavor: Flavor) -> Response {
    let first = Event::default().event("sources").data(json!({"sources": sources}).to_string());
    let streaming = Streaming {
        generation,
        filter: CitationFilter::new(sources.len()),
        sources,
        text: String::new(),
        flavor,
        queue: VecDeque::from([first]),
        done: false,
    };
    // Dropping the stream (the client went away) drops the generation, which cancels it.
    let events = futures_util::stream::unfold(streaming, |mut s| async move {
        let event = s.next().await?;
        Some((Ok::<_, Infallible>(event), s))
    });
    let mut response = Sse::new(events).keep_alive(KeepAlive::new().interval(llm::KEEP_ALIVE)).into_response();
    llm::stream_headers(&mut response);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of<T: std::fmt::Debug>(r: Result<T, LlmError>) -> String {
        match r {
            Err(e) if e.status == StatusCode::BAD_REQUEST => e.param.unwrap_or_default(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn answer_bodies_are_checked_field_by_field() {
        let ok = parse_answer(json!({"question": "capital?", "k": 2, "mode": "bm25", "max_tokens": 16,
                                     "temperature": 0, "stream": true}))
        .unwrap();
        assert_eq!(ok.retrieval, Retrieval { question: "capital?".into(), k: 2, mode: "bm25".into() });
        assert_eq!(Value::Object(ok.generation), json!({"max_tokens": 16, "temperature": 0}));
        assert!(ok.stream);
        let d = parse_answer(json!({"question": "x"})).unwrap();
        assert_eq!((d.retrieval.k, d.retrieval.mode.as_str(), d.stream), (4, "hybrid", false));
        for (body, field) in [
            (json!([]), "body"),
            (json!({}), "question"),
            (json!({"question": ""}), "question"),
            (json!({"question": "  "}), "question"),
            (json!({"question": 3}), "question"),
            (json!({"question": "x".repeat(3000)}), "question"),
            (json!({"question": "x", "k": 0}), "k"),
            (json!({"question": "x", "k": 11}), "k"),
            (json!({"question": "x", "k": "2"}), "k"),
            (json!({"question": "x", "mode": "magic"}), "mode"),
            (json!({"question": "x", "stream": 1}), "stream"),
            (json!({"question": "x", "max_tokens": 0}), "max_tokens"),
            (json!({"question": "x", "temperature": 3}), "temperature"),
            (json!({"question": "x", "top_k": 3}), "top_k"),
        ] {
            assert_eq!(field_of(parse_answer(body.clone())), field, "{body}");
        }
    }

    #[test]
    fn the_rag_option_is_checked() {
        assert_eq!(parse_rag_option(json!({})).unwrap(), (4, "hybrid".into()));
        assert_eq!(parse_rag_option(json!(true)).unwrap(), (4, "hybrid".into()));
        assert_eq!(parse_rag_option(json!({"k": 2, "mode": "bm25"})).unwrap(), (2, "bm25".into()));
        assert_eq!(field_of(parse_rag_option(json!({"k": 0}))), "rag.k");
        assert_eq!(field_of(parse_rag_option(json!({"mode": 1}))), "rag.mode");
        assert_eq!(field_of(parse_rag_option(json!({"top_k": 1}))), "rag.top_k");
        assert_eq!(field_of(parse_rag_option(json!("yes"))), "rag");
    }

    #[test]
    fn rag_failures_keep_their_status() {
        let e = from_api(ApiError::Unavailable("the rag plug-in is stopped".into()));
        assert_eq!((e.status, e.message.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "the rag plug-in is stopped"));
        assert!(e.retry_after_ms.is_some());
        assert_eq!(from_api(ApiError::bad_request("path_prefix", "outside")).param.as_deref(), Some("path_prefix"));
        let e = from_api(ApiError::Internal(anyhow::anyhow!("secret detail")));
        assert_eq!((e.status, e.message.as_str()), (StatusCode::INTERNAL_SERVER_ERROR, "internal error"));
    }

    #[test]
    fn whole_answers_are_cleaned_and_flagged() {
        let sources = answer::number_sources(
            (0..2)
                .map(|i| answer::Retrieved {
                    text: format!("t{i}"),
                    score: 1.0,
                    source: bkg_plugin_rag::engine::Source {
                        path: format!("/d/{i}.md"),
                        sha256: "s".into(),
                        chunk_id: "c".into(),
                        start: 0,
                        end: 2,
                    },
                    heading: String::new(),
                })
                .collect(),
        );
        let result = json!({"text": "Paris [2] [9].", "finish_reason": "stop", "usage": {"completion_tokens": 3},
                            "model": "m"});
        let a = finish_whole(result.clone(), sources.clone(), Flavor::Answer);
        assert_eq!(a["answer"], "Paris [2].");
        assert_eq!(a["dropped_citations"], 1);
        assert_eq!((a["sources"][0]["cited"].clone(), a["sources"][1]["cited"].clone()), (json!(false), json!(true)));
        let i = finish_whole(result, sources, Flavor::Infer);
        assert_eq!(
            (i["text"].clone(), i["model"].clone(), i["sources"][1]["n"].clone()),
            (json!("Paris [2]."), json!("m"), json!(2))
        );
        assert_eq!(no_sources_body(Flavor::Answer)["answer"], Value::Null);
        assert_eq!(no_sources_body(Flavor::Infer)["reason"], "no sources");
    }
}
