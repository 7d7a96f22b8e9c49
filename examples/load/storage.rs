//! The storage scenario: bytes on disk per token of the event log v2 (chunks: one row
//! per stream per commit) against the previous layout (one `events` row per event), in
//! the same run, for the same events.
//!
//! Each phase (unlimited rate, then `--rate` tokens/s) runs `--streams` × `--tokens`
//! through a fresh spool on SQLite and stops it gracefully (its WAL is checkpointed
//! and truncated). That database is measured as it is. Then its chunks are read back in
//! the order they were committed (rowid order) and written, event by event, into a
//! database made by the previous release's migrations only (the same page size, WAL,
//! and multi-row inserts in commit order, as the previous writer did), which is
//! checkpointed and measured the same way. Both files hold the same streams and the
//! same event bytes; only the layout differs. Last, this release is started on the v1
//! file: the time until it listens is the in-place upgrade (converting every event).

use std::path::{Path, PathBuf};

use anyhow::Context;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode};
use sqlx::{ConnectOptions, Connection};
use tokio::time::Instant;

use crate::Cli;
use crate::procs::{Kind, Options, Target};
use crate::report::{Row, Section};
use crate::scenarios::{drive, start};

/// The two columns: what ran as "spool", what as "baseline".
const COLUMNS: [&str; 2] = ["v2 chunks", "v1 events"];

/// Old rows per multi-row insert (the previous writer's largest statement).
const ROWS_PER_INSERT: usize = 512;

struct Measured {
    tokens: u64,
    events: u64,
    chunks: u64,
    new_bytes: u64,
    old_bytes: u64,
    /// Bytes per table or index (`dbstat`), when SQLite has it.
    new_split: Vec<(String, u64)>,
    old_split: Vec<(String, u64)>,
    /// spool started on the v1 database: seconds until it listened (the conversion),
    /// and the converted file's size.
    upgrade_secs: f64,
    converted_bytes: u64,
}

pub async fn storage(cli: &Cli, target: &Target) -> anyhow::Result<Section> {
    let Target::Spawn(_) = target else {
        anyhow::bail!("the storage scenario measures its own database: --url cannot be used");
    };
    let tokens = cli.tokens.unwrap_or(256);
    let rate = if cli.rate > 0.0 { cli.rate } else { 50.0 };
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for (label, rate) in [("unlimited", 0.0), ("paced", rate)] {
        let m = phase(cli, target, tokens, rate).await?;
        let per_token = |bytes: u64| bytes as f64 / m.tokens.max(1) as f64;
        let what = if rate > 0.0 {
            format!("bytes on disk per token, {label} ({rate} tok/s)")
        } else {
            format!("bytes on disk per token, {label}")
        };
        rows.push(Row::new(
            &what,
            "B",
            Some(per_token(m.new_bytes)),
            Some(per_token(m.old_bytes)),
        ));
        rows.push(Row::new(
            &format!("rows per 1k events, {label}"),
            "",
            Some(1000.0 * m.chunks as f64 / m.events.max(1) as f64),
            Some(1000.0),
        ));
        notes.push(format!(
            "{label}: {} tokens, {} events in {} chunk rows ({:.1} events per row); \
             files {:.1} MiB (v2) and {:.1} MiB (v1)",
            m.tokens,
            m.events,
            m.chunks,
            m.events as f64 / m.chunks.max(1) as f64,
            m.new_bytes as f64 / 1048576.0,
            m.old_bytes as f64 / 1048576.0
        ));
        notes.push(format!(
            "{label}: this release started on the v1 file in {:.2} s, converting {} events \
             ({:.0} events/s incl. start-up); converted file {:.1} B/token",
            m.upgrade_secs,
            m.events,
            m.events as f64 / m.upgrade_secs.max(1e-9),
            per_token(m.converted_bytes)
        ));
        for (name, split) in [("v2", &m.new_split), ("v1", &m.old_split)] {
            if !split.is_empty() {
                let parts: Vec<String> = split
                    .iter()
                    .map(|(t, b)| format!("{t} {:.1}", *b as f64 / m.tokens.max(1) as f64))
                    .collect();
                notes.push(format!(
                    "{label} {name} bytes/token by table: {}",
                    parts.join(", ")
                ));
            }
        }
    }
    if cli.storage_pg {
        let (new, old, tokens) = postgres(cli, target, tokens).await?;
        rows.push(Row::new(
            "PostgreSQL bytes per token, unlimited (tables, TOAST and indexes)",
            "B",
            Some(new as f64 / tokens.max(1) as f64),
            Some(old as f64 / tokens.max(1) as f64),
        ));
    }
    Ok(Section {
        name: "storage",
        columns: COLUMNS,
        title: format!(
            "{} streams × {tokens} tokens on SQLite: this release's layout against the previous one, same events",
            cli.streams
        ),
        rows,
        notes,
    })
}

async fn phase(cli: &Cli, target: &Target, tokens: u32, rate: f64) -> anyhow::Result<Measured> {
    let dir = tempfile::Builder::new().prefix("spool-storage").tempdir()?;
    let new_db = dir.path().join("v2.db");
    let opts = Options {
        rate,
        database_url: Some(format!("sqlite://{}", new_db.display())),
        limits: Some((cli.streams.max(1), cli.streams.max(1))),
        ..Default::default()
    };
    let server = start(Kind::Spool, target, &opts).await?;
    let deadline = Instant::now() + cli.deadline();
    let load = drive(server.addr, cli.streams, tokens, None, deadline).await;
    let stopped = server.stop().await;
    if stopped.graceful.is_none() {
        anyhow::bail!("spool did not stop gracefully: its WAL may not be truncated");
    }
    if load.complete as usize != cli.streams {
        anyhow::bail!(
            "only {} of {} streams completed: {:?}",
            load.complete,
            cli.streams,
            load.errors
        );
    }

    let mut conn = SqliteConnectOptions::new()
        .filename(&new_db)
        .read_only(true)
        .connect()
        .await
        .context("opening the v2 database")?;
    let streams: Vec<StreamCols> =
        sqlx::query_as(&format!("SELECT {STREAM_COLS} FROM streams ORDER BY key"))
            .fetch_all(&mut conn)
            .await?;
    let chunks: Vec<(String, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT s.id, c.first_seq, c.data FROM chunks c \
         JOIN streams s ON s.key = c.stream_key ORDER BY c.rowid",
    )
    .fetch_all(&mut conn)
    .await?;
    let new_split = split(&mut conn).await;
    conn.close().await?;

    let old_db = dir.path().join("v1.db");
    let mut old = old_database(&old_db).await?;
    let mut tx = old.begin().await?;
    for s in &streams {
        sqlx::query(&format!(
            "INSERT INTO streams ({STREAM_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&s.0)
        .bind(&s.1)
        .bind(&s.2)
        .bind(&s.3)
        .bind(&s.4)
        .bind(s.5)
        .bind(s.6)
        .bind(s.7)
        .bind(&s.8)
        .bind(&s.9)
        .bind(&s.10)
        .bind(s.11)
        .bind(s.12)
        .bind(s.13)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    // The events, in commit order: a transaction per `--streams` chunk rows (about one
    // group commit), multi-row inserts as the previous writer made them.
    let mut events = 0u64;
    for commit in chunks.chunks(cli.streams.max(1)) {
        let mut rows: Vec<OldEvent> = Vec::new();
        for (id, first, data) in commit {
            for e in spool::store::chunk::read(data, *first as u64)
                .map_err(|e| anyhow::anyhow!("{e}"))?
            {
                let ids = e.ids();
                let ids =
                    (!ids.is_empty()).then(|| ids.iter().flat_map(|i| i.to_le_bytes()).collect());
                rows.push((id, e.seq as i64, e.kind.as_str(), e.data.to_owned(), ids));
            }
        }
        events += rows.len() as u64;
        let mut tx = old.begin().await?;
        for part in rows.chunks(ROWS_PER_INSERT) {
            let mut sql = String::from(
                "INSERT OR ROLLBACK INTO events (stream_id, seq, kind, data, ids) VALUES ",
            );
            for i in 0..part.len() {
                sql.push_str(if i == 0 {
                    "(?, ?, ?, ?, ?)"
                } else {
                    ", (?, ?, ?, ?, ?)"
                });
            }
            let mut q = sqlx::query(&sql);
            for (id, seq, kind, data, ids) in part {
                q = q.bind(*id).bind(*seq).bind(*kind).bind(data).bind(ids);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
    }
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut old)
        .await?;
    let old_split = split(&mut old).await;
    old.close().await?;

    let old_bytes = on_disk(&old_db);

    // This release on the v1 file: it converts it before it listens.
    let opts = Options {
        database_url: Some(format!("sqlite://{}", old_db.display())),
        ..Default::default()
    };
    let begun = std::time::Instant::now();
    let server = start(Kind::Spool, target, &opts).await?;
    let upgrade_secs = begun.elapsed().as_secs_f64();
    server.stop().await;

    Ok(Measured {
        tokens: load.tokens,
        upgrade_secs,
        converted_bytes: on_disk(&old_db),
        events,
        chunks: chunks.len() as u64,
        new_bytes: on_disk(&new_db),
        old_bytes,
        new_split,
        old_split,
    })
}

/// The same on PostgreSQL, unlimited rate: this release on a fresh database, then its
/// chunks written as `events` rows into a database made by the previous migrations.
/// Returns the bytes of each (`pg_total_relation_size` of the event and stream tables)
/// and the tokens.
async fn postgres(cli: &Cli, target: &Target, tokens: u32) -> anyhow::Result<(u64, u64, u64)> {
    let new_db = crate::cluster::Database::create(&cli.pg_admin_url).await?;
    let opts = Options {
        database_url: Some(new_db.url.clone()),
        node_id: Some("storage".into()),
        limits: Some((cli.streams.max(1), cli.streams.max(1))),
        ..Default::default()
    };
    let server = start(Kind::Spool, target, &opts).await?;
    let load = drive(
        server.addr,
        cli.streams,
        tokens,
        None,
        Instant::now() + cli.deadline(),
    )
    .await;
    server.stop().await;
    let mut conn = sqlx::PgConnection::connect(&new_db.url).await?;
    let new_bytes: i64 = sqlx::query_scalar(
        "SELECT pg_total_relation_size('chunks') + pg_total_relation_size('streams')",
    )
    .fetch_one(&mut conn)
    .await?;
    let streams: Vec<StreamCols> =
        sqlx::query_as(&format!("SELECT {STREAM_COLS} FROM streams ORDER BY key"))
            .fetch_all(&mut conn)
            .await?;
    let chunks: Vec<(String, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT s.id, c.first_seq, c.data FROM chunks c \
         JOIN streams s ON s.key = c.stream_key ORDER BY c.ctid",
    )
    .fetch_all(&mut conn)
    .await?;
    conn.close().await?;
    let _ = new_db.drop_it().await;

    let old_db = crate::cluster::Database::create(&cli.pg_admin_url).await?;
    let mut old = sqlx::PgConnection::connect(&old_db.url).await?;
    old_migrator("postgres").await?.run(&mut old).await?;
    for s in &streams {
        sqlx::query(&format!(
            "INSERT INTO streams ({STREAM_COLS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        ))
        .bind(&s.0)
        .bind(&s.1)
        .bind(&s.2)
        .bind(&s.3)
        .bind(&s.4)
        .bind(s.5)
        .bind(s.6)
        .bind(s.7)
        .bind(&s.8)
        .bind(&s.9)
        .bind(&s.10)
        .bind(s.11)
        .bind(s.12)
        .bind(s.13)
        .execute(&mut old)
        .await?;
    }
    for commit in chunks.chunks(cli.streams.max(1)) {
        let (mut id, mut seq, mut kind, mut data, mut ids) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (stream, first, bytes) in commit {
            for e in spool::store::chunk::read(bytes, *first as u64)
                .map_err(|e| anyhow::anyhow!("{e}"))?
            {
                let i = e.ids();
                id.push(stream.as_str());
                seq.push(e.seq as i64);
                kind.push(e.kind.as_str());
                data.push(e.data.to_owned());
                ids.push(
                    (!i.is_empty())
                        .then(|| i.iter().flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>()),
                );
            }
        }
        sqlx::query(
            "INSERT INTO events (stream_id, seq, kind, data, ids) \
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bytea[])",
        )
        .bind(id)
        .bind(seq)
        .bind(kind)
        .bind(data)
        .bind(ids)
        .execute(&mut old)
        .await?;
    }
    let old_bytes: i64 = sqlx::query_scalar(
        "SELECT pg_total_relation_size('events') + pg_total_relation_size('streams')",
    )
    .fetch_one(&mut old)
    .await?;
    old.close().await?;
    let _ = old_db.drop_it().await;
    Ok((
        new_bytes.max(0) as u64,
        old_bytes.max(0) as u64,
        load.tokens,
    ))
}

/// An old `events` row: stream id, seq, kind, data, token ids (little-endian u32s).
type OldEvent<'a> = (&'a str, i64, &'static str, String, Option<Vec<u8>>);

type StreamCols = (
    String,
    Option<String>,
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    i64,
);
const STREAM_COLS: &str = "id, owner, status, model, params, created_at, started_at, \
    finished_at, finish_reason, error_code, error_message, prompt_tokens, \
    completion_tokens, last_seq";

/// A database of the previous release: its migrations only, tuned as it was.
async fn old_database(path: &Path) -> anyhow::Result<SqliteConnection> {
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .page_size(1024)
        .journal_mode(SqliteJournalMode::Wal)
        .pragma("wal_autocheckpoint", "0")
        .disable_statement_logging()
        .connect()
        .await
        .context("creating the v1 database")?;
    old_migrator("sqlite").await?.run(&mut conn).await?;
    Ok(conn)
}

/// The previous release's migrations of `dialect` (this release's, without the event
/// log v2).
async fn old_migrator(dialect: &str) -> anyhow::Result<Migrator> {
    let migrations = tempfile::tempdir()?;
    let from = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(dialect);
    for entry in std::fs::read_dir(&from)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if !name.contains("event_log_v2") {
            std::fs::copy(&path, migrations.path().join(name))?;
        }
    }
    // The migrator reads the files now: the directory may go.
    Ok(Migrator::new(migrations.path().to_path_buf()).await?)
}

/// The database file and whatever WAL is left.
fn on_disk(db: &Path) -> u64 {
    let size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    size(db.to_path_buf()) + size(wal)
}

/// Bytes per table and index, if this SQLite has the `dbstat` table.
async fn split(conn: &mut SqliteConnection) -> Vec<(String, u64)> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY SUM(pgsize) DESC LIMIT 6",
    )
    .fetch_all(&mut *conn)
    .await
    .map(|rows| {
        rows.into_iter()
            .map(|(n, b)| (n, b.max(0) as u64))
            .collect()
    })
    .unwrap_or_default()
}
