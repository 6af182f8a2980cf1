//! The object-storage suite ([`BlobStore`]).

use bytes::Bytes;
use futures::TryStreamExt;
use uuid::Uuid;

use crate::PortError;
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
