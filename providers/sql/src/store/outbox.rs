//! The transactional outbox: events written with the state changes they announce, leased
//! out to relays.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use udim_ports::metadata::{Outbox, OutboxEntry};
use udim_ports::{PortError, Result};
use uuid::Uuid;

use super::SqlStore;
use super::rows::{ClaimedRow, OutboxRow, convert, outbox_columns};
use crate::engine::{db_err, on_pool};

#[async_trait]
impl Outbox for SqlStore {
    async fn claim_due(&self, now: DateTime<Utc>, lease: Duration, limit: u32) -> Result<Vec<OutboxEntry>> {
        let lease = chrono::Duration::from_std(lease).map_err(|_| PortError::Conflict("lease too long".into()))?;
        let sql = self.pool.dialect().claim_outbox;
        let mut rows: Vec<ClaimedRow> = on_pool!(&self.pool, |pool| {
            sqlx::query_as(sql)
                .bind(now)
                .bind(now + lease)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        })
        .map_err(db_err)?;
        // RETURNING gives no order; publish oldest first.
        rows.sort_by_key(|claimed| claimed.seq);
        convert(rows.into_iter().map(|claimed| claimed.row).collect())
    }

    async fn mark_sent(&self, id: Uuid, at: DateTime<Utc>) -> Result<()> {
        on_pool!(&self.pool, |pool| {
            sqlx::query("UPDATE outbox SET sent_at = $2, lease_until = NULL, last_error = NULL WHERE id = $1")
                .bind(id)
                .bind(at)
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(db_err)?;
        Ok(())
    }

    async fn mark_failed(&self, claimed: &OutboxEntry, error: &str, next_attempt_at: DateTime<Utc>) -> Result<()> {
        self.end_claim(
            claimed,
            "UPDATE outbox SET last_error = $3, next_attempt_at = $4, lease_until = NULL \
             WHERE id = $1 AND attempts = $2 AND lease_until IS NOT NULL AND sent_at IS NULL",
            error,
            Some(next_attempt_at),
        )
        .await
    }

    async fn give_back(&self, claimed: &OutboxEntry, reason: &str) -> Result<()> {
        self.end_claim(
            claimed,
            "UPDATE outbox SET last_error = $3, lease_until = NULL, attempts = attempts - 1 \
             WHERE id = $1 AND attempts = $2 AND lease_until IS NOT NULL AND sent_at IS NULL",
            reason,
            None,
        )
        .await
    }

    async fn list(&self, pending_only: bool, limit: u32) -> Result<Vec<OutboxEntry>> {
        let rows: Vec<OutboxRow> = on_pool!(&self.pool, |pool| {
            sqlx::query_as(concat!(
                "SELECT ",
                outbox_columns!(),
                " FROM outbox WHERE (sent_at IS NULL OR $1 = 0) ORDER BY seq DESC LIMIT $2"
            ))
            .bind(i32::from(pending_only))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })
        .map_err(db_err)?;
        convert(rows)
    }

    async fn prune_sent(&self, before: DateTime<Utc>) -> Result<u64> {
        on_pool!(&self.pool, |pool| {
            sqlx::query("DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1")
                .bind(before)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(db_err)
    }
}

impl SqlStore {
    /// Ends a claim that did not end in a send with `update` (`$1` id, `$2` the attempts the
    /// claim counted, `$3` the error, `$4` the next attempt if any). The claim holds while the
    /// row is leased with the attempts it counted: a later claim counts one more, and a row
    /// given back is not leased. First drops the message if its package was erased while it
    /// was out (nobody needs it any more), never `package.deleted` itself: that one must get
    /// through.
    async fn end_claim(
        &self,
        claimed: &OutboxEntry,
        update: &'static str,
        error: &str,
        next_attempt_at: Option<DateTime<Utc>>,
    ) -> Result<()> {
        let attempts = i32::try_from(claimed.attempts).unwrap_or(i32::MAX);
        on_pool!(&self.pool, |pool| {
            let mut tx = pool.begin().await.map_err(db_err)?;
            sqlx::query(
                "DELETE FROM outbox WHERE id = $1 AND attempts = $2 AND lease_until IS NOT NULL \
                 AND sent_at IS NULL AND event_type <> 'package.deleted' \
                 AND aggregate_id IN (SELECT id FROM packages WHERE status = 'deleted')",
            )
            .bind(claimed.message.id)
            .bind(attempts)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            let mut query = sqlx::query(update).bind(claimed.message.id).bind(attempts).bind(error);
            if let Some(next) = next_attempt_at {
                query = query.bind(next);
            }
            query.execute(&mut *tx).await.map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
        });
        Ok(())
    }
}
