//! The Durable Streams protocol's rules (durable-streams PROTOCOL.md, suite 0.3.6), free
//! of I/O: offsets, content types, the stored form of an append, and the idempotent
//! producer's validation. `engine::ds` runs them against the store; `http::ds` speaks
//! the HTTP side.
//!
//! A Durable Stream is a spool stream: its appends are `message` events
//! ([`crate::event::EventKind::Message`]) numbered in the stream's one seq after its
//! `start`, its close is the stream's terminal `done`. An offset names the seq of the
//! last message it covers: `{seq:016}_{0:016}`, so offsets sort as strings and never
//! collide with the sentinels `-1` (the beginning) and `now` (the tail).

use std::collections::HashMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The `model` of a Durable Stream's spool stream: it is never generated, continued or
/// ended by start-up recovery.
pub const MODEL: &str = "durable-stream";

/// A position in a stream: everything up to and including message `seq`.
pub fn offset(seq: u64) -> String {
    format!("{seq:016}_{:016}", 0)
}

/// A read's starting point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offset {
    /// `-1` (or none): from the first message.
    Start,
    /// `now`: from the tail.
    Now,
    /// After message `seq`.
    After(u64),
}

/// Parses an `offset` as a client sends it (one this server minted, or a sentinel).
pub fn parse_offset(s: &str) -> Option<Offset> {
    match s {
        "-1" => return Some(Offset::Start),
        "now" => return Some(Offset::Now),
        _ => {}
    }
    let (seq, sub) = s.split_once('_')?;
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(seq) || !digits(sub) {
        return None;
    }
    seq.parse().ok().map(Offset::After)
}

/// The media type of a `Content-Type`, lowercased, without parameters.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// JSON mode: messages keep their boundaries and reads are JSON arrays.
pub fn is_json(content_type: &str) -> bool {
    media_type(content_type) == "application/json"
}

/// Whether SSE carries the stream's data as text (else base64).
pub fn is_text(content_type: &str) -> bool {
    let t = media_type(content_type);
    t.starts_with("text/") || t == "application/json"
}

/// A plausible `type/subtype` (the stream's type is checked against it on appends).
pub fn valid_content_type(content_type: &str) -> bool {
    let t = media_type(content_type);
    let ok = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    matches!(t.split_once('/'), Some((a, b)) if ok(a) && ok(b))
}

/// One append as stored: its JSON messages (JSON mode) or its bytes (base64), and who
/// sent it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Message {
    /// JSON mode: the messages of one append, exactly as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub m: Option<Vec<Box<RawValue>>>,
    /// Other content types: the bytes, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b: Option<String>,
    /// The idempotent producer `(id, epoch, seq)` that sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<(String, u64, u64)>,
    /// Its `Stream-Seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
}

/// Why a body cannot be appended in JSON mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    InvalidJson,
    EmptyArray,
}

impl Message {
    /// The stored data of an append of `body` to a stream of `content_type`: a JSON
    /// array is flattened one level (its elements are the messages); `[]` is refused
    /// unless `allow_empty` (a `PUT`'s initial body).
    pub fn of(
        content_type: &str,
        body: &[u8],
        allow_empty: bool,
    ) -> Result<Option<Message>, BodyError> {
        if body.is_empty() {
            return Ok(None);
        }
        if !is_json(content_type) {
            return Ok(Some(Message {
                m: None,
                b: Some(base64::engine::general_purpose::STANDARD.encode(body)),
                p: None,
                q: None,
            }));
        }
        let text = std::str::from_utf8(body).map_err(|_| BodyError::InvalidJson)?;
        let value: &RawValue = serde_json::from_str(text).map_err(|_| BodyError::InvalidJson)?;
        let messages: Vec<Box<RawValue>> = if text.trim_start().starts_with('[') {
            serde_json::from_str(value.get()).map_err(|_| BodyError::InvalidJson)?
        } else {
            vec![value.to_owned()]
        };
        if messages.is_empty() {
            return if allow_empty {
                Ok(None)
            } else {
                Err(BodyError::EmptyArray)
            };
        }
        Ok(Some(Message {
            m: Some(messages),
            b: None,
            p: None,
            q: None,
        }))
    }

    /// The stored JSON text.
    pub fn to_data(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }

    pub fn parse(data: &str) -> Option<Message> {
        serde_json::from_str(data).ok()
    }

    /// The bytes of a non-JSON append.
    pub fn bytes(&self) -> Vec<u8> {
        self.b
            .as_deref()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .unwrap_or_default()
    }
}

/// The body of a read of `messages` from a stream of `content_type`: a JSON array of
/// every message (JSON mode), or the bytes one after another.
pub fn body<'a>(content_type: &str, messages: impl IntoIterator<Item = &'a Message>) -> Vec<u8> {
    if is_json(content_type) {
        let mut out = String::from("[");
        let mut first = true;
        for m in messages.into_iter().filter_map(|m| m.m.as_ref()) {
            for raw in m {
                if !first {
                    out.push(',');
                }
                first = false;
                out.push_str(raw.get());
            }
        }
        out.push(']');
        return out.into_bytes();
    }
    messages.into_iter().flat_map(Message::bytes).collect()
}

/// What an idempotent producer's `(epoch, seq)` means for the producer's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Producer {
    /// New data: append it, then the producer's state is `(epoch, seq)`.
    Accept,
    /// Already appended: `204`, the highest accepted seq.
    Duplicate { last: u64 },
    /// A newer epoch exists: `403` with it.
    StaleEpoch { current: u64 },
    /// A new epoch must start at seq 0: `400`.
    NewEpochNotAtZero,
    /// A seq was skipped: `409` with what was expected.
    Gap { expected: u64, received: u64 },
}

/// Kafka-style validation of `(epoch, seq)` against a producer's state `(epoch, last
/// seq)` (`None`: a producer not seen before).
pub fn check_producer(state: Option<(u64, u64)>, epoch: u64, seq: u64) -> Producer {
    let Some((current, last)) = state else {
        return if seq == 0 {
            Producer::Accept
        } else {
            Producer::Gap {
                expected: 0,
                received: seq,
            }
        };
    };
    if epoch < current {
        return Producer::StaleEpoch { current };
    }
    if epoch > current {
        return if seq == 0 {
            Producer::Accept
        } else {
            Producer::NewEpochNotAtZero
        };
    }
    if seq <= last {
        Producer::Duplicate { last }
    } else if seq == last + 1 {
        Producer::Accept
    } else {
        Producer::Gap {
            expected: last + 1,
            received: seq,
        }
    }
}

/// What a Durable Stream's appends left: the tail, the producers, the last
/// `Stream-Seq`, and who closed it — rebuilt from its events when a process first
/// meets the stream, then kept up to date by its appends.
#[derive(Debug, Clone, Default)]
pub struct Writers {
    /// The seq of the last message (the `start` event's, 1, before any).
    pub tail: u64,
    /// The last seq used by any event.
    pub last_seq: u64,
    pub closed: bool,
    /// The producer append that closed it.
    pub closed_by: Option<(String, u64, u64)>,
    pub producers: HashMap<String, (u64, u64)>,
    pub stream_seq: Option<String>,
}

impl Writers {
    /// Takes one stored event into account.
    pub fn replay(&mut self, event: &crate::event::Event) {
        self.last_seq = event.seq;
        match event.kind {
            crate::event::EventKind::Start => self.tail = self.tail.max(event.seq),
            crate::event::EventKind::Message => {
                self.tail = event.seq;
                if let Some(m) = Message::parse(&event.data) {
                    if let Some((id, epoch, seq)) = m.p {
                        self.producers.insert(id, (epoch, seq));
                    }
                    if m.q.is_some() {
                        self.stream_seq = m.q;
                    }
                }
            }
            crate::event::EventKind::Done | crate::event::EventKind::Error => {
                self.closed = true;
                if let Some(closer) = serde_json::from_str::<CloseData>(&event.data)
                    .ok()
                    .and_then(|c| c.closed_by)
                {
                    self.producers
                        .insert(closer.0.clone(), (closer.1, closer.2));
                    self.closed_by = Some(closer);
                }
            }
            _ => {}
        }
    }
}

/// What a close stores besides the `done` event's own members: the producer append
/// that closed the stream (for deduplicating its retry).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CloseData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<(String, u64, u64)>,
}

/// The Stream-Cursor of a live response: the 20-second interval since 2024-10-09
/// (the protocol's default epoch), strictly past the client's own `cursor` when that
/// is not behind (with jitter), so cursors never repeat.
pub fn cursor(now_ms: i64, client: Option<&str>, jitter: u64) -> String {
    const EPOCH_MS: i64 = 1_728_432_000_000;
    const INTERVAL_MS: i64 = 20_000;
    let interval = u64::try_from((now_ms - EPOCH_MS).max(0) / INTERVAL_MS).unwrap_or(0);
    match client.and_then(|c| c.parse::<u64>().ok()) {
        Some(c) if c >= interval => (c + 1 + jitter % 180).to_string(),
        _ => interval.to_string(),
    }
}

/// A URL path segment run percent-decoded as a router decodes a path (`+` stays `+`);
/// `None` if it decodes to no UTF-8.
pub fn decode_path(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A stream name as a URL path: every byte but the unreserved ones and `/`
/// percent-encoded ([`decode_path`] gives it back).
pub fn encode_path(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a `Stream-TTL` value is a plain non-negative decimal integer.
pub fn valid_ttl(v: &str) -> bool {
    v == "0" || (!v.is_empty() && !v.starts_with('0') && v.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_sort_as_strings_and_parse_back() {
        let a = offset(2);
        let b = offset(10);
        assert!(a < b && "-1" < a.as_str() && b.as_str() < "now");
        assert_eq!(parse_offset(&b), Some(Offset::After(10)));
        assert_eq!(parse_offset("-1"), Some(Offset::Start));
        assert_eq!(parse_offset("now"), Some(Offset::Now));
        for bad in ["", "x", "1", "_1", "1_", "1_a", "-2", "1_2_3"] {
            assert_eq!(parse_offset(bad), None, "{bad}");
        }
    }

    #[test]
    fn json_bodies_flatten_one_level_and_keep_their_text() {
        let m = Message::of("application/json", br#"[{"b":1,"a":2}, [1,2]]"#, false)
            .unwrap()
            .unwrap();
        let got: Vec<&str> = m.m.as_ref().unwrap().iter().map(|r| r.get()).collect();
        assert_eq!(got, [r#"{"b":1,"a":2}"#, "[1,2]"]);
        let one = Message::of("application/json; charset=utf-8", b"[[[1]]]", false)
            .unwrap()
            .unwrap();
        assert_eq!(one.m.as_ref().unwrap()[0].get(), "[[1]]");
        assert_eq!(
            Message::of("application/json", b"[]", false).unwrap_err(),
            BodyError::EmptyArray
        );
        assert!(
            Message::of("application/json", b"[]", true)
                .unwrap()
                .is_none()
        );
        assert_eq!(
            Message::of("application/json", b"{nope", false).unwrap_err(),
            BodyError::InvalidJson
        );
        let stored = Message::parse(&m.to_data()).unwrap();
        assert_eq!(
            body("application/json", [&stored, &one]),
            br#"[{"b":1,"a":2},[1,2],[[1]]]"#
        );
        let bytes = Message::of("application/octet-stream", &[0, 255, 7], false)
            .unwrap()
            .unwrap();
        assert_eq!(body("application/octet-stream", [&bytes]), [0, 255, 7]);
    }

    #[test]
    fn producers_are_validated_like_kafkas() {
        assert_eq!(check_producer(None, 0, 0), Producer::Accept);
        assert_eq!(
            check_producer(None, 0, 3),
            Producer::Gap {
                expected: 0,
                received: 3
            }
        );
        assert_eq!(check_producer(Some((1, 4)), 1, 5), Producer::Accept);
        assert_eq!(
            check_producer(Some((1, 4)), 1, 4),
            Producer::Duplicate { last: 4 }
        );
        assert_eq!(
            check_producer(Some((1, 4)), 0, 9),
            Producer::StaleEpoch { current: 1 }
        );
        assert_eq!(check_producer(Some((1, 4)), 2, 0), Producer::Accept);
        assert_eq!(
            check_producer(Some((1, 4)), 2, 1),
            Producer::NewEpochNotAtZero
        );
        assert_eq!(
            check_producer(Some((1, 4)), 1, 7),
            Producer::Gap {
                expected: 5,
                received: 7
            }
        );
    }

    #[test]
    fn paths_decode_as_the_router_decodes_them() {
        assert_eq!(decode_path("a%2Fb+c%20d").as_deref(), Some("a/b+c d"));
        assert_eq!(decode_path("100%").as_deref(), Some("100%"));
        assert_eq!(decode_path("%E2%9C%93").as_deref(), Some("✓"));
        assert_eq!(decode_path("%FF"), None);
        for name in ["a b+c", "logs/run-1", "✓%"] {
            assert_eq!(decode_path(&encode_path(name)).as_deref(), Some(name));
        }
        assert_eq!(encode_path("a b+c/d"), "a%20b%2Bc/d");
    }

    #[test]
    fn cursors_move_on() {
        let now = 1_728_432_000_000 + 20_000 * 50 + 5;
        assert_eq!(cursor(now, None, 0), "50");
        assert_eq!(cursor(now, Some("10"), 0), "50");
        let next: u64 = cursor(now, Some("50"), 7).parse().unwrap();
        assert!(next > 50);
        assert!(valid_ttl("0") && valid_ttl("3600"));
        for bad in ["", "-1", "+3", "03600", "3.5", "3e3"] {
            assert!(!valid_ttl(bad), "{bad}");
        }
        assert!(valid_content_type("application/json; charset=utf-8"));
        assert!(!valid_content_type("nonsense"));
    }
}
