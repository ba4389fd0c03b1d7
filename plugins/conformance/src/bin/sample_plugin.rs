//! `bkg-conformance-sample-plugin`: a minimal SDK plug-in the kit's own tests run the whole suite
//! against. It serves one method, `sample.sleep {ms}`, which sleeps (streaming a tick every 50 ms
//! when called with `"stream": true`) so that the cancellation case has something to cancel.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use bkg_plugin_sdk::{CallContext, MethodInfo, Plugin, PluginInfo, RpcError};
use serde_json::{Value, json};
use tokio::time::Instant;

/// The sample plug-in.
struct Sample;

impl Plugin for Sample {
    fn info(&self) -> PluginInfo {
        PluginInfo { name: "conformance-sample".into(), version: env!("CARGO_PKG_VERSION").into(), sdk: None }
    }

    fn methods(&self) -> BTreeMap<String, MethodInfo> {
        let sleep = MethodInfo { timeout_ms: Some(60_000), idempotent: true, stream: true };
        BTreeMap::from([("sample.sleep".to_string(), sleep)])
    }

    async fn call(&self, method: &str, params: Value, ctx: CallContext) -> Result<Value, RpcError> {
        if method != "sample.sleep" {
            return Err(RpcError::method_not_found(method));
        }
        let ms = params
            .get("ms")
            .and_then(Value::as_u64)
            .ok_or_else(|| RpcError::invalid_params("`ms` (a non-negative integer) is required"))?;
        let end = Instant::now() + Duration::from_millis(ms);
        let mut ticks = 0u64;
        if ctx.streaming() {
            while Instant::now() < end {
                tokio::time::sleep_until(end.min(Instant::now() + Duration::from_millis(50))).await;
                if ctx.stream(json!({ "tick": ticks })).await {
                    ticks += 1;
                }
            }
        } else {
            tokio::time::sleep_until(end).await;
        }
        Ok(json!({ "sleptMs": ms, "chunks": ticks }))
    }
}

fn main() -> ExitCode {
    bkg_plugin_sdk::run(Sample)
}
