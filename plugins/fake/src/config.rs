//! The fake's `initialize.config`: parsing, validation and the JSON schema it declares.

use bkg_plugin_sdk::{HealthStatus, RpcError};
use serde::Deserialize;
use serde_json::{Value, json};

/// What the daemon's registry can ask the fake to do (every key optional).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FakeConfig {
    /// After this many application calls, the next one exits the process with code 1 instead of
    /// being answered.
    #[serde(default)]
    pub(crate) crash_after_calls: Option<u64>,
    /// The `shutdown` request is never answered.
    #[serde(default)]
    pub(crate) ignore_shutdown: bool,
    /// What `plugin.health` reports (after `starting_ms`); `serving` when absent.
    #[serde(default)]
    pub(crate) health: Option<HealthStatus>,
    /// Report `starting` for this long after `initialize`.
    #[serde(default)]
    pub(crate) starting_ms: Option<u64>,
    /// `initialize` fails, so the handshake fails.
    #[serde(default)]
    pub(crate) fail_initialize: bool,
    /// Declared in the handshake's `limits` and enforced by the fake itself (`-32011`).
    #[serde(default)]
    pub(crate) max_concurrent_requests: Option<usize>,
}

/// Parses `initialize.config`. Absent (`null`) means all defaults; anything but an object, an
/// unknown key or a bad value is `-32602 InvalidParams`, which fails the handshake.
pub(crate) fn parse_config(config: &Value) -> Result<FakeConfig, RpcError> {
    let parsed = match config {
        Value::Null => FakeConfig::default(),
        Value::Object(_) => FakeConfig::deserialize(config)
            .map_err(|e| RpcError::invalid_params(format!("invalid fake config: {e}")))?,
        other => {
            return Err(RpcError::invalid_params(format!("invalid fake config: expected an object, got {other}")));
        }
    };
    if parsed.max_concurrent_requests == Some(0) {
        return Err(RpcError::invalid_params("invalid fake config: max_concurrent_requests must be at least 1"));
    }
    Ok(parsed)
}

/// Whether application call number `call_number` (counting from 1) must crash the process:
/// with `crash_after_calls: n`, calls 1..=n are served and call n+1 exits.
pub(crate) fn crash_due(crash_after_calls: Option<u64>, call_number: u64) -> bool {
    crash_after_calls.is_some_and(|n| call_number > n)
}

/// The JSON schema of [`FakeConfig`], declared in the handshake.
pub(crate) fn schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "fake plug-in config",
        "type": "object",
        "properties": {
            "crash_after_calls": {
                "type": "integer", "minimum": 0,
                "description": "Serve this many application calls, then exit 1 on the next one."
            },
            "ignore_shutdown": {
                "type": "boolean", "default": false,
                "description": "Never answer the shutdown request."
            },
            "health": {
                "enum": ["serving", "starting", "degraded", "not_serving"], "default": "serving",
                "description": "What plugin.health reports (after starting_ms)."
            },
            "starting_ms": {
                "type": "integer", "minimum": 0,
                "description": "Report `starting` for this long after initialize."
            },
            "fail_initialize": {
                "type": "boolean", "default": false,
                "description": "Fail the initialize request."
            },
            "max_concurrent_requests": {
                "type": "integer", "minimum": 1,
                "description": "Concurrency limit declared in the handshake and enforced (-32011)."
            }
        },
        "additionalProperties": false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_config_means_defaults() {
        assert_eq!(parse_config(&Value::Null).expect("null"), FakeConfig::default());
        assert_eq!(parse_config(&json!({})).expect("{}"), FakeConfig::default());
    }

    #[test]
    fn every_key_parses() {
        let config = parse_config(&json!({
            "crash_after_calls": 3, "ignore_shutdown": true, "health": "not_serving",
            "starting_ms": 250, "fail_initialize": true, "max_concurrent_requests": 2
        }))
        .expect("valid config");
        assert_eq!(
            config,
            FakeConfig {
                crash_after_calls: Some(3),
                ignore_shutdown: true,
                health: Some(HealthStatus::NotServing),
                starting_ms: Some(250),
                fail_initialize: true,
                max_concurrent_requests: Some(2),
            }
        );
    }

    #[test]
    fn bad_configs_are_invalid_params() {
        for bad in [
            json!({"crash_after_call": 3}),
            json!({"health": "ok"}),
            json!({"starting_ms": -1}),
            json!({"max_concurrent_requests": 0}),
            json!([1]),
            json!("fake"),
        ] {
            let err = parse_config(&bad).expect_err("must be rejected");
            assert_eq!(err.code, -32602, "{bad}");
            assert!(err.message.starts_with("invalid fake config"), "{}", err.message);
        }
    }

    #[test]
    fn crash_counting() {
        assert!(!crash_due(None, 1));
        assert!(!crash_due(None, u64::MAX));
        assert!(crash_due(Some(0), 1));
        assert!(!crash_due(Some(2), 1));
        assert!(!crash_due(Some(2), 2));
        assert!(crash_due(Some(2), 3));
    }

    #[test]
    fn schema_lists_every_key() {
        let schema = schema();
        let properties = schema["properties"].as_object().expect("properties");
        let mut keys: Vec<&str> = properties.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "crash_after_calls",
                "fail_initialize",
                "health",
                "ignore_shutdown",
                "max_concurrent_requests",
                "starting_ms"
            ]
        );
    }
}
