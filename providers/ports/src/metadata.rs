//! Package metadata and the transactional outbox.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Result;

/// Lifecycle of a package: `receiving → scanning → stored | quarantined | rejected`, later
/// `deleted`. Only `stored` packages are announced downstream or readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PackageStatus {
    Receiving,
    Scanning,
    Stored,
    Quarantined,
    Rejected,
    Deleted,
}

impl PackageStatus {
    pub const ALL: [PackageStatus; 6] = [
        Self::Receiving,
        Self::Scanning,
        Self::Stored,
        Self::Quarantined,
        Self::Rejected,
        Self::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Receiving => "receiving",
            Self::Scanning => "scanning",
            Self::Stored => "stored",
            Self::Quarantined => "quarantined",
            Self::Rejected => "rejected",
            Self::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }
}

/// What the malware scan concluded about a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanStatus {
    /// Scanned, nothing found.
    Clean,
    /// Not scanned: scanning is off, or the scanner was down and `fail_open` admitted it.
    NotScanned,
    /// Larger than the scanner can scan, admitted unscanned by policy.
    TooLargeAdmitted,
    /// Malware found: the package is quarantined.
    Infected,
}

impl ScanStatus {
    pub const ALL: [ScanStatus; 4] = [Self::Clean, Self::NotScanned, Self::TooLargeAdmitted, Self::Infected];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::NotScanned => "not_scanned",
            Self::TooLargeAdmitted => "too_large_admitted",
            Self::Infected => "infected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }
}

/// A package as first recorded, before any byte is stored.
#[derive(Debug, Clone)]
pub struct NewPackage {
    pub id: Uuid,
    pub user_id: String,
    pub consent_entry_id: Uuid,
    pub data_category: String,
    pub original_name: String,
    pub declared_content_type: String,
    /// A client's retry key: a second request with it gets the first one's package.
    pub idempotency_key: Option<String>,
    /// Where the object is written while it is incomplete; the cleanup path after a crash.
    pub staging_key: String,
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// What becomes known once the object is written and committed.
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub object_key: String,
    pub storage_uri: String,
    pub size_bytes: u64,
    pub sha256: [u8; 32],
    pub encryption_key_id: String,
    pub wrapped_key: Vec<u8>,
    /// The type sniffed from the content's magic bytes, when recognizable.
    pub sniffed_content_type: Option<String>,
    /// Never `Infected`: infected uploads are quarantined, not stored.
    pub scan_status: ScanStatus,
    /// The scanner's detail (why a file was not scanned).
    pub scan_detail: Option<String>,
    pub stored_at: DateTime<Utc>,
}

/// A package row.
#[derive(Debug, Clone)]
pub struct PackageRecord {
    pub id: Uuid,
    pub user_id: String,
    pub consent_entry_id: Uuid,
    pub data_category: String,
    pub original_name: String,
    pub declared_content_type: String,
    pub sniffed_content_type: Option<String>,
    pub status: PackageStatus,
    pub staging_key: String,
    pub object_key: Option<String>,
    pub storage_uri: Option<String>,
    pub size_bytes: Option<u64>,
    pub sha256: Option<[u8; 32]>,
    pub encryption_key_id: Option<String>,
    pub wrapped_key: Option<Vec<u8>>,
    pub scan_status: Option<ScanStatus>,
    pub scan_detail: Option<String>,
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One downstream read, as recorded.
#[derive(Debug, Clone)]
pub struct PackageRead {
    pub package_id: Uuid,
    pub reader: String,
    pub purpose: String,
    pub range: Option<(u64, u64)>,
    pub read_at: DateTime<Utc>,
}

/// Filter and page for listing a user's packages, newest first.
#[derive(Debug, Clone, Default)]
pub struct PackageQuery {
    pub status: Option<PackageStatus>,
    pub data_category: Option<String>,
    /// Return packages created strictly before this package (keyset pagination).
    pub before: Option<(DateTime<Utc>, Uuid)>,
    pub limit: u32,
}

/// One event waiting in (or sent from) the outbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxMessage {
    /// The event id; also the broker message id, for consumer de-duplication.
    pub id: Uuid,
    pub event_type: String,
    /// The version of the payload's schema.
    pub schema_version: u32,
    /// The package (or other aggregate) the event is about.
    pub aggregate_id: Uuid,
    pub payload: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

impl OutboxMessage {
    /// The message attributes every notifier sends beside the payload (SQS message
    /// attributes, AMQP headers, Pub/Sub attributes), so consumers can route and de-duplicate
    /// without parsing the body.
    pub fn attributes(&self) -> [(&'static str, String); 4] {
        [
            ("event_id", self.id.to_string()),
            ("event_type", self.event_type.clone()),
            ("schema_version", self.schema_version.to_string()),
            ("package_id", self.aggregate_id.to_string()),
        ]
    }
}

/// An outbox row with its delivery state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxEntry {
    #[serde(flatten)]
    pub message: OutboxMessage,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// How long a claim on recording an erasure lasts: the erasing request's own, or a sweeper's.
/// A recorder that dies leaves its claims to run out, and the erasures to the next sweep.
pub const ERASURE_RECORDING_CLAIM: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// What [`PackageStore::mark_deleted`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Erasure {
    /// The package was erased now; its object, if it has one, is still to delete.
    Erased { object_key: Option<String> },
    /// An earlier request erased it.
    AlreadyDeleted,
}

/// Package metadata port.
///
/// # Contract
/// - Every read and write that takes a `user_id` touches only that user's rows: another
///   user's package is indistinguishable from a missing one.
/// - `mark_stored` is ONE transaction: the package moves from `receiving` or `scanning` to
///   `stored` with its object details AND `event` is inserted into the outbox; either both
///   happen or neither. It fails with `Conflict` from any other status.
/// - `discard` removes a package that never reached `stored` (bad input, failed write); it
///   refuses (`Conflict`) to remove a stored one.
/// - `mark_deleted` is ONE transaction: a `stored` or `quarantined` package becomes `deleted`
///   with its wrapped data key, content hash, names, types and metadata cleared (so its
///   ciphertext can never be decrypted again, even from a backup of the object); the
///   resumable upload it came from, if any, is removed with its wrapped key; the package's
///   earlier events are scrubbed from the outbox (sent ones keep only their ids, unsent ones
///   are dropped: nobody needs to hear of a package that is gone); AND `event` is inserted.
///   The row stays as a tombstone holding the object key until `object_removed` says the
///   object is gone, so a crash in between leaves a cleanup path (`deleted_objects`).
#[async_trait]
pub trait PackageStore: Send + Sync + std::fmt::Debug {
    /// Records the user on first contact; later calls are no-ops.
    async fn ensure_user(&self, user_id: &str) -> Result<()>;
    /// `AlreadyExists` when the user already has a package with the same idempotency key.
    async fn create_package(&self, package: &NewPackage) -> Result<()>;
    async fn mark_stored(
        &self,
        user_id: &str,
        id: Uuid,
        object: &StoredObject,
        event: &OutboxMessage,
    ) -> Result<PackageRecord>;
    async fn discard(&self, user_id: &str, id: Uuid) -> Result<()>;
    /// `receiving → scanning`: the body is complete and its verdict is awaited.
    async fn mark_scanning(&self, user_id: &str, id: Uuid) -> Result<()>;
    /// Records that a `receiving` package is still receiving bytes (a heartbeat), so
    /// `stale_uploads` never takes an upload that is slow but alive.
    async fn still_receiving(&self, user_id: &str, id: Uuid) -> Result<()>;
    /// ONE transaction: `receiving | scanning → quarantined` with the signature, AND `event`
    /// into the outbox. The package's object must already be gone.
    async fn mark_quarantined(&self, user_id: &str, id: Uuid, signature: &str, event: &OutboxMessage) -> Result<()>;
    async fn get_package(&self, user_id: &str, id: Uuid) -> Result<Option<PackageRecord>>;
    /// A `stored` package by id, whoever owns it: only for downstream readers (`udim:read`),
    /// whose access is scoped by the owner's consent, checked by the caller.
    async fn get_stored(&self, id: Uuid) -> Result<Option<PackageRecord>>;
    /// The caller's package created with `key` as its `Idempotency-Key`, in any status.
    async fn find_by_idempotency_key(&self, user_id: &str, key: &str) -> Result<Option<PackageRecord>>;
    /// Records that `reader` read `package_id` for `purpose` (bytes `range`, if partial).
    async fn record_read(&self, read: &PackageRead) -> Result<()>;
    async fn list_packages(&self, user_id: &str, query: &PackageQuery) -> Result<Vec<PackageRecord>>;
    /// Erases a package (see the contract), and claims the recording of its erasure for the
    /// caller for [`ERASURE_RECORDING_CLAIM`]. `NotFound` when the user has no such package;
    /// `Conflict` while it is still being received (or was rejected, and so never stored).
    async fn mark_deleted(&self, user_id: &str, id: Uuid, event: &OutboxMessage) -> Result<Erasure>;
    /// `(user_id, id)` of `stored` or `quarantined` packages of `data_category` uploaded
    /// before `before`, oldest first: those a retention limit has run out on.
    async fn expired_packages(
        &self,
        data_category: &str,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(String, Uuid)>>;
    /// Deleted packages whose object is not yet known to be gone, oldest first.
    async fn deleted_objects(&self, limit: u32) -> Result<Vec<(Uuid, String)>>;
    /// Records that a deleted package's object is gone.
    async fn object_removed(&self, id: Uuid) -> Result<()>;
    /// Raises `user_id`'s erasure fence: afterwards no package of theirs created before it can
    /// be stored or quarantined (`mark_stored` and `mark_quarantined` answer `Conflict`), not
    /// even one committing concurrently: either it commits before the fence, and an erasure
    /// that lists the user's packages after raising it finds it, or it sees the fence.
    /// Packages created after it are stored as usual.
    async fn fence_erasure(&self, user_id: &str) -> Result<()>;
    /// Claims, until `now + ERASURE_RECORDING_CLAIM`, deleted packages (only `user_id`'s, and
    /// only package `id`, when given) whose erasure no consent-ledger entry records yet and
    /// that nobody else has claimed as of `now`, oldest first, and returns their
    /// `(user_id, id)`: those whose recording failed, or whose recorder died. Concurrent
    /// callers never claim one package both.
    async fn claim_unrecorded_erasures(
        &self,
        user_id: Option<&str>,
        id: Option<Uuid>,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(String, Uuid)>>;
    /// Records that the consent-ledger entry `entry` recorded the erasure of `ids` (each at
    /// most once: a package already recorded keeps its entry), ending their claims.
    async fn erasure_recorded(&self, ids: &[Uuid], entry: Uuid) -> Result<()>;
    /// Gives up the claims on recording the erasure of `ids` (their recording failed), so the
    /// next request or sweep takes them at once.
    async fn release_erasure_claims(&self, ids: &[Uuid]) -> Result<()>;
    /// Packages still `receiving` or `scanning` whose last update is older than `before`:
    /// uploads abandoned by a crash, to be cleaned up.
    async fn stale_uploads(&self, before: DateTime<Utc>) -> Result<Vec<PackageRecord>>;
    /// Checks that the database answers (for readiness probes).
    async fn ping(&self) -> Result<()>;
}

/// The transactional outbox, drained by the relay.
///
/// # Contract
/// - `claim_due` leases up to `limit` unsent messages (counting the attempt) whose next attempt is due, oldest
///   first, for `lease`; a leased message is not handed to another claimer until the lease
///   runs out, so several relays can run at once. Delivery is at least once, and in order
///   per aggregate: no message is handed out while an earlier one of its aggregate is unsent.
/// - `mark_sent` and `mark_failed` end the lease; `mark_failed` schedules the next attempt.
/// - `give_back` ends the lease and takes back the attempt its claim counted: the message was
///   not tried, or failed for no fault of its own (the broker was down). It is due again at
///   once, and `last_error` says why it was given back.
/// - `mark_failed` and `give_back` act on the caller's claim (the entry `claim_due` returned)
///   only while it holds: once its lease ran out and another claimer took the message, they
///   change nothing, so a late relay cannot end a lease that is not its own. Either drops a
///   message (never `package.deleted`) whose package was erased while it was out. A claim is
///   ended once: by `mark_sent`, `mark_failed` or `give_back`, or by its lease running out.
#[async_trait]
pub trait Outbox: Send + Sync + std::fmt::Debug {
    async fn claim_due(&self, now: DateTime<Utc>, lease: std::time::Duration, limit: u32) -> Result<Vec<OutboxEntry>>;
    async fn mark_sent(&self, id: Uuid, at: DateTime<Utc>) -> Result<()>;
    async fn mark_failed(&self, claimed: &OutboxEntry, error: &str, next_attempt_at: DateTime<Utc>) -> Result<()>;
    async fn give_back(&self, claimed: &OutboxEntry, reason: &str) -> Result<()>;
    /// Lists outbox rows, newest first; only unsent ones when `pending_only`.
    async fn list(&self, pending_only: bool, limit: u32) -> Result<Vec<OutboxEntry>>;
    /// Deletes messages sent before `before` (their payloads name users and packages, and
    /// the queue has them); unsent ones always stay. Returns how many went.
    async fn prune_sent(&self, before: DateTime<Utc>) -> Result<u64>;
}

/// A resumable (tus) upload as first recorded.
#[derive(Debug, Clone)]
pub struct NewUpload {
    pub id: Uuid,
    pub user_id: String,
    pub data_category: String,
    pub filename: String,
    pub content_type: String,
    pub metadata: serde_json::Value,
    pub length: u64,
    /// The key that encrypts this upload's stored chunks.
    pub key_id: String,
    pub wrapped_key: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A resumable upload's state.
#[derive(Debug, Clone)]
pub struct UploadRecord {
    pub id: Uuid,
    pub user_id: String,
    pub data_category: String,
    pub filename: String,
    pub content_type: String,
    pub metadata: serde_json::Value,
    pub length: u64,
    pub offset: u64,
    pub key_id: String,
    pub wrapped_key: Vec<u8>,
    pub expires_at: DateTime<Utc>,
    /// The package it became, once complete.
    pub package_id: Option<Uuid>,
}

/// One stored piece of a resumable upload: the bytes of one PATCH, encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadChunk {
    pub offset: u64,
    pub length: u64,
    pub object_key: String,
}

/// Resumable (tus) upload state.
///
/// # Contract
/// - Reads and writes that take a `user_id` touch only that user's uploads.
/// - `lock_upload` is a database lease, so two requests for one upload never write at once,
///   also across service instances: it returns `None` while another holder's lease is live.
/// - `append_chunk` records the chunk, advances the offset by its length (only from the
///   expected offset) and releases the lease, in one transaction.
#[async_trait]
pub trait UploadStore: Send + Sync + std::fmt::Debug {
    async fn create_upload(&self, upload: &NewUpload) -> Result<()>;
    async fn get_upload(&self, user_id: &str, id: Uuid) -> Result<Option<UploadRecord>>;
    async fn lock_upload(
        &self,
        user_id: &str,
        id: Uuid,
        token: Uuid,
        until: DateTime<Utc>,
    ) -> Result<Option<UploadRecord>>;
    async fn unlock_upload(&self, id: Uuid, token: Uuid) -> Result<()>;
    /// Extends the lease `token` holds to `until` (a heartbeat, so a short lease outlives a
    /// long PATCH but not its holder). False when `token` no longer holds it.
    async fn renew_lease(&self, id: Uuid, token: Uuid, until: DateTime<Utc>) -> Result<bool>;
    async fn append_chunk(&self, id: Uuid, token: Uuid, chunk: &UploadChunk, expires_at: DateTime<Utc>) -> Result<()>;
    async fn upload_chunks(&self, id: Uuid) -> Result<Vec<UploadChunk>>;
    /// Records the package a complete upload became and removes its chunk rows, in one
    /// transaction; returns the removed chunks' object keys. `Conflict` when the upload
    /// already became another package.
    async fn complete_upload(&self, id: Uuid, package_id: Uuid) -> Result<Vec<String>>;
    /// Uploads whose every byte arrived but that have no package yet, and that nobody holds a
    /// live lease on at `now`: finalization a crash or a passing failure interrupted.
    async fn unfinished_complete(&self, now: DateTime<Utc>) -> Result<Vec<UploadRecord>>;
    /// Removes the upload and its chunk rows in one transaction, whoever holds its lease, and
    /// returns the removed chunks' object keys: a concurrent `append_chunk` either lands
    /// before (and its chunk is returned) or fails after (and its writer removes its object).
    async fn delete_upload(&self, id: Uuid) -> Result<Vec<String>>;
    /// Unfinished uploads whose expiry has passed.
    async fn expired_uploads(&self, now: DateTime<Utc>) -> Result<Vec<UploadRecord>>;
    /// The user's unfinished uploads.
    async fn open_uploads(&self, user_id: &str) -> Result<Vec<UploadRecord>>;
}
