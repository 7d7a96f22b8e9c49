//! The SQLite store: one file in WAL mode, the default.
//!
//! Opening it migrates the file (`migrations/sqlite`), ends or hands back the streams a
//! dead process left open (only one process uses a SQLite file, so every open stream at
//! start-up is an orphan), and starts the WAL [`checkpoint`]er beside the writer.

pub mod batch;
pub mod checkpoint;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};

use super::{INTERRUPTED, INTERRUPTED_MESSAGE, StoreError, Unfinished};
use crate::config::Synchronous;
use crate::event::{Event, StreamStatus, now_ms};

pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// An open SQLite database: the writer's connection, the read pool, and what start-up
/// found.
pub(super) struct Opened {
    pub write: SqliteConnection,
    pub read: SqlitePool,
    pub checkpointer: checkpoint::Checkpointer,
    pub unfinished: Vec<Unfinished>,
    pub read_token_secret: Vec<u8>,
}

pub(super) async fn open(
    path: &str,
    synchronous: Synchronous,
    continuable: &dyn Fn(&str) -> bool,
) -> anyhow::Result<Opened> {
    let synchronous = match synchronous {
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
    let mut write = base
        .clone()
        .pragma("temp_store", "MEMORY")
        .pragma("cache_size", "-32768")
        .pragma("wal_autocheckpoint", "0")
        .create_if_missing(true)
        .connect()
        .await
        .with_context(|| format!("cannot open the SQLite database at {path}"))?;
    MIGRATOR
        .run(&mut write)
        .await
        .with_context(|| format!("cannot migrate the SQLite database at {path}"))?;
    let read_token_secret = read_token_secret(&mut write)
        .await
        .context("the read-token secret")?;
    let (ended, unfinished) = recover(&mut write, continuable)
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
    Ok(Opened {
        write,
        read,
        checkpointer: checkpoint::Checkpointer::start(checkpoint_conn),
        unfinished,
        read_token_secret,
    })
}

/// The read-token secret stored in `settings`, made (32 random bytes) on first use.
async fn read_token_secret(conn: &mut SqliteConnection) -> anyhow::Result<Vec<u8>> {
    let fresh = super::fresh_secret()?;
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
