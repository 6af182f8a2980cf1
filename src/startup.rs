//! Building and running the service: database, providers, HTTP server and background tasks.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use udim_ports::kms::KeyService;
use udim_ports::queue::Notifier;
use udim_ports::storage::BlobStore;

use crate::auth::Authenticator;
use crate::config::{ScannerSettings, Settings};
use crate::consent::ConsentService;
use crate::consent::sequencer::Sequencer;
use crate::consent::signer::LedgerSigner;
use crate::factory;
use crate::http::{self, AppState};
use crate::pipeline::ingest::Ingestor;
use crate::pipeline::relay::Relay;

/// After the grace period, how long shutdown waits for background work to end its step and
/// for the database pool to close.
const AFTER_GRACE: Duration = Duration::from_secs(5);

/// Wraps a configured provider in another (a test's faults).
pub type Wrap<T> = Box<dyn FnOnce(Arc<T>) -> Arc<T> + Send>;

/// Replacements for configured providers, for tests that inject faults.
#[derive(Default)]
pub struct Overrides {
    pub storage: Option<Arc<dyn BlobStore>>,
    pub kms: Option<Wrap<dyn KeyService>>,
    pub notifier: Option<Wrap<dyn Notifier>>,
}

/// Connects to the configured database.
pub async fn connect_database(settings: &Settings) -> anyhow::Result<udim_sql::Database> {
    let url = settings.database_url();
    if url.engine() == udim_sql::Engine::Sqlite {
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("cannot create data_dir {}", settings.data_dir.display()))?;
    }
    let options = udim_sql::DbOptions {
        url: url.expose_secret().to_owned(),
        max_connections: settings.database.max_connections,
        acquire_timeout: Duration::from_secs(settings.database.acquire_timeout_secs),
    };
    udim_sql::connect(&options)
        .await
        .context("cannot connect to the database")
}

/// A built service, bound to its port, not yet serving.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    database: udim_sql::Database,
    relay: Option<Relay>,
    grace: Duration,
    /// How long sent events stay in the outbox; `None`: forever.
    keep_sent: Option<chrono::Duration>,
    abandon_after: Duration,
    sweep_interval: Duration,
    cors: Option<tower_http::cors::CorsLayer>,
    limits: http::serve::Limits,
    request_timeout: Duration,
    /// Cancelled when shutdown begins.
    draining: CancellationToken,
}

/// The transport limits from `server.*`; a zero limit would refuse everything, so it is a
/// configuration error (as are zero upload bounds in `limits.*`).
fn transport_limits(server: &crate::config::ServerSettings) -> anyhow::Result<http::serve::Limits> {
    for (name, value) in [
        ("header_read_timeout_secs", server.header_read_timeout_secs),
        ("max_header_bytes", server.max_header_bytes as u64),
        ("max_headers", server.max_headers as u64),
        ("body_idle_timeout_secs", server.body_idle_timeout_secs),
        ("request_timeout_secs", server.request_timeout_secs),
        ("max_connections", server.max_connections as u64),
    ] {
        anyhow::ensure!(value > 0, "configuration error: `server.{name}` must be greater than 0");
    }
    Ok(http::serve::Limits {
        header_read_timeout: Duration::from_secs(server.header_read_timeout_secs),
        max_header_bytes: server.max_header_bytes,
        max_headers: server.max_headers,
        body_idle_timeout: Duration::from_secs(server.body_idle_timeout_secs),
        body_min_bytes_per_sec: server.body_min_bytes_per_sec,
        max_connections: server.max_connections,
    })
}

/// The admission bounds from `limits.*`; zero uploads in flight would admit none.
fn admission(limits: &crate::config::LimitSettings) -> anyhow::Result<crate::pipeline::admission::Admission> {
    anyhow::ensure!(
        limits.uploads_in_flight > 0 && limits.uploads_in_flight_per_user > 0,
        "configuration error: `limits.uploads_in_flight` and `limits.uploads_in_flight_per_user` must be greater than 0"
    );
    anyhow::ensure!(
        limits.open_uploads_per_user > 0 && limits.staged_bytes_per_user > 0 && limits.upload_buffer_bytes > 0,
        "configuration error: `limits.open_uploads_per_user`, `limits.staged_bytes_per_user` and \
         `limits.upload_buffer_bytes` must be greater than 0"
    );
    Ok(crate::pipeline::admission::Admission::new(limits))
}

/// CORS for browser clients (tus-js-client, Uppy): the listed origins may call the API with
/// bearer tokens and read the tus response headers.
fn cors(origins: &[String]) -> anyhow::Result<Option<tower_http::cors::CorsLayer>> {
    use axum::http::{HeaderName, HeaderValue, Method};
    if origins.is_empty() {
        return Ok(None);
    }
    let origins = origins
        .iter()
        .map(|o| {
            HeaderValue::from_str(o).map_err(|_| {
                anyhow::anyhow!("configuration error: `server.cors_allowed_origins`: `{o}` is not a valid origin")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tus_headers = [
        "authorization",
        "content-type",
        "tus-resumable",
        "upload-length",
        "upload-offset",
        "upload-metadata",
        "upload-checksum",
        "upload-expires",
        "location",
        "udim-package-id",
        "idempotency-key",
        "range",
        "tus-version",
        "tus-extension",
        "tus-max-size",
        "tus-checksum-algorithm",
        "content-range",
        "x-request-id",
    ]
    .map(HeaderName::from_static);
    Ok(Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers(tus_headers.clone())
            .expose_headers(tus_headers)
            .max_age(Duration::from_secs(3600)),
    ))
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with(settings, Overrides::default()).await
    }

    pub async fn build_with(mut settings: Settings, overrides: Overrides) -> anyhow::Result<Self> {
        settings.resolve();
        let database = connect_database(&settings).await?;
        if settings.database.migrate_on_start {
            database.migrate().await.context("cannot apply database migrations")?;
        }
        let blobs = match overrides.storage {
            Some(storage) => storage,
            None => factory::storage(&settings)?,
        };
        let budget = crate::pipeline::budget::MemoryBudget::new(
            settings.limits.upload_buffer_bytes,
            settings.limits.upload_buffer_bytes_per_user,
            Duration::from_secs(settings.server.body_idle_timeout_secs),
        );
        let writers = Arc::new(crate::pipeline::budget::BudgetedWriters::new(
            blobs.clone(),
            budget,
            crate::formats::envelope::stored_size_bound(settings.upload.max_bytes),
        )?);
        let kms = factory::kms(&settings).await?;
        let kms = match overrides.kms {
            Some(wrap) => wrap(kms),
            None => kms,
        };
        let notifier = factory::notifier(&settings).await?;
        let notifier = match (notifier, overrides.notifier) {
            (Some(notifier), Some(wrap)) => Some(wrap(notifier)),
            (notifier, _) => notifier,
        };
        let (scanner, scan_policy) = factory::scanner(&settings);
        let probes = Arc::new(crate::http::health::Probes::new(
            database.packages.clone(),
            blobs.clone(),
            kms.clone(),
            notifier.clone(),
            (!matches!(settings.scanner, ScannerSettings::Disabled)).then(|| scanner.clone()),
            !scan_policy.fail_open,
        ));
        let auth = Arc::new(Authenticator::from_settings(&settings)?);
        auth.prefetch_keys();
        let ledger_signer = Arc::new(LedgerSigner::load(
            &settings.ledger.origin,
            &settings.signing_key_source()?,
        )?);
        let ledger = factory::ledger(&settings, &database).await?;
        let sequencer = Sequencer::start(ledger.clone(), ledger_signer.clone(), settings.ledger.max_batch);
        let consents = ConsentService::new(ledger, sequencer);
        let relay_wake = Arc::new(Notify::new());
        let draining = CancellationToken::new();
        let reader = Arc::new(crate::pipeline::read::ContentReader {
            blobs: blobs.clone(),
            kms: kms.clone(),
            packages: database.packages.clone(),
            consents: consents.clone(),
        });
        let ingest = Arc::new(Ingestor {
            blobs,
            writers,
            kms,
            packages: database.packages.clone(),
            scanner,
            scan_policy,
            content: crate::formats::content::ContentPolicy {
                categories: settings.upload.categories.clone(),
                mismatch: settings.upload.type_mismatch,
            },
            consents: consents.clone(),
            max_bytes: settings.upload.max_bytes,
        });
        let resumable = Arc::new(crate::pipeline::resumable::Resumable {
            uploads: database.uploads.clone(),
            blobs: ingest.blobs.clone(),
            kms: ingest.kms.clone(),
            consents: consents.clone(),
            ingest: ingest.clone(),
            expire_after: Duration::from_secs(settings.upload.resumable_expire_after_secs),
            draining: draining.clone(),
            open_uploads_per_user: settings.limits.open_uploads_per_user,
            staged_bytes_per_user: settings.limits.staged_bytes_per_user,
        });
        let eraser = Arc::new(crate::pipeline::erasure::Eraser {
            packages: database.packages.clone(),
            blobs: ingest.blobs.clone(),
            consents: consents.clone(),
            resumable: resumable.clone(),
            relay_wake: relay_wake.clone(),
            retention: settings
                .upload
                .categories
                .iter()
                .filter_map(|(category, policy)| {
                    policy
                        .retention_days
                        .map(|days| (category.clone(), chrono::Duration::days(i64::from(days))))
                })
                .collect(),
        });
        let relay = notifier.as_ref().map(|notifier| Relay {
            outbox: database.outbox.clone(),
            notifier: notifier.clone(),
            settings: settings.outbox.clone(),
            wake: relay_wake.clone(),
        });
        let state = AppState {
            auth,
            consents,
            ledger_signer,
            packages: database.packages.clone(),
            outbox: database.outbox.clone(),
            probes,
            ingest,
            reader,
            resumable,
            relay_wake,
            eraser,
            metrics: if settings.server.metrics {
                crate::ops::metrics::handle()
            } else {
                None
            },
            admission: Arc::new(admission(&settings.limits)?),
        };
        let listener = TcpListener::bind(settings.server.listen)
            .await
            .with_context(|| format!("cannot listen on {} (`server.listen`)", settings.server.listen))?;
        Ok(Self {
            listener,
            state,
            database,
            relay,
            grace: Duration::from_secs(settings.server.shutdown_grace_secs),
            keep_sent: (settings.outbox.keep_sent_days > 0)
                .then(|| chrono::Duration::days(i64::from(settings.outbox.keep_sent_days))),
            abandon_after: Duration::from_secs(settings.upload.abandon_after_secs),
            sweep_interval: Duration::from_secs(settings.upload.sweep_interval_secs.max(1)),
            cors: cors(&settings.server.cors_allowed_origins)?,
            limits: transport_limits(&settings.server)?,
            request_timeout: Duration::from_secs(settings.server.request_timeout_secs),
            draining,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests
    /// (uploads) finish for up to the grace period, and stops the background tasks.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(relay) = self.relay {
            tasks.spawn(relay.run(stop.clone()));
        }
        tasks.spawn(sweep_loop(
            self.state.clone(),
            self.keep_sent,
            self.abandon_after,
            self.sweep_interval,
            stop.clone(),
        ));

        let changes = tokio_util::task::TaskTracker::new();
        let deadlines = http::Deadlines {
            limit: self.request_timeout,
            changes: changes.clone(),
        };
        let draining = self.draining;
        let mut router = http::router(self.state)
            .layer(axum::middleware::from_fn_with_state(deadlines, http::deadline))
            .layer(tower_http::trace::TraceLayer::new_for_http());
        if let Some(cors) = self.cors {
            router = router.layer(cors);
        }
        // Outermost: the head is measured as the client sent it, before an `x-request-id` is
        // added to it; then every answer, CORS preflights too, carries its request id.
        let router = router
            .layer(axum::middleware::from_fn(http::request_id::request_id))
            .layer(axum::middleware::from_fn_with_state(
                self.limits.max_header_bytes,
                http::head_size,
            ));
        let drain_signal = draining.clone();
        let server = http::serve::serve(self.listener, router, self.limits, async move {
            shutdown.await;
            tracing::info!("shutting down: draining in-flight requests");
            drain_signal.cancel();
        });
        let grace = self.grace;
        // One deadline for all of it: the requests in flight, then the changes whose clients
        // have gone (they still run on their own tasks, and end before the database closes
        // under them).
        let drained = async {
            server.await;
            changes.close();
            changes.wait().await;
        };
        tokio::select! {
            () = drained => {}
            () = async { draining.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, changes = changes.len(), "in-flight requests outlived the grace period");
            }
        };
        stop.cancel();
        // The relay and the sweeper stop between two steps; the end of a step, and closing
        // the pool, get a bound of their own, so that shutdown always ends.
        let background = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(AFTER_GRACE, background).await.is_err() {
            tracing::warn!("background work was cut short at shutdown");
            // Ended before the pool closes: a publish left running would find no database
            // to mark it sent in, and be sent again after its lease.
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        if tokio::time::timeout(AFTER_GRACE, self.database.close()).await.is_err() {
            tracing::warn!("database connections still in use at shutdown were dropped");
        }
        Ok(())
    }
}

/// The periodic clean-up: abandoned and expired uploads, retention, sent events, and
/// objects of erased packages whose deletion failed.
async fn sweep_loop(
    state: AppState,
    keep_sent: Option<chrono::Duration>,
    abandon_after: Duration,
    interval: Duration,
    stop: CancellationToken,
) {
    let AppState {
        ingest,
        resumable,
        eraser,
        outbox,
        ..
    } = state;
    loop {
        match ingest.sweep_abandoned(abandon_after).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "cleaned up abandoned uploads"),
            Err(e) => tracing::warn!(error = %e, "sweeping abandoned uploads failed"),
        }
        match resumable.recover().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "finished complete uploads left without their package"),
            Err(e) => tracing::warn!(error = %e, "finishing complete uploads failed"),
        }
        match resumable.expire().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "removed expired resumable uploads"),
            Err(e) => tracing::warn!(error = %e, "expiring resumable uploads failed"),
        }
        match eraser.expire(chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "erased packages past their retention limit"),
            Err(e) => tracing::warn!(error = %e, "erasing packages past their retention limit failed"),
        }
        if let Some(keep) = keep_sent {
            match outbox.prune_sent(chrono::Utc::now() - keep).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(count = n, "pruned sent outbox events"),
                Err(e) => tracing::warn!(error = %e, "pruning sent outbox events failed"),
            }
        }
        match eraser.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "removed objects of erased packages"),
            Err(e) => tracing::warn!(error = %e, "removing objects of erased packages failed"),
        }
        match eraser.record_unrecorded().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "recorded erasures in the consent ledger"),
            Err(e) => tracing::warn!(error = %e, "recording erasures in the consent ledger failed"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
