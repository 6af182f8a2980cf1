//! Notification queue: how the downstream pipeline learns about packages.

use async_trait::async_trait;

use crate::Result;
use crate::metadata::OutboxMessage;

/// Publishes outbox messages to a broker.
///
/// # Contract
/// - `publish` returns `Ok` only after the broker has durably accepted the message
///   (publisher confirm, `SendMessage` response, ...). Anything else is an error and the
///   outbox relay will try again later, so delivery is at least once; consumers deduplicate
///   by the event id, which is also the message id.
/// - The message body is `message.payload` unchanged; `event_type` and `id` are carried as
///   message metadata where the broker has any.
/// - A broker that cannot be reached gives [`crate::PortError::Unavailable`]; the notifier
///   reconnects by itself on a later call.
#[async_trait]
pub trait Notifier: Send + Sync + std::fmt::Debug {
    async fn publish(&self, message: &OutboxMessage) -> Result<()>;
    /// Checks that the broker is reachable now (for readiness probes).
    async fn ping(&self) -> Result<()>;
}
