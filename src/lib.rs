//! spool: durable, resumable LLM token streams.
//!
//! A map of the crate, in the order a token travels:
//!
//! - [`config`] — every setting, as flags and environment variables, in parts.
//! - [`llm`] — backends behind one trait; a backend yields token text.
//! - `engine` — the one start path (admission, sessions' turns), the cursor rule, a
//!   stream's generation task, cancel, delete, and the reads every surface uses.
//! - [`store`] — SQLite or PostgreSQL: the group-commit writer ([`store::EventLog`]) and
//!   the read side.
//! - [`hub`] — after commit, live fan-out of events to readers.
//! - `feed` — one reader's replay-then-follow view of a stream.
//! - `cluster` — several nodes on one PostgreSQL database: leases, sweeps, `LISTEN`.
//! - [`http`] — the API surfaces (native, WebSocket, OpenAI) over the engine; each
//!   surface writes the engine's events in its own wire format.
//! - `server` — the accept loop (`tls` when a certificate is set).
//! - [`app`] — assembles the parts, serves, and shuts them down in order; [`fatal`] —
//!   the conditions that stop the process, and their exit statuses.
//! - [`cli`] — the client commands `spool generate` / `spool tail`.
//! - [`event`], [`ids`], [`metrics`] — the vocabulary, stream ids, and `/metrics`;
//!   `answer` — an answer (text, reasoning, tool calls) assembled from its events.
//!
//! What is public is public on purpose: what `main` runs, what the tests and the load
//! tool build a server or a store from ([`Spool`], [`config`], [`store`], [`hub`],
//! [`metrics`], [`llm`], [`event`], [`ids`]), and the parsers of client input the fuzz
//! targets drive ([`http::inputs`]). Everything else is crate-private.

mod answer;
pub mod app;
pub mod cli;
mod cluster;
pub mod config;
mod ds;
mod engine;
pub mod event;
pub mod fatal;
mod feed;
pub mod http;
pub mod hub;
pub mod ids;
pub mod llm;
pub mod metrics;
mod server;
pub mod store;
mod subscription;
mod tls;

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
    let listener = listen(config.server.addr)
        .with_context(|| format!("cannot listen on {}", config.server.addr))?;
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
