//! A real object store with faults the test switches on and off: the one failing-store
//! wrapper every test shares. Each fault answers as the port's contract says a failing store
//! does: `Unavailable`, so the service treats it as passing, never as a refusal.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use udim_ports::storage::{BlobStore, BlobWriter, ByteStream};
use udim_ports::{PortError, Result};

/// The switches; clone it to keep a handle while the store is in the service.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// A writer fails once it has been given more than this many bytes (`u64::MAX`: never).
    write_limit: Arc<AtomicU64>,
    refuse_deletes: Arc<AtomicBool>,
    /// Reads of keys under `uploads/` (a resumable upload's chunks) fail.
    refuse_chunk_reads: Arc<AtomicBool>,
    /// ... and say so as an unclassified (`Generic`) error, as some providers do for a
    /// network failure, instead of `Unavailable`.
    unclassified: Arc<AtomicBool>,
}

impl Faults {
    pub fn new() -> Self {
        Self {
            write_limit: Arc::new(AtomicU64::new(u64::MAX)),
            ..Self::default()
        }
    }

    pub fn fail_writes_after(&self, bytes: u64) {
        self.write_limit.store(bytes, Ordering::SeqCst);
    }

    pub fn refuse_deletes(&self, on: bool) {
        self.refuse_deletes.store(on, Ordering::SeqCst);
    }

    pub fn refuse_chunk_reads(&self, on: bool) {
        self.refuse_chunk_reads.store(on, Ordering::SeqCst);
    }

    pub fn unclassified_errors(&self, on: bool) {
        self.unclassified.store(on, Ordering::SeqCst);
    }
}

fn injected(what: &str) -> PortError {
    PortError::unavailable("faulty storage", format!("injected {what} failure"))
}

/// The filesystem store under `root`, with `faults`.
#[derive(Debug)]
pub struct FaultyStore {
    inner: udim_local::fs::FsBlobs,
    faults: Faults,
}

impl FaultyStore {
    pub fn on(root: &std::path::Path, faults: &Faults) -> Arc<Self> {
        Arc::new(Self {
            inner: udim_local::fs::build(root).expect("a filesystem store"),
            faults: faults.clone(),
        })
    }
}

struct Writer {
    inner: Box<dyn BlobWriter>,
    written: u64,
    limit: Arc<AtomicU64>,
}

#[async_trait]
impl BlobWriter for Writer {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.written += data.len() as u64;
        if self.written > self.limit.load(Ordering::SeqCst) {
            return Err(injected("write"));
        }
        self.inner.write(data).await
    }
    async fn finish(self: Box<Self>) -> Result<u64> {
        self.inner.finish().await
    }
    async fn abort(self: Box<Self>) -> Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl BlobStore for FaultyStore {
    async fn create(&self, key: &str, size_hint: Option<u64>) -> Result<Box<dyn BlobWriter>> {
        Ok(Box::new(Writer {
            inner: self.inner.create(key, size_hint).await?,
            written: 0,
            limit: self.faults.write_limit.clone(),
        }))
    }
    async fn get(&self, key: &str) -> Result<ByteStream> {
        if key.starts_with("uploads/") && self.faults.refuse_chunk_reads.load(Ordering::SeqCst) {
            if self.faults.unclassified.load(Ordering::SeqCst) {
                return Err(PortError::generic(
                    "faulty storage",
                    "injected unclassified chunk read failure",
                ));
            }
            return Err(injected("chunk read"));
        }
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<ByteStream> {
        self.inner.get_range(key, range).await
    }
    async fn exists(&self, key: &str) -> Result<bool> {
        self.inner.exists(key).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        if self.faults.refuse_deletes.load(Ordering::SeqCst) {
            return Err(injected("delete"));
        }
        self.inner.delete(key).await
    }
    fn uri(&self, key: &str) -> String {
        self.inner.uri(key)
    }
}
