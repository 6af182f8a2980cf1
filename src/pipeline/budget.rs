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
//!
//! One user's reservations together stay within a share of the budget, taken before the
//! budget itself: however many uploads a user keeps stalled or trickling, the rest of the
//! budget stays for others. (Several users together can still fill it; their uploads are cut
//! by the idle timeout and the minimum body rate, not by the budget.) A reservation that
//! holds its user's share while it waits for the budget waits on nothing else, so there is no
//! cycle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use udim_ports::storage::{BlobStore, BlobWriter};
use udim_ports::{PortError, Result};

/// The budget is counted in KiB, so a semaphore's permits can count any sensible size.
const UNIT: u64 = 1024;

/// Reserved by every writer besides its own buffers: the upload's buffers.
pub const PER_UPLOAD: u64 = 128 * 1024;

fn units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

/// The shares of users with a reservation held or awaited; a share leaves the map with the
/// last of them.
type Shares = Arc<Mutex<HashMap<String, Arc<Semaphore>>>>;

#[derive(Debug)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    /// What one user's uploads may hold together, so that one user's stalled or trickling
    /// uploads cannot take the whole budget from everyone else.
    per_user: u64,
    shares: Shares,
    wait: Duration,
}

impl MemoryBudget {
    /// A budget of `bytes`, of which one user holds at most `per_user`; a reservation waits
    /// at most `wait`.
    pub fn new(bytes: u64, per_user: u64, wait: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(units(bytes) as usize)),
            per_user: per_user.min(bytes),
            shares: Shares::default(),
            wait,
        }
    }

    /// Bytes of the budget not reserved now.
    pub fn available(&self) -> u64 {
        self.permits.available_permits() as u64 * UNIT
    }

    /// Reserves `bytes` whole for `user`, first within the user's share and then within the
    /// budget, waiting for both together at most `wait`.
    async fn reserve(&self, user: &str, bytes: u64) -> Result<Reservation> {
        let deadline = Instant::now() + self.wait;
        let share = {
            let mut shares = self.shares.lock().unwrap_or_else(PoisonError::into_inner);
            shares
                .entry(user.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(units(self.per_user) as usize)))
                .clone()
        };
        let mut reservation = Reservation {
            shares: self.shares.clone(),
            user: user.to_owned(),
            share: Some(share.clone()),
            own: None,
            total: None,
        };
        let wanted = units(bytes);
        let expired = |whose: &str| {
            metrics::counter!(crate::ops::metrics::UPLOAD_BUFFER_WAITS_EXPIRED).increment(1);
            PortError::unavailable(
                "upload buffers",
                format!("{whose} stayed full for {} s", self.wait.as_secs()),
            )
        };
        let own = tokio::time::timeout_at(deadline, share.acquire_many_owned(wanted))
            .await
            .map_err(|_| expired("this user's share of the server's upload buffers"))?;
        reservation.own = Some(own.expect("a share's semaphore is never closed"));
        let total = tokio::time::timeout_at(deadline, self.permits.clone().acquire_many_owned(wanted))
            .await
            .map_err(|_| expired("the server's upload buffers"))?;
        reservation.total = Some(total.expect("the budget's semaphore is never closed"));
        Ok(reservation)
    }
}

/// A reservation in the budget and in its user's share, given back on drop.
struct Reservation {
    shares: Shares,
    user: String,
    /// The user's share; `None` only once given back.
    share: Option<Arc<Semaphore>>,
    own: Option<OwnedSemaphorePermit>,
    total: Option<OwnedSemaphorePermit>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.total.take();
        self.own.take();
        let mut shares = self.shares.lock().unwrap_or_else(PoisonError::into_inner);
        // Let go of the share under the lock, so that of two reservations ending at once the
        // second sees the first's gone. Then if only the map holds it, no reservation of the
        // user is held or awaited, and none can start while the map is locked.
        drop(self.share.take());
        if shares
            .get(&self.user)
            .is_some_and(|share| Arc::strong_count(share) == 1)
        {
            shares.remove(&self.user);
        }
    }
}

/// What a writer created with `size_hint` reserves.
fn reservation(blobs: &dyn BlobStore, size_hint: Option<u64>) -> u64 {
    let bound = blobs.buffer_bound(size_hint);
    size_hint
        .map_or(bound, |size| size.min(bound))
        .saturating_add(PER_UPLOAD)
}

/// Creates a store's writers within a shared [`MemoryBudget`].
#[derive(Debug)]
pub struct BudgetedWriters {
    blobs: Arc<dyn BlobStore>,
    budget: MemoryBudget,
}

impl BudgetedWriters {
    /// Refuses a budget, or a user's share of it, too small for the writer of the largest
    /// object the service takes (`largest` bytes, as stored): such an upload could never be
    /// admitted.
    pub fn new(blobs: Arc<dyn BlobStore>, budget: MemoryBudget, largest: u64) -> anyhow::Result<Self> {
        let needed = reservation(blobs.as_ref(), Some(largest));
        for (setting, bytes) in [
            ("limits.upload_buffer_bytes", budget.available()),
            ("limits.upload_buffer_bytes_per_user", budget.per_user),
        ] {
            anyhow::ensure!(
                bytes >= needed,
                "`{setting}` ({bytes} bytes) is smaller than what one upload of the largest size \
                 `upload.max_bytes` allows may buffer ({needed} bytes): raise it, or lower the \
                 storage part size"
            );
        }
        Ok(Self { blobs, budget })
    }

    /// A writer for `user`'s object `key`, created once its reservation is made.
    pub async fn create(&self, user: &str, key: &str, size_hint: Option<u64>) -> Result<Box<dyn BlobWriter>> {
        let held = self
            .budget
            .reserve(user, reservation(self.blobs.as_ref(), size_hint))
            .await?;
        Ok(Box::new(BudgetedWriter {
            inner: self.blobs.create(key, size_hint).await?,
            _held: held,
        }))
    }
}

/// A writer and its reservation, given back when the writer finishes or is dropped.
struct BudgetedWriter {
    inner: Box<dyn BlobWriter>,
    _held: Reservation,
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
    use udim_ports::storage::ByteStream;

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

    fn store(budget: u64, wait: Duration) -> BudgetedWriters {
        BudgetedWriters::new(Arc::new(Holding), MemoryBudget::new(budget, budget, wait), 1 << 30).unwrap()
    }

    #[tokio::test]
    async fn a_writer_reserves_its_size_up_to_its_bound_at_creation_and_gives_it_back() {
        let blobs = store(8 << 20, Duration::from_millis(200));
        let available = || blobs.budget.available();
        let unsized_writer = blobs.create("u", "a", None).await.unwrap();
        assert_eq!(
            available(),
            (8 << 20) - BOUND - PER_UPLOAD,
            "the bound when no size is known"
        );
        let small = blobs.create("u", "b", Some(300 * 1024)).await.unwrap();
        assert_eq!(
            available(),
            (8 << 20) - BOUND - 300 * 1024 - 2 * PER_UPLOAD,
            "a small object's size"
        );
        let large = blobs.create("u", "c", Some(1 << 30)).await.unwrap();
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
        let first = blobs.create("u", "a", None).await.unwrap();
        let Err(refused) = blobs.create("u", "b", None).await else {
            panic!("no room for a second writer")
        };
        assert!(matches!(refused, PortError::Unavailable { .. }), "{refused:?}");
        drop(first);

        // Patient enough that a stalled test thread cannot make it give up.
        let blobs = Arc::new(store(budget, Duration::from_secs(30)));
        let first = blobs.create("u", "a", None).await.unwrap();
        let waiting = tokio::spawn({
            let blobs = blobs.clone();
            async move { blobs.create("u", "b", None).await.map(drop) }
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
        let one = BOUND + PER_UPLOAD;
        let made = |bytes, per_user| {
            BudgetedWriters::new(
                Arc::new(Holding),
                MemoryBudget::new(bytes, per_user, Duration::from_secs(1)),
                1 << 30,
            )
        };
        let refused = made(BOUND, BOUND).unwrap_err();
        assert!(
            refused.to_string().contains("`limits.upload_buffer_bytes`"),
            "{refused}"
        );
        let refused = made(4 * one, BOUND).unwrap_err();
        assert!(
            refused.to_string().contains("`limits.upload_buffer_bytes_per_user`"),
            "{refused}"
        );
        made(one, one).expect("room for one");
    }

    #[tokio::test]
    async fn one_user_holds_at_most_their_share_and_others_still_get_room() {
        let one = BOUND + PER_UPLOAD;
        let blobs = BudgetedWriters::new(
            Arc::new(Holding),
            MemoryBudget::new(4 * one, 2 * one, Duration::from_millis(200)),
            1 << 30,
        )
        .unwrap();
        let mine = [
            blobs.create("greedy", "a", None).await.unwrap(),
            blobs.create("greedy", "b", None).await.unwrap(),
        ];
        let Err(refused) = blobs.create("greedy", "c", None).await else {
            panic!("a third writer is past the user's share")
        };
        assert!(matches!(refused, PortError::Unavailable { .. }), "{refused:?}");
        let theirs = [
            blobs.create("honest", "d", None).await.expect("another user has room"),
            blobs.create("honest", "e", None).await.expect("up to their own share"),
        ];
        assert_eq!(blobs.budget.available(), 0);
        drop(mine);
        drop(theirs);
        assert_eq!(blobs.budget.available(), 4 * one, "all given back");
        assert!(
            blobs.budget.shares.lock().unwrap().is_empty(),
            "and no share is kept for users with nothing reserved"
        );
    }
}
