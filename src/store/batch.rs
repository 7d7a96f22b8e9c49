//! One group commit: the operations the writer collected, grouped by stream, and who
//! waits for them. Each database writes a batch in one transaction of its own dialect
//! ([`super::sqlite::batch`], [`super::postgres::batch`]).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::oneshot;

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
}

pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// One stream's share of a batch.
pub(super) struct StreamWrites {
    pub id: Arc<str>,
    pub events: Vec<Event>,
    /// The token ids of each event (empty for most), as little-endian bytes.
    pub ids: Vec<Option<Vec<u8>>>,
    pub end: Option<StreamEnd>,
}

/// Everything one transaction writes, and who waits for it.
#[derive(Default)]
pub(super) struct Batch {
    pub sessions: Vec<(NewSession, Reply<()>)>,
    pub creates: Vec<(NewStream, Reply<()>)>,
    pub running: Vec<(Arc<str>, i64)>,
    pub streams: Vec<StreamWrites>,
    index: HashMap<Arc<str>, usize>,
    pub deletes: Vec<(String, Reply<bool>)>,
    pub purges: Vec<(i64, u32, Reply<u64>)>,
    pub flushes: Vec<oneshot::Sender<()>>,
    /// Stop the writer after this batch.
    pub close: bool,
    /// Events in the batch (its size bound).
    pub events: usize,
}

/// What a committed batch reports back to its waiters.
#[derive(Default)]
pub(super) struct Outcome {
    pub deleted: Vec<bool>,
    pub purged: Vec<u64>,
    /// New streams that were not created, and their events not written, because their
    /// session turn already existed (several nodes only).
    pub conflicts: Vec<String>,
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
                self.streams.push(StreamWrites {
                    id,
                    events: Vec::new(),
                    ids: Vec::new(),
                    end: None,
                });
                self.streams.len() - 1
            }
        };
        if let Some(s) = self.streams.get_mut(slot) {
            s.events.push(event);
            s.ids.push((!ids.is_empty()).then(|| encode_ids(&ids)));
            if end.is_some() {
                s.end = end;
            }
        }
    }

    /// Drops the events of `lost` streams (see the writer).
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
            && self.creates.is_empty()
            && self.running.is_empty()
            && self.streams.is_empty()
            && self.deletes.is_empty()
            && self.purges.is_empty()
            && self.flushes.is_empty()
    }
}

/// Token ids as stored: little-endian u32s.
pub fn encode_ids(ids: &[u32]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.to_le_bytes()).collect()
}

/// The inverse of [`encode_ids`] (a trailing partial id is ignored).
pub fn decode_ids(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let ids = [0, 1, 49151, u32::MAX];
        assert_eq!(decode_ids(&encode_ids(&ids)), ids);
    }
}
