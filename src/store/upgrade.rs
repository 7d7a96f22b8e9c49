//! Upgrading a database written before the event log v2: its `events` table (one row
//! per event: text stream id, seq, kind, data, token ids as little-endian u32s) becomes
//! chunks. The migration `…_event_log_v2` makes the new tables and leaves `events` in
//! place; each database's `open` then converts it with this module's [`chunks`] (the
//! codec is Rust, not SQL) and drops it, before the writer starts and anything is
//! served (`sqlite::convert_events`, `postgres::convert_events`).
//!
//! A converted chunk holds up to [`CHUNK_EVENTS`] consecutive events, so that a read
//! after any cursor decodes at most that many events it does not send; a gap in the
//! old seqs (there should be none) starts a new chunk, so a chunk's seqs are always
//! `first_seq ..= last_seq`.

use super::StoreError;
use super::chunk;
use crate::event::{Event, EventKind};

/// Events per converted chunk, at most.
pub(super) const CHUNK_EVENTS: usize = 128;
/// Streams converted per transaction.
pub(super) const STREAMS_PER_TRANSACTION: i64 = 200;

/// An `events` row as the old schema stored it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct LegacyEvent {
    pub seq: i64,
    pub kind: String,
    pub data: String,
    pub ids: Option<Vec<u8>>,
}

/// One converted chunk row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LegacyChunk {
    pub first_seq: i64,
    pub last_seq: i64,
    pub data: Vec<u8>,
}

/// What a conversion did, for its log line.
#[derive(Debug, Default)]
pub(super) struct Converted {
    pub streams: u64,
    pub events: u64,
    pub chunks: u64,
}

impl Converted {
    pub fn log(&self) {
        if self.events == 0 && self.streams == 0 {
            // A new database (or one with nothing stored yet): nothing was converted.
            return;
        }
        tracing::info!(
            streams = self.streams,
            events = self.events,
            chunks = self.chunks,
            "converted the events table to chunks (event log v2)"
        );
    }
}

/// Token ids as the old schema stored them: little-endian u32s (a trailing partial
/// id is ignored).
pub(super) fn decode_ids(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The chunks of one stream's old rows, given in seq order. A kind this release
/// does not know is an error: a seq must never vanish.
pub(super) fn chunks(
    stream: &str,
    rows: &[LegacyEvent],
    converted: &mut Converted,
) -> Result<Vec<LegacyChunk>, StoreError> {
    let mut out: Vec<LegacyChunk> = Vec::new();
    let mut in_last = 0;
    for row in rows {
        let kind = EventKind::parse(&row.kind)
            .ok_or_else(|| StoreError::Corrupt(format!("event kind {:?} in {stream}", row.kind)))?;
        let event = Event {
            seq: row.seq.max(0) as u64,
            kind,
            data: row.data.clone(),
        };
        let ids = row.ids.as_deref().map(decode_ids).unwrap_or_default();
        let current = out
            .last_mut()
            .filter(|c| c.last_seq + 1 == row.seq && in_last < CHUNK_EVENTS);
        match current {
            Some(c) => {
                chunk::push(&mut c.data, &event, &ids);
                c.last_seq = row.seq;
                in_last += 1;
            }
            None => {
                let mut data = Vec::new();
                chunk::push(&mut data, &event, &ids);
                out.push(LegacyChunk {
                    first_seq: row.seq,
                    last_seq: row.seq,
                    data,
                });
                in_last = 1;
            }
        }
    }
    converted.streams += 1;
    converted.events += rows.len() as u64;
    converted.chunks += out.len() as u64;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn row(seq: i64, kind: &str, data: &str, ids: Option<&[u32]>) -> LegacyEvent {
        LegacyEvent {
            seq,
            kind: kind.into(),
            data: data.into(),
            ids: ids.map(|ids| ids.iter().flat_map(|id| id.to_le_bytes()).collect()),
        }
    }

    #[test]
    fn a_gap_or_a_full_chunk_starts_a_new_chunk_and_unknown_kinds_fail() {
        let mut rows = vec![row(1, "start", "{}", None)];
        for seq in 2..=300 {
            rows.push(row(seq, "token", r#"{"text":"x"}"#, Some(&[seq as u32])));
        }
        rows.push(row(310, "done", "{}", None));
        let mut n = Converted::default();
        let out = chunks("s", &rows, &mut n).unwrap();
        let spans: Vec<(i64, i64)> = out.iter().map(|c| (c.first_seq, c.last_seq)).collect();
        assert_eq!(spans, vec![(1, 128), (129, 256), (257, 300), (310, 310)]);
        assert_eq!((n.streams, n.events, n.chunks), (1, 301, 4));
        let back = chunk::read(&out[1].data, 129).unwrap();
        assert_eq!(back[0].ids(), vec![129]);
        assert!(chunks("s", &[row(1, "hologram", "{}", None)], &mut n).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn every_old_row_reads_back_as_it_was(
            items in prop::collection::vec((any::<String>(), prop::option::of(prop::collection::vec(any::<u32>(), 1..3))), 1..400),
        ) {
            let rows: Vec<LegacyEvent> = items
                .iter()
                .enumerate()
                .map(|(i, (data, ids))| row(i as i64 + 1, "token", data, ids.as_deref()))
                .collect();
            let out = chunks("s", &rows, &mut Converted::default()).unwrap();
            let back: Vec<(Event, Vec<u32>)> = out
                .iter()
                .flat_map(|c| chunk::read(&c.data, c.first_seq as u64).unwrap().into_iter().map(|s| (s.to_event(), s.ids())))
                .collect();
            prop_assert_eq!(back.len(), rows.len());
            for ((event, ids), (r, (_, want))) in back.iter().zip(rows.iter().zip(&items)) {
                prop_assert_eq!(event.seq as i64, r.seq);
                prop_assert_eq!(&event.data, &r.data);
                prop_assert_eq!(ids, &want.clone().unwrap_or_default());
            }
        }
    }
}
