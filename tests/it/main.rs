//! The single integration-test binary: the real `bkg` daemon, real plug-in processes, real HTTP.

// Helpers are shared between test modules with plain `pub`; nothing here is a public API.
#![allow(unreachable_pub)]
// A test crate: a panic is the failure report, in helpers as much as in tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Table-driven tests spell their row types out in place.
#![allow(clippy::type_complexity)]

mod auth;
mod config_api;
mod conformance;
mod control;
mod lifecycle;
mod llm;
mod llm_history;
mod logs_sse;
mod observability;
mod processes;
mod rag;
mod rag_answer;
mod support;
mod systemd;
mod ui;
