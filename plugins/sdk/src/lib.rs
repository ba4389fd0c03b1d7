//! `bkg-plugin-sdk`: svp/1, the protocol between the `bkg` daemon and its plug-ins.
//!
//! Used by both sides, so a protocol change breaks the build of both at once.
//!
//! - [`protocol`]: wire types, codes, encode/decode (no I/O).
//! - [`codec`]: bounded NDJSON framing that reports oversized lines as items and keeps going.
//! - [`server`]: the plug-in side. Implement [`Plugin`] and call [`run`] from `main`.
//! - [`stdio`] and [`logging`]: claiming fd 1 for the wire and logging JSON lines to stderr.
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use bkg_plugin_sdk::{CallContext, MethodInfo, Plugin, PluginInfo, RpcError};
//! use serde_json::Value;
//!
//! struct Hello;
//! impl Plugin for Hello {
//!     fn info(&self) -> PluginInfo {
//!         PluginInfo { name: "hello".into(), version: "0.1.0".into(), sdk: None }
//!     }
//!     fn methods(&self) -> BTreeMap<String, MethodInfo> {
//!         BTreeMap::from([("hello.greet".to_string(), MethodInfo::default())])
//!     }
//!     async fn call(&self, _method: &str, params: Value, _ctx: CallContext) -> Result<Value, RpcError> {
//!         Ok(serde_json::json!({ "greeting": format!("hello {}", params["name"]) }))
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     bkg_plugin_sdk::run(Hello)
//! }
//! ```

pub mod codec;
pub mod logging;
pub mod protocol;
pub mod server;
pub mod stdio;
#[cfg(feature = "testing")]
pub mod testing;

pub use protocol::{Health, HealthStatus, InitializeParams, Limits, MethodInfo, PluginInfo, RequestId, RpcError};
pub use server::{CallContext, ExitReason, Plugin, ServeOptions, run, serve_io};
