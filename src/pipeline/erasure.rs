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

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Notify;
use udim_ports::PortError;
use udim_ports::metadata::{Erasure, PackageQuery, PackageStatus, PackageStore};
use udim_ports::storage::BlobStore;
use uuid::Uuid;

use crate::consent::ConsentService;
use crate::pipeline::events::{self, DeletionReason};

/// What erasing everything removed.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ErasureReport {
    /// Packages erased by this request (already-deleted ones are not counted).
    pub packages_deleted: u64,
    /// Unfinished resumable uploads ended by this request, with their chunks and metadata.
    pub uploads_terminated: u64,
    /// Consent-ledger entries whose bodies were redacted by this request.
    pub ledger_entries_redacted: u64,
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
    /// Erases one of `user_id`'s packages at their request. `Ok(false)` when it was already
    /// deleted.
    pub async fn delete_package(&self, user_id: &str, id: Uuid) -> Result<bool, PortError> {
        self.erase(user_id, id, DeletionReason::UserRequest).await
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
            packages_deleted: 0,
            uploads_terminated: 0,
        };
        // Also those being written to right now: their rows go, so the PATCH in flight cannot
        // record its chunk (and removes it), and every later PATCH finds no upload.
        report.uploads_terminated = self.resumable.erase_user_uploads(user_id).await?;
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
                    if self.delete_package(user_id, package.id).await? {
                        report.packages_deleted += 1;
                    }
                }
            }
        }
        tracing::info!(
            packages = report.packages_deleted,
            ledger_entries = report.ledger_entries_redacted,
            "erased a user's data on request"
        );
        Ok(report)
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
                for (user_id, id) in due {
                    if self.erase(&user_id, id, DeletionReason::RetentionExpired).await? {
                        erased += 1;
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
