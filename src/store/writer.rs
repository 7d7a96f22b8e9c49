//! The group-commit writer: the one task that writes to the store.
//!
//! Events of every stream arrive through one bounded channel. When the writer is idle
//! it takes the first waiting operation and keeps collecting for at most
//! `batch_window` or until `batch_max` events; then it commits the whole batch in one
//! transaction (see [`super::batch`]; on PostgreSQL the same transaction notifies the
//! other nodes, see [`super::postgres::batch`]). While a commit runs it keeps
//! collecting the next batch, which is committed as soon as the previous one is done:
//! under load, batching costs no waiting at all. Only after `COMMIT` returns does it
//! hand the batch's events to the [`StreamHub`].
//!
//! **Architecture Invariant:** no event reaches a reader before the transaction that
//! stores it has committed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::batch::{Batch, Outcome, StreamEnd};
use super::sqlite::checkpoint::{self, Checkpointer};
use super::{NewSession, NewStream, StoreError, postgres, sqlite};
use crate::config::StoreConfig;
use crate::event::Event;
use crate::hub::StreamHub;
use crate::metrics::Metrics;

enum WriteOp {
    CreateSession {
        session: NewSession,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
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
        /// The token ids behind the event's text (see `Output::Token`).
        ids: Vec<u32>,
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
    /// New streams skip the queue of token events: a stream's first commit decides
    /// its time to first token, and nothing sent on `tx` can depend on it.
    creates: mpsc::Sender<WriteOp>,
}

/// The writer's task; await it after the last [`EventLog`] handle is gone, or after
/// [`EventLog::flush`], to know every event is on disk.
pub type WriterTask = JoinHandle<()>;

impl EventLog {
    /// Inserts a stream and its `start` event; returns once they are committed.
    pub async fn create(&self, stream: NewStream, start: Event) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.creates
            .send(WriteOp::Create {
                stream,
                start,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Inserts a session; returns once it is committed.
    pub async fn create_session(&self, session: NewSession) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.creates
            .send(WriteOp::CreateSession { session, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
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
        self.append_with_ids(stream_id, event, Vec::new(), end)
            .await
    }

    /// [`EventLog::append`], storing the token ids behind the event's text.
    pub async fn append_with_ids(
        &self,
        stream_id: Arc<str>,
        event: Event,
        ids: Vec<u32>,
        end: Option<StreamEnd>,
    ) -> Result<(), StoreError> {
        self.send(WriteOp::Append {
            stream_id,
            event,
            ids,
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

/// The writer's connection, to one database or the other.
pub(super) enum Conn {
    Sqlite {
        conn: SqliteConnection,
        /// Stopped when the writer closes, before its last checkpoint.
        checkpointer: Option<Checkpointer>,
    },
    Postgres {
        conn: PgConnection,
        /// Written as the owner of the streams this process creates, and named in
        /// the notifications of its commits.
        node: Arc<str>,
    },
}

impl Conn {
    async fn commit(&mut self, batch: &Batch) -> Result<Outcome, sqlx::Error> {
        match self {
            Conn::Sqlite { conn, .. } => sqlite::batch::commit(conn, batch).await,
            Conn::Postgres { conn, node } => postgres::batch::commit(conn, batch, node).await,
        }
    }

    /// At close: SQLite's log is checkpointed and truncated.
    async fn close(&mut self) {
        if let Conn::Sqlite { conn, checkpointer } = self {
            if let Some(checkpointer) = checkpointer.take() {
                checkpointer.stop().await;
            }
            checkpoint::truncate(conn).await;
        }
    }
}

/// Starts the writer on `conn`. The task ends when every [`EventLog`] is dropped, after
/// committing what was queued.
pub(super) fn start(
    conn: Conn,
    config: &StoreConfig,
    hub: Arc<StreamHub>,
    metrics: Arc<Metrics>,
) -> (EventLog, WriterTask) {
    let batch_max = config.batch_max.max(1);
    let (tx, rx) = mpsc::channel(batch_max);
    let (creates, creates_rx) = mpsc::channel(CREATES_QUEUE);
    let writer = Writer {
        conn,
        rx,
        creates: creates_rx,
        hub,
        metrics,
        window: config.batch_window,
        batch_max,
        lost: HashSet::new(),
    };
    (EventLog { tx, creates }, tokio::spawn(writer.run()))
}

/// New streams waiting for the writer, at most.
const CREATES_QUEUE: usize = 1024;

struct Writer {
    conn: Conn,
    rx: mpsc::Receiver<WriteOp>,
    creates: mpsc::Receiver<WriteOp>,
    hub: Arc<StreamHub>,
    metrics: Arc<Metrics>,
    window: Duration,
    batch_max: usize,
    /// Streams that lost events to a failed commit: later events would leave a gap,
    /// so they are dropped and the stream is left for start-up recovery to end.
    lost: HashSet<Arc<str>>,
}

impl Batch {
    fn add(&mut self, op: WriteOp) {
        match op {
            WriteOp::CreateSession { session, reply } => self.sessions.push((session, reply)),
            WriteOp::Create {
                stream,
                start,
                reply,
            } => {
                let id: Arc<str> = Arc::from(stream.id.as_str());
                self.creates.push((stream, reply));
                self.push_event(id, start, Vec::new(), None);
            }
            WriteOp::Running { stream_id, at } => self.running.push((stream_id, at)),
            WriteOp::Append {
                stream_id,
                event,
                ids,
                end,
            } => self.push_event(stream_id, event, ids, end),
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
}

impl Writer {
    async fn run(mut self) {
        let mut open = true;
        let mut creates_open = true;
        // What arrived while the previous batch was committing.
        let mut next = Batch::default();
        loop {
            let mut batch = std::mem::take(&mut next);
            if batch.is_empty() {
                if !open {
                    break;
                }
                tokio::select! {
                    biased;
                    op = self.creates.recv(), if creates_open => match op {
                        Some(op) => batch.add(op),
                        None => creates_open = false,
                    },
                    op = self.rx.recv() => match op {
                        Some(op) => batch.add(op),
                        None => open = false,
                    },
                }
                if batch.is_empty() {
                    continue;
                }
                open = self.fill(&mut batch).await && open;
            }
            if !self.lost.is_empty() {
                batch.retain_streams(|id| !self.lost.contains(id));
            }
            let close = batch.close;
            if batch.is_empty() {
                if close {
                    break;
                }
                continue;
            }

            let started = Instant::now();
            let result = {
                let commit = commit_with_retry(&mut self.conn, &batch);
                tokio::pin!(commit);
                loop {
                    let more = open && !close && !next.close && next.events < self.batch_max;
                    tokio::select! {
                        biased;
                        result = &mut commit => break result,
                        op = self.creates.recv(), if more && creates_open => match op {
                            Some(op) => next.add(op),
                            None => creates_open = false,
                        },
                        op = self.rx.recv(), if more => match op {
                            Some(op) => next.add(op),
                            None => open = false,
                        },
                    }
                }
            };
            self.metrics.observe_commit(batch.events, started.elapsed());
            self.publish(batch, result);
            if close {
                break;
            }
        }
        self.conn.close().await;
        tracing::debug!("event log closed");
    }

    /// Collects more operations until the window closes or the batch is full.
    /// Returns false once every sender is gone.
    async fn fill(&mut self, batch: &mut Batch) -> bool {
        let deadline = tokio::time::Instant::now() + self.window;
        while batch.events < self.batch_max && !batch.close {
            if let Ok(op) = self.creates.try_recv() {
                batch.add(op);
                continue;
            }
            match self.rx.try_recv() {
                Ok(op) => batch.add(op),
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                        Ok(Some(op)) => batch.add(op),
                        Ok(None) => return false,
                        Err(_) => return true,
                    }
                }
            }
        }
        true
    }

    /// Answers the batch's waiters and, if it committed, hands its events to the hub.
    fn publish(&mut self, mut batch: Batch, result: Result<Outcome, sqlx::Error>) {
        match result {
            Ok(outcome) => {
                for (_, reply) in batch.sessions.drain(..) {
                    let _ = reply.send(Ok(()));
                }
                let conflicted = |id: &str| outcome.conflicts.iter().any(|c| c == id);
                for (stream, reply) in batch.creates.drain(..) {
                    let _ = reply.send(if conflicted(&stream.id) {
                        Err(StoreError::Conflict)
                    } else {
                        Ok(())
                    });
                }
                for stream in batch.streams.drain(..) {
                    if !outcome.conflicts.is_empty() && conflicted(&stream.id) {
                        self.hub.close(&stream.id);
                        continue;
                    }
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
                for (_, reply) in batch.sessions.drain(..) {
                    let _ = reply.send(Err(StoreError::Closed));
                }
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

/// Commits, retrying a failed transaction three times with a growing pause.
async fn commit_with_retry(conn: &mut Conn, batch: &Batch) -> Result<Outcome, sqlx::Error> {
    let mut attempt = 0;
    loop {
        match conn.commit(batch).await {
            Ok(outcome) => return Ok(outcome),
            Err(e) if attempt < 3 => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "store commit failed; retrying");
                tokio::time::sleep(Duration::from_millis(50 << (2 * attempt))).await;
            }
            Err(e) => return Err(e),
        }
    }
}
