//! Authorization as an extractor: every guarded handler takes a [`Caller`], which looks up the
//! route's scope in a deny-by-default table, takes the credential (the `Authorization: Bearer`
//! header, else the session cookie), checks its shape, applies the CSRF rules to cookie-borne
//! unsafe requests, and asks the apikeys plug-in through `auth::validate` (fail closed).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};

use super::AppState;
use super::error::ApiError;
use crate::auth::{self, Principal};

/// Name of the session cookie set by `POST /auth/login`.
pub const SESSION_COOKIE: &str = "bkg_session";
/// Header carrying the CSRF token of a cookie session.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Scope value meaning "any valid credential, no particular scope".
const AUTHENTICATED: &str = "";

/// Route → required scope. A route that is not listed is denied (403), never allowed.
/// Public routes are those whose handlers take no [`Caller`]: `openapi::PUBLIC` and the admin
/// UI's static files (`http::ui`, which serves embedded files only and never data).
const SCOPES: &[(&str, &str, &str)] = &[
    ("GET", "/auth/me", AUTHENTICATED),
    ("POST", "/auth/logout", AUTHENTICATED),
    ("GET", "/admin/keys", "keys:read"),
    ("POST", "/admin/keys", "keys:write"),
    ("DELETE", "/admin/keys/{id}", "keys:write"),
    ("GET", "/admin/sessions", "sessions:read"),
    ("DELETE", "/admin/sessions/{id}", "sessions:write"),
    ("GET", "/admin/users", "users:read"),
    ("POST", "/admin/users", "users:write"),
    ("PATCH", "/admin/users/{name}", "users:write"),
    ("GET", "/admin/audit", "audit:read"),
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
    ("POST", "/rag/query", "rag:query"),
    ("POST", "/rag/reindex", "rag:write"),
    ("GET", "/rag/status", "rag:query"),
    // Also needs `llm:use`, checked by the handler (`http::answer`).
    ("POST", "/rag/answer", "rag:query"),
    ("POST", "/llm/infer", "llm:use"),
    ("GET", "/llm/stream", "llm:use"),
    ("POST", "/v1/chat/completions", "llm:use"),
    ("GET", "/v1/models", "llm:use"),
    // Own entries only, unless the caller also holds `audit:read` (see `http::history`).
    ("GET", "/llm/history", "llm:use"),
    ("GET", "/llm/history/{id}", "llm:use"),
    ("POST", "/llm/history/replay", "llm:use"),
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
    /// Who acts, for audit and config history (`user:<name>` or `key:<id>`, never the token).
    pub actor: String,
    pub principal: Principal,
    /// The client's address, when the server knows it.
    pub ip: Option<IpAddr>,
    pub request_id: Option<String>,
}

/// The request id set by the request-id middleware.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Client address and request id of any request (never fails; both may be unknown).
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub ip: Option<IpAddr>,
    pub request_id: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for ClientInfo {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientInfo { ip: client_ip(parts), request_id: parts.extensions.get::<RequestId>().map(|r| r.0.clone()) })
    }
}

/// The client's IP address from the connection (never from forwarded headers: auth.md §6.9).
pub fn client_ip(parts: &Parts) -> Option<IpAddr> {
    parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

/// The credential of a request and whether it came from the cookie. The header wins.
fn credential(headers: &HeaderMap) -> Option<(String, bool)> {
    if let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        return value.strip_prefix("Bearer ").map(|t| (t.trim().to_owned(), false));
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| (v.to_owned(), true))
}

/// Go 1.25's cross-origin protection: a browser request is accepted when `Sec-Fetch-Site` says
/// same-origin (or none), or when its `Origin` matches `Host`; non-browser requests carry neither
/// header and pass.
pub fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return site == "same-origin" || site == "none";
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return true };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    origin.split_once("://").map(|(_, h)| h) == Some(host)
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let path = parts.extensions.get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
        let Some(scope) = required_scope(&parts.method, &path) else {
            return Err(ApiError::Forbidden(format!("no scope is defined for {} {path}", parts.method)));
        };
        let Some((token, from_cookie)) = credential(&parts.headers) else { return Err(ApiError::Unauthorized) };
        auth::check_shape(&token)?;
        let mut csrf = None;
        if from_cookie && !is_safe(&parts.method) {
            if !same_origin(&parts.headers) {
                return Err(ApiError::Forbidden("cross-origin request".into()));
            }
            let header = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            csrf = Some(header.ok_or_else(|| ApiError::Forbidden(format!("missing {CSRF_HEADER} header")))?);
        }
        let scope = (scope != AUTHENTICATED).then_some(scope);
        let principal = auth::validate(state.supervisor(), &token, scope, csrf).await?;
        Ok(Caller {
            actor: principal.actor(),
            principal,
            ip: client_ip(parts),
            request_id: parts.extensions.get::<RequestId>().map(|r| r.0.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn header_wins_over_cookie() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; bkg_session=fromcookie"));
        assert_eq!(credential(&h), Some(("fromcookie".into(), true)));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer fromheader"));
        assert_eq!(credential(&h), Some(("fromheader".into(), false)));
    }

    #[test]
    fn cross_origin_rules() {
        let mut h = HeaderMap::new();
        assert!(same_origin(&h), "curl sends neither header");
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8000"));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:8000"));
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(!same_origin(&h));
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin(&h));
    }

    #[test]
    fn every_route_has_a_known_scope() {
        for (_, _, scope) in SCOPES {
            assert!(
                scope.is_empty() || bkg_plugin_apikeys::scopes::ALL.contains(scope),
                "scope {scope:?} is not one the apikeys plug-in can grant"
            );
        }
    }
}
