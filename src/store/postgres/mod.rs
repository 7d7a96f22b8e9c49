//! The PostgreSQL store: one database shared by several spool nodes.
//!
//! Opening it migrates the database (`migrations/postgres`; sqlx's migrator takes an
//! advisory lock, so nodes starting together migrate once) and takes this node's lease
//! before anything is served. Start-up recovery covers only the streams this node's id
//! left open (a restart under the same id, see [`cluster::recover_own`]); those of a
//! dead node are found by the lease sweeper of a survivor ([`cluster`]).

pub mod batch;
pub mod cluster;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

use super::Unfinished;

pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The channel that carries "these streams have new committed events".
pub const EVENTS_CHANNEL: &str = "spool_events";
/// The channel that carries "cancel this stream", to whichever node runs it.
pub const CANCEL_CHANNEL: &str = "spool_cancel";

pub(super) struct Opened {
    pub write: PgConnection,
    /// How the writer reconnects.
    pub write_options: PgConnectOptions,
    /// Just before the lease was taken.
    pub leased_at: std::time::Instant,
    pub pool: PgPool,
    pub read_token_secret: Vec<u8>,
    /// Streams this node's id left open that its backend can continue.
    pub unfinished: Vec<Unfinished>,
}

/// Connection options from `url`, with statement logging off (tokens are not logs).
pub fn options(url: &str) -> anyhow::Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url)
        .with_context(|| format!("invalid DATABASE_URL {url:?}"))?
        .disable_statement_logging())
}

pub(super) async fn open(
    url: &str,
    node: &str,
    incarnation: &str,
    lease: Duration,
    continuable: &dyn Fn(&str) -> bool,
) -> anyhow::Result<Opened> {
    let base = options(url)?;
    let shown = redact(url);
    // A node stopped in the middle of a transaction (SIGSTOP, a frozen VM) would hold
    // its lease's row lock, and no survivor could take its streams: the server ends
    // such a session itself. The writer never pauses inside a transaction.
    let idle = (lease / 2).clamp(Duration::from_millis(500), Duration::from_secs(5));
    let write_options = base
        .clone()
        .application_name(&format!("spool-writer-{node}"))
        .options([(
            "idle_in_transaction_session_timeout",
            idle.as_millis().to_string(),
        )]);
    let mut write = write_options
        .clone()
        .connect()
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {shown}"))?;
    MIGRATOR
        .run(&mut write)
        .await
        .with_context(|| format!("cannot migrate the PostgreSQL database at {shown}"))?;
    let read_token_secret = read_token_secret(&mut write)
        .await
        .context("the read-token secret")?;
    // The lease first: a stream this node creates must never belong to a node that
    // has no row, or a sweeper would take it for an orphan.
    let leased_at = std::time::Instant::now();
    cluster::take_lease(&mut write, node, incarnation, lease)
        .await
        .context("taking this node's lease")?;
    let recovered = cluster::recover_own(&mut write, node, continuable)
        .await
        .context("start-up recovery")?;
    if !recovered.ended.is_empty() {
        tracing::warn!(
            streams = recovered.ended.len(),
            "ended streams a previous process of this node left running (interrupted)"
        );
    }
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(base.application_name(&format!("spool-{node}")))
        .await
        .with_context(|| format!("cannot open connections to PostgreSQL at {shown}"))?;
    Ok(Opened {
        write,
        write_options,
        leased_at,
        pool,
        read_token_secret,
        unfinished: recovered.claimed,
    })
}

/// `url` without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

async fn read_token_secret(conn: &mut PgConnection) -> anyhow::Result<Vec<u8>> {
    let fresh = super::fresh_secret()?;
    let mut tx = conn.begin().await?;
    sqlx::query(
        "INSERT INTO settings (name, value) VALUES ('read_token_secret', $1) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(&fresh[..])
    .execute(&mut *tx)
    .await?;
    let (secret,): (Vec<u8>,) =
        sqlx::query_as("SELECT value FROM settings WHERE name = 'read_token_secret'")
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("postgres://spool:secret@db:5432/spool"),
            "postgres://spool:***@db:5432/spool"
        );
        assert_eq!(
            redact("postgres://127.0.0.1/test"),
            "postgres://127.0.0.1/test"
        );
        assert_eq!(redact("postgres://u@h/d"), "postgres://u@h/d");
    }
}
