//! Operator endpoints (scope `udim:admin`).

use axum::extract::State;
use serde::{Deserialize, Serialize};
use udim_ports::metadata::OutboxEntry;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::extract::{Caller, Json, Query};
use super::problem::{ApiError, ProblemCode};
use crate::auth::Scope;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OutboxQuery {
    /// Only events not yet delivered (default true).
    pub pending: Option<bool>,
    /// At most this many, newest first: 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// An outbox event and its delivery state.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutboxEvent {
    pub id: Uuid,
    pub event_type: String,
    pub aggregate_id: Uuid,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub next_attempt_at: chrono::DateTime<chrono::Utc>,
    pub sent_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<OutboxEntry> for OutboxEvent {
    fn from(e: OutboxEntry) -> Self {
        Self {
            id: e.message.id,
            event_type: e.message.event_type,
            aggregate_id: e.message.aggregate_id,
            payload: e.message.payload,
            created_at: e.message.created_at,
            attempts: e.attempts,
            last_error: e.last_error,
            next_attempt_at: e.next_attempt_at,
            sent_at: e.sent_at,
        }
    }
}

/// Events in the outbox: where notifications wait when no queue is configured (the
/// embedded default) or while the queue is unreachable.
#[utoipa::path(
    get,
    path = "/v1/admin/outbox",
    operation_id = "list_outbox_events",
    tag = "admin",
    params(OutboxQuery),
    responses(
        (status = 200, body = Vec<OutboxEvent>),
        (status = 401, body = super::problem::Problem),
        (status = 403, body = super::problem::Problem),
    ),
    security(("bearer" = []))
)]
pub async fn outbox(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<OutboxQuery>,
) -> Result<Json<Vec<OutboxEvent>>, ApiError> {
    caller.require(Scope::Admin)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(ProblemCode::InvalidQuery, "`limit` must be 1-1000"));
    }
    let entries = state.outbox.list(q.pending.unwrap_or(true), limit).await?;
    Ok(Json(entries.into_iter().map(OutboxEvent::from).collect()))
}
