//! `/v1/me`: the caller's own data as a whole: erase it, or take a copy of its record.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::Serialize;
use udim_ledger::proof::RecordProof;
use udim_ports::PortError;
use udim_ports::metadata::PackageRecord;
use utoipa::ToSchema;

use super::AppState;
use super::consents::ConsentEntry;
use super::extract::{Caller, Json};
use super::packages::Package;
use super::problem::{ApiError, Problem};
use crate::auth::Scope;
use crate::consent::proofs;
use crate::pipeline::erasure::ErasureReport;
use crate::pipeline::export::{Archive, Document};
use udim_ports::metadata::PackageQuery;

/// Erases everything the caller gave: every package (data keys, metadata, objects, with a
/// `package.deleted` event each) and the bodies of their consent-ledger entries, whose
/// leaves stay so the log still verifies. Without consent records no consent is in force
/// afterwards. The erasure is recorded in the consent ledger, and the answer carries the
/// record's receipt. Repeating it is harmless (and is recorded again).
#[utoipa::path(
    delete,
    path = "/v1/me",
    operation_id = "erase_my_data",
    tag = "me",
    responses(
        (status = 200, body = ErasureReport),
        (status = 501, body = Problem, description = "the ledger store cannot redact; nothing was erased"),
        (status = 503, body = Problem, description = "a store failed; repeat the request")
    ),
    security(("bearer" = []))
)]
pub async fn erase(State(state): State<AppState>, caller: Caller) -> Result<Json<ErasureReport>, ApiError> {
    let principal = caller.require(Scope::Upload)?;
    Ok(Json(state.eraser.erase_user(&principal.subject).await?))
}

/// A copy of what the service holds about the caller.
#[derive(Debug, Serialize, ToSchema)]
pub struct Export {
    pub subject: String,
    pub exported_at: DateTime<Utc>,
    /// Every consent-ledger entry of the caller, in ledger order, with its record.
    pub consents: Vec<ConsentEntry>,
    /// Every package of the caller's, newest first, including erased ones (as tombstones).
    pub packages: Vec<Package>,
}

/// Exports the caller's consent history and package metadata as one JSON document; the
/// packages' content is fetched with `GET /v1/packages/{id}/content` by services holding a
/// purpose the caller consented to.
#[utoipa::path(
    get,
    path = "/v1/me/export",
    operation_id = "export_my_data",
    tag = "me",
    responses((status = 200, body = Export)),
    security(("bearer" = []))
)]
pub async fn export(State(state): State<AppState>, caller: Caller) -> Result<Json<Export>, ApiError> {
    let principal = caller.require(Scope::Upload)?;
    let consents = state
        .consents
        .history(&principal.subject)
        .await?
        .iter()
        .map(ConsentEntry::from)
        .collect();
    let packages = all_packages(&state, &principal.subject)
        .await?
        .into_iter()
        .map(Package::from)
        .collect();
    Ok(Json(Export {
        subject: principal.subject.into(),
        exported_at: Utc::now(),
        consents,
        packages,
    }))
}

/// Every package of `subject`'s, newest first, tombstones included.
async fn all_packages(state: &AppState, subject: &str) -> Result<Vec<PackageRecord>, ApiError> {
    let mut packages = Vec::new();
    let mut before = None;
    loop {
        let page = state
            .packages
            .list_packages(
                subject,
                &PackageQuery {
                    before,
                    limit: 200,
                    ..PackageQuery::default()
                },
            )
            .await?;
        let Some(last) = page.last() else { break };
        before = Some((last.created_at, last.id));
        packages.extend(page);
    }
    Ok(packages)
}

/// Everything the caller gave, as a tar archive that `tar -xf` unpacks: `manifest.json`
/// first (the SHA-256 and size of every other file), `consents.json` (the consent history,
/// each entry with its record proof against `ledger/checkpoint.txt`), `ledger/key.txt` (the
/// key that checkpoint verifies with), `packages.json` (every package's metadata, erased ones
/// as tombstones) and `files/` (each stored package decrypted). It streams in bounded memory
/// whatever the files' sizes, with its length known up front; a file that cannot be read
/// cuts the stream short rather than deliver a wrong file. Each file's read is recorded, with
/// the caller as reader and purpose `portability`.
#[utoipa::path(
    get,
    path = "/v1/me/export/archive",
    operation_id = "export_my_data_archive",
    tag = "me",
    responses(
        (status = 200, content_type = "application/x-tar", description = "a POSIX ustar archive (files of 8 GiB or more carry GNU base-256 sizes, which tar and bsdtar read)"),
        (status = 503, body = Problem)
    ),
    security(("bearer" = []))
)]
pub async fn archive(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let principal = caller.require(Scope::Upload)?;
    let subject: &str = &principal.subject;
    let exported_at = Utc::now();
    let history = state.consents.history(subject).await?;
    let checkpoint = state.consents.ledger().latest_checkpoint().await?;
    let consents: Vec<ConsentEntry> = match &checkpoint {
        Some(checkpoint) if !history.is_empty() => {
            let indices: Vec<u64> = history.iter().map(|c| c.entry.index).collect();
            let proofs = proofs::inclusion(state.consents.ledger(), &indices, checkpoint.size).await?;
            history
                .iter()
                .zip(proofs)
                .map(|(recorded, proof)| {
                    let proof = RecordProof::new(
                        recorded.entry.index,
                        &recorded.entry.leaf_hash,
                        &proof,
                        checkpoint.note.clone(),
                    );
                    ConsentEntry::with_proof(recorded, proof)
                })
                .collect()
        }
        _ => history.iter().map(ConsentEntry::from).collect(),
    };
    let packages = all_packages(&state, subject).await?;
    let metadata: Vec<Package> = packages.iter().cloned().map(Package::from).collect();
    let mut documents = vec![
        Document {
            path: "consents.json".into(),
            bytes: json_bytes(&consents)?,
        },
        Document {
            path: "packages.json".into(),
            bytes: json_bytes(&metadata)?,
        },
        Document {
            path: "ledger/key.txt".into(),
            bytes: format!("{}\n", state.ledger_signer.verifier()).into(),
        },
    ];
    if let Some(checkpoint) = checkpoint {
        documents.push(Document {
            path: "ledger/checkpoint.txt".into(),
            bytes: checkpoint.note.into(),
        });
    }
    let archive = Archive::plan(subject, exported_at, documents, packages)?;
    let len = archive.len;
    let stream = archive
        .stream(state.reader.as_ref().clone(), subject.to_owned())
        .map_err(|e| {
            tracing::error!(error = %e, "the export archive was cut short");
            std::io::Error::other(e.to_string())
        });
    let name = format!(
        "attachment; filename=\"udim-export-{}.tar\"",
        exported_at.format("%Y%m%dT%H%M%SZ")
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::CONTENT_DISPOSITION, name),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

fn json_bytes<T: Serialize>(value: &T) -> Result<Bytes, ApiError> {
    Ok(serde_json::to_vec_pretty(value)
        .map_err(|e| PortError::generic("export", e))?
        .into())
}
