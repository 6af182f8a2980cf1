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
use super::problem::{ApiError, Problem, ProblemCode};
use crate::auth::Scope;
use crate::consent::{AppendedConsent, Grant, RecordedConsent};
use crate::formats::input::{DataCategory, Label};
use udim_ledger::entry::ConsentEvent;
use udim_ledger::proof::RecordProof;

/// A request to give consent.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// Purposes of processing, e.g. `model-training`.
    #[schema(min_items = 1)]
    pub purposes: Vec<String>,
    /// Data categories covered, e.g. `audio`, `documents`.
    #[schema(min_items = 1)]
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
    #[schema(value_type = String, example = "given")]
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
    /// The entry's random salt, base64: with the fields above and the caller's `sub` it
    /// recomputes `leaf_hash` (see docs/ledger.md). Shown only to the entry's subject.
    pub salt: String,
    /// Where the log committed to this entry: index, leaf hash, inclusion proof and the
    /// signed checkpoint it is against. Present on appends and proof queries.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<RecordProofBody>)]
    pub record_proof: Option<RecordProof>,
}

/// An RFC 9162 inclusion proof with its signed checkpoint (a C2SP signed note).
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordProofBody {
    pub index: u64,
    /// base64
    pub leaf_hash: String,
    /// base64 hashes, bottom up
    pub inclusion_proof: Vec<String>,
    /// The signed checkpoint note the proof is against.
    pub checkpoint: String,
}

impl ConsentEntry {
    pub fn with_proof(recorded: &RecordedConsent, proof: RecordProof) -> Self {
        Self {
            record_proof: Some(proof),
            ..Self::from(recorded)
        }
    }
}

impl From<AppendedConsent> for ConsentEntry {
    fn from(a: AppendedConsent) -> Self {
        Self::with_proof(&a.recorded, a.proof)
    }
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
            salt: base64::engine::general_purpose::STANDARD.encode(c.entry.salt),
            record_proof: None,
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
    let invalid = |detail: String| ApiError::new(ProblemCode::InvalidConsent, detail);
    if req.purposes.is_empty() {
        return Err(invalid("`purposes` must name at least one purpose".into()));
    }
    if req.data_categories.is_empty() {
        return Err(invalid("`data_categories` must name at least one category".into()));
    }
    let label =
        |field: &str, value: &str| Label::parse(value).map_err(|why| invalid(format!("`{field}` `{value}`: {why}")));
    let labels = |field: &str, values: &[String]| values.iter().map(|v| label(field, v)).collect::<Result<Vec<_>, _>>();
    let data_categories = req
        .data_categories
        .iter()
        .map(|c| DataCategory::parse(c).map_err(|why| invalid(format!("data category `{c}`: {why}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if req.expires_at.is_some_and(|end| end <= Utc::now()) {
        return Err(invalid("`expires_at` is in the past".into()));
    }
    Ok(Grant {
        purposes: labels("purposes", &req.purposes)?,
        data_categories,
        recipients: labels("recipients", &req.recipients)?,
        policy_version: label("policy_version", &req.policy_version)?,
        policy_url: req
            .policy_url
            .as_deref()
            .map(|url| label("policy_url", url))
            .transpose()?,
        jurisdiction: label("jurisdiction", &req.jurisdiction)?,
        collection_method: label("collection_method", req.collection_method.as_deref().unwrap_or("api"))?,
        expires_at: req.expires_at,
    })
}

/// Give consent. Appends a `given` entry to the ledger.
#[utoipa::path(
    post,
    path = "/v1/consents",
    operation_id = "grant_consent",
    tag = "consents",
    request_body = GrantRequest,
    responses(
        (status = 201, body = ConsentEntry),
        (status = 400, body = Problem),
        (status = 401, body = Problem),
        (status = 403, body = Problem),
        (status = 429, body = Problem, description = "too many consent changes per second; retry after `Retry-After`"),
    ),
    security(("bearer" = []))
)]
pub async fn grant(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<GrantRequest>,
) -> Result<(StatusCode, Json<ConsentEntry>), ApiError> {
    let principal = caller.require(Scope::Upload)?;
    state.admission.consent_change(&principal.subject)?;
    let grant = parse_grant(req)?;
    state.packages.ensure_user(&principal.subject).await?;
    let appended = state.consents.grant(&principal.subject, grant).await?;
    Ok((StatusCode::CREATED, Json(ConsentEntry::from(appended))))
}

/// Withdraw a consent. Appends a `withdrawn` entry; it takes effect for the next upload.
#[utoipa::path(
    post,
    path = "/v1/consents/{id}/withdraw",
    operation_id = "withdraw_consent",
    tag = "consents",
    params(("id" = Uuid, Path, description = "the consent id")),
    responses(
        (status = 201, body = ConsentEntry),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "already withdrawn"),
        (status = 429, body = Problem, description = "too many consent changes per second; retry after `Retry-After`"),
    ),
    security(("bearer" = []))
)]
pub async fn withdraw(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<(StatusCode, Json<ConsentEntry>), ApiError> {
    let principal = caller.require(Scope::Upload)?;
    state.admission.consent_change(&principal.subject)?;
    let appended = state.consents.withdraw(&principal.subject, id).await?;
    Ok((StatusCode::CREATED, Json(ConsentEntry::from(appended))))
}

/// Change a consent's scope. Appends an `updated` entry; the consent keeps its id.
#[utoipa::path(
    put,
    path = "/v1/consents/{id}",
    operation_id = "update_consent",
    tag = "consents",
    params(("id" = Uuid, Path, description = "the consent id")),
    request_body = GrantRequest,
    responses(
        (status = 201, body = ConsentEntry),
        (status = 400, body = Problem),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "the consent is withdrawn"),
        (status = 429, body = Problem, description = "too many consent changes per second; retry after `Retry-After`"),
    ),
    security(("bearer" = []))
)]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(req): Json<GrantRequest>,
) -> Result<(StatusCode, Json<ConsentEntry>), ApiError> {
    let principal = caller.require(Scope::Upload)?;
    state.admission.consent_change(&principal.subject)?;
    let grant = parse_grant(req)?;
    let appended = state.consents.update(&principal.subject, id, grant).await?;
    Ok((StatusCode::CREATED, Json(ConsentEntry::from(appended))))
}

/// The caller's current consents and full history.
#[utoipa::path(
    get,
    path = "/v1/consents",
    operation_id = "list_consents",
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProofParams {
    /// Prove against the checkpoint of this tree size (default: the latest).
    pub size: Option<u64>,
}

/// The record proof of one of the caller's ledger entries (by entry `id`).
#[utoipa::path(
    get,
    path = "/v1/consents/{id}/proof",
    operation_id = "consent_proof",
    tag = "consents",
    params(("id" = Uuid, Path, description = "the entry id"), ProofParams),
    responses((status = 200, body = ConsentEntry), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = []))
)]
pub async fn proof(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    super::extract::Query(params): super::extract::Query<ProofParams>,
) -> Result<Json<ConsentEntry>, ApiError> {
    let principal = caller.require(Scope::Upload)?;
    let history = state.consents.history(&principal.subject).await?;
    let recorded = history
        .iter()
        .find(|c| c.entry.id == id)
        .ok_or_else(|| ApiError::not_found(format!("ledger entry {id} not found")))?;
    let checkpoint = super::ledger::checkpoint_for(&state, params.size).await?;
    if recorded.entry.index >= checkpoint.size {
        return Err(ApiError::new(
            ProblemCode::NotInTree,
            format!("entry {id} is not in the tree of size {}", checkpoint.size),
        ));
    }
    let proof =
        crate::consent::proofs::inclusion(state.consents.ledger(), &[recorded.entry.index], checkpoint.size).await?;
    let record_proof = RecordProof::new(
        recorded.entry.index,
        &recorded.entry.leaf_hash,
        &proof[0],
        checkpoint.note,
    );
    Ok(Json(ConsentEntry::with_proof(recorded, record_proof)))
}
