//! The node's errors as the client API reports them (API.md §2, "Errors").

use axum::http::StatusCode;

use crate::wire::ClientError;

/// An error answered to a client: status, machine-readable code, message.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// For a failed write: how many replicas may hold it (indeterminate, not undone).
    pub stored_on: Option<u32>,
    /// A failed write whose replica count is unknown: answered as `"stored_on": null`.
    pub stored_on_unknown: bool,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
            stored_on: None,
            stored_on_unknown: false,
        }
    }
    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "too_large",
            message: message.into(),
            stored_on: None,
            stored_on_unknown: false,
        }
    }
    pub fn unavailable(message: impl Into<String>, stored_on: Option<u32>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            message: message.into(),
            stored_on,
            stored_on_unknown: false,
        }
    }
    /// A request whose body did not arrive in time (an addition to API.md's codes).
    pub fn request_timeout(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            code: "request_timeout",
            message: message.into(),
            stored_on: None,
            stored_on_unknown: false,
        }
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: message.into(),
            stored_on: None,
            stored_on_unknown: false,
        }
    }
    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: "method_not_allowed",
            message: message.into(),
            stored_on: None,
            stored_on_unknown: false,
        }
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
            stored_on: None,
            stored_on_unknown: false,
        }
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> ApiError {
        match e {
            ClientError::Unavailable { message, stored_on } => {
                ApiError::unavailable(message, stored_on)
            }
            ClientError::BadRequest(m) => ApiError::bad_request(m),
            ClientError::Internal(m) => ApiError::internal(m),
            ClientError::TooLarge(m) => ApiError::too_large(m),
        }
    }
}
