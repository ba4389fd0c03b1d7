//! `/admin/keys`, `/admin/sessions`, `/admin/users` (served by the apikeys plug-in) and
//! `/admin/audit` (the daemon's own trail). Every change is audited; no response or audit entry
//! ever carries a secret except the one-time key in the create response (`no-store`).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::{audit, caller_event};
use super::error::ApiError;
use super::guard::Caller;
use crate::auth;
use crate::store::AuditQuery;

fn check_id(field: &str, id: &str) -> Result<(), ApiError> {
    if id.len() == 12 && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(ApiError::bad_request(field, "must be 12 base62 characters"))
    }
}

/// Body of `POST /admin/keys`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateKey {
    name: String,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    role: Option<String>,
    /// Unix seconds.
    #[serde(default)]
    expires_at: Option<i64>,
}

pub(super) async fn list_keys(_caller: Caller, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(auth::admin_call(state.supervisor(), "auth.keys.list", json!({})).await?))
}

pub(super) async fn create_key(
    caller: Caller,
    State(state): State<AppState>,
    body: Result<Json<CreateKey>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(super::json_rejection)?;
    let params = json!({
        "name": body.name, "scopes": body.scopes, "role": body.role, "expires_at": body.expires_at,
        "created_by": caller.actor, "creator_scopes": caller.principal.scopes,
    });
    let created = auth::admin_call(state.supervisor(), "auth.keys.create", params).await?;
    let id = created.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
    let detail = json!({"name": created["name"], "scopes": created["scopes"], "expires_at": created["expires_at"]});
    audit(&state, caller_event(&caller, "key.created", Some(format!("key:{id}")), Some(detail))).await;
    let mut response = (StatusCode::CREATED, Json(created)).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

pub(super) async fn revoke_key(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_id("id", &id)?;
    let revoked = auth::admin_call(state.supervisor(), "auth.keys.revoke", json!({"id": id})).await?;
    audit(&state, caller_event(&caller, "key.revoked", Some(format!("key:{id}")), None)).await;
    Ok(Json(revoked))
}

pub(super) async fn list_sessions(_caller: Caller, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(auth::admin_call(state.supervisor(), "auth.sessions.list", json!({})).await?))
}

pub(super) async fn terminate_session(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_id("id", &id)?;
    let ended = auth::admin_call(state.supervisor(), "auth.sessions.terminate", json!({"session_id": id})).await?;
    audit(&state, caller_event(&caller, "session.terminated", Some(format!("session:{id}")), None)).await;
    Ok(Json(ended))
}

/// Body of `POST /admin/users`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateUser {
    name: String,
    password: String,
    #[serde(default)]
    role: Option<String>,
}

/// Body of `PATCH /admin/users/{name}`: any of the three.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateUser {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    disabled: Option<bool>,
}

pub(super) async fn list_users(_caller: Caller, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(auth::admin_call(state.supervisor(), "auth.users.list", json!({})).await?))
}

pub(super) async fn create_user(
    caller: Caller,
    State(state): State<AppState>,
    body: Result<Json<CreateUser>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body.map_err(super::json_rejection)?;
    let params = json!({"name": body.name, "password": body.password, "role": body.role});
    let user = auth::admin_call(state.supervisor(), "auth.users.create", params).await?;
    let detail = json!({"role": user["role"]});
    audit(&state, caller_event(&caller, "user.created", Some(format!("user:{}", body.name)), Some(detail))).await;
    Ok((StatusCode::CREATED, Json(user)))
}

pub(super) async fn update_user(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<UpdateUser>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body.map_err(super::json_rejection)?;
    if body.role.is_none() && body.password.is_none() && body.disabled.is_none() {
        return Err(ApiError::bad_request("body", "give role, password or disabled"));
    }
    let mut user = Value::Null;
    let mut changed = Vec::new();
    if let Some(role) = &body.role {
        user = auth::admin_call(state.supervisor(), "auth.users.set_role", json!({"name": name, "role": role})).await?;
        changed.push("role");
    }
    if let Some(password) = &body.password {
        let params = json!({"name": name, "password": password});
        user = auth::admin_call(state.supervisor(), "auth.users.set_password", params).await?;
        changed.push("password");
    }
    if let Some(disabled) = body.disabled {
        let params = json!({"name": name, "disabled": disabled});
        user = auth::admin_call(state.supervisor(), "auth.users.disable", params).await?;
        changed.push("disabled");
    }
    let detail = json!({"changed": changed, "role": user["role"], "disabled": user["disabled"]});
    audit(&state, caller_event(&caller, "user.updated", Some(format!("user:{name}")), Some(detail))).await;
    Ok(Json(user))
}

/// Query of `GET /admin/audit`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditParams {
    from: Option<String>,
    to: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    limit: Option<u32>,
    offset: Option<u64>,
}

/// Most entries per page.
const MAX_AUDIT_PAGE: u32 = 500;

pub(super) async fn audit_log(
    _caller: Caller,
    State(state): State<AppState>,
    query: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("query", e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_AUDIT_PAGE {
        return Err(ApiError::bad_request("limit", format!("must be between 1 and {MAX_AUDIT_PAGE}")));
    }
    for (field, value) in [("from", &q.from), ("to", &q.to)] {
        if let Some(v) = value
            && !looks_like_rfc3339(v)
        {
            return Err(ApiError::bad_request(field, "must be an RFC 3339 time like 2026-11-23T10:00:00Z"));
        }
    }
    let offset = q.offset.unwrap_or(0);
    let query =
        AuditQuery { from: q.from, to: q.to, actor: q.actor, action: q.action, target: q.target, limit, offset };
    let events = state.store().audit_query(query).await?;
    let next = (events.len() as u32 == limit).then(|| offset + u64::from(limit));
    Ok(Json(json!({ "events": events, "next_offset": next })))
}

fn looks_like_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':'
}
