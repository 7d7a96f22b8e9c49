//! The group-commit writer: the one task that writes to the store.
//!
//! Events of every stream arrive through one bounded channel. The writer takes the
//! first waiting operation, keeps collecting for at most `batch_window` or until
//! `batch_max` events, and commits the whole batch in one `BEGIN IMMEDIATE`
//! transaction with multi-row inserts. Only after `COMMIT` returns does it hand the
//! batch's events to the [`StreamHub`].
//!
//! **Architecture Invariant:** no event reaches a reader before the transaction that
//! stores it has committed.

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, Sqlite};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{NewStream, StoreError};
use crate::config::ServeConfig;
use crate::event::{Event, FinishReason, StreamStatus, Usage};
use crate::hub::StreamHub;
use crate::metrics::Metrics;

/// How a stream ended, written with its terminal event.
#[derive(Debug, Clone)]
pub struct StreamEnd {
    pub status: StreamStatus,
    pub finish_reason: Option<FinishReason>,
    pub error: Option<(String, String)>,
    pub usage: Usage,
    pub finished_at: i64,
}

enum WriteOp {
    Create {
        stream: NewStream,
        start: Event,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Running {
        stream_id: Arc<str>,
        at: i64,
    },
    Append {
        stream_id: Arc<str>,
        event: Event,
        end: Option<StreamEnd>,
    },
    Delete {
        stream_id: String,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    Purge {
        created_before: i64,
        max: u32,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    Flush {
        reply: oneshot::Sender<()>,
        close: bool,
    },
}

/// The handle through which everything is written. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    tx: mpsc::Sender<WriteOp>,
}

/// The writer's task; await it after the last [`EventLog`] handle is gone, or after
/// [`EventLog::flush`], to know every event is on disk.
pub type WriterTask = JoinHandle<()>;

impl EventLog {
    /// Inserts a stream and its `start` event; returns once they are committed.
    pub async fn create(&self, stream: NewStream, start: Event) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(WriteOp::Create {
            stream,
            start,
            reply,
        })
        .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Marks a queued stream as running.
    pub async fn running(&self, stream_id: Arc<str>, at: i64) -> Result<(), StoreError> {
        self.send(WriteOp::Running { stream_id, at }).await
    }

    /// Appends one event; with `end`, it is the stream's terminal event. Returns when
    /// the event is queued, not committed: readers learn of it from the hub.
    pub async fn append(
        &self,
        stream_id: Arc<str>,
        event: Event,
        end: Option<StreamEnd>,
    ) -> Result<(), StoreError> {
        self.send(WriteOp::Append {
            stream_id,
            event,
            end,
        })
        .await
    }

    /// Deletes a stream and its events (the caller has made sure nothing writes to it).
    /// `Ok(false)` if it did not exist.
    pub async fn delete(&self, stream_id: String) -> Result<bool, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(WriteOp::Delete { stream_id, reply }).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Deletes up to `max` finished streams created before `created_before` (ms).
    pub async fn purge(&self, created_before: i64, max: u32) -> Result<u64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(WriteOp::Purge {
            created_before,
            max,
            reply,
        })
        .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Returns once everything sent before it is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(WriteOp::Flush {
            reply,
            close: false,
        })
        .await?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// Commits everything sent before it, then stops the writer: later writes fail
    /// with [`StoreError::Closed`].
    pub async fn close(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(WriteOp::Flush { reply, close: true }).await?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    async fn send(&self, op: WriteOp) -> Result<(), StoreError> {
        self.tx.send(op).await.map_err(|_| StoreError::Closed)
    }
}

/// Starts the writer on `conn`. The task ends when every [`EventLog`] is dropped, after
/// committing what was queued.
pub fn start(
    conn: SqliteConnection,
    config: &ServeConfig,
    hub: Arc<StreamHub>,
    metrics: Arc<Metrics>,
) -> (EventLog, WriterTask) {
    let batch_max = config.batch_max.max(1);
    let (tx, rx) = mpsc::channel(batch_max * 4);
    let writer = Writer {
        conn,
        rx,
        hub,
        metrics,
        window: config.batch_window,
        batch_max,
        lost: HashSet::new(),
    };
    (EventLog { tx }, tokio::spawn(writer.run()))
}

struct Writer {
    conn: SqliteConnection,
    rx: mpsc::Receiver<WriteOp>,
    hub: Arc<StreamHub>,
    metrics: Arc<Metrics>,
    window: Duration,
    batch_max: usize,
    /// Streams that lost events to a failed commit: later events would leave a gap,
    /// so they are dropped and the stream is left for start-up recovery to end.
    lost: HashSet<Arc<str>>,
}

/// One stream's share of a batch.
struct StreamWrites {
    id: Arc<str>,
    events: Vec<Event>,
    end: Option<StreamEnd>,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

#[derive(Default)]
struct Batch {
    creates: Vec<(NewStream, oneshot::Sender<Result<(), StoreError>>)>,
    running: Vec<(Arc<str>, i64)>,
    streams: Vec<StreamWrites>,
    index: HashMap<Arc<str>, usize>,
    deletes: Vec<(String, oneshot::Sender<Result<bool, StoreError>>)>,
    purges: Vec<(i64, u32, Reply<u64>)>,
    flushes: Vec<oneshot::Sender<()>>,
    close: bool,
    events: usize,
}

impl Batch {
    fn add(&mut self, op: WriteOp) {
        match op {
            WriteOp::Create {
                stream,
                start,
                reply,
            } => {
                let id: Arc<str> = Arc::from(stream.id.as_str());
                self.creates.push((stream, reply));
                self.push_event(id, start, None);
            }
            WriteOp::Running { stream_id, at } => self.running.push((stream_id, at)),
            WriteOp::Append {
                stream_id,
                event,
                end,
            } => self.push_event(stream_id, event, end),
            WriteOp::Delete { stream_id, reply } => self.deletes.push((stream_id, reply)),
            WriteOp::Purge {
                created_before,
                max,
                reply,
            } => self.purges.push((created_before, max, reply)),
            WriteOp::Flush { reply, close } => {
                self.flushes.push(reply);
                self.close |= close;
            }
        }
    }

    fn push_event(&mut self, id: Arc<str>, event: Event, end: Option<StreamEnd>) {
        self.events += 1;
        let slot = match self.index.get(&id) {
            Some(&i) => i,
            None => {
                self.index.insert(id.clone(), self.streams.len());
                self.streams.push(StreamWrites {
                    id,
                    events: Vec::new(),
                    end: None,
                });
                self.streams.len() - 1
            }
        };
        if let Some(s) = self.streams.get_mut(slot) {
            s.events.push(event);
            if end.is_some() {
                s.end = end;
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.creates.is_empty()
            && self.running.is_empty()
            && self.streams.is_empty()
            && self.deletes.is_empty()
            && self.purges.is_empty()
            && self.flushes.is_empty()
    }
}

/// What a committed batch reports back to its waiters.
struct Outcome {
    deleted: Vec<bool>,
    purged: Vec<u64>,
}

impl Writer {
    async fn run(mut self) {
        while let Some(first) = self.rx.recv().await {
            let mut batch = Batch::default();
            batch.add(first);
            self.fill(&mut batch).await;
            self.drop_lost(&mut batch);
            let close = batch.close;
            if !batch.is_empty() {
                self.commit_and_publish(batch).await;
            }
            if close {
                break;
            }
        }
        tracing::debug!("event log closed");
    }

    /// Collects more operations until the window closes or the batch is full.
    async fn fill(&mut self, batch: &mut Batch) {
        let deadline = tokio::time::Instant::now() + self.window;
        while batch.events < self.batch_max && !batch.close {
            match self.rx.try_recv() {
                Ok(op) => batch.add(op),
                Err(mpsc::error::TryRecvError::Disconnected) => return,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                        Ok(Some(op)) => batch.add(op),
                        Ok(None) | Err(_) => return,
                    }
                }
            }
        }
    }

    fn drop_lost(&self, batch: &mut Batch) {
        if self.lost.is_empty() {
            return;
        }
        batch.streams.retain(|s| !self.lost.contains(&s.id));
    }

    async fn commit_and_publish(&mut self, mut batch: Batch) {
        let started = Instant::now();
        let mut attempt = 0;
        let result = loop {
            match commit(&mut self.conn, &batch).await {
                Ok(outcome) => break Ok(outcome),
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "store commit failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 << (2 * attempt))).await;
                }
                Err(e) => break Err(e),
            }
        };
        self.metrics.observe_commit(batch.events, started.elapsed());
        match result {
            Ok(outcome) => {
                for (_, reply) in batch.creates.drain(..) {
                    let _ = reply.send(Ok(()));
                }
                for stream in batch.streams.drain(..) {
                    let terminal = stream.end.is_some();
                    self.metrics.events_committed(stream.events.len());
                    self.hub.publish(&stream.id, Arc::from(stream.events));
                    if terminal {
                        self.hub.close(&stream.id);
                    }
                }
                for ((id, reply), existed) in batch.deletes.drain(..).zip(outcome.deleted) {
                    self.lost.remove(id.as_str());
                    let _ = reply.send(Ok(existed));
                }
                for ((_, _, reply), n) in batch.purges.drain(..).zip(outcome.purged) {
                    let _ = reply.send(Ok(n));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, events = batch.events, "store commit failed; the batch is lost");
                self.metrics.commit_failed();
                for (_, reply) in batch.creates.drain(..) {
                    let _ = reply.send(Err(StoreError::Closed));
                }
                for stream in batch.streams.drain(..) {
                    // Readers fall back to the store; the stream stays open there
                    // until start-up recovery ends it as interrupted.
                    self.hub.close(&stream.id);
                    self.lost.insert(stream.id);
                }
                for (_, reply) in batch.deletes.drain(..) {
                    let _ = reply.send(Err(StoreError::Closed));
                }
                for (_, _, reply) in batch.purges.drain(..) {
                    let _ = reply.send(Err(StoreError::Closed));
                }
            }
        }
        for reply in batch.flushes.drain(..) {
            let _ = reply.send(());
        }
    }
}

/// Runs the batch in one `BEGIN IMMEDIATE` transaction; rolls back on any error.
async fn commit(conn: &mut SqliteConnection, batch: &Batch) -> Result<Outcome, sqlx::Error> {
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    match write_batch(conn, batch).await {
        Ok(outcome) => {
            sqlx::query("COMMIT").execute(&mut *conn).await?;
            Ok(outcome)
        }
        Err(e) => {
            if let Err(rollback) = sqlx::query("ROLLBACK").execute(&mut *conn).await {
                tracing::error!(error = %rollback, "rollback failed");
                // A connection in an unknown transaction state must not be reused.
                let _ = conn.ping().await;
            }
            Err(e)
        }
    }
}

async fn write_batch(conn: &mut SqliteConnection, batch: &Batch) -> Result<Outcome, sqlx::Error> {
    for (s, _) in &batch.creates {
        sqlx::query(
            "INSERT INTO streams (id, owner, status, model, params, created_at, last_seq) \
             VALUES (?, ?, 'queued', ?, ?, ?, 0)",
        )
        .bind(&s.id)
        .bind(&s.owner)
        .bind(&s.model)
        .bind(&s.params)
        .bind(s.created_at)
        .execute(&mut *conn)
        .await?;
    }
    for (id, at) in &batch.running {
        sqlx::query("UPDATE streams SET status = 'running', started_at = ? WHERE id = ? AND status = 'queued'")
            .bind(at)
            .bind(&**id)
            .execute(&mut *conn)
            .await?;
    }
    insert_events(conn, batch).await?;
    for s in &batch.streams {
        let Some(last) = s.events.last() else {
            continue;
        };
        match &s.end {
            None => {
                sqlx::query("UPDATE streams SET last_seq = ? WHERE id = ?")
                    .bind(last.seq as i64)
                    .bind(&*s.id)
                    .execute(&mut *conn)
                    .await?;
            }
            Some(end) => {
                sqlx::query(
                    "UPDATE streams SET last_seq = ?, status = ?, finish_reason = ?, error_code = ?, \
                     error_message = ?, prompt_tokens = ?, completion_tokens = ?, finished_at = ?, \
                     started_at = COALESCE(started_at, ?) WHERE id = ?",
                )
                .bind(last.seq as i64)
                .bind(end.status.as_str())
                .bind(end.finish_reason.map(FinishReason::as_str))
                .bind(end.error.as_ref().map(|(code, _)| code.as_str()))
                .bind(end.error.as_ref().map(|(_, message)| message.as_str()))
                .bind(i64::from(end.usage.prompt_tokens))
                .bind(i64::from(end.usage.completion_tokens))
                .bind(end.finished_at)
                .bind(end.finished_at)
                .bind(&*s.id)
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    let mut deleted = Vec::with_capacity(batch.deletes.len());
    for (id, _) in &batch.deletes {
        sqlx::query("DELETE FROM events WHERE stream_id = ?")
            .bind(id)
            .execute(&mut *conn)
            .await?;
        let r = sqlx::query("DELETE FROM streams WHERE id = ?")
            .bind(id)
            .execute(&mut *conn)
            .await?;
        deleted.push(r.rows_affected() > 0);
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
            sqlx::query("DELETE FROM events WHERE stream_id = ?")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            sqlx::query("DELETE FROM streams WHERE id = ?")
                .bind(id)
                .execute(&mut *conn)
                .await?;
        }
        purged.push(ids.len() as u64);
    }
    Ok(Outcome { deleted, purged })
}

/// Rows per multi-row `INSERT`, largest first. A batch is split into chunks of these
/// sizes (its binary decomposition), so at most eight statements are ever prepared
/// and every one stays in the connection's statement cache.
const CHUNKS: [usize; 8] = [128, 64, 32, 16, 8, 4, 2, 1];

fn insert_sql(rows: usize) -> &'static str {
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    let all = SQL.get_or_init(|| {
        CHUNKS
            .iter()
            .map(|&n| {
                let mut sql =
                    String::from("INSERT INTO events (stream_id, seq, kind, data) VALUES ");
                for i in 0..n {
                    sql.push_str(if i == 0 {
                        "(?, ?, ?, ?)"
                    } else {
                        ", (?, ?, ?, ?)"
                    });
                }
                sql
            })
            .collect()
    });
    let i = CHUNKS
        .iter()
        .position(|&n| n == rows)
        .unwrap_or(CHUNKS.len() - 1);
    all.get(i).map(String::as_str).unwrap_or("")
}

async fn insert_events(conn: &mut SqliteConnection, batch: &Batch) -> Result<(), sqlx::Error> {
    let rows: Vec<(&str, &Event)> = batch
        .streams
        .iter()
        .flat_map(|s| s.events.iter().map(move |e| (&*s.id, e)))
        .collect();
    let mut rest: &[(&str, &Event)] = &rows;
    while !rest.is_empty() {
        let n = CHUNKS
            .iter()
            .copied()
            .find(|&n| n <= rest.len())
            .unwrap_or(1);
        let (chunk, tail) = rest.split_at(n);
        let mut query = sqlx::query::<Sqlite>(insert_sql(n));
        for (id, e) in chunk {
            query = query
                .bind(*id)
                .bind(e.seq as i64)
                .bind(e.kind.as_str())
                .bind(e.data.as_str());
        }
        query.execute(&mut *conn).await?;
        rest = tail;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_statements_have_one_placeholder_group_per_row() {
        for n in CHUNKS {
            assert_eq!(insert_sql(n).matches("(?, ?, ?, ?)").count(), n);
        }
    }
}
