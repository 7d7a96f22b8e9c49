//! Abandonment (SPEC §6, `SPOOL_ABANDON_AFTER`): a stream that no one has read for that
//! long is cancelled — it ends `cancelled` like any cancelled stream, with a log line and
//! `spool_streams_abandoned_total` saying why.
//!
//! A reader is anything following the stream's live channel in the hub: an SSE response
//! (any format), a WebSocket follower, a non-streaming chat completion waiting for its
//! end. A task of the engine looks at every live stream a few times per period; a stream
//! is unread since it last had a reader, or since the last reader joined (one that came
//! and went between two looks still counts), or since it went live.
//!
//! Only this node's readers are seen: on several nodes (PostgreSQL), a reader connected
//! to another node follows the stream through the store, and the node generating it
//! cannot tell. Abandonment is meant for deployments whose readers reach the node that
//! generates their stream (one node, or sticky routing); `serve` warns otherwise.
//!
//! Streams a client asked to run unattended (`GenerateRequest::unattended`: a background
//! response) are never abandoned.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Engine;
use crate::hub::Readers;

/// One live stream, as the watch sees it.
struct Candidate {
    id: String,
    readers: Option<Readers>,
    /// Exempt: unattended, or being cancelled already.
    exempt: bool,
}

/// Since when each live stream has had no reader here.
#[derive(Default)]
struct Quiet {
    since: HashMap<String, Instant>,
}

impl Quiet {
    /// The streams among `live` unread for at least `after` at `now`. Forgets every
    /// stream that is not in `live`, so it holds at most the live streams.
    fn scan(&mut self, live: Vec<Candidate>, after: Duration, now: Instant) -> Vec<String> {
        let mut since = HashMap::with_capacity(live.len());
        let mut due = Vec::new();
        for stream in live {
            let Some(readers) = stream.readers.filter(|_| !stream.exempt) else {
                continue;
            };
            if readers.now > 0 {
                continue;
            }
            let first_seen = self.since.get(&stream.id).copied().unwrap_or(now);
            let quiet_since = first_seen.max(readers.joined);
            if now.duration_since(quiet_since) >= after {
                due.push(stream.id.clone());
            }
            since.insert(stream.id, first_seen);
        }
        self.since = since;
        due
    }
}

impl Engine {
    /// Starts the abandonment watch: a tracked task that ends at shutdown.
    pub fn watch_abandoned(self: &Arc<Self>, after: Duration) {
        if self.store.is_shared() {
            tracing::warn!(
                after = ?after,
                "SPOOL_ABANDON_AFTER counts only this node's readers: a stream read only \
                 through other nodes looks unread here and is cancelled"
            );
        }
        let engine = self.clone();
        self.spawn(async move { engine.abandon_unread(after).await });
    }

    async fn abandon_unread(&self, after: Duration) {
        let every = (after / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        let shutdown = self.shutdown.clone();
        let mut quiet = Quiet::default();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            // The live map first, then the hub: never both locks at once.
            let live: Vec<(String, bool)> = self
                .live()
                .iter()
                .map(|(id, live)| (id.clone(), live.unattended || live.cancel.is_cancelled()))
                .collect();
            let candidates = live
                .into_iter()
                .map(|(id, exempt)| Candidate {
                    readers: self.hub.readers(&id),
                    id,
                    exempt,
                })
                .collect();
            for id in quiet.scan(candidates, after, Instant::now()) {
                if self.cancel_local(&id) {
                    self.metrics.stream_abandoned();
                    tracing::info!(
                        stream_id = %id,
                        unread_for = ?after,
                        "stream abandoned: no reader for SPOOL_ABANDON_AFTER; cancelling it"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(id: &str, now: usize, joined: Instant, exempt: bool) -> Candidate {
        Candidate {
            id: id.into(),
            readers: Some(Readers { now, joined }),
            exempt,
        }
    }

    #[test]
    fn only_streams_unread_for_the_whole_period_are_due() {
        let after = Duration::from_secs(10);
        let start = Instant::now();
        let mut quiet = Quiet::default();
        let at = |secs| start + Duration::from_secs(secs);
        let look = |quiet: &mut Quiet, now: Instant, read: usize, joined: Instant| {
            quiet.scan(
                vec![
                    stream("unread", 0, start, false),
                    stream("read", read, joined, false),
                    stream("unattended", 0, start, true),
                    Candidate {
                        id: "not_live_here".into(),
                        readers: None,
                        exempt: false,
                    },
                ],
                after,
                now,
            )
        };
        assert!(look(&mut quiet, at(0), 1, start).is_empty());
        assert!(look(&mut quiet, at(9), 1, start).is_empty());
        // "read" lost its reader at 9 s; "unread" never had one.
        assert_eq!(look(&mut quiet, at(10), 0, start), vec!["unread"]);
        assert!(look(&mut quiet, at(18), 0, start).contains(&"unread".to_owned()));
        // A reader that joined at 15 s and left before the next look still counts.
        assert!(!look(&mut quiet, at(24), 0, at(15)).contains(&"read".to_owned()));
        assert!(look(&mut quiet, at(25), 0, at(15)).contains(&"read".to_owned()));
        assert!(
            quiet.since.len() <= 2,
            "only live, non-exempt streams are kept"
        );
    }
}
