//! Several nodes on one PostgreSQL database: the background work that makes them one
//! service. Nothing here runs on SQLite.
//!
//! - **Lease**: every `lease / 3` the node renews its row in `nodes`, through its
//!   writer (in a batch's transaction, see [`EventLog::renew_lease`]): a node whose
//!   writer cannot write does not keep its lease. Every batch also checks the lease in
//!   its own transaction (fencing, see `store::postgres::cluster::hold_lease`). A node
//!   that finds its row gone or expired was taken for dead (it stalled longer than its
//!   lease) and its streams were taken over; one that could not renew within its lease
//!   (the database unreachable) must assume so. Either reports [`Fatal::LeaseLost`], and
//!   the process stops through `app`'s shutdown path without writing to those streams
//!   (fail-stop, exit status 75) rather than write beside the survivor.
//! - **Sweep**: as often, it looks for nodes whose lease expired; exactly one survivor
//!   takes each (`FOR UPDATE SKIP LOCKED`) and ends its open streams `interrupted`, or
//!   continues them here when the backend can (see [`crate::store::Store::sweep`]).
//! - **Listen**: one `LISTEN` connection hears every node's commits (stream ids and last
//!   seqs). For the streams this node has readers of, the listener reads the new events
//!   in one query and hands them to those readers through the hub (or wakes them to
//!   read the store themselves, see [`StreamHub::notified`]); it also hears
//!   cancels, which it applies to the streams generated here. When the connection is
//!   lost every reader is woken to catch up from the table, and it reconnects.
//!
//! **Architecture Invariant:** a notification carries no event data: readers on every
//! node read events from the table, so a reader on any node sees the same bytes.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::engine::Engine;
use crate::fatal::{Fatal, FatalSender};
use crate::hub::StreamHub;
use crate::store::postgres::cluster::Notice;
use crate::store::{EventLog, Store, StoreError};

/// Starts the lease, sweep and listen loops as tracked tasks of the engine; they end
/// when the engine shuts down. A lost lease is reported to `fatal`.
pub fn start(
    engine: &Arc<Engine>,
    store: Store,
    hub: Arc<StreamHub>,
    config: &ClusterConfig,
    fatal: FatalSender,
) {
    let lease = config.node_lease;
    let every = (lease / 3).max(Duration::from_millis(100));
    let shutdown = engine.shutdown_token();
    let held_since = tokio::time::Instant::from_std(store.leased_at());
    engine.spawn(renew(
        engine.log().clone(),
        Lease {
            node: store.node().to_owned(),
            lease,
            every,
            held_since,
        },
        shutdown.clone(),
        fatal,
    ));
    engine.spawn(sweep(
        engine.clone(),
        store.clone(),
        every,
        shutdown.clone(),
    ));
    engine.spawn(listen(engine.clone(), store, hub, shutdown));
}

/// A steady tick that does not try to catch up after a slow round.
fn ticker(every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Waits for the next tick; false once shutdown has begun.
async fn next_tick(tick: &mut tokio::time::Interval, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tick.tick() => true,
    }
}

/// The timing of this node's lease.
struct Lease {
    node: String,
    lease: Duration,
    every: Duration,
    /// When the last renewal that committed was sent: the lease lasts at least until
    /// then plus `lease` (the database starts counting later than this clock).
    held_since: tokio::time::Instant,
}

async fn renew(log: EventLog, mut lease: Lease, shutdown: CancellationToken, fatal: FatalSender) {
    let mut tick = ticker(lease.every);
    let fenced = log.fenced();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = fenced.cancelled() => break,
            _ = tick.tick() => {}
        }
        let sent = tokio::time::Instant::now();
        let until = lease.held_since + lease.lease;
        let renewed = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout_at(until, log.renew_lease(lease.lease)) => r,
        };
        match renewed {
            Ok(Ok(())) => lease.held_since = sent,
            Ok(Err(StoreError::Fenced)) => break,
            Ok(Err(e)) if tokio::time::Instant::now() < until => {
                tracing::warn!(error = %e, "renewing the node lease failed; retrying");
            }
            Ok(Err(_)) | Err(_) => {
                // The database has not taken a renewal for a whole lease: a survivor
                // may be taking this node's streams right now.
                tracing::error!(
                    lease = ?lease.lease,
                    "could not renew this node's lease within it (the database is \
                     unreachable or refuses writes)"
                );
                break;
            }
        }
    }
    // Fail-stop: this node was silent longer than its lease and a survivor has ended
    // or taken over every stream it was generating (or another process took its id).
    // Writing on would collide with what they wrote; a supervisor restarts it.
    tracing::error!(node = %lease.node, "{}", Fatal::LeaseLost);
    fatal.report(Fatal::LeaseLost);
}

async fn sweep(engine: Arc<Engine>, store: Store, every: Duration, shutdown: CancellationToken) {
    let mut tick = ticker(every);
    while next_tick(&mut tick, &shutdown).await {
        let models = engine.models();
        match store.sweep(&|model| models.can_continue(model)).await {
            Ok(sweep) => {
                if !sweep.dead.is_empty() || !sweep.ended.is_empty() || !sweep.claimed.is_empty() {
                    tracing::warn!(
                        dead = ?sweep.dead,
                        ended = sweep.ended.len(),
                        continued = sweep.claimed.len(),
                        "took over from dead nodes"
                    );
                }
                engine
                    .metrics()
                    .cluster_took_over(sweep.ended.len() + sweep.claimed.len());
                if !sweep.claimed.is_empty() {
                    engine.continue_unfinished(sweep.claimed).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "sweeping dead nodes failed; retrying"),
        }
    }
}

async fn listen(
    engine: Arc<Engine>,
    store: Store,
    hub: Arc<StreamHub>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let listener = tokio::select! {
            _ = shutdown.cancelled() => return,
            l = store.listen() => l,
        };
        let mut listener = match listener {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for other nodes; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        // Whatever was committed while nobody listened is in the table.
        hub.wake_all();
        loop {
            let notice = tokio::select! {
                _ = shutdown.cancelled() => return,
                n = listener.recv() => n,
            };
            match notice {
                Ok(Notice::Committed(streams)) => {
                    backoff = Duration::from_millis(100);
                    let delivered = deliver(&store, &hub, &streams).await;
                    engine.metrics().cluster_woken(delivered);
                }
                Ok(Notice::Cancel(id)) => {
                    if engine.cancel_local(&id) {
                        tracing::info!(stream = %id, "cancelled at another node's request");
                    }
                }
                Ok(Notice::Lost) => {
                    engine.metrics().cluster_listen_lost();
                    tracing::warn!("lost the LISTEN connection; readers catch up from the table");
                    hub.wake_all();
                }
                Err(e) => {
                    engine.metrics().cluster_listen_lost();
                    tracing::warn!(error = %e, "the LISTEN connection failed; reconnecting");
                    hub.wake_all();
                    break;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Hands a notification's new events to this node's readers of those streams: one
/// query for all of them rather than one per reader. Whatever cannot be read is woken
/// instead, for its readers to read the store. Returns how many streams it read for.
async fn deliver(store: &Store, hub: &StreamHub, streams: &[(String, u64)]) -> usize {
    let wanted = hub.notified(streams);
    if wanted.is_empty() {
        return 0;
    }
    match store.events_after_each(&wanted).await {
        Ok(found) => {
            for (d, events) in wanted.iter().zip(found) {
                hub.deliver(d, events);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading other nodes' new events failed; waking their readers");
            for d in &wanted {
                hub.wake(&d.stream_id, d.seq);
            }
        }
    }
    wanted.len()
}
