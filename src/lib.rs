//! spool: durable, resumable LLM token streams.
//!
//! A map of the crate, in the order a token travels:
//!
//! - [`llm`] — backends behind one trait; a backend yields token text.
//! - [`engine`] — admits a stream, runs its generation task, numbers its events.
//! - [`store`] — SQLite: the group-commit writer ([`store::EventLog`]) and the read side.
//! - [`hub`] — after commit, live fan-out of events to readers.
//! - [`feed`] — one reader's replay-then-follow view of a stream.
//! - [`http`] — the API; [`http::sse`] writes the wire format.
//! - [`server`] — the accept loop ([`tls`] when a certificate is set); [`app`] wires it
//!   all and shuts it down in order.
//! - [`config`] — every setting, as flags and environment variables.

pub mod app;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod event;
pub mod feed;
pub mod http;
pub mod hub;
pub mod ids;
pub mod llm;
pub mod metrics;
pub mod server;
pub mod store;
pub mod tls;

use std::future::Future;

pub use app::Spool;
pub use config::ServeConfig;

/// Starts spool on `config.addr` and serves until `shutdown` resolves.
pub async fn run(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context;
    raise_fd_limit();
    let listener =
        listen(config.addr).with_context(|| format!("cannot listen on {}", config.addr))?;
    Spool::start(config).await?.serve(listener, shutdown).await
}

/// Connections the kernel may hold before `accept`: a burst of hundreds of clients
/// must not find a full queue (the default of 128 drops SYNs, which costs a client
/// a one-second retransmit).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listening socket with [`LISTEN_BACKLOG`] and `SO_REUSEADDR`.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Each SSE reader is a socket: lift the soft open-file limit to the hard one.
#[allow(unsafe_code)]
fn raise_fd_limit() {
    #[cfg(unix)]
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
