//! Live fan-out of committed events to the readers of each stream.
//!
//! One bounded `broadcast` channel per live stream carries whole committed batches
//! (`Arc<[Event]>`, shared, never copied per reader). Publishing never waits: a reader
//! that falls more than the channel's capacity behind is told it lagged and catches
//! up from the store (see [`crate::feed`]). The writer opens nothing; the engine opens a
//! stream's channel before its first event is written, and the writer closes it after
//! publishing the terminal event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

use crate::event::Event;

/// Events committed together for one stream, in seq order.
pub type Published = Arc<[Event]>;

pub struct StreamHub {
    capacity: usize,
    // A std mutex: it is held for a map lookup only, never across an `.await`.
    channels: Mutex<HashMap<Arc<str>, broadcast::Sender<Published>>>,
}

impl StreamHub {
    /// `capacity`: batches buffered per stream for its slowest live reader.
    pub fn new(capacity: usize) -> Self {
        StreamHub {
            capacity: capacity.max(1),
            channels: Mutex::new(HashMap::new()),
        }
    }

    fn channels(&self) -> MutexGuard<'_, HashMap<Arc<str>, broadcast::Sender<Published>>> {
        // A panic while holding this lock cannot leave the map half-updated.
        self.channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes `stream_id` live, before any of its events is written.
    pub fn open(&self, stream_id: &str) {
        let (tx, _) = broadcast::channel(self.capacity);
        self.channels().insert(Arc::from(stream_id), tx);
    }

    /// A receiver of everything published from now on, or `None` if the stream is not
    /// live in this process (finished, or never run here).
    pub fn subscribe(&self, stream_id: &str) -> Option<broadcast::Receiver<Published>> {
        self.channels()
            .get(stream_id)
            .map(broadcast::Sender::subscribe)
    }

    /// Hands committed events to the stream's readers. Never blocks.
    pub fn publish(&self, stream_id: &str, events: Published) {
        if let Some(tx) = self.channels().get(stream_id) {
            // No receiver is fine: nobody is reading right now.
            let _ = tx.send(events);
        }
    }

    /// Ends the live channel: readers drain what was published, then see it closed.
    pub fn close(&self, stream_id: &str) {
        self.channels().remove(stream_id);
    }

    /// Live readers across all streams (for metrics).
    pub fn receivers(&self) -> usize {
        self.channels()
            .values()
            .map(broadcast::Sender::receiver_count)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    #[tokio::test]
    async fn publish_reaches_subscribers_and_close_ends_them() {
        let hub = StreamHub::new(4);
        assert!(hub.subscribe("s").is_none());
        hub.open("s");
        let mut rx = hub.subscribe("s").unwrap();
        hub.publish("s", Arc::from(vec![Event::token(2, "a")]));
        hub.close("s");
        assert_eq!(rx.recv().await.unwrap()[0].seq, 2);
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Closed)
        ));
    }

    #[tokio::test]
    async fn a_slow_reader_lags_instead_of_blocking_the_publisher() {
        let hub = StreamHub::new(2);
        hub.open("s");
        let mut rx = hub.subscribe("s").unwrap();
        for seq in 1..=10 {
            hub.publish("s", Arc::from(vec![Event::token(seq, "x")]));
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
    }
}
