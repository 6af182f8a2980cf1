//! The consent ledger: an append-only RFC 9162 Merkle log of consent events, with gap-free
//! indices, stored subtree hashes for O(log n) proofs, and a signed checkpoint per batch.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{BoxError, Result};

/// A SHA-256 tree hash.
pub type Hash = [u8; 32];

/// An entry about to be appended. The caller computes `leaf_hash` from the canonical
/// encoding of `record` and `salt`; the ledger assigns the index.
#[derive(Debug, Clone)]
pub struct NewLedgerEntry {
    pub id: Uuid,
    pub user_id: String,
    /// The consent this event belongs to (the id of the entry that granted it).
    pub consent_id: Uuid,
    pub event_type: String,
    pub record: serde_json::Value,
    pub salt: [u8; 16],
    pub leaf_hash: Hash,
    pub recorded_at: DateTime<Utc>,
    /// Append only if the newest entry of `consent_id` is still the one at this index (what
    /// the caller decided on); otherwise the entry is refused, alone, and the batch goes on.
    /// This makes a withdrawal or an update check-and-append atomically, across processes.
    pub expects_latest: Option<u64>,
}

impl NewLedgerEntry {
    /// The entry as stored at `index`.
    pub fn at(&self, index: u64) -> LedgerEntry {
        LedgerEntry {
            index,
            id: self.id,
            user_id: self.user_id.clone(),
            consent_id: self.consent_id,
            event_type: self.event_type.clone(),
            record: self.record.clone(),
            salt: self.salt,
            leaf_hash: self.leaf_hash,
            recorded_at: self.recorded_at,
        }
    }
}

/// An entry as stored, with its position in the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub index: u64,
    pub id: Uuid,
    pub user_id: String,
    pub consent_id: Uuid,
    pub event_type: String,
    pub record: serde_json::Value,
    pub salt: [u8; 16],
    pub leaf_hash: Hash,
    pub recorded_at: DateTime<Utc>,
}

/// A signed checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCheckpoint {
    pub size: u64,
    pub root: Hash,
    /// The C2SP signed note.
    pub note: String,
}

/// The result of one appended batch: the entries with their indices and inclusion proofs
/// against the batch's checkpoint.
#[derive(Debug, Clone)]
pub struct AppendedBatch {
    /// The appended entries, in input order, without the refused ones.
    pub entries: Vec<LedgerEntry>,
    /// Positions in the input of entries refused because their `expects_latest` no longer
    /// held.
    pub refused: Vec<usize>,
    /// `proofs[i]` proves `entries[i]` in the tree of `checkpoint.size`.
    pub proofs: Vec<Vec<Hash>>,
    pub checkpoint: StoredCheckpoint,
}

/// One row of the stored log, for the audit.
#[derive(Debug, Clone)]
pub struct AuditRow {
    pub index: u64,
    pub leaf_hash: Hash,
    /// The tree's level-0 node at this index.
    pub tree_leaf: Option<Hash>,
    /// Body (JSON text) and salt, unless redacted.
    pub body: Option<(String, [u8; 16])>,
    /// Whether the entry's redaction is on record.
    pub redacted: bool,
}

/// Signs checkpoints for the ledger, inside the append transaction.
pub trait CheckpointSigner: Send + Sync {
    /// The signed note for a tree of `size` leaves with `root`.
    fn sign(&self, size: u64, root: &Hash) -> std::result::Result<String, BoxError>;
    /// Verifies a note this signer's key signed; returns its size and root.
    fn open(&self, note: &str) -> std::result::Result<(u64, Hash), BoxError>;
}

/// Consent ledger port.
///
/// # Contract
/// - `append_batch` appends all entries in ONE transaction, at the next indices from one
///   serialized sequencer: indices start at 0, are gap-free and never reused, also under
///   concurrent appends from several processes. In the same transaction it stores every
///   newly completed subtree hash, and signs and stores a checkpoint of the new tree — but
///   only after checking that the stored tree still matches the last checkpoint it signed
///   ([`crate::PortError::Integrity`] otherwise: it never signs two inconsistent checkpoints).
/// - Stored entries, nodes and checkpoints are never changed or deleted through this port;
///   the backing store refuses UPDATE/DELETE/TRUNCATE on them for the service's role.
/// - `nodes` returns stored complete-subtree hashes `(level, index)` in the order asked, so
///   proofs need O(log n) reads.
/// - Reads that take a `user_id` return only that user's entries, in index order.
#[async_trait]
pub trait ConsentLedger: Send + Sync + std::fmt::Debug {
    async fn append_batch(&self, entries: &[NewLedgerEntry], signer: &dyn CheckpointSigner) -> Result<AppendedBatch>;
    /// The most entries one `append_batch` takes: a store with a per-transaction limit
    /// says so here, and the sequencer cuts its batches to fit.
    fn max_batch(&self) -> usize {
        usize::MAX
    }
    async fn entries_for_user(&self, user_id: &str) -> Result<Vec<LedgerEntry>>;
    async fn nodes(&self, ids: &[(u8, u64)]) -> Result<Vec<Option<Hash>>>;
    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>>;
    async fn checkpoint_at(&self, size: u64) -> Result<Option<StoredCheckpoint>>;
    /// Checkpoints with `size >= from_size`, ascending, at most `limit`.
    async fn checkpoints(&self, from_size: u64, limit: u32) -> Result<Vec<StoredCheckpoint>>;
    /// Stored rows with `index >= from_index`, ascending, at most `limit`, for the audit.
    /// Row gaps are returned as they are (the audit detects them).
    async fn audit_rows(&self, from_index: u64, limit: u32) -> Result<Vec<AuditRow>>;
    /// Number of entries in the log.
    async fn size(&self) -> Result<u64>;
    /// Erasure: removes the bodies (records and salts) of all of `user_id`'s entries and
    /// records each redaction, in one transaction; leaves, nodes and checkpoints stay, so the
    /// log still verifies. Returns how many entries were newly redacted; idempotent.
    async fn redact_user(&self, user_id: &str) -> Result<u64>;
}
