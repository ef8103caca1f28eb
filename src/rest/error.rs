//! The REST catalog's errors: the spec's `ErrorModel` body
//! (`{"error": {"message", "type", "code"}}`) with the matching status, and
//! the OAuth2 error body of the token endpoint.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::Error;

/// An error answer of the REST catalog.
#[derive(Debug)]
pub struct RestError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl RestError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    /// 404 for a namespace the caller cannot see (missing or another
    /// tenant's: the answer is the same, so it confirms nothing).
    pub fn no_namespace(ns: &[String]) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NoSuchNamespaceException",
            format!("namespace does not exist: {}", ns.join(".")),
        )
    }

    /// 404 for a table the caller cannot see.
    pub fn no_table(ns: &[String], table: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NoSuchTableException",
            format!("table does not exist: {}.{table}", ns.join(".")),
        )
    }

    /// 403 for every write: the catalog serves reads only.
    pub fn read_only() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "ForbiddenException",
            "Raindrop's REST catalog is read-only: write telemetry and tables through Flight SQL \
             (DoPut, adbc_ingest, CREATE TABLE)",
        )
    }
}

impl From<Error> for RestError {
    fn from(e: Error) -> Self {
        let (status, kind) = match &e {
            Error::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "NotAuthorizedException"),
            Error::PermissionDenied(_) => (StatusCode::FORBIDDEN, "ForbiddenException"),
            Error::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "BadRequestException"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "NotFoundException"),
            Error::Unsupported(_) => (StatusCode::NOT_IMPLEMENTED, "UnsupportedOperationException"),
            Error::Unavailable(_) | Error::Timeout(_) | Error::ResourceExhausted(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailableException",
            ),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "ServerErrorException"),
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "REST catalog request failed");
        }
        Self::new(status, kind, e.to_string())
    }
}

impl From<iceberg::Error> for RestError {
    fn from(e: iceberg::Error) -> Self {
        Error::from(e).into()
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": {"message": self.message, "type": self.kind, "code": self.status.as_u16()}
        });
        json(self.status, &body)
    }
}

/// A JSON answer.
pub fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// An OAuth2 error of the token endpoint (RFC 6749 §5.2).
pub fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json(
        status,
        &serde_json::json!({"error": error, "error_description": description}),
    )
}
