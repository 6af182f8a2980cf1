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

/// Every problem the API answers with: one stable code each, with its HTTP status and title.
/// `type` is `urn:udim:problem:<code>`; the OpenAPI document lists every code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemCode {
    InvalidBody,
    InvalidQuery,
    InvalidPath,
    InvalidConsent,
    InvalidContentType,
    InvalidDataCategory,
    InvalidMetadata,
    InvalidIdempotencyKey,
    InvalidTusHeader,
    InvalidTusRequest,
    UploadInterrupted,
    Unauthenticated,
    InsufficientScope,
    ConsentRequired,
    NotFound,
    MethodNotAllowed,
    Conflict,
    ConsentWithdrawn,
    NotInTree,
    IdempotencyKeyInUse,
    OffsetMismatch,
    UploadComplete,
    TusVersionUnsupported,
    PayloadTooLarge,
    PastUploadLength,
    TooLargeToScan,
    UnsupportedMediaType,
    UnsupportedContent,
    RangeNotSatisfiable,
    MalwareDetected,
    UploadLocked,
    ChecksumMismatch,
    Internal,
    NotImplemented,
    DependencyUnavailable,
    ScannerUnavailable,
    IdentityProviderUnavailable,
    RequestTimeout,
    TooManyRequests,
    RequestHeadTooLarge,
    ShuttingDown,
}

impl ProblemCode {
    pub const ALL: [ProblemCode; 41] = [
        Self::InvalidBody,
        Self::InvalidQuery,
        Self::InvalidPath,
        Self::InvalidConsent,
        Self::InvalidContentType,
        Self::InvalidDataCategory,
        Self::InvalidMetadata,
        Self::InvalidIdempotencyKey,
        Self::InvalidTusHeader,
        Self::InvalidTusRequest,
        Self::UploadInterrupted,
        Self::Unauthenticated,
        Self::InsufficientScope,
        Self::ConsentRequired,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::Conflict,
        Self::ConsentWithdrawn,
        Self::NotInTree,
        Self::IdempotencyKeyInUse,
        Self::OffsetMismatch,
        Self::UploadComplete,
        Self::TusVersionUnsupported,
        Self::PayloadTooLarge,
        Self::PastUploadLength,
        Self::TooLargeToScan,
        Self::UnsupportedMediaType,
        Self::UnsupportedContent,
        Self::RangeNotSatisfiable,
        Self::MalwareDetected,
        Self::UploadLocked,
        Self::ChecksumMismatch,
        Self::Internal,
        Self::NotImplemented,
        Self::DependencyUnavailable,
        Self::ScannerUnavailable,
        Self::IdentityProviderUnavailable,
        Self::RequestTimeout,
        Self::TooManyRequests,
        Self::RequestHeadTooLarge,
        Self::ShuttingDown,
    ];

    /// The code as it appears in `code` and at the end of `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidBody => "invalid-body",
            Self::InvalidQuery => "invalid-query",
            Self::InvalidPath => "invalid-path",
            Self::InvalidConsent => "invalid-consent",
            Self::InvalidContentType => "invalid-content-type",
            Self::InvalidDataCategory => "invalid-data-category",
            Self::InvalidMetadata => "invalid-metadata",
            Self::InvalidIdempotencyKey => "invalid-idempotency-key",
            Self::InvalidTusHeader => "invalid-tus-header",
            Self::InvalidTusRequest => "invalid-tus-request",
            Self::UploadInterrupted => "upload-interrupted",
            Self::Unauthenticated => "unauthenticated",
            Self::InsufficientScope => "insufficient-scope",
            Self::ConsentRequired => "consent-required",
            Self::NotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::Conflict => "conflict",
            Self::ConsentWithdrawn => "consent-withdrawn",
            Self::NotInTree => "not-in-tree",
            Self::IdempotencyKeyInUse => "idempotency-key-in-use",
            Self::OffsetMismatch => "offset-mismatch",
            Self::UploadComplete => "upload-complete",
            Self::TusVersionUnsupported => "tus-version-unsupported",
            Self::PayloadTooLarge => "payload-too-large",
            Self::PastUploadLength => "past-upload-length",
            Self::TooLargeToScan => "too-large-to-scan",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::UnsupportedContent => "unsupported-content",
            Self::RangeNotSatisfiable => "range-not-satisfiable",
            Self::MalwareDetected => "malware-detected",
            Self::UploadLocked => "upload-locked",
            Self::ChecksumMismatch => "checksum-mismatch",
            Self::Internal => "internal",
            Self::NotImplemented => "not-implemented",
            Self::DependencyUnavailable => "dependency-unavailable",
            Self::ScannerUnavailable => "scanner-unavailable",
            Self::IdentityProviderUnavailable => "identity-provider-unavailable",
            Self::RequestTimeout => "request-timeout",
            Self::TooManyRequests => "too-many-requests",
            Self::RequestHeadTooLarge => "request-head-too-large",
            Self::ShuttingDown => "shutting-down",
        }
    }

    /// The HTTP status and the title every response with this code carries.
    pub fn status_and_title(self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidBody
            | Self::InvalidQuery
            | Self::InvalidPath
            | Self::InvalidConsent
            | Self::InvalidContentType
            | Self::InvalidDataCategory
            | Self::InvalidMetadata
            | Self::InvalidIdempotencyKey
            | Self::InvalidTusHeader
            | Self::InvalidTusRequest
            | Self::UploadInterrupted => (StatusCode::BAD_REQUEST, "Bad request"),
            Self::TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, "Too many requests"),
            Self::RequestHeadTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "Request header fields too large",
            ),
            Self::Unauthenticated => (StatusCode::UNAUTHORIZED, "Unauthenticated"),
            Self::InsufficientScope => (StatusCode::FORBIDDEN, "Insufficient scope"),
            Self::ConsentRequired => (StatusCode::FORBIDDEN, "Consent required"),
            Self::NotFound => (StatusCode::NOT_FOUND, "Not found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "Method not allowed"),
            Self::Conflict
            | Self::ConsentWithdrawn
            | Self::NotInTree
            | Self::IdempotencyKeyInUse
            | Self::OffsetMismatch
            | Self::UploadComplete => (StatusCode::CONFLICT, "Conflict"),
            Self::TusVersionUnsupported => (StatusCode::PRECONDITION_FAILED, "Precondition failed"),
            Self::PayloadTooLarge | Self::PastUploadLength | Self::TooLargeToScan => {
                (StatusCode::PAYLOAD_TOO_LARGE, "Payload too large")
            }
            Self::UnsupportedMediaType | Self::UnsupportedContent => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported media type")
            }
            Self::RangeNotSatisfiable => (StatusCode::RANGE_NOT_SATISFIABLE, "Range not satisfiable"),
            Self::MalwareDetected => (StatusCode::UNPROCESSABLE_ENTITY, "Malware detected"),
            Self::UploadLocked => (StatusCode::LOCKED, "Locked"),
            // 460 is the tus checksum extension's own status code.
            Self::ChecksumMismatch => (
                StatusCode::from_u16(460).expect("460 is a valid status code"),
                "Checksum mismatch",
            ),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "Internal error"),
            Self::NotImplemented => (StatusCode::NOT_IMPLEMENTED, "Not implemented"),
            Self::DependencyUnavailable
            | Self::ScannerUnavailable
            | Self::IdentityProviderUnavailable
            | Self::RequestTimeout
            | Self::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "Service unavailable"),
        }
    }

    pub fn problem_type(self) -> String {
        format!("urn:udim:problem:{}", self.as_str())
    }
}

/// The media type of every problem body (RFC 9457).
const PROBLEM_JSON: &str = "application/problem+json";

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
    pub code: ProblemCode,
}

/// `Retry-After` on 503 answers: long enough for a restarted dependency, short enough that a
/// waiting client (tus-js-client retries on its own) does not give up.
const RETRY_AFTER_SECS: &str = "5";

/// An error on its way to becoming a problem response.
#[derive(Debug)]
pub struct ApiError {
    code: ProblemCode,
    detail: String,
    /// Headers the problem's status calls for (`Content-Range` on a 416); a list, not a
    /// `HeaderMap`, to keep the error small.
    headers: Vec<(axum::http::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(code: ProblemCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    /// 429 `too-many-requests`, asking to come back after `retry_after`.
    pub fn too_many(detail: impl Into<String>, retry_after: std::time::Duration) -> Self {
        // Whole seconds, rounded up: `Retry-After: 0` would invite an immediate retry.
        let secs = retry_after.as_millis().div_ceil(1000).max(1);
        Self::new(ProblemCode::TooManyRequests, detail).with_header(
            header::RETRY_AFTER,
            HeaderValue::from_str(&secs.to_string()).expect("digits"),
        )
    }

    fn with_header(mut self, name: axum::http::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(ProblemCode::NotFound, what)
    }

    /// 403 `insufficient-scope`, naming the scope as RFC 6750 §3.1 has it.
    pub fn forbidden_scope(scope: &str) -> Self {
        let challenge = format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\"");
        Self::new(
            ProblemCode::InsufficientScope,
            format!("this operation needs the `{scope}` scope"),
        )
        .with_header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_str(&challenge).expect("scopes are ASCII"),
        )
    }

    pub fn consent_required(detail: impl Into<String>) -> Self {
        Self::new(ProblemCode::ConsentRequired, detail)
    }

    /// Logs `error` with its chain and returns an opaque 500.
    pub fn internal(error: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %error_chain(error), "internal error");
        Self::new(
            ProblemCode::Internal,
            "an unexpected error occurred; it has been logged",
        )
    }

    pub fn status(&self) -> StatusCode {
        self.code.status_and_title().0
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
        let (status, title) = self.code.status_and_title();
        let body = Problem {
            problem_type: self.code.problem_type(),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: self.detail,
            code: self.code,
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if status == StatusCode::UNAUTHORIZED && !headers.contains_key(header::WWW_AUTHENTICATE) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // Every 503 is a dependency that may come back: say when to try again.
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
        }
        response
    }
}

impl From<PortError> for ApiError {
    fn from(e: PortError) -> Self {
        match e {
            PortError::NotFound(what) => Self::not_found(format!("{what} not found")),
            PortError::Conflict(detail) => Self::new(ProblemCode::Conflict, detail),
            PortError::AlreadyExists(_) => Self::new(
                ProblemCode::Conflict,
                "a request with the same identity is already being processed",
            ),
            PortError::Unavailable { .. } => {
                tracing::warn!(error = %error_chain(&e), "dependency unavailable");
                Self::new(
                    ProblemCode::DependencyUnavailable,
                    "a backing service is unavailable; retry later",
                )
            }
            PortError::Unsupported(detail) => Self::new(
                ProblemCode::NotImplemented,
                format!("not supported by this deployment: {detail}"),
            ),
            other => Self::internal(&other),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::JwksUnavailable => Self::new(ProblemCode::IdentityProviderUnavailable, e.to_string()),
            // RFC 6750 §3.1: no error code when no token came, `invalid_token` when one did.
            AuthError::Missing => Self::new(ProblemCode::Unauthenticated, e.to_string()),
            AuthError::Invalid(_) | AuthError::UnknownKey => Self::new(ProblemCode::Unauthenticated, e.to_string())
                .with_header(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                ),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::TooLarge { .. } => Self::new(ProblemCode::PayloadTooLarge, e.to_string()),
            IngestError::Interrupted(_) => Self::new(ProblemCode::UploadInterrupted, e.to_string()),
            IngestError::ConsentWithdrawn(_) => Self::consent_required(e.to_string()),
            IngestError::Malware(_) => Self::new(ProblemCode::MalwareDetected, e.to_string()),
            IngestError::TooLargeToScan { .. } => Self::new(ProblemCode::TooLargeToScan, e.to_string()),
            IngestError::ScannerUnavailable(_) => {
                tracing::warn!(error = %error_chain(&e), "upload refused: scanner unavailable");
                Self::new(
                    ProblemCode::ScannerUnavailable,
                    "the malware scanner is unavailable, so nothing can be admitted now; retry later",
                )
            }
            IngestError::ContentRefused(_) => Self::new(ProblemCode::UnsupportedContent, e.to_string()),
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
            // RFC 9110 §15.5.17: a 416 says how long the representation is.
            ReadError::RangeNotSatisfiable { size } => Self::new(ProblemCode::RangeNotSatisfiable, e.to_string())
                .with_header(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{size}")).expect("ASCII"),
                ),
            ReadError::Port(port) => port.into(),
            ReadError::Envelope(_) => Self::internal(&e),
        }
    }
}

impl From<crate::consent::ConsentError> for ApiError {
    fn from(e: crate::consent::ConsentError) -> Self {
        use crate::consent::ConsentError;
        match e {
            ConsentError::NotFound(_) => Self::not_found(e.to_string()),
            ConsentError::Withdrawn(_) => Self::new(ProblemCode::ConsentWithdrawn, e.to_string()),
            ConsentError::Port(port) => port.into(),
        }
    }
}

impl From<crate::pipeline::admission::Refused> for ApiError {
    fn from(refused: crate::pipeline::admission::Refused) -> Self {
        Self::too_many(refused.to_string(), refused.retry_after())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => {
                Self::new(ProblemCode::UnsupportedMediaType, "send the body as application/json")
            }
            // Bodies past the JSON limit (`DefaultBodyLimit` on the router).
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::new(ProblemCode::PayloadTooLarge, other.body_text())
            }
            other => Self::new(ProblemCode::InvalidBody, other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::new(ProblemCode::InvalidQuery, r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::new(ProblemCode::InvalidPath, r.body_text())
    }
}

/// Completes the served document's error answers, which no route lists alone: every error
/// body is `application/problem+json` (the routes name it as a [`Problem`] body), and every
/// operation lists the problems the layers around every handler can answer with: 401 and
/// 403 where a token is required, 400 where a path, query, header or body can be malformed,
/// 413 and 415 for a JSON body too large or of another type, and 503 for an unavailable
/// dependency, a read past its deadline or a replica shutting down.
pub fn document_problems(api: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::HttpMethod;
    for (path, item) in &mut api.paths.paths {
        let operations = [
            (HttpMethod::Get, &mut item.get),
            (HttpMethod::Put, &mut item.put),
            (HttpMethod::Post, &mut item.post),
            (HttpMethod::Delete, &mut item.delete),
            (HttpMethod::Options, &mut item.options),
            (HttpMethod::Head, &mut item.head),
            (HttpMethod::Patch, &mut item.patch),
        ];
        for (method, operation) in operations {
            if let Some(operation) = operation {
                complete_problems(path, &method, operation);
            }
        }
    }
}

fn complete_problems(
    path: &str,
    method: &utoipa::openapi::path::HttpMethod,
    operation: &mut utoipa::openapi::path::Operation,
) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::path::HttpMethod;
    let head = *method == HttpMethod::Head;
    // A dependency, a read's deadline or a draining replica: every route but liveness.
    let may_be_unavailable = !super::STILL_ANSWERED_WHILE_DRAINING.contains(&path);
    let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
    let takes_input = operation.parameters.as_ref().is_some_and(|p| !p.is_empty())
        || operation.request_body.is_some()
        || path.contains('{');
    let takes_json = matches!(
        &operation.request_body,
        Some(RefOr::T(body)) if body.content.contains_key("application/json")
    );
    let layers = [
        (true, "431", "the request head is over `server.max_header_bytes`"),
        (secured, "401", "no valid bearer token"),
        (secured, "403", "the token lacks the scope this needs"),
        (takes_input, "400", "a malformed path, query, header or body"),
        (takes_json, "413", "the JSON body is over its limit"),
        (takes_json, "415", "the body is not `application/json`"),
        (
            may_be_unavailable,
            "503",
            "a dependency is unavailable, a read outlived its deadline, or this replica is shutting down; retry after `Retry-After`",
        ),
    ];
    let responses = &mut operation.responses.responses;
    for (applies, status, description) in layers {
        if applies && !responses.contains_key(status) {
            responses.insert(status.to_owned(), problem_response(description, head));
        }
    }
    for (status, response) in responses.iter_mut() {
        let RefOr::T(response) = response else { continue };
        // OpenAPI 3.1 requires a description on every response, and utoipa leaves out an
        // empty one: a response documented without its own gets the status's reason phrase.
        if response.description.is_empty() {
            response.description = status
                .parse::<u16>()
                .ok()
                .and_then(|code| StatusCode::from_u16(code).ok())
                .and_then(|code| code.canonical_reason())
                .unwrap_or("Response")
                .to_owned();
        }
        if !status.starts_with(['4', '5']) {
            continue;
        }
        if head {
            response.content.clear();
            continue;
        }
        // Only a problem is a problem: `/readyz` answers 503 with its own JSON report.
        let is_problem = |content: &RefOr<utoipa::openapi::Content>| matches!(content, RefOr::T(c) if matches!(&c.schema, Some(RefOr::Ref(r)) if r.ref_location.ends_with("/Problem")));
        if response.content.get("application/json").is_some_and(is_problem)
            && let Some(json) = response.content.shift_remove("application/json")
        {
            response.content.insert(PROBLEM_JSON.to_owned(), json);
        }
    }
}

fn problem_response(description: &str, head: bool) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let response = ResponseBuilder::new().description(description);
    if head {
        return response.build().into();
    }
    response
        .content(
            PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
        .into()
}
