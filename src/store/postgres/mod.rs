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

use super::{StoreError, Unfinished, upgrade};

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
    /// The seed of the Ed25519 key that signs webhook deliveries.
    pub signing_seed: Vec<u8>,
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
    // Nodes starting together migrate (and convert) one at a time: the first does
    // it, the others find it done. The check for nodes of an older release runs
    // under the same lock, so it never sees a node that just upgraded as an old one.
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(UPGRADE_LOCK)
        .execute(&mut write)
        .await
        .with_context(|| format!("cannot lock the PostgreSQL database at {shown}"))?;
    let migrated = migrate(&mut write, node).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(UPGRADE_LOCK)
        .execute(&mut write)
        .await;
    migrated.with_context(|| format!("cannot migrate the PostgreSQL database at {shown}"))?;
    let read_token_secret = server_secret(&mut write, "read_token_secret")
        .await
        .context("the read-token secret")?;
    let signing_seed = server_secret(&mut write, "webhook_signing_seed")
        .await
        .context("the webhook signing key")?;
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
        signing_seed,
        unfinished: recovered.claimed,
    })
}

/// Refuses an upgrade beside nodes of an older release, migrates, converts the old
/// `events` table.
async fn migrate(conn: &mut PgConnection, node: &str) -> anyhow::Result<()> {
    refuse_mixed_upgrade(conn, node).await?;
    MIGRATOR.run(&mut *conn).await?;
    convert_events(conn)
        .await
        .context("converting the events table to chunks")?;
    Ok(())
}

/// The migration that moves events to chunks (see docs/cluster.md, "Upgrading across
/// the event log v2").
const EVENT_LOG_V2: i64 = 20261215100001;

/// Before a database written by an older release is migrated to the event log v2:
/// no node of another id may hold a live lease. A running node of the old release
/// writes `events` rows that the new one never reads (and loses them once the table
/// is converted), so old and new nodes cannot run side by side: every node is
/// stopped first, then the new release started. (An old release refuses to start on
/// a migrated database by itself: sqlx finds a migration it does not know.)
async fn refuse_mixed_upgrade(conn: &mut PgConnection, node: &str) -> anyhow::Result<()> {
    let migrated: Option<bool> = sqlx::query_scalar(
        "SELECT CASE WHEN to_regclass('_sqlx_migrations') IS NULL THEN NULL \
         ELSE true END",
    )
    .fetch_one(&mut *conn)
    .await?;
    if migrated.is_none() {
        return Ok(()); // a new database
    }
    let done: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = $1 AND success)",
    )
    .bind(EVENT_LOG_V2)
    .fetch_one(&mut *conn)
    .await?;
    if done {
        return Ok(());
    }
    let live: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM nodes WHERE expires_at > now() AND id <> $1 ORDER BY id",
    )
    .bind(node)
    .fetch_all(&mut *conn)
    .await?;
    if !live.is_empty() {
        anyhow::bail!(
            "this release changes how events are stored, and nodes of the previous release \
             still hold live leases ({}): stop every node first, then start the new \
             release (see docs/cluster.md, \"Upgrading across the event log v2\")",
            live.join(", ")
        );
    }
    Ok(())
}

/// Whether the old `events` table is still there.
const LEGACY_EXISTS: &str = "SELECT to_regclass('events') IS NOT NULL";

/// The advisory lock under which a node migrates (any number no other client of the
/// database uses).
const UPGRADE_LOCK: i64 = 0x7370_6f6f_6c5f_7632; // "spool_v2"

/// Converts the `events` table of a database written before the event log v2 into
/// chunks (see [`crate::store::upgrade`]), some streams per transaction, then drops
/// it. Run under [`UPGRADE_LOCK`].
async fn convert_events(conn: &mut PgConnection) -> Result<(), StoreError> {
    let mut converted = upgrade::Converted::default();
    loop {
        let mut tx = conn.begin().await?;
        if !sqlx::query_scalar::<_, bool>(LEGACY_EXISTS)
            .fetch_one(&mut *tx)
            .await?
        {
            return Ok(()); // nothing to convert
        }
        let ids: Vec<String> = sqlx::query_scalar("SELECT DISTINCT stream_id FROM events LIMIT $1")
            .bind(upgrade::STREAMS_PER_TRANSACTION)
            .fetch_all(&mut *tx)
            .await?;
        if ids.is_empty() {
            sqlx::query("DROP TABLE events").execute(&mut *tx).await?;
            tx.commit().await?;
            converted.log();
            return Ok(());
        }
        for id in &ids {
            let rows: Vec<upgrade::LegacyEvent> = sqlx::query_as(
                "SELECT seq, kind, data, ids FROM events WHERE stream_id = $1 ORDER BY seq",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
            let chunks = upgrade::chunks(id, &rows, &mut converted)?;
            sqlx::query(
                "INSERT INTO chunks (stream_key, first_seq, last_seq, data) \
                 SELECT s.key, v.first_seq, v.last_seq, v.data \
                 FROM UNNEST($2::bigint[], $3::bigint[], $4::bytea[]) \
                 AS v(first_seq, last_seq, data) JOIN streams s ON s.id = $1",
            )
            .bind(id)
            .bind(chunks.iter().map(|c| c.first_seq).collect::<Vec<_>>())
            .bind(chunks.iter().map(|c| c.last_seq).collect::<Vec<_>>())
            .bind(chunks.iter().map(|c| c.data.as_slice()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM events WHERE stream_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    }
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

/// The server secret `name` of `settings`, made by the first process that asks (every
/// node then reads the same one).
async fn server_secret(conn: &mut PgConnection, name: &str) -> anyhow::Result<Vec<u8>> {
    let fresh = super::fresh_secret()?;
    let mut tx = conn.begin().await?;
    sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .bind(&fresh[..])
        .execute(&mut *tx)
        .await?;
    let (secret,): (Vec<u8>,) = sqlx::query_as("SELECT value FROM settings WHERE name = $1")
        .bind(name)
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
