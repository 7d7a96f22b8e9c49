//! The SQLite writing of a group commit, in a single `BEGIN IMMEDIATE` transaction:
//! the batch's sessions, streams and deletes, and its [`Plan`] (one chunk row and one
//! stream update per stream), rendered in SQLite's SQL.
//!
//! Every kind of row is written with multi-row statements (`INSERT … VALUES (…), (…)`
//! and `UPDATE … FROM (VALUES …)`), so a batch of any size costs a handful of round
//! trips to SQLite's worker thread rather than one per event or per stream. Statement
//! sizes are powers of two (a batch is cut into its binary decomposition), so only a
//! few distinct statements exist and every one stays prepared in the connection's
//! statement cache. They are all `OR ROLLBACK`: a failed row fails the whole
//! transaction anyway, and a statement that cannot be half-done needs no statement
//! journal (which would otherwise copy every page a multi-row statement touches).

use std::sync::{Arc, OnceLock};

use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteConnection};
use sqlx::{Connection, Sqlite};

use crate::store::NewStream;
use crate::store::batch::{Batch, Outcome, Position, has_ended};
use crate::store::plan::Plan;

/// Runs the batch in one `BEGIN IMMEDIATE` transaction; rolls back on any error.
pub(in crate::store) async fn commit(
    conn: &mut SqliteConnection,
    batch: &Batch,
) -> Result<Outcome, sqlx::Error> {
    let result = transaction(conn, batch).await;
    if let Err(e) = &result {
        // Whatever failed — a statement, or COMMIT itself (a full disk, a lock held too
        // long) — the connection must not stay inside the transaction, or every later
        // BEGIN would fail. When SQLite has already ended it (an `OR ROLLBACK`
        // conflict, an I/O error), this ROLLBACK fails harmlessly.
        if let Err(rollback) = sqlx::query("ROLLBACK").execute(&mut *conn).await {
            tracing::debug!(error = %e, %rollback, "rollback after a failed batch");
            let _ = conn.ping().await;
        }
    }
    result
}

async fn transaction(conn: &mut SqliteConnection, batch: &Batch) -> Result<Outcome, sqlx::Error> {
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let outcome = write(conn, batch).await?;
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    Ok(outcome)
}

/// Where each stream of `ids` stands (read on the writer's connection).
pub(in crate::store) async fn positions(
    conn: &mut SqliteConnection,
    ids: &[Arc<str>],
) -> Result<Vec<Position>, sqlx::Error> {
    let mut found = Vec::with_capacity(ids.len());
    for id in ids {
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT last_seq, status FROM streams WHERE id = ?")
                .bind(&**id)
                .fetch_optional(&mut *conn)
                .await?;
        found.push(Position {
            id: id.clone(),
            at: row.map(|(seq, status)| (seq.max(0) as u64, has_ended(&status))),
        });
    }
    Ok(found)
}

async fn write(conn: &mut SqliteConnection, batch: &Batch) -> Result<Outcome, sqlx::Error> {
    for (s, _) in &batch.sessions {
        sqlx::query(
            // A chat's session that another request created first is not an error:
            // the caller reads back the one that exists.
            "INSERT INTO sessions (id, owner, model, system, metadata, created_at, title, \
             chat_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&s.id)
        .bind(&s.owner)
        .bind(&s.model)
        .bind(&s.system)
        .bind(&s.metadata)
        .bind(s.created_at)
        .bind(&s.title)
        .bind(&s.chat_id)
        .execute(&mut *conn)
        .await?;
    }
    let creates: Vec<&NewStream> = batch.creates.iter().map(|(s, _)| s).collect();
    for_chunks(conn, Shape::CreateStreams, &creates, |q, s| {
        q.bind(s.id.as_str())
            .bind(s.owner.as_deref())
            .bind(s.model.as_str())
            .bind(s.params.as_str())
            .bind(s.created_at)
    })
    .await?;
    for s in &creates {
        if let Some(k) = &s.idempotency {
            // One process per file, and the engine starts one request per key at a
            // time: a live row for this key cannot exist here.
            sqlx::query(crate::store::idempotency::RECORD)
                .bind(&k.owner)
                .bind(&k.key)
                .bind(&k.request_hash)
                .bind(&s.id)
                .bind(s.created_at)
                .bind(k.expired_before)
                .execute(&mut *conn)
                .await?;
        }
        if let Some(ds) = &s.ds {
            // A name another request took first is not an error: the engine reads back
            // which stream the name belongs to.
            sqlx::query(
                "INSERT INTO ds_streams (name, owner, stream_id, content_type, ttl_seconds, \
                 expires_at, created_at, spool_events, forked_from, fork_seq, fork_sub) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(&ds.name)
            .bind(&s.owner)
            .bind(&s.id)
            .bind(&ds.content_type)
            .bind(ds.ttl_seconds)
            .bind(ds.expires_at)
            .bind(s.created_at)
            .bind(ds.spool_events)
            .bind(ds.fork.as_ref().map(|f| f.0.as_str()))
            .bind(ds.fork.as_ref().map(|f| f.1))
            .bind(ds.fork.as_ref().map(|f| f.2))
            .execute(&mut *conn)
            .await?;
        }
        if let Some(turn) = &s.turn {
            sqlx::query(
                "INSERT INTO turns (session_id, idx, role, content, messages, stream_id, \
                 created_at) VALUES (?, ?, ?, ?, ?, NULL, ?), (?, ?, 'assistant', NULL, NULL, ?, ?)",
            )
            .bind(&turn.session_id)
            .bind(turn.idx)
            .bind(turn.role)
            .bind(&turn.content)
            .bind(&turn.messages)
            .bind(s.created_at)
            .bind(&turn.session_id)
            .bind(turn.idx + 1)
            .bind(&s.id)
            .bind(s.created_at)
            .execute(&mut *conn)
            .await?;
        }
    }

    let running: Vec<&(Arc<str>, i64)> = batch.running.iter().collect();
    for_chunks(conn, Shape::Running, &running, |q, (id, at)| {
        q.bind(&**id).bind(*at)
    })
    .await?;

    write_plan(conn, &Plan::of(&batch.streams)).await?;

    let mut deleted = Vec::with_capacity(batch.deletes.len());
    for (id, _) in &batch.deletes {
        deleted.push(delete_stream(conn, id).await?);
    }
    let mut purged = Vec::with_capacity(batch.purges.len());
    for (before, max, _) in &batch.purges {
        let ids: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM streams WHERE created_at < ? AND status NOT IN ('queued', 'running') LIMIT ?",
        )
        .bind(before)
        .bind(i64::from(*max))
        .fetch_all(&mut *conn)
        .await?;
        for (id,) in &ids {
            delete_stream(conn, id).await?;
        }
        purged.push(ids.len() as u64);
        sqlx::query(crate::store::idempotency::FORGET)
            .bind(crate::event::now_ms() - crate::store::idempotency::KEY_TTL_MS)
            .execute(&mut *conn)
            .await?;
    }
    let edits: Vec<_> = batch.edits.iter().map(|(e, _)| e).collect();
    let edited = crate::store::edits::edit_sqlite(conn, &edits).await?;
    Ok(Outcome {
        deleted,
        purged,
        edited,
        conflicts: Vec::new(),
    })
}

/// Writes a [`Plan`]'s rows: its chunks, then its streams' `last_seq` and ends (and
/// the turn content of ended streams that answer a session's turn).
pub(in crate::store) async fn write_plan(
    conn: &mut SqliteConnection,
    plan: &Plan<'_>,
) -> Result<(), sqlx::Error> {
    for_chunks(conn, Shape::InsertChunks, &plan.chunks, |q, c| {
        q.bind(c.stream)
            .bind(c.first_seq)
            .bind(c.last_seq)
            .bind(c.data)
    })
    .await?;
    for_chunks(conn, Shape::LastSeq, &plan.progress, |q, (id, seq)| {
        q.bind(*id).bind(*seq)
    })
    .await?;
    for_chunks(conn, Shape::End, &plan.ends, |q, end| {
        q.bind(end.stream)
            .bind(end.last_seq)
            .bind(end.status)
            .bind(end.finish_reason)
            .bind(end.error_code)
            .bind(end.error_message)
            .bind(end.prompt_tokens)
            .bind(end.completion_tokens)
            .bind(end.finished_at)
    })
    .await?;
    for end in &plan.ends {
        if let Some(text) = end.turn_text {
            sqlx::query("UPDATE turns SET content = ?, tool_calls = ? WHERE stream_id = ?")
                .bind(text)
                .bind(end.turn_tool_calls)
                .bind(end.stream)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

async fn delete_stream(conn: &mut SqliteConnection, id: &str) -> Result<bool, sqlx::Error> {
    for sql in [
        "DELETE FROM chunks WHERE stream_key = (SELECT key FROM streams WHERE id = ?)",
        "DELETE FROM idempotency_keys WHERE stream_id = ?",
        "DELETE FROM ds_streams WHERE stream_id = ?",
    ] {
        sqlx::query(sql).bind(id).execute(&mut *conn).await?;
    }
    let r = sqlx::query("DELETE FROM streams WHERE id = ?")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// The multi-row statements: a head, one row of placeholders repeated, a tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    CreateStreams,
    Running,
    InsertChunks,
    LastSeq,
    End,
}

impl Shape {
    const ALL: [Shape; 5] = [
        Shape::CreateStreams,
        Shape::Running,
        Shape::InsertChunks,
        Shape::LastSeq,
        Shape::End,
    ];

    fn parts(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Shape::CreateStreams => (
                "INSERT OR ROLLBACK INTO streams (id, owner, status, model, params, created_at, last_seq) VALUES ",
                "(?, ?, 'queued', ?, ?, ?, 0)",
                "",
            ),
            Shape::Running => (
                "UPDATE OR ROLLBACK streams SET status = 'running', started_at = v.column2 FROM (VALUES ",
                "(?, ?)",
                ") AS v WHERE streams.id = v.column1 AND streams.status = 'queued'",
            ),
            // The key is looked up by id in the same statement (the stream's row may
            // be new in this very batch).
            Shape::InsertChunks => (
                "INSERT OR ROLLBACK INTO chunks (stream_key, first_seq, last_seq, data) \
                 SELECT s.key, v.column2, v.column3, v.column4 FROM (VALUES ",
                "(?, ?, ?, ?)",
                ") AS v JOIN streams s ON s.id = v.column1",
            ),
            Shape::LastSeq => (
                "UPDATE OR ROLLBACK streams SET last_seq = v.column2 FROM (VALUES ",
                "(?, ?)",
                ") AS v WHERE streams.id = v.column1",
            ),
            Shape::End => (
                "UPDATE OR ROLLBACK streams SET last_seq = v.column2, status = v.column3, \
                 finish_reason = v.column4, error_code = v.column5, error_message = v.column6, \
                 prompt_tokens = v.column7, completion_tokens = v.column8, \
                 finished_at = v.column9, started_at = COALESCE(streams.started_at, v.column9) \
                 FROM (VALUES ",
                "(?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ") AS v WHERE streams.id = v.column1",
            ),
        }
    }
}

/// Rows per statement, largest first. 512 rows of 9 values stay far below SQLite's
/// limit of 32,766 variables.
const CHUNKS: [usize; 10] = [512, 256, 128, 64, 32, 16, 8, 4, 2, 1];

fn sql(shape: Shape, rows: usize) -> &'static str {
    static SQL: OnceLock<Vec<Vec<String>>> = OnceLock::new();
    let all = SQL.get_or_init(|| {
        Shape::ALL
            .iter()
            .map(|shape| {
                let (head, row, tail) = shape.parts();
                CHUNKS
                    .iter()
                    .map(|&n| {
                        let mut sql = String::with_capacity(head.len() + n * (row.len() + 2));
                        sql.push_str(head);
                        for i in 0..n {
                            if i > 0 {
                                sql.push_str(", ");
                            }
                            sql.push_str(row);
                        }
                        sql.push_str(tail);
                        sql
                    })
                    .collect()
            })
            .collect()
    });
    let s = Shape::ALL.iter().position(|&s| s == shape).unwrap_or(0);
    let n = CHUNKS.iter().position(|&n| n == rows).unwrap_or(0);
    all.get(s)
        .and_then(|v| v.get(n))
        .map(String::as_str)
        .unwrap_or("")
}

type Args<'q> = Query<'q, Sqlite, SqliteArguments<'q>>;

/// Writes `rows` with as few statements of `shape` as its binary decomposition needs.
async fn for_chunks<'r, T>(
    conn: &mut SqliteConnection,
    shape: Shape,
    rows: &'r [T],
    bind: impl Fn(Args<'r>, &'r T) -> Args<'r>,
) -> Result<(), sqlx::Error> {
    let mut rest = rows;
    while !rest.is_empty() {
        let n = CHUNKS
            .iter()
            .copied()
            .find(|&n| n <= rest.len())
            .unwrap_or(1);
        let (chunk, tail) = rest.split_at(n);
        let mut query = sqlx::query::<Sqlite>(sql(shape, n));
        for row in chunk {
            query = bind(query, row);
        }
        query.execute(&mut *conn).await?;
        rest = tail;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::store::chunk;
    use sqlx::ConnectOptions;
    use sqlx::sqlite::SqliteConnectOptions;
    use tokio::sync::oneshot;

    async fn open(dir: &tempfile::TempDir) -> SqliteConnection {
        let mut conn = SqliteConnectOptions::new()
            .filename(dir.path().join("t.db"))
            .create_if_missing(true)
            .connect()
            .await
            .unwrap();
        super::super::MIGRATOR.run(&mut conn).await.unwrap();
        conn
    }

    fn create(batch: &mut Batch, id: &str) {
        let (reply, _) = oneshot::channel();
        batch.creates.push((
            NewStream {
                id: id.into(),
                owner: None,
                model: "mock".into(),
                params: "{}".into(),
                created_at: 1,
                turn: None,
                idempotency: None,
                ds: None,
            },
            reply,
        ));
    }

    async fn count(conn: &mut SqliteConnection, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&mut *conn).await.unwrap()
    }

    #[tokio::test]
    async fn a_batch_writes_one_chunk_per_stream_all_or_none_and_the_connection_stays_usable() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(&dir).await;

        // 700 streams of 3 events each: several statement sizes, one chunk row each.
        let mut good = Batch::default();
        let ids: Vec<String> = (0..700).map(|i| format!("s{i}")).collect();
        for id in &ids {
            create(&mut good, id);
        }
        for seq in 1..=3u64 {
            for id in &ids {
                good.push_event(
                    Arc::from(id.as_str()),
                    Event::token(seq, "x"),
                    vec![seq as u32],
                    None,
                );
            }
        }
        commit(&mut conn, &good).await.unwrap();
        assert_eq!(count(&mut conn, "SELECT COUNT(*) FROM chunks").await, 700);
        assert_eq!(
            count(&mut conn, "SELECT last_seq FROM streams WHERE id = 's7'").await,
            3
        );

        // A chunk that repeats a stored one fails the whole batch: nothing is kept.
        let mut bad = Batch::default();
        create(&mut bad, "d");
        bad.push_event(Arc::from("d"), Event::token(1, "y"), Vec::new(), None);
        bad.push_event(Arc::from("s0"), Event::token(3, "dup"), Vec::new(), None);
        assert!(commit(&mut conn, &bad).await.is_err());
        assert_eq!(count(&mut conn, "SELECT COUNT(*) FROM chunks").await, 700);
        assert_eq!(count(&mut conn, "SELECT COUNT(*) FROM streams").await, 700);

        // … and the next batch commits normally.
        let mut next = Batch::default();
        next.push_event(Arc::from("s0"), Event::token(4, "z"), vec![9], None);
        commit(&mut conn, &next).await.unwrap();
        assert_eq!(count(&mut conn, "SELECT COUNT(*) FROM chunks").await, 701);
        let (first, data): (i64, Vec<u8>) = sqlx::query_as(
            "SELECT first_seq, data FROM chunks \
             WHERE stream_key = (SELECT key FROM streams WHERE id = 's0') AND last_seq = 4",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        let back = chunk::read(&data, first as u64).unwrap();
        assert_eq!(back[0].to_event(), Event::token(4, "z"));
        assert_eq!(back[0].ids(), vec![9]);
    }

    #[tokio::test]
    async fn a_connection_left_inside_a_transaction_is_rolled_back_and_commits_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(&dir).await;
        // As a COMMIT that failed (a full disk, a lock) would leave it.
        sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
        let mut batch = Batch::default();
        create(&mut batch, "a");
        batch.push_event(Arc::from("a"), Event::token(1, "x"), Vec::new(), None);
        assert!(commit(&mut conn, &batch).await.is_err());
        // The failed attempt ended the transaction: the retry commits.
        commit(&mut conn, &batch).await.unwrap();
        assert_eq!(count(&mut conn, "SELECT COUNT(*) FROM chunks").await, 1);
    }

    #[test]
    fn statements_have_one_placeholder_group_per_row() {
        for shape in Shape::ALL {
            let (_, row, _) = shape.parts();
            for n in CHUNKS {
                assert_eq!(sql(shape, n).matches(row).count(), n, "{shape:?} × {n}");
            }
        }
    }
}
