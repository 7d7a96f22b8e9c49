//! The group-commit writer: the one task that writes to the store.
//!
//! Events of every stream arrive through one bounded channel. When the writer is idle
//! it takes the first waiting operation and whatever else is waiting (and, only if
//! `batch_window` is set — it is 0 by default: nothing waits to be batched, SPEC §3 —
//! what comes within that window), up to `batch_max` events; then it commits the whole
//! batch in one transaction (see [`super::batch`]; on PostgreSQL the same transaction checks this
//! node's lease and notifies the other nodes, see [`super::postgres::batch`]). While a
//! commit runs it keeps collecting the next batch, which is committed as soon as the
//! previous one is done: under load, batching costs no waiting at all. Only after
//! `COMMIT` returns does it hand the batch's events to the [`StreamHub`].
//!
//! A commit that fails for a reason that may pass (disk full, a lock, a lost
//! connection) is retried with a growing pause for up to `SPOOL_STORE_RETRY_WINDOW`,
//! the batch kept whole and in order. Meanwhile the writer goes on collecting the next
//! batch up to its bound, then stops reading its channel: generations wait in
//! `append` (backpressure) and nothing is dropped. Past the window the writer gives up
//! on the streams it holds events of ([`Outage`]): their readers' responses end, their
//! generations stop, and it writes their terminal `error` event (`store_unavailable`,
//! status `failed`) after their last committed event as soon as a commit succeeds
//! again. A batch that breaks a constraint is a bug, not a fault: it is dropped at
//! once and its streams get nothing more (start-up recovery ends them).
//!
//! **Architecture Invariant:** no event reaches a reader before the transaction that
//! stores it has committed.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::sqlite::SqliteConnection;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::batch::{Batch, CommitError, Outcome, Position, StreamEnd};
use super::edits::RowEdit;
use super::health::{Fault, Health};
use super::outage::Outage;
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
    Edit {
        edit: RowEdit,
        reply: oneshot::Sender<Result<bool, StoreError>>,
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
    /// PostgreSQL: renew this node's lease in the next transaction, so that a node
    /// whose writer cannot write does not keep its lease (see `cluster`).
    Renew {
        lease: Duration,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// The generation of a stream the writer ends itself (see [`Outage`]) has stopped:
    /// nothing more of it follows on the channel.
    Abandon {
        stream_id: Arc<str>,
    },
}

impl WriteOp {
    /// Answers the operation's waiter, if it has one, with `e`; the rest is dropped.
    fn refuse(self, e: StoreError) {
        match self {
            WriteOp::CreateSession { reply, .. }
            | WriteOp::Create { reply, .. }
            | WriteOp::Renew { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            WriteOp::Delete { reply, .. } | WriteOp::Edit { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            WriteOp::Purge { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            WriteOp::Flush { reply, .. } => {
                let _ = reply.send(());
            }
            WriteOp::Running { .. } | WriteOp::Append { .. } | WriteOp::Abandon { .. } => {}
        }
    }
}

/// The handle through which everything is written. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    tx: mpsc::Sender<WriteOp>,
    /// The lane that skips the queue of token events: new streams, `running`, and each
    /// generation's first event decide time to first token. Nothing sent on `tx` can
    /// depend on what waits here, and the writer always takes this lane first. It is
    /// read even while the next batch is full (see [`collect_while`]): what comes here
    /// is a few operations per stream, so admission bounds it.
    creates: mpsc::Sender<WriteOp>,
    health: Arc<Health>,
}

/// The writer's task; await it after the last [`EventLog`] handle is gone, or after
/// [`EventLog::flush`], to know every event is on disk.
pub type WriterTask = JoinHandle<()>;

impl EventLog {
    /// Inserts a stream and its `start` event; returns once they are committed.
    pub async fn create(&self, stream: NewStream, start: Event) -> Result<(), StoreError> {
        ask(&self.creates, |reply| WriteOp::Create {
            stream,
            start,
            reply,
        })
        .await
    }

    /// Inserts a session; returns once it is committed.
    pub async fn create_session(&self, session: NewSession) -> Result<(), StoreError> {
        ask(&self.creates, |reply| WriteOp::CreateSession {
            session,
            reply,
        })
        .await
    }

    /// Renames a session, sets its metadata, or deletes it (with its turns); returns
    /// once committed, with whether the session existed.
    pub async fn edit(&self, edit: impl Into<RowEdit>) -> Result<bool, StoreError> {
        let edit = edit.into();
        ask(&self.tx, |reply| WriteOp::Edit { edit, reply }).await
    }

    /// Marks a queued stream as running. It skips the queue of token events, like the
    /// stream's first token after it (see [`EventLog::append_first`]).
    pub async fn running(&self, stream_id: Arc<str>, at: i64) -> Result<(), StoreError> {
        self.creates
            .send(WriteOp::Running { stream_id, at })
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Appends one event; with `end`, it is the stream's terminal event. Returns when
    /// the event is queued, not committed: readers learn of it from the hub. While the
    /// writer's queue is full (the store is slow or failing) it waits.
    /// [`StoreError::Unavailable`] once the writer has taken the stream over (see
    /// [`EventLog::is_doomed`]): the generation must stop.
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
        if self.health.is_doomed(&stream_id) {
            return Err(StoreError::Unavailable);
        }
        self.send(WriteOp::Append {
            stream_id,
            event,
            ids,
            end,
        })
        .await
    }

    /// [`EventLog::append_with_ids`] for the first event a generation appends: it skips
    /// the queue of other streams' token events (a stream's first token decides its
    /// time to first token). Its later events follow on the ordinary queue; they cannot
    /// overtake it, since the writer always takes what waits on this lane first.
    pub async fn append_first(
        &self,
        stream_id: Arc<str>,
        event: Event,
        ids: Vec<u32>,
        end: Option<StreamEnd>,
    ) -> Result<(), StoreError> {
        if self.health.is_doomed(&stream_id) {
            return Err(StoreError::Unavailable);
        }
        self.creates
            .send(WriteOp::Append {
                stream_id,
                event,
                ids,
                end,
            })
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Deletes a stream and its events (the caller has made sure nothing writes to it).
    /// `Ok(false)` if it did not exist.
    pub async fn delete(&self, stream_id: String) -> Result<bool, StoreError> {
        ask(&self.tx, |reply| WriteOp::Delete { stream_id, reply }).await
    }

    /// Deletes up to `max` finished streams created before `created_before` (ms).
    pub async fn purge(&self, created_before: i64, max: u32) -> Result<u64, StoreError> {
        ask(&self.tx, |reply| WriteOp::Purge {
            created_before,
            max,
            reply,
        })
        .await
    }

    /// Returns once everything sent before it is committed (or given up on).
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

    /// PostgreSQL: renews this node's lease for `lease` in the writer's next
    /// transaction; returns once that has committed. [`StoreError::Fenced`]: the lease
    /// is not this process's any more.
    pub async fn renew_lease(&self, lease: Duration) -> Result<(), StoreError> {
        ask(&self.creates, |reply| WriteOp::Renew { lease, reply }).await
    }

    /// Tells the writer that the generation of a stream it took over (see
    /// [`EventLog::is_doomed`]) has stopped and sends nothing more.
    pub async fn abandon(&self, stream_id: Arc<str>) {
        let _ = self.send(WriteOp::Abandon { stream_id }).await;
    }

    /// Whether commits succeed: false while they fail (and are retried), and once
    /// this node is fenced.
    pub fn available(&self) -> bool {
        self.health.available()
    }

    /// Why the store does not accept writes, while it does not (for `/readyz`).
    pub fn unavailable_reason(&self) -> Option<String> {
        self.health.reason()
    }

    /// Whether the writer has taken `stream_id` from its generation: the store refused
    /// its events for longer than the retry window, and the writer ends it
    /// (`store_unavailable`) once the store accepts writes.
    pub fn is_doomed(&self, stream_id: &str) -> bool {
        self.health.is_doomed(stream_id)
    }

    /// Changes whenever streams are taken from their generations (see
    /// [`EventLog::is_doomed`]), so that a generation waiting for its backend stops.
    pub fn doom_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.health.doom_changes()
    }

    /// Cancelled once a commit found this node's lease gone (PostgreSQL): the writer
    /// writes nothing more, and the process must stop.
    pub fn fenced(&self) -> tokio_util::sync::CancellationToken {
        self.health.fenced()
    }

    async fn send(&self, op: WriteOp) -> Result<(), StoreError> {
        self.tx.send(op).await.map_err(|_| StoreError::Closed)
    }
}

/// Sends the operation `op` makes on `channel` and waits for the writer's answer.
async fn ask<T>(
    channel: &mpsc::Sender<WriteOp>,
    op: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteOp,
) -> Result<T, StoreError> {
    let (reply, rx) = oneshot::channel();
    channel
        .send(op(reply))
        .await
        .map_err(|_| StoreError::Closed)?;
    rx.await.map_err(|_| StoreError::Closed)?
}

/// The writer's connection, to one database or the other.
pub(super) enum Conn {
    Sqlite {
        conn: SqliteConnection,
        /// Stopped when the writer closes, before its last checkpoint.
        checkpointer: Option<Checkpointer>,
        /// Held for as long as the writer runs: one process per SQLite file.
        lock: Option<sqlite::FileLock>,
    },
    Postgres(Box<postgres::batch::WriteConn>),
}

impl Conn {
    async fn commit(&mut self, batch: &Batch) -> Result<Outcome, CommitError> {
        match self {
            Conn::Sqlite { conn, .. } => Ok(sqlite::batch::commit(conn, batch).await?),
            Conn::Postgres(conn) => conn.commit(batch).await,
        }
    }

    /// Where each stream stands in the store.
    async fn positions(&mut self, ids: &[Arc<str>]) -> Result<Vec<Position>, CommitError> {
        match self {
            Conn::Sqlite { conn, .. } => Ok(sqlite::batch::positions(conn, ids).await?),
            Conn::Postgres(conn) => conn.positions(ids).await,
        }
    }

    /// A batch given up on is not looked for again.
    fn forget(&mut self) {
        if let Conn::Postgres(conn) = self {
            conn.forget();
        }
    }

    /// At close: SQLite's log is checkpointed and truncated, then the file unlocked.
    async fn close(&mut self) {
        if let Conn::Sqlite {
            conn,
            checkpointer,
            lock,
        } = self
        {
            if let Some(checkpointer) = checkpointer.take() {
                checkpointer.stop().await;
            }
            checkpoint::truncate(conn).await;
            lock.take();
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
    let health = Arc::new(Health::default());
    let writer = Writer {
        conn,
        inbox: Inbox {
            rx,
            creates: creates_rx,
            open: true,
            creates_open: true,
        },
        book: Book {
            hub,
            metrics: metrics.clone(),
            lost: HashSet::new(),
            outage: Outage::new(config.retry_window, health.clone(), metrics),
        },
        window: config.batch_window,
        batch_max,
    };
    (
        EventLog {
            tx,
            creates,
            health,
        },
        tokio::spawn(writer.run()),
    )
}

/// New streams waiting for the writer, at most.
const CREATES_QUEUE: usize = 1024;
/// The pause after a failed commit, doubled after each until [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

struct Writer {
    conn: Conn,
    inbox: Inbox,
    book: Book,
    window: Duration,
    batch_max: usize,
}

/// The writer's two channels.
struct Inbox {
    rx: mpsc::Receiver<WriteOp>,
    creates: mpsc::Receiver<WriteOp>,
    /// False once every [`EventLog`] is gone.
    open: bool,
    creates_open: bool,
}

impl Inbox {
    /// The next operation, new streams first; `None` once every sender is gone.
    async fn recv(&mut self) -> Option<WriteOp> {
        while self.open {
            tokio::select! {
                biased;
                op = self.creates.recv(), if self.creates_open => match op {
                    Some(op) => return Some(op),
                    None => self.creates_open = false,
                },
                op = self.rx.recv() => match op {
                    Some(op) => return Some(op),
                    None => self.open = false,
                },
            }
        }
        None
    }

    /// The next operation and whether it came on the lane that skips the queue (see
    /// [`EventLog::append_first`]); without `all`, of that lane only (it waits for
    /// ever once that lane is closed). `None` once every sender is gone.
    async fn recv_lane(&mut self, all: bool) -> Option<(WriteOp, bool)> {
        if all {
            while self.open {
                tokio::select! {
                    biased;
                    op = self.creates.recv(), if self.creates_open => match op {
                        Some(op) => return Some((op, true)),
                        None => self.creates_open = false,
                    },
                    op = self.rx.recv() => match op {
                        Some(op) => return Some((op, false)),
                        None => self.open = false,
                    },
                }
            }
            return None;
        }
        if !self.creates_open {
            return std::future::pending().await;
        }
        let op = self.creates.recv().await;
        if op.is_none() {
            self.creates_open = false;
        }
        op.map(|op| (op, true))
    }

    /// An operation that is already waiting, new streams first.
    fn try_recv(&mut self) -> Option<WriteOp> {
        if let Ok(op) = self.creates.try_recv() {
            return Some(op);
        }
        match self.rx.try_recv() {
            Ok(op) => Some(op),
            Err(mpsc::error::TryRecvError::Disconnected) => {
                self.open = false;
                None
            }
            Err(mpsc::error::TryRecvError::Empty) => None,
        }
    }
}

/// What the writer knows besides its connection: where committed events go, the
/// streams a constraint failure lost, and the state of an outage.
struct Book {
    hub: Arc<StreamHub>,
    metrics: Arc<Metrics>,
    /// Streams that lost events to a batch that broke a constraint: later events would
    /// leave a gap, so they are dropped and the stream is left for start-up recovery.
    lost: HashSet<Arc<str>>,
    outage: Outage,
}

/// How the attempts at one batch ended.
enum Attempted {
    /// Committed; with the streams whose `store_unavailable` end it wrote.
    Committed(Outcome, Vec<Arc<str>>),
    /// The batch breaks a constraint: retrying cannot help.
    Broken(sqlx::Error),
    /// The store still refused it at the end of the retry window.
    GaveUp,
    /// This node's lease is gone.
    Fenced,
}

/// What arrives while a batch commits. While a batch of the ordinary queue commits,
/// what comes on the lane that skips it (new streams, `running`, first events: see
/// [`EventLog::append_first`]) is kept apart and committed first, in a transaction of
/// its own, so that it waits for one large commit at most instead of riding in the
/// next one. While that small one commits, everything joins the ordinary batch: the
/// two alternate, so neither starves. Order holds: nothing on the lane depends on an
/// ordinary operation, and a stream's ordinary operations come after its first ones.
#[derive(Default)]
struct Pending {
    urgent: Batch,
    rest: Batch,
    /// Whether the commit in flight is of the ordinary queue (then the lane is kept
    /// apart).
    split: bool,
}

impl Pending {
    /// The batch to commit next: the lane's, if it has anything, else the rest.
    fn take(&mut self) -> Batch {
        if self.urgent.is_empty() {
            self.split = true;
            std::mem::take(&mut self.rest)
        } else {
            self.split = false;
            std::mem::take(&mut self.urgent)
        }
    }

    fn target(&mut self, urgent: bool) -> &mut Batch {
        if urgent && self.split {
            &mut self.urgent
        } else {
            &mut self.rest
        }
    }
}

impl Writer {
    async fn run(mut self) {
        let mut next = Pending::default();
        loop {
            let mut batch = next.take();
            if batch.is_empty() {
                // Streams to end after an outage: try again after a pause even if
                // nothing else comes.
                let first = match self.book.outage.probe_in() {
                    None => self.inbox.recv().await,
                    Some(wait) => tokio::time::timeout(wait, self.inbox.recv())
                        .await
                        .unwrap_or(None),
                };
                match first {
                    Some(op) => {
                        self.book.take(op, &mut batch);
                        self.fill(&mut batch).await;
                    }
                    None if !self.inbox.open => break,
                    None => {}
                }
            }
            let book = &self.book;
            batch.retain_streams(|id| !book.lost.contains(id) && !book.outage.holds(id));
            let ends = self.book.outage.pending_ends();
            let close = batch.close;
            if batch.is_empty() && ends.is_empty() {
                if close {
                    break;
                }
                continue;
            }
            if self.book.outage.is_fenced() {
                self.book.refuse_all(batch, StoreError::Fenced);
                if close {
                    break;
                }
                continue;
            }

            let started = Instant::now();
            match self.commit(&mut batch, &ends, &mut next).await {
                Attempted::Committed(outcome, ended) => {
                    self.book
                        .metrics
                        .observe_commit(batch.events, started.elapsed());
                    self.book.outage.recovered();
                    self.book.publish(batch, outcome);
                    self.book.outage.ended(&ended, &self.book.hub);
                }
                Attempted::Broken(e) => self.book.lose(batch, e),
                Attempted::GaveUp => {
                    self.conn.forget();
                    self.book
                        .outage
                        .give_up(batch, &mut next.rest, &self.book.hub);
                }
                Attempted::Fenced => {
                    self.book.outage.fence();
                    self.book.refuse_all(batch, StoreError::Fenced);
                    self.book
                        .refuse_all(std::mem::take(&mut next.urgent), StoreError::Fenced);
                    self.book
                        .refuse_all(std::mem::take(&mut next.rest), StoreError::Fenced);
                }
            }
            if close {
                break;
            }
        }
        self.conn.close().await;
        tracing::debug!("event log closed");
    }

    /// Collects more operations until the window closes or the batch is full.
    async fn fill(&mut self, batch: &mut Batch) {
        let deadline = tokio::time::Instant::now() + self.window;
        while batch.events < self.batch_max && !batch.close {
            match self.inbox.try_recv() {
                Some(op) => self.book.take(op, batch),
                None if !self.inbox.open => return,
                None => match tokio::time::timeout_at(deadline, self.inbox.recv()).await {
                    Ok(Some(op)) => self.book.take(op, batch),
                    Ok(None) | Err(_) => return,
                },
            }
        }
    }

    /// Commits `batch` with the `store_unavailable` ends of `ends`, retrying while the
    /// failure may pass and the retry window lasts; collects `next` meanwhile.
    async fn commit(
        &mut self,
        batch: &mut Batch,
        ends: &[Arc<str>],
        next: &mut Pending,
    ) -> Attempted {
        let mut positioned = ends.is_empty();
        let mut refused = false;
        let mut backoff = FIRST_BACKOFF;
        let stop = batch.close;
        loop {
            if let Some(at) = self.book.outage.next_probe().filter(|_| !stop) {
                // Past the window: one attempt per pause, not a busy loop.
                let pause = tokio::time::sleep_until(at.into());
                collect_while(pause, &mut self.inbox, &mut self.book, next, self.batch_max).await;
            }
            let result = match self.position(batch, ends, &mut positioned, next).await {
                Ok(()) => {
                    let commit = self.conn.commit(batch);
                    collect_while(
                        commit,
                        &mut self.inbox,
                        &mut self.book,
                        next,
                        self.batch_max,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            let (error, certain) = match result {
                Ok(outcome) => return Attempted::Committed(outcome, ends.to_vec()),
                Err(CommitError::Fenced) => return Attempted::Fenced,
                Err(CommitError::Db(e)) => (e, true),
                Err(CommitError::Unknown(e)) => (e, false),
            };
            let Some(fault) = Fault::of(&error) else {
                return Attempted::Broken(error);
            };
            self.book.metrics.commit_error();
            self.book.outage.failing(fault, &error);
            if certain && !refused {
                // Nothing of it was written: answer at once what starts something new,
                // rather than after the window.
                refused = true;
                batch.take_new_work().refuse(|| StoreError::Unavailable);
            }
            if stop || self.book.outage.should_give_up() {
                return Attempted::GaveUp;
            }
            let pause = tokio::time::sleep(backoff);
            collect_while(pause, &mut self.inbox, &mut self.book, next, self.batch_max).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Adds the `store_unavailable` end of each stream of `ends` to `batch`, after the
    /// last event the store has of it (whatever a lost connection may have committed of
    /// an earlier batch); none for a stream that has ended or is gone.
    async fn position(
        &mut self,
        batch: &mut Batch,
        ends: &[Arc<str>],
        positioned: &mut bool,
        next: &mut Pending,
    ) -> Result<(), CommitError> {
        if *positioned {
            return Ok(());
        }
        let find = self.conn.positions(ends);
        let found =
            collect_while(find, &mut self.inbox, &mut self.book, next, self.batch_max).await?;
        for p in found {
            if let Some((last_seq, false)) = p.at {
                let (event, end) = super::outage::end_event(last_seq + 1);
                batch.push_event(p.id, event, Vec::new(), Some(end));
            }
        }
        *positioned = true;
        Ok(())
    }
}

/// Awaits `fut` while collecting the next batch (up to its bound: then the channel
/// fills and senders wait; the lane that skips the queue is still read, so a new
/// stream's first commit never waits behind a full batch of token events).
async fn collect_while<F: Future>(
    fut: F,
    inbox: &mut Inbox,
    book: &mut Book,
    next: &mut Pending,
    batch_max: usize,
) -> F::Output {
    tokio::pin!(fut);
    loop {
        let open = inbox.open && !next.rest.close;
        let more = open && next.rest.events < batch_max;
        tokio::select! {
            biased;
            out = &mut fut => return out,
            op = inbox.recv_lane(more), if open => {
                if let Some((op, urgent)) = op {
                    book.take(op, next.target(urgent));
                }
            }
        }
    }
}

impl Book {
    /// Adds one operation to `batch`, unless the state of the store says otherwise.
    fn take(&mut self, op: WriteOp, batch: &mut Batch) {
        if self.outage.is_fenced() {
            op.refuse(StoreError::Fenced);
            return;
        }
        match op {
            WriteOp::Append {
                stream_id,
                event,
                ids,
                end,
            } => {
                if self.lost.contains(&stream_id) {
                    return;
                }
                if self.outage.holds(&stream_id) || self.outage.is_down() {
                    // Taken over (or to be): the writer ends it, not its generation.
                    self.outage.doom(stream_id, end.is_some(), &self.hub);
                    return;
                }
                batch.push_event(stream_id, event, ids, end);
            }
            WriteOp::Abandon { stream_id } => self.outage.abandoned(&stream_id),
            op @ (WriteOp::Create { .. }
            | WriteOp::CreateSession { .. }
            | WriteOp::Edit { .. }
            | WriteOp::Delete { .. }
            | WriteOp::Purge { .. })
                if !self.outage.is_available() =>
            {
                op.refuse(StoreError::Unavailable);
            }
            op => batch.add(op),
        }
    }

    /// Answers every waiter of `batch` with `e`; its events are dropped.
    fn refuse_all(&mut self, mut batch: Batch, e: StoreError) {
        let e = || match e {
            StoreError::Fenced => StoreError::Fenced,
            _ => StoreError::Unavailable,
        };
        batch.take_new_work().refuse(e);
        for reply in batch.renewed.drain(..) {
            let _ = reply.send(Err(e()));
        }
        for reply in batch.flushes.drain(..) {
            let _ = reply.send(());
        }
    }

    /// Answers the batch's waiters and hands its events to the hub.
    fn publish(&mut self, mut batch: Batch, outcome: Outcome) {
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
            self.hub
                .publish(&stream.id, crate::hub::LiveBatch::new(stream.events));
            if terminal {
                self.hub.close(&stream.id);
            }
        }
        for ((id, reply), existed) in batch.deletes.drain(..).zip(outcome.deleted) {
            self.lost.remove(id.as_str());
            self.outage.deleted(&id);
            self.hub.clear_abort(&id);
            let _ = reply.send(Ok(existed));
        }
        for ((_, reply), existed) in batch.edits.drain(..).zip(outcome.edited) {
            let _ = reply.send(Ok(existed));
        }
        for ((_, _, reply), n) in batch.purges.drain(..).zip(outcome.purged) {
            let _ = reply.send(Ok(n));
        }
        for reply in batch.renewed.drain(..) {
            let _ = reply.send(Ok(()));
        }
        for reply in batch.flushes.drain(..) {
            let _ = reply.send(());
        }
    }

    /// A batch that breaks a constraint: nothing of it is stored, and its streams get
    /// nothing more (they would have a gap).
    fn lose(&mut self, mut batch: Batch, e: sqlx::Error) {
        tracing::error!(error = %e, events = batch.events, "store commit failed; the batch is lost");
        self.metrics.commit_failed();
        for stream in batch.streams.drain(..) {
            // Readers fall back to the store; the stream stays open there until
            // start-up recovery ends it as interrupted (also one the writer was to end).
            self.hub.close(&stream.id);
            self.outage.deleted(&stream.id);
            self.lost.insert(stream.id);
        }
        batch.take_new_work().refuse(|| StoreError::Closed);
        for reply in batch.renewed.drain(..) {
            let _ = reply.send(Err(StoreError::Closed));
        }
        for reply in batch.flushes.drain(..) {
            let _ = reply.send(());
        }
    }
}

impl Batch {
    fn add(&mut self, op: WriteOp) {
        match op {
            WriteOp::CreateSession { session, reply } => self.sessions.push((session, reply)),
            WriteOp::Edit { edit, reply } => self.edits.push((edit, reply)),
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
            WriteOp::Renew { lease, reply } => {
                self.renew = Some(lease);
                self.renewed.push(reply);
            }
            WriteOp::Abandon { .. } => {}
        }
    }
}
