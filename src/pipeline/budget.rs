//! The memory budget for upload buffers, shared by every upload of the process.
//!
//! A storage writer holds what it was given until its part is uploaded (object_store buffers
//! a whole part, 16 MiB and more, and keeps a few in flight), so without a bound a crowd of
//! uploads that each send a few MiB and stall holds that many parts in memory. Here every
//! writer reserves what it may hold before it is handed bytes: its share grows with what it
//! was written, up to the most its provider buffers (`BlobWriter::buffer_bound`), plus a fixed
//! amount for the upload's own buffers (a segment being sealed, the sniffing prefix), and is
//! given back when the writer finishes or is dropped. An upload that would pass the budget
//! waits, and while it waits its body is not read (the socket applies back-pressure to the
//! client); if it waits longer than `wait`, it fails as unavailable (503, retry later).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use udim_ports::storage::{BlobStore, BlobWriter, ByteStream};
use udim_ports::{PortError, Result};

/// The budget is counted in KiB, so a semaphore's permits can count any sensible size.
const UNIT: u64 = 1024;

/// Reserved by every writer from its creation: the upload's own buffers besides the writer's.
pub const PER_UPLOAD: u64 = 128 * 1024;

#[derive(Debug)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    units: u32,
    wait: Duration,
}

impl MemoryBudget {
    /// A budget of `bytes` (at least one upload's fixed share); a reservation waits at most
    /// `wait`.
    pub fn new(bytes: u64, wait: Duration) -> Self {
        let units = u32::try_from(bytes.max(PER_UPLOAD) / UNIT).unwrap_or(u32::MAX);
        Self {
            permits: Arc::new(Semaphore::new(units as usize)),
            units,
            wait,
        }
    }

    /// Bytes of the budget not reserved now.
    pub fn available(&self) -> u64 {
        self.permits.available_permits() as u64 * UNIT
    }

    /// Reserves `units` more for `held`, waiting for them at most `wait`. A reservation larger
    /// than the whole budget is cut to the budget, so it waits for all of it rather than for
    /// ever.
    async fn reserve(&self, held: &mut Option<OwnedSemaphorePermit>, units: u32) -> Result<()> {
        let units = units.min(
            self.units
                .saturating_sub(held.as_ref().map_or(0, |p| p.num_permits() as u32)),
        );
        if units == 0 {
            return Ok(());
        }
        let acquired = tokio::time::timeout(self.wait, self.permits.clone().acquire_many_owned(units))
            .await
            .map_err(|_| {
                metrics::counter!(crate::ops::metrics::UPLOAD_BUFFER_WAITS_EXPIRED).increment(1);
                PortError::unavailable(
                    "upload buffers",
                    format!("the server's upload buffers stayed full for {} s", self.wait.as_secs()),
                )
            })?
            .expect("the budget's semaphore is never closed");
        match held {
            Some(permit) => permit.merge(acquired),
            None => *held = Some(acquired),
        }
        Ok(())
    }
}

fn units_for(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

/// A store whose writers stay within a shared [`MemoryBudget`].
#[derive(Debug)]
pub struct BudgetedBlobs {
    inner: Arc<dyn BlobStore>,
    budget: Arc<MemoryBudget>,
}

impl BudgetedBlobs {
    pub fn new(inner: Arc<dyn BlobStore>, budget: Arc<MemoryBudget>) -> Self {
        Self { inner, budget }
    }
}

#[async_trait]
impl BlobStore for BudgetedBlobs {
    async fn create(&self, key: &str, size_hint: Option<u64>) -> Result<Box<dyn BlobWriter>> {
        let mut held = None;
        self.budget.reserve(&mut held, units_for(PER_UPLOAD)).await?;
        let inner = self.inner.create(key, size_hint).await?;
        Ok(Box::new(BudgetedWriter {
            bound: inner.buffer_bound().saturating_add(PER_UPLOAD),
            inner,
            budget: self.budget.clone(),
            held,
            charged: PER_UPLOAD,
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
}

/// A writer that reserves, before each write, what the writer may hold after it: everything
/// written so far, up to its bound. What it cannot see (when a part's upload frees its
/// buffer) it does not guess: the reservation only grows, and is given back whole at the end.
struct BudgetedWriter {
    inner: Box<dyn BlobWriter>,
    budget: Arc<MemoryBudget>,
    held: Option<OwnedSemaphorePermit>,
    /// Bytes reserved so far (the fixed share included).
    charged: u64,
    bound: u64,
}

#[async_trait]
impl BlobWriter for BudgetedWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        let wanted = self.charged.saturating_add(data.len() as u64).min(self.bound);
        if wanted > self.charged {
            let more = units_for(wanted).saturating_sub(units_for(self.charged));
            self.budget.reserve(&mut self.held, more).await?;
            self.charged = wanted;
        }
        self.inner.write(data).await
    }

    async fn finish(self: Box<Self>) -> Result<u64> {
        self.inner.finish().await
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.inner.abort().await
    }

    fn buffer_bound(&self) -> u64 {
        self.inner.buffer_bound()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that holds everything it is given, up to its bound, as object_store's does.
    #[derive(Debug)]
    struct Holding;

    struct HoldingWriter;

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
        fn buffer_bound(&self) -> u64 {
            1 << 20
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
    }

    fn store(budget: u64) -> (BudgetedBlobs, Arc<MemoryBudget>) {
        store_waiting(budget, Duration::from_millis(200))
    }

    fn store_waiting(budget: u64, wait: Duration) -> (BudgetedBlobs, Arc<MemoryBudget>) {
        let budget = Arc::new(MemoryBudget::new(budget, wait));
        (BudgetedBlobs::new(Arc::new(Holding), budget.clone()), budget)
    }

    #[tokio::test]
    async fn a_writer_reserves_what_it_was_given_up_to_its_bound_and_gives_it_back() {
        let (blobs, budget) = store(8 << 20);
        let mut writer = blobs.create("a", None).await.unwrap();
        assert_eq!(budget.available(), (8 << 20) - PER_UPLOAD);
        writer.write(Bytes::from(vec![0; 300 * 1024])).await.unwrap();
        assert_eq!(budget.available(), (8 << 20) - PER_UPLOAD - 300 * 1024);
        for _ in 0..10 {
            writer.write(Bytes::from(vec![0; 300 * 1024])).await.unwrap();
        }
        assert_eq!(
            budget.available(),
            (8 << 20) - PER_UPLOAD - (1 << 20),
            "never past the bound"
        );
        writer.finish().await.unwrap();
        assert_eq!(budget.available(), 8 << 20);
        drop(blobs.create("b", None).await.unwrap());
        assert_eq!(budget.available(), 8 << 20, "a dropped writer gives its share back");
    }

    #[tokio::test]
    async fn past_the_budget_a_writer_waits_for_room_and_gives_up_after_the_wait() {
        let (blobs, budget) = store(PER_UPLOAD * 2 + (1 << 20));
        let mut first = blobs.create("a", None).await.unwrap();
        first.write(Bytes::from(vec![0; 1 << 20])).await.unwrap();
        let mut second = blobs.create("b", None).await.unwrap();
        assert_eq!(budget.available(), 0);
        let refused = second.write(Bytes::from(vec![0; 1024])).await.unwrap_err();
        assert!(matches!(refused, PortError::Unavailable { .. }), "{refused:?}");

        // Patient enough that a stalled test thread cannot make it give up.
        let (blobs, _) = store_waiting(PER_UPLOAD * 2 + (1 << 20), Duration::from_secs(30));
        let mut first = blobs.create("a", None).await.unwrap();
        first.write(Bytes::from(vec![0; 1 << 20])).await.unwrap();
        let mut second = blobs.create("b", None).await.unwrap();
        let waiting = tokio::spawn(async move { second.write(Bytes::from(vec![0; 1024])).await.map(|()| second) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "it waits while the budget is taken");
        first.finish().await.unwrap();
        waiting.await.unwrap().expect("room once the first writer is done");
    }

    #[tokio::test]
    async fn a_writer_bigger_than_the_whole_budget_waits_for_all_of_it_not_for_ever() {
        let (blobs, budget) = store(512 * 1024);
        let mut writer = blobs.create("a", None).await.unwrap();
        writer.write(Bytes::from(vec![0; 4 << 20])).await.unwrap();
        assert_eq!(budget.available(), 0);
    }
}
