//! Liveness and readiness.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use tokio::sync::Mutex;
use tokio::time::Instant;
use udim_ports::kms::KeyService;
use udim_ports::metadata::PackageStore;
use udim_ports::queue::Notifier;
use udim_ports::scanner::MalwareScanner;
use udim_ports::storage::BlobStore;
use utoipa::ToSchema;

use super::AppState;
use super::extract::Json;

/// How long one dependency may take to answer a probe before it counts as unavailable: well
/// inside a kubelet's default probe timeout (1 s), so a dependency that hangs, rather than
/// refuses, is reported as such instead of making the whole answer late.
const PROBE_TIMEOUT: Duration = Duration::from_millis(700);
/// How long one round of probes answers every `/readyz` call: the endpoint is open to anyone,
/// and must not turn a flood of calls into a flood of KMS or scanner requests.
const REUSE_FOR: Duration = Duration::from_secs(1);
/// A key no upload is ever stored under, asked for to see the object store answer.
const STORAGE_PROBE_KEY: &str = "readiness-probe";

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// What each dependency answered, by name, and what that makes the service.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Readiness {
    /// `ok`; `degraded` when only dependencies that do not decide readiness are unavailable
    /// (the answer is still 200); `unavailable` (503) when one that decides it is.
    #[schema(example = "ok")]
    pub status: &'static str,
    /// The metadata database: `ok` or `unavailable`.
    pub database: &'static str,
    /// The object store.
    pub storage: &'static str,
    /// The key service that wraps data keys.
    pub kms: &'static str,
    /// The event queue, or `not-configured` when events stay in the outbox.
    pub queue: &'static str,
    /// The malware scanner, or `not-configured` when scanning is off.
    pub scanner: &'static str,
    /// The dependencies whose being unavailable makes the service unready: the queue never
    /// does (events wait in the outbox), nor a scanner configured to fail open.
    pub decides_readiness: Vec<&'static str>,
}

impl Readiness {
    /// What is answered when a round itself failed: nothing is known to be up.
    fn unknown() -> Self {
        Self {
            status: "unavailable",
            database: "unavailable",
            storage: "unavailable",
            kms: "unavailable",
            queue: "unavailable",
            scanner: "unavailable",
            decides_readiness: vec!["database", "storage", "kms"],
        }
    }
}

/// The dependencies `/readyz` asks, and its last answer.
#[derive(Debug)]
pub struct Probes {
    pub database: Arc<dyn PackageStore>,
    pub storage: Arc<dyn BlobStore>,
    pub kms: Arc<dyn KeyService>,
    pub queue: Option<Arc<dyn Notifier>>,
    pub scanner: Option<Arc<dyn MalwareScanner>>,
    /// Whether a scanner that does not answer makes the service unready (it fails closed).
    pub scanner_decides: bool,
    last: Mutex<Option<(Instant, Readiness)>>,
}

/// `ok`, or `unavailable` if the probe failed or outlasted [`PROBE_TIMEOUT`].
async fn probe<T>(name: &str, check: impl Future<Output = udim_ports::Result<T>>) -> &'static str {
    match tokio::time::timeout(PROBE_TIMEOUT, check).await {
        Ok(Ok(_)) => "ok",
        Ok(Err(e)) => {
            tracing::warn!(dependency = name, error = %e, "readiness probe failed");
            "unavailable"
        }
        Err(_) => {
            tracing::warn!(dependency = name, timeout = ?PROBE_TIMEOUT, "readiness probe timed out");
            "unavailable"
        }
    }
}

impl Probes {
    pub fn new(
        database: Arc<dyn PackageStore>,
        storage: Arc<dyn BlobStore>,
        kms: Arc<dyn KeyService>,
        queue: Option<Arc<dyn Notifier>>,
        scanner: Option<Arc<dyn MalwareScanner>>,
        scanner_decides: bool,
    ) -> Self {
        Self {
            database,
            storage,
            kms,
            queue,
            scanner,
            scanner_decides,
            last: Mutex::new(None),
        }
    }

    /// Every dependency asked at once, each within [`PROBE_TIMEOUT`]; one round at a time,
    /// its answer reused for [`REUSE_FOR`]. The round runs on a task of its own, so a caller
    /// that goes away does not cut it short and leave nothing for the next one.
    pub async fn check(self: Arc<Self>) -> Readiness {
        let round = tokio::spawn(async move { self.round().await });
        round.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "a readiness round failed");
            Readiness::unknown()
        })
    }

    async fn round(&self) -> Readiness {
        let mut last = self.last.lock().await;
        if let Some((at, readiness)) = last.as_ref()
            && at.elapsed() < REUSE_FOR
        {
            return readiness.clone();
        }
        let (database, storage, kms, queue, scanner) = tokio::join!(
            probe("database", self.database.ping()),
            probe("storage", self.storage.exists(STORAGE_PROBE_KEY)),
            probe("kms", self.kms.ping()),
            async {
                match &self.queue {
                    Some(queue) => probe("queue", queue.ping()).await,
                    None => "not-configured",
                }
            },
            async {
                match &self.scanner {
                    Some(scanner) => probe("scanner", scanner.ping()).await,
                    None => "not-configured",
                }
            },
        );
        let mut decides_readiness = vec!["database", "storage", "kms"];
        if self.scanner.is_some() && self.scanner_decides {
            decides_readiness.push("scanner");
        }
        let answers = [
            ("database", database),
            ("storage", storage),
            ("kms", kms),
            ("queue", queue),
            ("scanner", scanner),
        ];
        let unavailable = |deciding: bool| {
            answers
                .iter()
                .any(|(name, answer)| *answer == "unavailable" && decides_readiness.contains(name) == deciding)
        };
        let status = if unavailable(true) {
            "unavailable"
        } else if unavailable(false) {
            "degraded"
        } else {
            "ok"
        };
        let readiness = Readiness {
            status,
            database,
            storage,
            kms,
            queue,
            scanner,
            decides_readiness,
        };
        *last = Some((Instant::now(), readiness.clone()));
        readiness
    }
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Each dependency by name: 200 when every one that decides readiness answers (`degraded`
/// if another does not), 503 when one of them does not. Probes are bounded at 700 ms each
/// and their answer is reused for a second.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness))
)]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let readiness = state.probes.clone().check().await;
    let status = if readiness.status == "unavailable" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(readiness))
}
