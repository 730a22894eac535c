//! The one mapping from failures to HTTP answers:
//! `{"error": {"code", "message", "request_id"}}` with a stable code and a
//! fixed message. Causes go to the log, never to the client.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use super::context::RequestId;
use crate::policy::Denied;
use crate::vault::{ItemProblem, VaultError};

/// Stable error codes of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 400: the request is malformed or an item is invalid.
    InvalidRequest,
    /// 401: no API key, or one that is not accepted.
    Unauthorized,
    /// 403: the client's role does not allow this.
    Forbidden,
    /// 404: no such namespace, token or route.
    NotFound,
    /// 405: a known path, another method; comes with `Allow`.
    MethodNotAllowed,
    /// 409: the change conflicts with what is stored.
    Conflict,
    /// 413: body, batch or value over its limit.
    PayloadTooLarge,
    /// 415: the body is not JSON.
    UnsupportedMediaType,
    /// 422: the body parsed, but cannot be forwarded safely.
    Unprocessable,
    /// 502: the upstream failed.
    BadGateway,
    /// 504: the upstream did not answer in time.
    GatewayTimeout,
    /// 500: a bug or an impossible state.
    Internal,
    /// 503: the store is not available.
    Unavailable,
    /// 429: the client's detokenization budget is spent.
    TooManyRequests,
    /// 429: too many failed authentications; comes with `Retry-After`.
    Throttled,
    /// 419: an encrypted CleverTap request could not be decrypted (the
    /// status the platform's SDKs expect, to fall back to plaintext).
    Undecryptable,
}

impl ErrorCode {
    fn status(self) -> StatusCode {
        match self {
            Self::InvalidRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            // Invariant: 419 is within 100..=999, so from_u16 succeeds.
            Self::TooManyRequests | Self::Throttled => StatusCode::TOO_MANY_REQUESTS,
            Self::Undecryptable => StatusCode::from_u16(419).expect("419 is a valid status"),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unprocessable => "unprocessable",
            Self::BadGateway => "upstream_unavailable",
            Self::GatewayTimeout => "upstream_timeout",
            Self::Internal => "internal_error",
            Self::Unavailable => "unavailable",
            Self::TooManyRequests => "budget_exceeded",
            Self::Throttled => "too_many_failures",
            Self::Undecryptable => "decryption_failed",
        }
    }
}

/// An error answer. `message` is built only from fixed text, indexes and
/// names from the configuration, never from request values.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    request_id: RequestId,
    retry_after: Option<u64>,
    allow: Option<String>,
}

impl ApiError {
    /// An error with a message safe to show the caller.
    pub fn new(code: ErrorCode, message: impl Into<String>, request_id: &RequestId) -> Self {
        Self {
            code,
            message: message.into(),
            request_id: request_id.clone(),
            retry_after: None,
            allow: None,
        }
    }

    /// 405 for a known path asked with another method: `Allow` lists the
    /// methods it takes.
    pub fn method_not_allowed(allow: &[&str], request_id: &RequestId) -> Self {
        Self {
            allow: Some(allow.join(", ")),
            ..Self::new(
                ErrorCode::MethodNotAllowed,
                "this endpoint does not take this method",
                request_id,
            )
        }
    }

    /// The answer to a caller throttled after failed authentications: 429
    /// with `Retry-After`.
    pub fn throttled(retry_after_secs: u64, request_id: &RequestId) -> Self {
        Self {
            retry_after: Some(retry_after_secs),
            ..Self::new(
                ErrorCode::Throttled,
                "too many failed authentications; retry later",
                request_id,
            )
        }
    }

    /// The answer for a failed authentication; the reason is logged by the caller.
    pub fn unauthorized(request_id: &RequestId) -> Self {
        Self::new(
            ErrorCode::Unauthorized,
            "missing or invalid api key",
            request_id,
        )
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message the caller sees.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Maps an engine error, logging what the caller does not see.
    pub fn from_vault(error: VaultError, request_id: &RequestId) -> Self {
        let code = match &error {
            VaultError::Denied(_) => ErrorCode::Forbidden,
            // Names the configuration does not define are missing
            // resources, as an unknown namespace always was.
            VaultError::UnknownNamespace
            | VaultError::UnknownToken
            | VaultError::UnknownPurpose
            | VaultError::Item {
                problem: ItemProblem::UnknownClass,
                ..
            } => ErrorCode::NotFound,
            VaultError::Item { .. } => ErrorCode::InvalidRequest,
            VaultError::ValueTooLarge { .. } => ErrorCode::PayloadTooLarge,
            VaultError::Store(_) => ErrorCode::Unavailable,
            VaultError::Exhausted | VaultError::Integrity => ErrorCode::Internal,
            VaultError::Uncorrectable(_) => ErrorCode::Conflict,
            VaultError::BudgetExceeded => ErrorCode::TooManyRequests,
            VaultError::TokenTooLong { .. } => ErrorCode::Unprocessable,
        };
        let message = match &error {
            VaultError::Denied(Denied::Class(index)) => {
                format!("item {index}: class not granted to this client")
            }
            VaultError::Denied(denied) => denied.to_string(),
            VaultError::Store(crate::store::StoreError::Audit(_)) => {
                "the audit trail cannot be written; nothing was revealed or changed".to_owned()
            }
            VaultError::Store(_) => "the token store is unavailable".to_owned(),
            VaultError::Exhausted => "internal error".to_owned(),
            other => other.to_string(),
        };
        if matches!(code, ErrorCode::Unavailable | ErrorCode::Internal) {
            tracing::error!(request_id = %request_id, error = %error, "request failed");
        }
        Self::new(code, message, request_id)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Some(seconds) = self.retry_after {
            response.insert_header(("Retry-After", seconds.to_string()));
        }
        if let Some(allow) = &self.allow {
            response.insert_header(("Allow", allow.clone()));
        }
        if self.code == ErrorCode::Unauthorized {
            response.insert_header(("WWW-Authenticate", "Bearer realm=\"tokenvault\""));
        }
        response.json(json!({
            "error": {
                "code": self.code.as_str(),
                "message": self.message,
                "request_id": self.request_id.as_str(),
            }
        }))
    }
}
