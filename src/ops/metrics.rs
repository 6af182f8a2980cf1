//! Prometheus metrics, served at `GET /metrics` in the text exposition format. The `metrics`
//! facade is process-wide, so the recorder is installed once and every application in the
//! process (tests run several) shares it.
//!
//! Labels have bounded values only: route templates (never raw paths), methods, status codes
//! and fixed outcome names; never user ids, package ids or file names.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "udim_http_requests_total";
pub const HTTP_DURATION: &str = "udim_http_request_duration_seconds";
pub const UPLOADS: &str = "udim_uploads_total";
pub const UPLOAD_BYTES: &str = "udim_upload_bytes_total";
pub const PACKAGES_DELETED: &str = "udim_packages_deleted_total";
pub const READ_INTEGRITY_FAILURES: &str = "udim_read_integrity_failures_total";
pub const EVENTS_PUBLISHED: &str = "udim_events_published_total";
pub const EVENT_FAILURES: &str = "udim_event_publish_failures_total";
pub const LEDGER_ENTRIES: &str = "udim_ledger_entries_appended_total";
pub const LEDGER_FAILURES: &str = "udim_ledger_append_failures_total";
pub const LEDGER_BATCH: &str = "udim_ledger_batch_entries";
pub const LEDGER_APPEND_DURATION: &str = "udim_ledger_append_duration_seconds";
pub const LEDGER_SIZE: &str = "udim_ledger_size";
pub const UPLOAD_BUFFER_WAITS_EXPIRED: &str = "udim_upload_buffer_waits_expired_total";

/// Seconds: from a health probe to a multi-gigabyte upload.
const SECONDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];
/// Entries per ledger batch, up to the largest `ledger.max_batch`.
const BATCH: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus recorder, installed on first call; `None` when something else
/// already owns the `metrics` facade (then this service's metrics go there).
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(LEDGER_BATCH.into()), BATCH));
            match builder.map(PrometheusBuilder::install_recorder) {
                Ok(Ok(handle)) => {
                    describe();
                    Some(handle)
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "metrics: another recorder is installed; /metrics stays empty");
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: bad histogram buckets");
                    None
                }
            }
        })
        .clone()
}

/// The `# HELP` lines.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(HTTP_REQUESTS, "HTTP requests by method, route template and status");
    describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "HTTP request time until the response headers"
    );
    describe_counter!(
        UPLOADS,
        "Uploads by outcome: stored, quarantined, refused (4xx), failed (5xx)"
    );
    describe_counter!(UPLOAD_BYTES, metrics::Unit::Bytes, "Plaintext bytes of stored packages");
    describe_counter!(
        PACKAGES_DELETED,
        "Packages erased, by reason: user_request or retention_expired"
    );
    describe_counter!(
        READ_INTEGRITY_FAILURES,
        "Reads cut because a stored object failed authentication (tampering or corruption)"
    );
    describe_counter!(EVENTS_PUBLISHED, "Outbox events the queue accepted");
    describe_counter!(
        EVENT_FAILURES,
        "Outbox event publications that failed and will be retried"
    );
    describe_counter!(LEDGER_ENTRIES, "Consent ledger entries appended");
    describe_counter!(
        UPLOAD_BUFFER_WAITS_EXPIRED,
        "Uploads refused (503) because the upload buffer budget stayed full past the body idle timeout"
    );
    describe_counter!(LEDGER_FAILURES, "Consent ledger batches that failed to append");
    describe_histogram!(LEDGER_BATCH, "Entries per appended ledger batch");
    describe_histogram!(
        LEDGER_APPEND_DURATION,
        metrics::Unit::Seconds,
        "Time to append and sign one ledger batch"
    );
    describe_gauge!(LEDGER_SIZE, "Entries in the consent ledger at the last append");
}

/// `GET /metrics`.
pub async fn render(handle: PrometheusHandle) -> Response {
    // Histograms and summaries are only drained into the rendered state by upkeep.
    handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        handle.render(),
    )
        .into_response()
}

/// Counts every request by method, route template and status, and times it (for streamed
/// responses, until the headers are ready).
pub async fn track(request: Request, next: Next) -> Response {
    let start = Instant::now();
    // Any token is a valid HTTP method: an unknown one must not mint a new series.
    let method: &'static str = match *request.method() {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!(HTTP_DURATION, "method" => method, "route" => route).record(start.elapsed().as_secs_f64());
    response
}
