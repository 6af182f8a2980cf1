//! The upload pipeline: stream → size cap → SHA-256 → scan → encrypt → object storage →
//! one transaction (`stored` + outbox event). Memory stays bounded by one envelope segment
//! plus the storage writer's parts in flight, whatever the upload's size.

use std::sync::Arc;

use aws_lc_rs::digest;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use udim_ports::PortError;
use udim_ports::kms::{KeyContext, KeyService};
use udim_ports::metadata::{NewPackage, PackageRecord, PackageStore, ScanStatus, StoredObject};
use udim_ports::scanner::{MalwareScanner, Verdict};
use udim_ports::storage::{BlobStore, BlobWriter};
use uuid::Uuid;

use crate::consent::{Access, ConsentService, now_micros};
use crate::formats::envelope::{Binding, Encryptor, EnvelopeError, Header};
use crate::formats::input::{DataCategory, FileName, IdempotencyKey, UserId};
use crate::pipeline::events;

/// Why an upload did not become a stored package. Whatever the reason, nothing of it is
/// left behind: no object, no row, no event.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the upload exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the upload was interrupted: {0}")]
    Interrupted(String),
    #[error("consent for data category `{0}` was withdrawn during the upload")]
    ConsentWithdrawn(DataCategory),
    #[error("malware detected: {0}; the upload was quarantined and stored nowhere readable")]
    Malware(String),
    #[error("the upload is larger than the malware scanner can scan ({limit} bytes)")]
    TooLargeToScan { limit: u64 },
    #[error("the malware scanner is unavailable")]
    ScannerUnavailable(#[source] PortError),
    #[error(transparent)]
    ContentRefused(#[from] crate::formats::content::ContentRejection),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error("encryption failed: {0}")]
    Envelope(#[from] EnvelopeError),
}

/// Counts an upload's outcome; a refusal is the uploader's (4xx), a failure ours (5xx).
fn count_upload(result: &Result<PackageRecord, IngestError>) {
    let outcome = match result {
        Ok(record) => {
            metrics::counter!(crate::ops::metrics::UPLOAD_BYTES).increment(record.size_bytes.unwrap_or(0));
            "stored"
        }
        Err(IngestError::Malware(_)) => "quarantined",
        Err(
            IngestError::TooLarge { .. }
            | IngestError::Interrupted(_)
            | IngestError::ConsentWithdrawn(_)
            | IngestError::TooLargeToScan { .. }
            | IngestError::ContentRefused(_),
        ) => "refused",
        Err(IngestError::ScannerUnavailable(_) | IngestError::Port(_) | IngestError::Envelope(_)) => "failed",
    };
    metrics::counter!(crate::ops::metrics::UPLOADS, "outcome" => outcome).increment(1);
}

/// What the uploader told us about the file.
#[derive(Debug, Clone)]
pub struct UploadRequest {
    pub user_id: UserId,
    pub consent_entry_id: Uuid,
    pub data_category: DataCategory,
    pub original_name: FileName,
    pub content_type: String,
    pub metadata: serde_json::Value,
    /// The client's `Idempotency-Key`, if it sent one.
    pub idempotency_key: Option<IdempotencyKey>,
    /// The body's size, when declared in advance (`Content-Length`, `Upload-Length`).
    pub size_hint: Option<u64>,
    /// The size the body must have, checked on the bytes received: a resumable upload's
    /// `Upload-Length`. A different size fails the upload as an integrity failure.
    pub exact_size: Option<u64>,
    /// The package id to use; `None` makes a fresh one. A resumable upload's package takes the
    /// upload's id, so finishing it again after a crash finds the first attempt.
    pub package_id: Option<Uuid>,
}

/// What to do when scanning cannot decide.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanPolicy {
    /// Admit uploads (recorded `not_scanned`) while the scanner is unreachable. Default:
    /// fail closed.
    pub fail_open: bool,
    /// Admit files over the scanner's limit (recorded `too_large_admitted`). Default: reject.
    pub admit_too_large: bool,
}

/// Runs uploads through the pipeline.
#[derive(Debug, Clone)]
pub struct Ingestor {
    pub blobs: Arc<dyn BlobStore>,
    /// Writers to `blobs` within the memory budget for upload buffers.
    pub writers: Arc<crate::pipeline::budget::BudgetedWriters>,
    pub kms: Arc<dyn KeyService>,
    pub packages: Arc<dyn PackageStore>,
    pub scanner: Arc<dyn MalwareScanner>,
    pub scan_policy: ScanPolicy,
    pub content: crate::formats::content::ContentPolicy,
    pub consents: ConsentService,
    /// The global size cap; a category may set a lower one.
    pub max_bytes: u64,
}

/// How often a long upload tells the package store it is alive, so the sweeper (which takes
/// uploads idle for `upload.abandon_after_secs`, a day by default) never takes one that is
/// slow but still receiving.
const STILL_RECEIVING_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The most of a refused body read and discarded, and for how long.
const DRAIN_LIMIT: u64 = 8 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads and discards a little more of a refused body, so a client still sending it can read
/// the refusal: closing a connection with unread data makes TCP reset it, and the client then
/// sees a broken connection instead of the 413.
pub async fn drain<S, E>(body: &mut S)
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    let mut drained = 0u64;
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    while drained <= DRAIN_LIMIT {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => drained += chunk.len() as u64,
            _ => return,
        }
    }
}

/// Storage key of a package's object. It is written there directly: a `BlobWriter` makes
/// nothing visible until it finishes (a multipart upload completes atomically on every
/// backend), so no rename is needed — and none would work above S3's 5 GB copy limit. An
/// upload that crashes leaves an incomplete multipart upload (removed by abort, or by the
/// bucket's AbortIncompleteMultipartUpload rule) and a `receiving` row the sweeper cleans.
pub fn object_key(id: Uuid) -> String {
    format!("packages/{id}")
}

struct Written {
    sniffed: Option<String>,
    size: u64,
    sha256: [u8; 32],
    key_id: String,
    wrapped_key: Vec<u8>,
    verdict: Verdict,
}

/// A scan in progress, or the reason there is none (fail-open).
enum Scan {
    Running(Box<dyn udim_ports::scanner::ScanSession>),
    Skipped(String),
}

impl Ingestor {
    /// The size cap for `category`: its own, or the global one.
    pub fn limit_for(&self, category: &str) -> u64 {
        self.content
            .max_bytes(category)
            .map_or(self.max_bytes, |cap| cap.min(self.max_bytes))
    }

    /// Receives one upload. On success the package is `stored` and its event is in the
    /// outbox; on failure everything written for it has been removed.
    ///
    /// A body stream error is the error of the upload: `IngestError::Interrupted` for a
    /// client's connection, `IngestError::Port` for a store the bytes are read back from.
    pub async fn receive<S>(&self, request: UploadRequest, body: S) -> Result<PackageRecord, IngestError>
    where
        S: Stream<Item = Result<Bytes, IngestError>> + Unpin + Send,
    {
        let id = request.package_id.unwrap_or_else(Uuid::now_v7);
        self.packages
            .create_package(&NewPackage {
                id,
                user_id: request.user_id.to_string(),
                consent_entry_id: request.consent_entry_id,
                data_category: request.data_category.to_string(),
                original_name: request.original_name.to_string(),
                declared_content_type: request.content_type.clone(),
                idempotency_key: request.idempotency_key.as_ref().map(ToString::to_string),
                staging_key: object_key(id),
                metadata: request.metadata.clone(),
                created_at: now_micros(),
            })
            .await?;
        let result = match self.store(id, &request, body).await {
            Ok(record) => Ok(record),
            // The quarantined row stays, as the record of what was refused; no object does.
            Err(e @ IngestError::Malware(_)) => {
                self.delete_objects(id).await;
                Err(e)
            }
            Err(e) => {
                self.clean_up(&request.user_id, id).await;
                Err(e)
            }
        };
        count_upload(&result);
        result
    }

    async fn store<S>(&self, id: Uuid, request: &UploadRequest, body: S) -> Result<PackageRecord, IngestError>
    where
        S: Stream<Item = Result<Bytes, IngestError>> + Unpin + Send,
    {
        let final_key = object_key(id);
        let object_hint = request.size_hint.map(crate::formats::envelope::stored_size_bound);
        let mut writer = self.writers.create(&request.user_id, &final_key, object_hint).await?;
        // The verdict is known before the object completes: infected or unscannable data is
        // never committed to storage.
        let refusal = match self.write(id, request, body, writer.as_mut()).await {
            Ok(written) => match &written.verdict {
                Verdict::Infected { signature } => Err((IngestError::Malware(signature.clone()), Some(written))),
                Verdict::TooLarge { limit } if !self.scan_policy.admit_too_large => {
                    Err((IngestError::TooLargeToScan { limit: *limit }, None))
                }
                _ => Ok(written),
            },
            Err(e) => Err((e, None)),
        };
        let written = match refusal {
            Ok(written) => {
                writer.finish().await?;
                written
            }
            Err((e, infected)) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(package_id = %id, error = %abort, "aborting the object upload failed");
                }
                if let (IngestError::Malware(signature), Some(written)) = (&e, infected) {
                    self.quarantine(id, request, signature, &written).await?;
                }
                return Err(e);
            }
        };

        // A withdrawal that landed while the bytes streamed wins: nothing is stored.
        let state = self.consents.state(&request.user_id).await?;
        if state
            .admitting(&request.data_category, Access::Upload, chrono::Utc::now())
            .is_none()
        {
            return Err(IngestError::ConsentWithdrawn(request.data_category.clone()));
        }

        let (scan_status, scan_detail) = match &written.verdict {
            Verdict::Clean => (ScanStatus::Clean, None),
            Verdict::NotScanned { reason } => (ScanStatus::NotScanned, Some(reason.clone())),
            Verdict::TooLarge { limit } => (
                ScanStatus::TooLargeAdmitted,
                Some(format!("larger than the scanner's {limit} bytes")),
            ),
            Verdict::Infected { .. } => unreachable!("infected uploads were refused above"),
        };
        let stored_at = now_micros();
        let storage_uri = self.blobs.uri(&final_key);
        let event = events::outbox_message(
            id,
            stored_at,
            events::PackageStored {
                user_id: &request.user_id,
                data_category: &request.data_category,
                content_type: &request.content_type,
                sniffed_content_type: written.sniffed.as_deref(),
                size_bytes: written.size,
                sha256: hex::encode(written.sha256),
                storage_uri: &storage_uri,
                encryption_key_id: &written.key_id,
                consent_entry_id: request.consent_entry_id,
                scan: events::ScanSummary {
                    status: scan_status,
                    detail: scan_detail.as_deref(),
                },
            },
        )?;
        let object = StoredObject {
            object_key: final_key,
            storage_uri,
            size_bytes: written.size,
            sha256: written.sha256,
            encryption_key_id: written.key_id,
            wrapped_key: written.wrapped_key,
            sniffed_content_type: written.sniffed.clone(),
            scan_status,
            scan_detail,
            stored_at,
        };
        Ok(self.packages.mark_stored(&request.user_id, id, &object, &event).await?)
    }

    async fn write<S>(
        &self,
        id: Uuid,
        request: &UploadRequest,
        mut body: S,
        writer: &mut dyn BlobWriter,
    ) -> Result<Written, IngestError>
    where
        S: Stream<Item = Result<Bytes, IngestError>> + Unpin + Send,
    {
        let ctx = KeyContext {
            package_id: id,
            user_id: request.user_id.to_string(),
        };
        let data_key = self.kms.generate_data_key(&ctx).await?;
        let header = Header::new(data_key.key_id.clone());
        let mut encryptor = Encryptor::new(
            &data_key.plaintext,
            &header,
            Binding {
                package_id: id,
                user_id: &request.user_id,
            },
        );
        drop(data_key.plaintext);
        writer.write(Bytes::from(header.encode())).await?;

        let mut scan = match self.scanner.start().await {
            Ok(session) => Scan::Running(session),
            Err(e) => self.scanner_failed(e)?,
        };
        let mut sha = digest::Context::new(&digest::SHA256);
        let mut size: u64 = 0;
        let limit = self.limit_for(&request.data_category);
        let mut prefix: Vec<u8> = Vec::with_capacity(crate::formats::content::SNIFF_LEN);
        let mut sniffed: Option<Option<String>> = None;
        let mut alive_at = tokio::time::Instant::now();
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            if alive_at.elapsed() >= STILL_RECEIVING_EVERY {
                alive_at = tokio::time::Instant::now();
                self.packages.still_receiving(&request.user_id, id).await?;
            }
            if size > limit {
                drain(&mut body).await;
                return Err(IngestError::TooLarge { limit });
            }
            if sniffed.is_none() {
                let take = (crate::formats::content::SNIFF_LEN - prefix.len()).min(chunk.len());
                prefix.extend_from_slice(&chunk[..take]);
                if prefix.len() == crate::formats::content::SNIFF_LEN {
                    sniffed = Some(self.check_content(&request.data_category, &request.content_type, &prefix)?);
                }
            }
            sha.update(&chunk);
            if let Scan::Running(session) = &mut scan
                && let Err(e) = session.feed(&chunk).await
            {
                scan = self.scanner_failed(e)?;
            }
            let sealed = encryptor.push(&chunk)?;
            if !sealed.is_empty() {
                writer.write(Bytes::from(sealed)).await?;
            }
        }
        if request.exact_size.is_some_and(|exact| exact != size) {
            return Err(PortError::Integrity(format!(
                "{size} bytes arrived where {} were promised",
                request.exact_size.unwrap_or_default()
            ))
            .into());
        }
        let sniffed = match sniffed {
            Some(sniffed) => sniffed,
            None => self.check_content(&request.data_category, &request.content_type, &prefix)?,
        };
        writer.write(Bytes::from(encryptor.finish()?)).await?;
        self.packages.mark_scanning(&request.user_id, id).await?;
        let verdict = match scan {
            Scan::Running(session) => match session.finish().await {
                Ok(verdict) => verdict,
                Err(e) => match self.scanner_failed(e)? {
                    Scan::Skipped(reason) => Verdict::NotScanned { reason },
                    Scan::Running(_) => unreachable!("scanner_failed never resumes a scan"),
                },
            },
            Scan::Skipped(reason) => Verdict::NotScanned { reason },
        };
        Ok(Written {
            sniffed,
            size,
            sha256: sha.finish().as_ref().try_into().expect("SHA-256 is 32 bytes"),
            key_id: data_key.key_id,
            wrapped_key: data_key.wrapped,
            verdict,
        })
    }

    /// Sniffs the type from an upload's first bytes and applies its category's rules to it
    /// and the `declared` type.
    pub fn check_content(&self, category: &str, declared: &str, prefix: &[u8]) -> Result<Option<String>, IngestError> {
        let sniffed = crate::formats::content::sniff(prefix);
        self.content.check(category, declared, sniffed.as_deref())?;
        Ok(sniffed)
    }

    /// Fail closed (the default) or, by policy, carry on unscanned.
    fn scanner_failed(&self, error: PortError) -> Result<Scan, IngestError> {
        if self.scan_policy.fail_open && error.is_transient() {
            tracing::warn!(error = %error, "malware scanner unavailable; admitting unscanned (scanner.fail_open)");
            Ok(Scan::Skipped(format!("scanner unavailable: {error}")))
        } else {
            Err(IngestError::ScannerUnavailable(error))
        }
    }

    /// Records a detection: the package becomes `quarantined` and `package.quarantined` is
    /// announced, in one transaction. Its object was never completed.
    async fn quarantine(
        &self,
        id: Uuid,
        request: &UploadRequest,
        signature: &str,
        written: &Written,
    ) -> Result<(), IngestError> {
        let event = events::outbox_message(
            id,
            now_micros(),
            events::PackageQuarantined {
                user_id: &request.user_id,
                data_category: &request.data_category,
                size_bytes: written.size,
                sha256: hex::encode(written.sha256),
                signature,
            },
        )?;
        tracing::warn!(package_id = %id, signature, "malware detected; upload quarantined");
        self.packages
            .mark_quarantined(&request.user_id, id, signature, &event)
            .await?;
        Ok(())
    }

    /// Removes every trace of a package that did not become `stored`. Failures are logged:
    /// the `receiving` row stays, and the sweeper retries from it later. Returns whether it
    /// is gone.
    pub async fn clean_up(&self, user_id: &str, id: Uuid) -> bool {
        if !self.delete_objects(id).await {
            return false;
        }
        match self.packages.discard(user_id, id).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(package_id = %id, error = %e, "could not discard a failed upload");
                false
            }
        }
    }

    /// Deletes a package's object; false if it could not be deleted.
    async fn delete_objects(&self, id: Uuid) -> bool {
        let key = object_key(id);
        match self.blobs.delete(&key).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(package_id = %id, key, error = %e, "could not delete the object of a failed upload");
                false
            }
        }
    }

    /// Cleans up uploads abandoned by a crash: rows still `receiving`/`scanning` after
    /// `abandon_after`, with their objects. Returns how many went.
    pub async fn sweep_abandoned(&self, abandon_after: std::time::Duration) -> Result<usize, PortError> {
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(abandon_after).map_err(|e| PortError::generic("sweeper", e))?;
        let stale = self.packages.stale_uploads(cutoff).await?;
        let count = stale.len();
        for package in stale {
            self.clean_up(&package.user_id, package.id).await;
        }
        Ok(count)
    }
}
