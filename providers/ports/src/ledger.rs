//! The consent ledger: an append-only log of consent events with gap-free indices.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Result;

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
    pub leaf_hash: [u8; 32],
    pub recorded_at: DateTime<Utc>,
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
    pub leaf_hash: [u8; 32],
    pub recorded_at: DateTime<Utc>,
}

/// Consent ledger port.
///
/// # Contract
/// - `append` assigns the next index from one serialized sequencer: indices start at 0, are
///   gap-free and never reused, also under concurrent appends from several processes. The
///   entry and its leaf are durable when `append` returns.
/// - Stored entries are never changed or deleted through this port, and the backing store
///   refuses UPDATE/DELETE on them for the service's database role.
/// - Reads are scoped: `entries_for_user` returns only `user_id`'s entries, in index order.
#[async_trait]
pub trait ConsentLedger: Send + Sync + std::fmt::Debug {
    async fn append(&self, entry: NewLedgerEntry) -> Result<LedgerEntry>;
    async fn entries_for_user(&self, user_id: &str) -> Result<Vec<LedgerEntry>>;
    /// Number of entries in the log.
    async fn size(&self) -> Result<u64>;
}
