//! The HTTP API (axum). Every route is registered through utoipa so `/openapi.json` always
//! describes exactly what is served.

mod admin;
mod consents;
pub mod extract;
mod health;
mod ledger;
mod me;
mod packages;
pub mod problem;
pub mod serve;
mod uploads;

use std::sync::Arc;

use axum::Router;
use axum::http::Uri;
use tokio::sync::Notify;
use udim_ports::metadata::{Outbox, PackageStore};
use udim_ports::queue::Notifier;
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
    pub notifier: Option<Arc<dyn Notifier>>,
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
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
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

/// Whether a request streams a body in or out, or may run long by design (finishing a
/// complete tus upload, which a HEAD may do; erasing or exporting everything): those are
/// bounded by the body idle timeout and by their own work, every other request by the
/// whole-request deadline.
fn runs_long(method: &axum::http::Method, path: &str) -> bool {
    use axum::http::Method;
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    matches!(
        (method, segments.as_slice()),
        (&Method::POST, ["", "v1", "packages"] | ["", "v1", "uploads"])
            | (&Method::PATCH | &Method::HEAD, ["", "v1", "uploads", _])
            | (
                &Method::GET,
                ["", "v1", "packages", _, "content"] | ["", "v1", "me", "export", ..]
            )
            | (&Method::DELETE, ["", "v1", "me"])
    )
}

/// The whole-request deadline (`server.request_timeout_secs`): a request that outlives it is
/// answered 503 `request-timeout` (its work is dropped as if the client had gone away).
pub async fn deadline(
    axum::extract::State(limit): axum::extract::State<std::time::Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if runs_long(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            ProblemCode::RequestTimeout,
            format!("the request took longer than {} s", limit.as_secs()),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    #[test]
    fn only_streaming_and_bulk_routes_escape_the_request_deadline() {
        for (method, path) in [
            (Method::POST, "/v1/packages"),
            (Method::POST, "/v1/uploads"),
            (Method::PATCH, "/v1/uploads/0192"),
            (Method::HEAD, "/v1/uploads/0192"),
            (Method::GET, "/v1/packages/0192/content"),
            (Method::GET, "/v1/me/export"),
            (Method::GET, "/v1/me/export/archive"),
            (Method::DELETE, "/v1/me"),
        ] {
            assert!(super::runs_long(&method, path), "{method} {path}");
        }
        for (method, path) in [
            (Method::GET, "/v1/packages"),
            (Method::GET, "/v1/packages/0192"),
            (Method::DELETE, "/v1/packages/0192"),
            (Method::POST, "/v1/consents"),
            (Method::DELETE, "/v1/uploads/0192"),
            (Method::GET, "/v1/ledger/entries"),
            (Method::GET, "/v1/packages/0192/content/x"),
        ] {
            assert!(!super::runs_long(&method, path), "{method} {path}");
        }
    }
}
