//! Test harness: spawns the real service on port 0 against a fresh database (a new SQLite
//! file or a new PostgreSQL database per test), with its own RabbitMQ exchange and queues
//! when asked, and talks to it over HTTP.
//!
//! PostgreSQL and RabbitMQ must be running (`UDIM_TEST_POSTGRES_URL`, `UDIM_TEST_AMQP_URL`
//! override where); a test that cannot reach them fails, it never skips.
#![allow(dead_code)]

pub mod faults;
pub mod process;
pub mod tus_clients;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use udim::config::{QueueSettings, RabbitMqSettings, Settings};
use udim::startup::{Application, Overrides};
use udim_ports::storage::BlobStore;
pub use udim_testkit::postgres::TestDatabase;
use uuid::Uuid;

pub fn amqp_url() -> String {
    std::env::var("UDIM_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Runs each named `async fn(Db)` as a test on each engine: `sqlite::<name>` and
/// `postgres::<name>`, so every test is named after what it checks, once per engine.
#[allow(unused_macros, reason = "not every test binary runs on both engines")]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($crate::common::Db::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($crate::common::Db::Postgres).await
            })*
        }
    };
}
#[allow(unused_imports, reason = "not every test binary runs on both engines")]
pub(crate) use on_both_databases;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// RabbitMQ names private to one test.
#[derive(Debug)]
pub struct TestQueue {
    pub settings: RabbitMqSettings,
    /// Queues a test declared itself, deleted with the rest.
    extra: std::sync::Mutex<Vec<String>>,
}

impl TestQueue {
    pub fn new(url: &str) -> Self {
        let id = Uuid::new_v4().simple().to_string();
        Self {
            settings: RabbitMqSettings {
                url: url.to_owned().into(),
                exchange: format!("udim.test.{id}.events"),
                queue: format!("udim.test.{id}.packages"),
                binding_key: "package.#".into(),
                dead_letter_exchange: format!("udim.test.{id}.dlx"),
                dead_letter_queue: format!("udim.test.{id}.dead"),
            },
            extra: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// A name for a queue the test declares itself; it is deleted with the test's others.
    pub fn extra_queue(&self, suffix: &str) -> String {
        let name = format!("{}.{suffix}", self.settings.queue);
        self.extra.lock().unwrap().push(name.clone());
        name
    }

    async fn connect(&self) -> Connection {
        Connection::connect(self.settings.url.expose_secret(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ must be running for the tests (UDIM_TEST_AMQP_URL)")
    }

    /// Waits up to `timeout` for the next message on the test's queue (acknowledging it).
    pub async fn next_event(&self, timeout: Duration) -> Option<(lapin::BasicProperties, Value)> {
        let conn = self.connect().await;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut channel = conn.create_channel().await.unwrap();
        while tokio::time::Instant::now() < deadline {
            // The queue exists only once the service has connected; until then basic_get
            // fails and closes the channel, so open a new one and try again.
            match channel
                .basic_get(self.settings.queue.as_str().into(), BasicGetOptions::default())
                .await
            {
                Ok(Some(message)) => {
                    let delivery = message.delivery;
                    delivery.ack(BasicAckOptions::default()).await.unwrap();
                    let body = serde_json::from_slice(&delivery.data).unwrap();
                    return Some((delivery.properties.clone(), body));
                }
                Ok(None) => {}
                Err(_) => channel = conn.create_channel().await.unwrap(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Takes every message that arrives within `quiet` of the one before (acknowledging
    /// each), until `done` holds for what was taken or `timeout` passes; one connection for
    /// all of them.
    pub async fn take_until(&self, timeout: Duration, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
        let conn = self.connect().await;
        let mut channel = conn.create_channel().await.unwrap();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut taken = Vec::new();
        while !done(&taken) && tokio::time::Instant::now() < deadline {
            match channel
                .basic_get(self.settings.queue.as_str().into(), BasicGetOptions::default())
                .await
            {
                Ok(Some(message)) => {
                    let delivery = message.delivery;
                    delivery.ack(BasicAckOptions::default()).await.unwrap();
                    taken.push(serde_json::from_slice(&delivery.data).unwrap());
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(_) => channel = conn.create_channel().await.unwrap(),
            }
        }
        taken
    }
}

/// The queues and exchanges go with the test, even one that panicked before `stop`.
impl Drop for TestQueue {
    fn drop(&mut self) {
        let s = self.settings.clone();
        let mut queues = vec![s.queue.clone(), s.dead_letter_queue.clone()];
        queues.extend(self.extra.lock().unwrap_or_else(|e| e.into_inner()).drain(..));
        udim_testkit::clean_up_aside(&format!("RabbitMQ queue {}", s.queue), async move {
            let connecting = Connection::connect(s.url.expose_secret(), ConnectionProperties::default());
            let conn = tokio::time::timeout(Duration::from_secs(10), connecting)
                .await
                .map_err(|_| "RabbitMQ did not answer within 10 s".to_owned())?
                .map_err(|e| e.to_string())?;
            // A name the service never declared is no error; each deletion gets its own
            // channel, since a refused one closes the channel it ran on.
            for queue in &queues {
                let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
                let _ = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            for exchange in [&s.exchange, &s.dead_letter_exchange] {
                let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
                let _ = channel
                    .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
            Ok(())
        });
    }
}

/// A change to the settings a test makes before the app is built.
pub type Configure = Box<dyn FnOnce(&mut Settings) + Send>;

/// How to build a test app.
#[derive(Default)]
pub struct Options {
    /// Publish to RabbitMQ (through this URL, or the real broker when `None`).
    pub rabbitmq: bool,
    pub amqp_url: Option<String>,
    pub storage: Option<Arc<dyn BlobStore>>,
    /// Key-service faults: the configured key service makes no new data keys while
    /// `refuse_new_keys` is on.
    pub kms_faults: Option<faults::Faults>,
    /// Wraps the configured notifier (a test watching what the broker answers).
    pub notifier: Option<udim::startup::Wrap<dyn udim_ports::queue::Notifier>>,
    pub max_bytes: Option<u64>,
    /// Any other change to the settings.
    pub configure: Option<Configure>,
}

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
    pub settings: Settings,
    pub queue: Option<TestQueue>,
    pub db: Db,
    /// Dropped with the app, even when the test panics.
    pg_database: Option<TestDatabase>,
    stop: CancellationToken,
    server: JoinHandle<anyhow::Result<()>>,
    dir: tempfile::TempDir,
}

pub async fn settings_for(db: Db, dir: &std::path::Path) -> (Settings, Option<TestDatabase>) {
    udim_testkit::log::init();
    let mut settings = Settings {
        data_dir: dir.to_path_buf(),
        ..Settings::default()
    };
    settings.server.listen = "127.0.0.1:0".parse().unwrap();
    settings.server.shutdown_grace_secs = 5;
    settings.outbox.poll_interval_ms = 100;
    settings.outbox.initial_backoff_ms = 100;
    settings.outbox.max_backoff_ms = 500;
    settings.database.max_connections = 5;
    // Tests that send one user's uploads or consents as fast as they can are about other
    // things; tests/limits.rs turns the rate limits on (the real binary runs with them).
    settings.limits.uploads_per_second_per_user = 0;
    settings.limits.consent_changes_per_second_per_user = 0;
    let mut pg_database = None;
    if db == Db::Postgres {
        let database = TestDatabase::create().await;
        settings.database.url = Some(database.url().to_owned().try_into().expect("a PostgreSQL URL"));
        // Required on PostgreSQL, where replicas share the ledger.
        let key = udim_ledger::note::Signer::generate(&settings.ledger.origin).expect("a signing key");
        settings.ledger.signing_key = Some(key.to_secret_string().into());
        pg_database = Some(database);
    }
    (settings, pg_database)
}

/// Builds the service and serves it in the background until the returned token is cancelled.
async fn start(
    settings: &Settings,
    overrides: Overrides,
) -> (std::net::SocketAddr, CancellationToken, JoinHandle<anyhow::Result<()>>) {
    let app = Application::build_with(settings.clone(), overrides)
        .await
        .expect("the service builds");
    let addr = app.local_addr();
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let server = tokio::spawn(app.run_until_stopped(async move { stopped.cancelled().await }));
    (addr, stop, server)
}

impl TestApp {
    pub async fn spawn(db: Db) -> Self {
        Self::spawn_with(db, Options::default()).await
    }

    pub async fn spawn_with(db: Db, options: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (mut settings, pg_database) = settings_for(db, dir.path()).await;
        let queue = options
            .rabbitmq
            .then(|| TestQueue::new(options.amqp_url.as_deref().unwrap_or(&amqp_url())));
        if let Some(q) = &queue {
            settings.queue = QueueSettings::Rabbitmq(q.settings.clone());
        }
        if let Some(max) = options.max_bytes {
            settings.upload.max_bytes = max;
        }
        if let Some(configure) = options.configure {
            configure(&mut settings);
        }
        let overrides = Overrides {
            storage: options.storage,
            kms: options
                .kms_faults
                .map(|faults| Box::new(move |kms| faults::FaultyKms::around(kms, &faults)) as udim::startup::Wrap<_>),
            notifier: options.notifier,
        };
        let (addr, stop, server) = start(&settings, overrides).await;
        Self {
            addr,
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            settings,
            queue,
            db,
            pg_database,
            stop,
            server,
            dir,
        }
    }

    /// The service's database, through its ports (a pool of its own).
    pub async fn database(&self) -> udim_sql::Database {
        udim_sql::connect(&udim_sql::DbOptions {
            url: self.settings.database_url().expose_secret().to_owned(),
            max_connections: 2,
            acquire_timeout: Duration::from_secs(10),
        })
        .await
        .expect("the test database")
    }

    /// The wrapped data key the database holds for `user`'s package `id` (`None` once erased).
    pub async fn wrapped_key(&self, user: &str, id: Uuid) -> Option<Vec<u8>> {
        let database = self.database().await;
        let record = database.packages.get_package(user, id).await.unwrap();
        database.close().await;
        record.and_then(|p| p.wrapped_key)
    }

    /// Creates a resumable upload of `length` bytes with tus `Upload-Metadata` `metadata`;
    /// returns its URL.
    pub async fn create_upload(&self, token: &str, length: u64, metadata: &str) -> String {
        let created = self
            .http
            .post(format!("{}/v1/uploads", self.base))
            .bearer_auth(token)
            .header("tus-resumable", "1.0.0")
            .header("upload-length", length.to_string())
            .header("upload-metadata", metadata)
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        format!("{}{}", self.base, created.headers()["location"].to_str().unwrap())
    }

    /// `DELETE /v1/packages/{id}` as the owner, which must erase it and record the erasure;
    /// returns the receipt.
    pub async fn erase_package(&self, token: &str, id: Uuid) -> Value {
        let erased = self
            .http
            .delete(format!("{}/v1/packages/{id}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(erased.status(), 200);
        erased.json().await.unwrap()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub fn objects_dir(&self) -> PathBuf {
        self.dir.path().join("objects")
    }

    /// Every file under the object store's root (staging and stored).
    pub fn object_files(&self) -> Vec<PathBuf> {
        files_under(&self.objects_dir())
    }

    pub fn token(&self, sub: &str, scopes: &[&str]) -> String {
        let auth = udim::auth::Authenticator::from_settings(&self.settings).unwrap();
        auth.mint(sub, &scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap()
    }

    pub fn uploader(&self, sub: &str) -> String {
        self.token(sub, &["udim:upload"])
    }

    pub async fn grant(&self, token: &str, categories: &[&str]) -> Value {
        grant_on(&self.http, &self.base, token, categories).await
    }

    pub async fn withdraw(&self, token: &str, consent_id: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/consents/{consent_id}/withdraw", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn upload(&self, token: &str, category: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.http
            .post(format!(
                "{}/v1/packages?data_category={category}&filename=test.bin",
                self.base
            ))
            .bearer_auth(token)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, token: &str, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The outbox as the admin endpoint shows it (all events, newest first).
    pub async fn outbox(&self) -> Vec<Value> {
        let admin = self.token("operator", &["udim:admin"]);
        let (status, body) = self.get_json(&admin, "/v1/admin/outbox?pending=false").await;
        assert_eq!(status, 200);
        body.as_array().unwrap().clone()
    }

    /// The caller's packages in every status.
    pub async fn packages(&self, token: &str) -> Vec<Value> {
        let (status, body) = self.get_json(token, "/v1/packages?limit=200").await;
        assert_eq!(status, 200);
        body["items"].as_array().unwrap().clone()
    }

    /// Stops the service and starts a new one on the same data and database (a restart).
    pub async fn restart(self) -> Self {
        self.stop.cancel();
        self.server.await.unwrap().unwrap();
        let settings = self.settings.clone();
        let (addr, stop, server) = start(&settings, Overrides::default()).await;
        Self {
            addr,
            base: format!("http://{addr}"),
            stop,
            server,
            settings,
            ..self
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.server.await.unwrap().unwrap();
    }
}

/// Every file below `dir`, recursively.
pub fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Bytes in which every 32-byte window is unique, so "no plaintext run in the ciphertext"
/// is a meaningful check.
pub fn distinctive_bytes(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut i: u64 = 0;
    while out.len() < len {
        out.extend_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// What an erased package leaves for anyone holding a copy of its object: asserts that the
/// copy does not contain `wrapped_key` (the data key's only copy, from the database before
/// the erasure) and that no window of the object's first `scan` bytes unwraps through `kms`
/// with the package's own context — the header is where format 1 kept a copy.
pub async fn assert_no_key_in_object(
    object: &[u8],
    wrapped_key: &[u8],
    kms: &dyn udim_ports::kms::KeyService,
    key_id: &str,
    ctx: &udim_ports::kms::KeyContext,
    scan: usize,
) {
    assert!(
        memchr::memmem::find(object, wrapped_key).is_none(),
        "the object carries its wrapped data key"
    );
    let len = wrapped_key.len();
    for offset in 0..scan.min(object.len().saturating_sub(len)) {
        assert!(
            kms.unwrap_data_key(key_id, &object[offset..offset + len], ctx)
                .await
                .is_err(),
            "bytes {offset}..{} of the object unwrap to its data key",
            offset + len
        );
    }
}

/// Grants a consent for `categories` (purpose `model-training`) on the service at `base`,
/// which must accept it.
pub async fn grant_on(http: &reqwest::Client, base: &str, token: &str, categories: &[&str]) -> Value {
    let response = http
        .post(format!("{base}/v1/consents"))
        .bearer_auth(token)
        .json(&json!({
            "purposes": ["model-training"],
            "data_categories": categories,
            "policy_version": "2026-01",
            "jurisdiction": "EU",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "grant failed");
    response.json().await.unwrap()
}

/// A fresh ledger signing key, as `ledger.signing_key` takes it: what the binary needs on
/// PostgreSQL, where it will not generate one.
pub fn ledger_key() -> String {
    udim_ledger::note::Signer::generate("udim.local/consent-ledger")
        .unwrap()
        .to_secret_string()
}

/// An uploader's token for `sub`, signed with the HS256 `secret` a service process was given.
pub fn uploader_token(secret: &str, sub: &str) -> String {
    token_on(secret, sub, &["udim:upload"])
}

/// A token for `sub` with `scopes`, signed with the HS256 `secret` a service process was given.
pub fn token_on(secret: &str, sub: &str, scopes: &[&str]) -> String {
    let mut settings = Settings::default();
    settings.auth.hs256_secret = Some(secret.to_owned().into());
    udim::auth::Authenticator::from_settings(&settings)
        .unwrap()
        .mint(sub, &scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .unwrap()
}

/// A request body the test feeds piece by piece through the sender, and ends by dropping it:
/// a client in the middle of sending.
pub fn body_in_flight() -> (
    tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    reqwest::Body,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    (tx, reqwest::Body::wrap_stream(stream))
}

/// How long a test waits for background work (the relay, a sweeper) before it calls the
/// work lost: far beyond what it takes on an idle machine, so a loaded CI machine with four
/// test threads on two cores does not fail a test that is right.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `check` until it holds, for at most [`PATIENCE`]; panics naming `what` if it never does.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    // Each check is bounded too: one that hangs fails the wait instead of holding it.
    while !tokio::time::timeout_at(deadline, check()).await.unwrap_or(false) {
        assert!(tokio::time::Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `requests` all at once and returns their statuses, sorted: for races whose outcome is
/// a set of answers.
pub async fn concurrent_statuses(requests: impl IntoIterator<Item = reqwest::RequestBuilder>) -> Vec<u16> {
    let sent = requests
        .into_iter()
        .map(|request| tokio::spawn(async move { request.send().await.unwrap().status().as_u16() }));
    let mut statuses: Vec<u16> = futures::future::join_all(sent)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    statuses.sort();
    statuses
}

/// Sends `request` on its own task; the handle yields its status.
pub fn status_of(request: reqwest::RequestBuilder) -> JoinHandle<u16> {
    tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
}
