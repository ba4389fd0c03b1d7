//! `ApiError`: the one place that maps failures to HTTP status codes and the error body
//! `{"error": {"code", "message", "details"?}}` (design.md §5).
//!
//! Internal details are logged here, once, and never sent to the client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::auth::AuthError;
use crate::rpc;
use crate::store;
use crate::supervisor;

/// Every error a handler can return.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{field}: {reason}")]
    BadRequest { field: String, reason: String },
    #[error("missing or invalid credentials")]
    Unauthorized,
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("too many requests; retry in {0} s")]
    TooManyRequests(u64),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body too large (limit {0} bytes)")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Timeout(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::BadRequest { field: field.into(), reason: reason.into() }
    }

    /// The 404 for a plug-in name the daemon does not know.
    pub fn unknown_plugin(name: &str) -> Self {
        Self::NotFound(format!("no plug-in named {name:?}"))
    }

    pub(crate) fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<supervisor::Error> for ApiError {
    fn from(e: supervisor::Error) -> Self {
        match e {
            supervisor::Error::NotFound(_) => ApiError::NotFound(e.to_string()),
            supervisor::Error::AlreadyExists(_) | supervisor::Error::Conflict(_) => ApiError::Conflict(e.to_string()),
            supervisor::Error::ShuttingDown => ApiError::Unavailable(e.to_string()),
            supervisor::Error::UnknownDependency(_) => ApiError::bad_request("after", e.to_string()),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthorized(_) => ApiError::Unauthorized,
            AuthError::Forbidden(scope) => ApiError::Forbidden(format!("this route needs scope {scope}")),
            AuthError::Csrf(why) => ApiError::Forbidden(why.to_string()),
            AuthError::Unavailable => ApiError::Unavailable("authentication is unavailable; try again".into()),
        }
    }
}

impl From<store::Error> for ApiError {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::NotFound => ApiError::NotFound(e.to_string()),
            store::Error::Conflict(msg) => ApiError::Conflict(msg),
            other => ApiError::Internal(anyhow::Error::new(other)),
        }
    }
}

impl From<rpc::Error> for ApiError {
    fn from(e: rpc::Error) -> Self {
        match e {
            rpc::Error::Unavailable | rpc::Error::Overloaded | rpc::Error::SlowConsumer => {
                ApiError::Unavailable(e.to_string())
            }
            rpc::Error::Timeout(_) => ApiError::Timeout(e.to_string()),
            rpc::Error::TooLarge(n) => ApiError::PayloadTooLarge(n),
            rpc::Error::Remote(err) => {
                let status = err.data.as_ref().and_then(|d| d.get("httpStatus")).and_then(Value::as_u64);
                match (err.code, status) {
                    (_, Some(400)) | (bkg_plugin_sdk::protocol::codes::INVALID_PARAMS, _) => {
                        ApiError::bad_request("params", err.message)
                    }
                    (_, Some(403)) => ApiError::Forbidden(err.message),
                    (_, Some(404)) => ApiError::NotFound(err.message),
                    (_, Some(409)) => ApiError::Conflict(err.message),
                    _ => ApiError::Internal(anyhow::anyhow!("plug-in error {}: {}", err.code, err.message)),
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let (message, details) = match &self {
            ApiError::BadRequest { field, reason } => {
                (self.to_string(), Some(json!({"field": field, "reason": reason})))
            }
            ApiError::Internal(err) => {
                tracing::error!(error.cause_chain = ?err, "internal error");
                ("internal error".to_string(), None)
            }
            other => (other.to_string(), None),
        };
        let mut body = json!({"error": {"code": code, "message": message}});
        if let Some(details) = details {
            body["error"]["details"] = details;
        }
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match self {
            ApiError::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::TooManyRequests(secs) => {
                if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                    headers.insert(header::RETRY_AFTER, v);
                }
            }
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
            }
            _ => {}
        }
        response
    }
}
