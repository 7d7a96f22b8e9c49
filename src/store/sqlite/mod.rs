//! The SQLite store: one file in WAL mode, the default.
//!
//! Opening it locks the file for this process ([`FileLock`]), migrates it
//! (`migrations/sqlite`), ends or hands back the streams a dead process left open (only
//! one process uses a SQLite file, so every open stream at start-up is an orphan), and
//! starts the WAL [`checkpoint`]er beside the writer.

pub mod batch;
pub mod checkpoint;

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};

use super::plan::{self, Plan};
use super::{StoreError, Unfinished, upgrade};
use crate::config::Synchronous;

pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// An open SQLite database: the writer's connection, the read pool, and what start-up
/// found.
pub(super) struct Opened {
    pub lock: FileLock,
    pub write: SqliteConnection,
    pub read: SqlitePool,
    pub checkpointer: checkpoint::Checkpointer,
    pub unfinished: Vec<Unfinished>,
    pub read_token_secret: Vec<u8>,
    /// The seed of the Ed25519 key that signs webhook deliveries.
    pub signing_seed: Vec<u8>,
}

pub(super) async fn open(
    path: &str,
    synchronous: Synchronous,
    continuable: &dyn Fn(&str) -> bool,
) -> anyhow::Result<Opened> {
    // Before anything reads or writes the file: recovery must never run beside a live
    // process.
    let lock = FileLock::take(path)?;
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
    // A lock held by another connection (a `sqlite3` shell, a backup) fails a commit
    // after a second rather than five: the writer retries it, and says so.
    let mut write = base
        .clone()
        .busy_timeout(WRITER_BUSY_TIMEOUT)
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
    convert_events(&mut write)
        .await
        .with_context(|| format!("cannot convert the events of {path} to chunks"))?;
    let read_token_secret = server_secret(&mut write, "read_token_secret")
        .await
        .context("the read-token secret")?;
    let signing_seed = server_secret(&mut write, "webhook_signing_seed")
        .await
        .context("the webhook signing key")?;
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
        lock,
        write,
        read,
        checkpointer: checkpoint::Checkpointer::start(checkpoint_conn),
        unfinished,
        read_token_secret,
        signing_seed,
    })
}

/// How long the writer waits for a lock another connection holds before its commit
/// fails (and is retried).
const WRITER_BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// One process per SQLite file: an exclusive `flock` on `PATH.lock` next to the
/// database, held by the writer until it closes (the kernel drops it when a process
/// dies, so a killed process leaves nothing to clean up). The file holds the pid of the
/// process that has it, for the message another one gives. SQLite's own locks are left
/// alone: a `sqlite3` shell may still open the database.
pub struct FileLock {
    _file: File,
}

impl FileLock {
    fn take(path: &str) -> anyhow::Result<FileLock> {
        let lock_path = format!("{path}.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .with_context(|| format!("cannot open the lock file {lock_path}"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let holder = match pid.trim().parse::<u32>() {
                    Ok(pid) => format!(" (pid {pid})"),
                    Err(_) => String::new(),
                };
                anyhow::bail!(
                    "the SQLite database {path} is in use by another spool process{holder};                      one process per SQLite file: stop that one first (or share a                      PostgreSQL database between several nodes)"
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {lock_path}"));
            }
        }
        // Best effort: the pid only makes another process's message more helpful.
        if file.set_len(0).is_ok() {
            let _ = writeln!(file, "{}", std::process::id());
        }
        Ok(FileLock { _file: file })
    }
}

/// The read-token secret stored in `settings`, made (32 random bytes) on first use.
/// The server secret `name` of `settings`, made by the first process that asks.
async fn server_secret(conn: &mut SqliteConnection, name: &str) -> anyhow::Result<Vec<u8>> {
    let fresh = super::fresh_secret()?;
    sqlx::query("INSERT OR IGNORE INTO settings (name, value) VALUES (?, ?)")
        .bind(name)
        .bind(&fresh[..])
        .execute(&mut *conn)
        .await?;
    let (secret,): (Vec<u8>,) = sqlx::query_as("SELECT value FROM settings WHERE name = ?")
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
    Ok(secret)
}

/// Converts the `events` table of a database written before the event log v2 into
/// chunks (see [`upgrade`]), some streams per transaction (each stream's events are
/// deleted in the transaction that stores its chunks, so a conversion cut off
/// resumes where it stopped), then drops it. Nothing to do on a database made since.
async fn convert_events(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    let legacy: Option<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'events'",
    )
    .fetch_optional(&mut *conn)
    .await?;
    if legacy.is_none() {
        return Ok(());
    }
    let mut converted = upgrade::Converted::default();
    loop {
        let mut tx = conn.begin().await?;
        let ids: Vec<String> = sqlx::query_scalar("SELECT DISTINCT stream_id FROM events LIMIT ?")
            .bind(upgrade::STREAMS_PER_TRANSACTION)
            .fetch_all(&mut *tx)
            .await?;
        if ids.is_empty() {
            sqlx::query("DROP TABLE events").execute(&mut *tx).await?;
            tx.commit().await?;
            break;
        }
        for id in &ids {
            let rows: Vec<upgrade::LegacyEvent> = sqlx::query_as(
                "SELECT seq, kind, data, ids FROM events WHERE stream_id = ? ORDER BY seq",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
            for c in upgrade::chunks(id, &rows, &mut converted)? {
                sqlx::query(
                    "INSERT INTO chunks (stream_key, first_seq, last_seq, data) \
                     SELECT key, ?, ?, ? FROM streams WHERE id = ?",
                )
                .bind(c.first_seq)
                .bind(c.last_seq)
                .bind(&c.data)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query("DELETE FROM events WHERE stream_id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    }
    converted.log();
    Ok(())
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
        "SELECT id, model, params, last_seq FROM streams WHERE status IN ('queued', 'running') \
         AND model <> 'durable-stream'",
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
    let ends: Vec<(Arc<str>, u64)> = open
        .iter()
        .map(|(id, _, _, last_seq)| (Arc::from(id.as_str()), (*last_seq).max(0) as u64))
        .collect();
    let writes = plan::interrupted(&ends);
    let mut tx = conn.begin().await?;
    batch::write_plan(&mut tx, &Plan::of(&writes)).await?;
    tx.commit().await?;
    Ok((open.len(), unfinished))
}
