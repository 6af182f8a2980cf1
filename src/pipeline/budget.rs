//! The memory budget for upload buffers, shared by every upload of the process.
//!
//! A storage writer holds what it was given until its part is uploaded (object_store buffers
//! a whole part, 16 MiB and more, and keeps a few in flight), so without a bound a crowd of
//! uploads that each send a few MiB and stall holds that many parts in memory. Here every
//! writer reserves, before it is created, the most it may hold: its object's size when that
//! is known and smaller, else what its provider buffers at most
//! ([`BlobStore::buffer_bound`]), plus a fixed amount for the upload's own buffers (a segment
//! being sealed, the sniffing prefix), and gives it back when it finishes or is dropped.
//!
//! A reservation is taken whole, once, before the writer holds anything: a writer never
//! waits for more while it holds a share, so uploads cannot each hold a share and wait on
//! one another for ever (waiters are served in order, the first gathering what is freed).
//! An upload that would pass the budget waits, and while it waits its body is not read (the
//! socket applies back-pressure to the client); if it waits longer than `wait`, it fails as
//! unavailable (503, retry later).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use udim_ports::storage::{BlobStore, BlobWriter, ByteStream};
use udim_ports::{PortError, Result};

/// The budget is counted in KiB, so a semaphore's permits can count any sensible size.
const UNIT: u64 = 1024;

/// Reserved by every writer besides its own buffers: the upload's buffers.
pub const PER_UPLOAD: u64 = 128 * 1024;

#[derive(Debug)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    wait: Duration,
}

impl MemoryBudget {
    /// A budget of `bytes`; a reservation waits at most `wait`.
    pub fn new(bytes: u64, wait: Duration) -> Self {
        let units = u32::try_from(bytes / UNIT).unwrap_or(u32::MAX);
        Self {
            permits: Arc::new(Semaphore::new(units as usize)),
            wait,
        }
    }

    /// Bytes of the budget not reserved now.
    pub fn available(&self) -> u64 {
        self.permits.available_permits() as u64 * UNIT
    }

    /// Reserves `bytes` whole, waiting for them at most `wait`.
    async fn reserve(&self, bytes: u64) -> Result<OwnedSemaphorePermit> {
        let units = u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX);
        tokio::time::timeout(self.wait, self.permits.clone().acquire_many_owned(units))
            .await
            .map_err(|_| {
                metrics::counter!(crate::ops::metrics::UPLOAD_BUFFER_WAITS_EXPIRED).increment(1);
                PortError::unavailable(
                    "upload buffers",
                    format!("the server's upload buffers stayed full for {} s", self.wait.as_secs()),
                )
            })
            .map(|acquired| acquired.expect("the budget's semaphore is never closed"))
    }
}

/// What a writer created with `size_hint` reserves.
fn reservation(blobs: &dyn BlobStore, size_hint: Option<u64>) -> u64 {
    let bound = blobs.buffer_bound(size_hint);
    size_hint
        .map_or(bound, |size| size.min(bound))
        .saturating_add(PER_UPLOAD)
}

/// A store whose writers stay within a shared [`MemoryBudget`].
#[derive(Debug)]
pub struct BudgetedBlobs {
    inner: Arc<dyn BlobStore>,
    budget: Arc<MemoryBudget>,
}

impl BudgetedBlobs {
    /// Refuses a budget too small for the writer of the largest object the service takes
    /// (`largest` bytes, as stored): such an upload could never be admitted.
    pub fn new(inner: Arc<dyn BlobStore>, budget: MemoryBudget, largest: u64) -> anyhow::Result<Self> {
        let needed = reservation(inner.as_ref(), Some(largest));
        let bytes = budget.available();
        anyhow::ensure!(
            bytes >= needed,
            "`limits.upload_buffer_bytes` ({bytes} bytes) is smaller than what one upload of the \
             largest size `upload.max_bytes` allows may buffer ({needed} bytes): raise it, or \
             lower the storage part size"
        );
        Ok(Self {
            inner,
            budget: Arc::new(budget),
        })
    }
}

#[async_trait]
impl BlobStore for BudgetedBlobs {
    async fn create(&self, key: &str, size_hint: Option<u64>) -> Result<Box<dyn BlobWriter>> {
        let held = self.budget.reserve(reservation(self.inner.as_ref(), size_hint)).await?;
        Ok(Box::new(BudgetedWriter {
            inner: self.inner.create(key, size_hint).await?,
            _held: held,
        }))
    }

    async fn get(&self, key: &str) -> Result<ByteStream> {
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<ByteStream> {
        self.inner.get_range(key, range).await
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        self.inner.exists(key).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }

    fn uri(&self, key: &str) -> String {
        self.inner.uri(key)
    }

    fn buffer_bound(&self, size_hint: Option<u64>) -> u64 {
        self.inner.buffer_bound(size_hint)
    }
}

/// A writer and its reservation, given back when the writer finishes or is dropped.
struct BudgetedWriter {
    inner: Box<dyn BlobWriter>,
    _held: OwnedSemaphorePermit,
}

#[async_trait]
impl BlobWriter for BudgetedWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.inner.write(data).await
    }

    async fn finish(self: Box<Self>) -> Result<u64> {
        self.inner.finish().await
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store whose writers may hold up to 1 MiB, as object_store's hold a few parts.
    #[derive(Debug)]
    struct Holding;

    struct HoldingWriter;

    const BOUND: u64 = 1 << 20;

    #[async_trait]
    impl BlobWriter for HoldingWriter {
        async fn write(&mut self, _data: Bytes) -> Result<()> {
            Ok(())
        }
        async fn finish(self: Box<Self>) -> Result<u64> {
            Ok(0)
        }
        async fn abort(self: Box<Self>) -> Result<()> {
            Ok(())
        }
    }

    #[async_trait]
    impl BlobStore for Holding {
        async fn create(&self, _key: &str, _size_hint: Option<u64>) -> Result<Box<dyn BlobWriter>> {
            Ok(Box::new(HoldingWriter))
        }
        async fn get(&self, key: &str) -> Result<ByteStream> {
            Err(PortError::NotFound(key.into()))
        }
        async fn get_range(&self, key: &str, _range: std::ops::Range<u64>) -> Result<ByteStream> {
            Err(PortError::NotFound(key.into()))
        }
        async fn exists(&self, _key: &str) -> Result<bool> {
            Ok(false)
        }
        async fn delete(&self, _key: &str) -> Result<()> {
            Ok(())
        }
        fn uri(&self, key: &str) -> String {
            key.into()
        }
        fn buffer_bound(&self, _size_hint: Option<u64>) -> u64 {
            BOUND
        }
    }

    fn store(budget: u64, wait: Duration) -> BudgetedBlobs {
        BudgetedBlobs::new(Arc::new(Holding), MemoryBudget::new(budget, wait), 1 << 30).unwrap()
    }

    #[tokio::test]
    async fn a_writer_reserves_its_size_up_to_its_bound_at_creation_and_gives_it_back() {
        let blobs = store(8 << 20, Duration::from_millis(200));
        let available = || blobs.budget.available();
        let unsized_writer = blobs.create("a", None).await.unwrap();
        assert_eq!(
            available(),
            (8 << 20) - BOUND - PER_UPLOAD,
            "the bound when no size is known"
        );
        let small = blobs.create("b", Some(300 * 1024)).await.unwrap();
        assert_eq!(
            available(),
            (8 << 20) - BOUND - 300 * 1024 - 2 * PER_UPLOAD,
            "a small object's size"
        );
        let large = blobs.create("c", Some(1 << 30)).await.unwrap();
        assert_eq!(
            available(),
            (8 << 20) - 2 * BOUND - 300 * 1024 - 3 * PER_UPLOAD,
            "never past the bound"
        );
        unsized_writer.finish().await.unwrap();
        small.abort().await.unwrap();
        drop(large);
        assert_eq!(
            available(),
            8 << 20,
            "finished, aborted and dropped writers give it back"
        );
    }

    #[tokio::test]
    async fn past_the_budget_a_writer_waits_and_gives_up_after_the_wait() {
        let budget = BOUND + PER_UPLOAD + (BOUND + PER_UPLOAD) / 2;
        let blobs = store(budget, Duration::from_millis(200));
        let first = blobs.create("a", None).await.unwrap();
        let Err(refused) = blobs.create("b", None).await else {
            panic!("no room for a second writer")
        };
        assert!(matches!(refused, PortError::Unavailable { .. }), "{refused:?}");
        drop(first);

        // Patient enough that a stalled test thread cannot make it give up.
        let blobs = Arc::new(store(budget, Duration::from_secs(30)));
        let first = blobs.create("a", None).await.unwrap();
        let waiting = tokio::spawn({
            let blobs = blobs.clone();
            async move { blobs.create("b", None).await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "it waits while the budget is taken");
        first.finish().await.unwrap();
        waiting.await.unwrap().expect("room once the first writer is done");
        assert_eq!(
            blobs.budget.available(),
            budget,
            "a refused or finished wait holds nothing"
        );
    }

    #[test]
    fn a_budget_smaller_than_one_upload_of_the_largest_size_is_refused() {
        let refused = BudgetedBlobs::new(
            Arc::new(Holding),
            MemoryBudget::new(BOUND, Duration::from_secs(1)),
            1 << 30,
        )
        .unwrap_err();
        assert!(refused.to_string().contains("limits.upload_buffer_bytes"), "{refused}");
        BudgetedBlobs::new(
            Arc::new(Holding),
            MemoryBudget::new(BOUND + PER_UPLOAD, Duration::from_secs(1)),
            1 << 30,
        )
        .expect("room for one");
    }
}
