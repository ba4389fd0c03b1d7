//! The HTTP API: `router(state)` and `serve(listener, state, shutdown)`.
//!
//! Architecture Invariant: this is the only module that knows axum or HTTP status codes; handlers
//! are thin (parse, call, map). Every guarded handler takes a `guard::Caller`.

mod answer;
mod auth;
mod config;
pub mod error;
pub mod guard;
mod health;
mod history;
mod keys;
mod llm;
mod logs;
mod metrics;
mod openai;
pub mod openapi;
mod plugins;
mod rag;
mod settings;
mod system;
mod ui;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::JsonRejection;
use axum::routing::{delete, get, patch, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::app::AppState;
use error::ApiError;

/// Default request body limit (design.md §7).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// Every route of the daemon.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health::get))
        .route("/auth/login", post(auth::login))
        .route("/auth/logout", post(auth::logout))
        .route("/auth/me", get(auth::me))
        .route("/admin/keys", get(keys::list_keys).post(keys::create_key))
        .route("/admin/keys/{id}", delete(keys::revoke_key))
        .route("/admin/sessions", get(keys::list_sessions))
        .route("/admin/sessions/{id}", delete(keys::terminate_session))
        .route("/admin/users", get(keys::list_users).post(keys::create_user))
        .route("/admin/users/{name}", patch(keys::update_user))
        .route("/admin/audit", get(keys::audit_log))
        .route("/admin/plugins", get(plugins::list).post(plugins::register))
        .route("/admin/plugins/{name}", get(plugins::get).delete(plugins::remove))
        .route("/admin/plugins/{name}/rpc", post(plugins::rpc))
        .route("/admin/plugins/{name}/{op}", post(plugins::control))
        .route("/admin/plugins/{name}/config", get(config::get).post(config::post))
        .route("/admin/plugins/{name}/config/history", get(config::history))
        .route("/admin/settings", get(settings::list))
        .route("/admin/settings/{group}", get(settings::get).put(settings::put))
        .route("/admin/plugins/{name}/logs", get(logs::plugin))
        .route("/admin/logs", get(logs::all))
        .route("/metrics", get(metrics::get))
        .route("/admin/system", get(system::get))
        .route("/openapi.json", get(openapi::get))
        // The admin UI's static files: public, like /health (see `ui`).
        .route("/", get(ui::root))
        .route("/ui", get(ui::root))
        .route("/ui/", get(ui::index))
        .route("/ui/{file}", get(ui::file))
        .route("/rag/query", post(rag::query))
        .route("/rag/reindex", post(rag::reindex))
        .route("/rag/status", get(rag::status))
        // Streams with `stream: true`, like /llm/infer.
        .route("/rag/answer", post(answer::answer))
        // Streams (SSE, WebSocket): no timeout layer may wrap these; `llm` bounds them itself.
        .route("/llm/infer", post(llm::infer))
        .route("/llm/stream", get(llm::ws))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::models))
        .route("/llm/history", get(history::list))
        .route("/llm/history/{id}", get(history::get))
        .route("/llm/history/replay", post(history::replay))
        // Inside the default limit below, so `security.body_limit_bytes` is the one that counts.
        .layer(axum::middleware::from_fn_with_state(state.clone(), settings::body_limit))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // Outside every route and the body limits, so every answer is counted (by route
        // template, see `metrics::track`); routes added below this line would not be.
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .layer(axum::middleware::from_fn(request_id))
        .with_state(state)
}

/// Gives every request an id (the client's `x-request-id` when it is sane, else a random one),
/// visible to handlers as [`guard::RequestId`] and echoed in the response.
async fn request_id(mut request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::http::HeaderValue;
    let given = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .map(str::to_owned);
    let id = given.unwrap_or_else(|| hex::encode(rand::random::<[u8; 8]>()));
    request.extensions_mut().insert(guard::RequestId(id.clone()));
    let mut response = next.run(request).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// Serves until `shutdown` is cancelled, then drains in-flight requests.
pub async fn serve(listener: TcpListener, state: AppState, shutdown: CancellationToken) -> std::io::Result<()> {
    // Connect info gives handlers the peer address (login throttling, audit); forwarded headers
    // are never trusted for it.
    use axum::serve::ListenerExt;
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    // Streams write small events (a `status`, then the first token): with Nagle's algorithm on,
    // the second one waits for the client's delayed ACK, ~40 ms (measured by `bkg-bench relay`).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
    });
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

/// Maps axum's JSON body rejections onto our error shape.
pub(crate) fn json_rejection(rejection: JsonRejection) -> ApiError {
    use axum::http::StatusCode;
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::PayloadTooLarge(BODY_LIMIT);
    }
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::bad_request("content-type", "expected application/json"),
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::bad_request("body", format!("malformed JSON: {}", e.body_text()))
        }
        JsonRejection::JsonDataError(e) => ApiError::bad_request("body", e.body_text()),
        other => ApiError::bad_request("body", other.body_text()),
    }
}
