//! Faults the tests switch on and off, one place for all of them:
//! - a real object store (the filesystem's) whose writes, deletes or chunk reads fail;
//! - a real key service that cannot make new data keys (the local key file has no network to
//!   cut), as a KMS that became unreachable after an upload's chunks were written;
//! - a TCP link to a real server (clamd, RabbitMQ) that can hang, refuse or cut its
//!   connections, as a server that stops answering, goes down or drops them does;
//! - PostgreSQL triggers that fail the commit of a package, of an upload's completion or of an
//!   erasure record with a serialization failure (SQLSTATE 40001), a real database error that
//!   passes.
//!
//! Each fault answers as the port's contract says a failing provider does: `Unavailable`, so
//! the service treats it as passing, never as a refusal.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use udim_ports::kms::{DataKey, KeyContext, KeyService, PlainKey};
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
    no_new_keys: Arc<AtomicBool>,
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

    /// The key service fails to generate data keys (unwrapping still works).
    pub fn refuse_new_keys(&self, on: bool) {
        self.no_new_keys.store(on, Ordering::SeqCst);
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

    fn buffer_bound(&self, size_hint: Option<u64>) -> u64 {
        self.inner.buffer_bound(size_hint)
    }
}

/// A key service that fails to generate data keys while `refuse_new_keys` is on.
#[derive(Debug)]
pub struct FaultyKms {
    inner: Arc<dyn KeyService>,
    faults: Faults,
}

impl FaultyKms {
    pub fn around(inner: Arc<dyn KeyService>, faults: &Faults) -> Arc<dyn KeyService> {
        Arc::new(Self {
            inner,
            faults: faults.clone(),
        })
    }
}

#[async_trait]
impl KeyService for FaultyKms {
    async fn generate_data_key(&self, ctx: &KeyContext) -> Result<DataKey> {
        if self.faults.no_new_keys.load(Ordering::SeqCst) {
            return Err(PortError::unavailable("faulty kms", "injected key service failure"));
        }
        self.inner.generate_data_key(ctx).await
    }
    async fn unwrap_data_key(&self, key_id: &str, wrapped: &[u8], ctx: &KeyContext) -> Result<PlainKey> {
        self.inner.unwrap_data_key(key_id, wrapped, ctx).await
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
    fn current_key_id(&self) -> &str {
        self.inner.current_key_id()
    }
}

/// How a [`Link`] treats its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    /// Connections are read and never answered or forwarded: a server that stopped answering.
    Hang,
    /// New connections are closed at once: a server that is down.
    Refuse,
}

/// A TCP link to a real server (clamd, RabbitMQ) that forwards while up, and can hang (every
/// connection, established or new, is read and never answered), refuse new connections, or
/// cut the established ones, as a server that stops answering, goes down or drops its
/// connections does.
#[derive(Debug, Clone)]
pub struct Link {
    pub address: String,
    /// Where new connections go.
    target: Arc<std::sync::Mutex<String>>,
    mode: Arc<tokio::sync::watch::Sender<Mode>>,
    /// Replaced by a fresh token at each cut; connections end when theirs is cancelled.
    generation: Arc<std::sync::Mutex<tokio_util::sync::CancellationToken>>,
    /// Connections forwarded to the server.
    pub forwarded: Arc<AtomicU64>,
    /// Connections accepted while hung.
    pub stalled: Arc<AtomicU64>,
    /// Established connections closed by a cut.
    pub cut_connections: Arc<AtomicU64>,
    /// New connections closed at once while refusing.
    pub refused: Arc<AtomicU64>,
    /// Bytes forwarded from clients to the server.
    pub sent: Arc<AtomicU64>,
}

/// Copies `from` to `to` while forwarding; while hung, reads and discards (the peer sees
/// no answer, and the connection's framing is lost, so leaving a hang cuts it).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: tokio::sync::watch::Receiver<Mode>,
    counted: Option<Arc<AtomicU64>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if *mode.borrow() == Mode::Hang {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        if let Some(counted) = &counted {
            counted.fetch_add(n as u64, Ordering::SeqCst);
        }
    }
}

impl Link {
    pub async fn to(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let link = Self {
            address: listener.local_addr().unwrap().to_string(),
            target: Arc::new(std::sync::Mutex::new(target)),
            mode: Arc::new(tokio::sync::watch::Sender::new(Mode::Forward)),
            generation: Arc::default(),
            forwarded: Arc::new(AtomicU64::new(0)),
            stalled: Arc::new(AtomicU64::new(0)),
            cut_connections: Arc::new(AtomicU64::new(0)),
            refused: Arc::new(AtomicU64::new(0)),
            sent: Arc::new(AtomicU64::new(0)),
        };
        let accepting = link.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                accepting.serve(client);
            }
        });
        link
    }

    fn serve(&self, client: tokio::net::TcpStream) {
        let target = self.target.lock().unwrap().clone();
        let mode = self.mode.subscribe();
        let cut = self.generation.lock().unwrap().clone();
        match *mode.borrow() {
            Mode::Refuse => {
                self.refused.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Mode::Hang => {
                // Never reaches the server, which could otherwise close it and end the hang.
                self.stalled.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut client, mut sink) = (client, tokio::io::sink());
                    tokio::select! {
                        () = cut.cancelled() => {}
                        _ = tokio::io::copy(&mut client, &mut sink) => {}
                    }
                });
                return;
            }
            Mode::Forward => {}
        }
        let (forwarded, cut_connections, sent) =
            (self.forwarded.clone(), self.cut_connections.clone(), self.sent.clone());
        tokio::spawn(async move {
            let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                return;
            };
            forwarded.fetch_add(1, Ordering::SeqCst);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::select! {
                () = cut.cancelled() => { cut_connections.fetch_add(1, Ordering::SeqCst); }
                () = pump(client_read, server_write, mode.clone(), Some(sent)) => {}
                () = pump(server_read, client_write, mode, None) => {}
            }
        });
    }

    /// Sends new connections to `target` (a server that came back elsewhere).
    pub fn retarget(&self, target: String) {
        *self.target.lock().unwrap() = target;
    }

    /// Closes every established connection.
    pub fn cut(&self) {
        let fresh = tokio_util::sync::CancellationToken::new();
        std::mem::replace(&mut *self.generation.lock().unwrap(), fresh).cancel();
    }

    /// Hangs every connection, established and new; ending the hang cuts the hung ones.
    pub fn hang(&self, on: bool) {
        let was = self.mode.send_replace(if on { Mode::Hang } else { Mode::Forward });
        if !on && was == Mode::Hang {
            self.cut();
        }
    }

    /// Refuses new connections (established ones go on unless [`Link::cut`]).
    pub fn refuse(&self, on: bool) {
        self.mode.send_replace(if on { Mode::Refuse } else { Mode::Forward });
    }
}

/// What each publish of a [`WatchedNotifier`] came to, in order.
pub type Outcomes = Arc<std::sync::Mutex<Vec<std::result::Result<(), String>>>>;

/// A real notifier whose every outcome is written down, so a test can tell which of its
/// paths (a lost connection, a confirm that never came, a returned or refused message) it
/// went through. It publishes one message at a time, as the RabbitMQ notifier does.
#[derive(Debug)]
pub struct WatchedNotifier {
    inner: Arc<dyn udim_ports::queue::Notifier>,
    outcomes: Outcomes,
}

impl WatchedNotifier {
    /// The wrap for [`super::Options::notifier`], and the list its outcomes go to.
    pub fn wrap() -> (udim::startup::Wrap<dyn udim_ports::queue::Notifier>, Outcomes) {
        let outcomes = Outcomes::default();
        let kept = outcomes.clone();
        let wrap =
            Box::new(move |inner| Arc::new(Self { inner, outcomes: kept }) as Arc<dyn udim_ports::queue::Notifier>);
        (wrap, outcomes)
    }
}

#[async_trait]
impl udim_ports::queue::Notifier for WatchedNotifier {
    async fn publish(&self, message: &udim_ports::metadata::OutboxMessage) -> Result<()> {
        let result = self.inner.publish(message).await;
        self.outcomes
            .lock()
            .unwrap()
            .push(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        result
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
}

/// Database faults on PostgreSQL, switched by name: `mark_stored` fails the transaction that
/// stores a package, `complete_upload` the one that links a stored package to its upload
/// (after the package's own commit), `store_event` the outbox insert of `package.stored` (in
/// the package's own transaction), `record_erasure` the ledger append of an erasure record;
/// `slow_mark_stored` and `slow_create_upload` make storing a package and creating a resumable
/// upload take two seconds longer.
pub struct DatabaseFaults {
    url: String,
}

impl DatabaseFaults {
    pub async fn install(url: &str) -> Self {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        for sql in [
            "CREATE TABLE udim_test_faults (name TEXT PRIMARY KEY)",
            "GRANT SELECT ON udim_test_faults TO PUBLIC",
            "CREATE FUNCTION udim_test_fault() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             IF EXISTS (SELECT 1 FROM udim_test_faults WHERE name = TG_ARGV[0]) THEN \
             RAISE EXCEPTION 'injected % failure', TG_ARGV[0] USING ERRCODE = '40001'; END IF; \
             RETURN NEW; END $$",
            "CREATE FUNCTION udim_test_delay() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             IF EXISTS (SELECT 1 FROM udim_test_faults WHERE name = TG_ARGV[0]) THEN \
             PERFORM pg_sleep(2); END IF; RETURN NEW; END $$",
            "CREATE TRIGGER udim_test_delay_mark_stored BEFORE UPDATE ON packages FOR EACH ROW \
             WHEN (NEW.status = 'stored' AND OLD.status <> 'stored') EXECUTE FUNCTION udim_test_delay('slow_mark_stored')",
            "CREATE TRIGGER udim_test_delay_create_upload BEFORE INSERT ON tus_uploads FOR EACH ROW \
             EXECUTE FUNCTION udim_test_delay('slow_create_upload')",
            "CREATE TRIGGER udim_test_fault_mark_stored BEFORE UPDATE ON packages FOR EACH ROW \
             WHEN (NEW.status = 'stored' AND OLD.status <> 'stored') EXECUTE FUNCTION udim_test_fault('mark_stored')",
            "CREATE TRIGGER udim_test_fault_complete_upload BEFORE UPDATE ON tus_uploads FOR EACH ROW \
             WHEN (NEW.package_id IS NOT NULL AND OLD.package_id IS NULL) \
             EXECUTE FUNCTION udim_test_fault('complete_upload')",
            "CREATE TRIGGER udim_test_fault_store_event BEFORE INSERT ON outbox FOR EACH ROW \
             WHEN (NEW.event_type = 'package.stored') EXECUTE FUNCTION udim_test_fault('store_event')",
            "CREATE TRIGGER udim_test_fault_record_erasure BEFORE INSERT ON consent_records FOR EACH ROW \
             WHEN (NEW.event_type = 'erased') EXECUTE FUNCTION udim_test_fault('record_erasure')",
        ] {
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
        Self { url: url.to_owned() }
    }

    pub async fn set(&self, name: &str, on: bool) {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
        let sql = if on {
            "INSERT INTO udim_test_faults (name) VALUES ($1) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM udim_test_faults WHERE name = $1"
        };
        sqlx::query(sql).bind(name).execute(&mut conn).await.unwrap();
    }
}
