//! The package store: package rows, their status changes and the reads log.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use udim_ports::metadata::{
    Erasure, NewPackage, OutboxMessage, PackageQuery, PackageRead, PackageRecord, PackageStore, StoredObject,
};
use udim_ports::{PortError, Result};
use uuid::Uuid;

use super::rows::{PackageRow, convert, package_columns, to_i64};
use super::{SqlStore, insert_event};
use crate::engine::{after_erasure, db_err, on_pool};

fn not_receiving(id: Uuid) -> PortError {
    PortError::Conflict(format!("package {id} is not being received"))
}

/// Inside the transaction `$tx` that stores or quarantines `$user`'s package `$id`: refuses
/// (`Conflict`) a package an erasure of everything has fenced off since it was created.
macro_rules! erasure_fence {
    ($pool:expr, $tx:ident, $user:expr, $id:expr) => {{
        let current: Option<(bool,)> = sqlx::query_as($pool.dialect().erasure_fence)
            .bind($user)
            .bind($id)
            .fetch_optional(&mut *$tx)
            .await
            .map_err(db_err)?;
        fenced($id, current)?;
    }};
}

#[async_trait]
impl PackageStore for SqlStore {
    async fn ensure_user(&self, user_id: &str) -> Result<()> {
        on_pool!(&self.pool, |pool| {
            sqlx::query("INSERT INTO users (id, created_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
                .bind(user_id)
                .bind(Utc::now())
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(db_err)?;
        Ok(())
    }

    async fn create_package(&self, p: &NewPackage) -> Result<()> {
        on_pool!(&self.pool, |pool| {
            sqlx::query(
                "INSERT INTO packages (id, user_id, consent_entry_id, data_category, original_name, \
                 declared_content_type, status, staging_key, metadata, created_at, updated_at, idempotency_key, \
                 erasure_epoch) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'receiving', $7, $8, $9, $9, $10, \
                 COALESCE((SELECT erasure_epoch FROM users WHERE id = $2), 0))",
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
            .execute(pool)
            .await
            .map(|_| ())
        })
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
        let size = to_i64(object.size_bytes, "size")?;
        let row = on_pool!(&self.pool, |pool| {
            let mut tx = pool.begin().await.map_err(db_err)?;
            let row: PackageRow = sqlx::query_as(concat!(
                "UPDATE packages SET status = 'stored', object_key = $3, storage_uri = $4, \
                 size_bytes = $5, sha256 = $6, encryption_key_id = $7, wrapped_key = $8, \
                 updated_at = $9, scan_status = $10, scan_detail = $11, sniffed_content_type = $12 \
                 WHERE id = $1 AND user_id = $2 AND status IN ('receiving', 'scanning') RETURNING ",
                package_columns!()
            ))
            .bind(id)
            .bind(user_id)
            .bind(&object.object_key)
            .bind(&object.storage_uri)
            .bind(size)
            .bind(object.sha256.as_slice())
            .bind(&object.encryption_key_id)
            .bind(object.wrapped_key.as_slice())
            .bind(object.stored_at)
            .bind(object.scan_status.as_str())
            .bind(&object.scan_detail)
            .bind(&object.sniffed_content_type)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?
            .ok_or_else(|| not_receiving(id))?;
            // Checked before the commit: a row that cannot be read back rolls it all back.
            let record = PackageRecord::try_from(row)?;
            erasure_fence!(self.pool, tx, user_id, id);
            insert_event(event)?.execute(&mut *tx).await.map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            record
        });
        Ok(row)
    }

    async fn discard(&self, user_id: &str, id: Uuid) -> Result<()> {
        let deleted = on_pool!(&self.pool, |pool| {
            sqlx::query("DELETE FROM packages WHERE id = $1 AND user_id = $2 AND status IN ('receiving', 'scanning')")
                .bind(id)
                .bind(user_id)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(db_err)?;
        if deleted == 0 && self.get_package(user_id, id).await?.is_some() {
            return Err(PortError::Conflict(format!("package {id} is past receiving")));
        }
        Ok(())
    }

    async fn mark_scanning(&self, user_id: &str, id: Uuid) -> Result<()> {
        let updated = on_pool!(&self.pool, |pool| {
            sqlx::query(
                "UPDATE packages SET status = 'scanning', updated_at = $3 \
                 WHERE id = $1 AND user_id = $2 AND status = 'receiving'",
            )
            .bind(id)
            .bind(user_id)
            .bind(Utc::now())
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })
        .map_err(db_err)?;
        if updated == 0 {
            return Err(not_receiving(id));
        }
        Ok(())
    }

    async fn still_receiving(&self, user_id: &str, id: Uuid) -> Result<()> {
        on_pool!(&self.pool, |pool| {
            sqlx::query("UPDATE packages SET updated_at = $3 WHERE id = $1 AND user_id = $2 AND status = 'receiving'")
                .bind(id)
                .bind(user_id)
                .bind(Utc::now())
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(db_err)?;
        Ok(())
    }

    async fn mark_quarantined(&self, user_id: &str, id: Uuid, signature: &str, event: &OutboxMessage) -> Result<()> {
        on_pool!(&self.pool, |pool| {
            let mut tx = pool.begin().await.map_err(db_err)?;
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
                return Err(not_receiving(id));
            }
            erasure_fence!(self.pool, tx, user_id, id);
            insert_event(event)?.execute(&mut *tx).await.map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
        });
        Ok(())
    }

    async fn get_package(&self, user_id: &str, id: Uuid) -> Result<Option<PackageRecord>> {
        let row: Option<PackageRow> = on_pool!(&self.pool, |pool| {
            sqlx::query_as(concat!(
                "SELECT ",
                package_columns!(),
                " FROM packages WHERE id = $1 AND user_id = $2"
            ))
            .bind(id)
            .bind(user_id)
            .fetch_optional(pool)
            .await
        })
        .map_err(db_err)?;
        row.map(PackageRecord::try_from).transpose()
    }

    async fn get_stored(&self, id: Uuid) -> Result<Option<PackageRecord>> {
        let row: Option<PackageRow> = on_pool!(&self.pool, |pool| {
            sqlx::query_as(concat!(
                "SELECT ",
                package_columns!(),
                " FROM packages WHERE id = $1 AND status = 'stored'"
            ))
            .bind(id)
            .fetch_optional(pool)
            .await
        })
        .map_err(db_err)?;
        row.map(PackageRecord::try_from).transpose()
    }

    async fn find_by_idempotency_key(&self, user_id: &str, key: &str) -> Result<Option<PackageRecord>> {
        let row: Option<PackageRow> = on_pool!(&self.pool, |pool| {
            sqlx::query_as(concat!(
                "SELECT ",
                package_columns!(),
                " FROM packages WHERE user_id = $1 AND idempotency_key = $2"
            ))
            .bind(user_id)
            .bind(key)
            .fetch_optional(pool)
            .await
        })
        .map_err(db_err)?;
        row.map(PackageRecord::try_from).transpose()
    }

    async fn record_read(&self, read: &PackageRead) -> Result<()> {
        let (start, end) = match read.range {
            Some((start, end)) => (Some(to_i64(start, "range")?), Some(to_i64(end, "range")?)),
            None => (None, None),
        };
        on_pool!(&self.pool, |pool| {
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
            .execute(pool)
            .await
            .map(|_| ())
        })
        .map_err(db_err)?;
        Ok(())
    }

    async fn list_packages(&self, user_id: &str, q: &PackageQuery) -> Result<Vec<PackageRecord>> {
        let rows: Vec<PackageRow> = on_pool!(&self.pool, |pool| {
            let mut sql = sqlx::QueryBuilder::new(concat!(
                "SELECT ",
                package_columns!(),
                " FROM packages WHERE user_id = "
            ));
            sql.push_bind(user_id);
            if let Some(status) = q.status {
                sql.push(" AND status = ").push_bind(status.as_str());
            }
            if let Some(category) = &q.data_category {
                sql.push(" AND data_category = ").push_bind(category.as_str());
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
            sql.build_query_as().fetch_all(pool).await
        })
        .map_err(db_err)?;
        convert(rows)
    }

    async fn mark_deleted(&self, user_id: &str, id: Uuid, event: &OutboxMessage) -> Result<Erasure> {
        let object_key = on_pool!(&self.pool, |pool| {
            let mut tx = pool.begin().await.map_err(db_err)?;
            // The status guard makes concurrent erasures (a user and the retention sweep)
            // race safely: one erases and announces, the other finds it done.
            // The object key stays until the object is confirmed gone: the cleanup path.
            let erased: Option<(Option<String>,)> = sqlx::query_as(
                "UPDATE packages SET status = 'deleted', original_name = '', declared_content_type = '', \
                 sniffed_content_type = NULL, storage_uri = NULL, sha256 = NULL, encryption_key_id = NULL, \
                 wrapped_key = NULL, scan_detail = NULL, metadata = '{}', idempotency_key = NULL, updated_at = $3, \
                 erasure_claimed_until = $4 \
                 WHERE id = $1 AND user_id = $2 AND status IN ('stored', 'quarantined') RETURNING object_key",
            )
            .bind(id)
            .bind(user_id)
            .bind(Utc::now())
            .bind(Utc::now() + claim_length()?)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
            let Some((object_key,)) = erased else {
                let status: Option<(String,)> =
                    sqlx::query_as("SELECT status FROM packages WHERE id = $1 AND user_id = $2")
                        .bind(id)
                        .bind(user_id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err)?;
                return match status.as_ref().map(|(s,)| s.as_str()) {
                    None => Err(PortError::NotFound(format!("package {id}"))),
                    Some("deleted") => Ok(Erasure::AlreadyDeleted),
                    Some(other) => Err(PortError::Conflict(format!("package {id} is {other}, not stored"))),
                };
            };
            // The resumable upload the package came from holds its name, metadata and a
            // wrapped key of its own.
            // A resumable upload's package has the upload's id; the upload may not be linked
            // yet if a crash came between storing and linking.
            sqlx::query(
                "DELETE FROM tus_chunks WHERE upload_id IN (SELECT id FROM tus_uploads WHERE package_id = $1 OR id = $1)",
            )
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            sqlx::query("DELETE FROM tus_uploads WHERE package_id = $1 OR id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            // Unsent events go, except one a relay is publishing right now: it stays, whole,
            // so this package's later events, `package.deleted` among them, still wait behind
            // it; the relay drops it if that publish fails, and if the relay dies it goes out
            // again as it was, still before `package.deleted`.
            sqlx::query(
                "DELETE FROM outbox WHERE aggregate_id = $1 AND sent_at IS NULL \
                 AND (lease_until IS NULL OR lease_until <= $2)",
            )
            .bind(id)
            .bind(Utc::now())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            sqlx::query(
                "UPDATE outbox SET payload = $2, last_error = NULL WHERE aggregate_id = $1 AND sent_at IS NOT NULL",
            )
            .bind(id)
            .bind(Json(serde_json::json!({"erased": true})))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            insert_event(event)?.execute(&mut *tx).await.map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            object_key
        });
        after_erasure(&self.pool).await;
        Ok(Erasure::Erased { object_key })
    }

    async fn expired_packages(
        &self,
        data_category: &str,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(String, Uuid)>> {
        on_pool!(&self.pool, |pool| {
            sqlx::query_as(
                "SELECT user_id, id FROM packages WHERE status IN ('stored', 'quarantined') \
                 AND data_category = $1 AND created_at < $2 ORDER BY created_at LIMIT $3",
            )
            .bind(data_category)
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })
        .map_err(db_err)
    }

    async fn deleted_objects(&self, limit: u32) -> Result<Vec<(Uuid, String)>> {
        on_pool!(&self.pool, |pool| {
            sqlx::query_as(
                "SELECT id, object_key FROM packages WHERE status = 'deleted' AND object_key IS NOT NULL \
                 ORDER BY updated_at LIMIT $1",
            )
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })
        .map_err(db_err)
    }

    async fn object_removed(&self, id: Uuid) -> Result<()> {
        on_pool!(&self.pool, |pool| {
            sqlx::query("UPDATE packages SET object_key = NULL WHERE id = $1 AND status = 'deleted'")
                .bind(id)
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(db_err)?;
        Ok(())
    }

    async fn fence_erasure(&self, user_id: &str) -> Result<()> {
        on_pool!(&self.pool, |pool| {
            sqlx::query("UPDATE users SET erasure_epoch = erasure_epoch + 1 WHERE id = $1")
                .bind(user_id)
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(db_err)
    }

    async fn claim_unrecorded_erasures(
        &self,
        user_id: Option<&str>,
        id: Option<Uuid>,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(String, Uuid)>> {
        let until = now + claim_length()?;
        // The outer condition is checked again on each row as it is updated, so of two
        // concurrent claims only one takes a package.
        let unclaimed = "status = 'deleted' AND erasure_entry IS NULL \
                         AND (erasure_claimed_until IS NULL OR erasure_claimed_until <= $1)";
        let mut only = String::new();
        let mut next = 4;
        for (column, given) in [("user_id", user_id.is_some()), ("id", id.is_some())] {
            if given {
                only.push_str(&format!(" AND {column} = ${next}"));
                next += 1;
            }
        }
        let sql = format!(
            "UPDATE packages SET erasure_claimed_until = $2 WHERE {unclaimed} AND id IN \
             (SELECT id FROM packages WHERE {unclaimed}{only} ORDER BY updated_at LIMIT $3) \
             RETURNING user_id, id"
        );
        on_pool!(&self.pool, |pool| {
            let mut query = sqlx::query_as(&sql).bind(now).bind(until).bind(i64::from(limit));
            if let Some(user_id) = user_id {
                query = query.bind(user_id);
            }
            if let Some(id) = id {
                query = query.bind(id);
            }
            query.fetch_all(pool).await
        })
        .map_err(db_err)
    }

    async fn erasure_recorded(&self, ids: &[Uuid], entry: Uuid) -> Result<()> {
        self.for_each_deleted(
            ids,
            "UPDATE packages SET erasure_entry = $2, erasure_claimed_until = NULL \
             WHERE id = $1 AND status = 'deleted' AND erasure_entry IS NULL",
            Some(entry),
        )
        .await
    }

    async fn release_erasure_claims(&self, ids: &[Uuid]) -> Result<()> {
        self.for_each_deleted(
            ids,
            "UPDATE packages SET erasure_claimed_until = NULL WHERE id = $1 AND erasure_entry IS NULL",
            None,
        )
        .await
    }

    async fn stale_uploads(&self, before: DateTime<Utc>) -> Result<Vec<PackageRecord>> {
        let rows: Vec<PackageRow> = on_pool!(&self.pool, |pool| {
            sqlx::query_as(concat!(
                "SELECT ",
                package_columns!(),
                " FROM packages WHERE status IN ('receiving', 'scanning') AND updated_at < $1 \
                 ORDER BY updated_at LIMIT 1000"
            ))
            .bind(before)
            .fetch_all(pool)
            .await
        })
        .map_err(db_err)?;
        convert(rows)
    }

    async fn ping(&self) -> Result<()> {
        on_pool!(&self.pool, |pool| sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(|_| ()))
        .map_err(db_err)?;
        Ok(())
    }
}

/// The length of a claim on recording an erasure, as a database interval.
fn claim_length() -> Result<chrono::Duration> {
    chrono::Duration::from_std(udim_ports::metadata::ERASURE_RECORDING_CLAIM)
        .map_err(|e| PortError::generic("package store", e))
}

impl SqlStore {
    /// Runs `sql` once per id (`$1`, and `$2` = `entry` when given) in one transaction.
    async fn for_each_deleted(&self, ids: &[Uuid], sql: &str, entry: Option<Uuid>) -> Result<()> {
        on_pool!(&self.pool, |pool| {
            let mut tx = pool.begin().await.map_err(db_err)?;
            for id in ids {
                let mut query = sqlx::query(sql).bind(id);
                if let Some(entry) = entry {
                    query = query.bind(entry);
                }
                query.execute(&mut *tx).await.map_err(db_err)?;
            }
            tx.commit().await.map_err(db_err)
        })
    }
}

/// `Conflict` when an erasure of the owner's data began after the package was created (its
/// epoch is no longer the owner's): the package belonged to what was erased, and must not
/// appear after it.
fn fenced(id: Uuid, current: Option<(bool,)>) -> Result<()> {
    match current {
        Some((false,)) => Err(PortError::Conflict(format!(
            "package {id}: its owner's data was erased while it was being stored"
        ))),
        _ => Ok(()),
    }
}
