//! Object storage: where encrypted package objects live.
//!
//! The one implementation, [`ObjectStoreBlobs`], runs on any `object_store` backend (local
//! filesystem, S3, GCS, Azure Blob); provider crates only build the backend from settings.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::WriteMultipart;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::{PortError, Result};

/// A stream of object bytes.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// Streams bytes into one new object.
///
/// # Contract
/// Nothing is visible under the key until [`BlobWriter::finish`] returns `Ok`; after
/// [`BlobWriter::abort`] (or a writer dropped without `finish`) nothing is visible and the
/// provider holds no parts that it will not clean up. A failed `write` or `finish` is
/// [`PortError::Unavailable`] (the object was not stored; the whole write may be retried).
#[async_trait]
pub trait BlobWriter: Send {
    /// Appends bytes. May apply back-pressure by waiting for earlier parts to upload.
    async fn write(&mut self, data: Bytes) -> Result<()>;
    /// Completes the object; returns the number of bytes written.
    async fn finish(self: Box<Self>) -> Result<u64>;
    /// Abandons the object and removes any uploaded parts.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// Object storage port.
///
/// # Contract
/// - Keys are `/`-separated relative paths made of `[A-Za-z0-9._-]` segments.
/// - [`create`](BlobStore::create) streams an object in bounded memory (never the whole
///   object), in parts when it is large.
/// - [`get`](BlobStore::get) of a missing key is [`PortError::NotFound`];
///   [`get_range`](BlobStore::get_range) streams exactly the bytes asked for.
/// - [`delete`](BlobStore::delete) is idempotent: deleting a missing key succeeds.
#[async_trait]
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// `size_hint`, when the object's size is known in advance, lets the provider pick a part
    /// size that keeps a huge object within its part-count limit.
    async fn create(&self, key: &str, size_hint: Option<u64>) -> Result<Box<dyn BlobWriter>>;
    async fn get(&self, key: &str) -> Result<ByteStream>;
    /// Bytes `range` of the object; `range` must lie within it.
    async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<ByteStream>;
    async fn exists(&self, key: &str) -> Result<bool>;
    async fn delete(&self, key: &str) -> Result<()>;
    /// The URI recorded as a package's storage URI (e.g. `file:///…`, `s3://bucket/…`).
    fn uri(&self, key: &str) -> String;
    /// The most bytes a writer created with `size_hint` may hold in memory at once of what it
    /// was given (a part being filled and the parts in flight), so the service can budget
    /// upload buffers before it creates one.
    fn buffer_bound(&self, size_hint: Option<u64>) -> u64;
}

/// [`BlobStore`] over any `object_store` backend.
#[derive(Debug, Clone)]
pub struct ObjectStoreBlobs {
    store: Arc<dyn ObjectStore>,
    provider: &'static str,
    uri_prefix: String,
    part_size: usize,
}

impl ObjectStoreBlobs {
    /// `uri_prefix` is prepended to keys to form storage URIs; `part_size` is the multipart
    /// part size (S3 needs at least 5 MiB for every part but the last).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        provider: &'static str,
        uri_prefix: impl Into<String>,
        part_size: usize,
    ) -> Self {
        Self {
            store,
            provider,
            uri_prefix: uri_prefix.into(),
            part_size,
        }
    }

    fn path(&self, key: &str) -> Result<Path> {
        Path::parse(key).map_err(|e| PortError::generic(self.provider, e))
    }

    /// The part size for an object of about `size_hint` bytes: the configured one, or larger
    /// so the object fits in S3's 10,000 parts (with slack for the envelope's overhead),
    /// never over S3's 5 GiB part limit. Memory per writer grows with it.
    fn part_size_for(&self, size_hint: Option<u64>) -> usize {
        const PARTS: u64 = 9_900;
        const MAX_PART: u64 = 5 * 1024 * 1024 * 1024;
        let needed = size_hint.map_or(0, |n| n.div_ceil(PARTS)).min(MAX_PART);
        (self.part_size as u64).max(needed) as usize
    }

    fn map(&self, key: &str, e: object_store::Error) -> PortError {
        map_object_store_error(self.provider, key, e)
    }
}

/// Whether a store's failure comes from a filesystem that is full or read-only (a disk that
/// filled up, a volume remounted read-only after an error): conditions an operator mends,
/// after which the same request succeeds, so they are worth a retry rather than a 500.
fn storage_refuses_writes_for_now(e: &object_store::Error) -> bool {
    use std::io::ErrorKind as K;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && matches!(io.kind(), K::StorageFull | K::ReadOnlyFilesystem | K::QuotaExceeded)
        {
            return true;
        }
        source = error.source();
    }
    false
}

fn map_object_store_error(provider: &'static str, key: &str, e: object_store::Error) -> PortError {
    use object_store::Error as E;
    if storage_refuses_writes_for_now(&e) {
        return PortError::unavailable(provider, format!("{key}: {e}"));
    }
    match e {
        E::NotFound { .. } => PortError::NotFound(key.to_owned()),
        E::AlreadyExists { .. } => PortError::AlreadyExists(key.to_owned()),
        E::Precondition { .. } | E::NotModified { .. } => PortError::Conflict(key.to_owned()),
        E::NotSupported { .. } | E::NotImplemented { .. } => PortError::Unsupported(format!("{provider}: {e}")),
        other => PortError::generic(provider, other),
    }
}

/// A failed part upload or completion means the object was not stored: even `NotFound`
/// (the upload vanished under a retried completion) is the store's fault, not a missing item
/// of the caller's, so the caller may retry the whole write. Refused credentials or
/// permissions are a misconfiguration that a retry will not mend.
fn write_error(provider: &'static str, key: &str, e: object_store::Error) -> PortError {
    use object_store::Error as E;
    if storage_refuses_writes_for_now(&e) {
        return PortError::unavailable(provider, format!("writing {key} failed: {e}"));
    }
    match e {
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => PortError::generic(provider, e),
        E::NotSupported { .. } | E::NotImplemented { .. } => PortError::Unsupported(format!("{provider}: {e}")),
        other => PortError::unavailable(provider, format!("writing {key} failed: {other}")),
    }
}

/// Parts uploading at once besides the one being filled (see `write`).
const PARTS_IN_FLIGHT: usize = 2;

struct MultipartWriter {
    inner: WriteMultipart,
    provider: &'static str,
    key: String,
    written: u64,
}

#[async_trait]
impl BlobWriter for MultipartWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        // Bounds memory: at most two parts in flight besides the one being filled.
        self.inner
            .wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(|e| write_error(self.provider, &self.key, e))?;
        self.written += data.len() as u64;
        self.inner.put(data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<u64> {
        let this = *self;
        this.inner
            .finish()
            .await
            .map_err(|e| write_error(this.provider, &this.key, e))?;
        Ok(this.written)
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        let this = *self;
        this.inner
            .abort()
            .await
            .map_err(|e| map_object_store_error(this.provider, &this.key, e))
    }
}

#[async_trait]
impl BlobStore for ObjectStoreBlobs {
    async fn create(&self, key: &str, size_hint: Option<u64>) -> Result<Box<dyn BlobWriter>> {
        let path = self.path(key)?;
        let upload = self.store.put_multipart(&path).await.map_err(|e| self.map(key, e))?;
        let part_size = self.part_size_for(size_hint);
        Ok(Box::new(MultipartWriter {
            inner: WriteMultipart::new_with_chunk_size(upload, part_size),
            provider: self.provider,
            key: key.to_owned(),
            written: 0,
        }))
    }

    async fn get(&self, key: &str) -> Result<ByteStream> {
        let path = self.path(key)?;
        let result = self.store.get(&path).await.map_err(|e| self.map(key, e))?;
        let provider = self.provider;
        let key = key.to_owned();
        Ok(result
            .into_stream()
            .map_err(move |e| map_object_store_error(provider, &key, e))
            .boxed())
    }

    async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<ByteStream> {
        let path = self.path(key)?;
        let options = object_store::GetOptions::new().with_range(Some(range));
        let result = self
            .store
            .get_opts(&path, options)
            .await
            .map_err(|e| self.map(key, e))?;
        let provider = self.provider;
        let key = key.to_owned();
        Ok(result
            .into_stream()
            .map_err(move |e| map_object_store_error(provider, &key, e))
            .boxed())
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        let path = self.path(key)?;
        match self.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.map(key, e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.map(key, e)),
        }
    }

    fn uri(&self, key: &str) -> String {
        format!("{}/{}", self.uri_prefix.trim_end_matches('/'), key)
    }

    fn buffer_bound(&self, size_hint: Option<u64>) -> u64 {
        ((PARTS_IN_FLIGHT + 1) * self.part_size_for(size_hint)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_or_read_only_filesystem_is_unavailable_and_other_failures_are_not() {
        let failure = |kind: std::io::ErrorKind| object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(std::io::Error::from(kind)),
        };
        for kind in [std::io::ErrorKind::StorageFull, std::io::ErrorKind::ReadOnlyFilesystem] {
            assert!(matches!(
                write_error("fs", "k", failure(kind)),
                PortError::Unavailable { .. }
            ));
            assert!(matches!(
                map_object_store_error("fs", "k", failure(kind)),
                PortError::Unavailable { .. }
            ));
        }
        let other = map_object_store_error("fs", "k", failure(std::io::ErrorKind::InvalidData));
        assert!(!matches!(other, PortError::Unavailable { .. }), "{other:?}");
    }

    #[test]
    fn parts_grow_so_five_tebibytes_fit_in_ten_thousand() {
        let blobs = ObjectStoreBlobs::new(
            Arc::new(object_store::memory::InMemory::new()),
            "memory",
            "memory://",
            16 << 20,
        );
        assert_eq!(blobs.part_size_for(None), 16 << 20);
        assert_eq!(blobs.part_size_for(Some(1 << 30)), 16 << 20);
        let five_tib: u64 = 5 << 40;
        let part = blobs.part_size_for(Some(five_tib)) as u64;
        assert!(five_tib.div_ceil(part) <= 10_000 && part <= 5 << 30, "{part}");
    }

    #[test]
    fn a_failed_write_is_the_store_being_unavailable_even_when_it_says_not_found() {
        let vanished = object_store::Error::NotFound {
            path: "packages/x".into(),
            source: "NoSuchUpload".into(),
        };
        assert!(write_error("s3", "packages/x", vanished).is_transient());
        let denied = object_store::Error::PermissionDenied {
            path: "packages/x".into(),
            source: "AccessDenied".into(),
        };
        assert!(
            !write_error("s3", "packages/x", denied).is_transient(),
            "a retry will not help"
        );
        assert!(matches!(
            write_error(
                "s3",
                "packages/x",
                object_store::Error::NotSupported {
                    source: "no multipart here".into()
                }
            ),
            PortError::Unsupported(_)
        ));
    }
}
