//! `/v1/uploads`: tus 1.0.0 resumable uploads (creation, creation-with-upload, termination,
//! checksum, expiration), so stock tus clients (tus-js-client, Uppy, tuspy) work unchanged.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use uuid::Uuid;

use super::AppState;
use super::extract::{Caller, Path};
use super::problem::{ApiError, Problem, ProblemCode};
use crate::auth::Scope;
use crate::formats::input::{DataCategory, FileName};
use crate::formats::tus;
use crate::pipeline::resumable::{Creation, Progress, TusError};

const TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");
const UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
const UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
const UPLOAD_EXPIRES: HeaderName = HeaderName::from_static("upload-expires");
const PACKAGE_ID: HeaderName = HeaderName::from_static("udim-package-id");

impl From<tus::TusHeaderError> for ApiError {
    fn from(e: tus::TusHeaderError) -> Self {
        ApiError::new(ProblemCode::InvalidTusHeader, e.to_string())
    }
}

/// A user past their staging limit can go on once an upload finishes or expires; a minute is
/// a polite interval to ask again.
const STAGING_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

impl From<TusError> for ApiError {
    fn from(e: TusError) -> Self {
        match e {
            TusError::NotFound(_) => ApiError::not_found(e.to_string()),
            TusError::OffsetMismatch { .. } => ApiError::new(ProblemCode::OffsetMismatch, e.to_string()),
            TusError::Locked => ApiError::new(ProblemCode::UploadLocked, e.to_string()),
            TusError::PastLength { .. } => ApiError::new(ProblemCode::PastUploadLength, e.to_string()),
            TusError::ChecksumMismatch => ApiError::new(ProblemCode::ChecksumMismatch, e.to_string()),
            TusError::Complete => ApiError::new(ProblemCode::UploadComplete, e.to_string()),
            TusError::Invalid(_) => ApiError::new(ProblemCode::InvalidTusRequest, e.to_string()),
            TusError::NoConsent(_) => ApiError::consent_required(e.to_string()),
            TusError::Staging { .. } => ApiError::too_many(e.to_string(), STAGING_RETRY_AFTER),
            TusError::Ingest(ingest) => ingest.into(),
            TusError::Port(port) => port.into(),
            TusError::Envelope(_) => ApiError::internal(&e),
        }
    }
}

/// Puts `Tus-Resumable` on every answer under `/v1/uploads` that lacks it, as tus 1.0
/// requires: refusals made before a handler runs (401, 404, 413, 429) too, so a tus client can
/// tell it reached a tus server. (The transport limits answer outside the router: a 431 for
/// a head over the cap, a 503 past the request deadline, without it.)
pub async fn tus_resumable_on_every_answer(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let tus = request.uri().path().starts_with("/v1/uploads");
    let mut response = next.run(request).await;
    if tus {
        response
            .headers_mut()
            .entry(TUS_RESUMABLE)
            .or_insert(HeaderValue::from_static(tus::VERSION));
    }
    response
}

/// Every tus request but OPTIONS must speak this server's protocol version (412 otherwise).
fn require_version(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(&TUS_RESUMABLE).and_then(|v| v.to_str().ok()) {
        Some(tus::VERSION) => Ok(()),
        _ => Err(ApiError::new(
            ProblemCode::TusVersionUnsupported,
            format!("send Tus-Resumable: {}", tus::VERSION),
        )),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A tus header sent at most once: two `Upload-Length`s (or offsets, metadata, checksums)
/// are an ambiguous request, refused rather than resolved by taking one of them.
fn single_tus_header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, ApiError> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (_, Some(_)) => Err(ApiError::new(
            ProblemCode::InvalidTusHeader,
            format!("{name} is sent more than once"),
        )),
        (Some(value), None) => value
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::new(ProblemCode::InvalidTusHeader, format!("{name} is not ASCII"))),
        (None, None) => Ok(None),
    }
}

fn with_tus_headers(mut response: Response, progress: Option<&Progress>) -> Response {
    let h = response.headers_mut();
    h.insert(TUS_RESUMABLE, HeaderValue::from_static(tus::VERSION));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(p) = progress {
        let value = |s: String| HeaderValue::from_str(&s).expect("ASCII header value");
        h.insert(UPLOAD_OFFSET, value(p.upload.offset.to_string()));
        h.insert(UPLOAD_LENGTH, value(p.upload.length.to_string()));
        h.insert(UPLOAD_EXPIRES, value(tus::http_date(p.upload.expires_at)));
        let package = p.package.as_ref().map(|pkg| pkg.id).or(p.upload.package_id);
        if let Some(id) = package {
            h.insert(PACKAGE_ID, value(id.to_string()));
        }
    }
    response
}

fn is_patch_body(headers: &HeaderMap) -> bool {
    header_str(headers, &header::CONTENT_TYPE).is_some_and(|ct| ct.trim() == tus::PATCH_CONTENT_TYPE)
}

/// The server's tus capabilities.
#[utoipa::path(options, path = "/v1/uploads", operation_id = "tus_options", tag = "uploads", responses((status = 204)))]
pub async fn options(State(state): State<AppState>) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.insert("tus-version", HeaderValue::from_static(tus::VERSION));
    h.insert("tus-extension", HeaderValue::from_static(tus::EXTENSIONS));
    h.insert(
        "tus-checksum-algorithm",
        HeaderValue::from_static(tus::CHECKSUM_ALGORITHMS),
    );
    h.insert(
        "tus-max-size",
        HeaderValue::from_str(&state.ingest.max_bytes.to_string()).expect("digits"),
    );
    with_tus_headers(response, None)
}

/// Create an upload (tus creation; with a body, creation-with-upload). `Upload-Metadata`
/// carries `filename`, `filetype` (or `content_type`) and the required `data_category`.
#[utoipa::path(
    post,
    path = "/v1/uploads",
    operation_id = "tus_create",
    tag = "uploads",
    params(
        ("Tus-Resumable" = String, Header, pattern = r"^1\.0\.0$", description = "the tus protocol version, 1.0.0 (412 otherwise)"),
        ("Upload-Length" = u64, Header, description = "the upload's size in bytes (deferring it is not supported)"),
        ("Upload-Metadata" = String, Header, description = "comma-separated `key base64value` pairs: `data_category` (required), `filename`, `filetype`"),
    ),
    responses(
        (status = 201, description = "created; `Location` is the upload URL"),
        (status = 400, body = Problem),
        (status = 403, body = Problem),
        (status = 412, body = Problem),
        (status = 413, body = Problem),
        (status = 429, body = Problem, description = "too many uploads in flight or staged; retry after `Retry-After`"),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_version(&headers)?;
    let principal = caller.require(Scope::Upload)?;
    let _in_flight = state.admission.upload(&principal.subject)?;
    if headers.contains_key("upload-defer-length") {
        return Err(ApiError::new(
            ProblemCode::InvalidTusHeader,
            "Upload-Defer-Length is not supported",
        ));
    }
    let length = tus::parse_size(
        "Upload-Length",
        single_tus_header(&headers, &UPLOAD_LENGTH)?
            .ok_or_else(|| ApiError::new(ProblemCode::InvalidTusHeader, "Upload-Length is required"))?,
    )?;
    let metadata =
        tus::parse_metadata(single_tus_header(&headers, &HeaderName::from_static("upload-metadata"))?.unwrap_or(""))?;
    let data_category = metadata.get("data_category").ok_or_else(|| {
        ApiError::new(
            ProblemCode::InvalidTusHeader,
            "Upload-Metadata must carry `data_category`",
        )
    })?;
    let data_category =
        DataCategory::parse(data_category).map_err(|why| ApiError::new(ProblemCode::InvalidDataCategory, why))?;
    let content_type = metadata
        .get("filetype")
        .or_else(|| metadata.get("content_type"))
        .and_then(|t| t.parse::<mime::Mime>().ok())
        .map_or_else(|| "application/octet-stream".to_owned(), |m| m.essence_str().to_owned());
    let filename = FileName::sanitize(
        metadata
            .get("filename")
            .or_else(|| metadata.get("name"))
            .map_or("", String::as_str),
    );
    state.packages.ensure_user(&principal.subject).await?;
    let upload = state
        .resumable
        .create(
            &principal.subject,
            Creation {
                length,
                data_category,
                filename,
                content_type,
                metadata: serde_json::to_value(&metadata).unwrap_or_default(),
            },
        )
        .await?;
    let location = HeaderValue::from_str(&format!("/v1/uploads/{}", upload.id)).expect("ASCII");
    let progress: Result<Progress, ApiError> = async {
        if is_patch_body(&headers) {
            let stream = body.into_data_stream().map_err(|e| e.to_string());
            let progress = state
                .resumable
                .patch(&principal.subject, upload.id, 0, None, stream)
                .await?;
            if progress.package.is_some() {
                state.relay_wake.notify_one();
            }
            Ok(progress)
        } else if upload.length == 0 {
            // Complete on creation: nothing more will come, so it becomes its package now,
            // and the answer's offset (0 of 0) never says "complete" of something not stored.
            let package = state.resumable.finish(&principal.subject, upload.id).await?;
            state.relay_wake.notify_one();
            let upload = state.resumable.status(&principal.subject, upload.id).await?;
            Ok(Progress { upload, package })
        } else {
            Ok(Progress { upload, package: None })
        }
    }
    .await;
    // The upload exists from here on: even when its first bytes failed (a 503 to retry), the
    // answer names it, so the client resumes it instead of starting another.
    let mut response = match progress {
        Ok(progress) => with_tus_headers(StatusCode::CREATED.into_response(), Some(&progress)),
        Err(e) => e.into_response(),
    };
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

/// The upload's offset (tus HEAD).
#[utoipa::path(
    head,
    path = "/v1/uploads/{id}",
    operation_id = "tus_head",
    tag = "uploads",
    params(("id" = Uuid, Path), ("Tus-Resumable" = String, Header, pattern = r"^1\.0\.0$", description = "the tus protocol version, 1.0.0 (412 otherwise)")),
    responses(
        (status = 200, description = "`Upload-Offset` equals `Upload-Length` only once the package is stored"),
        (status = 404, body = Problem),
        (status = 412, body = Problem),
        (status = 415, body = Problem, description = "finished: the content's type is not accepted for the data category"),
        (status = 422, body = Problem, description = "finished: malware detected; the upload is quarantined"),
        (status = 423, body = Problem, description = "being finished by another request; retry"),
        (status = 429, body = Problem, description = "finishing it would take a place in flight and none is free; retry after `Retry-After`"),
        (status = 503, body = Problem, description = "finishing failed for now; every byte is kept, retry after `Retry-After`"),
    ),
    security(("bearer" = []))
)]
pub async fn head(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_version(&headers)?;
    let principal = caller.require(Scope::Upload)?;
    let mut upload = state.resumable.status(&principal.subject, id).await?;
    // Every byte arrived but no package yet (a failure or a crash cut finalization short):
    // finish it now, so the offset never says "complete" of an upload that is not stored.
    // Finishing is an upload's heaviest step (scanning, sealing), so it takes a place in flight
    // like the PATCH it completes.
    let package = if upload.offset == upload.length && upload.package_id.is_none() {
        let _in_flight = state.admission.upload(&principal.subject)?;
        let package = state.resumable.finish(&principal.subject, id).await?;
        state.relay_wake.notify_one();
        upload = state.resumable.status(&principal.subject, id).await?;
        package
    } else {
        None
    };
    // The creation extension: HEAD repeats the metadata the client gave at creation.
    let pairs: std::collections::BTreeMap<String, String> =
        serde_json::from_value(upload.metadata.clone()).unwrap_or_default();
    let mut response = StatusCode::OK.into_response();
    if !pairs.is_empty()
        && let Ok(value) = HeaderValue::from_str(&tus::encode_metadata(&pairs))
    {
        response
            .headers_mut()
            .insert(HeaderName::from_static("upload-metadata"), value);
    }
    Ok(with_tus_headers(response, Some(&Progress { upload, package })))
}

/// Append bytes at `Upload-Offset` (tus PATCH), optionally verified by `Upload-Checksum`.
#[utoipa::path(
    patch,
    path = "/v1/uploads/{id}",
    operation_id = "tus_patch",
    tag = "uploads",
    params(
        ("id" = Uuid, Path),
        ("Tus-Resumable" = String, Header, pattern = r"^1\.0\.0$", description = "the tus protocol version, 1.0.0 (412 otherwise)"),
        ("Upload-Offset" = u64, Header, description = "where this body starts: the upload's current offset (409 otherwise)"),
    ),
    request_body(content = Vec<u8>, content_type = "application/offset+octet-stream"),
    responses(
        (status = 204, description = "appended; `Upload-Offset` is the new offset"),
        (status = 400, body = Problem),
        (status = 404, body = Problem),
        (status = 409, body = Problem),
        (status = 412, body = Problem),
        (status = 413, body = Problem, description = "past the upload's length"),
        (status = 415, body = Problem),
        (status = 422, body = Problem, description = "finished: malware detected; the upload is quarantined"),
        (status = 423, body = Problem),
        (status = 429, body = Problem, description = "too many uploads in flight; retry after `Retry-After`"),
        (status = 460, body = Problem, description = "the chunk does not match its `Upload-Checksum`; it was not kept, send it again"),
    ),
    security(("bearer" = []))
)]
pub async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_version(&headers)?;
    let principal = caller.require(Scope::Upload)?;
    let _in_flight = state.admission.upload(&principal.subject)?;
    if !is_patch_body(&headers) {
        return Err(ApiError::new(
            ProblemCode::UnsupportedMediaType,
            format!("PATCH bodies are {}", tus::PATCH_CONTENT_TYPE),
        ));
    }
    let offset = tus::parse_size(
        "Upload-Offset",
        single_tus_header(&headers, &UPLOAD_OFFSET)?
            .ok_or_else(|| ApiError::new(ProblemCode::InvalidTusHeader, "Upload-Offset is required"))?,
    )?;
    let checksum = single_tus_header(&headers, &HeaderName::from_static("upload-checksum"))?
        .map(tus::parse_checksum)
        .transpose()?;
    let stream = body.into_data_stream().map_err(|e| e.to_string());
    let progress = state
        .resumable
        .patch(&principal.subject, id, offset, checksum, stream)
        .await?;
    if progress.package.is_some() {
        state.relay_wake.notify_one();
    }
    Ok(with_tus_headers(
        StatusCode::NO_CONTENT.into_response(),
        Some(&progress),
    ))
}

/// Terminate an upload: it and every stored chunk are removed (tus termination).
#[utoipa::path(
    delete,
    path = "/v1/uploads/{id}",
    operation_id = "tus_terminate",
    tag = "uploads",
    params(("id" = Uuid, Path), ("Tus-Resumable" = String, Header, pattern = r"^1\.0\.0$", description = "the tus protocol version, 1.0.0 (412 otherwise)")),
    responses(
        (status = 204),
        (status = 404, body = Problem),
        (status = 412, body = Problem),
        (status = 423, body = Problem),
    ),
    security(("bearer" = []))
)]
pub async fn terminate(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_version(&headers)?;
    let principal = caller.require(Scope::Upload)?;
    state.resumable.terminate(&principal.subject, id).await?;
    Ok(with_tus_headers(StatusCode::NO_CONTENT.into_response(), None))
}
