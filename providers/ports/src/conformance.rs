//! Conformance suites: the behaviour every provider of a port must show, written once and
//! called from each provider's tests (local filesystem, S3, GCS, ...). Each function panics
//! with a message naming the broken rule.

use bytes::Bytes;
use futures::TryStreamExt;
use uuid::Uuid;

use crate::PortError;
use crate::kms::{KeyContext, KeyService};
use crate::metadata::OutboxMessage;
use crate::queue::Notifier;
use crate::storage::BlobStore;

async fn read_all(store: &dyn BlobStore, key: &str) -> Vec<u8> {
    let chunks: Vec<Bytes> = store.get(key).await.expect("get").try_collect().await.expect("read");
    chunks.concat()
}

/// Object storage: streamed multipart writes, invisibility until finished, ranges, abort,
/// idempotent delete, `NotFound`. `object_size` should exceed the provider's part size.
pub async fn blob_store(store: &dyn BlobStore, object_size: usize) {
    let prefix = format!("conformance/{}", Uuid::new_v4().simple());
    let key = format!("{prefix}/object");
    let data: Vec<u8> = (0..object_size).map(|i| (i % 251) as u8).collect();

    let mut writer = store.create(&key, Some(object_size as u64)).await.expect("create");
    for piece in data.chunks(1024 * 1024 + 7) {
        writer.write(Bytes::copy_from_slice(piece)).await.expect("write");
    }
    assert!(
        !store.exists(&key).await.unwrap(),
        "an unfinished object must not be visible"
    );
    assert_eq!(
        writer.finish().await.expect("finish"),
        data.len() as u64,
        "finish reports the size"
    );
    assert!(store.exists(&key).await.unwrap(), "a finished object is visible");
    assert!(
        read_all(store, &key).await == data,
        "the object reads back byte for byte"
    );

    let aborted = format!("{prefix}/aborted");
    let mut writer = store.create(&aborted, None).await.expect("create");
    writer.write(Bytes::from(vec![1u8; 1024])).await.expect("write");
    writer.abort().await.expect("abort");
    assert!(
        !store.exists(&aborted).await.unwrap(),
        "an aborted object must not exist"
    );

    store.delete(&key).await.expect("delete");
    assert!(!store.exists(&key).await.unwrap(), "a deleted object is gone");
    store.delete(&key).await.expect("deleting a missing object succeeds");
    assert!(
        matches!(store.get(&key).await, Err(PortError::NotFound(_))),
        "get of a missing key is NotFound"
    );
    assert!(store.uri(&key).ends_with(&key), "the URI names the key");
}

/// Key management: fresh keys, context binding, tamper detection, unknown key ids.
pub async fn key_service(kms: &dyn KeyService) {
    let ctx = KeyContext {
        package_id: Uuid::new_v4(),
        user_id: "alice".into(),
    };
    let a = kms.generate_data_key(&ctx).await.expect("generate");
    let b = kms.generate_data_key(&ctx).await.expect("generate");
    assert_ne!(
        a.plaintext.as_bytes(),
        b.plaintext.as_bytes(),
        "data keys must be fresh"
    );
    assert_eq!(
        a.key_id,
        kms.current_key_id(),
        "new keys are wrapped under the current key"
    );

    let unwrapped = kms.unwrap_data_key(&a.key_id, &a.wrapped, &ctx).await.expect("unwrap");
    assert_eq!(
        unwrapped.as_bytes(),
        a.plaintext.as_bytes(),
        "unwrap returns the data key"
    );

    let other_package = KeyContext {
        package_id: Uuid::new_v4(),
        ..ctx.clone()
    };
    let other_user = KeyContext {
        user_id: "mallory".into(),
        ..ctx.clone()
    };
    for wrong in [other_package, other_user] {
        assert!(
            matches!(
                kms.unwrap_data_key(&a.key_id, &a.wrapped, &wrong).await,
                Err(PortError::Integrity(_))
            ),
            "a different context must not unwrap"
        );
    }
    let mut tampered = a.wrapped.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(
        matches!(
            kms.unwrap_data_key(&a.key_id, &tampered, &ctx).await,
            Err(PortError::Integrity(_))
        ),
        "a modified wrapped key must not unwrap"
    );
    assert!(
        kms.unwrap_data_key("no-such-key", &a.wrapped, &ctx).await.is_err(),
        "an unknown key id must not unwrap"
    );
}

/// Notifier: a published message arrives with its body, and the message id is the event id.
/// `receive` returns the next message's (message id, body) from the provider's queue.
pub async fn notifier<F>(notifier: &dyn Notifier, receive: F)
where
    F: AsyncFnOnce() -> Option<(String, serde_json::Value)>,
{
    notifier.ping().await.expect("the broker is reachable");
    let message = OutboxMessage {
        id: Uuid::new_v4(),
        event_type: "package.stored".into(),
        aggregate_id: Uuid::new_v4(),
        payload: serde_json::json!({"conformance": true, "n": 42}),
        created_at: chrono::Utc::now(),
    };
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
        .map(|n| OutboxMessage {
            id: Uuid::new_v4(),
            event_type: "package.stored".into(),
            aggregate_id: Uuid::new_v4(),
            payload: serde_json::json!({"conformance": "batch", "n": n}),
            created_at: chrono::Utc::now(),
        })
        .collect();
    let refs: Vec<&OutboxMessage> = messages.iter().collect();
    let results = notifier.publish_batch(&refs).await;
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
