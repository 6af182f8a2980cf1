//! `/v1/ledger`: the signed checkpoint, the verifier key, consistency proofs, and the caller's
//! entries with their proofs. Checkpoints, keys and consistency proofs hold only hashes and
//! sizes, so they are public: anyone may monitor the log.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Deserialize;
use udim_ledger::proof::{ConsistencyProof, RecordProof, encode_hashes};
use udim_ports::ledger::StoredCheckpoint;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::consents::ConsentEntry;
use super::extract::{Caller, Json, Query};
use super::problem::{ApiError, Problem, ProblemCode};
use crate::auth::Scope;

/// The checkpoint of `size`, or the latest one.
pub async fn checkpoint_for(state: &AppState, size: Option<u64>) -> Result<StoredCheckpoint, ApiError> {
    let ledger = state.consents.ledger();
    let found = match size {
        // Past what any ledger can hold (and what its store can look up): no such checkpoint.
        Some(size) if i64::try_from(size).is_err() => None,
        Some(size) => ledger.checkpoint_at(size).await?,
        None => ledger.latest_checkpoint().await?,
    };
    found.ok_or_else(|| match size {
        Some(size) => ApiError::not_found(format!("no checkpoint of size {size}")),
        None => ApiError::not_found("the ledger is empty: no checkpoint yet"),
    })
}

fn text(body: String) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body)
}

/// The latest signed checkpoint: a C2SP `tlog-checkpoint` signed as a C2SP `signed-note`.
#[utoipa::path(
    get,
    path = "/v1/ledger/checkpoint",
    operation_id = "ledger_checkpoint",
    tag = "ledger",
    responses((status = 200, body = String, content_type = "text/plain"), (status = 404, body = Problem))
)]
pub async fn checkpoint(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(text(checkpoint_for(&state, None).await?.note))
}

/// The log's verifier key, `name+keyid+base64(0x01 || Ed25519 public key)`.
#[utoipa::path(
    get,
    path = "/v1/ledger/key",
    operation_id = "ledger_key",
    tag = "ledger",
    responses((status = 200, body = String, content_type = "text/plain"))
)]
pub async fn key(State(state): State<AppState>) -> impl IntoResponse {
    text(format!("{}\n", state.ledger_signer.verifier()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyParams {
    /// The older tree size (a checkpointed size; RFC 9162 defines no proof from the empty tree).
    #[param(minimum = 1)]
    pub from: u64,
    /// The newer tree size (default: the latest checkpoint).
    pub to: Option<u64>,
}

/// Both signed checkpoints and the RFC 9162 consistency proof between them.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ConsistencyBody {
    pub old_checkpoint: String,
    pub new_checkpoint: String,
    /// base64 hashes
    pub proof: Vec<String>,
}

/// A consistency proof between two checkpoints.
#[utoipa::path(
    get,
    path = "/v1/ledger/consistency",
    operation_id = "ledger_consistency",
    tag = "ledger",
    params(ConsistencyParams),
    responses((status = 200, body = ConsistencyBody), (status = 400, body = Problem), (status = 404, body = Problem))
)]
pub async fn consistency(
    State(state): State<AppState>,
    Query(params): Query<ConsistencyParams>,
) -> Result<Json<ConsistencyProof>, ApiError> {
    if params.from == 0 {
        return Err(ApiError::new(ProblemCode::InvalidQuery, "`from` must be at least 1"));
    }
    let old = checkpoint_for(&state, Some(params.from)).await?;
    let new = checkpoint_for(&state, params.to).await?;
    if old.size > new.size {
        return Err(ApiError::new(ProblemCode::InvalidQuery, "`from` must not exceed `to`"));
    }
    let proof = crate::consent::proofs::consistency(state.consents.ledger(), old.size, new.size).await?;
    Ok(Json(ConsistencyProof {
        old_checkpoint: old.note,
        new_checkpoint: new.note,
        proof: encode_hashes(&proof),
    }))
}

/// The caller's ledger entries, each with its record proof against the latest checkpoint.
#[utoipa::path(
    get,
    path = "/v1/ledger/entries",
    operation_id = "ledger_entries",
    tag = "ledger",
    responses((status = 200, body = Vec<ConsentEntry>), (status = 401, body = Problem)),
    security(("bearer" = []))
)]
pub async fn entries(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<ConsentEntry>>, ApiError> {
    let principal = caller.require(Scope::Upload)?;
    let history = state.consents.history(&principal.subject).await?;
    if history.is_empty() {
        return Ok(Json(Vec::new()));
    }
    let checkpoint = checkpoint_for(&state, None).await?;
    let in_tree: Vec<_> = history.iter().filter(|c| c.entry.index < checkpoint.size).collect();
    let indices: Vec<u64> = in_tree.iter().map(|c| c.entry.index).collect();
    let proofs = crate::consent::proofs::inclusion(state.consents.ledger(), &indices, checkpoint.size).await?;
    Ok(Json(
        in_tree
            .into_iter()
            .zip(proofs)
            .map(|(c, proof)| {
                let record_proof = RecordProof::new(c.entry.index, &c.entry.leaf_hash, &proof, checkpoint.note.clone());
                ConsentEntry::with_proof(c, record_proof)
            })
            .collect(),
    ))
}
