//! The store: SQLite (default, one file in WAL mode) or PostgreSQL (several nodes),
//! through sqlx.
//!
//! Two ways in, never mixed: every write goes through the single group-commit
//! [`writer::EventLog`] task, which owns this process's only write connection; every
//! read goes through a pool of other connections ([`Store`]). Schema changes are the
//! versioned migrations of `migrations/sqlite` and `migrations/postgres`, applied at
//! start-up before either exists. Reads share their SQL between the two databases
//! (written with `?` placeholders, turned into `$n` for PostgreSQL by [`dialect`]);
//! writes and recovery have one module per database where the SQL must differ.

pub mod batch;
pub mod chunk;
pub mod dialect;
pub mod ds;
pub mod edits;
pub mod events;
pub mod health;
pub mod idempotency;
mod outage;
mod plan;
pub mod postgres;
pub mod sessions;
pub mod sqlite;
pub mod streams;
mod upgrade;
pub mod writer;

use std::sync::Arc;

use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;

use crate::config::{ClusterConfig, Database, StoreConfig};
use crate::hub::StreamHub;
use crate::metrics::Metrics;

pub use batch::StreamEnd;
pub use edits::RowEdit;
pub use idempotency::{IdempotencyKey, KEY_TTL};
pub use postgres::cluster::{Sweep, SweptStream};
pub use sessions::{
    NewSession, NewTurn, SessionCursor, SessionEdit, SessionRow, SessionSummary, TurnRow,
};
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
    /// Another node created the same row first (a session's turn started on two nodes
    /// at once); nothing of this write was kept.
    #[error("another node wrote this first")]
    Conflict,
    /// Commits are failing (a full disk, a lock, a lost connection): nothing new is
    /// accepted until one succeeds again.
    #[error("the store does not accept writes right now")]
    Unavailable,
    /// This node's lease is gone (PostgreSQL): another node owns its streams, and this
    /// one writes nothing more.
    #[error("this node's writes are fenced: its lease is gone")]
    Fenced,
}

/// The read connections, of one database or the other.
#[derive(Clone)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the read pool and `$sql` to the statement in that
/// database's dialect. The body is written once and compiled for each database.
macro_rules! on_db {
    ($db:expr, $text:expr, |$pool:ident, $sql:ident| $body:expr) => {
        match $db {
            $crate::store::Db::Sqlite($pool) => {
                let $sql: &str = &$text;
                $body
            }
            $crate::store::Db::Postgres($pool) => {
                let converted = $crate::store::dialect::postgres(&$text);
                let $sql: &str = &converted;
                $body
            }
        }
    };
}
pub(crate) use on_db;

/// The read side of the store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) db: Db,
    /// This process's name among the nodes sharing a PostgreSQL database.
    node: Arc<str>,
    /// This process's lease token: another process under the same node name takes the
    /// lease from it (see `postgres::cluster::take_lease`).
    incarnation: Arc<str>,
    /// When this process's lease was taken (PostgreSQL), by this process's clock.
    leased_at: std::time::Instant,
}

/// Opens the database, migrates it, recovers what a dead process left, and starts the
/// writer. Returns the read side, the writer handle and its task.
pub async fn open(
    config: &StoreConfig,
    cluster: &ClusterConfig,
    hub: Arc<StreamHub>,
    metrics: Arc<Metrics>,
    continuable: &dyn Fn(&str) -> bool,
) -> anyhow::Result<Opened> {
    match config.database()? {
        Database::Sqlite(path) => {
            let opened = sqlite::open(&path, config.sqlite_synchronous, continuable).await?;
            let (log, writer) = writer::start(
                writer::Conn::Sqlite {
                    conn: opened.write,
                    checkpointer: Some(opened.checkpointer),
                    lock: Some(opened.lock),
                },
                config,
                hub,
                metrics,
            );
            Ok(Opened {
                store: Store {
                    db: Db::Sqlite(opened.read),
                    node: Arc::from("local"),
                    incarnation: Arc::from(""),
                    leased_at: std::time::Instant::now(),
                },
                log,
                writer,
                unfinished: opened.unfinished,
                read_token_secret: opened.read_token_secret,
                signing_seed: opened.signing_seed,
            })
        }
        Database::Postgres(url) => {
            let node: Arc<str> = Arc::from(cluster.node_id()?.as_str());
            let incarnation: Arc<str> = Arc::from(hex(&fresh_secret()?[..8]).as_str());
            let opened =
                postgres::open(&url, &node, &incarnation, cluster.node_lease, continuable).await?;
            let (log, writer) = writer::start(
                writer::Conn::Postgres(Box::new(postgres::batch::WriteConn::new(
                    opened.write,
                    opened.write_options,
                    node.clone(),
                    incarnation.clone(),
                ))),
                config,
                hub,
                metrics,
            );
            Ok(Opened {
                store: Store {
                    db: Db::Postgres(opened.pool),
                    node,
                    incarnation,
                    leased_at: opened.leased_at,
                },
                log,
                writer,
                // Only this node's own (see `postgres::cluster::recover_own`): those of
                // other dead nodes are found by the lease sweeper.
                unfinished: opened.unfinished,
                read_token_secret: opened.read_token_secret,
                signing_seed: opened.signing_seed,
            })
        }
    }
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
    /// The seed of the Ed25519 key that signs webhook deliveries: made once, kept in
    /// `settings`.
    pub signing_seed: Vec<u8>,
}

/// 32 random bytes for a new read-token secret.
fn fresh_secret() -> anyhow::Result<[u8; 32]> {
    let mut fresh = [0u8; 32];
    getrandom::fill(&mut fresh).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(fresh)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

/// The error code of a stream whose events the store refused for longer than the
/// retry window (see [`writer`]).
pub const STORE_UNAVAILABLE: &str = "store_unavailable";
pub const STORE_UNAVAILABLE_MESSAGE: &str =
    "the store did not accept this stream's events within the retry window";

/// The error code of a stream whose process stopped before it finished.
pub const INTERRUPTED: &str = "interrupted";
pub const INTERRUPTED_MESSAGE: &str = "the server stopped before this stream finished";

impl Store {
    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> bool {
        on_db!(&self.db, "SELECT 1", |pool, sql| sqlx::query(sql)
            .execute(pool)
            .await
            .is_ok())
    }

    /// This process's node name (`local` on SQLite).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// When this process took its lease (PostgreSQL), by its own clock: the lease
    /// lasts at least until then plus its length.
    pub fn leased_at(&self) -> std::time::Instant {
        self.leased_at
    }

    /// Whether several processes may share this store (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self.db, Db::Postgres(_))
    }

    /// Closes the read pool (at shutdown, after the writer has flushed).
    pub async fn close(&self) {
        match &self.db {
            Db::Sqlite(pool) => pool.close().await,
            Db::Postgres(pool) => pool.close().await,
        }
    }
}
