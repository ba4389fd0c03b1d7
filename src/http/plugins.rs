//! `/admin/plugins`: list, inspect, control, register and remove plug-ins.

use std::time::SystemTime;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;
use super::auth::{audit, caller_event};
use super::error::ApiError;
use super::guard::Caller;
use crate::config::{PluginName, PluginSpec, Protocol};
use crate::supervisor::{ControlOp, PluginView};

/// Lines of recent stderr shown in the detail view.
const DETAIL_LOG_LINES: usize = 20;

fn secs_since(t: Option<SystemTime>) -> Option<u64> {
    t.and_then(|t| SystemTime::now().duration_since(t).ok()).map(|d| d.as_secs())
}

fn time(t: Option<SystemTime>) -> Value {
    t.map_or(Value::Null, |t| Value::String(crate::logs::rfc3339(t)))
}

/// The JSON form of a plug-in's status.
pub(super) fn view_json(v: &PluginView) -> Value {
    json!({
        "name": v.name,
        "state": v.state,
        "enabled": v.enabled,
        "required": v.required,
        "pid": v.pid,
        "uptime_s": if v.state.is_running() { secs_since(v.started_at) } else { None },
        "started_at": time(v.started_at),
        "restarts": v.restarts,
        "generation": v.generation,
        "last_exit": v.last_exit.as_ref().map(|e| json!({
            "code": e.code, "signal": e.signal, "reason": e.reason, "at": time(v.last_exit_at),
        })),
        "next_restart_at": time(v.next_restart_at),
        "reason": v.reason,
        "waiting_for": v.waiting_for,
        "health": v.health,
        "version": v.version,
        "methods": v.methods,
        "launch": v.spec.launch,
        "protocol": v.spec.protocol,
        "after": v.spec.after,
    })
}

/// Validates a name from the path; unknown-but-valid names are the caller's 404.
pub(super) fn parse_name(name: &str) -> Result<PluginName, ApiError> {
    PluginName::parse(name).map_err(|reason| ApiError::bad_request("name", reason))
}

pub(super) async fn list(_caller: Caller, State(state): State<AppState>) -> Json<Value> {
    let snapshot = state.supervisor().snapshot();
    Json(json!({ "plugins": snapshot.plugins.iter().map(view_json).collect::<Vec<_>>() }))
}

pub(super) async fn get(
    _caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    parse_name(&name)?;
    let snapshot = state.supervisor().snapshot();
    let view = snapshot.get(&name).ok_or_else(|| ApiError::unknown_plugin(&name))?;
    let mut body = view_json(view);
    let lines = state.logs().get(&name).map(|log| log.tail(DETAIL_LOG_LINES)).unwrap_or_default();
    body["last_lines"] = json!(lines);
    if let Some(log) = state.logs().get(&name) {
        use std::sync::atomic::Ordering::Relaxed;
        let c = log.counters();
        body["log"] = json!({
            "lines": c.lines.load(Relaxed),
            "dropped": c.dropped.load(Relaxed),
            "bytes": c.bytes.load(Relaxed),
            "lines_per_s": view.spec.log_lines_per_s,
        });
    }
    body["config_schema"] = json!(view.config_schema);
    if let Some(client) = &view.client {
        let stats = client.stats();
        use std::sync::atomic::Ordering::Relaxed;
        body["rpc"] = json!({
            "calls": stats.calls.load(Relaxed),
            "timeouts": stats.timeouts.load(Relaxed),
            "junk_lines": stats.junk_lines.load(Relaxed),
            "oversized_frames": stats.oversized_frames.load(Relaxed),
            "late_messages": stats.late_messages.load(Relaxed),
            "in_flight": client.in_flight(),
        });
    }
    Ok(Json(body))
}

pub(super) async fn control(
    caller: Caller,
    State(state): State<AppState>,
    Path((name, op)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    parse_name(&name)?;
    let op = ControlOp::parse(&op).ok_or_else(|| {
        ApiError::NotFound(format!("unknown action {op:?}; use start, stop, restart, reload, enable or disable"))
    })?;
    let view = if matches!(op, ControlOp::Enable | ControlOp::Disable) {
        // One lock from the supervisor's decision to the stored flag, so concurrent toggles are
        // saved in the order the supervisor applied them.
        let _order = state.config_lock().lock().await;
        let view = state.supervisor().control(&name, op).await?;
        state.persist_enabled(&view.spec, op == ControlOp::Enable).await?;
        view
    } else {
        state.supervisor().control(&name, op).await?
    };
    tracing::info!(actor = %caller.actor, plugin = %name, action = ?op, state = view.state.as_str(), "plug-in control");
    let action = format!(
        "plugin.{}",
        serde_json::to_value(op).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    );
    let detail = json!({"state": view.state});
    audit(&state, caller_event(&caller, &action, Some(format!("plugin:{name}")), Some(detail))).await;
    Ok(Json(view_json(&view)))
}

pub(super) async fn register(
    caller: Caller,
    State(state): State<AppState>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body.map_err(super::json_rejection)?;
    let spec = PluginSpec::from_value(&body).map_err(|errors| {
        let first = errors.first().cloned().unwrap_or_default();
        let (field, reason) = first.split_once(": ").unwrap_or(("body", &first));
        ApiError::bad_request(field.trim_start_matches('.'), reason)
    })?;
    if state.supervisor().snapshot().get(spec.name.as_str()).is_some() {
        return Err(ApiError::Conflict(format!("a plug-in named {:?} already exists", spec.name.as_str())));
    }
    state.persist_new_plugin(&spec, &caller.actor).await?;
    let view = state.supervisor().register(spec).await?;
    tracing::info!(actor = %caller.actor, plugin = %view.name, "plug-in registered");
    audit(&state, caller_event(&caller, "plugin.registered", Some(format!("plugin:{}", view.name)), None)).await;
    Ok((StatusCode::CREATED, Json(view_json(&view))))
}

pub(super) async fn remove(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    parse_name(&name)?;
    if state.supervisor().snapshot().get(&name).is_none() {
        return Err(ApiError::unknown_plugin(&name));
    }
    state.persist_removal(&name).await?;
    state.supervisor().remove(&name).await?;
    tracing::info!(actor = %caller.actor, plugin = %name, "plug-in removed");
    audit(&state, caller_event(&caller, "plugin.removed", Some(format!("plugin:{name}")), None)).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Body of `POST /admin/plugins/:name/rpc`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RpcBody {
    method: String,
    #[serde(default)]
    params: Option<Value>,
    timeout_ms: Option<u64>,
}

/// Longest deadline an operator may ask for.
const MAX_RPC_TIMEOUT_MS: u64 = 600_000;

/// Calls one of the methods a plug-in declared (an operator's debugging tool, like `bkg call`).
pub(super) async fn rpc(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<RpcBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    parse_name(&name)?;
    let Json(body) = body.map_err(super::json_rejection)?;
    let snapshot = state.supervisor().snapshot();
    let view = snapshot.get(&name).ok_or_else(|| ApiError::unknown_plugin(&name))?;
    let params = match body.params {
        None => json!({}),
        Some(p @ Value::Object(_)) => p,
        Some(_) => return Err(ApiError::bad_request("params", "must be a JSON object")),
    };
    if let Some(ms) = body.timeout_ms
        && (ms == 0 || ms > MAX_RPC_TIMEOUT_MS)
    {
        return Err(ApiError::bad_request("timeout_ms", format!("must be between 1 and {MAX_RPC_TIMEOUT_MS}")));
    }
    if view.spec.protocol == Protocol::None {
        return Err(ApiError::Conflict(format!("{name} is a plain process (protocol \"none\"): it takes no calls")));
    }
    let client = state
        .supervisor()
        .client(&name)
        .ok_or_else(|| ApiError::Unavailable(format!("plug-in {name:?} is {}", view.state.as_str())))?;
    if !view.methods.contains(&body.method) {
        return Err(ApiError::bad_request("method", format!("{name} does not declare {:?}", body.method)));
    }
    let options =
        crate::rpc::CallOptions { timeout: body.timeout_ms.map(std::time::Duration::from_millis), stream: None };
    tracing::debug!(actor = %caller.actor, plugin = %name, method = %body.method, "operator rpc");
    let result = client.call(&body.method, params, options).await?;
    Ok(Json(json!({ "result": result })))
}
