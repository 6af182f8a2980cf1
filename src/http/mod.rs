//! The HTTP API (axum). Every route is registered through utoipa so `/openapi.json` always
//! describes exactly what is served.

mod admin;
mod consents;
pub mod extract;
pub(crate) mod health;
mod ledger;
mod me;
mod pace;
mod packages;
pub mod problem;
pub mod request_id;
pub mod serve;
mod uploads;

use std::sync::Arc;

use axum::Router;
use axum::http::Uri;
use tokio::sync::Notify;
use udim_ports::metadata::{Outbox, PackageStore};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Authenticator;
use crate::consent::ConsentService;
use crate::consent::signer::LedgerSigner;
use crate::pipeline::ingest::Ingestor;
use problem::{ApiError, ProblemCode};

/// Everything a handler needs, cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub auth: Arc<Authenticator>,
    pub consents: ConsentService,
    pub ledger_signer: Arc<LedgerSigner>,
    pub packages: Arc<dyn PackageStore>,
    pub outbox: Arc<dyn Outbox>,
    /// The dependencies `/readyz` reports on.
    pub probes: Arc<health::Probes>,
    pub ingest: Arc<Ingestor>,
    pub reader: Arc<crate::pipeline::read::ContentReader>,
    pub resumable: Arc<crate::pipeline::resumable::Resumable>,
    /// Wakes the outbox relay after a commit that wrote an event.
    pub relay_wake: Arc<Notify>,
    pub eraser: Arc<crate::pipeline::erasure::Eraser>,
    /// Renders `GET /metrics`; `None` when metrics are off.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    pub admission: Arc<crate::pipeline::admission::Admission>,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "UDIM",
        description = "User Data Ingestion Module: consented, encrypted, verifiable ingestion of personal data.",
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "consents", description = "Consent grants and withdrawals, appended to the ledger"),
        (name = "ledger", description = "The verifiable consent log: checkpoints and proofs"),
        (name = "packages", description = "Uploads and their metadata"),
        (name = "uploads", description = "Resumable uploads (tus 1.0.0)"),
        (name = "me", description = "The caller's own data: erasure and export"),
        (name = "admin", description = "Operator endpoints"),
        (name = "operations", description = "Health and readiness"),
    )
)]
struct ApiDoc;

/// The largest JSON request body accepted (413 beyond it).
const JSON_BODY_LIMIT: usize = 64 * 1024;

/// The router and the OpenAPI document it implements.
pub fn router(state: AppState) -> Router {
    let (router, mut api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(consents::grant, consents::list))
        .routes(routes!(consents::withdraw))
        .routes(routes!(consents::update))
        .routes(routes!(consents::proof))
        .routes(routes!(ledger::checkpoint))
        .routes(routes!(ledger::key))
        .routes(routes!(ledger::consistency))
        .routes(routes!(ledger::entries))
        .routes(routes!(packages::upload, packages::list))
        .routes(routes!(packages::get, packages::delete))
        .routes(routes!(me::erase))
        .routes(routes!(me::export))
        .routes(routes!(me::archive))
        .routes(routes!(packages::content))
        .routes(routes!(uploads::options, uploads::create))
        .routes(routes!(uploads::head, uploads::patch, uploads::terminate))
        .routes(routes!(admin::outbox))
        .split_for_parts();
    problem::document_problems(&mut api);
    let api = Arc::new(api);
    let router = match state.metrics.clone() {
        Some(handle) => router.route(
            "/metrics",
            axum::routing::get(move || crate::ops::metrics::render(handle.clone())),
        ),
        None => router,
    };
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let api = api.clone();
                async move { axum::Json(api.as_ref().clone()) }
            }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // JSON request bodies (consents) are small; uploads stream and are not held to it.
        .layer(axum::extract::DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            state.resumable.draining.clone(),
            drain_gate,
        ))
        .layer(axum::middleware::from_fn(uploads::tus_resumable_on_every_answer))
        .layer(axum::middleware::from_fn(crate::ops::metrics::track))
        .with_state(state)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(ProblemCode::NotFound, format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: Uri) -> ApiError {
    ApiError::new(
        ProblemCode::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// How a request's time is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Budget {
    /// It streams a body in or out, or may finish a complete tus upload (a HEAD may): bounded
    /// by the body's idle timeout and minimum rate, and by its own work.
    Streams,
    /// A change that does not stream: it runs to completion on its own task, whatever the
    /// client does, so that no deadline or dropped connection cuts it between two of its
    /// steps (a package erased whose receipt is never recorded, a consent appended whose
    /// answer is lost and is appended again on retry). Its steps are bounded by the
    /// database's and the providers' own timeouts.
    Completes,
    /// Every other read: answered within the whole-request deadline.
    Deadline,
}

fn budget(method: &axum::http::Method, path: &str) -> Budget {
    use axum::http::Method;
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let streams = matches!(
        (method, segments.as_slice()),
        (&Method::POST, ["", "v1", "packages"] | ["", "v1", "uploads"])
            | (&Method::PATCH | &Method::HEAD, ["", "v1", "uploads", _])
            | (
                &Method::GET,
                ["", "v1", "packages", _, "content"] | ["", "v1", "me", "export", ..]
            )
    );
    if streams {
        Budget::Streams
    } else if matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE) {
        Budget::Completes
    } else {
        Budget::Deadline
    }
}

/// What [`deadline`] needs: the read deadline, and the tracker of change tasks, which
/// shutdown closes and waits for before it closes the database under them.
#[derive(Debug, Clone)]
pub struct Deadlines {
    pub limit: std::time::Duration,
    pub changes: tokio_util::task::TaskTracker,
}

/// The routes [`drain_gate`] lets through.
pub(crate) const STILL_ANSWERED_WHILE_DRAINING: [&str; 2] = ["/healthz", "/metrics"];

/// Once shutdown has begun, a request that arrives is answered 503 `shutting-down` with
/// `Retry-After` and its connection closed, rather than refused at connect: the client
/// (or the load balancer) learns to go to another replica, while the uploads already in
/// flight finish.
pub async fn drain_gate(
    axum::extract::State(draining): axum::extract::State<tokio_util::sync::CancellationToken>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // Liveness and the metrics scrape go on answering while the replica drains.
    if !draining.is_cancelled() || STILL_ANSWERED_WHILE_DRAINING.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let mut response = ApiError::new(
        ProblemCode::ShuttingDown,
        "this replica is shutting down; retry after `Retry-After`, another replica will answer",
    )
    .into_response();
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// The exact cap on a request head (`server.max_header_bytes`), counted as HTTP/1.1 sends it:
/// hyper's own bound is its read buffer, which it may fill past the cap, so a head up to about
/// twice the cap would otherwise get through.
pub async fn head_size(
    axum::extract::State(max_bytes): axum::extract::State<usize>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // "METHOD target HTTP/1.1\r\n", each "name: value\r\n", and the closing "\r\n".
    let line = request.method().as_str().len() + request.uri().to_string().len() + 12;
    let fields: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let size = line + fields + 2;
    if size > max_bytes {
        return ApiError::new(
            ProblemCode::RequestHeadTooLarge,
            format!("the request head is {size} bytes, over the {max_bytes}-byte limit"),
        )
        .into_response();
    }
    next.run(request).await
}

/// The whole-request deadline (`server.request_timeout_secs`) for reads, and completion for
/// changes (see [`Budget`]). A read that outlives the deadline is answered 503
/// `request-timeout` (its work is dropped as if the client had gone away).
pub async fn deadline(
    axum::extract::State(Deadlines { limit, changes }): axum::extract::State<Deadlines>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use tracing::Instrument as _;
    match budget(request.method(), request.uri().path()) {
        Budget::Streams => next.run(request).await,
        Budget::Completes => match changes
            .spawn(next.run(request).instrument(tracing::Span::current()))
            .await
        {
            Ok(response) => response,
            Err(e) => {
                tracing::error!(error = %e, "a request's task failed");
                ApiError::new(ProblemCode::Internal, "the request failed").into_response()
            }
        },
        Budget::Deadline => match tokio::time::timeout(limit, next.run(request)).await {
            Ok(response) => response,
            Err(_) => ApiError::new(
                ProblemCode::RequestTimeout,
                format!("the request took longer than {} s", limit.as_secs()),
            )
            .into_response(),
        },
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    #[test]
    fn streams_run_free_changes_complete_and_reads_have_a_deadline() {
        use super::Budget;
        for (method, path, expected) in [
            (Method::POST, "/v1/packages", Budget::Streams),
            (Method::POST, "/v1/uploads", Budget::Streams),
            (Method::PATCH, "/v1/uploads/0192", Budget::Streams),
            (Method::HEAD, "/v1/uploads/0192", Budget::Streams),
            (Method::GET, "/v1/packages/0192/content", Budget::Streams),
            (Method::GET, "/v1/me/export", Budget::Streams),
            (Method::GET, "/v1/me/export/archive", Budget::Streams),
            (Method::DELETE, "/v1/me", Budget::Completes),
            (Method::DELETE, "/v1/packages/0192", Budget::Completes),
            (Method::POST, "/v1/consents", Budget::Completes),
            (Method::PUT, "/v1/consents/documents", Budget::Completes),
            (Method::DELETE, "/v1/uploads/0192", Budget::Completes),
            (Method::POST, "/v1/admin/rotate-key", Budget::Completes),
            (Method::GET, "/v1/packages", Budget::Deadline),
            (Method::GET, "/v1/packages/0192", Budget::Deadline),
            (Method::GET, "/v1/ledger/entries", Budget::Deadline),
            (Method::GET, "/v1/packages/0192/content/x", Budget::Deadline),
            (Method::OPTIONS, "/v1/uploads", Budget::Deadline),
        ] {
            assert_eq!(super::budget(&method, path), expected, "{method} {path}");
        }
    }
}
