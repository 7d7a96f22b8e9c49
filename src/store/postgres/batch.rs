//! The PostgreSQL writing of a group commit: one transaction per batch, its [`Plan`]
//! (one chunk row and one stream update per stream) and every other kind of row in one
//! statement over arrays (`INSERT … SELECT * FROM UNNEST($1::text[], …)`,
//! `UPDATE … FROM UNNEST(…)`), so a batch of any size is a handful of round trips.
//!
//! The same transaction sends the batch's notification on [`EVENTS_CHANNEL`]: the
//! streams it wrote to and their last seqs (never token text). PostgreSQL delivers a
//! notification only when its transaction commits, so no node is woken for events it
//! cannot read yet.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

use super::{EVENTS_CHANNEL, cluster};
use crate::store::NewStream;
use crate::store::batch::{Batch, CommitError, Outcome, Position, has_ended};
use crate::store::health::Fault;
use crate::store::plan::Plan;

/// The writer's connection: re-established after it is lost, its every transaction
/// fenced by this node's lease, and a `COMMIT` whose answer was lost looked up before
/// anything is written again.
pub(in crate::store) struct WriteConn {
    conn: Option<PgConnection>,
    options: PgConnectOptions,
    node: Arc<str>,
    incarnation: Arc<str>,
    /// A batch whose `COMMIT` was cut off: its transaction id, and what it would report
    /// if it did commit.
    unresolved: Option<(i64, Outcome)>,
    /// The connection was dropped after a failure: say so once it is back.
    lost: bool,
}

/// The longest wait for a new connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl WriteConn {
    pub fn new(
        conn: PgConnection,
        options: PgConnectOptions,
        node: Arc<str>,
        incarnation: Arc<str>,
    ) -> Self {
        WriteConn {
            conn: Some(conn),
            options,
            node,
            incarnation,
            unresolved: None,
            lost: false,
        }
    }

    /// Runs the batch in one transaction that first makes sure this node still holds
    /// its lease (renewing it when the batch asks); rolls back on any error.
    pub async fn commit(&mut self, batch: &Batch) -> Result<Outcome, CommitError> {
        let result = self.try_commit(batch).await;
        self.after(&result);
        result
    }

    async fn try_commit(&mut self, batch: &Batch) -> Result<Outcome, CommitError> {
        if let Some((xid, _)) = &self.unresolved {
            let xid = *xid;
            let conn = connect(&mut self.conn, &self.options, &mut self.lost).await?;
            let status: Option<String> = sqlx::query_scalar("SELECT txid_status($1)")
                .bind(xid)
                .fetch_one(conn)
                .await?;
            match status.as_deref() {
                Some("committed") => {
                    return Ok(self.unresolved.take().map(|(_, o)| o).unwrap_or_default());
                }
                Some("in progress") => {
                    return Err(CommitError::Unknown(sqlx::Error::Protocol(
                        "an interrupted COMMIT is still in progress".into(),
                    )));
                }
                _ => self.unresolved = None,
            }
        }
        let conn = connect(&mut self.conn, &self.options, &mut self.lost).await?;
        let mut tx = conn.begin().await?;
        let held = cluster::hold_lease(&mut tx, &self.node, &self.incarnation, batch.renew).await?;
        let Some(xid) = held else {
            let _ = tx.rollback().await;
            return Err(CommitError::Fenced);
        };
        let outcome = write(&mut tx, batch, &self.node).await?;
        match tx.commit().await {
            Ok(()) => Ok(outcome),
            // The server answered: it did not commit.
            Err(e @ sqlx::Error::Database(_)) => Err(CommitError::Db(e)),
            Err(e) => {
                self.unresolved = Some((xid, outcome));
                Err(CommitError::Unknown(e))
            }
        }
    }

    /// Where each stream of `ids` stands.
    pub async fn positions(&mut self, ids: &[Arc<str>]) -> Result<Vec<Position>, CommitError> {
        let result = self.try_positions(ids).await;
        self.after(&result);
        result
    }

    async fn try_positions(&mut self, ids: &[Arc<str>]) -> Result<Vec<Position>, CommitError> {
        let conn = connect(&mut self.conn, &self.options, &mut self.lost).await?;
        let rows: Vec<(String, i64, String)> =
            sqlx::query_as("SELECT id, last_seq, status FROM streams WHERE id = ANY($1)")
                .bind(ids.iter().map(|id| &**id).collect::<Vec<_>>())
                .fetch_all(conn)
                .await?;
        Ok(ids
            .iter()
            .map(|id| Position {
                id: id.clone(),
                at: rows
                    .iter()
                    .find(|(r, _, _)| **r == **id)
                    .map(|(_, seq, status)| ((*seq).max(0) as u64, has_ended(status))),
            })
            .collect())
    }

    /// A batch given up on is not looked for again.
    pub fn forget(&mut self) {
        self.unresolved = None;
    }

    /// After a failure that may have broken the connection, the next attempt makes a
    /// new one.
    fn after<T>(&mut self, result: &Result<T, CommitError>) {
        if let Err(CommitError::Db(e) | CommitError::Unknown(e)) = result
            && Fault::of(e).is_some()
            && self.conn.take().is_some()
        {
            self.lost = true;
        }
    }
}

/// The open connection, made anew if there is none.
async fn connect<'c>(
    conn: &'c mut Option<PgConnection>,
    options: &PgConnectOptions,
    lost: &mut bool,
) -> Result<&'c mut PgConnection, sqlx::Error> {
    if conn.is_none() {
        let fresh = tokio::time::timeout(CONNECT_TIMEOUT, options.connect())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        if *lost {
            *lost = false;
            tracing::info!("the writer's connection to PostgreSQL is re-established");
        }
        *conn = Some(fresh);
    }
    conn.as_mut().ok_or(sqlx::Error::PoolClosed)
}

async fn write(conn: &mut PgConnection, batch: &Batch, node: &str) -> Result<Outcome, sqlx::Error> {
    if !batch.sessions.is_empty() {
        let s: Vec<_> = batch.sessions.iter().map(|(s, _)| s).collect();
        sqlx::query(
            // A chat's session another node created first is not an error (see SQLite's).
            "INSERT INTO sessions (id, owner, model, system, metadata, created_at, title, chat_id) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::bigint[], $7::text[], $8::text[]) ON CONFLICT DO NOTHING",
        )
        .bind(s.iter().map(|s| s.id.as_str()).collect::<Vec<_>>())
        .bind(s.iter().map(|s| s.owner.as_deref()).collect::<Vec<_>>())
        .bind(s.iter().map(|s| s.model.as_deref()).collect::<Vec<_>>())
        .bind(s.iter().map(|s| s.system.as_deref()).collect::<Vec<_>>())
        .bind(s.iter().map(|s| s.metadata.as_deref()).collect::<Vec<_>>())
        .bind(s.iter().map(|s| s.created_at).collect::<Vec<_>>())
        .bind(s.iter().map(|s| s.title.as_deref()).collect::<Vec<_>>())
        .bind(s.iter().map(|s| s.chat_id.as_deref()).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }

    // Streams that answer a session's turn, or carry an idempotency key, are created
    // one by one under a savepoint: two nodes may start the same turn (or the same
    // key's request) at once, and the loser's create alone must fail, not the batch.
    let (plain, turns): (Vec<&NewStream>, Vec<&NewStream>) = batch
        .creates
        .iter()
        .map(|(s, _)| s)
        .partition(|s| s.turn.is_none() && s.idempotency.is_none());
    if !plain.is_empty() {
        insert_streams(conn, &plain, node).await?;
    }
    for s in plain.iter().filter(|s| s.ds.is_some()) {
        insert_ds(conn, s).await?;
    }
    let mut conflicts = Vec::new();
    for s in turns {
        sqlx::query("SAVEPOINT turn").execute(&mut *conn).await?;
        match insert_turn(conn, s, node).await {
            Ok(true) => {
                sqlx::query("RELEASE SAVEPOINT turn")
                    .execute(&mut *conn)
                    .await?;
            }
            Err(e)
                if e.as_database_error()
                    .is_some_and(|d| d.is_unique_violation()) =>
            {
                sqlx::query("ROLLBACK TO SAVEPOINT turn")
                    .execute(&mut *conn)
                    .await?;
                conflicts.push(s.id.clone());
            }
            Ok(false) => {
                sqlx::query("ROLLBACK TO SAVEPOINT turn")
                    .execute(&mut *conn)
                    .await?;
                conflicts.push(s.id.clone());
            }
            Err(e) => return Err(e),
        }
    }
    let written = |id: &str| conflicts.is_empty() || !conflicts.iter().any(|c| c == id);

    if !batch.running.is_empty() {
        sqlx::query(
            "UPDATE streams SET status = 'running', started_at = v.at \
             FROM UNNEST($1::text[], $2::bigint[]) AS v(id, at) \
             WHERE streams.id = v.id AND streams.status = 'queued'",
        )
        .bind(
            batch
                .running
                .iter()
                .map(|(id, _)| &**id)
                .collect::<Vec<_>>(),
        )
        .bind(batch.running.iter().map(|(_, at)| *at).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }

    write_plan(
        conn,
        &Plan::of(batch.streams.iter().filter(|s| written(&s.id))),
    )
    .await?;

    let mut deleted = Vec::with_capacity(batch.deletes.len());
    for (id, _) in &batch.deletes {
        deleted.push(delete_streams(conn, std::slice::from_ref(id)).await? > 0);
    }
    let mut purged = Vec::with_capacity(batch.purges.len());
    for (before, max, _) in &batch.purges {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM streams WHERE created_at < $1 \
             AND status NOT IN ('queued', 'running') LIMIT $2",
        )
        .bind(before)
        .bind(i64::from(*max))
        .fetch_all(&mut *conn)
        .await?;
        purged.push(delete_streams(conn, &ids).await?);
        sqlx::query(&crate::store::dialect::postgres(
            crate::store::idempotency::FORGET,
        ))
        .bind(crate::event::now_ms() - crate::store::idempotency::KEY_TTL_MS)
        .execute(&mut *conn)
        .await?;
    }

    let edits: Vec<_> = batch.edits.iter().map(|(e, _)| e).collect();
    let edited = crate::store::edits::edit_postgres(conn, &edits).await?;

    for payload in notifications(
        node,
        batch
            .streams
            .iter()
            .filter(|s| written(&s.id))
            .filter_map(|s| s.events.last().map(|e| (&*s.id, e.seq))),
    ) {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(EVENTS_CHANNEL)
            .bind(payload)
            .execute(&mut *conn)
            .await?;
    }
    Ok(Outcome {
        deleted,
        purged,
        edited,
        conflicts,
    })
}

/// Writes a [`Plan`]'s rows: its chunks, then its streams' `last_seq` and ends (and
/// the turn content of ended streams that answer a session's turn), one statement each
/// over arrays.
pub(in crate::store) async fn write_plan(
    conn: &mut PgConnection,
    plan: &Plan<'_>,
) -> Result<(), sqlx::Error> {
    if plan.is_empty() {
        return Ok(());
    }
    let c = &plan.chunks;
    // The key is looked up by id in the same statement (the stream's row may be new
    // in this very batch).
    sqlx::query(
        "INSERT INTO chunks (stream_key, first_seq, last_seq, data) \
         SELECT s.key, v.first_seq, v.last_seq, v.data \
         FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bytea[]) \
         AS v(id, first_seq, last_seq, data) JOIN streams s ON s.id = v.id",
    )
    .bind(c.iter().map(|c| c.stream).collect::<Vec<_>>())
    .bind(c.iter().map(|c| c.first_seq).collect::<Vec<_>>())
    .bind(c.iter().map(|c| c.last_seq).collect::<Vec<_>>())
    .bind(c.iter().map(|c| c.data).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    if !plan.progress.is_empty() {
        sqlx::query(
            "UPDATE streams SET last_seq = v.seq FROM UNNEST($1::text[], $2::bigint[]) \
             AS v(id, seq) WHERE streams.id = v.id",
        )
        .bind(plan.progress.iter().map(|(id, _)| *id).collect::<Vec<_>>())
        .bind(
            plan.progress
                .iter()
                .map(|(_, seq)| *seq)
                .collect::<Vec<_>>(),
        )
        .execute(&mut *conn)
        .await?;
    }
    let e = &plan.ends;
    if !e.is_empty() {
        sqlx::query(
            "UPDATE streams SET last_seq = v.seq, status = v.status, finish_reason = v.reason, \
             error_code = v.code, error_message = v.message, prompt_tokens = v.prompt, \
             completion_tokens = v.completion, finished_at = v.finished_at, \
             started_at = COALESCE(streams.started_at, v.finished_at) \
             FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::bigint[], $8::bigint[], $9::bigint[]) \
             AS v(id, seq, status, reason, code, message, prompt, completion, finished_at) \
             WHERE streams.id = v.id",
        )
        .bind(e.iter().map(|e| e.stream).collect::<Vec<_>>())
        .bind(e.iter().map(|e| e.last_seq).collect::<Vec<_>>())
        .bind(e.iter().map(|e| e.status).collect::<Vec<_>>())
        .bind(e.iter().map(|e| e.finish_reason).collect::<Vec<_>>())
        .bind(e.iter().map(|e| e.error_code).collect::<Vec<_>>())
        .bind(e.iter().map(|e| e.error_message).collect::<Vec<_>>())
        .bind(e.iter().map(|e| e.prompt_tokens).collect::<Vec<_>>())
        .bind(e.iter().map(|e| e.completion_tokens).collect::<Vec<_>>())
        .bind(e.iter().map(|e| e.finished_at).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
        let turns: Vec<(&str, &str, Option<&str>)> = e
            .iter()
            .filter_map(|e| Some((e.stream, e.turn_text?, e.turn_tool_calls)))
            .collect();
        if !turns.is_empty() {
            sqlx::query(
                "UPDATE turns SET content = v.text, tool_calls = v.calls \
                 FROM UNNEST($1::text[], $2::text[], $3::text[]) \
                 AS v(id, text, calls) WHERE turns.stream_id = v.id",
            )
            .bind(turns.iter().map(|(id, _, _)| *id).collect::<Vec<_>>())
            .bind(turns.iter().map(|(_, text, _)| *text).collect::<Vec<_>>())
            .bind(turns.iter().map(|(_, _, calls)| *calls).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

async fn insert_streams(
    conn: &mut PgConnection,
    c: &[&NewStream],
    node: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO streams (id, owner, status, model, params, created_at, last_seq, node) \
         SELECT v.id, v.owner, 'queued', v.model, v.params, v.created_at, 0, $6 \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) \
         AS v(id, owner, model, params, created_at)",
    )
    .bind(c.iter().map(|s| s.id.as_str()).collect::<Vec<_>>())
    .bind(c.iter().map(|s| s.owner.as_deref()).collect::<Vec<_>>())
    .bind(c.iter().map(|s| s.model.as_str()).collect::<Vec<_>>())
    .bind(c.iter().map(|s| s.params.as_str()).collect::<Vec<_>>())
    .bind(c.iter().map(|s| s.created_at).collect::<Vec<_>>())
    .bind(node)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A stream answering a session's turn, and the turn's two rows: the user's message
/// and the assistant's (the stream); and the stream's idempotency key. `false`: the key
/// is another stream's (a concurrent request with the same key won).
async fn insert_turn(
    conn: &mut PgConnection,
    s: &NewStream,
    node: &str,
) -> Result<bool, sqlx::Error> {
    insert_streams(conn, &[s], node).await?;
    if let Some(k) = &s.idempotency {
        let recorded = sqlx::query(&crate::store::dialect::postgres(
            crate::store::idempotency::RECORD,
        ))
        .bind(&k.owner)
        .bind(&k.key)
        .bind(&k.request_hash)
        .bind(&s.id)
        .bind(s.created_at)
        .bind(k.expired_before)
        .execute(&mut *conn)
        .await?;
        if recorded.rows_affected() == 0 {
            return Ok(false);
        }
    }
    if let Some(t) = &s.turn {
        sqlx::query(
            "INSERT INTO turns (session_id, idx, role, content, messages, stream_id, created_at) \
             VALUES ($1, $2, $6, $3, $7, NULL, $4), ($1, $2 + 1, 'assistant', NULL, NULL, $5, $4)",
        )
        .bind(&t.session_id)
        .bind(t.idx)
        .bind(&t.content)
        .bind(s.created_at)
        .bind(&s.id)
        .bind(t.role)
        .bind(&t.messages)
        .execute(&mut *conn)
        .await?;
    }
    Ok(true)
}

/// A Durable Stream's row (a name another node took first is not an error: the engine
/// reads back which stream the name belongs to).
async fn insert_ds(conn: &mut PgConnection, s: &NewStream) -> Result<(), sqlx::Error> {
    let Some(ds) = &s.ds else {
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO ds_streams (name, owner, stream_id, content_type, ttl_seconds, \
         expires_at, created_at, spool_events, forked_from, fork_seq, fork_sub) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
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
    Ok(())
}

async fn delete_streams(conn: &mut PgConnection, ids: &[String]) -> Result<u64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    for sql in [
        "DELETE FROM chunks WHERE stream_key IN (SELECT key FROM streams WHERE id = ANY($1))",
        "DELETE FROM idempotency_keys WHERE stream_id = ANY($1)",
        "DELETE FROM ds_streams WHERE stream_id = ANY($1)",
    ] {
        sqlx::query(sql).bind(ids).execute(&mut *conn).await?;
    }
    let r = sqlx::query("DELETE FROM streams WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut *conn)
        .await?;
    Ok(r.rows_affected())
}

/// A notification's payload is at most this long (PostgreSQL's limit is 8000 bytes).
const PAYLOAD_MAX: usize = 7900;

/// The payloads announcing `(stream, last seq)` pairs: `node|id:seq,id:seq…`, split
/// only where one would pass [`PAYLOAD_MAX`] (about 200 streams each).
pub fn notifications<'a>(node: &str, streams: impl Iterator<Item = (&'a str, u64)>) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for (id, seq) in streams {
        let item = format!("{id}:{seq}");
        if !current.is_empty() && current.len() + 1 + item.len() > PAYLOAD_MAX {
            out.push(std::mem::take(&mut current));
        }
        if current.is_empty() {
            current.push_str(node);
            current.push('|');
        } else {
            current.push(',');
        }
        current.push_str(&item);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The inverse of [`notifications`], for one payload: the sending node and its pairs.
/// Items that do not parse are skipped (they would only cost a wake-up).
pub fn parse_notification(payload: &str) -> Option<(&str, Vec<(&str, u64)>)> {
    let (node, items) = payload.split_once('|')?;
    let pairs = items
        .split(',')
        .filter_map(|item| {
            let (id, seq) = item.rsplit_once(':')?;
            Some((id, seq.parse().ok()?))
        })
        .collect();
    Some((node, pairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_round_trip_and_stay_under_the_payload_limit() {
        let ids: Vec<String> = (0..1000).map(|i| format!("st_{i:026}")).collect();
        let payloads = notifications("node_a", ids.iter().map(|id| (id.as_str(), 7)));
        assert!(payloads.len() > 1);
        let mut seen = Vec::new();
        for p in &payloads {
            assert!(p.len() <= PAYLOAD_MAX, "{}", p.len());
            let (node, pairs) = parse_notification(p).unwrap();
            assert_eq!(node, "node_a");
            seen.extend(pairs.into_iter().map(|(id, seq)| (id.to_owned(), seq)));
        }
        assert_eq!(seen.len(), 1000);
        assert!(
            seen.iter()
                .zip(&ids)
                .all(|((a, seq), b)| a == b && *seq == 7)
        );
        assert!(notifications("n", std::iter::empty()).is_empty());
        assert!(parse_notification("garbage").is_none());
    }
}
