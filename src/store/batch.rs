//! One group commit: the operations the writer collected, grouped by stream, and who
//! waits for them. Each stream's events are encoded into their stored form (a
//! [`chunk`](super::chunk)) as they arrive; [`super::plan`] turns the batch into rows,
//! and each database writes them in one transaction of its own dialect
//! ([`super::sqlite::batch`], [`super::postgres::batch`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::edits::RowEdit;
use super::{NewSession, NewStream, StoreError};
use crate::event::{Event, FinishReason, StreamStatus, Usage};

/// How a stream ended, written with its terminal event.
#[derive(Debug, Clone)]
pub struct StreamEnd {
    pub status: StreamStatus,
    pub finish_reason: Option<FinishReason>,
    pub error: Option<(String, String)>,
    pub usage: Usage,
    pub finished_at: i64,
    /// The stream answers a session's turn: its text, for the turn's content.
    pub turn_text: Option<String>,
    /// With `turn_text`: the answer's tool calls (JSON), if it completed with some.
    pub turn_tool_calls: Option<String>,
}

pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// One stream's share of a batch.
pub(super) struct StreamWrites {
    pub id: Arc<str>,
    pub events: Vec<Event>,
    /// `events` (and the token ids behind each) in their stored form: the stream's
    /// chunk for this commit.
    pub chunk: Vec<u8>,
    pub end: Option<StreamEnd>,
    /// The end was written for a process that died: its usage is not known (NULL).
    pub usage_unknown: bool,
}

impl StreamWrites {
    pub fn new(id: Arc<str>) -> Self {
        StreamWrites {
            id,
            events: Vec::new(),
            chunk: Vec::new(),
            end: None,
            usage_unknown: false,
        }
    }

    pub fn push(&mut self, event: Event, ids: &[u32]) {
        super::chunk::push(&mut self.chunk, &event, ids);
        self.events.push(event);
    }
}

/// Everything one transaction writes, and who waits for it.
#[derive(Default)]
pub(super) struct Batch {
    pub sessions: Vec<(NewSession, Reply<()>)>,
    /// Row edits (`store::edits`), after everything else of the batch.
    pub edits: Vec<(RowEdit, Reply<bool>)>,
    pub creates: Vec<(NewStream, Reply<()>)>,
    pub running: Vec<(Arc<str>, i64)>,
    pub streams: Vec<StreamWrites>,
    index: HashMap<Arc<str>, usize>,
    pub deletes: Vec<(String, Reply<bool>)>,
    pub purges: Vec<(i64, u32, Reply<u64>)>,
    pub flushes: Vec<oneshot::Sender<()>>,
    /// PostgreSQL: renew this node's lease for this long in the batch's transaction.
    pub renew: Option<Duration>,
    pub renewed: Vec<Reply<()>>,
    /// Stop the writer after this batch.
    pub close: bool,
    /// Events in the batch (its size bound).
    pub events: usize,
}

/// What a committed batch reports back to its waiters.
#[derive(Default, Debug)]
pub(super) struct Outcome {
    pub deleted: Vec<bool>,
    pub purged: Vec<u64>,
    /// Whether each session edit found its session.
    pub edited: Vec<bool>,
    /// New streams that were not created, and their events not written, because their
    /// session turn already existed (several nodes only).
    pub conflicts: Vec<String>,
}

/// Where a stream stands in the store: its last seq and whether it has ended; `None`
/// if it does not exist.
pub(super) struct Position {
    pub id: Arc<str>,
    pub at: Option<(u64, bool)>,
}

/// Whether a stored status is terminal (or not one spool knows).
pub(super) fn has_ended(status: &str) -> bool {
    StreamStatus::parse(status).is_none_or(StreamStatus::is_terminal)
}

/// Why a batch was not committed.
#[derive(Debug)]
pub(super) enum CommitError {
    /// The database refused the batch or could not be reached: nothing was written.
    Db(sqlx::Error),
    /// The connection was lost while `COMMIT` was under way: the batch may or may not
    /// be stored; the next attempt finds out before it writes anything.
    Unknown(sqlx::Error),
    /// This node does not hold its lease (PostgreSQL): nothing was written, and
    /// nothing may be.
    Fenced,
}

impl From<sqlx::Error> for CommitError {
    fn from(e: sqlx::Error) -> Self {
        CommitError::Db(e)
    }
}

impl Batch {
    pub fn push_event(
        &mut self,
        id: Arc<str>,
        event: Event,
        ids: Vec<u32>,
        end: Option<StreamEnd>,
    ) {
        self.events += 1;
        let slot = match self.index.get(&id) {
            Some(&i) => i,
            None => {
                self.index.insert(id.clone(), self.streams.len());
                self.streams.push(StreamWrites::new(id));
                self.streams.len() - 1
            }
        };
        if let Some(s) = self.streams.get_mut(slot) {
            s.push(event, &ids);
            if end.is_some() {
                s.end = end;
            }
        }
    }

    /// Drops the events of the streams `keep` refuses (see the writer).
    pub fn retain_streams(&mut self, keep: impl Fn(&str) -> bool) {
        let before = self.streams.len();
        self.streams.retain(|s| keep(&s.id));
        if self.streams.len() != before {
            self.index.clear();
            for (i, s) in self.streams.iter().enumerate() {
                self.index.insert(s.id.clone(), i);
            }
            self.events = self.streams.iter().map(|s| s.events.len()).sum();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
            && self.edits.is_empty()
            && self.creates.is_empty()
            && self.running.is_empty()
            && self.streams.is_empty()
            && self.deletes.is_empty()
            && self.purges.is_empty()
            && self.flushes.is_empty()
            && self.renewed.is_empty()
    }

    /// Takes out what starts something new (sessions, streams and their `start`
    /// events, deletes, purges), for the writer to refuse while the store fails.
    pub fn take_new_work(&mut self) -> NewWork {
        let creates = std::mem::take(&mut self.creates);
        if !creates.is_empty() {
            self.retain_streams(|id| !creates.iter().any(|(s, _)| s.id == id));
        }
        NewWork {
            sessions: std::mem::take(&mut self.sessions),
            edits: std::mem::take(&mut self.edits),
            creates,
            deletes: std::mem::take(&mut self.deletes),
            purges: std::mem::take(&mut self.purges),
        }
    }
}

/// What [`Batch::take_new_work`] took out, to be answered.
pub(super) struct NewWork {
    pub sessions: Vec<(NewSession, Reply<()>)>,
    pub edits: Vec<(RowEdit, Reply<bool>)>,
    pub creates: Vec<(NewStream, Reply<()>)>,
    pub deletes: Vec<(String, Reply<bool>)>,
    pub purges: Vec<(i64, u32, Reply<u64>)>,
}

impl NewWork {
    /// Answers every waiter with the error `e()` makes.
    pub fn refuse(self, e: impl Fn() -> StoreError) {
        for (_, reply) in self.sessions {
            let _ = reply.send(Err(e()));
        }
        for (_, reply) in self.edits {
            let _ = reply.send(Err(e()));
        }
        for (_, reply) in self.creates {
            let _ = reply.send(Err(e()));
        }
        for (_, reply) in self.deletes {
            let _ = reply.send(Err(e()));
        }
        for (_, _, reply) in self.purges {
            let _ = reply.send(Err(e()));
        }
    }
}
