//! `echo`: the example svp/1 plug-in. Copy this file to start your own.
//!
//! A plug-in is a child process that the `bkg` daemon starts and talks to with JSON-RPC over
//! stdin/stdout (one JSON object per line). The SDK (`bkg-plugin-sdk`) does all of the protocol
//! work: the handshake, `$/ping`, `plugin.health`, deadlines, cancellation, streaming and
//! `shutdown`. A plug-in only implements the [`Plugin`] trait:
//!
//! - [`Plugin::info`] and [`Plugin::methods`]: who we are and which methods we serve, each with
//!   the timeout the daemon should apply;
//! - [`Plugin::initialize`]: check the `config` object from the daemon's registry;
//! - [`Plugin::call`]: serve one request.
//!
//! Methods served here:
//!
//! | Method | Params | Result |
//! |---|---|---|
//! | `echo.echo` | anything | the params, without the protocol keys `_meta` and `stream` |
//! | `echo.upper` | `{"text": string}` | `{"text": prefix + TEXT}` |
//! | `echo.stream` | `{"text": string, "interval_ms"?: number, "stream": true}` | one `$/stream` chunk `{"delta": word}` per word, then `{"chunks": n}` |
//!
//! Config (all keys optional): `{"prefix": string}`, prepended to the text `echo.upper` returns.
//!
//! Two rules every plug-in must follow, both enforced for you by the SDK: nothing but protocol
//! messages may go to stdout (the SDK points fd 1 at stderr, so a stray `println!` is harmless),
//! and logs go to stderr as JSON lines (use `tracing`).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use bkg_plugin_sdk::{CallContext, InitializeParams, MethodInfo, Plugin, PluginInfo, RpcError};
use serde::Deserialize;
use serde_json::{Value, json};

/// Runs the echo plug-in on this process's stdin/stdout and returns its exit code.
///
/// The daemon runs it as `bkg plugin echo`; the `bkg-plugin-echo` binary calls it from `main`.
pub fn run() -> ExitCode {
    bkg_plugin_sdk::run(Echo::default())
}

/// The plug-in's configuration: the `config` object of `initialize`.
///
/// `deny_unknown_fields` turns a typo in the registry (`"prefx"`) into a clear handshake error
/// instead of a silently ignored setting.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EchoConfig {
    /// Prepended to the text that `echo.upper` returns.
    #[serde(default)]
    prefix: String,
}

/// The plug-in. Methods take `&self` and run concurrently, so state that changes after start-up
/// needs interior mutability; the config is set once, in `initialize`.
#[derive(Debug, Default)]
struct Echo {
    config: OnceLock<EchoConfig>,
}

impl Echo {
    fn prefix(&self) -> &str {
        self.config.get().map_or("", |c| c.prefix.as_str())
    }
}

/// Parses `initialize.config`: absent (`null`) means all defaults, an object is checked key by
/// key, anything else is an error. Every error is `-32602 InvalidParams`, which fails the
/// handshake, and the daemon reports the message to the operator.
fn parse_config(config: &Value) -> Result<EchoConfig, RpcError> {
    match config {
        Value::Null => Ok(EchoConfig::default()),
        Value::Object(_) => {
            EchoConfig::deserialize(config).map_err(|e| RpcError::invalid_params(format!("invalid echo config: {e}")))
        }
        other => Err(RpcError::invalid_params(format!("invalid echo config: expected an object, got {other}"))),
    }
}

/// Removes the keys the protocol puts into every params object (`_meta` carries the deadline,
/// `stream` asks for `$/stream` chunks), leaving what the caller sent.
fn without_protocol_keys(mut params: Value) -> Value {
    if let Value::Object(map) = &mut params {
        map.remove("_meta");
        map.remove("stream");
    }
    params
}

/// Reads the required string param `text`, or explains what is wrong with it.
fn text_param<'a>(method: &str, params: &'a Value) -> Result<&'a str, RpcError> {
    match params.get("text") {
        Some(Value::String(text)) => Ok(text),
        Some(other) => Err(RpcError::invalid_params(format!("{method}: `text` must be a string, got {other}"))),
        None => Err(RpcError::invalid_params(format!("{method}: missing the string param `text`"))),
    }
}

impl Plugin for Echo {
    fn info(&self) -> PluginInfo {
        // The name must match the plug-in's name in the daemon's registry.
        PluginInfo { name: "echo".into(), version: env!("CARGO_PKG_VERSION").into(), sdk: None }
    }

    fn methods(&self) -> BTreeMap<String, MethodInfo> {
        // `timeout_ms` is the most the daemon waits for the final response (it may wait less if
        // its own config says so). `idempotent` tells it a retry is safe; `stream` that the
        // method can send `$/stream` chunks.
        let quick = MethodInfo { timeout_ms: Some(5_000), idempotent: true, stream: false };
        BTreeMap::from([
            ("echo.echo".to_string(), quick.clone()),
            ("echo.upper".to_string(), quick),
            ("echo.stream".to_string(), MethodInfo { timeout_ms: Some(60_000), idempotent: true, stream: true }),
        ])
    }

    fn config_schema(&self) -> Option<Value> {
        // Sent in the handshake so that the daemon can check a config change before applying it.
        Some(json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "echo plug-in config",
            "type": "object",
            "properties": {
                "prefix": {
                    "type": "string",
                    "description": "Prepended to the text that echo.upper returns.",
                    "default": ""
                }
            },
            "additionalProperties": false
        }))
    }

    async fn initialize(&self, params: &InitializeParams) -> Result<(), RpcError> {
        let config = parse_config(&params.config)?;
        tracing::info!(prefix = %config.prefix, "echo plug-in initialized");
        // The SDK calls `initialize` at most once, so the cell is always empty here.
        let _ = self.config.set(config);
        Ok(())
    }

    async fn call(&self, method: &str, params: Value, ctx: CallContext) -> Result<Value, RpcError> {
        // The SDK only routes methods listed in `methods()`; anything else got `-32601` already.
        tracing::debug!(method, "call");
        match method {
            "echo.echo" => Ok(without_protocol_keys(params)),
            "echo.upper" => {
                let text = text_param(method, &params)?;
                Ok(json!({ "text": format!("{}{}", self.prefix(), text.to_uppercase()) }))
            }
            "echo.stream" => stream_words(&params, &ctx).await,
            other => Err(RpcError::method_not_found(other)),
        }
    }
}

/// `echo.stream`: one `$/stream` chunk per word, then a summary as the final response.
///
/// The final response ends the stream and carries only a summary, never the text again
/// (protocol.md §2.8). A caller that did not ask for a stream gets the whole text in the
/// response instead, which is what a plug-in does when it cannot stream.
async fn stream_words(params: &Value, ctx: &CallContext) -> Result<Value, RpcError> {
    let text = text_param("echo.stream", params)?;
    let interval = match params.get("interval_ms") {
        None | Some(Value::Null) => Duration::from_millis(20),
        Some(v) => Duration::from_millis(v.as_u64().ok_or_else(|| {
            RpcError::invalid_params(format!("echo.stream: `interval_ms` must be a non-negative integer, got {v}"))
        })?),
    };
    if !ctx.streaming() {
        return Ok(json!({ "chunks": 0, "text": text }));
    }
    let mut chunks = 0u64;
    for (i, word) in text.split_whitespace().enumerate() {
        // On `$/cancelRequest` or at the deadline the SDK drops this future at its next `.await`
        // and answers `-32800` for us. Checking the flag as well is what long synchronous work
        // (a loop that never awaits) must do.
        if ctx.is_cancelled() {
            break;
        }
        // Pace the chunks: the protocol asks for at most one chunk per 20 ms per stream.
        if i > 0 && !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
        // `stream` returns false once the call is over; stop producing then.
        if !ctx.stream(json!({ "delta": word })).await {
            break;
        }
        chunks += 1;
    }
    Ok(json!({ "chunks": chunks }))
}

#[cfg(test)]
mod tests {
    //! The plug-in served in-process over in-memory pipes, the way the daemon talks to it.

    use super::*;
    use bkg_plugin_sdk::ExitReason;
    use bkg_plugin_sdk::testing::TestHost;

    fn start() -> TestHost {
        TestHost::start(Echo::default(), "error", 64 * 1024)
    }

    /// Closes stdin and checks that the plug-in exits (without `shutdown`: abandoned).
    async fn close(daemon: TestHost) {
        assert_eq!(daemon.close().await, ExitReason::Abandoned);
    }

    #[tokio::test]
    async fn handshake_declares_methods_and_config_schema() {
        let mut daemon = start();
        let response = daemon.handshake(json!({"prefix": "> "})).await;
        let result = &response["result"];
        assert_eq!(result["protocolVersion"], 1);
        assert_eq!(result["plugin"]["name"], "echo");
        assert_eq!(result["methods"]["echo.stream"], json!({"timeoutMs": 60000, "idempotent": true, "stream": true}));
        assert_eq!(result["methods"]["echo.upper"]["timeoutMs"], 5000);
        let schema = &result["capabilities"]["configSchema"];
        assert_eq!(schema["properties"]["prefix"]["type"], "string");
        assert_eq!(schema["additionalProperties"], false);
        close(daemon).await;
    }

    #[tokio::test]
    async fn bad_config_fails_the_handshake() {
        for config in [json!({"prefx": "typo"}), json!("prefix"), json!({"prefix": 3})] {
            let mut daemon = start();
            let response = daemon.handshake(config.clone()).await;
            assert_eq!(response["error"]["code"], -32602, "config {config}: {response}");
            let message = response["error"]["message"].as_str().expect("message");
            assert!(message.starts_with("invalid echo config"), "{message}");
            close(daemon).await;
        }
    }

    #[tokio::test]
    async fn echo_returns_params_without_protocol_keys() {
        let mut daemon = start();
        daemon.handshake(Value::Null).await;
        let params = json!({"a": 1, "b": ["x"], "_meta": {"deadlineMs": 1000}, "stream": false});
        daemon.request_with_id(2, "echo.echo", params).await;
        assert_eq!(daemon.recv().await, json!({"jsonrpc": "2.0", "id": 2, "result": {"a": 1, "b": ["x"]}}));
        close(daemon).await;
    }

    #[tokio::test]
    async fn upper_uses_the_prefix_and_explains_bad_params() {
        let mut daemon = start();
        daemon.handshake(json!({"prefix": "> "})).await;
        daemon.request_with_id(2, "echo.upper", json!({"text": "hello"})).await;
        assert_eq!(daemon.recv().await["result"], json!({"text": "> HELLO"}));

        daemon.request_with_id(3, "echo.upper", json!({})).await;
        let response = daemon.recv().await;
        assert_eq!(response["id"], 3);
        assert_eq!(response["error"]["code"], -32602);
        assert_eq!(response["error"]["message"], "echo.upper: missing the string param `text`");

        daemon.request_with_id(4, "echo.upper", json!({"text": 42})).await;
        let response = daemon.recv().await;
        assert_eq!(response["error"]["code"], -32602);
        assert_eq!(response["error"]["message"], "echo.upper: `text` must be a string, got 42");
        close(daemon).await;
    }

    #[tokio::test]
    async fn stream_sends_ordered_chunks_before_the_summary() {
        let mut daemon = start();
        daemon.handshake(Value::Null).await;
        let params = json!({"text": "one two  three", "interval_ms": 0, "stream": true});
        daemon.request_with_id(2, "echo.stream", params).await;
        for (seq, word) in ["one", "two", "three"].into_iter().enumerate() {
            let chunk = daemon.recv().await;
            assert_eq!(chunk["method"], "$/stream", "{chunk}");
            assert_eq!(chunk["params"], json!({"id": 2, "seq": seq, "data": {"delta": word}}));
        }
        assert_eq!(daemon.recv().await, json!({"jsonrpc": "2.0", "id": 2, "result": {"chunks": 3}}));

        // Without `stream: true` the whole text comes back in the response.
        daemon.request_with_id(3, "echo.stream", json!({"text": "a b"})).await;
        assert_eq!(daemon.recv().await["result"], json!({"chunks": 0, "text": "a b"}));
        close(daemon).await;
    }

    #[tokio::test]
    async fn cancel_gets_exactly_one_final_response() {
        let mut daemon = start();
        daemon.handshake(Value::Null).await;
        let params = json!({"text": "a b c d e f g h", "interval_ms": 200, "stream": true});
        daemon.request_with_id(2, "echo.stream", params).await;
        let first = daemon.recv().await;
        assert_eq!(first["params"]["seq"], 0);

        daemon.send(json!({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 2}})).await;
        // A chunk may already have been on its way when the cancel arrived; skip those.
        let response = loop {
            let message = daemon.recv().await;
            if message["method"] != "$/stream" {
                break message;
            }
        };
        assert_eq!(response["id"], 2);
        assert_eq!(response["error"]["code"], -32800);

        // Nothing else follows for id 2: after longer than one interval, the next message is
        // the answer to a ping.
        tokio::time::sleep(Duration::from_millis(500)).await;
        daemon.request_with_id(3, "$/ping", json!({})).await;
        assert_eq!(daemon.recv().await, json!({"jsonrpc": "2.0", "id": 3, "result": {}}));
        close(daemon).await;
    }
}
