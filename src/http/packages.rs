//! `/v1/packages`: streaming upload and the caller's package metadata.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use udim_ports::metadata::{PackageQuery, PackageRecord, PackageStatus, ScanStatus};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::extract::{Caller, Json, Path, Query};
use super::problem::{ApiError, Problem, ProblemCode};
use crate::auth::Scope;
use crate::consent::Access;
use crate::formats::input::{DataCategory, FileName, IdempotencyKey, Label};
use crate::pipeline::erasure::ErasureReceipt;
use crate::pipeline::ingest::{IngestError, UploadRequest};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UploadParams {
    /// The data category; an active consent must cover it.
    #[param(pattern = r"^[a-z0-9][a-z0-9._-]{0,63}$")]
    pub data_category: String,
    /// The original file name (sanitized before it is stored).
    pub filename: Option<String>,
    /// Free-form JSON object stored with the package, at most 4 KiB (as tus `Upload-Metadata`).
    #[param(max_length = 4096)]
    pub metadata: Option<String>,
}

/// A package's metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct Package {
    pub id: Uuid,
    #[schema(value_type = String, example = "stored")]
    pub status: PackageStatus,
    pub data_category: String,
    pub original_name: String,
    /// The declared `Content-Type`.
    pub content_type: String,
    /// The type sniffed from the content's magic bytes, when recognizable.
    pub sniffed_content_type: Option<String>,
    pub size_bytes: Option<u64>,
    /// Lowercase hex SHA-256 of the plaintext.
    pub sha256: Option<String>,
    pub storage_uri: Option<String>,
    /// The key that wraps this package's data key.
    pub encryption_key_id: Option<String>,
    /// The consent ledger entry the upload was admitted under.
    pub consent_entry_id: Uuid,
    /// `clean`, `not_scanned`, `too_large_admitted` or `infected`.
    #[schema(value_type = Option<String>)]
    pub scan_status: Option<ScanStatus>,
    pub scan_detail: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<PackageRecord> for Package {
    fn from(p: PackageRecord) -> Self {
        Self {
            id: p.id,
            status: p.status,
            data_category: p.data_category,
            original_name: p.original_name,
            content_type: p.declared_content_type,
            sniffed_content_type: p.sniffed_content_type,
            size_bytes: p.size_bytes,
            sha256: p.sha256.map(hex::encode),
            storage_uri: p.storage_uri,
            encryption_key_id: p.encryption_key_id,
            consent_entry_id: p.consent_entry_id,
            scan_status: p.scan_status,
            scan_detail: p.scan_detail,
            metadata: p.metadata,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

fn declared_content_type(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok("application/octet-stream".into());
    };
    let text = value
        .to_str()
        .ok()
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .ok_or_else(|| {
            ApiError::new(
                ProblemCode::InvalidContentType,
                "the Content-Type header is not a media type",
            )
        })?;
    Ok(text.essence_str().to_owned())
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Upload one file as the raw request body. The body is streamed: hashed, encrypted and
/// written to object storage as it arrives, never held whole.
#[utoipa::path(
    post,
    path = "/v1/packages",
    operation_id = "upload_package",
    tag = "packages",
    params(UploadParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the file; its Content-Type is the declared type"),
    responses(
        (status = 201, body = Package),
        (status = 400, body = Problem),
        (status = 401, body = Problem),
        (status = 403, body = Problem, description = "no active consent covers the data category"),
        (status = 409, body = Problem, description = "the Idempotency-Key's first request is still running"),
        (status = 413, body = Problem),
        (status = 415, body = Problem, description = "the content's type is not accepted for the data category"),
        (status = 422, body = Problem, description = "malware detected; the upload is quarantined"),
        (status = 429, body = Problem, description = "too many uploads at once or per second; retry after `Retry-After`"),
        (status = 503, body = Problem),
    ),
    security(("bearer" = []))
)]
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<UploadParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Package>), ApiError> {
    let principal = caller.require(Scope::Upload)?;
    let _in_flight = state.admission.upload(&principal.subject)?;
    let data_category = DataCategory::parse(&params.data_category)
        .map_err(|why| ApiError::new(ProblemCode::InvalidDataCategory, format!("`data_category`: {why}")))?;
    let content_type = declared_content_type(&headers)?;
    let metadata = match params.metadata.as_deref() {
        None => serde_json::Value::Object(Default::default()),
        Some(text) if text.len() > crate::formats::tus::MAX_METADATA_BYTES => {
            return Err(ApiError::new(
                ProblemCode::InvalidMetadata,
                "`metadata` is longer than 4 KiB",
            ));
        }
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(value @ serde_json::Value::Object(_)) => value,
            _ => {
                return Err(ApiError::new(
                    ProblemCode::InvalidMetadata,
                    "`metadata` must be a JSON object",
                ));
            }
        },
    };
    let limit = state.ingest.limit_for(&data_category);
    if declared_length(&headers).is_some_and(|len| len > limit) {
        crate::pipeline::ingest::drain(&mut body.into_data_stream()).await;
        return Err(IngestError::TooLarge { limit }.into());
    }
    let idempotency_key = headers
        .get("idempotency-key")
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|k| IdempotencyKey::parse(k).ok())
                .ok_or_else(|| {
                    ApiError::new(
                        ProblemCode::InvalidIdempotencyKey,
                        "Idempotency-Key must be 1-255 printable characters",
                    )
                })
        })
        .transpose()?;
    if let Some(key) = &idempotency_key
        && let Some(first) = state.packages.find_by_idempotency_key(&principal.subject, key).await?
    {
        return replay(first);
    }
    let consent = state.consents.state(&principal.subject).await?;
    let admitted = consent
        .admitting(&data_category, Access::Upload, Utc::now())
        .ok_or_else(|| {
            ApiError::consent_required(format!(
                "no active consent covers data category `{data_category}`; grant one at POST /v1/consents"
            ))
        })?;
    state.packages.ensure_user(&principal.subject).await?;
    let request = UploadRequest {
        user_id: principal.subject.clone(),
        consent_entry_id: admitted.record.record_id,
        data_category,
        original_name: FileName::sanitize(params.filename.as_deref().unwrap_or_default()),
        content_type,
        metadata,
        idempotency_key,
        size_hint: declared_length(&headers),
        exact_size: None,
        package_id: None,
    };
    let stream = body
        .into_data_stream()
        .map_err(|e| IngestError::Interrupted(e.to_string()));
    let record = state.ingest.receive(request, stream).await?;
    state.relay_wake.notify_one();
    Ok((StatusCode::CREATED, Json(record.into())))
}

/// The answer to a retried upload: the first request's package, if it was stored.
fn replay(first: PackageRecord) -> Result<(StatusCode, Json<Package>), ApiError> {
    if first.status == PackageStatus::Stored {
        Ok((StatusCode::CREATED, Json(first.into())))
    } else {
        Err(ApiError::new(
            ProblemCode::IdempotencyKeyInUse,
            format!("the request with this Idempotency-Key is {} ", first.status.as_str())
                .trim()
                .to_owned(),
        ))
    }
}

/// One of the caller's packages.
#[utoipa::path(
    get,
    path = "/v1/packages/{id}",
    operation_id = "get_package",
    tag = "packages",
    params(("id" = Uuid, Path, description = "package id")),
    responses((status = 200, body = Package), (status = 404, body = Problem)),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<Package>, ApiError> {
    let principal = caller.require(Scope::Upload)?;
    let record = state
        .packages
        .get_package(&principal.subject, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("package {id} not found")))?;
    Ok(Json(record.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only packages in this status.
    pub status: Option<String>,
    /// Only packages of this data category.
    #[param(pattern = r"^[a-z0-9][a-z0-9._-]{0,63}$")]
    pub data_category: Option<String>,
    /// Page size, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of packages, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct PackagePage {
    pub items: Vec<Package>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn encode_cursor(p: &Package) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}|{}", p.created_at.timestamp_micros(), p.id))
}

fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let (micros, id) = std::str::from_utf8(&raw).ok()?.split_once('|')?;
    Some((DateTime::from_timestamp_micros(micros.parse().ok()?)?, id.parse().ok()?))
}

/// The caller's packages, newest first, optionally filtered.
#[utoipa::path(
    get,
    path = "/v1/packages",
    operation_id = "list_packages",
    tag = "packages",
    params(ListParams),
    responses((status = 200, body = PackagePage), (status = 400, body = Problem)),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<ListParams>,
) -> Result<Json<PackagePage>, ApiError> {
    let principal = caller.require(Scope::Upload)?;
    let status = params
        .status
        .as_deref()
        .map(|s| {
            PackageStatus::parse(s)
                .ok_or_else(|| ApiError::new(ProblemCode::InvalidQuery, format!("unknown status `{s}`")))
        })
        .transpose()?;
    let data_category = params
        .data_category
        .as_deref()
        .map(|c| {
            DataCategory::parse(c)
                .map(String::from)
                .map_err(|why| ApiError::new(ProblemCode::InvalidDataCategory, format!("`data_category`: {why}")))
        })
        .transpose()?;
    let limit = params.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::new(ProblemCode::InvalidQuery, "`limit` must be 1-200"));
    }
    let before = params
        .cursor
        .as_deref()
        .map(|c| decode_cursor(c).ok_or_else(|| ApiError::new(ProblemCode::InvalidQuery, "`cursor` is not valid")))
        .transpose()?;
    let records = state
        .packages
        .list_packages(
            &principal.subject,
            &PackageQuery {
                status,
                data_category,
                before,
                limit: limit + 1,
            },
        )
        .await?;
    let mut items: Vec<Package> = records.into_iter().map(Package::from).collect();
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(encode_cursor)
    } else {
        None
    };
    Ok(Json(PackagePage { items, next_cursor }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ContentParams {
    /// The purpose of this read; the owner's consent must name it.
    #[param(min_length = 1, max_length = 256)]
    pub purpose: String,
}

/// A stored package's plaintext, for downstream services (scope `udim:read`). The owner's
/// consent is checked for `purpose` now; each segment is decrypted and authenticated as it
/// streams; `Range: bytes=…` is honoured. Every read is recorded.
#[utoipa::path(
    get,
    path = "/v1/packages/{id}/content",
    operation_id = "package_content",
    tag = "packages",
    params(("id" = Uuid, Path, description = "package id"), ContentParams),
    responses(
        (status = 200, description = "the plaintext", content_type = "application/octet-stream"),
        (status = 206, description = "the requested range", content_type = "application/octet-stream"),
        (status = 403, body = Problem, description = "no consent for this purpose, or no read scope"),
        (status = 404, body = Problem),
        (status = 416, body = Problem),
    ),
    security(("bearer" = []))
)]
pub async fn content(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Query(params): Query<ContentParams>,
    headers: HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let principal = caller.require(Scope::Read)?;
    Label::parse(&params.purpose)
        .map_err(|why| ApiError::new(ProblemCode::InvalidQuery, format!("`purpose`: {why}")))?;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::formats::range::ByteRange::parse);
    let content = state
        .reader
        .open(id, &principal.subject, &params.purpose, range)
        .await?;
    let (status, length) = match content.range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, end - start),
        None => (StatusCode::OK, content.size),
    };
    let mut response = (status, Body::from_stream(content.stream)).into_response();
    let h = response.headers_mut();
    let value = |s: String| s.parse().expect("ASCII header value");
    h.insert(
        header::CONTENT_TYPE,
        value(content.package.declared_content_type.clone()),
    );
    h.insert(header::CONTENT_LENGTH, value(length.to_string()));
    h.insert(header::ACCEPT_RANGES, value("bytes".into()));
    h.insert(header::CACHE_CONTROL, value("no-store".into()));
    if let Some(sha) = content.package.sha256 {
        h.insert(header::ETAG, value(format!("\"{}\"", hex::encode(sha))));
    }
    if let Some((start, end)) = content.range {
        h.insert(
            header::CONTENT_RANGE,
            value(format!("bytes {start}-{}/{}", end - 1, content.size)),
        );
    }
    Ok(response)
}

/// Erases one of the caller's packages: its data key, metadata and object go, and a
/// `package.deleted` event tells the pipeline to purge what it derived. The erasure is
/// recorded in the consent ledger, and the answer is that record's receipt. Repeating it is
/// harmless.
#[utoipa::path(
    delete,
    path = "/v1/packages/{id}",
    operation_id = "delete_package",
    tag = "packages",
    params(("id" = Uuid, Path, description = "package id")),
    responses(
        (status = 200, body = ErasureReceipt, description = "erased, and recorded in the consent ledger"),
        (status = 204, description = "already erased, or erased with its recording left to the sweeper"),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "still being uploaded")
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let principal = caller.require(Scope::Upload)?;
    Ok(match state.eraser.delete_package(&principal.subject, id).await? {
        Some(receipt) => (StatusCode::OK, Json(receipt)).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}
