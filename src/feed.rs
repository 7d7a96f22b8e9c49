//! A reader's view of one stream: the stored events after its cursor, then the live
//! ones, then the end — with no gap and no duplicate.
//!
//! The order is what makes it exact. The feed subscribes to the hub *before* it reads
//! the store, so an event committed in between is in one or the other (or both, and the
//! copy with a seq already sent is skipped). The response that follows a stream it just
//! started subscribed before the stream was even stored, so it begins on the live
//! channel without reading the store. Because the writer publishes only after
//! commit, anything a lagging reader missed live is already in the store to catch up
//! from. A stream that is not live here (another node runs it, or it was left open by
//! a failed commit) is followed through a [`crate::hub::Watch`]: the same kind of batches, read
//! once per node by the cluster listener, or a wake-up to read the store; and, as a
//! safety net, by polling the store (which also ends a reader of a stream another node
//! deleted before it saw the end).
//!
//! A stream this process let go of without an end (see [`StreamHub::abort`]) — the
//! writer took it from its generation because the store refused its events for longer
//! than the retry window, or it was left at shutdown for the next process (or another
//! node) to continue — ends the feed without a terminal event once the store is read:
//! the reader's response closes, and it resumes where the stream goes on.

use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;

use crate::event::Event;
use crate::hub::{Published, StreamHub, Woken};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Events handed to a reader in one piece.
pub enum Chunk {
    /// Read back from the store.
    Stored(Vec<Event>),
    /// A live batch; the first `skip` events were already sent.
    Live(Published, usize),
}

impl Chunk {
    pub fn events(&self) -> &[Event] {
        match self {
            Chunk::Stored(events) => events,
            Chunk::Live(events, skip) => events.get(*skip..).unwrap_or(&[]),
        }
    }
}

/// How many stored events one read returns.
const PAGE: u32 = 512;
/// How often a stream that is not live in this process is re-read without a wake-up:
/// on SQLite nothing else wakes such a reader; with several nodes, wake-ups do, and
/// this is only the safety net.
const POLL: Duration = Duration::from_millis(200);
const POLL_SHARED: Duration = Duration::from_millis(1000);

/// Follows `stream_id` from `after` (exclusive) to its terminal event. With `early`, a
/// receiver subscribed before the stream's first event was stored, from the start
/// without reading the store (unless it falls behind).
pub fn follow(
    store: Store,
    hub: Arc<StreamHub>,
    metrics: Arc<Metrics>,
    stream_id: String,
    after: u64,
    early: Option<tokio::sync::broadcast::Receiver<Published>>,
) -> impl Stream<Item = Result<Chunk, StoreError>> + Send + 'static {
    async_stream::try_stream! {
        let from_start = early.is_some();
        let mut live = match early {
            Some(rx) => Some(rx),
            None => hub.subscribe(&stream_id),
        };
        // Not live here: follow the store, woken by other nodes' commits.
        let mut watch = live.is_none().then(|| hub.watch(&stream_id));
        let poll = if store.is_shared() { POLL_SHARED } else { POLL };
        let mut cursor = Cursor { last: after, finished: false };

        // Read the store at the start, and again only after a lag, a closed channel or
        // a poll tick: while a reader keeps up, live batches are all it needs.
        let mut from_store = !from_start;
        loop {
            while from_store {
                let events = store.events_after(&stream_id, cursor.last, PAGE).await?;
                from_store = events.len() as u32 == PAGE;
                if events.is_empty() {
                    break;
                }
                cursor.advance(&events);
                yield Chunk::Stored(events);
                if cursor.finished {
                    return;
                }
            }
            let next = match live.as_mut() {
                Some(rx) => match rx.recv().await {
                    Ok(batch) => Some(batch),
                    Err(RecvError::Lagged(_)) => {
                        metrics.reader_lagged();
                        None
                    }
                    // The terminal event was published (or the stream was lost, or
                    // let go: see `StreamHub::abort`); the store has the rest.
                    Err(RecvError::Closed) => {
                        live = None;
                        None
                    }
                },
                None if hub.is_aborted(&stream_id) => return,
                None => {
                    let w = watch.get_or_insert_with(|| hub.watch(&stream_id));
                    match tokio::time::timeout(poll, w.recv()).await {
                        Ok(Woken::Events(batch)) => Some(batch),
                        Ok(Woken::Wake) => None,
                        Err(_) => {
                            // A quiet interval: the safety-net read. A stream deleted
                            // (through another node) before this reader saw its end
                            // will send nothing more.
                            if store.stream_unscoped(&stream_id).await?.is_none() {
                                return;
                            }
                            None
                        }
                    }
                }
            };
            match next.map(|batch| follows(batch, &cursor)) {
                Some(Next::Send(batch, skip)) => {
                    cursor.advance(&batch[skip..]);
                    yield Chunk::Live(batch, skip);
                    if cursor.finished {
                        return;
                    }
                }
                Some(Next::Skip) => {}
                // A gap cannot happen while batches are published after commit, in
                // order; if it ever did, the store fills it.
                Some(Next::Gap) | None => from_store = true,
            }
        }
    }
}

/// A batch from another node's commit, or `None` to read the store: when woken
/// without events, or when `poll` passes without a word.
enum Next {
    /// Send the batch from this index on.
    Send(Published, usize),
    /// Everything in it was sent already.
    Skip,
    /// It does not follow the cursor.
    Gap,
}

/// What to do with a batch that arrived while the reader is at `cursor`.
fn follows(batch: Published, cursor: &Cursor) -> Next {
    let skip = batch.iter().take_while(|e| e.seq <= cursor.last).count();
    if batch.get(skip).is_some_and(|e| e.seq != cursor.last + 1) {
        Next::Gap
    } else if skip < batch.len() {
        Next::Send(batch, skip)
    } else {
        Next::Skip
    }
}

struct Cursor {
    last: u64,
    finished: bool,
}

impl Cursor {
    fn advance(&mut self, events: &[Event]) {
        if let Some(e) = events.last() {
            self.last = e.seq;
            self.finished = e.kind.is_terminal();
        }
    }
}
