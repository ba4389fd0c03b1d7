//! `apikeys`: users, sessions and scoped API keys for the bkg daemon, in `bkg.db`.
//!
//! - [`token`]: the key and session token format, shared with the daemon's shape check.
//! - [`scopes`]: the scope list and role presets.
//! - `db`: the plug-in's tables (blocking; always called from `spawn_blocking`).
//! - `service`: the svp/1 methods (`auth.validate`, `auth.login`, keys, sessions, users).
//!
//! Passwords and API keys are stored as bcrypt (`non_truncating_*`), session and CSRF tokens as
//! SHA-256. Nothing secret is ever logged. An auth denial is a *result* (`valid: false`), never
//! an error: an error means "could not decide" and the daemon fails closed (protocol.md §2.10).

mod db;
pub mod scopes;
mod service;
pub mod token;

/// Entry point of `bkg plugin apikeys`.
pub fn run() -> std::process::ExitCode {
    bkg_plugin_sdk::run(service::ApiKeys::default())
}
