//! The stored form of events: a **chunk** holds the events one commit added to one
//! stream, as one row (`chunks`: stream key, first and last seq, these bytes). A commit
//! writes one row per stream in its batch, whatever the number of events.
//!
//! Layout, per event, in seq order from the chunk's `first_seq`:
//!
//! ```text
//! kind: u8 | data length: varint | data: bytes | ids: varint count, then varint ids
//! ```
//!
//! `data` is the event's stored bytes, exactly what every wire format renders (the JSON
//! of SPEC §3 for spool's own kinds; a Durable Streams message's bytes for that kind).
//! `ids` are the token ids behind a token's text, for crash continuation (usually none
//! or one). A varint is LEB128: 7 bits a byte, low first. Kinds are numbered for good:
//! a new kind takes a new number, and a reader that meets a number it does not know
//! fails loudly rather than skip an event (a seq must never vanish).

use crate::event::{Event, EventKind};

/// A kind's number in a chunk.
pub fn kind_code(kind: EventKind) -> u8 {
    match kind {
        EventKind::Start => 1,
        EventKind::Token => 2,
        EventKind::Done => 3,
        EventKind::Error => 4,
        EventKind::Reasoning => 5,
        EventKind::ToolCall => 6,
        EventKind::Refusal => 7,
        EventKind::Message => 8,
    }
}

fn kind_of(code: u8) -> Option<EventKind> {
    Some(match code {
        1 => EventKind::Start,
        2 => EventKind::Token,
        3 => EventKind::Done,
        4 => EventKind::Error,
        5 => EventKind::Reasoning,
        6 => EventKind::ToolCall,
        7 => EventKind::Refusal,
        8 => EventKind::Message,
        _ => return None,
    })
}

/// A chunk that cannot be read back (never written by spool, or a newer kind).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a stored chunk is unreadable at byte {at}: {why}")]
pub struct BadChunk {
    pub at: usize,
    pub why: &'static str,
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Appends one event (and the token ids behind it) to a chunk being built.
pub fn push(out: &mut Vec<u8>, event: &Event, ids: &[u32]) {
    out.reserve(event.data.len() + 4 + ids.len() * 3);
    out.push(kind_code(event.kind));
    put_varint(out, event.data.len() as u64);
    out.extend_from_slice(event.data.as_bytes());
    put_varint(out, ids.len() as u64);
    for id in ids {
        put_varint(out, u64::from(*id));
    }
}

/// One event read back from a chunk, borrowing its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored<'a> {
    pub seq: u64,
    pub kind: EventKind,
    pub data: &'a str,
    ids: &'a [u8],
    id_count: usize,
}

impl Stored<'_> {
    pub fn to_event(&self) -> Event {
        Event {
            seq: self.seq,
            kind: self.kind,
            data: self.data.to_owned(),
        }
    }

    /// The token ids stored with the event.
    pub fn ids(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.id_count);
        let mut at = 0;
        while out.len() < self.id_count {
            match varint(self.ids, &mut at) {
                Ok(n) => out.push(n as u32),
                Err(_) => break,
            }
        }
        out
    }
}

fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, BadChunk> {
    let mut n = 0u64;
    let mut shift = 0;
    loop {
        let Some(&byte) = bytes.get(*at) else {
            return Err(BadChunk {
                at: *at,
                why: "it ends inside a number",
            });
        };
        *at += 1;
        if shift > 63 {
            return Err(BadChunk {
                at: *at,
                why: "a number is too long",
            });
        }
        n |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(n);
        }
        shift += 7;
    }
}

/// Reads the events of a chunk whose first event is `first_seq`.
pub fn read(bytes: &[u8], first_seq: u64) -> Result<Vec<Stored<'_>>, BadChunk> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut seq = first_seq;
    while at < bytes.len() {
        let code = bytes[at];
        let kind = kind_of(code).ok_or(BadChunk {
            at,
            why: "an event of a kind this release does not know",
        })?;
        at += 1;
        let len = varint(bytes, &mut at)? as usize;
        let end = at
            .checked_add(len)
            .filter(|end| *end <= bytes.len())
            .ok_or(BadChunk {
                at,
                why: "an event's data runs past the end",
            })?;
        let data = std::str::from_utf8(&bytes[at..end]).map_err(|_| BadChunk {
            at,
            why: "an event's data is not UTF-8",
        })?;
        at = end;
        let id_count = varint(bytes, &mut at)? as usize;
        let ids_start = at;
        for _ in 0..id_count {
            varint(bytes, &mut at)?;
        }
        out.push(Stored {
            seq,
            kind,
            data,
            ids: &bytes[ids_start..at],
            id_count,
        });
        seq += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{FinishReason, Usage};
    use proptest::prelude::*;

    #[test]
    fn a_chunk_reads_back_its_events_and_ids() {
        let events = [
            (Event::token(7, "héllo \"x\"\n"), vec![]),
            (Event::token(8, " w"), vec![300, 0, u32::MAX]),
            (Event::done(9, FinishReason::Stop, Usage::default()), vec![]),
        ];
        let mut bytes = Vec::new();
        for (e, ids) in &events {
            push(&mut bytes, e, ids);
        }
        let back = read(&bytes, 7).unwrap();
        assert_eq!(back.len(), 3);
        for ((e, ids), stored) in events.iter().zip(&back) {
            assert_eq!(&stored.to_event(), e);
            assert_eq!(&stored.ids(), ids);
        }
        assert!(read(&[], 1).unwrap().is_empty());
    }

    #[test]
    fn damage_is_reported_never_skipped() {
        let mut bytes = Vec::new();
        push(&mut bytes, &Event::token(1, "abc"), &[1]);
        for cut in 1..bytes.len() {
            assert!(read(&bytes[..cut], 1).is_err(), "cut at {cut}");
        }
        let mut unknown = bytes.clone();
        unknown[0] = 200;
        assert!(read(&unknown, 1).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn any_events_round_trip(
            items in prop::collection::vec((0u8..4, any::<String>(), prop::collection::vec(any::<u32>(), 0..4)), 0..20),
            first in 1u64..1_000_000,
        ) {
            let kinds = [EventKind::Start, EventKind::Token, EventKind::Done, EventKind::Error];
            let mut bytes = Vec::new();
            let mut events = Vec::new();
            for (i, (k, data, ids)) in items.iter().enumerate() {
                let e = Event { seq: first + i as u64, kind: kinds[*k as usize], data: data.clone() };
                push(&mut bytes, &e, ids);
                events.push((e, ids.clone()));
            }
            let back = read(&bytes, first).unwrap();
            prop_assert_eq!(back.len(), events.len());
            for ((e, ids), s) in events.iter().zip(&back) {
                prop_assert_eq!(&s.to_event(), e);
                prop_assert_eq!(&s.ids(), ids);
            }
        }

        #[test]
        fn any_bytes_read_or_fail_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = read(&bytes, 1);
        }
    }
}
