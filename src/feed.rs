//! A reader's view of one stream: the stored events after its cursor, then the live
//! ones, then the end — with no gap and no duplicate.
//!
//! The order is what makes it exact. The feed subscribes to the hub *before* it reads
//! the store, so an event committed in between is in one or the other (or both, and the
//! copy with a seq already sent is skipped). Because the writer publishes only after
//! commit, anything a lagging reader missed live is already in the store to catch up
//! from. A stream that is not live here (another process runs it, or it was left open
//! by a failed commit) is followed by polling the store; a poll without a wake-up also
//! checks that the stream still exists, so a reader of a stream another node deleted
//! does not wait forever.

use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;

use crate::event::Event;
use crate::hub::{Published, StreamHub};
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

/// Follows `stream_id` from `after` (exclusive) to its terminal event.
pub fn follow(
    store: Store,
    hub: Arc<StreamHub>,
    metrics: Arc<Metrics>,
    stream_id: String,
    after: u64,
) -> impl Stream<Item = Result<Chunk, StoreError>> + Send + 'static {
    async_stream::try_stream! {
        let mut live = hub.subscribe(&stream_id);
        // Not live here: follow the store, woken by other nodes' commits.
        let mut watch = live.is_none().then(|| hub.watch(&stream_id));
        let poll = if store.is_shared() { POLL_SHARED } else { POLL };
        let mut cursor = Cursor { last: after, finished: false };

        // Read the store at the start, and again only after a lag, a closed channel or
        // a poll tick: while a reader keeps up, live batches are all it needs.
        let mut from_store = true;
        loop {
            while from_store {
                if let Some(w) = watch.as_mut() {
                    w.seen();
                }
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
            match live.as_mut() {
                Some(rx) => match rx.recv().await {
                    Ok(batch) => {
                        let skip = batch.iter().take_while(|e| e.seq <= cursor.last).count();
                        let contiguous = batch.get(skip).is_none_or(|e| e.seq == cursor.last + 1);
                        if !contiguous {
                            // Cannot happen while the writer publishes after commit, in
                            // order; if it ever did, the store fills the gap.
                            from_store = true;
                        } else if skip < batch.len() {
                            cursor.advance(&batch[skip..]);
                            yield Chunk::Live(batch, skip);
                            if cursor.finished {
                                return;
                            }
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        metrics.reader_lagged();
                        from_store = true;
                    }
                    // The terminal event was published (or the stream was lost); the
                    // store has the rest.
                    Err(RecvError::Closed) => {
                        live = None;
                        from_store = true;
                    }
                },
                None => {
                    let w = watch.get_or_insert_with(|| hub.watch(&stream_id));
                    if tokio::time::timeout(poll, w.changed()).await.is_err()
                        && store.stream_unscoped(&stream_id).await?.is_none()
                    {
                        // Deleted (through another node) before this reader saw its
                        // end: nothing more will come.
                        return;
                    }
                    from_store = true;
                }
            }
        }
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
