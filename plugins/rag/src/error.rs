//! The errors of the rag engine, and how each maps onto an svp/1 error for the daemon.
//!
//! Bad input is `-32602` with the offending field in `data.field`, so that the daemon can answer
//! 400 with that field; a busy index is a domain error with `httpStatus` 409, a missing model one
//! with `httpStatus` 503. Everything else is an internal error whose message is logged.

use bkg_plugin_sdk::RpcError;
use bkg_plugin_sdk::protocol::codes;
use serde_json::json;

/// Domain error code: a reindex is already running.
pub const CODE_BUSY: i64 = 1001;
/// Domain error code: the embedding model is not available (vector and hybrid modes).
pub const CODE_MODEL_UNAVAILABLE: i64 = 1002;

/// Everything the engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller sent something invalid; `field` names the parameter.
    #[error("{field}: {reason}")]
    InvalidInput { field: &'static str, reason: String },
    /// A reindex is already running; only one runs at a time.
    #[error("a reindex is already running (see rag.status)")]
    Busy,
    /// The embedding model is missing or failed to load.
    #[error("{0}")]
    ModelUnavailable(String),
    /// The call was cancelled (the caller went away or its deadline passed).
    #[error("cancelled")]
    Cancelled,
    /// The tantivy index failed.
    #[error("index: {0}")]
    Index(#[from] tantivy::TantivyError),
    /// The embedding model failed while running.
    #[error("embedding: {0}")]
    Embed(String),
    /// A file or directory of the index could not be read or written.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The index's commit payload (our manifest) is unreadable.
    #[error("index manifest: {0}")]
    Manifest(String),
}

impl Error {
    /// Bad input in `field`.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidInput { field, reason: reason.into() }
    }

    /// An I/O error with what we were doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }
}

impl From<Error> for RpcError {
    fn from(e: Error) -> Self {
        match &e {
            Error::InvalidInput { field, reason } => RpcError::new(codes::INVALID_PARAMS, format!("{field}: {reason}"))
                .with_data(json!({"field": field, "reason": reason, "httpStatus": 400})),
            Error::Busy => RpcError::new(CODE_BUSY, e.to_string())
                .with_data(json!({"kind": "busy", "retryable": true, "httpStatus": 409})),
            Error::ModelUnavailable(_) => RpcError::new(CODE_MODEL_UNAVAILABLE, e.to_string())
                .with_data(json!({"kind": "model_unavailable", "retryable": false, "httpStatus": 503})),
            Error::Cancelled => RpcError::cancelled(),
            Error::Index(_) | Error::Embed(_) | Error::Io { .. } | Error::Manifest(_) => {
                tracing::error!(error = %e, "rag internal error");
                RpcError::internal(e.to_string())
            }
        }
    }
}

/// Result with the engine's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
