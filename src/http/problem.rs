//! RFC 9457 problem details: every error the API returns.
//!
//! Named failures become 4xx with a stable `type` (`urn:udim:problem:<code>`) and `code`;
//! anything unexpected is logged with its cause chain and answered as an opaque 500.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use udim_ports::PortError;
use utoipa::ToSchema;

use crate::auth::AuthError;
use crate::pipeline::ingest::IngestError;

/// An RFC 9457 `application/problem+json` body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:udim:problem:<code>`; stable, for machines.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The short stable code also found at the end of `type`.
    pub code: String,
}

/// An error on its way to becoming a problem response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    title: &'static str,
    detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            title,
            detail: detail.into(),
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, "Bad request", detail)
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", what)
    }

    pub fn forbidden_scope(scope: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "insufficient-scope",
            "Insufficient scope",
            format!("this operation needs the `{scope}` scope"),
        )
    }

    pub fn consent_required(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "consent-required", "Consent required", detail)
    }

    /// Logs `error` with its chain and returns an opaque 500.
    pub fn internal(error: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %error_chain(error), "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "an unexpected error occurred; it has been logged",
        )
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

/// `error: cause: cause …` on one line.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Problem {
            problem_type: format!("urn:udim:problem:{}", self.code),
            title: self.title.to_owned(),
            status: self.status.as_u16(),
            detail: self.detail,
            code: self.code.to_owned(),
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<PortError> for ApiError {
    fn from(e: PortError) -> Self {
        match e {
            PortError::NotFound(what) => Self::not_found(format!("{what} not found")),
            PortError::Conflict(detail) => Self::new(StatusCode::CONFLICT, "conflict", "Conflict", detail),
            PortError::AlreadyExists(_) => Self::new(
                StatusCode::CONFLICT,
                "conflict",
                "Conflict",
                "a request with the same identity is already being processed",
            ),
            PortError::Unavailable { .. } => {
                tracing::warn!(error = %error_chain(&e), "dependency unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "dependency-unavailable",
                    "Service unavailable",
                    "a backing service is unavailable; retry later",
                )
            }
            PortError::Unsupported(detail) => Self::new(
                StatusCode::NOT_IMPLEMENTED,
                "not-implemented",
                "Not implemented",
                format!("not supported by this deployment: {detail}"),
            ),
            other => Self::internal(&other),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::JwksUnavailable => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "identity-provider-unavailable",
                "Service unavailable",
                e.to_string(),
            ),
            _ => Self::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Unauthenticated",
                e.to_string(),
            ),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::TooLarge { .. } => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
                e.to_string(),
            ),
            IngestError::Interrupted(_) => Self::bad_request("upload-interrupted", e.to_string()),
            IngestError::ConsentWithdrawn(_) => Self::consent_required(e.to_string()),
            IngestError::Malware(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "malware-detected",
                "Malware detected",
                e.to_string(),
            ),
            IngestError::TooLargeToScan { .. } => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large-to-scan",
                "Payload too large",
                e.to_string(),
            ),
            IngestError::ScannerUnavailable(_) => {
                tracing::warn!(error = %error_chain(&e), "upload refused: scanner unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "scanner-unavailable",
                    "Service unavailable",
                    "the malware scanner is unavailable, so nothing can be admitted now; retry later",
                )
            }
            IngestError::ContentRefused(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-content",
                "Unsupported media type",
                e.to_string(),
            ),
            IngestError::Port(port) => port.into(),
            IngestError::Envelope(_) => Self::internal(&e),
        }
    }
}

impl From<crate::pipeline::read::ReadError> for ApiError {
    fn from(e: crate::pipeline::read::ReadError) -> Self {
        use crate::pipeline::read::ReadError;
        match e {
            ReadError::NotFound(_) => Self::not_found(e.to_string()),
            ReadError::NoConsent { .. } => Self::consent_required(e.to_string()),
            ReadError::RangeNotSatisfiable { .. } => Self::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range-not-satisfiable",
                "Range not satisfiable",
                e.to_string(),
            ),
            ReadError::Port(port) => port.into(),
            ReadError::Envelope(_) => Self::internal(&e),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                "send the body as application/json",
            ),
            other => Self::bad_request("invalid-body", other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request("invalid-query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::bad_request("invalid-path", r.body_text())
    }
}
