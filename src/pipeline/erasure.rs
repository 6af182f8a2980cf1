//! Erasure: a user deletes one package, or everything they gave.
//!
//! A package is erased by crypto-shredding first: in one transaction its wrapped data key,
//! content hash, names and metadata are cleared, the resumable upload it came from and the
//! payloads of its earlier events go, and a `package.deleted` event goes into the outbox, so
//! the downstream pipeline learns to purge what it derived. From that commit on,
//! the ciphertext can never be decrypted again, wherever a copy of it survives (S3 object
//! versions, backups). The object itself is deleted right after; if that fails, the sweeper
//! retries from the tombstone until it succeeds.
//!
//! Erasing everything also redacts the user's consent-ledger entries (their bodies go, their
//! leaves stay, and the log still verifies) and ends their unfinished uploads. Retention
//! limits erase packages the same way, with their own reason.
//!
//! Every erasure is then recorded in the consent ledger (the erased package ids and the
//! time, the person only as a commitment), and the person gets the record's receipt. The
//! erasure's own transaction claims its recording for the request; one whose recording
//! fails is recorded by the request's repetition or the next sweep, one whose recorder died
//! by a sweep once the claim has run out. A package's erasure is recorded once, unless its
//! recorder dies, or its database fails, between the append and the bookkeeping.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Notify;
use udim_ledger::entry::ErasureRecord;
use udim_ledger::proof::RecordProof;
use udim_ports::PortError;
use udim_ports::metadata::{Erasure, PackageQuery, PackageStatus, PackageStore};
use udim_ports::storage::BlobStore;
use uuid::Uuid;

use crate::consent::{AppendedErasure, ConsentService, PACKAGES_PER_ERASURE_RECORD};
use crate::pipeline::events::{self, DeletionReason};

/// The most unrecorded erasures one request or sweep claims.
const CLAIM_BATCH: u32 = 5_000;

/// What erasing everything removed, and the receipts of its ledger records.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ErasureReport {
    /// Packages erased by this request (already-deleted ones are not counted).
    pub packages_deleted: u64,
    /// Unfinished resumable uploads ended by this request, with their chunks and metadata.
    pub uploads_terminated: u64,
    /// Consent-ledger entries whose bodies were redacted by this request.
    pub ledger_entries_redacted: u64,
    /// The consent-ledger records of this erasure (one per thousand packages; one when none).
    pub receipts: Vec<ErasureReceipt>,
}

/// What a person keeps to prove an erasure, verifiable offline with the ledger's key: the
/// record recomputes `proof.leaf_hash` with `salt` (docs/ledger.md), the proof places it in a
/// signed checkpoint, and `subject_commitment` is `SHA-256("udim.erasure-subject.v1" ||
/// subject_nonce || sub)`. The service keeps no copy of the nonce.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErasureReceipt {
    #[schema(value_type = Object)]
    pub record: ErasureRecord,
    /// base64
    pub salt: String,
    /// base64: opens the record's subject commitment.
    pub subject_nonce: String,
    /// Index, leaf hash, inclusion proof and signed checkpoint, as with a consent.
    #[schema(value_type = Object)]
    pub proof: RecordProof,
}

impl From<AppendedErasure> for ErasureReceipt {
    fn from(a: AppendedErasure) -> Self {
        Self {
            record: a.record,
            salt: B64.encode(a.salt),
            subject_nonce: B64.encode(a.subject_nonce),
            proof: a.proof,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Eraser {
    pub packages: Arc<dyn PackageStore>,
    pub blobs: Arc<dyn BlobStore>,
    pub consents: ConsentService,
    pub resumable: Arc<crate::pipeline::resumable::Resumable>,
    pub relay_wake: Arc<Notify>,
    /// Data categories with a retention limit, and the limit.
    pub retention: Vec<(String, chrono::Duration)>,
}

impl Eraser {
    /// Erases one of `user_id`'s packages at their request, and records it. When it was
    /// already erased but is not recorded yet (a repeat after a failed recording), records
    /// it; `Ok(None)` when it is. A failed recording is an error (the erasure itself stands;
    /// repeating the request records it).
    pub async fn delete_package(&self, user_id: &str, id: Uuid) -> Result<Option<ErasureReceipt>, PortError> {
        let pending = if self.erase(user_id, id, DeletionReason::UserRequest).await? {
            vec![id]
        } else {
            self.packages
                .claim_unrecorded_erasures(Some(user_id), Some(id), Utc::now(), 1)
                .await?
                .into_iter()
                .map(|(_, id)| id)
                .collect()
        };
        if pending.is_empty() {
            return Ok(None);
        }
        Ok(self.record(user_id, pending).await?.into_iter().next())
    }

    /// Appends the ledger records of the erasure of `packages` (whose recording the caller
    /// has claimed), a record's worth at a time, marking each record's tombstones recorded. If
    /// an append fails, the claims on what is not recorded yet are given up, so the next
    /// request or sweep takes them at once.
    async fn record(&self, user_id: &str, packages: Vec<Uuid>) -> Result<Vec<ErasureReceipt>, PortError> {
        let parts: Vec<&[Uuid]> = if packages.is_empty() {
            vec![&[]]
        } else {
            packages.chunks(PACKAGES_PER_ERASURE_RECORD).collect()
        };
        let mut receipts = Vec::new();
        for (n, part) in parts.iter().enumerate() {
            let appended = match self.consents.record_erasure(user_id, part.to_vec()).await {
                Ok(appended) => appended,
                Err(e) => {
                    let unrecorded = parts[n..].concat();
                    if !unrecorded.is_empty()
                        && let Err(release) = self.packages.release_erasure_claims(&unrecorded).await
                    {
                        tracing::warn!(error = %release, "giving up claims on recording erasures failed; they run out by themselves");
                    }
                    return Err(e);
                }
            };
            // The records exist now: a failure from here keeps the claims (so no repetition
            // records them again at once); once they run out, a sweep may record them a
            // second time. Either way the person gets the receipts.
            for erasure in &appended {
                if !erasure.record.packages.is_empty()
                    && let Err(e) = self
                        .packages
                        .erasure_recorded(&erasure.record.packages, erasure.record.record_id)
                        .await
                {
                    tracing::warn!(error = %e, "marking erasures recorded failed; a sweep may record them again");
                }
            }
            receipts.extend(appended.into_iter().map(ErasureReceipt::from));
        }
        Ok(receipts)
    }

    /// Records the erasures whose recording failed or whose recorder died, one user's at a
    /// time. Returns how many packages' erasures it recorded.
    pub async fn record_unrecorded(&self) -> Result<usize, PortError> {
        let pending = self
            .packages
            .claim_unrecorded_erasures(None, None, Utc::now(), CLAIM_BATCH)
            .await?;
        let mut recorded = 0;
        for (user_id, ids) in by_user(pending) {
            let count = ids.len();
            match self.record(&user_id, ids).await {
                Ok(_) => recorded += count,
                Err(e) => tracing::warn!(error = %e, "recording erasures failed; the next sweep retries"),
            }
        }
        Ok(recorded)
    }

    async fn erase(&self, user_id: &str, id: Uuid, reason: DeletionReason) -> Result<bool, PortError> {
        let event = events::outbox_message(
            id,
            crate::consent::now_micros(),
            events::PackageDeleted { user_id, reason },
        )?;
        let Erasure::Erased { object_key } = self.packages.mark_deleted(user_id, id, &event).await? else {
            return Ok(false);
        };
        self.relay_wake.notify_one();
        // A quarantined package never had an object.
        if let Some(key) = object_key {
            self.remove_object(id, &key).await;
        }
        metrics::counter!(crate::ops::metrics::PACKAGES_DELETED, "reason" => reason.as_str()).increment(1);
        Ok(true)
    }

    /// Erases everything of `user_id`'s: consent-ledger bodies, unfinished uploads, packages.
    pub async fn erase_user(&self, user_id: &str) -> Result<ErasureReport, PortError> {
        // The ledger first: a store that cannot redact fails the request before anything
        // else is gone, and without consent records no upload in flight can be admitted.
        let mut report = ErasureReport {
            ledger_entries_redacted: self.consents.ledger().redact_user(user_id).await?,
            ..ErasureReport::default()
        };
        // An upload that passed its consent check before the redaction may be committing its
        // package right now: the fence makes it either land before the listing below, or fail.
        self.packages.fence_erasure(user_id).await?;
        // Also those being written to right now: their rows go, so the PATCH in flight cannot
        // record its chunk (and removes it), and every later PATCH finds no upload.
        report.uploads_terminated = self.resumable.erase_user_uploads(user_id).await?;
        // The packages this request erased and has not recorded yet: their recording is the
        // request's (claimed by each erasure), so a failure gives the claims up for the
        // repetition to take.
        let mut erased = Vec::new();
        let outcome = self.erase_packages(user_id, &mut report, &mut erased).await;
        if let Err(e) = outcome {
            if !erased.is_empty()
                && let Err(release) = self.packages.release_erasure_claims(&erased).await
            {
                tracing::warn!(error = %release, "giving up claims on recording erasures failed; they run out by themselves");
            }
            return Err(e);
        }
        // With the caller's erasures an earlier failure left unrecorded; a request that found
        // nothing to erase is not recorded. A failure here fails the request, and repeating it
        // records what is left.
        let earlier = self
            .packages
            .claim_unrecorded_erasures(Some(user_id), None, Utc::now(), CLAIM_BATCH)
            .await?;
        erased.extend(earlier.into_iter().map(|(_, id)| id));
        let changed = report.ledger_entries_redacted > 0 || report.uploads_terminated > 0;
        if !erased.is_empty() || (changed && report.receipts.is_empty()) {
            report.receipts.extend(self.record(user_id, erased).await?);
        }
        tracing::info!(
            packages = report.packages_deleted,
            ledger_entries = report.ledger_entries_redacted,
            "erased a user's data on request"
        );
        Ok(report)
    }

    /// Erases every stored or quarantined package of `user_id`'s, recording them a record's
    /// worth at a time (so no claim is held for long); `erased` keeps those not recorded yet.
    async fn erase_packages(
        &self,
        user_id: &str,
        report: &mut ErasureReport,
        erased: &mut Vec<Uuid>,
    ) -> Result<(), PortError> {
        for status in [PackageStatus::Stored, PackageStatus::Quarantined] {
            loop {
                let page = self
                    .packages
                    .list_packages(
                        user_id,
                        &PackageQuery {
                            status: Some(status),
                            limit: 200,
                            ..PackageQuery::default()
                        },
                    )
                    .await?;
                if page.is_empty() {
                    break;
                }
                for package in page {
                    if self.erase(user_id, package.id, DeletionReason::UserRequest).await? {
                        report.packages_deleted += 1;
                        erased.push(package.id);
                        if erased.len() == PACKAGES_PER_ERASURE_RECORD {
                            let part = std::mem::take(erased);
                            report.receipts.extend(self.record(user_id, part).await?);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Deletes an erased package's object; on failure the tombstone keeps it for the sweeper.
    async fn remove_object(&self, id: Uuid, key: &str) {
        let removed = match self.blobs.delete(key).await {
            Ok(()) => self.packages.object_removed(id).await,
            Err(e) => Err(e),
        };
        if let Err(e) = removed {
            tracing::warn!(package_id = %id, error = %e, "deleting an erased package's object failed; the sweeper retries");
        }
    }

    /// Erases the packages whose category's retention limit has run out as of `now`.
    /// Returns how many it erased.
    pub async fn expire(&self, now: DateTime<Utc>) -> Result<usize, PortError> {
        let mut erased = 0;
        for (category, keep) in &self.retention {
            let before = now - *keep;
            loop {
                let due = self.packages.expired_packages(category, before, 200).await?;
                if due.is_empty() {
                    break;
                }
                let mut done = Vec::new();
                for (user_id, id) in due {
                    if self.erase(&user_id, id, DeletionReason::RetentionExpired).await? {
                        done.push((user_id, id));
                    }
                }
                erased += done.len();
                for (user_id, ids) in by_user(done) {
                    if let Err(e) = self.record(&user_id, ids).await {
                        tracing::warn!(error = %e, "recording a retention erasure failed; the next sweep records it");
                    }
                }
            }
        }
        Ok(erased)
    }

    /// Retries object deletions that an earlier erasure could not finish. Returns how many
    /// objects it removed; one that fails again does not hold up the others.
    pub async fn sweep(&self) -> Result<usize, PortError> {
        let pending = self.packages.deleted_objects(500).await?;
        let mut removed = 0;
        for (id, key) in pending {
            let done = match self.blobs.delete(&key).await {
                Ok(()) => self.packages.object_removed(id).await,
                Err(e) => Err(e),
            };
            match done {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(package_id = %id, error = %e, "removing an erased package's object failed again")
                }
            }
        }
        Ok(removed)
    }
}

/// `(user_id, package id)` pairs grouped by user.
fn by_user(pairs: Vec<(String, Uuid)>) -> std::collections::BTreeMap<String, Vec<Uuid>> {
    let mut grouped = std::collections::BTreeMap::<String, Vec<Uuid>>::new();
    for (user_id, id) in pairs {
        grouped.entry(user_id).or_default().push(id);
    }
    grouped
}
