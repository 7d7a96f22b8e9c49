//! The connection loop: accept, set `TCP_NODELAY`, serve HTTP/1.1 or HTTP/2 (h2c by
//! prior knowledge) with upgrades, and drain on shutdown.
//!
//! Written on hyper-util rather than `axum::serve` so that the listener, connection
//! limit and timeouts are ours. A connection must start its first request within the
//! header-read timeout: hyper's own timeout only runs once it knows the protocol, so a
//! client that connects and sends nothing (or half an HTTP/2 preface) would otherwise
//! hold its connection slot forever. Like mini-redis's `server::run`, it takes its listener
//! and a shutdown signal, so tests serve on port 0 and stop deterministically.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::metrics::Metrics;

/// Serves until `shutdown` is cancelled, then waits up to `drain` for open
/// connections to finish (SSE responses end by themselves on the same signal).
/// `header_read_timeout` bounds how long a client may take to send a request's
/// headers, and a new connection to start its first request.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    max_connections: usize,
    header_read_timeout: Duration,
    drain: Duration,
    metrics: Arc<Metrics>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let connections = TaskTracker::new();
    let limit = Arc::new(Semaphore::new(max_connections.max(1)));

    loop {
        // A free connection slot first: past the limit, clients wait in the backlog.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "could not set TCP_NODELAY");
        }
        // Cancelled by the connection's first request.
        let requested = CancellationToken::new();
        let seen = requested.clone();
        let service = router
            .clone()
            .map_request(move |request: Request<Incoming>| {
                if !seen.is_cancelled() {
                    seen.cancel();
                }
                request
            });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        let open = OpenConnection::new(metrics.clone());
        connections.spawn(async move {
            let silent = async {
                tokio::select! {
                    _ = requested.cancelled() => std::future::pending().await,
                    _ = tokio::time::sleep(header_read_timeout) => {}
                }
            };
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                _ = silent => {
                    tracing::debug!(%peer, "no request within the header-read timeout; closing");
                }
            }
            drop(open);
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain) => {
            tracing::warn!(open = connections.len(), "connections still open after the drain time; closing them");
        }
    }
}

/// Counts open connections for `/metrics`, however the connection ends.
struct OpenConnection(Arc<Metrics>);

impl OpenConnection {
    fn new(metrics: Arc<Metrics>) -> Self {
        metrics.connection_opened();
        OpenConnection(metrics)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}
