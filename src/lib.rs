//! `bkg`: a supervisor daemon for an AI backend.
//!
//! Codemap (see ARCHITECTURE.md for the invariants):
//! - [`answer`]: answers with sources: prompt budget, `[n]` citation checks (pure).
//! - [`app`]: wiring, startup and shutdown order, [`app::AppState`].
//! - [`config`]: the plug-in registry (`plugins.json`) and its validation.
//! - [`supervisor`]: plug-in processes and their state machine (the only module that spawns or
//!   signals).
//! - [`rpc`]: the svp/1 client side (ids, deadlines, cancellation, streams).
//! - [`logs`]: plug-in stderr → ring buffers and live subscribers.
//! - [`metrics`]: counters and histograms of the daemon, and the Prometheus text writer.
//! - [`store`]: SQLite (`bkg.db`), the only module that knows SQL.
//! - [`http`]: the axum router, the only module that knows status codes.
//! - [`settings`]: the daemon's settings groups (typed, validated, live).
//! - [`shutdown`]: signals and the graceful/forced shutdown tokens.

pub mod answer;
pub mod app;
pub mod auth;
pub mod config;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod rpc;
pub mod settings;
pub mod shutdown;
pub mod store;
pub mod supervisor;

pub use app::{Settings, run};
pub use shutdown::Shutdown;
