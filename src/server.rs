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
//! Later, a connection with nothing open — no request whose response is still being
//! written — for the idle timeout (`SPOOL_HTTP2_IDLE_TIMEOUT`) is shut down gracefully
//! (HTTP/2: a GOAWAY; HTTP/1.1: closed between requests), so one `/healthz` cannot hold a
//! slot forever. A WebSocket over HTTP/2 is not counted as open (its stream outlives
//! its response), but a GOAWAY lets open streams finish, so it is not cut. HTTP/2
//! connections are also pinged (`SPOOL_HTTP2_PING_INTERVAL`): a peer that does not
//! answer within as long again is closed.
//!
//! **Architecture Invariant:** the accept loop never waits on a client. The TLS
//! handshake runs in the connection's own task, under a timeout, so a client that opens
//! a socket and sends nothing holds one connection slot for that long and blocks no one.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::http::Request;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
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
    /// A connection with nothing open this long is shut down; zero: never.
    pub idle_timeout: Duration,
    /// HTTP/2 keepalive: a PING after this long without a frame, the peer closed if it
    /// does not answer within as long again; zero: no pings.
    pub ping_interval: Duration,
    /// How long open connections may take to finish after shutdown.
    pub drain: Duration,
    pub metrics: Arc<Metrics>,
}

/// The timeouts of one connection.
#[derive(Clone, Copy)]
struct Timeouts {
    first_request: Duration,
    idle: Duration,
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
        idle_timeout,
        ping_interval,
        drain,
        metrics,
    } = options;
    let timeouts = Timeouts {
        first_request: header_read_timeout,
        idle: idle_timeout,
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let mut http2 = builder.http2();
    http2.timer(TokioTimer::new()).enable_connect_protocol();
    if !ping_interval.is_zero() {
        http2
            .keep_alive_interval(ping_interval)
            .keep_alive_timeout(ping_interval);
    }
    let builder = Arc::new(builder);
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
                return serve_connection(&builder, io, router, &shutdown, peer, timeouts).await;
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
            serve_connection(&builder, io, router, &shutdown, peer, timeouts).await;
        });
    }
    drop(listener);
    connections.close();
    // Every connection was told to shut down gracefully by the same signal.
    tokio::select! {
        _ = connections.wait() => {}
        _ = tokio::time::sleep(drain) => {
            tracing::warn!(open = connections.len(), "connections still open after the drain time; closing them");
        }
    }
}

/// Serves HTTP on one accepted connection (cleartext or TLS) until it ends: shut down
/// gracefully at `shutdown` or after the idle timeout, dropped if no request starts
/// within the first-request timeout.
async fn serve_connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    router: Router,
    shutdown: &CancellationToken,
    peer: std::net::SocketAddr,
    timeouts: Timeouts,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (open_tx, open) = watch::channel(0usize);
    let open_tx = Arc::new(open_tx);
    // Cancelled by the connection's first request.
    let requested = CancellationToken::new();
    let seen = requested.clone();
    // Every request counts as open until its response body is dropped (written, or the
    // client gone).
    let service = tower::service_fn(move |request: Request<Incoming>| {
        if !seen.is_cancelled() {
            seen.cancel();
        }
        let guard = OpenRequest::new(open_tx.clone());
        let router = router.clone();
        async move {
            let response = router.oneshot(request).await?;
            Ok::<_, Infallible>(response.map(|body| {
                Body::new(Counted {
                    body,
                    _guard: guard,
                })
            }))
        }
    });
    let connection = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(service));
    tokio::pin!(connection);
    let silent = async {
        tokio::select! {
            _ = requested.cancelled() => std::future::pending().await,
            _ = tokio::time::sleep(timeouts.first_request) => {}
        }
    };
    let idle = idle_for(open, timeouts.idle);
    tokio::pin!(silent, idle);
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = &mut idle, if !closing => {
                tracing::debug!(%peer, "connection idle past the idle timeout; closing");
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = &mut silent => {
                tracing::debug!(%peer, "no request within the header-read timeout; closing");
                return;
            }
        }
    }
}

/// Resolves once `open` has stayed at zero for `after` (never if `after` is zero).
async fn idle_for(mut open: watch::Receiver<usize>, after: Duration) {
    if after.is_zero() {
        return std::future::pending().await;
    }
    loop {
        if open.wait_for(|n| *n == 0).await.is_err() {
            return std::future::pending().await;
        }
        tokio::select! {
            _ = tokio::time::sleep(after) => return,
            // Any request meanwhile starts the count again.
            _ = open.changed() => {}
        }
    }
}

/// One request of a connection, counted as open while it lives.
struct OpenRequest(Arc<watch::Sender<usize>>);

impl OpenRequest {
    fn new(open: Arc<watch::Sender<usize>>) -> Self {
        open.send_modify(|n| *n += 1);
        OpenRequest(open)
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A response body that keeps its request counted as open until it is dropped.
struct Counted {
    body: Body,
    _guard: OpenRequest,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
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
