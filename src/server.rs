//! The connection loop: accept, set `TCP_NODELAY`, optionally complete a TLS handshake,
//! serve HTTP/1.1 or HTTP/2 with upgrades, and drain on shutdown.
//!
//! Written on hyper-util rather than `axum::serve` so that the listener, connection
//! limit and timeouts are ours. Like mini-redis's `server::run`, it takes its listener
//! and a shutdown signal, so tests serve on port 0 and stop deterministically.
//!
//! One port serves both protocols. In cleartext, HTTP/2 is by prior knowledge (h2c);
//! over TLS, ALPN offers `h2` and `http/1.1`. Either way the connection sniffs the
//! HTTP/2 preface. HTTP/2 allows extended CONNECT (RFC 8441), so a WebSocket can share
//! a connection with a page's SSE streams.
//!
//! A connection must start its first request within the header-read timeout: hyper's
//! own timeout only runs once it knows the protocol, so a client that connects and sends
//! nothing (or half an HTTP/2 preface) would otherwise hold its connection slot forever.
//!
//! **Architecture Invariant:** the accept loop never waits on a client. The TLS
//! handshake runs in the connection's own task, under a timeout, so a client that opens
//! a socket and sends nothing holds one connection slot for that long and blocks no one.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::metrics::Metrics;
use crate::tls::Tls;

/// How the server treats connections.
pub struct Options {
    /// With it, every connection speaks TLS.
    pub tls: Option<Tls>,
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, and a new connection
    /// to start its first request.
    pub header_read_timeout: Duration,
    /// How long open connections may take to finish after shutdown.
    pub drain: Duration,
    pub metrics: Arc<Metrics>,
}

/// Serves until `shutdown` is cancelled, then waits up to `options.drain` for open
/// connections to finish (SSE responses end by themselves on the same signal).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    options: Options,
) {
    let Options {
        tls,
        max_connections,
        header_read_timeout,
        drain,
        metrics,
    } = options;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol();
    let builder = Arc::new(builder);
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
        // Taken here, before the task runs, so a shutdown that starts meanwhile still
        // reaches this connection (see `GracefulShutdown::watcher`).
        let watcher = graceful.watcher();
        let (builder, router, tls, shutdown) = (
            builder.clone(),
            router.clone(),
            tls.clone(),
            shutdown.clone(),
        );
        let open = OpenConnection::new(metrics.clone());
        connections.spawn(async move {
            let _slot = (permit, open);
            let Some(tls) = tls else {
                let io = TokioIo::new(tcp);
                return serve_connection(&builder, io, router, watcher, peer, header_read_timeout)
                    .await;
            };
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                handshake = tls.handshake(tcp) => match handshake {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                },
            };
            let io = TokioIo::new(stream);
            serve_connection(&builder, io, router, watcher, peer, header_read_timeout).await;
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

/// Serves HTTP on one accepted connection (cleartext or TLS) until it ends, or until
/// `first_request` passes without a request.
async fn serve_connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    router: Router,
    watcher: Watcher,
    peer: std::net::SocketAddr,
    first_request: Duration,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // Cancelled by the connection's first request.
    let requested = CancellationToken::new();
    let seen = requested.clone();
    let service = router.map_request(move |request: Request<Incoming>| {
        if !seen.is_cancelled() {
            seen.cancel();
        }
        request
    });
    let connection = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(service));
    let silent = async {
        tokio::select! {
            _ = requested.cancelled() => std::future::pending().await,
            _ = tokio::time::sleep(first_request) => {}
        }
    };
    tokio::select! {
        result = watcher.watch(connection) => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = silent => {
            tracing::debug!(%peer, "no request within the header-read timeout; closing");
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
