//! `/rag/*`: retrieval over the rag plug-in (`POST /rag/query`, `POST /rag/reindex`,
//! `GET /rag/status`).
//!
//! Input is validated here, at the edge, with the field and the reason (400); what only the
//! plug-in can check (a `path_prefix` that resolves outside the roots, a `top_k` above its
//! configured limit) comes back as `-32602` with `data.field` and is answered the same way. A
//! plug-in that is not running is 503, a reindex already running 409, vector search without the
//! model 503 with the plug-in's explanation.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use serde_json::{Map, Value, json};

use super::AppState;
use super::error::ApiError;
use super::guard::Caller;
use crate::rpc::{self, CallOptions};

/// The plug-in behind these routes.
const PLUGIN: &str = "rag";
/// Largest `top_k` accepted at the edge (the plug-in may be configured lower).
const MAX_TOP_K: u64 = 100;
/// Longest query in bytes.
pub(super) const MAX_QUERY_BYTES: usize = 2048;
/// Longest `path_prefix` in bytes.
const MAX_PREFIX_BYTES: usize = 4096;
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// A reindex of a large corpus embeds for a long time; the client may give up earlier, which
/// cancels it (nothing is committed then).
const REINDEX_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Calls the plug-in, mapping its errors onto HTTP.
pub(super) async fn call(state: &AppState, method: &str, params: Value, timeout: Duration) -> Result<Value, ApiError> {
    let supervisor = state.supervisor();
    if supervisor.client(PLUGIN).is_none() {
        let snapshot = supervisor.snapshot();
        let why = match snapshot.get(PLUGIN) {
            Some(view) => format!("the rag plug-in is {}", view.state.as_str()),
            None => "no rag plug-in is registered".to_owned(),
        };
        return Err(ApiError::Unavailable(why));
    }
    let options = CallOptions { timeout: Some(timeout), stream: None };
    supervisor.call(PLUGIN, method, params, options).await.map_err(map_error)
}

fn map_error(e: rpc::Error) -> ApiError {
    if let rpc::Error::Remote(err) = &e {
        let data = err.data.as_ref();
        let status = data.and_then(|d| d.get("httpStatus")).and_then(Value::as_u64);
        if err.code == bkg_plugin_sdk::protocol::codes::INVALID_PARAMS {
            let field = data.and_then(|d| d.get("field")).and_then(Value::as_str).unwrap_or("params");
            let reason = data.and_then(|d| d.get("reason")).and_then(Value::as_str).unwrap_or(&err.message);
            return ApiError::bad_request(field, reason);
        }
        match status {
            Some(503) => return ApiError::Unavailable(err.message.clone()),
            Some(409) => return ApiError::Conflict(err.message.clone()),
            _ => {}
        }
    }
    ApiError::from(e)
}

fn object(body: Value) -> Result<Map<String, Value>, ApiError> {
    match body {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::bad_request("body", "must be a JSON object")),
    }
}

/// Checks a `POST /rag/query` body and returns the params for `rag.query`.
fn query_params(body: Value) -> Result<Value, ApiError> {
    let mut map = object(body)?;
    if let Some(unknown) = map.keys().find(|k| !matches!(k.as_str(), "query" | "top_k" | "mode" | "path_prefix")) {
        return Err(ApiError::bad_request(
            unknown.as_str(),
            "unknown field (expected query, top_k, mode, path_prefix)",
        ));
    }
    let query = match map.remove("query") {
        Some(Value::String(s)) if s.trim().is_empty() => {
            return Err(ApiError::bad_request("query", "must not be empty"));
        }
        Some(Value::String(s)) if s.len() > MAX_QUERY_BYTES => {
            return Err(ApiError::bad_request("query", format!("must be at most {MAX_QUERY_BYTES} bytes")));
        }
        Some(Value::String(s)) => s,
        Some(_) => return Err(ApiError::bad_request("query", "must be a string")),
        None => return Err(ApiError::bad_request("query", "is required")),
    };
    let top_k = match map.remove("top_k") {
        None | Some(Value::Null) => 5,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_TOP_K).contains(&n) => n,
            _ => return Err(ApiError::bad_request("top_k", format!("must be an integer between 1 and {MAX_TOP_K}"))),
        },
    };
    let mode = match map.remove("mode") {
        None | Some(Value::Null) => "hybrid".to_owned(),
        Some(Value::String(m)) if matches!(m.as_str(), "bm25" | "vector" | "hybrid") => m,
        Some(_) => return Err(ApiError::bad_request("mode", "must be one of bm25, vector, hybrid")),
    };
    let mut params = json!({"query": query, "top_k": top_k, "mode": mode});
    match map.remove("path_prefix") {
        None | Some(Value::Null) => {}
        Some(Value::String(p)) => {
            if p.is_empty() || p.len() > MAX_PREFIX_BYTES || p.contains('\0') {
                return Err(ApiError::bad_request("path_prefix", "must be a non-empty path"));
            }
            let path = std::path::Path::new(&p);
            if !path.is_absolute() {
                return Err(ApiError::bad_request("path_prefix", "must be an absolute path under one of the roots"));
            }
            if path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                return Err(ApiError::bad_request("path_prefix", "must not contain `..`"));
            }
            params["path_prefix"] = json!(p);
        }
        Some(_) => return Err(ApiError::bad_request("path_prefix", "must be a string")),
    }
    Ok(params)
}

/// Checks a `POST /rag/reindex` body (`{}`, `{"full": bool}` or no body at all).
fn reindex_params(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({"full": false}));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request("body", format!("malformed JSON: {e}")))?;
    let mut map = object(value)?;
    if let Some(unknown) = map.keys().find(|k| k.as_str() != "full") {
        return Err(ApiError::bad_request(unknown.as_str(), "unknown field (expected full)"));
    }
    let full = match map.remove("full") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(ApiError::bad_request("full", "must be a boolean")),
    };
    Ok(json!({"full": full}))
}

/// `POST /rag/query {query, top_k?, mode?, path_prefix?}` →
/// `{results: [{text, score, source: {path, sha256, chunk_id, start, end}, heading}], mode, took_ms}`.
pub(super) async fn query(
    _caller: Caller,
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body.map_err(super::json_rejection)?;
    let params = query_params(body)?;
    Ok(Json(call(&state, "rag.query", params, QUERY_TIMEOUT).await?))
}

/// `POST /rag/reindex {full?}` → the counts of the reindex once it committed.
pub(super) async fn reindex(
    caller: Caller,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let params = reindex_params(&body)?;
    tracing::info!(actor = %caller.actor, full = params["full"].as_bool(), "rag reindex requested");
    Ok(Json(call(&state, "rag.reindex", params, REINDEX_TIMEOUT).await?))
}

/// `GET /rag/status`: index size, model state, progress of a running reindex.
pub(super) async fn status(_caller: Caller, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(call(&state, "rag.status", json!({}), STATUS_TIMEOUT).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(r: Result<Value, ApiError>) -> String {
        match r {
            Err(ApiError::BadRequest { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn query_bodies_are_checked_field_by_field() {
        let ok = query_params(json!({"query": "ownership", "top_k": 3, "mode": "bm25", "path_prefix": "/srv/docs"}))
            .unwrap();
        assert_eq!(ok, json!({"query": "ownership", "top_k": 3, "mode": "bm25", "path_prefix": "/srv/docs"}));
        assert_eq!(query_params(json!({"query": "x"})).unwrap(), json!({"query": "x", "top_k": 5, "mode": "hybrid"}));
        for (body, field) in [
            (json!([]), "body"),
            (json!({}), "query"),
            (json!({"query": ""}), "query"),
            (json!({"query": "   "}), "query"),
            (json!({"query": 1}), "query"),
            (json!({"query": "x".repeat(MAX_QUERY_BYTES + 1)}), "query"),
            (json!({"query": "x", "top_k": 0}), "top_k"),
            (json!({"query": "x", "top_k": 101}), "top_k"),
            (json!({"query": "x", "top_k": "5"}), "top_k"),
            (json!({"query": "x", "mode": "semantic"}), "mode"),
            (json!({"query": "x", "path_prefix": "docs"}), "path_prefix"),
            (json!({"query": "x", "path_prefix": "/srv/docs/../../etc"}), "path_prefix"),
            (json!({"query": "x", "path_prefix": ""}), "path_prefix"),
            (json!({"query": "x", "k": 1}), "k"),
        ] {
            assert_eq!(field_of(query_params(body.clone())), field, "{body}");
        }
    }

    #[test]
    fn reindex_bodies() {
        assert_eq!(reindex_params(b"").unwrap(), json!({"full": false}));
        assert_eq!(reindex_params(b"{}").unwrap(), json!({"full": false}));
        assert_eq!(reindex_params(br#"{"full": true}"#).unwrap(), json!({"full": true}));
        assert_eq!(field_of(reindex_params(br#"{"full": 1}"#)), "full");
        assert_eq!(field_of(reindex_params(br#"{"fast": true}"#)), "fast");
        assert_eq!(field_of(reindex_params(b"{")), "body");
    }

    #[test]
    fn plugin_errors_map_to_statuses() {
        use bkg_plugin_sdk::RpcError;
        let bad = RpcError::new(-32602, "path_prefix: outside")
            .with_data(json!({"field": "path_prefix", "reason": "outside", "httpStatus": 400}));
        match map_error(rpc::Error::Remote(bad)) {
            ApiError::BadRequest { field, reason } => {
                assert_eq!((field.as_str(), reason.as_str()), ("path_prefix", "outside"))
            }
            other => panic!("{other:?}"),
        }
        let model = RpcError::new(1002, "no model").with_data(json!({"httpStatus": 503}));
        assert!(matches!(map_error(rpc::Error::Remote(model)), ApiError::Unavailable(m) if m == "no model"));
        let busy = RpcError::new(1001, "busy").with_data(json!({"httpStatus": 409}));
        assert!(matches!(map_error(rpc::Error::Remote(busy)), ApiError::Conflict(_)));
        assert!(matches!(map_error(rpc::Error::Unavailable), ApiError::Unavailable(_)));
    }
}
