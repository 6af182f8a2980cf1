//! The notification-queue suites ([`Notifier`]).

use super::message;
use crate::metadata::OutboxMessage;
use crate::queue::Notifier;

/// Notifier: a published message arrives with its body, and the message id is the event id.
/// `receive` returns the next message's (message id, body) from the provider's queue.
pub async fn notifier<F>(notifier: &dyn Notifier, receive: F)
where
    F: AsyncFnOnce() -> Option<(String, serde_json::Value)>,
{
    notifier.ping().await.expect("the broker is reachable");
    let message = message(serde_json::json!({"conformance": true, "n": 42}));
    notifier.publish(&message).await.expect("publish");
    let (id, body) = receive().await.expect("the message arrives");
    assert_eq!(id, message.id.to_string(), "the message id is the event id");
    assert_eq!(body, message.payload, "the body is the payload unchanged");
}

/// Notifier batches: 23 messages in one `publish_batch` all succeed and all arrive, each
/// with its own body. `receive` returns the next message's (message id, body), or `None`
/// once nothing more arrives.
pub async fn notifier_batch<F>(notifier: &dyn Notifier, mut receive: F)
where
    F: AsyncFnMut() -> Option<(String, serde_json::Value)>,
{
    let messages: Vec<OutboxMessage> = (0..23)
        .map(|n| message(serde_json::json!({"conformance": "batch", "n": n})))
        .collect();
    let refs: Vec<&OutboxMessage> = messages.iter().collect();
    let mut results = Vec::new();
    notifier.publish_batch(&refs, &mut results).await;
    assert_eq!(results.len(), messages.len(), "one result per message");
    for (n, result) in results.iter().enumerate() {
        assert!(result.is_ok(), "message {n} of the batch failed: {result:?}");
    }
    let mut expected: std::collections::HashMap<String, serde_json::Value> =
        messages.iter().map(|m| (m.id.to_string(), m.payload.clone())).collect();
    while !expected.is_empty() {
        let Some((id, body)) = receive().await else {
            panic!("{} of the batch's messages never arrived", expected.len());
        };
        let Some(sent) = expected.remove(&id) else {
            panic!("message {id} arrived twice or was never sent");
        };
        assert_eq!(body, sent, "message {id} arrived with another message's body");
    }
}
