//! The HTTP API: `router(state)` and `serve(listener, state, shutdown)`.
//!
//! Architecture Invariant: this is the only module that knows axum or HTTP status codes; handlers
//! are thin (parse, call, map). Every guarded handler takes a `guard::Caller`.

pub mod error;
pub mod guard;
mod config;
mod health;
mod logs;
mod metrics;
pub mod openapi;
mod plugins;
mod settings;
mod system;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::JsonRejection;
use axum::routing::{get, post};
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
        // Inside the default limit below, so `security.body_limit_bytes` is the one that counts.
        .layer(axum::middleware::from_fn_with_state(state.clone(), settings::body_limit))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // Outermost, so every answer is counted (by route template, see `metrics::track`);
        // routes added below this line would not be.
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .with_state(state)
}

/// Serves until `shutdown` is cancelled, then drains in-flight requests.
pub async fn serve(listener: TcpListener, state: AppState, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown.cancelled_owned()).await
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
