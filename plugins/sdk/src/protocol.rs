//! svp/1 wire types: the JSON-RPC 2.0 subset of `protocol.md`, kept apart from any I/O.
//!
//! Both sides use these types, so changing one is a protocol change. Receivers ignore unknown
//! fields (no `deny_unknown_fields` here, on purpose: additive evolution, protocol.md §2.15).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// The protocol versions this SDK speaks, newest last.
pub const SUPPORTED_PROTOCOL_VERSIONS: &[u32] = &[1];

/// The default cap on one NDJSON line (not counting the `\n`), in both directions.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Name and value of the usability cookie the daemon sets in every plug-in's environment.
pub const COOKIE_ENV: &str = "SUPERVISOR_PLUGIN_COOKIE";
/// The cookie's value; not a secret, only a guard against running a plug-in by hand.
pub const COOKIE_VALUE: &str = "svp1-3b0c9a1e";
/// Transport the daemon selected (`stdio` is the only one in v1).
pub const TRANSPORT_ENV: &str = "SUPERVISOR_PLUGIN_TRANSPORT";
/// Log level applied before the handshake.
pub const LOG_ENV: &str = "SUPERVISOR_PLUGIN_LOG";

/// Method names of the protocol itself.
pub mod methods {
    pub const INITIALIZE: &str = "initialize";
    pub const INITIALIZED: &str = "initialized";
    pub const SHUTDOWN: &str = "shutdown";
    pub const PING: &str = "$/ping";
    pub const HEALTH: &str = "plugin.health";
    pub const CANCEL: &str = "$/cancelRequest";
    pub const STREAM: &str = "$/stream";
    pub const SET_LOG_LEVEL: &str = "$/setLogLevel";
}

/// JSON-RPC and svp/1 error codes (protocol.md §2.10).
pub mod codes {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    pub const NOT_INITIALIZED: i64 = -32002;
    pub const SHUTTING_DOWN: i64 = -32010;
    pub const OVERLOADED: i64 = -32011;
    pub const DEADLINE_EXCEEDED: i64 = -32012;
    pub const MESSAGE_TOO_LARGE: i64 = -32013;
    pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32014;
    pub const REQUEST_CANCELLED: i64 = -32800;
}

/// A request id. The daemon only sends integers; plug-ins echo whatever they received.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    Num(i64),
    Str(String),
}

impl From<u64> for RequestId {
    fn from(id: u64) -> Self {
        // Ids are bounded by 2^53 - 1 (protocol.md §2.3), so this never saturates in practice.
        RequestId::Num(i64::try_from(id).unwrap_or(i64::MAX))
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestId::Num(n) => write!(f, "{n}"),
            RequestId::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("rpc error {code}: {message}")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), data: None }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(codes::INVALID_PARAMS, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(codes::INTERNAL_ERROR, message)
    }

    pub fn method_not_found(method: &str) -> Self {
        Self::new(codes::METHOD_NOT_FOUND, format!("method not found: {method}"))
    }

    pub fn cancelled() -> Self {
        Self::new(codes::REQUEST_CANCELLED, "request cancelled")
    }

    /// A domain error (codes >= 1000) with the `data` shape of protocol.md §2.10.
    pub fn domain(code: i64, kind: &str, message: impl Into<String>, http_status: u16) -> Self {
        Self::new(code, message).with_data(serde_json::json!({
            "kind": kind, "retryable": false, "httpStatus": http_status,
        }))
    }
}

/// An outgoing request. `params` is always an object.
#[derive(Debug, Serialize)]
pub struct OutgoingRequest<'a> {
    pub jsonrpc: &'static str,
    pub id: &'a RequestId,
    pub method: &'a str,
    pub params: &'a Value,
}

/// An outgoing notification.
#[derive(Debug, Serialize)]
pub struct OutgoingNotification<'a, P: Serialize> {
    pub jsonrpc: &'static str,
    pub method: &'a str,
    pub params: P,
}

/// An outgoing response: exactly one of `result` and `error`.
#[derive(Debug, Serialize)]
pub struct OutgoingResponse<'a> {
    pub jsonrpc: &'static str,
    /// `null` only when the request's id could not be read (parse errors, batches).
    pub id: Option<&'a RequestId>,
    #[serde(flatten)]
    pub outcome: Outcome<'a>,
}

/// The result-or-error half of a response.
#[derive(Debug, Serialize)]
pub enum Outcome<'a> {
    #[serde(rename = "result")]
    Result(&'a Value),
    #[serde(rename = "error")]
    Error(&'a RpcError),
}

/// Any incoming message, parsed once into an envelope whose payload stays raw, so routing never
/// parses a payload twice (protocol.md §2.16).
#[derive(Debug, Deserialize)]
pub struct Envelope {
    #[serde(default)]
    pub jsonrpc: Option<String>,
    #[serde(default)]
    pub id: Option<RequestId>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub params: Option<Box<RawValue>>,
    /// `Some` whenever the field is present, including `"result": null`.
    #[serde(default, deserialize_with = "present")]
    pub result: Option<Box<RawValue>>,
    #[serde(default)]
    pub error: Option<RpcError>,
}

/// Keeps a present field (even `null`) as `Some`, so `"result": null` is a valid result.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// What kind of message an envelope is.
#[derive(Debug)]
pub enum Message {
    Request { id: RequestId, method: String, params: Option<Box<RawValue>> },
    Notification { method: String, params: Option<Box<RawValue>> },
    Response { id: RequestId, outcome: Result<Box<RawValue>, RpcError> },
}

/// Why a line is not a usable message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("batches are not supported")]
    Batch,
    #[error("invalid message: {0}")]
    Invalid(&'static str),
}

impl DecodeError {
    /// The JSON-RPC error a server answers with (id `null`).
    pub fn to_rpc_error(&self) -> RpcError {
        match self {
            DecodeError::NotJson(_) => RpcError::new(codes::PARSE_ERROR, self.to_string()),
            DecodeError::Batch | DecodeError::Invalid(_) => RpcError::new(codes::INVALID_REQUEST, self.to_string()),
        }
    }
}

/// Parses one line into a [`Message`].
pub fn decode(line: &[u8]) -> Result<Message, DecodeError> {
    let first = line.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        return Err(DecodeError::Batch);
    }
    let env: Envelope = serde_json::from_slice(line)?;
    if env.jsonrpc.as_deref() != Some("2.0") {
        return Err(DecodeError::Invalid("jsonrpc must be \"2.0\""));
    }
    if let Some(p) = &env.params
        && !p.get().trim_start().starts_with('{')
        && p.get() != "null"
    {
        return Err(DecodeError::Invalid("params must be an object"));
    }
    match (env.method, env.id) {
        (Some(method), Some(id)) => Ok(Message::Request { id, method, params: env.params }),
        (Some(method), None) => Ok(Message::Notification { method, params: env.params }),
        (None, Some(id)) => {
            let outcome = match (env.result, env.error) {
                (_, Some(err)) => Err(err),
                (Some(res), None) => Ok(res),
                (None, None) => return Err(DecodeError::Invalid("response without result or error")),
            };
            Ok(Message::Response { id, outcome })
        }
        (None, None) => Err(DecodeError::Invalid("neither a request, a notification nor a response")),
    }
}

/// Serializes a request as one line including the trailing `\n`.
pub fn encode_request(id: &RequestId, method: &str, params: &Value) -> Vec<u8> {
    finish_line(serde_json::to_vec(&OutgoingRequest { jsonrpc: "2.0", id, method, params }))
}

/// Serializes a notification as one line including the trailing `\n`.
pub fn encode_notification<P: Serialize>(method: &str, params: P) -> Vec<u8> {
    finish_line(serde_json::to_vec(&OutgoingNotification { jsonrpc: "2.0", method, params }))
}

/// Serializes a response as one line including the trailing `\n`.
pub fn encode_response(id: Option<&RequestId>, outcome: Result<&Value, &RpcError>) -> Vec<u8> {
    let outcome = match outcome {
        Ok(v) => Outcome::Result(v),
        Err(e) => Outcome::Error(e),
    };
    finish_line(serde_json::to_vec(&OutgoingResponse { jsonrpc: "2.0", id, outcome }))
}

fn finish_line(res: Result<Vec<u8>, serde_json::Error>) -> Vec<u8> {
    // Serializing a `Value` or our own plain structs cannot fail (no maps with non-string keys);
    // if it ever did, an internal-error line keeps the peer's framing intact.
    let mut buf = res.unwrap_or_else(|_| {
        br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"serialization failed"}}"#.to_vec()
    });
    buf.push(b'\n');
    buf
}

/// Parses a params payload into `T`, mapping failures to `-32602`.
pub fn parse_params<T: serde::de::DeserializeOwned>(params: Option<&RawValue>) -> Result<T, RpcError> {
    let text = params.map(RawValue::get).unwrap_or("{}");
    serde_json::from_str(text).map_err(|e| RpcError::invalid_params(e.to_string()))
}

/// `_meta` inside params (protocol.md §2.3).
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_request_id: Option<String>,
}

/// Params of `initialize`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InitializeParams {
    pub protocol_versions: Vec<u32>,
    #[serde(default)]
    pub host: Option<HostInfo>,
    #[serde(default)]
    pub plugin: Option<PluginIdentity>,
    #[serde(default)]
    pub config: Value,
    #[serde(default)]
    pub data_dir: Option<String>,
    #[serde(default)]
    pub log_level: Option<String>,
    #[serde(default)]
    pub limits: Limits,
}

/// Who the daemon is.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct HostInfo {
    pub name: String,
    pub version: String,
    pub pid: u32,
}

/// The name the daemon gave the plug-in in its registry.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct PluginIdentity {
    pub name: String,
    #[serde(default)]
    pub instance: Option<String>,
}

/// Message-size and concurrency limits.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<usize>,
}

/// Result of `initialize`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InitializeResult {
    pub protocol_version: u32,
    pub plugin: PluginInfo,
    #[serde(default)]
    pub methods: BTreeMap<String, MethodInfo>,
    #[serde(default)]
    pub capabilities: Capabilities,
    #[serde(default)]
    pub limits: Limits,
}

/// A plug-in's self-description (advisory; the daemon checks it against its config).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk: Option<String>,
}

/// A declared method.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MethodInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub idempotent: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

/// Optional features; a feature is used only when both sides declare it.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Capabilities {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<Value>,
    #[serde(default, rename = "setLogLevel", skip_serializing_if = "Option::is_none")]
    pub set_log_level: Option<Value>,
    /// A JSON schema for the plug-in's `config`, checked by the daemon before applying it.
    #[serde(default, rename = "configSchema", skip_serializing_if = "Option::is_none")]
    pub config_schema: Option<Value>,
}

/// Readiness as reported by `plugin.health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Serving,
    Starting,
    Degraded,
    NotServing,
}

/// Result of `plugin.health`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Health {
    pub status: HealthStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Value>,
}

impl Health {
    pub fn serving() -> Self {
        Self { status: HealthStatus::Serving, detail: None, checks: None }
    }

    pub fn with_status(status: HealthStatus, detail: impl Into<String>) -> Self {
        Self { status, detail: Some(detail.into()), checks: None }
    }
}

/// Params of `$/cancelRequest`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CancelParams {
    pub id: RequestId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Params of `$/stream`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct StreamParams {
    pub id: RequestId,
    pub seq: u64,
    pub data: Value,
}

/// Params of `$/setLogLevel`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SetLogLevelParams {
    pub level: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classifies_requests_notifications_and_responses() {
        let req = decode(br#"{"jsonrpc":"2.0","id":7,"method":"x","params":{}}"#).unwrap();
        assert!(matches!(req, Message::Request { id: RequestId::Num(7), .. }));
        let note = decode(br#"{"jsonrpc":"2.0","method":"$/x"}"#).unwrap();
        assert!(matches!(note, Message::Notification { .. }));
        let ok = decode(br#"{"jsonrpc":"2.0","id":"a","result":{"k":1}}"#).unwrap();
        assert!(matches!(ok, Message::Response { outcome: Ok(_), .. }));
        let null = decode(br#"{"jsonrpc":"2.0","id":2,"result":null}"#).unwrap();
        match null {
            Message::Response { outcome: Ok(raw), .. } => assert_eq!(raw.get(), "null"),
            other => panic!("unexpected {other:?}"),
        }
        let err = decode(br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32800,"message":"m"}}"#).unwrap();
        match err {
            Message::Response { outcome: Err(e), .. } => assert_eq!(e.code, codes::REQUEST_CANCELLED),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_batches_bad_versions_and_array_params() {
        assert!(matches!(decode(b" [1,2]"), Err(DecodeError::Batch)));
        assert!(matches!(decode(br#"{"id":1,"method":"x"}"#), Err(DecodeError::Invalid(_))));
        assert!(matches!(
            decode(br#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#),
            Err(DecodeError::Invalid(_))
        ));
        assert!(matches!(decode(b"hello"), Err(DecodeError::NotJson(_))));
    }

    #[test]
    fn wire_shapes_are_stable() {
        let line = encode_request(&RequestId::Num(3), "$/ping", &json!({}));
        assert_eq!(line, b"{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"$/ping\",\"params\":{}}\n");
        let err = RpcError::cancelled();
        let line = encode_response(Some(&RequestId::Num(3)), Err(&err));
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"jsonrpc\":\"2.0\",\"id\":3,\"error\":{\"code\":-32800,\"message\":\"request cancelled\"}}\n"
        );
        let line = encode_response(None, Ok(&json!(null)));
        assert_eq!(line, b"{\"jsonrpc\":\"2.0\",\"id\":null,\"result\":null}\n");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let res: InitializeResult = serde_json::from_value(json!({
            "protocolVersion": 1, "plugin": {"name": "x", "version": "1", "future": true},
            "capabilities": {"health": {}, "teleport": {}}, "extra": 1
        }))
        .unwrap();
        assert!(res.capabilities.health.is_some());
    }
}
