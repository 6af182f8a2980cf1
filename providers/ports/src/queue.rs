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
/// - `publish_batch` pushes one result per message onto `results`, in order, each as soon as
///   it is known, with the same meaning as `publish`'s: a caller that stops waiting keeps the
///   results known by then (and only those messages were confirmed). Fewer results than
///   messages means the rest were not attempted (the broker was failing). A message's own
///   failure does not stop the others: a batch holds at most one message per package, so none
///   can overtake an earlier one of its own package. Brokers with a batch call override it to
///   save round trips.
#[async_trait]
pub trait Notifier: Send + Sync + std::fmt::Debug {
    async fn publish(&self, message: &OutboxMessage) -> Result<()>;

    /// Publishes `messages` in order, stopping at the first transient failure.
    async fn publish_batch(&self, messages: &[&OutboxMessage], results: &mut Vec<Result<()>>) {
        for message in messages {
            let result = self.publish(message).await;
            let broker_failing = result.as_ref().is_err_and(crate::PortError::is_transient);
            results.push(result);
            if broker_failing {
                break;
            }
        }
    }

    /// Checks that the broker is reachable now (for readiness probes).
    async fn ping(&self) -> Result<()>;
}
