//! The HTTP transport: accepting connections and serving the router on them, with the
//! limits a public endpoint needs before any handler or authentication runs.
//!
//! axum's own `serve` sets no timer on hyper, so a connection that sends half a request line
//! is held forever. Here every connection is HTTP/1.1 (HTTP/2's protocol sniffing reads the
//! preface with no timer at all, and nothing here needs it) and has a deadline for its request
//! head from the moment it opens (which also closes idle keep-alive connections), a bounded
//! head size and header count, request bodies that may pause between reads for at most
//! `body_idle_timeout` and must keep a minimum rate, responses the client must keep reading,
//! and a cap on connections open at once; non-streaming routes get a whole-request deadline
//! in [`super::deadline`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::pace::{Pace, PacedBody, WriteIdle};

/// hyper's smallest read buffer; a head must fit the buffer, so this bounds it from below.
const MIN_HEAD_BYTES: usize = 8192;

/// The transport limits (`server.*`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub body_idle_timeout: Duration,
    pub body_min_bytes_per_sec: u64,
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown` completes; then drains: the open
/// connections finish their requests and close (the caller bounds that wait), while new
/// connections are still taken, one request each, for the router to answer 503 (see
/// [`super::drain_gate`]) instead of the kernel refusing them. Returns once every connection
/// open at shutdown has closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEAD_BYTES))
        .max_headers(limits.max_headers);
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    // Owned here so that dropping `serve` (the grace period over) aborts every connection
    // still open, releasing what its request holds (database connections, upload locks).
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let Some((stream, peer, permit)) = accept(&listener, &open, &mut shutdown).await else {
            break;
        };
        while connections.try_join_next().is_some() {}
        let watched = graceful.watch(builder.serve_connection(io(stream, limits), service(&router, limits)));
        connections.spawn(finish(watched, peer, permit));
    }
    let mut last_request = builder.clone();
    last_request.keep_alive(false);
    let mut drained = std::pin::pin!(graceful.shutdown());
    while let Some((stream, peer, permit)) = accept(&listener, &open, &mut drained).await {
        while connections.try_join_next().is_some() {}
        let connection = last_request.serve_connection(io(stream, limits), service(&router, limits));
        connections.spawn(finish(connection, peer, permit));
    }
}

/// The next connection, with its place under the cap; `None` once `until` completes.
async fn accept(
    listener: &TcpListener,
    open: &Arc<Semaphore>,
    until: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<(
    tokio::net::TcpStream,
    std::net::SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
)> {
    loop {
        // At the cap, stop accepting: new connections wait in the kernel's backlog instead
        // of taking file descriptors the open ones need.
        let permit = tokio::select! {
            permit = open.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = until.as_mut() => return None,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((stream, peer, permit));
                }
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: wait a moment
                    // rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = until.as_mut() => return None,
        }
    }
}

fn io(stream: tokio::net::TcpStream, limits: Limits) -> TokioIo<WriteIdle<tokio::net::TcpStream>> {
    TokioIo::new(WriteIdle::new(stream, limits.body_idle_timeout))
}

/// The router behind the body limits: each request body is cut when it idles past
/// `body_idle_timeout` or falls below the minimum rate.
fn service(
    router: &Router,
    limits: Limits,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    let router = router.clone();
    let (idle, min_rate) = (limits.body_idle_timeout, limits.body_min_bytes_per_sec);
    hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let request = request.map(|body| {
            let idle_cut = tower_http::timeout::TimeoutBody::new(idle, body);
            axum::body::Body::new(PacedBody::new(idle_cut, Pace::new(idle, min_rate)))
        });
        tower::ServiceExt::oneshot(router.clone(), request)
    })
}

/// Runs one connection to its end, then gives its place under the cap back.
async fn finish(
    connection: impl Future<Output = hyper::Result<()>>,
    peer: std::net::SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    if let Err(e) = connection.await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
    drop(permit);
}
