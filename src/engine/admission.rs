//! Admission: a bound on concurrent generations with a bounded queue in front, shared
//! fairly between API keys.
//!
//! A request takes a *place* at once or is refused (→ `429`): there are `max_active +
//! max_queued` places, and with per-key caps one key holds at most its active cap plus
//! its queued cap of them. A place holder then waits for one of `max_active` *run*
//! permits, of which one key holds at most its active cap. Nothing waits without a
//! place, so the queue cannot grow past `max_queued`.
//!
//! The queue is one FIFO per key, and the keys are served in turn: a freed permit goes
//! to the waiting key (with room under its cap) that runs the fewest generations — of
//! equals, the one whose turn came first — and within a key to its oldest waiter; a
//! key served goes to the back of the turns. So a key with one waiting request is served
//! after at most one request of each other key — never behind another key's hundred.
//! Without API keys every request is one key's, and the queue is first come, first
//! served.
//!
//! Cancellation-safe: dropping a wait ([`Ticket::activate`]'s future) takes it out of its
//! queue, or gives back the permit it was granted meanwhile; dropping a [`Ticket`] or a
//! [`RunPermit`] gives its place or permit back and serves the next waiter.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::config::PerKey;

/// A key throttled again within this long is not logged again.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Whose generation: an API key's owner, or `None` (no keys configured, or a stream
/// continued after a crash). Only owners have caps of their own.
type Key = Option<Arc<str>>;

pub struct Admission(Arc<Inner>);

struct Inner {
    max_active: usize,
    max_places: usize,
    per_key: PerKey,
    // A std mutex: held for a few map and queue operations, never across an `.await`.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    places: usize,
    running: usize,
    keys: HashMap<Key, KeyState>,
    /// The keys with someone waiting, in the order they are served.
    turns: VecDeque<Key>,
    next_waiter: u64,
    /// When each throttled owner was last logged (at most one entry per configured key).
    logged: HashMap<Arc<str>, Instant>,
}

/// One key's share; removed when it holds nothing.
#[derive(Default)]
struct KeyState {
    places: usize,
    running: usize,
    waiting: VecDeque<Waiter>,
}

struct Waiter {
    id: u64,
    wake: oneshot::Sender<()>,
}

/// Why a request got no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every place is taken.
    Full,
    /// The request's key holds all the places its caps allow (`limit`).
    KeyFull { limit: usize },
}

/// A place in the queue; dropping it gives the place back.
pub struct Ticket {
    inner: Arc<Inner>,
    key: Key,
}

/// A run permit; hold it for as long as the generation runs.
pub struct RunPermit {
    inner: Arc<Inner>,
    key: Key,
}

/// The wait of a ticket holder for a run permit (see [`Ticket::activate`]).
pub struct Activation<'a> {
    ticket: &'a Ticket,
    id: u64,
    rx: oneshot::Receiver<()>,
    granted: bool,
}

/// A wait that can no longer be granted (never happens while its [`Admission`] lives).
#[derive(Debug)]
pub struct Lost;

impl Admission {
    /// `per_key`: the caps of each owner (see [`crate::config::LimitsConfig::per_key`]).
    pub fn new(max_active: usize, max_queued: usize, per_key: PerKey) -> Self {
        let max_active = max_active.max(1);
        Admission(Arc::new(Inner {
            max_active,
            max_places: max_active + max_queued,
            per_key,
            state: Mutex::new(State::default()),
        }))
    }

    /// A place for a generation of `owner`, or why there is none.
    pub fn try_admit(&self, owner: Option<&str>) -> Result<Ticket, Refused> {
        let inner = &self.0;
        let key: Key = owner.map(Arc::from);
        let mut state = inner.lock();
        if let (Some(owner), Some(limit)) = (&key, inner.key_places()) {
            let held = state.keys.get(&key).map_or(0, |k| k.places);
            if held >= limit {
                state.throttled(owner, held, limit);
                return Err(Refused::KeyFull { limit });
            }
        }
        if state.places >= inner.max_places {
            return Err(Refused::Full);
        }
        state.places += 1;
        state.keys.entry(key.clone()).or_default().places += 1;
        Ok(Ticket {
            inner: inner.clone(),
            key,
        })
    }

    pub fn running(&self) -> usize {
        self.0.lock().running
    }

    pub fn queued(&self) -> usize {
        let state = self.0.lock();
        state.places.saturating_sub(state.running)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the counts consistent before anything can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most places one owner may hold, if its queue is capped.
    fn key_places(&self) -> Option<usize> {
        let queued = self.per_key.queued?;
        let active = self.per_key.active.unwrap_or(self.max_active);
        Some(active.min(self.max_active) + queued)
    }

    /// Whether `key` may run one more generation under its own cap.
    fn under_cap(&self, key: &Key, share: &KeyState) -> bool {
        match (key, self.per_key.active) {
            (Some(_), Some(cap)) => share.running < cap,
            _ => true,
        }
    }

    /// Hands free run permits to waiters, one key's turn at a time.
    fn dispatch(&self, state: &mut State) {
        while state.running < self.max_active {
            // The fewest running first; `min_by_key` keeps the first of equals.
            let next = state
                .turns
                .iter()
                .enumerate()
                .filter_map(|(at, key)| {
                    let share = state.keys.get(key)?;
                    self.under_cap(key, share).then_some((at, share.running))
                })
                .min_by_key(|&(_, running)| running)
                .map(|(at, _)| at);
            let Some(key) = next.and_then(|at| state.turns.remove(at)) else {
                return;
            };
            let Some(share) = state.keys.get_mut(&key) else {
                continue;
            };
            // A waiter whose wait was dropped has taken itself out already; a send
            // can fail only if that raced, and then the next waiter is served.
            if let Some(waiter) = share.waiting.pop_front()
                && waiter.wake.send(()).is_ok()
            {
                share.running += 1;
                state.running += 1;
            }
            if !share.waiting.is_empty() {
                state.turns.push_back(key);
            }
        }
    }

    /// Gives back a run permit of `key` and serves the next waiter.
    fn release(&self, state: &mut State, key: &Key) {
        state.running = state.running.saturating_sub(1);
        if let Some(share) = state.keys.get_mut(key) {
            share.running = share.running.saturating_sub(1);
        }
        tidy(state, key);
        self.dispatch(state);
    }
}

impl State {
    /// Logs that `owner` was refused, at most once per [`LOG_EVERY`].
    fn throttled(&mut self, owner: &Arc<str>, held: usize, limit: usize) {
        let now = Instant::now();
        let due = self
            .logged
            .get(owner)
            .is_none_or(|at| now.duration_since(*at) >= LOG_EVERY);
        if due {
            self.logged.insert(owner.clone(), now);
            tracing::warn!(
                owner = %owner,
                held,
                limit,
                "key throttled: it holds every generation place its per-key caps allow"
            );
        }
    }
}

/// Forgets a key that holds nothing any more.
fn tidy(state: &mut State, key: &Key) {
    if state
        .keys
        .get(key)
        .is_some_and(|s| s.places == 0 && s.running == 0 && s.waiting.is_empty())
    {
        state.keys.remove(key);
    }
}

impl Ticket {
    /// Waits for a run permit, in the queue of this ticket's key. Dropping the future
    /// leaves the queue.
    pub fn activate(&self) -> Activation<'_> {
        let inner = &self.inner;
        let (wake, rx) = oneshot::channel();
        let mut state = inner.lock();
        let id = state.next_waiter;
        state.next_waiter += 1;
        let share = state.keys.entry(self.key.clone()).or_default();
        share.waiting.push_back(Waiter { id, wake });
        if share.waiting.len() == 1 {
            state.turns.push_back(self.key.clone());
        }
        inner.dispatch(&mut state);
        Activation {
            ticket: self,
            id,
            rx,
            granted: false,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        state.places = state.places.saturating_sub(1);
        if let Some(share) = state.keys.get_mut(&self.key) {
            share.places = share.places.saturating_sub(1);
        }
        tidy(&mut state, &self.key);
    }
}

impl Drop for RunPermit {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        self.inner.release(&mut state, &self.key);
    }
}

impl Future for Activation<'_> {
    type Output = Result<RunPermit, Lost>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match Pin::new(&mut this.rx).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(_)) => Poll::Ready(Err(Lost)),
            Poll::Ready(Ok(())) => {
                this.granted = true;
                Poll::Ready(Ok(RunPermit {
                    inner: this.ticket.inner.clone(),
                    key: this.ticket.key.clone(),
                }))
            }
        }
    }
}

impl Drop for Activation<'_> {
    fn drop(&mut self) {
        if self.granted {
            return;
        }
        let inner = &self.ticket.inner;
        let key = &self.ticket.key;
        let mut state = inner.lock();
        let waiting = state.keys.get_mut(key).and_then(|share| {
            let at = share.waiting.iter().position(|w| w.id == self.id)?;
            share.waiting.remove(at);
            Some(share.waiting.is_empty())
        });
        match waiting {
            // Still queued: out of the queue (and its key out of the turns if it was
            // the last).
            Some(true) => state.turns.retain(|k| k != key),
            Some(false) => {}
            // Granted a permit it never saw: give it back.
            None => {
                if self.rx.try_recv().is_ok() {
                    inner.release(&mut state, key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    const NO_CAPS: PerKey = PerKey {
        active: None,
        queued: None,
    };

    #[tokio::test]
    async fn queue_then_refuse() {
        let a = Admission::new(1, 1, NO_CAPS);
        let first = a.try_admit(None).unwrap();
        let _run = first.activate().await.unwrap();
        let second = a.try_admit(None).unwrap();
        assert!(
            a.try_admit(None).is_err(),
            "one running + one queued is full"
        );
        assert_eq!((a.running(), a.queued()), (1, 1));
        drop(_run);
        drop(first);
        let _run2 = second.activate().await.unwrap();
        assert!(a.try_admit(None).is_ok());
    }

    #[tokio::test]
    async fn keys_are_served_in_turn() {
        let a = Admission::new(2, 100, NO_CAPS);
        let tickets: Vec<Ticket> = (0..6).map(|_| a.try_admit(Some("a")).unwrap()).collect();
        let first = tickets[0].activate().await.unwrap();
        let second = tickets[1].activate().await.unwrap();
        let mut waits: Vec<_> = tickets[2..].iter().map(Ticket::activate).collect();
        let late = a.try_admit(Some("b")).unwrap();
        let mut b = late.activate();
        assert!((&mut b).now_or_never().is_none());
        drop(first);
        // B's one request is next, ahead of A's four.
        let _b_run = (&mut b).now_or_never().expect("b is served next").unwrap();
        assert!(waits.iter_mut().all(|w| w.now_or_never().is_none()));
        drop(second);
        assert!((&mut waits[0]).now_or_never().is_some(), "then a again");

        // Of keys running as many, the one that has waited longest goes first.
        let c = Admission::new(1, 10, NO_CAPS);
        let holder = c.try_admit(Some("x")).unwrap();
        let run = holder.activate().await.unwrap();
        let (y, z) = (
            c.try_admit(Some("y")).unwrap(),
            c.try_admit(Some("z")).unwrap(),
        );
        let (mut y_wait, mut z_wait) = (y.activate(), z.activate());
        drop(run);
        let y_run = (&mut y_wait).now_or_never();
        assert!(y_run.is_some());
        assert!((&mut z_wait).now_or_never().is_none());
    }

    #[tokio::test]
    async fn per_key_caps_bound_places_and_runs() {
        let caps = PerKey {
            active: Some(1),
            queued: Some(1),
        };
        let a = Admission::new(4, 4, caps);
        let first = a.try_admit(Some("a")).unwrap();
        let second = a.try_admit(Some("a")).unwrap();
        assert_eq!(
            a.try_admit(Some("a")).err(),
            Some(Refused::KeyFull { limit: 2 })
        );
        let _run = first.activate().await.unwrap();
        let mut wait = second.activate();
        assert!(
            (&mut wait).now_or_never().is_none(),
            "a's second waits for a's cap though three permits are free"
        );
        let other = a.try_admit(Some("b")).unwrap();
        assert!(other.activate().now_or_never().is_some(), "b runs at once");
        // Continued streams (no owner) have no cap of their own.
        let free: Vec<Ticket> = (0..5).map(|_| a.try_admit(None).unwrap()).collect();
        assert_eq!(a.try_admit(None).err(), Some(Refused::Full));
        drop(free);
    }

    #[tokio::test]
    async fn a_dropped_wait_leaves_the_queue_and_a_dropped_grant_is_given_back() {
        let a = Admission::new(1, 3, NO_CAPS);
        let holder = a.try_admit(Some("a")).unwrap();
        let run = holder.activate().await.unwrap();
        let cancelled = a.try_admit(Some("a")).unwrap();
        let wait = cancelled.activate();
        drop(wait);
        drop(cancelled);
        assert_eq!(a.queued(), 0);
        let next = a.try_admit(Some("b")).unwrap();
        let mut next_wait = next.activate();
        let unseen = a.try_admit(Some("c")).unwrap();
        let unseen_wait = unseen.activate();
        drop(run);
        // B got the permit; C still waits. Now C is granted but never looks.
        let b_run = (&mut next_wait).now_or_never().unwrap().unwrap();
        drop(b_run);
        assert_eq!(a.running(), 1, "granted to c");
        drop(unseen_wait);
        assert_eq!(a.running(), 0, "c's unseen permit came back");
        drop(next_wait);
        drop(next);
        drop(unseen);
        drop(holder);
        assert!(a.0.lock().keys.is_empty() && a.0.lock().turns.is_empty());
    }
}
