//! Authorization as an extractor: every guarded handler takes a [`Caller`], which looks up the
//! route's scope in a deny-by-default table and checks the bearer token.
//!
//! Until the apikeys plug-in lands, the only credential is the local admin token in
//! `<data>/admin.token` (0600, created at first start), which holds every scope. The real check
//! replaces [`Caller::from_request_parts`]'s token step and nothing else.

use axum::extract::{FromRequestParts, MatchedPath};
use axum::http::request::Parts;
use axum::http::{Method, header};

use super::AppState;
use super::error::ApiError;

/// Route → required scope. A route that is not listed is denied (403), never allowed.
const SCOPES: &[(&str, &str, &str)] = &[
    ("GET", "/admin/plugins", "plugins:read"),
    ("GET", "/admin/plugins/{name}", "plugins:read"),
    ("POST", "/admin/plugins/{name}/{op}", "plugins:control"),
    ("POST", "/admin/plugins/{name}/rpc", "plugins:call"),
    ("POST", "/admin/plugins", "plugins:write"),
    ("DELETE", "/admin/plugins/{name}", "plugins:write"),
    ("GET", "/admin/plugins/{name}/config", "config:read"),
    ("POST", "/admin/plugins/{name}/config", "config:write"),
    ("GET", "/admin/plugins/{name}/config/history", "config:read"),
    ("GET", "/admin/plugins/{name}/logs", "logs:read"),
    ("GET", "/admin/logs", "logs:read"),
    ("GET", "/metrics", "metrics:read"),
    ("GET", "/admin/system", "system:read"),
    ("GET", "/admin/settings", "settings:read"),
    ("GET", "/admin/settings/{group}", "settings:read"),
    ("PUT", "/admin/settings/{group}", "settings:write"),
];

/// The scope a route needs, if the route is in the table.
pub fn required_scope(method: &Method, path: &str) -> Option<&'static str> {
    SCOPES.iter().find(|(m, p, _)| *m == method.as_str() && *p == path).map(|(_, _, s)| *s)
}

/// Every guarded route (for tests that check that each one refuses anonymous callers).
pub fn guarded_routes() -> impl Iterator<Item = (&'static str, &'static str)> {
    SCOPES.iter().map(|(m, p, _)| (*m, *p))
}

/// An authenticated caller allowed to use the route it called.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who acts, for audit and config history (never the token).
    pub actor: String,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let path = parts.extensions.get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
        let scope = required_scope(&parts.method, &path);
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(token) = token else { return Err(ApiError::Unauthorized) };
        if !constant_time_eq(token.as_bytes(), state.admin_token().as_bytes()) {
            return Err(ApiError::Unauthorized);
        }
        // The admin token holds every scope, but a route missing from the table is still denied.
        match scope {
            Some(_) => Ok(Caller { actor: "admin-token".into() }),
            None => Err(ApiError::Forbidden(format!("(no scope is defined for {} {path})", parts.method))),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
