//! `/v1/me`: the caller's own data as a whole: erase it, or take a copy of its record.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::consents::ConsentEntry;
use super::extract::{Caller, Json};
use super::packages::Package;
use super::problem::{ApiError, Problem};
use crate::auth::Scope;
use crate::pipeline::erasure::ErasureReport;
use udim_ports::metadata::PackageQuery;

/// Erases everything the caller gave: every package (data keys, metadata, objects, with a
/// `package.deleted` event each) and the bodies of their consent-ledger entries, whose
/// leaves stay so the log still verifies. Without consent records no consent is in force
/// afterwards. Repeating it is harmless.
#[utoipa::path(
    delete,
    path = "/v1/me",
    tag = "me",
    responses((status = 200, body = ErasureReport), (status = 501, body = Problem, description = "the ledger store cannot redact; nothing was erased")),
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
    let mut packages = Vec::new();
    let mut before = None;
    loop {
        let page = state
            .packages
            .list_packages(
                &principal.subject,
                &PackageQuery {
                    before,
                    limit: 200,
                    ..PackageQuery::default()
                },
            )
            .await?;
        let Some(last) = page.last() else { break };
        before = Some((last.created_at, last.id));
        packages.extend(page.into_iter().map(Package::from));
    }
    Ok(Json(Export {
        subject: principal.subject.into(),
        exported_at: Utc::now(),
        consents,
        packages,
    }))
}
