//! The store: SQLite through sqlx, in WAL mode.
//!
//! Two ways in, never mixed: every write goes through the single group-commit
//! [`writer::EventLog`] task, which owns the only write connection; every read goes
//! through a separate pool of read-only connections ([`Store`]). Schema changes are the
//! versioned migrations of `migrations/sqlite`, applied at start-up before either exists.

pub mod batch;
pub mod checkpoint;
pub mod events;
pub mod sessions;
pub mod streams;
pub mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};

use crate::config::{ServeConfig, Synchronous};
use crate::event::{Event, StreamStatus, now_ms};
use crate::hub::StreamHub;
use crate::metrics::Metrics;

pub use batch::StreamEnd;
pub use sessions::{NewSession, NewTurn, SessionRow, TurnRow};
pub use streams::{ListCursor, NewStream, StreamRow};
pub use writer::{EventLog, WriterTask};

/// A store failure. The text is for logs; clients only ever see "internal error".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("the event log has shut down")]
    Closed,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The read side of the store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    read: SqlitePool,
}

/// Opens the database file, migrates it, ends the streams a dead process left open,
/// and starts the writer. Returns the read side, the writer handle and its task.
pub async fn open(
    config: &ServeConfig,
    hub: Arc<StreamHub>,
    metrics: Arc<Metrics>,
    continuable: &dyn Fn(&str) -> bool,
) -> anyhow::Result<Opened> {
    let path = config.sqlite_path()?;
    let synchronous = match config.sqlite_synchronous {
        Synchronous::Normal => SqliteSynchronous::Normal,
        Synchronous::Full => SqliteSynchronous::Full,
    };
    let base = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
        .with_context(|| format!("invalid SQLite path {path:?}"))?
        .page_size(1024)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous)
        .busy_timeout(Duration::from_secs(5))
        .disable_statement_logging();

    // The writer's own tuning: statement journals in memory, a page cache that holds
    // the pages live streams append to, and no automatic checkpoints: the
    // checkpointer does them on its own connection (see `checkpoint`).
    let mut write_conn = base
        .clone()
        .pragma("temp_store", "MEMORY")
        .pragma("cache_size", "-32768")
        .pragma("wal_autocheckpoint", "0")
        .create_if_missing(true)
        .connect()
        .await
        .with_context(|| format!("cannot open the SQLite database at {path}"))?;
    MIGRATOR
        .run(&mut write_conn)
        .await
        .with_context(|| format!("cannot migrate the SQLite database at {path}"))?;
    let read_token_secret = read_token_secret(&mut write_conn)
        .await
        .context("the read-token secret")?;
    let (ended, unfinished) = recover(&mut write_conn, continuable)
        .await
        .context("start-up recovery")?;
    if ended > 0 {
        tracing::warn!(
            streams = ended,
            "ended streams a previous process left running (interrupted)"
        );
    }

    let read = SqlitePoolOptions::new()
        .max_connections(8)
        .min_connections(1)
        .connect_with(base.clone().read_only(true))
        .await
        .with_context(|| format!("cannot open read connections to {path}"))?;

    let checkpoint_conn = base
        .connect()
        .await
        .with_context(|| format!("cannot open the checkpoint connection to {path}"))?;
    let checkpointer = checkpoint::Checkpointer::start(checkpoint_conn);
    let (log, writer) = writer::start(write_conn, checkpointer, config, hub, metrics);
    Ok(Opened {
        store: Store { read },
        log,
        writer,
        unfinished,
        read_token_secret,
    })
}

/// An open store.
pub struct Opened {
    pub store: Store,
    pub log: EventLog,
    pub writer: WriterTask,
    /// Streams a dead process left open whose backend can continue them.
    pub unfinished: Vec<Unfinished>,
    /// The secret that signs read tokens: made once, kept in `settings`.
    pub read_token_secret: Vec<u8>,
}

/// The read-token secret stored in `settings`, made (32 random bytes) on first use.
async fn read_token_secret(conn: &mut SqliteConnection) -> anyhow::Result<Vec<u8>> {
    let mut fresh = [0u8; 32];
    getrandom::fill(&mut fresh).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    sqlx::query("INSERT OR IGNORE INTO settings (name, value) VALUES ('read_token_secret', ?)")
        .bind(&fresh[..])
        .execute(&mut *conn)
        .await?;
    let (secret,): (Vec<u8>,) =
        sqlx::query_as("SELECT value FROM settings WHERE name = 'read_token_secret'")
            .fetch_one(&mut *conn)
            .await?;
    Ok(secret)
}

/// A stream a dead process was generating, to be continued.
#[derive(Debug, Clone)]
pub struct Unfinished {
    pub id: String,
    pub model: String,
    /// The stored request (JSON).
    pub params: String,
    pub last_seq: u64,
}

/// Start-up recovery, before the writer starts (nothing else is writing): every stream
/// left `queued` or `running` by a process that died either is returned to be
/// continued (when `continuable(model)`) or gets a terminal `error` event with code
/// `interrupted`, in one transaction.
async fn recover(
    conn: &mut SqliteConnection,
    continuable: &dyn Fn(&str) -> bool,
) -> Result<(usize, Vec<Unfinished>), StoreError> {
    let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT id, model, params, last_seq FROM streams WHERE status IN ('queued', 'running')",
    )
    .fetch_all(&mut *conn)
    .await?;
    let (keep, open): (Vec<_>, Vec<_>) = rows
        .into_iter()
        .partition(|(_, model, _, _)| continuable(model));
    let unfinished = keep
        .into_iter()
        .map(|(id, model, params, last_seq)| Unfinished {
            id,
            model,
            params,
            last_seq: last_seq.max(0) as u64,
        })
        .collect();
    if open.is_empty() {
        return Ok((0, unfinished));
    }
    let now = now_ms();
    let mut tx = conn.begin().await?;
    for (id, _, _, last_seq) in &open {
        let seq = *last_seq as u64 + 1;
        let event = Event::error(seq, INTERRUPTED, INTERRUPTED_MESSAGE);
        sqlx::query("INSERT INTO events (stream_id, seq, kind, data) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(seq as i64)
            .bind(event.kind.as_str())
            .bind(&event.data)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE streams SET status = ?, error_code = ?, error_message = ?, finished_at = ?, \
             last_seq = ? WHERE id = ?",
        )
        .bind(StreamStatus::Interrupted.as_str())
        .bind(INTERRUPTED)
        .bind(INTERRUPTED_MESSAGE)
        .bind(now)
        .bind(seq as i64)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok((open.len(), unfinished))
}

/// The error code of a stream whose process stopped before it finished.
pub const INTERRUPTED: &str = "interrupted";
pub const INTERRUPTED_MESSAGE: &str = "the server stopped before this stream finished";

impl Store {
    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.read).await.is_ok()
    }

    /// Closes the read pool (at shutdown, after the writer has flushed).
    pub async fn close(&self) {
        self.read.close().await;
    }
}
