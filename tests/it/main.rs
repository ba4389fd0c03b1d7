//! The single integration-test binary: the real `bkg` daemon, real plug-in processes, real HTTP.

// Helpers are shared between test modules with plain `pub`; nothing here is a public API.
#![allow(unreachable_pub)]

mod config_api;
mod auth;
mod conformance;
mod control;
mod lifecycle;
mod llm;
mod logs_sse;
mod observability;
mod rag;
mod support;
mod systemd;
