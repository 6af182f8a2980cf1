//! Resumable uploads (tus 1.0): each PATCH's bytes are stored as their own encrypted chunk
//! object, durable as soon as the PATCH ends, so an upload resumes after a dropped
//! connection or a service restart. When the last byte arrives the chunks are decrypted in
//! order and fed through the same pipeline as a simple upload (consent re-check, size cap,
//! SHA-256, malware scan, fresh data key, one transaction with the outbox event).

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;
use udim_ports::PortError;
use udim_ports::kms::{KeyContext, KeyService, PlainKey};
use udim_ports::metadata::{NewUpload, PackageRecord, PackageStatus, UploadChunk, UploadRecord, UploadStore};
use udim_ports::storage::BlobStore;
use uuid::Uuid;

use crate::consent::{Access, ConsentService, now_micros};
use crate::formats::content::SNIFF_LEN;
use crate::formats::envelope::{Binding, Decryptor, Encryptor, EnvelopeError, Header};
use crate::formats::input::{DataCategory, FileName, UserId};
use crate::formats::tus::{Checksum, ChecksumAlgorithm};
use crate::pipeline::ingest::{IngestError, Ingestor, UploadRequest};

/// An upload's lease: short, so the lease of a replica that died runs out within seconds and
/// the client resumes on another; renewed every [`HEARTBEAT`] while its holder works (see
/// `under_lease`), so a PATCH or a finalization may take as long as it needs.
const LEASE: Duration = Duration::from_secs(15);
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How many PATCHes may bring an upload's first [`SNIFF_LEN`] bytes.
const MAX_PATCHES_BEFORE_SNIFF: usize = 16;

/// Runs `work` while keeping the lease `token` holds on upload `id` alive. If the lease
/// cannot be kept — a renewal refused, or not confirmed within one heartbeat, so it may run
/// out before the next — the work is stopped at once and the answer is a passing failure:
/// whoever takes the upload next must never find its holder still writing.
async fn under_lease<T>(
    uploads: &dyn UploadStore,
    id: Uuid,
    token: Uuid,
    work: impl std::future::Future<Output = Result<T, TusError>>,
) -> Result<T, TusError> {
    let keep = async {
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            match tokio::time::timeout(HEARTBEAT, uploads.renew_lease(id, token, lease_end())).await {
                Ok(Ok(true)) => {}
                outcome => {
                    tracing::warn!(upload_id = %id, ?outcome, "an upload's lease could not be kept; its work stops");
                    return;
                }
            }
        }
    };
    tokio::select! {
        result = work => result,
        () = keep => Err(PortError::unavailable("upload store", "the upload's lease could not be kept").into()),
    }
}

fn lease_end() -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(LEASE).unwrap_or_default()
}

/// Why a tus request failed.
#[derive(Debug, thiserror::Error)]
pub enum TusError {
    #[error("upload {0} not found")]
    NotFound(Uuid),
    #[error("Upload-Offset {given} does not match the upload's offset {actual}")]
    OffsetMismatch { given: u64, actual: u64 },
    #[error("another request is writing to this upload")]
    Locked,
    #[error("the body would pass the declared Upload-Length of {length}")]
    PastLength { length: u64 },
    #[error("Upload-Checksum does not match the received bytes")]
    ChecksumMismatch,
    #[error("the upload is already complete")]
    Complete,
    #[error("{0}")]
    Invalid(String),
    #[error("no active consent covers data category `{0}`")]
    NoConsent(DataCategory),
    #[error(
        "your unfinished uploads would declare {staged} bytes in {count} uploads, past your limit of \
         {bytes_limit} bytes in {count_limit}; finish or terminate one first"
    )]
    Staging {
        count: usize,
        staged: u64,
        count_limit: usize,
        bytes_limit: u64,
    },
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error("a stored chunk is unreadable: {0}")]
    Envelope(#[from] EnvelopeError),
}

impl TusError {
    /// A final answer about the upload itself (malware, withdrawn consent, a limit, chunks
    /// that fail authentication or do not add up): it ends the upload. Anything else is a
    /// failure of ours — a dependency down, slow or misbehaving — and keeps every chunk for
    /// the next try, however the provider classed it.
    pub fn ends_the_upload(&self) -> bool {
        match self {
            Self::NoConsent(_) | Self::Envelope(_) | Self::Port(PortError::Integrity(_)) => true,
            Self::Ingest(e) => matches!(
                e,
                IngestError::Malware(_)
                    | IngestError::TooLarge { .. }
                    | IngestError::TooLargeToScan { .. }
                    | IngestError::ContentRefused(_)
                    | IngestError::ConsentWithdrawn(_)
                    | IngestError::Envelope(_)
                    | IngestError::Port(PortError::Integrity(_))
            ),
            _ => false,
        }
    }
}

/// What a creation request asked for, already parsed.
#[derive(Debug, Clone)]
pub struct Creation {
    pub length: u64,
    pub data_category: DataCategory,
    pub filename: FileName,
    pub content_type: String,
    pub metadata: serde_json::Value,
}

/// The state of an upload after a request.
#[derive(Debug, Clone)]
pub struct Progress {
    pub upload: UploadRecord,
    /// The package, once the upload is complete and stored.
    pub package: Option<PackageRecord>,
}

/// The resumable-upload service.
#[derive(Debug, Clone)]
pub struct Resumable {
    pub uploads: Arc<dyn UploadStore>,
    pub blobs: Arc<dyn BlobStore>,
    pub kms: Arc<dyn KeyService>,
    pub consents: ConsentService,
    pub ingest: Arc<Ingestor>,
    /// How long an unfinished upload lives after its last write.
    pub expire_after: Duration,
    /// Cancelled when the service begins to shut down: a PATCH still receiving keeps what
    /// has arrived, releases its lease and answers with its offset, so the client resumes on
    /// another replica at once instead of waiting out the lease.
    pub draining: CancellationToken,
    /// Unfinished uploads, and the bytes they declare, one user may have (`limits.*`).
    pub open_uploads_per_user: usize,
    pub staged_bytes_per_user: u64,
}

/// Each chunk is bound to its upload, its owner and its offset, so chunks cannot be swapped
/// between positions or uploads without failing authentication: the offset is folded into
/// the id the envelope binds (distinct offsets give distinct ids).
fn chunk_binding_id(upload_id: Uuid, offset: u64) -> Uuid {
    Uuid::from_u128(upload_id.as_u128() ^ u128::from(offset))
}

fn chunk_key(upload_id: Uuid, offset: u64) -> String {
    format!("uploads/{upload_id}/{offset:020}")
}

enum Digest {
    Sha1(digest::Context),
    Sha256(digest::Context),
}

impl Digest {
    fn new(algorithm: ChecksumAlgorithm) -> Self {
        match algorithm {
            ChecksumAlgorithm::Sha1 => Self::Sha1(digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY)),
            ChecksumAlgorithm::Sha256 => Self::Sha256(digest::Context::new(&digest::SHA256)),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha1(c) | Self::Sha256(c) => c.update(data),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Self::Sha1(c) | Self::Sha256(c) => c.finish().as_ref().to_vec(),
        }
    }
}

impl Resumable {
    fn expiry(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::from_std(self.expire_after).unwrap_or_default()
    }

    /// Creates an upload; consent must cover its category now, and the declared length and
    /// type must fit the category's cap and allow-list (the bytes are checked again as they
    /// arrive and at the end: a declaration is only a claim).
    pub async fn create(&self, user_id: &str, creation: Creation) -> Result<UploadRecord, TusError> {
        let limit = self.ingest.limit_for(&creation.data_category);
        if creation.length > limit {
            return Err(IngestError::TooLarge { limit }.into());
        }
        // `application/octet-stream` declares nothing; the sniffed type decides later.
        if creation.content_type != "application/octet-stream" {
            self.ingest
                .content
                .check(&creation.data_category, &creation.content_type, None)
                .map_err(IngestError::from)?;
        }
        let state = self.consents.state(user_id).await?;
        if state
            .admitting(&creation.data_category, Access::Upload, Utc::now())
            .is_none()
        {
            return Err(TusError::NoConsent(creation.data_category));
        }
        // Unfinished uploads hold their data key and chunks until they expire: bound what one
        // user can stage, whatever the category caps say. Concurrent creations can overshoot
        // by at most the uploads one user may have in flight, on each replica.
        let open = self.uploads.open_uploads(user_id).await?;
        let count = open.len() + 1;
        let staged = open
            .iter()
            .fold(creation.length, |sum, upload| sum.saturating_add(upload.length));
        if count > self.open_uploads_per_user || staged > self.staged_bytes_per_user {
            return Err(TusError::Staging {
                count,
                staged,
                count_limit: self.open_uploads_per_user,
                bytes_limit: self.staged_bytes_per_user,
            });
        }
        let id = Uuid::now_v7();
        let data_key = self
            .kms
            .generate_data_key(&KeyContext {
                package_id: id,
                user_id: user_id.to_owned(),
            })
            .await?;
        let upload = NewUpload {
            id,
            user_id: user_id.to_owned(),
            data_category: creation.data_category.into(),
            filename: creation.filename.into(),
            content_type: creation.content_type,
            metadata: creation.metadata,
            length: creation.length,
            key_id: data_key.key_id,
            wrapped_key: data_key.wrapped,
            created_at: now_micros(),
            expires_at: self.expiry(),
        };
        self.uploads.create_upload(&upload).await?;
        // Checked again now that the upload exists: an erasure of everything that redacted the
        // consent in between either lists this upload afterwards (and removes it) or is seen
        // here.
        if self
            .consents
            .state(user_id)
            .await?
            .admitting(&upload.data_category, Access::Upload, Utc::now())
            .is_none()
        {
            self.uploads.delete_upload(id).await?;
            return Err(
                PortError::Conflict(format!("upload {id}: its owner's consent was withdrawn meanwhile")).into(),
            );
        }
        self.uploads
            .get_upload(user_id, id)
            .await?
            .ok_or(TusError::NotFound(id))
    }

    pub async fn status(&self, user_id: &str, id: Uuid) -> Result<UploadRecord, TusError> {
        self.uploads
            .get_upload(user_id, id)
            .await?
            .ok_or(TusError::NotFound(id))
    }

    async fn data_key(&self, upload: &UploadRecord) -> Result<PlainKey, TusError> {
        let ctx = KeyContext {
            package_id: upload.id,
            user_id: upload.user_id.clone(),
        };
        Ok(self
            .kms
            .unwrap_data_key(&upload.key_id, &upload.wrapped_key, &ctx)
            .await?)
    }

    /// Appends a PATCH body at `offset`. Bytes received before a dropped connection are kept
    /// (unless a checksum was promised for the whole body); the offset says how far it got.
    /// The plaintext of an upload's bytes before `offset` (under [`SNIFF_LEN`]), from the
    /// chunks already stored: what the type is sniffed from with the bytes still to come.
    async fn stored_prefix(&self, upload: &UploadRecord, key: &PlainKey, offset: u64) -> Result<Vec<u8>, TusError> {
        let mut prefix = Vec::with_capacity(SNIFF_LEN);
        if offset == 0 {
            return Ok(prefix);
        }
        let chunks: Vec<UploadChunk> = self
            .uploads
            .upload_chunks(upload.id)
            .await?
            .into_iter()
            .take_while(|chunk| chunk.offset < offset)
            .collect();
        // Each PATCH below the first 8 KiB reads back the ones before it: a client that dribbles
        // them a few bytes at a time would make that quadratic.
        if chunks.len() >= MAX_PATCHES_BEFORE_SNIFF {
            return Err(TusError::Invalid(format!(
                "the first {SNIFF_LEN} bytes of an upload must arrive in fewer than {MAX_PATCHES_BEFORE_SNIFF} PATCHes"
            )));
        }
        for chunk in chunks {
            let mut plaintext = decrypt_chunk(self.blobs.as_ref(), key, upload, &chunk).await?;
            while let Some(bytes) = plaintext.try_next().await? {
                prefix.extend_from_slice(&bytes);
            }
        }
        Ok(prefix)
    }

    pub async fn patch<S, E>(
        &self,
        user_id: &str,
        id: Uuid,
        offset: u64,
        checksum: Option<Checksum>,
        body: S,
    ) -> Result<Progress, TusError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let token = Uuid::new_v4();
        let Some(upload) = self.uploads.lock_upload(user_id, id, token, lease_end()).await? else {
            return match self.uploads.get_upload(user_id, id).await? {
                Some(_) => Err(TusError::Locked),
                None => Err(TusError::NotFound(id)),
            };
        };
        if upload.offset == upload.length && upload.package_id.is_none() {
            // Every byte is here already (this is a retry of the last PATCH, whose answer was
            // lost or a 503): finish instead of writing.
            let mut body = body;
            crate::pipeline::ingest::drain(&mut body).await;
            self.uploads.unlock_upload(id, token).await?;
            let package = self.finish(user_id, id).await?;
            let upload = self.status(user_id, id).await?;
            return Ok(Progress { upload, package });
        }
        let result = under_lease(
            self.uploads.as_ref(),
            id,
            token,
            self.write_chunk(&upload, token, offset, checksum, body),
        )
        .await;
        if result.is_err()
            && let Err(e) = self.uploads.unlock_upload(id, token).await
        {
            tracing::warn!(upload_id = %id, error = %e, "releasing an upload lease failed");
        }
        let upload = result?;
        let package = if upload.offset == upload.length && upload.package_id.is_none() {
            self.finish(user_id, id).await?
        } else {
            None
        };
        Ok(Progress { upload, package })
    }

    async fn write_chunk<S, E>(
        &self,
        upload: &UploadRecord,
        token: Uuid,
        offset: u64,
        checksum: Option<Checksum>,
        mut body: S,
    ) -> Result<UploadRecord, TusError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        if upload.package_id.is_some() || upload.offset == upload.length && upload.length > 0 {
            return Err(TusError::Complete);
        }
        if offset != upload.offset {
            return Err(TusError::OffsetMismatch {
                given: offset,
                actual: upload.offset,
            });
        }
        let key = self.data_key(upload).await?;
        // The upload's first bytes decide its type as soon as they are here, however the
        // client cut them into PATCHes: a file the category does not take is refused now,
        // not after gigabytes more.
        let mut prefix = if offset < SNIFF_LEN as u64 {
            Some(self.stored_prefix(upload, &key, offset).await?)
        } else {
            None
        };
        let header = Header::new(upload.key_id.clone());
        let binding = Binding {
            package_id: chunk_binding_id(upload.id, offset),
            user_id: &upload.user_id,
        };
        let mut encryptor = Encryptor::new(&key, &header, binding);
        drop(key);
        let object_key = chunk_key(upload.id, offset);
        let remaining = upload.length - offset;
        let mut writer = self
            .ingest
            .writers
            .create(
                &upload.user_id,
                &object_key,
                Some(crate::formats::envelope::stored_size_bound(remaining)),
            )
            .await?;
        let mut digest = checksum.as_ref().map(|c| Digest::new(c.algorithm));
        let mut received: u64 = 0;
        let mut interrupted = false;
        // A refusal of bytes that carry a checksum waits for the checksum: bytes damaged on
        // the way are the client's to send again (460), not a reason to end the upload.
        let mut refused = None;
        let outcome: Result<(), TusError> = async {
            writer.write(Bytes::from(header.encode())).await?;
            loop {
                let next = tokio::select! {
                    biased;
                    () = self.draining.cancelled() => None,
                    next = body.next() => Some(next),
                };
                // Shutting down ends the chunk here, as a client that went away does.
                let Some(next) = next else {
                    interrupted = true;
                    break;
                };
                let Some(chunk) = next else { break };
                let Ok(chunk) = chunk else {
                    interrupted = true;
                    break;
                };
                received += chunk.len() as u64;
                if offset + received > upload.length {
                    crate::pipeline::ingest::drain(&mut body).await;
                    return Err(TusError::PastLength { length: upload.length });
                }
                if let Some(first) = &mut prefix {
                    first.extend_from_slice(&chunk[..(SNIFF_LEN - first.len()).min(chunk.len())]);
                    if first.len() == SNIFF_LEN || offset + received == upload.length {
                        if let Err(refusal) =
                            self.ingest
                                .check_content(&upload.data_category, &upload.content_type, first)
                        {
                            if checksum.is_none() {
                                return Err(refusal.into());
                            }
                            refused = Some(refusal);
                        }
                        prefix = None;
                    }
                }
                if let Some(d) = &mut digest {
                    d.update(&chunk);
                }
                if refused.is_some() {
                    // Only hashed now: the checksum decides between 460 and the refusal, and
                    // a refused type is never written.
                    continue;
                }
                let sealed = encryptor.push(&chunk)?;
                if !sealed.is_empty() {
                    writer.write(Bytes::from(sealed)).await?;
                }
            }
            Ok(())
        }
        .await;
        let keep = outcome.is_ok() && received > 0 && !(interrupted && checksum.is_some());
        let verified = match (&checksum, digest) {
            (Some(expected), Some(d)) if keep && !interrupted => d.finish() == expected.digest,
            _ => true,
        };
        let refused = refused.filter(|_| keep && verified);
        if !keep || !verified || refused.is_some() {
            let _ = writer.abort().await;
            if let Some(refusal) = refused {
                self.discard(upload, true).await;
                return Err(refusal.into());
            }
            if let Err(TusError::Ingest(IngestError::ContentRefused(_))) = &outcome {
                self.discard(upload, true).await;
            }
            outcome?;
            if !verified {
                return Err(TusError::ChecksumMismatch);
            }
            self.uploads.unlock_upload(upload.id, token).await?;
            return Ok(upload.clone());
        }
        writer.write(Bytes::from(encryptor.finish()?)).await?;
        writer.finish().await?;
        let chunk = UploadChunk {
            offset,
            length: received,
            object_key,
        };
        if let Err(e) = self.uploads.append_chunk(upload.id, token, &chunk, self.expiry()).await {
            // Not recorded, so unreachable: an upload erased or moved on meanwhile must not
            // keep a chunk of ciphertext nobody can find.
            if let Err(delete) = self.blobs.delete(&chunk.object_key).await {
                tracing::warn!(upload_id = %upload.id, key = chunk.object_key, error = %delete, "removing an unrecorded chunk failed");
            }
            return Err(e.into());
        }
        Ok(UploadRecord {
            offset: offset + received,
            ..upload.clone()
        })
    }

    /// Finishes a complete upload under its lease: the one way its package comes to be, from
    /// the PATCH that brought its last byte, a later HEAD or PATCH, or the sweeper after a
    /// crash. Idempotent: the package takes the upload's id, so an earlier attempt is found
    /// and either completed (stored) or cleared away (cut short) before trying again.
    /// `Ok(None)` when the upload still waits for bytes.
    pub async fn finish(&self, user_id: &str, id: Uuid) -> Result<Option<PackageRecord>, TusError> {
        let token = Uuid::new_v4();
        let Some(upload) = self.uploads.lock_upload(user_id, id, token, lease_end()).await? else {
            return match self.uploads.get_upload(user_id, id).await? {
                Some(_) => Err(TusError::Locked),
                None => Err(TusError::NotFound(id)),
            };
        };
        let result = match upload.package_id {
            Some(package_id) => self
                .ingest
                .packages
                .get_package(user_id, package_id)
                .await
                .map_err(TusError::from),
            None if upload.offset < upload.length => Ok(None),
            None => under_lease(self.uploads.as_ref(), id, token, self.finalize(&upload))
                .await
                .map(Some),
        };
        if let Err(e) = self.uploads.unlock_upload(id, token).await {
            tracing::warn!(upload_id = %id, error = %e, "releasing an upload lease failed");
        }
        result
    }

    /// Decrypts the chunks in order and runs them through the upload pipeline. A refusal
    /// (malware, withdrawn consent, a limit) ends the upload; a failure of ours (storage,
    /// KMS, database, scanner) keeps every chunk for the next try.
    async fn finalize(&self, upload: &UploadRecord) -> Result<PackageRecord, TusError> {
        let result = self.try_finalize(upload).await;
        match &result {
            Err(e) if e.ends_the_upload() => {
                self.discard(upload, true).await;
            }
            _ => {}
        }
        result
    }

    async fn try_finalize(&self, upload: &UploadRecord) -> Result<PackageRecord, TusError> {
        let stored = |what: &str, why: &str| PortError::Integrity(format!("upload {}: stored {what} {why}", upload.id));
        let user_id = UserId::parse(&upload.user_id).map_err(|why| stored("user id", why))?;
        if let Some(earlier) = self.ingest.packages.get_package(&user_id, upload.id).await? {
            match earlier.status {
                PackageStatus::Stored => return self.completed(upload, earlier).await,
                PackageStatus::Receiving | PackageStatus::Scanning => {
                    // An attempt a crash cut short: its object and row go before the next.
                    if !self.ingest.clean_up(&user_id, upload.id).await {
                        return Err(
                            PortError::unavailable("upload store", "an earlier attempt is not cleared yet").into(),
                        );
                    }
                }
                PackageStatus::Quarantined => {
                    return Err(IngestError::Malware(earlier.scan_detail.unwrap_or_default()).into());
                }
                PackageStatus::Rejected | PackageStatus::Deleted => return Err(TusError::NotFound(upload.id)),
            }
        }
        let chunks = self.uploads.upload_chunks(upload.id).await?;
        let mut expected = 0;
        for chunk in &chunks {
            if chunk.offset != expected {
                return Err(PortError::Integrity(format!("upload {} has a gap at {expected}", upload.id)).into());
            }
            expected += chunk.length;
        }
        if expected != upload.length {
            return Err(PortError::Integrity(format!(
                "upload {} has {expected} bytes of chunks for a length of {}",
                upload.id, upload.length
            ))
            .into());
        }
        let data_category = DataCategory::parse(&upload.data_category).map_err(|why| stored("data category", why))?;
        let state = self.consents.state(&user_id).await?;
        let consent = state
            .admitting(&data_category, Access::Upload, Utc::now())
            .ok_or_else(|| TusError::NoConsent(data_category.clone()))?;
        let request = UploadRequest {
            user_id,
            consent_entry_id: consent.record.record_id,
            data_category,
            original_name: FileName::sanitize(&upload.filename),
            content_type: upload.content_type.clone(),
            metadata: upload.metadata.clone(),
            idempotency_key: None,
            size_hint: Some(upload.length),
            exact_size: Some(upload.length),
            package_id: Some(upload.id),
        };
        let key = Arc::new(self.data_key(upload).await?);
        let plaintext = {
            let blobs = self.blobs.clone();
            let upload = upload.clone();
            futures::stream::iter(chunks)
                .then(move |chunk| {
                    let (blobs, key, upload) = (blobs.clone(), key.clone(), upload.clone());
                    async move { decrypt_chunk(blobs.as_ref(), &key, &upload, &chunk).await }
                })
                .try_flatten()
                .boxed()
        };
        let package = self.ingest.receive(request, plaintext).await?;
        self.completed(upload, package).await
    }

    /// Links the stored package to its upload and removes the chunks, now redundant.
    async fn completed(&self, upload: &UploadRecord, package: PackageRecord) -> Result<PackageRecord, TusError> {
        let chunks = self.uploads.complete_upload(upload.id, package.id).await?;
        for key in chunks {
            if let Err(e) = self.blobs.delete(&key).await {
                tracing::warn!(upload_id = %upload.id, key, error = %e, "deleting an upload chunk failed");
            }
        }
        Ok(package)
    }

    /// Finishes complete uploads a crash (or a failure that has passed) left without their
    /// package. Returns how many became packages.
    pub async fn recover(&self) -> Result<usize, PortError> {
        let mut finished = 0;
        for upload in self.uploads.unfinished_complete(Utc::now()).await? {
            match self.finish(&upload.user_id, upload.id).await {
                Ok(Some(_)) => finished += 1,
                Ok(None) | Err(TusError::Locked | TusError::NotFound(_)) => {}
                Err(e) => tracing::warn!(upload_id = %upload.id, error = %e, "finishing a complete upload failed"),
            }
        }
        Ok(finished)
    }

    /// Removes an upload, its metadata and every chunk, whoever holds its lease. Returns
    /// false if the upload could not be removed (it stays for the sweeper).
    /// With `idle` (the caller holds the upload's lease, so nobody else is writing to it),
    /// also the chunk a crash cut short: never recorded, its object sits at the upload's
    /// offset, where the next PATCH would have replaced it. A live writer's chunk there is
    /// its own to remove when it finds the upload gone.
    async fn discard(&self, upload: &UploadRecord, idle: bool) -> bool {
        match self.uploads.delete_upload(upload.id).await {
            Ok(mut keys) => {
                if idle && upload.offset < upload.length {
                    keys.push(chunk_key(upload.id, upload.offset));
                }
                for key in keys {
                    if let Err(e) = self.blobs.delete(&key).await {
                        tracing::warn!(upload_id = %upload.id, key, error = %e, "deleting an upload chunk failed");
                    }
                }
                true
            }
            Err(e) => {
                tracing::warn!(upload_id = %upload.id, error = %e, "deleting an upload failed");
                false
            }
        }
    }

    /// Ends every unfinished upload of `user_id` (their erasure): rows, metadata and chunks
    /// go even while a PATCH is writing, whose chunk is then refused and removed, and every
    /// later PATCH finds no upload. Returns how many went.
    pub async fn erase_user_uploads(&self, user_id: &str) -> Result<u64, PortError> {
        let mut removed = 0;
        for upload in self.uploads.open_uploads(user_id).await? {
            // Erasure does not wait for a writer: a live one finds its upload gone.
            let (upload, idle) = match self
                .uploads
                .lock_upload(user_id, upload.id, Uuid::new_v4(), lease_end())
                .await?
            {
                Some(locked) => (locked, true),
                None => (upload, false),
            };
            if self.discard(&upload, idle).await {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Termination: removes the upload and every stored chunk.
    pub async fn terminate(&self, user_id: &str, id: Uuid) -> Result<(), TusError> {
        let token = Uuid::new_v4();
        let until = Utc::now() + chrono::Duration::seconds(60);
        let Some(upload) = self.uploads.lock_upload(user_id, id, token, until).await? else {
            return match self.uploads.get_upload(user_id, id).await? {
                Some(_) => Err(TusError::Locked),
                None => Err(TusError::NotFound(id)),
            };
        };
        if self.discard(&upload, true).await {
            Ok(())
        } else {
            Err(PortError::unavailable("upload store", "the upload could not be removed").into())
        }
    }

    /// Removes expired unfinished uploads and their chunks; returns how many went.
    pub async fn expire(&self) -> Result<usize, PortError> {
        let mut removed = 0;
        for upload in self.uploads.expired_uploads(Utc::now()).await? {
            // One that a PATCH has just taken up is not expired after all.
            match self
                .uploads
                .lock_upload(&upload.user_id, upload.id, Uuid::new_v4(), lease_end())
                .await
            {
                Ok(Some(locked)) => {
                    if self.discard(&locked, true).await {
                        removed += 1;
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(upload_id = %upload.id, error = %e, "expiring an upload failed"),
            }
        }
        Ok(removed)
    }
}

/// A chunk's plaintext as a stream, each segment authenticated before it is released. A
/// chunk that cannot be read is the store's failure (`IngestError::Port`, perhaps transient),
/// one that does not authenticate an integrity failure, never the client's.
async fn decrypt_chunk(
    blobs: &dyn BlobStore,
    key: &PlainKey,
    upload: &UploadRecord,
    chunk: &UploadChunk,
) -> Result<futures::stream::BoxStream<'static, Result<Bytes, IngestError>>, IngestError> {
    fn ours(e: crate::pipeline::read::ReadError) -> IngestError {
        use crate::pipeline::read::ReadError;
        match e {
            ReadError::Port(p) => IngestError::Port(p),
            ReadError::Envelope(e) => IngestError::Envelope(e),
            other => IngestError::Port(PortError::Integrity(other.to_string())),
        }
    }
    let object = blobs.get(&chunk.object_key).await?;
    let (header, _, body) = crate::pipeline::read::open_envelope(object).await.map_err(ours)?;
    let binding = Binding {
        package_id: chunk_binding_id(upload.id, chunk.offset),
        user_id: &upload.user_id,
    };
    let decryptor = Decryptor::new(key, &header, binding);
    Ok(crate::pipeline::read::decrypt_stream(body, decryptor, 0, chunk.length)
        .map_err(ours)
        .boxed())
}
