//! The SQL shared by both engines, instantiated once per engine by `sql_store!`.
//!
//! The engines differ only where [`EngineSql`] says so; everything else is one text, so a
//! fix applies to both and the conformance tests prove both.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row as _;
use sqlx::types::Json;
use udim_ledger::merkle::{self, Frontier, NodeId};
use udim_ports::ledger::{
    AppendedBatch, AuditRow, CheckpointSigner, ConsentLedger, Hash, LedgerEntry, NewLedgerEntry, StoredCheckpoint,
};
use udim_ports::metadata::{
    Erasure, NewPackage, NewUpload, Outbox, OutboxEntry, OutboxMessage, PackageQuery, PackageRead, PackageRecord,
    PackageStatus, PackageStore, StoredObject, UploadChunk, UploadRecord, UploadStore,
};
use udim_ports::{PortError, Result};
use uuid::Uuid;

/// The statements whose text differs between engines.
struct EngineSql {
    /// Leases due outbox rows; `$1` now, `$2` lease end, `$3` limit.
    claim_outbox: &'static str,
}

// A package's events go out in order: none is handed out while an earlier one of the same
// package is still unsent (failed and waiting, or leased to another relay).
const PG_SQL: EngineSql = EngineSql {
    claim_outbox: "UPDATE outbox SET lease_until = $2, attempts = attempts + 1 \
        WHERE seq IN (SELECT seq FROM outbox o \
            WHERE sent_at IS NULL AND next_attempt_at <= $1 \
              AND (lease_until IS NULL OR lease_until <= $1) \
              AND NOT EXISTS (SELECT 1 FROM outbox e \
                  WHERE e.aggregate_id = o.aggregate_id AND e.sent_at IS NULL AND e.seq < o.seq) \
            ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED) \
        RETURNING seq, id, event_type, aggregate_id, payload, created_at, attempts, last_error, next_attempt_at, sent_at",
};

// SQLite has one writer at a time, so the sub-select needs no row locks.
const SQLITE_SQL: EngineSql = EngineSql {
    claim_outbox: "UPDATE outbox SET lease_until = $2, attempts = attempts + 1 \
        WHERE seq IN (SELECT seq FROM outbox o \
            WHERE sent_at IS NULL AND next_attempt_at <= $1 \
              AND (lease_until IS NULL OR lease_until <= $1) \
              AND NOT EXISTS (SELECT 1 FROM outbox e \
                  WHERE e.aggregate_id = o.aggregate_id AND e.sent_at IS NULL AND e.seq < o.seq) \
            ORDER BY seq LIMIT $3) \
        RETURNING seq, id, event_type, aggregate_id, payload, created_at, attempts, last_error, next_attempt_at, sent_at",
};

macro_rules! package_columns {
    () => {
        "id, user_id, consent_entry_id, data_category, original_name, declared_content_type, \
         sniffed_content_type, status, staging_key, object_key, storage_uri, size_bytes, sha256, encryption_key_id, \
         wrapped_key, scan_status, scan_detail, metadata, created_at, updated_at"
    };
}

macro_rules! upload_columns {
    () => {
        "id, user_id, data_category, filename, content_type, metadata, length, upload_offset, key_id, wrapped_key, \
         expires_at, package_id"
    };
}

macro_rules! ledger_select {
    () => {
        "SELECT r.idx, r.id, r.user_id, r.consent_id, r.event_type, r.record, r.salt, l.leaf_hash, l.recorded_at \
         FROM consent_records r JOIN consent_ledger l ON l.id = r.id"
    };
}

/// Rows per multi-row INSERT or lookup: far below SQLite's 32,766 bound variables.
const CHUNK: usize = 200;

fn integrity(why: impl Into<String>) -> PortError {
    PortError::Integrity(why.into())
}

fn node_key(level: i16, idx: i64) -> Result<NodeId> {
    Ok(NodeId {
        level: u8::try_from(level).map_err(|_| corrupt("node level"))?,
        index: u64::try_from(idx).map_err(|_| corrupt("node index"))?,
    })
}

fn db_err(e: sqlx::Error) -> PortError {
    match &e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolClosed => {
            PortError::unavailable("database", e)
        }
        sqlx::Error::Database(db) if db.is_unique_violation() => PortError::AlreadyExists(db.message().to_owned()),
        _ => PortError::generic("database", e),
    }
}

fn corrupt(what: &str) -> PortError {
    PortError::generic("database", format!("stored {what} is malformed"))
}

fn to_i64(n: u64, what: &str) -> Result<i64> {
    i64::try_from(n).map_err(|_| PortError::Conflict(format!("{what} out of range")))
}

fn fixed<const N: usize>(bytes: Vec<u8>, what: &str) -> Result<[u8; N]> {
    bytes.try_into().map_err(|_| corrupt(what))
}

fn chrono_lease(lease: Duration) -> Result<chrono::Duration> {
    chrono::Duration::from_std(lease).map_err(|_| PortError::Conflict("lease too long".into()))
}

macro_rules! sql_store {
    ($name:ident, $db:ty, $pool:ty, $sql:expr) => {
        /// Metadata, outbox and ledger on one connection pool.
        #[derive(Debug, Clone)]
        pub struct $name {
            pool: $pool,
        }

        impl $name {
            pub fn new(pool: $pool) -> Self {
                Self { pool }
            }

            pub fn pool(&self) -> &$pool {
                &self.pool
            }

            fn package_from_row(row: &<$db as sqlx::Database>::Row) -> Result<PackageRecord> {
                let status: String = row.try_get("status").map_err(db_err)?;
                let size: Option<i64> = row.try_get("size_bytes").map_err(db_err)?;
                let sha256: Option<Vec<u8>> = row.try_get("sha256").map_err(db_err)?;
                let metadata: Json<serde_json::Value> = row.try_get("metadata").map_err(db_err)?;
                Ok(PackageRecord {
                    id: row.try_get("id").map_err(db_err)?,
                    user_id: row.try_get("user_id").map_err(db_err)?,
                    consent_entry_id: row.try_get("consent_entry_id").map_err(db_err)?,
                    data_category: row.try_get("data_category").map_err(db_err)?,
                    original_name: row.try_get("original_name").map_err(db_err)?,
                    declared_content_type: row.try_get("declared_content_type").map_err(db_err)?,
                    sniffed_content_type: row.try_get("sniffed_content_type").map_err(db_err)?,
                    status: PackageStatus::parse(&status).ok_or_else(|| corrupt("status"))?,
                    staging_key: row.try_get("staging_key").map_err(db_err)?,
                    object_key: row.try_get("object_key").map_err(db_err)?,
                    storage_uri: row.try_get("storage_uri").map_err(db_err)?,
                    size_bytes: size
                        .map(|n| u64::try_from(n).map_err(|_| corrupt("size")))
                        .transpose()?,
                    sha256: sha256.map(|h| fixed(h, "sha256")).transpose()?,
                    encryption_key_id: row.try_get("encryption_key_id").map_err(db_err)?,
                    wrapped_key: row.try_get("wrapped_key").map_err(db_err)?,
                    scan_status: row.try_get("scan_status").map_err(db_err)?,
                    scan_detail: row.try_get("scan_detail").map_err(db_err)?,
                    metadata: metadata.0,
                    created_at: row.try_get("created_at").map_err(db_err)?,
                    updated_at: row.try_get("updated_at").map_err(db_err)?,
                })
            }

            async fn insert_event(tx: &mut sqlx::Transaction<'static, $db>, event: &OutboxMessage) -> Result<()> {
                sqlx::query(
                    "INSERT INTO outbox (id, event_type, aggregate_id, payload, created_at, next_attempt_at) \
                     VALUES ($1, $2, $3, $4, $5, $5)",
                )
                .bind(event.id)
                .bind(&event.event_type)
                .bind(event.aggregate_id)
                .bind(Json(&event.payload))
                .bind(event.created_at)
                .execute(&mut **tx)
                .await
                .map_err(db_err)?;
                Ok(())
            }

            fn ledger_from_row(row: &<$db as sqlx::Database>::Row) -> Result<LedgerEntry> {
                let idx: i64 = row.try_get("idx").map_err(db_err)?;
                let record: Json<serde_json::Value> = row.try_get("record").map_err(db_err)?;
                Ok(LedgerEntry {
                    index: u64::try_from(idx).map_err(|_| corrupt("ledger index"))?,
                    id: row.try_get("id").map_err(db_err)?,
                    user_id: row.try_get("user_id").map_err(db_err)?,
                    consent_id: row.try_get("consent_id").map_err(db_err)?,
                    event_type: row.try_get("event_type").map_err(db_err)?,
                    record: record.0,
                    salt: fixed(row.try_get("salt").map_err(db_err)?, "salt")?,
                    leaf_hash: fixed(row.try_get("leaf_hash").map_err(db_err)?, "leaf hash")?,
                    recorded_at: row.try_get("recorded_at").map_err(db_err)?,
                })
            }

            fn outbox_entry_from_row(row: &<$db as sqlx::Database>::Row) -> Result<OutboxEntry> {
                let payload: Json<serde_json::Value> = row.try_get("payload").map_err(db_err)?;
                let attempts: i32 = row.try_get("attempts").map_err(db_err)?;
                Ok(OutboxEntry {
                    message: OutboxMessage {
                        id: row.try_get("id").map_err(db_err)?,
                        event_type: row.try_get("event_type").map_err(db_err)?,
                        aggregate_id: row.try_get("aggregate_id").map_err(db_err)?,
                        payload: payload.0,
                        created_at: row.try_get("created_at").map_err(db_err)?,
                    },
                    attempts: u32::try_from(attempts).map_err(|_| corrupt("attempts"))?,
                    last_error: row.try_get("last_error").map_err(db_err)?,
                    next_attempt_at: row.try_get("next_attempt_at").map_err(db_err)?,
                    sent_at: row.try_get("sent_at").map_err(db_err)?,
                })
            }
        }

        #[async_trait]
        impl PackageStore for $name {
            async fn ensure_user(&self, user_id: &str) -> Result<()> {
                sqlx::query("INSERT INTO users (id, created_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
                    .bind(user_id)
                    .bind(Utc::now())
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn create_package(&self, p: &NewPackage) -> Result<()> {
                sqlx::query(
                    "INSERT INTO packages (id, user_id, consent_entry_id, data_category, original_name, \
                     declared_content_type, status, staging_key, metadata, created_at, updated_at, idempotency_key) \
                     VALUES ($1, $2, $3, $4, $5, $6, 'receiving', $7, $8, $9, $9, $10)",
                )
                .bind(p.id)
                .bind(&p.user_id)
                .bind(p.consent_entry_id)
                .bind(&p.data_category)
                .bind(&p.original_name)
                .bind(&p.declared_content_type)
                .bind(&p.staging_key)
                .bind(Json(&p.metadata))
                .bind(p.created_at)
                .bind(&p.idempotency_key)
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
                Ok(())
            }

            async fn mark_stored(
                &self,
                user_id: &str,
                id: Uuid,
                object: &StoredObject,
                event: &OutboxMessage,
            ) -> Result<PackageRecord> {
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                let row = sqlx::query(concat!(
                    "UPDATE packages SET status = 'stored', object_key = $3, storage_uri = $4, \
                     size_bytes = $5, sha256 = $6, encryption_key_id = $7, wrapped_key = $8, \
                     updated_at = $9, scan_status = $10, scan_detail = $11, sniffed_content_type = $12 \
                     WHERE id = $1 AND user_id = $2 AND status IN ('receiving', 'scanning') \
                     RETURNING ",
                    package_columns!()
                ))
                .bind(id)
                .bind(user_id)
                .bind(&object.object_key)
                .bind(&object.storage_uri)
                .bind(to_i64(object.size_bytes, "size")?)
                .bind(object.sha256.as_slice())
                .bind(&object.encryption_key_id)
                .bind(object.wrapped_key.as_slice())
                .bind(object.stored_at)
                .bind(&object.scan_status)
                .bind(&object.scan_detail)
                .bind(&object.sniffed_content_type)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?
                .ok_or_else(|| PortError::Conflict(format!("package {id} is not being received")))?;
                let record = Self::package_from_row(&row)?;
                Self::insert_event(&mut tx, event).await?;
                tx.commit().await.map_err(db_err)?;
                Ok(record)
            }

            async fn discard(&self, user_id: &str, id: Uuid) -> Result<()> {
                let deleted = sqlx::query(
                    "DELETE FROM packages WHERE id = $1 AND user_id = $2 AND status IN ('receiving', 'scanning')",
                )
                .bind(id)
                .bind(user_id)
                .execute(&self.pool)
                .await
                .map_err(db_err)?
                .rows_affected();
                if deleted == 0 && self.get_package(user_id, id).await?.is_some() {
                    return Err(PortError::Conflict(format!("package {id} is past receiving")));
                }
                Ok(())
            }

            async fn mark_scanning(&self, user_id: &str, id: Uuid) -> Result<()> {
                let updated = sqlx::query(
                    "UPDATE packages SET status = 'scanning', updated_at = $3 \
                     WHERE id = $1 AND user_id = $2 AND status = 'receiving'",
                )
                .bind(id)
                .bind(user_id)
                .bind(Utc::now())
                .execute(&self.pool)
                .await
                .map_err(db_err)?
                .rows_affected();
                if updated == 0 {
                    return Err(PortError::Conflict(format!("package {id} is not being received")));
                }
                Ok(())
            }

            async fn mark_quarantined(
                &self,
                user_id: &str,
                id: Uuid,
                signature: &str,
                event: &OutboxMessage,
            ) -> Result<()> {
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                let updated = sqlx::query(
                    "UPDATE packages SET status = 'quarantined', scan_status = 'infected', scan_detail = $3, \
                     updated_at = $4 WHERE id = $1 AND user_id = $2 AND status IN ('receiving', 'scanning')",
                )
                .bind(id)
                .bind(user_id)
                .bind(signature)
                .bind(Utc::now())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
                if updated == 0 {
                    return Err(PortError::Conflict(format!("package {id} is not being received")));
                }
                Self::insert_event(&mut tx, event).await?;
                tx.commit().await.map_err(db_err)?;
                Ok(())
            }

            async fn get_package(&self, user_id: &str, id: Uuid) -> Result<Option<PackageRecord>> {
                sqlx::query(concat!(
                    "SELECT ",
                    package_columns!(),
                    " FROM packages WHERE id = $1 AND user_id = $2"
                ))
                .bind(id)
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?
                .map(|row| Self::package_from_row(&row))
                .transpose()
            }

            async fn get_stored(&self, id: Uuid) -> Result<Option<PackageRecord>> {
                sqlx::query(concat!("SELECT ", package_columns!(), " FROM packages WHERE id = $1 AND status = 'stored'"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?
                    .map(|row| Self::package_from_row(&row))
                    .transpose()
            }

            async fn find_by_idempotency_key(&self, user_id: &str, key: &str) -> Result<Option<PackageRecord>> {
                sqlx::query(concat!(
                    "SELECT ",
                    package_columns!(),
                    " FROM packages WHERE user_id = $1 AND idempotency_key = $2"
                ))
                .bind(user_id)
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?
                .map(|row| Self::package_from_row(&row))
                .transpose()
            }

            async fn record_read(&self, read: &PackageRead) -> Result<()> {
                let (start, end) = match read.range {
                    Some((start, end)) => (Some(to_i64(start, "range")?), Some(to_i64(end, "range")?)),
                    None => (None, None),
                };
                sqlx::query(
                    "INSERT INTO package_reads (package_id, reader, purpose, range_start, range_end, read_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(read.package_id)
                .bind(&read.reader)
                .bind(&read.purpose)
                .bind(start)
                .bind(end)
                .bind(read.read_at)
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
                Ok(())
            }

            async fn list_packages(&self, user_id: &str, q: &PackageQuery) -> Result<Vec<PackageRecord>> {
                let mut sql = sqlx::QueryBuilder::<$db>::new(concat!(
                    "SELECT ",
                    package_columns!(),
                    " FROM packages WHERE user_id = "
                ));
                sql.push_bind(user_id);
                if let Some(status) = q.status {
                    sql.push(" AND status = ").push_bind(status.as_str());
                }
                if let Some(category) = &q.data_category {
                    sql.push(" AND data_category = ").push_bind(category.clone());
                }
                if let Some((created_at, id)) = q.before {
                    sql.push(" AND (created_at < ")
                        .push_bind(created_at)
                        .push(" OR (created_at = ")
                        .push_bind(created_at)
                        .push(" AND id < ")
                        .push_bind(id)
                        .push("))");
                }
                sql.push(" ORDER BY created_at DESC, id DESC LIMIT ")
                    .push_bind(i64::from(q.limit));
                sql.build()
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?
                    .iter()
                    .map(Self::package_from_row)
                    .collect()
            }

            async fn mark_deleted(&self, user_id: &str, id: Uuid, event: &OutboxMessage) -> Result<Erasure> {
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                // The status guard makes concurrent erasures (a user and the retention sweep)
                // race safely: one erases and announces, the other finds it done.
                // The object key stays until the object is confirmed gone: the cleanup path.
                let erased = sqlx::query(
                    "UPDATE packages SET status = 'deleted', original_name = '', declared_content_type = '', \
                     sniffed_content_type = NULL, storage_uri = NULL, sha256 = NULL, encryption_key_id = NULL, \
                     wrapped_key = NULL, scan_detail = NULL, metadata = '{}', idempotency_key = NULL, updated_at = $3 \
                     WHERE id = $1 AND user_id = $2 AND status IN ('stored', 'quarantined') RETURNING object_key",
                )
                .bind(id)
                .bind(user_id)
                .bind(Utc::now())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
                let Some(row) = erased else {
                    let status: Option<String> = sqlx::query("SELECT status FROM packages WHERE id = $1 AND user_id = $2")
                        .bind(id)
                        .bind(user_id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err)?
                        .map(|row| row.try_get("status"))
                        .transpose()
                        .map_err(db_err)?;
                    return match status.as_deref() {
                        None => Err(PortError::NotFound(format!("package {id}"))),
                        Some("deleted") => Ok(Erasure::AlreadyDeleted),
                        Some(other) => Err(PortError::Conflict(format!("package {id} is {other}, not stored"))),
                    };
                };
                let object_key: Option<String> = row.try_get("object_key").map_err(db_err)?;
                // The resumable upload the package came from holds its name, metadata and a
                // wrapped key of its own.
                sqlx::query("DELETE FROM tus_chunks WHERE upload_id IN (SELECT id FROM tus_uploads WHERE package_id = $1)")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                sqlx::query("DELETE FROM tus_uploads WHERE package_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                sqlx::query("DELETE FROM outbox WHERE aggregate_id = $1 AND sent_at IS NULL")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                sqlx::query("UPDATE outbox SET payload = $2, last_error = NULL WHERE aggregate_id = $1")
                    .bind(id)
                    .bind(Json(serde_json::json!({"erased": true})))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                Self::insert_event(&mut tx, event).await?;
                tx.commit().await.map_err(db_err)?;
                Ok(Erasure::Erased { object_key })
            }

            async fn expired_packages(
                &self,
                data_category: &str,
                before: DateTime<Utc>,
                limit: u32,
            ) -> Result<Vec<(String, Uuid)>> {
                sqlx::query(
                    "SELECT user_id, id FROM packages WHERE status IN ('stored', 'quarantined') \
                     AND data_category = $1 AND created_at < $2 ORDER BY created_at LIMIT $3",
                )
                .bind(data_category)
                .bind(before)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?
                .iter()
                .map(|row| Ok((row.try_get("user_id").map_err(db_err)?, row.try_get("id").map_err(db_err)?)))
                .collect()
            }

            async fn deleted_objects(&self, limit: u32) -> Result<Vec<(Uuid, String)>> {
                sqlx::query(
                    "SELECT id, object_key FROM packages WHERE status = 'deleted' AND object_key IS NOT NULL \
                     ORDER BY updated_at LIMIT $1",
                )
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?
                .iter()
                .map(|row| Ok((row.try_get("id").map_err(db_err)?, row.try_get("object_key").map_err(db_err)?)))
                .collect()
            }

            async fn object_removed(&self, id: Uuid) -> Result<()> {
                sqlx::query("UPDATE packages SET object_key = NULL WHERE id = $1 AND status = 'deleted'")
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn stale_uploads(&self, before: DateTime<Utc>) -> Result<Vec<PackageRecord>> {
                sqlx::query(concat!(
                    "SELECT ",
                    package_columns!(),
                    " FROM packages WHERE status IN ('receiving', 'scanning') AND updated_at < $1 \
                     ORDER BY updated_at LIMIT 1000"
                ))
                .bind(before)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?
                .iter()
                .map(Self::package_from_row)
                .collect()
            }

            async fn ping(&self) -> Result<()> {
                sqlx::query("SELECT 1")
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }
        }

        impl $name {
            fn upload_from_row(row: &<$db as sqlx::Database>::Row) -> Result<UploadRecord> {
                let metadata: Json<serde_json::Value> = row.try_get("metadata").map_err(db_err)?;
                let length: i64 = row.try_get("length").map_err(db_err)?;
                let offset: i64 = row.try_get("upload_offset").map_err(db_err)?;
                Ok(UploadRecord {
                    id: row.try_get("id").map_err(db_err)?,
                    user_id: row.try_get("user_id").map_err(db_err)?,
                    data_category: row.try_get("data_category").map_err(db_err)?,
                    filename: row.try_get("filename").map_err(db_err)?,
                    content_type: row.try_get("content_type").map_err(db_err)?,
                    metadata: metadata.0,
                    length: u64::try_from(length).map_err(|_| corrupt("upload length"))?,
                    offset: u64::try_from(offset).map_err(|_| corrupt("upload offset"))?,
                    key_id: row.try_get("key_id").map_err(db_err)?,
                    wrapped_key: row.try_get("wrapped_key").map_err(db_err)?,
                    expires_at: row.try_get("expires_at").map_err(db_err)?,
                    package_id: row.try_get("package_id").map_err(db_err)?,
                })
            }
        }

        #[async_trait]
        impl UploadStore for $name {
            async fn create_upload(&self, u: &NewUpload) -> Result<()> {
                sqlx::query(
                    "INSERT INTO tus_uploads (id, user_id, data_category, filename, content_type, metadata, length, \
                     upload_offset, key_id, wrapped_key, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, $10, $11)",
                )
                .bind(u.id)
                .bind(&u.user_id)
                .bind(&u.data_category)
                .bind(&u.filename)
                .bind(&u.content_type)
                .bind(Json(&u.metadata))
                .bind(to_i64(u.length, "length")?)
                .bind(&u.key_id)
                .bind(u.wrapped_key.as_slice())
                .bind(u.created_at)
                .bind(u.expires_at)
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
                Ok(())
            }

            async fn get_upload(&self, user_id: &str, id: Uuid) -> Result<Option<UploadRecord>> {
                sqlx::query(concat!("SELECT ", upload_columns!(), " FROM tus_uploads WHERE id = $1 AND user_id = $2"))
                    .bind(id)
                    .bind(user_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?
                    .map(|row| Self::upload_from_row(&row))
                    .transpose()
            }

            async fn lock_upload(
                &self,
                user_id: &str,
                id: Uuid,
                token: Uuid,
                until: DateTime<Utc>,
            ) -> Result<Option<UploadRecord>> {
                sqlx::query(concat!(
                    "UPDATE tus_uploads SET lock_token = $3, locked_until = $4 \
                     WHERE id = $1 AND user_id = $2 AND (lock_token IS NULL OR locked_until < $5) RETURNING ",
                    upload_columns!()
                ))
                .bind(id)
                .bind(user_id)
                .bind(token)
                .bind(until)
                .bind(Utc::now())
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?
                .map(|row| Self::upload_from_row(&row))
                .transpose()
            }

            async fn unlock_upload(&self, id: Uuid, token: Uuid) -> Result<()> {
                sqlx::query("UPDATE tus_uploads SET lock_token = NULL, locked_until = NULL WHERE id = $1 AND lock_token = $2")
                    .bind(id)
                    .bind(token)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn append_chunk(
                &self,
                id: Uuid,
                token: Uuid,
                chunk: &UploadChunk,
                expires_at: DateTime<Utc>,
            ) -> Result<()> {
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                let updated = sqlx::query(
                    "UPDATE tus_uploads SET upload_offset = upload_offset + $3, expires_at = $4, lock_token = NULL, \
                     locked_until = NULL WHERE id = $1 AND lock_token = $2 AND upload_offset = $5",
                )
                .bind(id)
                .bind(token)
                .bind(to_i64(chunk.length, "length")?)
                .bind(expires_at)
                .bind(to_i64(chunk.offset, "offset")?)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
                if updated == 0 {
                    return Err(PortError::Conflict(format!("upload {id} moved on or lost its lock")));
                }
                sqlx::query("INSERT INTO tus_chunks (upload_id, chunk_offset, length, object_key) VALUES ($1, $2, $3, $4)")
                    .bind(id)
                    .bind(to_i64(chunk.offset, "offset")?)
                    .bind(to_i64(chunk.length, "length")?)
                    .bind(&chunk.object_key)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                tx.commit().await.map_err(db_err)?;
                Ok(())
            }

            async fn upload_chunks(&self, id: Uuid) -> Result<Vec<UploadChunk>> {
                sqlx::query("SELECT chunk_offset, length, object_key FROM tus_chunks WHERE upload_id = $1 ORDER BY chunk_offset")
                    .bind(id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?
                    .iter()
                    .map(|row| {
                        let offset: i64 = row.try_get("chunk_offset").map_err(db_err)?;
                        let length: i64 = row.try_get("length").map_err(db_err)?;
                        Ok(UploadChunk {
                            offset: u64::try_from(offset).map_err(|_| corrupt("chunk offset"))?,
                            length: u64::try_from(length).map_err(|_| corrupt("chunk length"))?,
                            object_key: row.try_get("object_key").map_err(db_err)?,
                        })
                    })
                    .collect()
            }

            async fn complete_upload(&self, id: Uuid, package_id: Uuid) -> Result<()> {
                sqlx::query("UPDATE tus_uploads SET package_id = $2 WHERE id = $1")
                    .bind(id)
                    .bind(package_id)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                sqlx::query("DELETE FROM tus_chunks WHERE upload_id = $1")
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn delete_upload(&self, id: Uuid) -> Result<()> {
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                sqlx::query("DELETE FROM tus_chunks WHERE upload_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                sqlx::query("DELETE FROM tus_uploads WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                tx.commit().await.map_err(db_err)?;
                Ok(())
            }

            async fn open_uploads(&self, user_id: &str) -> Result<Vec<UploadRecord>> {
                sqlx::query(concat!(
                    "SELECT ",
                    upload_columns!(),
                    " FROM tus_uploads WHERE user_id = $1 AND package_id IS NULL"
                ))
                .bind(user_id)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?
                .iter()
                .map(Self::upload_from_row)
                .collect()
            }

            async fn expired_uploads(&self, now: DateTime<Utc>) -> Result<Vec<UploadRecord>> {
                sqlx::query(concat!(
                    "SELECT ",
                    upload_columns!(),
                    " FROM tus_uploads WHERE package_id IS NULL AND expires_at < $1 \
                     AND (lock_token IS NULL OR locked_until < $1) LIMIT 1000"
                ))
                .bind(now)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?
                .iter()
                .map(Self::upload_from_row)
                .collect()
            }
        }

        #[async_trait]
        impl Outbox for $name {
            async fn claim_due(&self, now: DateTime<Utc>, lease: Duration, limit: u32) -> Result<Vec<OutboxEntry>> {
                let rows = sqlx::query($sql.claim_outbox)
                    .bind(now)
                    .bind(now + chrono_lease(lease)?)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
                let mut claimed = rows
                    .iter()
                    .map(|row| {
                        let seq: i64 = row.try_get("seq").map_err(db_err)?;
                        Ok((seq, Self::outbox_entry_from_row(row)?))
                    })
                    .collect::<Result<Vec<_>>>()?;
                // RETURNING gives no order; publish oldest first.
                claimed.sort_by_key(|(seq, _)| *seq);
                Ok(claimed.into_iter().map(|(_, m)| m).collect())
            }

            async fn mark_sent(&self, id: Uuid, at: DateTime<Utc>) -> Result<()> {
                sqlx::query("UPDATE outbox SET sent_at = $2, lease_until = NULL, last_error = NULL WHERE id = $1")
                    .bind(id)
                    .bind(at)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn mark_failed(&self, id: Uuid, error: &str, next_attempt_at: DateTime<Utc>) -> Result<()> {
                sqlx::query(
                    "UPDATE outbox SET last_error = $2, next_attempt_at = $3, lease_until = NULL \
                     WHERE id = $1 AND sent_at IS NULL",
                )
                .bind(id)
                .bind(error)
                .bind(next_attempt_at)
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
                Ok(())
            }

            async fn prune_sent(&self, before: DateTime<Utc>) -> Result<u64> {
                Ok(sqlx::query("DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1")
                    .bind(before)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?
                    .rows_affected())
            }

            async fn list(&self, pending_only: bool, limit: u32) -> Result<Vec<OutboxEntry>> {
                let rows = sqlx::query(
                    "SELECT id, event_type, aggregate_id, payload, created_at, attempts, last_error, \
                     next_attempt_at, sent_at FROM outbox \
                     WHERE (sent_at IS NULL OR $1 = 0) ORDER BY seq DESC LIMIT $2",
                )
                .bind(i32::from(pending_only))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                rows.iter().map(Self::outbox_entry_from_row).collect()
            }
        }

        impl $name {
            /// Fetches stored nodes, in chunks, on any executor (the pool or a transaction).
            async fn fetch_nodes(
                conn: &mut <$db as sqlx::Database>::Connection,
                ids: &[NodeId],
            ) -> Result<std::collections::HashMap<NodeId, Hash>> {
                let mut found = std::collections::HashMap::with_capacity(ids.len());
                for chunk in ids.chunks(CHUNK) {
                    let mut sql = sqlx::QueryBuilder::<$db>::new("SELECT level, idx, hash FROM ledger_nodes WHERE ");
                    let mut first = true;
                    for id in chunk {
                        if !first {
                            sql.push(" OR ");
                        }
                        first = false;
                        sql.push("(level = ")
                            .push_bind(i16::from(id.level))
                            .push(" AND idx = ")
                            .push_bind(to_i64(id.index, "node index")?)
                            .push(")");
                    }
                    for row in sql.build().fetch_all(&mut *conn).await.map_err(db_err)? {
                        let level: i16 = row.try_get("level").map_err(db_err)?;
                        let idx: i64 = row.try_get("idx").map_err(db_err)?;
                        let hash: Vec<u8> = row.try_get("hash").map_err(db_err)?;
                        found.insert(node_key(level, idx)?, fixed(hash, "node hash")?);
                    }
                }
                Ok(found)
            }

            fn checkpoint_from_row(row: &<$db as sqlx::Database>::Row) -> Result<StoredCheckpoint> {
                let size: i64 = row.try_get("size").map_err(db_err)?;
                Ok(StoredCheckpoint {
                    size: u64::try_from(size).map_err(|_| corrupt("checkpoint size"))?,
                    root: fixed(row.try_get("root").map_err(db_err)?, "checkpoint root")?,
                    note: row.try_get("note").map_err(db_err)?,
                })
            }
        }

        #[async_trait]
        impl ConsentLedger for $name {
            async fn append_batch(
                &self,
                entries: &[NewLedgerEntry],
                signer: &dyn CheckpointSigner,
            ) -> Result<AppendedBatch> {
                if entries.is_empty() {
                    return Err(PortError::Conflict("an empty batch".into()));
                }
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                // Taking the head row's write lock first is the sequencer: concurrent appends,
                // from this process or another, queue here until this transaction ends.
                let old_size: i64 = sqlx::query("UPDATE ledger_head SET size = size RETURNING size")
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_err)?
                    .try_get(0)
                    .map_err(db_err)?;
                let old_size = u64::try_from(old_size).map_err(|_| corrupt("ledger size"))?;

                let plan = merkle::root_plan(old_size);
                let stored = Self::fetch_nodes(&mut *tx, &plan).await?;
                let hashes = plan
                    .iter()
                    .map(|id| {
                        stored
                            .get(id)
                            .copied()
                            .ok_or_else(|| integrity(format!("tree node {id:?} is missing")))
                    })
                    .collect::<Result<Vec<Hash>>>()?;
                let frontier_hashes = hashes.clone();
                let mut frontier =
                    Frontier::from_parts(old_size, hashes).map_err(|e| integrity(format!("stored tree: {e}")))?;

                // Never sign a tree that does not extend the last signed one.
                let last = sqlx::query("SELECT size, root, note FROM ledger_checkpoints ORDER BY size DESC LIMIT 1")
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err)?
                    .map(|row| Self::checkpoint_from_row(&row))
                    .transpose()?;
                match last {
                    None if old_size == 0 => {}
                    None => return Err(integrity("the log has entries but no signed checkpoint")),
                    Some(cp) => {
                        let (size, root) = signer
                            .open(&cp.note)
                            .map_err(|e| integrity(format!("the last checkpoint does not verify: {e}")))?;
                        if size != old_size || root != frontier.root() {
                            return Err(integrity(format!(
                                "the stored tree of size {old_size} does not match the last signed checkpoint \
                                 (size {size}); refusing to sign"
                            )));
                        }
                    }
                }

                let mut new_nodes = Vec::with_capacity(entries.len() * 2);
                let mut stored_entries = Vec::with_capacity(entries.len());
                for (offset, e) in entries.iter().enumerate() {
                    let index = old_size + offset as u64;
                    new_nodes.extend(
                        frontier
                            .push(e.leaf_hash)
                            .map_err(|e| integrity(format!("tree: {e}")))?,
                    );
                    stored_entries.push(LedgerEntry {
                        index,
                        id: e.id,
                        user_id: e.user_id.clone(),
                        consent_id: e.consent_id,
                        event_type: e.event_type.clone(),
                        record: e.record.clone(),
                        salt: e.salt,
                        leaf_hash: e.leaf_hash,
                        recorded_at: e.recorded_at,
                    });
                }
                for chunk in stored_entries.chunks(CHUNK) {
                    let mut sql =
                        sqlx::QueryBuilder::<$db>::new("INSERT INTO consent_ledger (idx, id, leaf_hash, recorded_at) ");
                    sql.push_values(chunk, |mut row, e| {
                        row.push_bind(e.index as i64)
                            .push_bind(e.id)
                            .push_bind(e.leaf_hash.to_vec())
                            .push_bind(e.recorded_at);
                    });
                    sql.build()
                        .persistent(false)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    let mut sql = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO consent_records (id, idx, user_id, consent_id, event_type, record, salt) ",
                    );
                    sql.push_values(chunk, |mut row, e| {
                        row.push_bind(e.id)
                            .push_bind(e.index as i64)
                            .push_bind(e.user_id.clone())
                            .push_bind(e.consent_id)
                            .push_bind(e.event_type.clone())
                            .push_bind(Json(e.record.clone()))
                            .push_bind(e.salt.to_vec());
                    });
                    sql.build()
                        .persistent(false)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                }
                for chunk in new_nodes.chunks(CHUNK) {
                    // Unnamed statements: batch sizes vary, and caching one prepared statement per
                    // size would only fill the cache.
                    let mut sql = sqlx::QueryBuilder::<$db>::new("INSERT INTO ledger_nodes (level, idx, hash) ");
                    sql.push_values(chunk, |mut row, (id, hash)| {
                        row.push_bind(i16::from(id.level))
                            .push_bind(id.index as i64)
                            .push_bind(hash.to_vec());
                    });
                    sql.build()
                        .persistent(false)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                }

                let new_size = frontier.size();
                let root = frontier.root();
                let note = signer
                    .sign(new_size, &root)
                    .map_err(|e| PortError::generic("checkpoint signer", e))?;
                sqlx::query("INSERT INTO ledger_checkpoints (size, root, note, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(to_i64(new_size, "ledger size")?)
                    .bind(root.to_vec())
                    .bind(&note)
                    .bind(Utc::now())
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                sqlx::query("UPDATE ledger_head SET size = $1")
                    .bind(to_i64(new_size, "ledger size")?)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;

                // Inclusion proofs against the new checkpoint. Every sibling of a leaf appended
                // here is either a complete subtree of the old tree's frontier or a node this
                // batch completed, so the proofs need no further reads; anything else would be
                // fetched below.
                let mut known: std::collections::HashMap<NodeId, Hash> = new_nodes.iter().copied().collect();
                known.extend(plan.iter().copied().zip(frontier_hashes.iter().copied()));
                let batch = merkle::InclusionBatch::plan(stored_entries.iter().map(|e| e.index), new_size)
                    .map_err(|e| integrity(format!("proof plan: {e}")))?;
                let missing = batch.missing(&known);
                if !missing.is_empty() {
                    known.extend(Self::fetch_nodes(&mut *tx, &missing).await?);
                }
                let proofs = batch
                    .assemble(&known)
                    .map_err(|e| integrity(format!("proof: {e}")))?;
                tx.commit().await.map_err(db_err)?;
                Ok(AppendedBatch {
                    entries: stored_entries,
                    proofs,
                    checkpoint: StoredCheckpoint {
                        size: new_size,
                        root,
                        note,
                    },
                })
            }

            async fn entries_for_user(&self, user_id: &str) -> Result<Vec<LedgerEntry>> {
                sqlx::query(concat!(ledger_select!(), " WHERE r.user_id = $1 ORDER BY r.idx"))
                    .bind(user_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?
                    .iter()
                    .map(Self::ledger_from_row)
                    .collect()
            }

            async fn nodes(&self, ids: &[(u8, u64)]) -> Result<Vec<Option<Hash>>> {
                let ids: Vec<NodeId> = ids
                    .iter()
                    .map(|&(level, index)| NodeId { level, index })
                    .collect();
                let mut conn = self.pool.acquire().await.map_err(db_err)?;
                let found = Self::fetch_nodes(&mut conn, &ids).await?;
                Ok(ids.iter().map(|id| found.get(id).copied()).collect())
            }

            async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>> {
                sqlx::query("SELECT size, root, note FROM ledger_checkpoints ORDER BY size DESC LIMIT 1")
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?
                    .map(|row| Self::checkpoint_from_row(&row))
                    .transpose()
            }

            async fn checkpoint_at(&self, size: u64) -> Result<Option<StoredCheckpoint>> {
                sqlx::query("SELECT size, root, note FROM ledger_checkpoints WHERE size = $1")
                    .bind(to_i64(size, "size")?)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?
                    .map(|row| Self::checkpoint_from_row(&row))
                    .transpose()
            }

            async fn checkpoints(&self, from_size: u64, limit: u32) -> Result<Vec<StoredCheckpoint>> {
                sqlx::query("SELECT size, root, note FROM ledger_checkpoints WHERE size >= $1 ORDER BY size LIMIT $2")
                    .bind(to_i64(from_size, "size")?)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?
                    .iter()
                    .map(Self::checkpoint_from_row)
                    .collect()
            }

            async fn audit_rows(&self, from_index: u64, limit: u32) -> Result<Vec<AuditRow>> {
                // Range scans on each table's own index, merged here: far cheaper than a
                // four-way join per row, and a row moved between tables still shows up as a
                // mismatch in the audit.
                let mut conn = self.pool.acquire().await.map_err(db_err)?;
                let leaves = sqlx::query("SELECT idx, id, leaf_hash FROM consent_ledger WHERE idx >= $1 ORDER BY idx LIMIT $2")
                    .bind(to_i64(from_index, "index")?)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(db_err)?;
                let (Some(first), Some(last)) = (leaves.first(), leaves.last()) else {
                    return Ok(Vec::new());
                };
                let lo: i64 = first.try_get("idx").map_err(db_err)?;
                let hi: i64 = last.try_get("idx").map_err(db_err)?;

                let mut tree_leaves = std::collections::HashMap::with_capacity(leaves.len());
                for row in sqlx::query("SELECT idx, hash FROM ledger_nodes WHERE level = 0 AND idx >= $1 AND idx <= $2")
                    .bind(lo)
                    .bind(hi)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(db_err)?
                {
                    let idx: i64 = row.try_get("idx").map_err(db_err)?;
                    tree_leaves.insert(idx, fixed::<32>(row.try_get("hash").map_err(db_err)?, "tree leaf")?);
                }
                let mut bodies = std::collections::HashMap::with_capacity(leaves.len());
                // The body as text: the audit parses it on all cores, straight into the record.
                for row in sqlx::query("SELECT id, CAST(record AS TEXT) AS record, salt FROM consent_records WHERE idx >= $1 AND idx <= $2")
                    .bind(lo)
                    .bind(hi)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(db_err)?
                {
                    let id: Uuid = row.try_get("id").map_err(db_err)?;
                    let record: String = row.try_get("record").map_err(db_err)?;
                    bodies.insert(id, (record, fixed::<16>(row.try_get("salt").map_err(db_err)?, "salt")?));
                }
                let mut redacted = std::collections::HashSet::new();
                for row in sqlx::query(
                    "SELECT x.entry_id FROM ledger_redactions x JOIN consent_ledger l ON l.id = x.entry_id \
                     WHERE l.idx >= $1 AND l.idx <= $2",
                )
                .bind(lo)
                .bind(hi)
                .fetch_all(&mut *conn)
                .await
                .map_err(db_err)?
                {
                    redacted.insert(row.try_get::<Uuid, _>("entry_id").map_err(db_err)?);
                }
                leaves
                    .iter()
                    .map(|row| {
                        let idx: i64 = row.try_get("idx").map_err(db_err)?;
                        let id: Uuid = row.try_get("id").map_err(db_err)?;
                        Ok(AuditRow {
                            index: u64::try_from(idx).map_err(|_| corrupt("ledger index"))?,
                            leaf_hash: fixed(row.try_get("leaf_hash").map_err(db_err)?, "leaf hash")?,
                            tree_leaf: tree_leaves.get(&idx).copied(),
                            body: bodies.remove(&id),
                            redacted: redacted.contains(&id),
                        })
                    })
                    .collect()
            }

            async fn redact_user(&self, user_id: &str) -> Result<u64> {
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                // The redaction goes on record first: the trigger lets a body go only then.
                sqlx::query(
                    "INSERT INTO ledger_redactions (entry_id, redacted_at) \
                     SELECT id, $2 FROM consent_records WHERE user_id = $1 \
                     AND id NOT IN (SELECT entry_id FROM ledger_redactions)",
                )
                .bind(user_id)
                .bind(Utc::now())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                // Only what is on record as redacted: an entry appended since the INSERT above
                // (another snapshot under READ COMMITTED) stays for the next erasure.
                let removed = sqlx::query(
                    "DELETE FROM consent_records WHERE user_id = $1 \
                     AND id IN (SELECT entry_id FROM ledger_redactions)",
                )
                .bind(user_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?
                    .rows_affected();
                tx.commit().await.map_err(db_err)?;
                Ok(removed)
            }

            async fn size(&self) -> Result<u64> {
                let size: i64 = sqlx::query("SELECT size FROM ledger_head")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_err)?
                    .try_get(0)
                    .map_err(db_err)?;
                u64::try_from(size).map_err(|_| corrupt("ledger size"))
            }
        }
    };
}

sql_store!(PgStore, sqlx::Postgres, sqlx::PgPool, PG_SQL);
sql_store!(SqliteStore, sqlx::Sqlite, sqlx::SqlitePool, SQLITE_SQL);
