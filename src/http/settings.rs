//! `/admin/settings`: the daemon's settings groups (read, replace one group), and the request
//! body limit middleware that applies `security.body_limit_bytes` to every request.
//!
//! A group view is `{group, value, defaults, stored, updated_at, updated_by, overrides}`:
//! `value` is what the daemon uses now, `stored` what the database holds (`null` if never set),
//! `overrides` the fields a flag or env variable set at start (they win again at the next start).

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use tower::{Layer, ServiceExt};

use super::AppState;
use super::error::ApiError;
use super::guard::Caller;
use crate::settings::{DaemonSettings, GROUPS, Group, plugin_level};
use crate::store::StoredGroup;

fn parse_group(group: &str) -> Result<Group, ApiError> {
    Group::parse(group).ok_or_else(|| {
        let known: Vec<&str> = GROUPS.iter().map(|g| g.as_str()).collect();
        ApiError::NotFound(format!("no settings group {group:?} (known: {})", known.join(", ")))
    })
}

fn view(state: &AppState, current: &DaemonSettings, group: Group, stored: Option<&StoredGroup>) -> Value {
    json!({
        "group": group.as_str(),
        "value": current.group_value(group),
        "defaults": DaemonSettings::default().group_value(group),
        "stored": stored.map(|s| s.value.clone()),
        "updated_at": stored.map(|s| s.updated_at.clone()),
        "updated_by": stored.map(|s| s.actor.clone()),
        "overrides": state.settings().args().overrides(group),
    })
}

/// `GET /admin/settings` → `{"groups": {"logging": view, "security": view, …}}`.
pub(super) async fn list(_caller: Caller, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let stored = state.store().load_settings().await?;
    let current = state.settings().current();
    let groups: Map<String, Value> = GROUPS
        .iter()
        .map(|g| {
            let row = stored.iter().find(|s| s.group == g.as_str());
            (g.as_str().to_owned(), view(&state, &current, *g, row))
        })
        .collect();
    Ok(Json(json!({ "groups": groups })))
}

/// `GET /admin/settings/{group}` → the group's view; 404 for an unknown group.
pub(super) async fn get(
    _caller: Caller,
    State(state): State<AppState>,
    Path(group): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let group = parse_group(&group)?;
    let stored = state.store().settings_group(group.as_str().to_owned()).await?;
    Ok(Json(view(&state, &state.settings().current(), group, stored.as_ref())))
}

/// `PUT /admin/settings/{group}` with the complete group as body (absent fields take their
/// defaults; unknown fields and out-of-range values are 400 and change nothing). Stored with an
/// audit row, then applied at once: a new `logging.level` swaps the daemon's log filter and is
/// sent to every plug-in; new `retention` bounds trim config and LLM histories now.
pub(super) async fn put(
    caller: Caller,
    State(state): State<AppState>,
    Path(group): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let group = parse_group(&group)?;
    let Json(body) = body.map_err(super::json_rejection)?;
    // One writer at a time, so the stored order is the applied order.
    let _guard = state.settings_lock().lock().await;
    let next =
        state.settings().current().with_group(group, &body).map_err(|e| ApiError::bad_request(e.field, e.reason))?;
    let prune = (group == Group::Retention).then_some(next.retention.config_versions_kept);
    let stored = state
        .store()
        .save_settings(group.as_str().to_owned(), next.group_value(group), caller.actor.clone(), prune)
        .await?;
    if state.settings().apply(next.clone()) {
        state.supervisor().set_log_level(&plugin_level(&next.logging.level)).await;
    }
    if group == Group::Retention {
        // The LLM history is trimmed to the new bounds now (new rows are pruned as they come).
        if let Err(e) = state.store().prune_llm_history(state.settings().llm_history_bounds()).await {
            tracing::warn!(error = %e, "cannot prune the llm history");
        }
    }
    tracing::info!(actor = %caller.actor, group = group.as_str(), value = %stored.value, "settings changed");
    Ok(Json(view(&state, &next, group, Some(&stored))))
}

/// How much of a refused body is read and thrown away so that the client, still writing it, gets
/// to read the 413 instead of a connection reset (nginx's "lingering close").
const LINGER_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// How long a refused body is drained at most.
const LINGER_TIME: Duration = Duration::from_secs(5);

/// Middleware: enforces `security.body_limit_bytes` on every request. A declared
/// `Content-Length` over the limit is refused without being parsed (the body is drained, within
/// [`LINGER_MAX_BYTES`] and [`LINGER_TIME`], so the client reads the answer); a chunked body is
/// cut off at the limit by the body extractors (both 413).
pub(super) async fn body_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = state.settings().body_limit();
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let mut response = if declared.is_some_and(|n| n > limit as u64) {
        if declared.is_some_and(|n| n <= LINGER_MAX_BYTES) {
            drain(req.into_body()).await;
        }
        ApiError::PayloadTooLarge(limit).into_response()
    } else {
        // This layer sits inside the router's default limit, so its value is the one extractors
        // see.
        match DefaultBodyLimit::max(limit).layer(next).oneshot(req).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    };
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        // The rest of the body is still on the wire: close the connection so that the client
        // does not send its next request behind it (as nginx does for 413).
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Reads a body to its end and discards it, giving up after [`LINGER_TIME`] or on an error.
async fn drain(body: Body) {
    let mut frames = body.into_data_stream();
    let _ = tokio::time::timeout(LINGER_TIME, async { while let Some(Ok(_)) = frames.next().await {} }).await;
}
