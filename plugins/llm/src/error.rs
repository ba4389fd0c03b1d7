//! `LlmError`: every failure a call can end with, and its svp/1 error (protocol.md §2.10).
//!
//! Domain errors use the llm range (2xxx) with `data: {kind, retryable, httpStatus,
//! retryAfterMs?}`, so the daemon can map them to an HTTP status without knowing the plug-in.

use bkg_plugin_sdk::RpcError;
use bkg_plugin_sdk::protocol::codes;
use serde_json::json;

/// Domain error codes of the llm plug-in.
pub mod code {
    pub const CONTEXT_LENGTH: i64 = 2001;
    pub const OVERLOADED: i64 = 2002;
    pub const NOT_READY: i64 = 2003;
    pub const MODEL_NOT_FOUND: i64 = 2004;
    pub const UPSTREAM: i64 = 2005;
    pub const UPSTREAM_UNAVAILABLE: i64 = 2006;
    pub const GENERATION: i64 = 2010;
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    /// The params are malformed or out of range (`param` names the field).
    #[error("{message}")]
    InvalidParams { param: Option<String>, message: String },
    /// The prompt does not fit the model's context or the configured limit.
    #[error("{0}")]
    ContextLength(String),
    /// Every generation slot is busy and the queue is full.
    #[error("the model is busy ({queued} requests queued); retry in {retry_after_ms} ms")]
    Overloaded { queued: usize, retry_after_ms: u64 },
    /// The backend cannot serve yet (loading) or at all (missing or corrupt model).
    #[error("{message}")]
    NotReady { message: String, retry_after_ms: Option<u64> },
    /// The request names a model this plug-in does not serve.
    #[error("unknown model {0:?}; GET /v1/models lists the models served here")]
    ModelNotFound(String),
    /// An upstream answered with an error or broke the stream.
    #[error("{message}")]
    Upstream { http_status: u16, message: String, retry_after_ms: Option<u64> },
    /// The model failed while generating (a candle error).
    #[error("generation failed: {0}")]
    Generation(String),
}

impl LlmError {
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        LlmError::InvalidParams { param: Some(param.to_owned()), message: message.into() }
    }

    /// The svp/1 error sent to the daemon.
    pub fn to_rpc(&self) -> RpcError {
        let message = self.to_string();
        let domain = |code: i64, kind: &str, status: u16, retryable: bool, retry_after_ms: Option<u64>| {
            let mut data = json!({"kind": kind, "retryable": retryable, "httpStatus": status});
            if let Some(ms) = retry_after_ms {
                data["retryAfterMs"] = json!(ms);
            }
            RpcError::new(code, message.clone()).with_data(data)
        };
        match self {
            LlmError::InvalidParams { param, .. } => {
                let err = RpcError::new(codes::INVALID_PARAMS, message.clone());
                match param {
                    Some(p) => err.with_data(json!({"param": p, "httpStatus": 400})),
                    None => err,
                }
            }
            LlmError::ContextLength(_) => domain(code::CONTEXT_LENGTH, "llm.context_length_exceeded", 400, false, None),
            LlmError::Overloaded { retry_after_ms, .. } => {
                domain(code::OVERLOADED, "llm.overloaded", 429, true, Some(*retry_after_ms))
            }
            LlmError::NotReady { retry_after_ms, .. } => {
                domain(code::NOT_READY, "llm.not_ready", 503, retry_after_ms.is_some(), *retry_after_ms)
            }
            LlmError::ModelNotFound(_) => domain(code::MODEL_NOT_FOUND, "llm.model_not_found", 404, false, None),
            LlmError::Upstream { http_status, retry_after_ms, .. } => {
                let code = if *http_status == 503 { code::UPSTREAM_UNAVAILABLE } else { code::UPSTREAM };
                domain(code, "llm.upstream", *http_status, true, *retry_after_ms)
            }
            LlmError::Generation(_) => domain(code::GENERATION, "llm.generation_failed", 500, false, None),
        }
    }
}

impl From<LlmError> for RpcError {
    fn from(e: LlmError) -> Self {
        e.to_rpc()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_to_codes_and_statuses() {
        let e = LlmError::invalid("max_tokens", "max_tokens must be at least 1").to_rpc();
        assert_eq!(e.code, codes::INVALID_PARAMS);
        assert_eq!(e.data.unwrap()["param"], "max_tokens");
        let e = LlmError::Overloaded { queued: 4, retry_after_ms: 1500 }.to_rpc();
        assert_eq!(e.code, code::OVERLOADED);
        let data = e.data.unwrap();
        assert_eq!(data["httpStatus"], 429);
        assert_eq!(data["retryAfterMs"], 1500);
        assert_eq!(data["retryable"], true);
        let e = LlmError::NotReady { message: "loading".into(), retry_after_ms: Some(1000) }.to_rpc();
        assert_eq!(e.data.unwrap()["httpStatus"], 503);
    }
}
