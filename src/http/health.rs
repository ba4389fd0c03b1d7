//! `GET /health`: aggregated status for load balancers and humans. Nothing secret.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use super::AppState;
use crate::supervisor::State as PluginState;

/// `ok` when every enabled plug-in is ready, `degraded` when an optional one is not (or any is
/// degraded), `down` (503) when a required one is not ready.
pub(super) async fn get(State(state): State<AppState>) -> impl IntoResponse {
    let snapshot = state.supervisor().snapshot();
    let mut plugins = BTreeMap::new();
    let mut status = "ok";
    for p in &snapshot.plugins {
        plugins.insert(p.name.clone(), p.state);
        let healthy = match p.state {
            PluginState::Ready | PluginState::Disabled => true,
            PluginState::Degraded => {
                status = if status == "ok" { "degraded" } else { status };
                continue;
            }
            _ => false,
        };
        if !healthy {
            if p.required {
                status = "down";
            } else if status == "ok" {
                status = "degraded";
            }
        }
    }
    let db_ok = state.db_ok().await;
    if !db_ok {
        status = "down";
    }
    let code = if status == "down" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let body = json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "time": crate::logs::now_rfc3339(),
        "uptime_s": state.uptime().as_secs(),
        "db_ok": db_ok,
        "plugins_count": snapshot.plugins.len(),
        "plugins": plugins,
        "gpu": false,
        "index_ok": null,
    });
    (code, Json(body))
}
