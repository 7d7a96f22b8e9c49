//! A batch's event rows, planned once for both databases: per stream one chunk row
//! (its new events, see [`super::chunk`]), and one stream update — its new `last_seq`,
//! or, with its terminal event, its end. The SQLite and PostgreSQL writers only render
//! a [`Plan`] in their dialect and run it ([`super::sqlite::batch::write_plan`],
//! [`super::postgres::batch::write_plan`]); nothing else writes chunks or ends.
//!
//! A commit therefore writes O(streams in the batch) rows, whatever the number of
//! events. Chunk rows name their stream by its text id; the statements look the
//! integer key up in the same statement (one index probe per stream).
//!
//! [`interrupted`] is the one "end as interrupted" of a stream whose process died:
//! start-up recovery (SQLite, and a PostgreSQL node restarted under its id) and the
//! sweep of a dead node write it through the same plan.

use std::sync::Arc;

use super::batch::{StreamEnd, StreamWrites};
use super::{INTERRUPTED, INTERRUPTED_MESSAGE};
use crate::event::{Event, FinishReason, StreamStatus, Usage, now_ms};

/// One chunk row: the stream, its first and last seq, the stored bytes.
#[derive(Debug, Clone, Copy)]
pub struct ChunkRow<'a> {
    pub stream: &'a str,
    pub first_seq: i64,
    pub last_seq: i64,
    pub data: &'a [u8],
}

/// A stream's end, written with its terminal event's chunk.
#[derive(Debug, Clone, Copy)]
pub struct EndRow<'a> {
    pub stream: &'a str,
    pub last_seq: i64,
    pub status: &'static str,
    pub finish_reason: Option<&'static str>,
    pub error_code: Option<&'a str>,
    pub error_message: Option<&'a str>,
    /// `None`: not known (NULL).
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub finished_at: i64,
    /// The stream answers a session's turn: its text, for the turn's content.
    pub turn_text: Option<&'a str>,
    /// With `turn_text`: the answer's tool calls (JSON), if it completed with some.
    pub turn_tool_calls: Option<&'a str>,
}

/// The rows of a batch's events.
#[derive(Debug, Default)]
pub struct Plan<'a> {
    pub chunks: Vec<ChunkRow<'a>>,
    /// Streams that go on: their new `last_seq`.
    pub progress: Vec<(&'a str, i64)>,
    pub ends: Vec<EndRow<'a>>,
}

impl<'a> Plan<'a> {
    /// The rows of `streams`' events; a stream with no events writes nothing.
    pub fn of(streams: impl IntoIterator<Item = &'a StreamWrites>) -> Plan<'a> {
        let streams = streams.into_iter();
        let mut plan = Plan {
            chunks: Vec::with_capacity(streams.size_hint().0),
            ..Plan::default()
        };
        for s in streams {
            let (Some(first), Some(last)) = (s.events.first(), s.events.last()) else {
                continue;
            };
            let last_seq = seq(last.seq);
            plan.chunks.push(ChunkRow {
                stream: &s.id,
                first_seq: seq(first.seq),
                last_seq,
                data: &s.chunk,
            });
            match &s.end {
                None => plan.progress.push((&s.id, last_seq)),
                Some(end) => plan
                    .ends
                    .push(end_row(&s.id, last_seq, end, s.usage_unknown)),
            }
        }
        plan
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

fn end_row<'a>(stream: &'a str, last_seq: i64, end: &'a StreamEnd, no_usage: bool) -> EndRow<'a> {
    let usage = (!no_usage).then_some(end.usage);
    EndRow {
        stream,
        last_seq,
        status: end.status.as_str(),
        finish_reason: end.finish_reason.map(FinishReason::as_str),
        error_code: end.error.as_ref().map(|(code, _)| code.as_str()),
        error_message: end.error.as_ref().map(|(_, message)| message.as_str()),
        prompt_tokens: usage.map(|u| i64::from(u.prompt_tokens)),
        completion_tokens: usage.map(|u| i64::from(u.completion_tokens)),
        finished_at: end.finished_at,
        turn_text: end.turn_text.as_deref(),
        turn_tool_calls: end.turn_tool_calls.as_deref(),
    }
}

/// A seq as a database integer (seqs never come near `i64::MAX`).
fn seq(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// The writes that end each of `open` — streams a dead process left open, with the
/// last seq the store has of each — as `interrupted`: an `error` event after the last
/// one, status `interrupted`, no usage. Render them with [`Plan::of`].
pub fn interrupted(open: &[(Arc<str>, u64)]) -> Vec<StreamWrites> {
    let now = now_ms();
    open.iter()
        .map(|(id, last_seq)| {
            let mut s = StreamWrites::new(id.clone());
            s.push(
                Event::error(last_seq + 1, INTERRUPTED, INTERRUPTED_MESSAGE),
                &[],
            );
            s.end = Some(StreamEnd {
                status: StreamStatus::Interrupted,
                finish_reason: None,
                error: Some((INTERRUPTED.to_owned(), INTERRUPTED_MESSAGE.to_owned())),
                usage: Usage::default(),
                finished_at: now,
                turn_text: None,
                turn_tool_calls: None,
            });
            s.usage_unknown = true;
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::chunk;

    #[test]
    fn one_chunk_row_and_one_stream_update_per_stream() {
        let mut a = StreamWrites::new(Arc::from("a"));
        for seq in 4..=9 {
            a.push(Event::token(seq, "x"), &[seq as u32]);
        }
        let mut b = StreamWrites::new(Arc::from("b"));
        b.push(Event::token(1, "y"), &[]);
        b.end = Some(StreamEnd {
            status: StreamStatus::Completed,
            finish_reason: Some(FinishReason::Stop),
            error: None,
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 1,
                session_turns: None,
            },
            finished_at: 5,
            turn_text: Some("y".into()),
            turn_tool_calls: None,
        });
        let empty = StreamWrites::new(Arc::from("c"));
        let streams = [a, b, empty];
        let plan = Plan::of(&streams);
        assert_eq!(plan.chunks.len(), 2);
        assert_eq!((plan.chunks[0].first_seq, plan.chunks[0].last_seq), (4, 9));
        let back = chunk::read(plan.chunks[0].data, 4).unwrap();
        assert_eq!(back.len(), 6);
        assert_eq!(back[5].ids(), vec![9]);
        assert_eq!(plan.progress, vec![("a", 9)]);
        assert_eq!(plan.ends.len(), 1);
        let end = plan.ends[0];
        assert_eq!(
            (end.stream, end.last_seq, end.status),
            ("b", 1, "completed")
        );
        assert_eq!((end.prompt_tokens, end.turn_text), (Some(3), Some("y")));
    }

    #[test]
    fn an_interrupted_end_follows_the_last_stored_event_and_has_no_usage() {
        let writes = interrupted(&[(Arc::from("a"), 7), (Arc::from("b"), 0)]);
        let plan = Plan::of(&writes);
        assert_eq!(plan.chunks.len(), 2);
        assert!(plan.progress.is_empty());
        let a = plan.ends[0];
        assert_eq!((a.stream, a.last_seq, a.status), ("a", 8, "interrupted"));
        assert_eq!((a.error_code, a.prompt_tokens), (Some(INTERRUPTED), None));
        let event = chunk::read(plan.chunks[0].data, 8).unwrap()[0].to_event();
        assert_eq!(event, Event::error(8, INTERRUPTED, INTERRUPTED_MESSAGE));
        assert_eq!(plan.ends[1].last_seq, 1);
    }
}
