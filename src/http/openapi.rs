//! `GET /openapi.json`: an OpenAPI 3.1 document generated from [`ROUTES`], with each route's
//! scope taken from the guard's scope table (`guard::required_scope`), never written twice.
//!
//! Drift is caught by tests in both directions: the unit tests below check that [`ROUTES`] and
//! the guard's table list the same guarded routes, and `tests/it/observability.rs` calls every
//! documented route on the real daemon and checks that the router knows it (401 or 200, never
//! 404/405). A guarded route missing from the scope table is unusable (the guard denies it), so
//! a route cannot hide from the document by skipping the table either.

use axum::Json;
use axum::http::Method;
use serde_json::{Map, Value, json};

use super::guard;

/// A query parameter of a route.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    /// JSON schema type: `integer` or `string`.
    pub kind: &'static str,
    pub description: &'static str,
}

/// One route of the router, as documented.
#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    pub method: &'static str,
    /// axum's template syntax, which is also OpenAPI's: `/admin/plugins/{name}`.
    pub path: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    pub query: &'static [Param],
    /// The route takes a JSON body.
    pub body: bool,
    /// Success status and its media type.
    pub ok: (u16, &'static str),
}

const JSON: &str = "application/json";

const fn route(method: &'static str, path: &'static str, tag: &'static str, summary: &'static str) -> RouteDoc {
    RouteDoc { method, path, tag, summary, query: &[], body: false, ok: (200, JSON) }
}

const fn with_body(mut r: RouteDoc) -> RouteDoc {
    r.body = true;
    r
}

const LOG_QUERY: &[Param] = &[
    Param { name: "tail", kind: "integer", description: "backlog lines sent first (default 100, at most 5000)" },
    Param {
        name: "after",
        kind: "string",
        description: "resume after this event id (like Last-Event-ID, which wins when both are given)",
    },
    Param { name: "level", kind: "string", description: "minimum level: trace, debug, info, warn or error" },
    Param { name: "q", kind: "string", description: "only lines whose message contains this text" },
];

const AUDIT_QUERY: &[Param] = &[
    Param { name: "from", kind: "string", description: "RFC 3339 time, inclusive" },
    Param { name: "to", kind: "string", description: "RFC 3339 time, exclusive" },
    Param { name: "actor", kind: "string", description: "user:<name> or key:<id>" },
    Param { name: "action", kind: "string", description: "e.g. key.created" },
    Param { name: "target", kind: "string", description: "e.g. plugin:llm" },
    Param { name: "limit", kind: "integer", description: "entries per page (1 to 500, default 100)" },
    Param { name: "offset", kind: "integer", description: "the next_offset of the previous page" },
];

const HISTORY_QUERY: &[Param] = &[
    Param { name: "limit", kind: "integer", description: "entries per page (1 to 200, default 50)" },
    Param {
        name: "before",
        kind: "integer",
        description: "only entries with a smaller id: the next_before of the previous page",
    },
    Param { name: "actor", kind: "string", description: "user:<name> or key:<id> (others' need audit:read)" },
    Param { name: "route", kind: "string", description: "/llm/infer, /llm/stream, /v1/chat/completions or replay" },
];

/// API routes that need no credentials. The admin UI's static files (`GET /`, `/ui/`,
/// `/ui/{file}`, see `http::ui`) are public too; they are not API operations, so the document
/// leaves them out.
pub const PUBLIC: &[(&str, &str)] = &[("GET", "/health"), ("GET", "/openapi.json"), ("POST", "/auth/login")];

/// Every route of the router.
pub const ROUTES: &[RouteDoc] = &[
    route("GET", "/health", "system", "Aggregated health: ok, degraded (200) or down (503)"),
    route("GET", "/openapi.json", "system", "This document"),
    with_body(route(
        "POST",
        "/auth/login",
        "auth",
        "Log in with user and password: a session token (also set as a cookie) and its CSRF token; 429 when throttled",
    )),
    route("POST", "/auth/logout", "auth", "End the calling session"),
    route("GET", "/auth/me", "auth", "The calling principal: user or key, role, scopes"),
    route("GET", "/admin/keys", "keys", "API keys (never their secrets)"),
    RouteDoc {
        ok: (201, JSON),
        ..with_body(route("POST", "/admin/keys", "keys", "Create an API key (the secret is shown once)"))
    },
    route("DELETE", "/admin/keys/{id}", "keys", "Revoke an API key"),
    route("GET", "/admin/sessions", "keys", "Open sessions"),
    route("DELETE", "/admin/sessions/{id}", "keys", "End a session"),
    route("GET", "/admin/users", "users", "Users and their roles"),
    with_body(route("POST", "/admin/users", "users", "Create a user")),
    with_body(route("PATCH", "/admin/users/{name}", "users", "Change a user's role, password or disabled flag")),
    RouteDoc { query: AUDIT_QUERY, ..route("GET", "/admin/audit", "audit", "The audit trail, newest first, paged") },
    RouteDoc { ok: (200, crate::metrics::CONTENT_TYPE), ..route("GET", "/metrics", "system", "Prometheus metrics") },
    route(
        "GET",
        "/admin/system",
        "system",
        "Processes of the daemon and plug-ins: pid, cpu, rss, threads, fds, uptime",
    ),
    route("GET", "/admin/plugins", "plugins", "Every plug-in and its state"),
    RouteDoc { ok: (201, JSON), ..with_body(route("POST", "/admin/plugins", "plugins", "Register a plug-in")) },
    route("GET", "/admin/plugins/{name}", "plugins", "One plug-in: state, pid, restarts, last exit, health, methods"),
    RouteDoc { ok: (204, JSON), ..route("DELETE", "/admin/plugins/{name}", "plugins", "Stop and remove a plug-in") },
    route(
        "POST",
        "/admin/plugins/{name}/{op}",
        "plugins",
        "Lifecycle action: start, stop, restart, reload, enable or disable (answers with the new state)",
    ),
    with_body(route("POST", "/admin/plugins/{name}/rpc", "plugins", "Call a method the plug-in declared")),
    route("GET", "/admin/plugins/{name}/config", "config", "Current config (secrets redacted)"),
    with_body(route("POST", "/admin/plugins/{name}/config", "config", "Validate, store and apply a new config")),
    route("GET", "/admin/plugins/{name}/config/history", "config", "Config versions: who, when, old and new"),
    RouteDoc {
        query: LOG_QUERY,
        ok: (200, "text/event-stream"),
        ..route(
            "GET",
            "/admin/plugins/{name}/logs",
            "logs",
            "Log stream (SSE; id = sequence number, Last-Event-ID resumes, `gap` events announce loss); \
             Accept: application/json returns recent lines",
        )
    },
    RouteDoc {
        query: LOG_QUERY,
        ok: (200, "text/event-stream"),
        ..route(
            "GET",
            "/admin/logs",
            "logs",
            "Every plug-in's logs merged (SSE; id = plugin:seq cursor of every plug-in, Last-Event-ID resumes)",
        )
    },
    route("GET", "/admin/settings", "settings", "Every daemon settings group"),
    route("GET", "/admin/settings/{group}", "settings", "One settings group"),
    with_body(route("PUT", "/admin/settings/{group}", "settings", "Validate, store and apply a settings group")),
    with_body(route(
        "POST",
        "/rag/query",
        "rag",
        "Retrieve passages: {query, top_k?, mode?, path_prefix?} → results with text, score and source",
    )),
    with_body(route("POST", "/rag/reindex", "rag", "Rebuild the index ({full?}); answers once it committed")),
    route("GET", "/rag/status", "rag", "Index size, model state, progress of a running reindex"),
    with_body(route(
        "POST",
        "/rag/answer",
        "rag",
        "Answer with sources: {question, k?: 1..10, mode?, max_tokens?, temperature?, stream?} → {answer, sources \
         [{n, path, start, end, heading, text, sha256, score, cited}], usage, finish_reason, dropped_citations}; \
         SSE sources, token, summary with stream; also needs llm:use",
    )),
    with_body(route(
        "POST",
        "/llm/infer",
        "llm",
        "Generate text: {prompt | messages, max_tokens, temperature, top_p, stop, seed, stream?, rag?}; SSE token events \
         with stream; rag: {k?, mode?} answers with sources (also needs rag:query)",
    )),
    route("GET", "/llm/stream", "llm", "WebSocket: several generations per socket by req_id, with cancel"),
    with_body(route(
        "POST",
        "/v1/chat/completions",
        "llm",
        "OpenAI-compatible chat completions (stream and non-stream)",
    )),
    route("GET", "/v1/models", "llm", "OpenAI-compatible model list"),
    RouteDoc {
        query: HISTORY_QUERY,
        ..route(
            "GET",
            "/llm/history",
            "llm",
            "LLM request history, newest first: input, output, usage, timings, outcome; {entries, next_before} \
             (own entries; every actor's with audit:read)",
        )
    },
    route("GET", "/llm/history/{id}", "llm", "One LLM history entry (404 when unknown or another actor's)"),
    with_body(route(
        "POST",
        "/llm/history/replay",
        "llm",
        "Run a history entry again as a new request ({id, stream?}); answers like /llm/infer",
    )),
];

/// The names of a path's `{parameters}`.
fn path_params(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
}

fn scope_of(r: &RouteDoc) -> Option<&'static str> {
    let method = Method::from_bytes(r.method.as_bytes()).ok()?;
    guard::required_scope(&method, r.path)
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { JSON: { "schema": { "$ref": "#/components/schemas/Error" } } },
    })
}

fn operation(r: &RouteDoc) -> Value {
    let mut params: Vec<Value> = path_params(r.path)
        .map(|p| json!({ "name": p, "in": "path", "required": true, "schema": { "type": "string" } }))
        .collect();
    params.extend(r.query.iter().map(|q| {
        json!({ "name": q.name, "in": "query", "required": false, "description": q.description,
                "schema": { "type": q.kind } })
    }));
    if r.ok.1 == "text/event-stream" {
        params.push(json!({ "name": "Last-Event-ID", "in": "header", "required": false,
                            "description": "resume after this event id", "schema": { "type": "string" } }));
    }
    let (status, media) = r.ok;
    let mut ok = json!({ "description": "success" });
    if status != 204 {
        ok["content"] = json!({ media: {} });
        if media == "text/event-stream" {
            ok["content"][JSON] =
                json!({ "schema": { "type": "array", "items": { "$ref": "#/components/schemas/LogLine" } } });
        }
    }
    let mut responses = Map::new();
    responses.insert(status.to_string(), ok);
    if !params.is_empty() || r.body {
        responses.insert("400".into(), error_response("bad input (the field and the reason are in details)"));
    }
    let scope = scope_of(r);
    if scope.is_some() {
        responses.insert("401".into(), error_response("missing or invalid credentials"));
        responses.insert("403".into(), error_response("the credentials lack the scope"));
    }
    if path_params(r.path).next().is_some() {
        responses.insert("404".into(), error_response("unknown name"));
    }
    if r.body {
        responses.insert("413".into(), error_response("body too large"));
    }
    let operation_id: String = format!("{} {}", r.method.to_lowercase(), r.path)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut op = json!({
        "operationId": operation_id,
        "summary": r.summary,
        "tags": [r.tag],
        "parameters": params,
        "responses": responses,
    });
    match scope {
        // Any valid credential, no particular scope.
        Some("") => op["security"] = json!([{ "bearer": [] }, { "session": [] }]),
        Some(scope) => {
            op["security"] = json!([{ "bearer": [scope] }, { "session": [scope] }]);
            op["x-scope"] = json!(scope);
        }
        None => op["security"] = json!([]),
    }
    if r.body {
        op["requestBody"] = json!({ "required": true, "content": { JSON: { "schema": { "type": "object" } } } });
    }
    op
}

/// Every route the document describes: [`ROUTES`], plus any guarded route someone added to the
/// scope table without a row here (described from the table alone, so the document never lacks
/// a route; the unit tests still demand a row).
fn all_routes() -> Vec<RouteDoc> {
    let mut all = ROUTES.to_vec();
    for (method, path) in guard::guarded_routes() {
        if !ROUTES.iter().any(|r| r.method == method && r.path == path) {
            let mut r = route(method, path, "undocumented", "(not documented yet)");
            r.body = matches!(method, "POST" | "PUT" | "PATCH");
            all.push(r);
        }
    }
    all
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for r in all_routes() {
        let item = paths.entry(r.path.to_owned()).or_insert_with(|| json!({}));
        item[r.method.to_lowercase()] = operation(&r);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "bkg",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Supervisor daemon for an AI backend: plug-in lifecycle, config, logs and metrics.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                // OpenAPI 3.1 lets non-OAuth schemes list required roles: here, the scope.
                "bearer": { "type": "http", "scheme": "bearer", "description": "an API key or a session token" },
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": guard::SESSION_COOKIE,
                    "description": "the session cookie of POST /auth/login; unsafe methods also need the X-CSRF-Token header",
                },
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": { "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": { "type": "string" },
                            "message": { "type": "string" },
                            "details": { "type": "object" },
                        },
                    } },
                },
                "LogLine": {
                    "type": "object",
                    "required": ["seq", "plugin", "ts", "level", "msg", "stream"],
                    "properties": {
                        "seq": { "type": "integer", "description": "per plug-in sequence number" },
                        "plugin": { "type": "string" },
                        "ts": { "type": "string", "format": "date-time" },
                        "level": { "enum": ["trace", "debug", "info", "warn", "error"] },
                        "msg": { "type": "string" },
                        "fields": { "type": "object" },
                        "stream": { "enum": ["stderr", "daemon"] },
                        "raw": { "type": "boolean" },
                        "truncated": { "type": "boolean" },
                    },
                },
            },
        },
    })
}

/// Handler of `GET /openapi.json` (no credentials: the document holds nothing secret).
pub(super) async fn get() -> Json<Value> {
    Json(document())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn documented_routes_and_the_scope_table_agree() {
        let guarded: BTreeSet<_> = guard::guarded_routes().collect();
        let public: BTreeSet<_> = PUBLIC.iter().copied().collect();
        let documented: BTreeSet<_> = ROUTES.iter().map(|r| (r.method, r.path)).collect();
        assert_eq!(documented.len(), ROUTES.len(), "a route is documented twice");
        let undocumented: Vec<_> = guarded.difference(&documented).collect();
        assert!(undocumented.is_empty(), "guarded but not in ROUTES: {undocumented:?}");
        let expected: BTreeSet<_> = guarded.union(&public).copied().collect();
        let unknown: Vec<_> = documented.difference(&expected).collect();
        assert!(unknown.is_empty(), "in ROUTES but neither guarded nor public: {unknown:?}");
        assert!(guarded.is_disjoint(&public), "a public route has a scope");
    }

    #[test]
    fn every_operation_carries_its_scope_and_parameters() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        for r in ROUTES {
            let op = &doc["paths"][r.path][r.method.to_lowercase()];
            assert!(op.is_object(), "{} {} missing", r.method, r.path);
            let expected = match scope_of(r) {
                None => json!([]),
                Some("") => json!([{ "bearer": [] }, { "session": [] }]),
                Some(s) => json!([{ "bearer": [s] }, { "session": [s] }]),
            };
            assert_eq!(op["security"], expected, "{} {}", r.method, r.path);
            let params: Vec<&str> = op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            assert_eq!(params, path_params(r.path).collect::<Vec<_>>());
        }
        assert_eq!(doc["paths"]["/admin/plugins/{name}/logs"]["get"]["x-scope"], "logs:read");
        assert_eq!(doc["paths"]["/metrics"]["get"]["x-scope"], "metrics:read");
        let ids: BTreeSet<_> = ROUTES.iter().map(|r| operation(r)["operationId"].to_string()).collect();
        assert_eq!(ids.len(), ROUTES.len(), "operationIds must be unique");
    }
}
