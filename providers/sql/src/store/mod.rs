//! The ports on SQL, one file per port; [`rows`] maps rows to the ports' types, and
//! `crate::engine` holds what differs between the engines.

mod ledger;
mod outbox;
mod packages;
mod rows;
mod uploads;

use sqlx::types::Json;
use udim_ports::Result;
use udim_ports::metadata::OutboxMessage;

use crate::engine::Pool;

/// Metadata, uploads, outbox and ledger on one connection pool, on either engine.
#[derive(Debug, Clone)]
pub(crate) struct SqlStore {
    pub(crate) pool: Pool,
}

/// Rows per multi-row INSERT or lookup: far below SQLite's 32,766 bound variables.
const CHUNK: usize = 200;

/// The statement that puts `event` into the outbox, to run within the caller's
/// transaction: an event is written only together with the state change it announces.
fn insert_event<'q, DB>(event: &'q OutboxMessage) -> Result<sqlx::query::Query<'q, DB, DB::Arguments<'q>>>
where
    DB: sqlx::Database,
    uuid::Uuid: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i32: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Json<&'q serde_json::Value>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    chrono::DateTime<chrono::Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let schema_version = i32::try_from(event.schema_version)
        .map_err(|_| udim_ports::PortError::Conflict("schema version out of range".into()))?;
    Ok(sqlx::query(
        "INSERT INTO outbox (id, event_type, schema_version, aggregate_id, payload, created_at, next_attempt_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(event.id)
    .bind(event.event_type.as_str())
    .bind(schema_version)
    .bind(event.aggregate_id)
    .bind(Json(&event.payload))
    .bind(event.created_at))
}
