//! `POST /auth/login`, `POST /auth/logout`, `GET /auth/me`.
//!
//! Login answers `{token, expires_at, session_id, csrf_token}` and also sets the token as an
//! HttpOnly, SameSite=Strict cookie for the admin UI. Nothing here logs a password or a token.

use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::guard::{Caller, ClientInfo, SESSION_COOKIE, same_origin};
use crate::auth;
use crate::store::AuditEvent;

/// Body of `POST /auth/login`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LoginBody {
    user: String,
    password: String,
}

fn cookie(token: &str, max_age: i64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}"))
        .ok()
}

/// Records an audit event; a failure to record is logged, never turned into a client error.
pub(super) async fn audit(state: &AppState, event: AuditEvent) {
    if let Err(e) = state.store().audit(event).await {
        tracing::error!(error = %e, "cannot write the audit trail");
    }
}

/// Builds an audit event.
pub(super) fn event(
    actor: &str,
    ip: Option<std::net::IpAddr>,
    request_id: Option<String>,
    action: &str,
    target: Option<String>,
    outcome: &str,
    detail: Option<Value>,
) -> AuditEvent {
    AuditEvent {
        id: 0,
        ts: String::new(),
        actor: actor.to_owned(),
        ip: ip.map(|ip| ip.to_string()),
        request_id,
        action: action.to_owned(),
        target,
        outcome: outcome.to_owned(),
        detail,
    }
}

/// Audit record for an action by an authenticated caller.
pub(super) fn caller_event(caller: &Caller, action: &str, target: Option<String>, detail: Option<Value>) -> AuditEvent {
    event(&caller.actor, caller.ip, caller.request_id.clone(), action, target, "success", detail)
}

pub(super) async fn login(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    body: Result<Json<LoginBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let ip = client.ip.unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    let rid = client.request_id;
    // Login CSRF: a cross-site page must not log the browser into our UI (auth.md §6.19).
    if !same_origin(&headers) {
        return Err(ApiError::Forbidden("cross-origin login".into()));
    }
    let Json(body) = body.map_err(super::json_rejection)?;
    if body.user.is_empty() || body.password.is_empty() {
        return Err(ApiError::bad_request(if body.user.is_empty() { "user" } else { "password" }, "must not be empty"));
    }
    if let Err(retry_after) = state.login_throttle().admit(ip, Instant::now()) {
        let detail = json!({"user": body.user});
        audit(&state, event("anonymous", Some(ip), rid, "auth.login.throttled", None, "denied", Some(detail))).await;
        return Err(ApiError::TooManyRequests(retry_after));
    }
    let ua = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let params = json!({"user": body.user, "password": body.password, "ip": ip.to_string(), "user_agent": ua});
    let answer = auth::admin_call(state.supervisor(), "auth.login", params)
        .await
        .map_err(|_| ApiError::Unavailable("authentication is unavailable; try again".into()))?;
    if answer.get("ok").and_then(Value::as_bool) != Some(true) {
        state.login_throttle().failed(ip, Instant::now());
        let detail = json!({"user": body.user});
        audit(&state, event("anonymous", Some(ip), rid, "auth.login.failed", None, "failure", Some(detail))).await;
        return Err(ApiError::Unauthorized);
    }
    state.login_throttle().succeeded(ip);
    let field = |k: &str| answer.get(k).cloned().unwrap_or(Value::Null);
    let token = answer.get("token").and_then(Value::as_str).unwrap_or_default().to_owned();
    let actor = format!("user:{}", body.user);
    let target = answer.get("session_id").and_then(Value::as_str).map(|s| format!("session:{s}"));
    audit(&state, event(&actor, Some(ip), rid, "auth.login.succeeded", target, "success", None)).await;
    let body = json!({
        "token": token, "expires_at": field("expires_at"), "session_id": field("session_id"),
        "csrf_token": field("csrf_token"), "user": field("user"),
    });
    let mut response = (StatusCode::OK, Json(body)).into_response();
    let ttl = answer.get("expires_at").and_then(Value::as_i64).map_or(86_400, |e| e - crate::auth::unix_now()).max(0);
    if let Some(c) = cookie(&token, ttl) {
        response.headers_mut().insert(header::SET_COOKIE, c);
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

pub(super) async fn logout(caller: Caller, State(state): State<AppState>) -> Result<Response, ApiError> {
    if caller.principal.kind != "session" {
        return Err(ApiError::bad_request("credential", "logout ends a session; revoke API keys instead"));
    }
    let sid = caller.principal.id.clone();
    auth::admin_call(state.supervisor(), "auth.logout", json!({"session_id": sid})).await?;
    audit(&state, caller_event(&caller, "auth.logout", Some(format!("session:{sid}")), None)).await;
    let mut response = Json(json!({"logged_out": true})).into_response();
    if let Some(c) = cookie("", 0) {
        response.headers_mut().insert(header::SET_COOKIE, c);
    }
    Ok(response)
}

pub(super) async fn me(caller: Caller) -> Json<Value> {
    Json(json!({ "principal": caller.principal }))
}
