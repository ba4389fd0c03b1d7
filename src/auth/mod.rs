//! Authentication and authorization policy: typed calls to the apikeys plug-in, the token shape
//! check, and the login throttle.
//!
//! Architecture Invariant: auth fails closed. If the apikeys plug-in is down, slow or answers
//! nonsense, the answer is "unavailable" (503), never "allowed". There is no daemon-side cache of
//! decisions, so revoking a key or ending a session denies the very next request.

mod throttle;

use std::time::Duration;

use bkg_plugin_apikeys::token;
use serde::Serialize;
use serde_json::{Value, json};

pub use throttle::LoginThrottle;

use crate::rpc::{self, CallOptions};
use crate::supervisor::SupervisorHandle;

/// The plug-in that decides.
pub const AUTH_PLUGIN: &str = "apikeys";
/// Deadline of `auth.validate` (protocol.md §2.6): fail closed after it.
pub const VALIDATE_DEADLINE: Duration = Duration::from_millis(500);
/// Deadline of the other auth calls (login runs a bcrypt).
pub const ADMIN_DEADLINE: Duration = Duration::from_secs(5);

/// Who is calling, as established by `auth.validate`.
#[derive(Debug, Clone, Serialize)]
pub struct Principal {
    /// `api_key` or `session`.
    pub kind: String,
    /// Key id or session id (public; never the token).
    pub id: String,
    /// Key name or user name.
    pub name: String,
    /// Role of a session's user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Effective scopes.
    pub scopes: Vec<String>,
    pub expires_at: Option<i64>,
}

impl Principal {
    /// `kind:name` as recorded in audit entries and config history.
    pub fn actor(&self) -> String {
        match self.kind.as_str() {
            "session" => format!("user:{}", self.name),
            _ => format!("key:{}", self.id),
        }
    }

    pub fn has(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// Why a credential was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No usable credential (missing, malformed, unknown, revoked, expired, wrong secret).
    #[error("invalid credentials: {0}")]
    Unauthorized(&'static str),
    /// A valid credential without the route's scope.
    #[error("forbidden: needs scope {0}")]
    Forbidden(String),
    /// Cookie-authenticated unsafe request without a valid CSRF token or from another origin.
    #[error("forbidden: {0}")]
    Csrf(&'static str),
    /// The apikeys plug-in could not decide (down, slow, malformed answer): fail closed.
    #[error("authentication is unavailable")]
    Unavailable,
}

/// Checks prefix, length, alphabet and CRC without any I/O.
pub fn check_shape(credential: &str) -> Result<(), AuthError> {
    token::parse(credential).map(|_| ()).map_err(|_| AuthError::Unauthorized("malformed"))
}

/// Validates a credential for `scope` (`None`: any valid credential) through the plug-in.
pub async fn validate(
    supervisor: &SupervisorHandle,
    credential: &str,
    scope: Option<&str>,
    csrf_token: Option<&str>,
) -> Result<Principal, AuthError> {
    check_shape(credential)?;
    let mut params = json!({ "token": credential });
    if let Some(scope) = scope {
        params["scope"] = json!(scope);
    }
    if let Some(csrf) = csrf_token {
        params["csrf_token"] = json!(csrf);
    }
    let options = CallOptions { timeout: Some(VALIDATE_DEADLINE), stream: None };
    let answer = supervisor.call(AUTH_PLUGIN, "auth.validate", params, options).await.map_err(|e| {
        tracing::warn!(error = %e, "auth.validate failed; failing closed");
        AuthError::Unavailable
    })?;
    decide(&answer, scope)
}

/// Turns a validate answer into a decision; anything malformed fails closed.
fn decide(answer: &Value, scope: Option<&str>) -> Result<Principal, AuthError> {
    let principal = || -> Option<Principal> {
        let p = answer.get("principal")?;
        Some(Principal {
            kind: p.get("kind")?.as_str()?.to_owned(),
            id: p.get("id")?.as_str()?.to_owned(),
            name: p.get("name")?.as_str()?.to_owned(),
            role: p.get("role").and_then(Value::as_str).map(str::to_owned),
            scopes: answer.get("scopes")?.as_array()?.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect(),
            expires_at: answer.get("expires_at").and_then(Value::as_i64),
        })
    };
    match answer.get("valid").and_then(Value::as_bool) {
        Some(true) => {
            let p = principal().ok_or(AuthError::Unavailable)?;
            // Belt and braces: the daemon checks the scope again.
            match scope {
                Some(s) if !p.has(s) => Err(AuthError::Forbidden(s.to_owned())),
                _ => Ok(p),
            }
        }
        Some(false) => match answer.get("reason").and_then(Value::as_str) {
            Some("scope") => Err(AuthError::Forbidden(scope.unwrap_or_default().to_owned())),
            Some("csrf") => Err(AuthError::Csrf("missing or wrong X-CSRF-Token")),
            Some("revoked") => Err(AuthError::Unauthorized("revoked")),
            Some("expired") => Err(AuthError::Unauthorized("expired")),
            Some("disabled") => Err(AuthError::Unauthorized("disabled")),
            _ => Err(AuthError::Unauthorized("unknown")),
        },
        None => Err(AuthError::Unavailable),
    }
}

/// Seconds since the Unix epoch (the unit of the plug-in's timestamps).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Calls an apikeys admin method (keys, sessions, users).
pub async fn admin_call(supervisor: &SupervisorHandle, method: &str, params: Value) -> Result<Value, rpc::Error> {
    let options = CallOptions { timeout: Some(ADMIN_DEADLINE), stream: None };
    supervisor.call(AUTH_PLUGIN, method, params, options).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_fail_closed_on_malformed_answers() {
        assert_eq!(decide(&json!({}), None).unwrap_err(), AuthError::Unavailable);
        assert_eq!(decide(&json!({"valid": true}), None).unwrap_err(), AuthError::Unavailable);
        assert_eq!(decide(&json!({"valid": "yes"}), None).unwrap_err(), AuthError::Unavailable);
        assert_eq!(
            decide(&json!({"valid": false, "reason": "revoked"}), None).unwrap_err(),
            AuthError::Unauthorized("revoked")
        );
        let ok = json!({"valid": true, "principal": {"kind": "api_key", "id": "k", "name": "n"}, "scopes": ["a:read"]});
        assert_eq!(decide(&ok, Some("a:read")).unwrap().actor(), "key:k");
        assert_eq!(decide(&ok, Some("a:write")).unwrap_err(), AuthError::Forbidden("a:write".into()));
    }

    #[test]
    fn shape_check_needs_no_plugin() {
        assert!(check_shape("garbage").is_err());
        let (key, _) = token::mint(token::Kind::ApiKey);
        assert!(check_shape(&key).is_ok());
    }
}
