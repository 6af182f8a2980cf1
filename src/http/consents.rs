//! `/v1/consents`: grant, withdraw and list the caller's consents.

use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::extract::{Caller, Json, Path};
use super::problem::{ApiError, Problem};
use crate::auth::Scope;
use crate::consent::{Grant, RecordedConsent};
use crate::ledger::ConsentEvent;
use crate::validate;

/// A request to give consent.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// Purposes of processing, e.g. `model-training`.
    pub purposes: Vec<String>,
    /// Data categories covered, e.g. `audio`, `documents`.
    pub data_categories: Vec<String>,
    /// Version of the policy or notice the person saw.
    pub policy_version: String,
    /// Jurisdiction whose law applies, e.g. `EU`.
    pub jurisdiction: String,
    /// Named recipients or processors the consent extends to.
    #[serde(default)]
    pub recipients: Vec<String>,
    pub policy_url: Option<String>,
    /// How consent was collected (default `api`).
    pub collection_method: Option<String>,
    /// When the consent ends by itself.
    pub expires_at: Option<DateTime<Utc>>,
}

/// One consent ledger entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsentEntry {
    /// The entry's record id.
    pub id: Uuid,
    /// The consent it belongs to (the `id` of the entry that gave it); withdraw by this id.
    pub consent_id: Uuid,
    /// Position in the ledger.
    pub index: u64,
    pub event: ConsentEvent,
    pub purposes: Vec<String>,
    pub data_categories: Vec<String>,
    pub recipients: Vec<String>,
    pub policy_version: String,
    pub policy_url: Option<String>,
    pub jurisdiction: String,
    pub collection_method: String,
    pub recorded_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// RFC 9162 leaf hash of the entry's canonical encoding, base64.
    pub leaf_hash: String,
}

impl From<&RecordedConsent> for ConsentEntry {
    fn from(c: &RecordedConsent) -> Self {
        let r = &c.record;
        Self {
            id: r.record_id,
            consent_id: r.consent_id,
            index: c.entry.index,
            event: r.event,
            purposes: r.purposes.clone(),
            data_categories: r.data_categories.clone(),
            recipients: r.recipients.clone(),
            policy_version: r.policy_version.clone(),
            policy_url: r.policy_url.clone(),
            jurisdiction: r.jurisdiction.clone(),
            collection_method: r.collection_method.clone(),
            recorded_at: r.recorded_at,
            expires_at: r.expires_at,
            leaf_hash: base64::engine::general_purpose::STANDARD.encode(c.entry.leaf_hash),
        }
    }
}

/// The caller's consents: what is in force now, and every entry ever recorded.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsentOverview {
    /// The latest entry of every consent that is neither withdrawn nor expired.
    pub active: Vec<ConsentEntry>,
    /// All of the caller's entries in ledger order.
    pub history: Vec<ConsentEntry>,
}

fn parse_grant(req: GrantRequest) -> Result<Grant, ApiError> {
    let invalid = |detail: String| ApiError::bad_request("invalid-consent", detail);
    if req.purposes.is_empty() {
        return Err(invalid("`purposes` must name at least one purpose".into()));
    }
    if req.data_categories.is_empty() {
        return Err(invalid("`data_categories` must name at least one category".into()));
    }
    for purpose in req.purposes.iter().chain(&req.recipients) {
        validate::label(purpose).map_err(|why| invalid(format!("`{purpose}`: {why}")))?;
    }
    for category in &req.data_categories {
        validate::data_category(category).map_err(|why| invalid(format!("data category `{category}`: {why}")))?;
    }
    validate::label(&req.policy_version).map_err(|why| invalid(format!("`policy_version`: {why}")))?;
    validate::label(&req.jurisdiction).map_err(|why| invalid(format!("`jurisdiction`: {why}")))?;
    let collection_method = req.collection_method.unwrap_or_else(|| "api".into());
    validate::label(&collection_method).map_err(|why| invalid(format!("`collection_method`: {why}")))?;
    if let Some(url) = &req.policy_url {
        validate::label(url).map_err(|why| invalid(format!("`policy_url`: {why}")))?;
    }
    if req.expires_at.is_some_and(|end| end <= Utc::now()) {
        return Err(invalid("`expires_at` is in the past".into()));
    }
    Ok(Grant {
        purposes: req.purposes,
        data_categories: req.data_categories,
        recipients: req.recipients,
        policy_version: req.policy_version,
        policy_url: req.policy_url,
        jurisdiction: req.jurisdiction,
        collection_method,
        expires_at: req.expires_at,
    })
}

/// Give consent. Appends a `given` entry to the ledger.
#[utoipa::path(
    post,
    path = "/v1/consents",
    tag = "consents",
    request_body = GrantRequest,
    responses(
        (status = 201, body = ConsentEntry),
        (status = 400, body = Problem),
        (status = 401, body = Problem),
        (status = 403, body = Problem),
    ),
    security(("bearer" = []))
)]
pub async fn grant(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<GrantRequest>,
) -> Result<(StatusCode, Json<ConsentEntry>), ApiError> {
    let principal = caller.require(Scope::Upload)?;
    let grant = parse_grant(req)?;
    state.packages.ensure_user(&principal.subject).await?;
    let recorded = state.consents.grant(&principal.subject, grant).await?;
    Ok((StatusCode::CREATED, Json(ConsentEntry::from(&recorded))))
}

/// Withdraw a consent. Appends a `withdrawn` entry; it takes effect for the next upload.
#[utoipa::path(
    post,
    path = "/v1/consents/{id}/withdraw",
    tag = "consents",
    params(("id" = Uuid, Path, description = "the consent id")),
    responses(
        (status = 201, body = ConsentEntry),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "already withdrawn"),
    ),
    security(("bearer" = []))
)]
pub async fn withdraw(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<(StatusCode, Json<ConsentEntry>), ApiError> {
    let principal = caller.require(Scope::Upload)?;
    let recorded = state.consents.withdraw(&principal.subject, id).await?;
    Ok((StatusCode::CREATED, Json(ConsentEntry::from(&recorded))))
}

/// The caller's current consents and full history.
#[utoipa::path(
    get,
    path = "/v1/consents",
    tag = "consents",
    responses((status = 200, body = ConsentOverview), (status = 401, body = Problem)),
    security(("bearer" = []))
)]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<ConsentOverview>, ApiError> {
    let principal = caller.require(Scope::Upload)?;
    let history = state.consents.history(&principal.subject).await?;
    let current = crate::consent::ConsentState::from_log(&history);
    let mut active: Vec<ConsentEntry> = current.active(Utc::now()).map(ConsentEntry::from).collect();
    active.sort_by_key(|e| e.index);
    Ok(Json(ConsentOverview {
        active,
        history: history.iter().map(ConsentEntry::from).collect(),
    }))
}
