//! The upload store: resumable (tus) uploads, their leases and their stored chunks.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use udim_ports::metadata::{NewUpload, UploadChunk, UploadRecord, UploadStore};
use udim_ports::{PortError, Result};
use uuid::Uuid;

use super::SqlStore;
use super::rows::{ChunkRow, UploadRow, convert, to_i64, upload_columns};
use crate::engine::{after_erasure, db_err, on_pool};

#[async_trait]
impl UploadStore for SqlStore {
    async fn create_upload(&self, u: &NewUpload) -> Result<()> {
        let length = to_i64(u.length, "length")?;
        on_pool!(&self.pool, |pool| {
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
            .bind(length)
            .bind(&u.key_id)
            .bind(u.wrapped_key.as_slice())
            .bind(u.created_at)
            .bind(u.expires_at)
            .execute(pool)
            .await
            .map(|_| ())
        })
        .map_err(db_err)?;
        Ok(())
    }

    async fn get_upload(&self, user_id: &str, id: Uuid) -> Result<Option<UploadRecord>> {
        let row: Option<UploadRow> = on_pool!(&self.pool, |pool| {
            sqlx::query_as(concat!(
                "SELECT ",
                upload_columns!(),
                " FROM tus_uploads WHERE id = $1 AND user_id = $2"
            ))
            .bind(id)
            .bind(user_id)
            .fetch_optional(pool)
            .await
        })
        .map_err(db_err)?;
        row.map(UploadRecord::try_from).transpose()
    }

    async fn lock_upload(
        &self,
        user_id: &str,
        id: Uuid,
        token: Uuid,
        until: DateTime<Utc>,
    ) -> Result<Option<UploadRecord>> {
        let row: Option<UploadRow> = on_pool!(&self.pool, |pool| {
            sqlx::query_as(concat!(
                "UPDATE tus_uploads SET lock_token = $3, locked_until = $4 \
                 WHERE id = $1 AND user_id = $2 AND (lock_token IS NULL OR locked_until < $5) RETURNING ",
                upload_columns!()
            ))
            .bind(id)
            .bind(user_id)
            .bind(token)
            .bind(until)
            .bind(Utc::now())
            .fetch_optional(pool)
            .await
        })
        .map_err(db_err)?;
        row.map(UploadRecord::try_from).transpose()
    }

    async fn unlock_upload(&self, id: Uuid, token: Uuid) -> Result<()> {
        on_pool!(&self.pool, |pool| {
            sqlx::query(
                "UPDATE tus_uploads SET lock_token = NULL, locked_until = NULL WHERE id = $1 AND lock_token = $2",
            )
            .bind(id)
            .bind(token)
            .execute(pool)
            .await
            .map(|_| ())
        })
        .map_err(db_err)?;
        Ok(())
    }

    async fn renew_lease(&self, id: Uuid, token: Uuid, until: DateTime<Utc>) -> Result<bool> {
        let renewed = on_pool!(&self.pool, |pool| {
            sqlx::query("UPDATE tus_uploads SET locked_until = $3 WHERE id = $1 AND lock_token = $2")
                .bind(id)
                .bind(token)
                .bind(until)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(db_err)?;
        Ok(renewed == 1)
    }

    async fn append_chunk(&self, id: Uuid, token: Uuid, chunk: &UploadChunk, expires_at: DateTime<Utc>) -> Result<()> {
        let offset = to_i64(chunk.offset, "offset")?;
        let length = to_i64(chunk.length, "length")?;
        on_pool!(&self.pool, |pool| {
            let mut tx = pool.begin().await.map_err(db_err)?;
            let updated = sqlx::query(
                "UPDATE tus_uploads SET upload_offset = upload_offset + $3, expires_at = $4, lock_token = NULL, \
                 locked_until = NULL WHERE id = $1 AND lock_token = $2 AND upload_offset = $5",
            )
            .bind(id)
            .bind(token)
            .bind(length)
            .bind(expires_at)
            .bind(offset)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
            if updated == 0 {
                return Err(PortError::Conflict(format!("upload {id} moved on or lost its lock")));
            }
            sqlx::query("INSERT INTO tus_chunks (upload_id, chunk_offset, length, object_key) VALUES ($1, $2, $3, $4)")
                .bind(id)
                .bind(offset)
                .bind(length)
                .bind(&chunk.object_key)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
        });
        Ok(())
    }

    async fn upload_chunks(&self, id: Uuid) -> Result<Vec<UploadChunk>> {
        let rows: Vec<ChunkRow> = on_pool!(&self.pool, |pool| {
            sqlx::query_as(
                "SELECT chunk_offset, length, object_key FROM tus_chunks WHERE upload_id = $1 ORDER BY chunk_offset",
            )
            .bind(id)
            .fetch_all(pool)
            .await
        })
        .map_err(db_err)?;
        convert(rows)
    }

    async fn complete_upload(&self, id: Uuid, package_id: Uuid) -> Result<Vec<String>> {
        let keys: Vec<(String,)> = on_pool!(&self.pool, |pool| {
            let mut tx = pool.begin().await.map_err(db_err)?;
            let updated = sqlx::query(
                "UPDATE tus_uploads SET package_id = $2, lock_token = NULL, locked_until = NULL \
                 WHERE id = $1 AND (package_id IS NULL OR package_id = $2)",
            )
            .bind(id)
            .bind(package_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
            if updated == 0 {
                return Err(PortError::Conflict(format!(
                    "upload {id} is gone or became another package"
                )));
            }
            let keys = sqlx::query_as("DELETE FROM tus_chunks WHERE upload_id = $1 RETURNING object_key")
                .bind(id)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            keys
        });
        Ok(keys.into_iter().map(|(key,)| key).collect())
    }

    async fn unfinished_complete(&self, now: DateTime<Utc>) -> Result<Vec<UploadRecord>> {
        let rows: Vec<UploadRow> = on_pool!(&self.pool, |pool| {
            sqlx::query_as(concat!(
                "SELECT ",
                upload_columns!(),
                " FROM tus_uploads WHERE package_id IS NULL AND upload_offset = length \
                 AND (lock_token IS NULL OR locked_until < $1) LIMIT 100"
            ))
            .bind(now)
            .fetch_all(pool)
            .await
        })
        .map_err(db_err)?;
        convert(rows)
    }

    async fn delete_upload(&self, id: Uuid) -> Result<Vec<String>> {
        let keys: Vec<(String,)> = on_pool!(&self.pool, |pool| {
            let mut tx = pool.begin().await.map_err(db_err)?;
            // The upload row first: deleting it waits for a concurrent append's row lock, so
            // the chunk delete below (a later statement, a later snapshot) sees that chunk.
            sqlx::query("DELETE FROM tus_uploads WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            let keys = sqlx::query_as("DELETE FROM tus_chunks WHERE upload_id = $1 RETURNING object_key")
                .bind(id)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            keys
        });
        // The row held the upload's own wrapped chunk key.
        after_erasure(&self.pool).await;
        Ok(keys.into_iter().map(|(key,)| key).collect())
    }

    async fn open_uploads(&self, user_id: &str) -> Result<Vec<UploadRecord>> {
        let rows: Vec<UploadRow> = on_pool!(&self.pool, |pool| {
            sqlx::query_as(concat!(
                "SELECT ",
                upload_columns!(),
                " FROM tus_uploads WHERE user_id = $1 AND package_id IS NULL"
            ))
            .bind(user_id)
            .fetch_all(pool)
            .await
        })
        .map_err(db_err)?;
        convert(rows)
    }

    async fn expired_uploads(&self, now: DateTime<Utc>) -> Result<Vec<UploadRecord>> {
        let rows: Vec<UploadRow> = on_pool!(&self.pool, |pool| {
            sqlx::query_as(concat!(
                "SELECT ",
                upload_columns!(),
                " FROM tus_uploads WHERE package_id IS NULL AND expires_at < $1 \
                 AND (lock_token IS NULL OR locked_until < $1) LIMIT 1000"
            ))
            .bind(now)
            .fetch_all(pool)
            .await
        })
        .map_err(db_err)?;
        convert(rows)
    }
}
