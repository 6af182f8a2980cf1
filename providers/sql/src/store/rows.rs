//! Rows as the database returns them, and their conversion into the ports' types: the one
//! place where stored values are checked (a negative size, a short hash) on their way in.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use udim_ledger::merkle::NodeId;
use udim_ports::ledger::{Hash, LedgerEntry, StoredCheckpoint};
use udim_ports::metadata::{
    OutboxEntry, OutboxMessage, PackageRecord, PackageStatus, ScanStatus, UploadChunk, UploadRecord,
};
use udim_ports::{PortError, Result};
use uuid::Uuid;

pub(crate) fn corrupt(what: &str) -> PortError {
    PortError::generic("database", format!("stored {what} is malformed"))
}

pub(crate) fn unsigned(n: i64, what: &str) -> Result<u64> {
    u64::try_from(n).map_err(|_| corrupt(what))
}

pub(crate) fn fixed<const N: usize>(bytes: Vec<u8>, what: &str) -> Result<[u8; N]> {
    bytes.try_into().map_err(|_| corrupt(what))
}

/// A value for a signed 64-bit column.
pub(crate) fn to_i64(n: u64, what: &str) -> Result<i64> {
    i64::try_from(n).map_err(|_| PortError::Conflict(format!("{what} out of range")))
}

/// The columns of [`PackageRow`], for `SELECT` and `RETURNING`.
macro_rules! package_columns {
    () => {
        "id, user_id, consent_entry_id, data_category, original_name, declared_content_type, \
         sniffed_content_type, status, staging_key, object_key, storage_uri, size_bytes, sha256, \
         encryption_key_id, wrapped_key, scan_status, scan_detail, metadata, created_at, updated_at"
    };
}
pub(crate) use package_columns;

/// The columns of [`UploadRow`].
macro_rules! upload_columns {
    () => {
        "id, user_id, data_category, filename, content_type, metadata, length, upload_offset, key_id, \
         wrapped_key, expires_at, package_id"
    };
}
pub(crate) use upload_columns;

/// The columns of [`OutboxRow`].
macro_rules! outbox_columns {
    () => {
        "id, event_type, schema_version, aggregate_id, payload, created_at, attempts, last_error, \
         next_attempt_at, sent_at"
    };
}
pub(crate) use outbox_columns;

#[derive(sqlx::FromRow)]
pub(crate) struct PackageRow {
    id: Uuid,
    user_id: String,
    consent_entry_id: Uuid,
    data_category: String,
    original_name: String,
    declared_content_type: String,
    sniffed_content_type: Option<String>,
    status: String,
    staging_key: String,
    object_key: Option<String>,
    storage_uri: Option<String>,
    size_bytes: Option<i64>,
    sha256: Option<Vec<u8>>,
    encryption_key_id: Option<String>,
    wrapped_key: Option<Vec<u8>>,
    scan_status: Option<String>,
    scan_detail: Option<String>,
    metadata: Json<serde_json::Value>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<PackageRow> for PackageRecord {
    type Error = PortError;

    fn try_from(row: PackageRow) -> Result<Self> {
        Ok(Self {
            id: row.id,
            user_id: row.user_id,
            consent_entry_id: row.consent_entry_id,
            data_category: row.data_category,
            original_name: row.original_name,
            declared_content_type: row.declared_content_type,
            sniffed_content_type: row.sniffed_content_type,
            status: PackageStatus::parse(&row.status).ok_or_else(|| corrupt("status"))?,
            staging_key: row.staging_key,
            object_key: row.object_key,
            storage_uri: row.storage_uri,
            size_bytes: row.size_bytes.map(|n| unsigned(n, "size")).transpose()?,
            sha256: row.sha256.map(|h| fixed(h, "sha256")).transpose()?,
            encryption_key_id: row.encryption_key_id,
            wrapped_key: row.wrapped_key,
            scan_status: row
                .scan_status
                .map(|s| ScanStatus::parse(&s).ok_or_else(|| corrupt("scan status")))
                .transpose()?,
            scan_detail: row.scan_detail,
            metadata: row.metadata.0,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct UploadRow {
    id: Uuid,
    user_id: String,
    data_category: String,
    filename: String,
    content_type: String,
    metadata: Json<serde_json::Value>,
    length: i64,
    upload_offset: i64,
    key_id: String,
    wrapped_key: Vec<u8>,
    expires_at: DateTime<Utc>,
    package_id: Option<Uuid>,
}

impl TryFrom<UploadRow> for UploadRecord {
    type Error = PortError;

    fn try_from(row: UploadRow) -> Result<Self> {
        Ok(Self {
            id: row.id,
            user_id: row.user_id,
            data_category: row.data_category,
            filename: row.filename,
            content_type: row.content_type,
            metadata: row.metadata.0,
            length: unsigned(row.length, "upload length")?,
            offset: unsigned(row.upload_offset, "upload offset")?,
            key_id: row.key_id,
            wrapped_key: row.wrapped_key,
            expires_at: row.expires_at,
            package_id: row.package_id,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ChunkRow {
    chunk_offset: i64,
    length: i64,
    object_key: String,
}

impl TryFrom<ChunkRow> for UploadChunk {
    type Error = PortError;

    fn try_from(row: ChunkRow) -> Result<Self> {
        Ok(Self {
            offset: unsigned(row.chunk_offset, "chunk offset")?,
            length: unsigned(row.length, "chunk length")?,
            object_key: row.object_key,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct OutboxRow {
    id: Uuid,
    event_type: String,
    schema_version: i32,
    aggregate_id: Uuid,
    payload: Json<serde_json::Value>,
    created_at: DateTime<Utc>,
    attempts: i32,
    last_error: Option<String>,
    next_attempt_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
}

impl TryFrom<OutboxRow> for OutboxEntry {
    type Error = PortError;

    fn try_from(row: OutboxRow) -> Result<Self> {
        Ok(Self {
            message: OutboxMessage {
                id: row.id,
                event_type: row.event_type,
                schema_version: u32::try_from(row.schema_version).map_err(|_| corrupt("schema version"))?,
                aggregate_id: row.aggregate_id,
                payload: row.payload.0,
                created_at: row.created_at,
            },
            attempts: u32::try_from(row.attempts).map_err(|_| corrupt("attempts"))?,
            last_error: row.last_error,
            next_attempt_at: row.next_attempt_at,
            sent_at: row.sent_at,
        })
    }
}

/// An outbox row as the claim returns it: with its sequence number, since `RETURNING` gives
/// no order.
#[derive(sqlx::FromRow)]
pub(crate) struct ClaimedRow {
    pub seq: i64,
    #[sqlx(flatten)]
    pub row: OutboxRow,
}

/// The columns of a ledger entry: its leaf and its (redactable) body.
macro_rules! ledger_select {
    () => {
        "SELECT r.idx, r.id, r.user_id, r.consent_id, r.event_type, r.record, r.salt, l.leaf_hash, \
         l.recorded_at FROM consent_records r JOIN consent_ledger l ON l.id = r.id"
    };
}
pub(crate) use ledger_select;

#[derive(sqlx::FromRow)]
pub(crate) struct LedgerRow {
    idx: i64,
    id: Uuid,
    user_id: String,
    consent_id: Uuid,
    event_type: String,
    record: Json<serde_json::Value>,
    salt: Vec<u8>,
    leaf_hash: Vec<u8>,
    recorded_at: DateTime<Utc>,
}

impl TryFrom<LedgerRow> for LedgerEntry {
    type Error = PortError;

    fn try_from(row: LedgerRow) -> Result<Self> {
        Ok(Self {
            index: unsigned(row.idx, "ledger index")?,
            id: row.id,
            user_id: row.user_id,
            consent_id: row.consent_id,
            event_type: row.event_type,
            record: row.record.0,
            salt: fixed(row.salt, "salt")?,
            leaf_hash: fixed(row.leaf_hash, "leaf hash")?,
            recorded_at: row.recorded_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct CheckpointRow {
    size: i64,
    root: Vec<u8>,
    note: String,
}

impl TryFrom<CheckpointRow> for StoredCheckpoint {
    type Error = PortError;

    fn try_from(row: CheckpointRow) -> Result<Self> {
        Ok(Self {
            size: unsigned(row.size, "checkpoint size")?,
            root: fixed(row.root, "checkpoint root")?,
            note: row.note,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct NodeRow {
    level: i16,
    idx: i64,
    hash: Vec<u8>,
}

impl TryFrom<NodeRow> for (NodeId, Hash) {
    type Error = PortError;

    fn try_from(row: NodeRow) -> Result<Self> {
        let id = NodeId {
            level: u8::try_from(row.level).map_err(|_| corrupt("node level"))?,
            index: unsigned(row.idx, "node index")?,
        };
        Ok((id, fixed(row.hash, "node hash")?))
    }
}

/// Converts fetched rows, failing on the first malformed one.
pub(crate) fn convert<R, T>(rows: Vec<R>) -> Result<Vec<T>>
where
    T: TryFrom<R, Error = PortError>,
{
    rows.into_iter().map(T::try_from).collect()
}
