//! The API's error answer: an HTTP status and `{"error": {"code": …, "message": …}}`, with
//! the protocol's error codes (docs/protocol.md, "Error codes") and a few of HTTP's own
//! (`not_found`, `method_not_allowed`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A request the API refuses, or an event of a batch it could not publish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// The body of an error answer, and an event's entry in a batch's `results`.
#[derive(Debug, Serialize)]
pub(super) struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
pub(super) struct ErrorDetail<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

impl ApiError {
    /// 400 `invalid_request`: the request's parameters or body do not fit.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::from_code(crate::protocol::ErrorCode::InvalidRequest.as_str(), message)
    }

    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 401: the token is missing, bad (`unauthorized`) or expired (`token_expired`).
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// A refusal with the HTTP status that fits the protocol error `code`.
    pub fn from_code(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(status_for(code), code, message)
    }

    pub(super) fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
            },
        }
    }
}

/// The HTTP status of a protocol error code.
pub fn status_for(code: &str) -> StatusCode {
    match code {
        "unauthorized" | "token_expired" => StatusCode::UNAUTHORIZED,
        "forbidden" => StatusCode::FORBIDDEN,
        "frame_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "rate_limited" => StatusCode::TOO_MANY_REQUESTS,
        "unavailable" | "shutting_down" => StatusCode::SERVICE_UNAVAILABLE,
        "not_found" => StatusCode::NOT_FOUND,
        "method_not_allowed" => StatusCode::METHOD_NOT_ALLOWED,
        "unsupported_media_type" => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        // Anything else the protocol names is a fault in the request.
        _ => StatusCode::BAD_REQUEST,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750: say which scheme is wanted.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"murmur\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_codes_get_the_http_status_that_fits() {
        assert_eq!(status_for("token_expired"), StatusCode::UNAUTHORIZED);
        assert_eq!(status_for("forbidden"), StatusCode::FORBIDDEN);
        assert_eq!(status_for("rate_limited"), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(status_for("unavailable"), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status_for("invalid_topic"), StatusCode::BAD_REQUEST);
        assert_eq!(status_for("frame_too_large"), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
