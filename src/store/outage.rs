//! An outage of the store as the writer lives it: available → retrying (commits fail,
//! the batch is retried, for up to the retry window) → down (the window has passed)
//! → available again at the first commit that succeeds. Each transition is logged
//! once, and shown by `/readyz` and `/metrics` through [`Health`].
//!
//! Past the window the writer takes over every stream it holds uncommitted events of
//! (and, while the store stays down, every stream that sends one): it drops those
//! events — nobody has seen them, since nothing is published before its commit — ends
//! the stream's live channel so its readers' responses close (they resume later), and
//! marks it in [`Health`] so that its generation stops. With the first commit that
//! succeeds it writes the stream's terminal `error` event (`store_unavailable`, status
//! `failed`) after the last event the store has of it. It keeps dropping whatever the
//! stream's generation still sends until that generation has said it stopped (its own
//! terminal event, or [`super::EventLog::abandon`], both ordered after its events on
//! the channel), so nothing can follow the end it wrote.
//!
//! This knows nothing of what a batch writes beyond its streams' ids: the SQL is the
//! databases' (issue 16 may change the tables freely).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::batch::{Batch, StreamEnd};
use super::health::{Fault, Health};
use super::{STORE_UNAVAILABLE, STORE_UNAVAILABLE_MESSAGE, StoreError};
use crate::event::{Event, StreamStatus, Usage, now_ms};
use crate::hub::StreamHub;
use crate::metrics::Metrics;

/// Past the window, the pause between two attempts grows to this.
const MAX_PROBE: Duration = Duration::from_secs(1);
const FIRST_PROBE: Duration = Duration::from_millis(100);

pub(super) struct Outage {
    window: Duration,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    state: State,
    doomed: HashMap<Arc<str>, Doomed>,
    probe: Duration,
    next_probe: Option<Instant>,
    fenced: bool,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Available,
    /// Commits fail since `since`; the batch is retried.
    Retrying {
        since: Instant,
    },
    /// They have failed for longer than the window.
    Down {
        since: Instant,
    },
}

/// A stream the writer ends itself.
struct Doomed {
    /// Its `store_unavailable` end is committed.
    end_written: bool,
    /// Its generation sends nothing more.
    finished: bool,
}

/// The terminal event of a stream the store refused past the window, at `seq`.
pub(super) fn end_event(seq: u64) -> (Event, StreamEnd) {
    let event = Event::error(seq, STORE_UNAVAILABLE, STORE_UNAVAILABLE_MESSAGE);
    let end = StreamEnd {
        status: StreamStatus::Failed,
        finish_reason: None,
        error: Some((
            STORE_UNAVAILABLE.to_owned(),
            STORE_UNAVAILABLE_MESSAGE.to_owned(),
        )),
        usage: Usage::default(),
        finished_at: now_ms(),
        turn_text: None,
        turn_tool_calls: None,
    };
    (event, end)
}

impl Outage {
    pub fn new(window: Duration, health: Arc<Health>, metrics: Arc<Metrics>) -> Self {
        Outage {
            window,
            health,
            metrics,
            state: State::Available,
            doomed: HashMap::new(),
            probe: FIRST_PROBE,
            next_probe: None,
            fenced: false,
        }
    }

    pub fn is_available(&self) -> bool {
        matches!(self.state, State::Available) && !self.fenced
    }

    pub fn is_down(&self) -> bool {
        matches!(self.state, State::Down { .. })
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// Whether the writer has taken `id` over: its generation's events are dropped.
    pub fn holds(&self, id: &str) -> bool {
        self.doomed.contains_key(id)
    }

    /// The streams whose end is still to be written.
    pub fn pending_ends(&self) -> Vec<Arc<str>> {
        self.doomed
            .iter()
            .filter(|(_, d)| !d.end_written)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// With ends to write and nothing else to do: how long to wait before trying.
    pub fn probe_in(&self) -> Option<Duration> {
        if self.doomed.values().all(|d| d.end_written) {
            return None;
        }
        Some(self.next_probe.map_or(Duration::ZERO, |at| {
            at.saturating_duration_since(Instant::now())
        }))
    }

    /// Past the window: when the next attempt may be made.
    pub fn next_probe(&self) -> Option<Instant> {
        self.next_probe.filter(|_| self.is_down())
    }

    /// A commit failed with `fault`.
    pub fn failing(&mut self, fault: Fault, error: &sqlx::Error) {
        match self.state {
            State::Available => {
                self.state = State::Retrying {
                    since: Instant::now(),
                };
                self.health.failing(fault);
                self.metrics.store_available(false);
                tracing::warn!(
                    %error,
                    window = ?self.window,
                    "store commit failed ({}); retrying for up to the retry window \
                     (new streams get 503 store_unavailable meanwhile)",
                    fault.describe()
                );
            }
            State::Retrying { .. } => {
                self.health.failing(fault);
                tracing::debug!(%error, "store commit failed again; retrying");
            }
            State::Down { .. } => {
                self.next_probe = Some(Instant::now() + self.probe);
                self.probe = (self.probe * 2).min(MAX_PROBE);
                tracing::debug!(%error, "the store still refuses commits");
            }
        }
    }

    /// Whether the batch that just failed is to be given up on.
    pub fn should_give_up(&self) -> bool {
        match self.state {
            State::Available => false,
            State::Retrying { since } => since.elapsed() >= self.window,
            State::Down { .. } => true,
        }
    }

    /// Gives up on `batch` (and on the events of `next`): takes over every stream
    /// they hold events of; answers the waiters; keeps the status updates for later.
    pub fn give_up(&mut self, mut batch: Batch, next: &mut Batch, hub: &StreamHub) {
        self.metrics.commit_failed();
        if let State::Retrying { since } = self.state {
            self.state = State::Down { since };
            self.next_probe = Some(Instant::now() + self.probe);
            tracing::error!(
                window = ?self.window,
                streams = batch.streams.len() + next.streams.len(),
                "the store has refused commits for longer than the retry window: the \
                 streams it holds events of end with store_unavailable as soon as it \
                 accepts writes again"
            );
        }
        let taken: Vec<(Arc<str>, bool)> = batch
            .streams
            .iter()
            .chain(&next.streams)
            .map(|s| (s.id.clone(), s.end.is_some()))
            .collect();
        let mut fresh = Vec::new();
        for (id, finished) in taken {
            if let Some(id) = self.take_over(id, finished, hub) {
                fresh.push(id);
            }
        }
        self.health.doom(fresh);
        next.retain_streams(|id| !self.doomed.contains_key(id));
        batch.take_new_work().refuse(|| StoreError::Unavailable);
        for reply in batch.renewed.drain(..) {
            let _ = reply.send(Err(StoreError::Unavailable));
        }
        for reply in batch.flushes.drain(..) {
            let _ = reply.send(());
        }
        next.running.append(&mut batch.running);
    }

    /// Takes `id` over (or notes that its generation has ended, with `finished`).
    pub fn doom(&mut self, id: Arc<str>, finished: bool, hub: &StreamHub) {
        if let Some(id) = self.take_over(id, finished, hub) {
            self.health.doom([id]);
        }
    }

    /// Returns the id if it was not held before (to be marked in [`Health`]).
    fn take_over(&mut self, id: Arc<str>, finished: bool, hub: &StreamHub) -> Option<Arc<str>> {
        if let Some(d) = self.doomed.get_mut(&id) {
            d.finished |= finished;
            self.release_if_done(&id);
            return None;
        }
        hub.abort(&id);
        self.doomed.insert(
            id.clone(),
            Doomed {
                end_written: false,
                finished,
            },
        );
        Some(id)
    }

    /// The generation of `id` has stopped.
    pub fn abandoned(&mut self, id: &str) {
        if let Some(d) = self.doomed.get_mut(id) {
            d.finished = true;
            self.release_if_done(id);
        }
    }

    /// `id` was deleted (after its generation ended), or is left to start-up recovery.
    pub fn deleted(&mut self, id: &str) {
        if self.doomed.remove(id).is_some() {
            self.health.undoom(id);
        }
    }

    fn release_if_done(&mut self, id: &str) {
        if self
            .doomed
            .get(id)
            .is_some_and(|d| d.end_written && d.finished)
        {
            self.doomed.remove(id);
            self.health.undoom(id);
        }
    }

    /// A commit succeeded.
    pub fn recovered(&mut self) {
        if let State::Retrying { since } | State::Down { since } = self.state {
            tracing::info!(
                after = ?since.elapsed(),
                "the store accepts writes again"
            );
            self.state = State::Available;
            self.health.recovered();
            self.metrics.store_available(true);
        }
        self.probe = FIRST_PROBE;
        self.next_probe = None;
    }

    /// The commit that just succeeded wrote the ends of `ids`.
    pub fn ended(&mut self, ids: &[Arc<str>], hub: &StreamHub) {
        if ids.is_empty() {
            return;
        }
        for id in ids {
            if let Some(d) = self.doomed.get_mut(id) {
                d.end_written = true;
                self.metrics.stream_finished(StreamStatus::Failed);
                hub.clear_abort(id);
                self.release_if_done(id);
            }
        }
        tracing::warn!(
            streams = ids.len(),
            "ended the streams the store refused for longer than the retry window \
             (store_unavailable)"
        );
    }

    /// A commit found this node's lease gone.
    pub fn fence(&mut self) {
        if !self.fenced {
            self.fenced = true;
            self.health.fence();
            self.metrics.store_available(false);
            tracing::error!(
                "this node's lease is gone: its batch was not committed and nothing more \
                 will be (another node owns its streams now)"
            );
        }
    }
}
