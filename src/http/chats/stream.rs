//! The AI SDK's UI message stream (`x-vercel-ai-ui-message-stream: v1`), rendered from
//! a stream's stored events — the one renderer of `/v1/chats` answers, live or replayed.
//!
//! Each UI chunk is its own SSE event, `data:` one JSON object, ending with
//! `data: [DONE]`; every frame has an `id:` counting the frames from 0
//! ([`Numbering::Frames`]), a pure function of the stored events, so `Last-Event-ID`
//! resumes exactly after any frame. The mapping, event by event:
//!
//! - `start` → `start` (`messageId`: the stream id, so a replay from the start resets
//!   the client's message rather than adding one) and `start-step`;
//! - `token` → `text-delta` (after a `text-start` when a text part opens); a `refusal`
//!   is shown as text the same way;
//! - `reasoning` → `reasoning-delta` (after `reasoning-start`);
//! - `tool_call` → `tool-input-start` for a call's first fragment, `tool-input-delta`
//!   for its argument fragments;
//! - `done` → the open part's `-end`, `tool-input-available` for each call (its
//!   arguments parsed), `finish-step`, then `finish` with its reason (`stop`,
//!   `length`, `tool-calls`, `content-filter`) — a cancelled answer sends `abort` first
//!   and `finish` without a reason;
//! - `error` → the open part's `-end` and `error` (`errorText`);
//! - then `[DONE]`.

use serde_json::{Value, json};

use crate::event::{Event, EventData, FinishReason};
use crate::http::render::{Frames, Numbering, Render};

/// The heartbeat: an SSE comment, which the SDK's parser skips.
const PING: &str = ": ping\n\n";

/// The part being written.
enum Open {
    None,
    Text(String),
    Reasoning(String),
}

/// A tool call seen so far.
struct Call {
    index: u32,
    id: String,
    name: String,
    arguments: String,
}

pub struct UiStream {
    /// The assistant message's id: the stream's.
    message_id: String,
    /// The next frame's id.
    next: u64,
    open: Open,
    calls: Vec<Call>,
}

impl UiStream {
    pub fn new(stream_id: &str) -> Self {
        UiStream {
            message_id: stream_id.to_owned(),
            next: 0,
            open: Open::None,
            calls: Vec::new(),
        }
    }

    /// Writes one frame (unless the reader has it already).
    fn frame(&mut self, out: &mut Frames, data: &str) {
        let id = self.next;
        self.next += 1;
        if let Some(buf) = out.frame(Some(id)) {
            buf.push_str("id: ");
            buf.push_str(crate::http::render::itoa(id).as_str());
            buf.push_str("\ndata: ");
            buf.push_str(data);
            buf.push_str("\n\n");
        }
    }

    fn chunk(&mut self, out: &mut Frames, value: Value) {
        self.frame(out, &value.to_string());
    }

    /// Ends the open text or reasoning part.
    fn close(&mut self, out: &mut Frames) {
        match std::mem::replace(&mut self.open, Open::None) {
            Open::None => {}
            Open::Text(id) => self.chunk(out, json!({"type": "text-end", "id": id})),
            Open::Reasoning(id) => self.chunk(out, json!({"type": "reasoning-end", "id": id})),
        }
    }

    fn text(&mut self, out: &mut Frames, seq: u64, delta: &str) {
        let id = match &self.open {
            Open::Text(id) => id.clone(),
            _ => {
                self.close(out);
                let id = format!("text-{seq}");
                self.chunk(out, json!({"type": "text-start", "id": id}));
                self.open = Open::Text(id.clone());
                id
            }
        };
        self.chunk(out, json!({"type": "text-delta", "id": id, "delta": delta}));
    }

    fn reasoning(&mut self, out: &mut Frames, seq: u64, delta: &str) {
        let id = match &self.open {
            Open::Reasoning(id) => id.clone(),
            _ => {
                self.close(out);
                let id = format!("reasoning-{seq}");
                self.chunk(out, json!({"type": "reasoning-start", "id": id}));
                self.open = Open::Reasoning(id.clone());
                id
            }
        };
        self.chunk(
            out,
            json!({"type": "reasoning-delta", "id": id, "delta": delta}),
        );
    }

    fn tool_call(
        &mut self,
        out: &mut Frames,
        index: u32,
        id: Option<&str>,
        name: Option<&str>,
        arguments: &str,
    ) {
        let known = self.calls.iter().position(|c| c.index == index);
        let at = match known {
            Some(at) => at,
            None => {
                self.close(out);
                let call = Call {
                    index,
                    id: id
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("{}-call-{index}", self.message_id)),
                    name: name.unwrap_or_default().to_owned(),
                    arguments: String::new(),
                };
                self.chunk(
                    out,
                    json!({"type": "tool-input-start", "toolCallId": call.id, "toolName": call.name}),
                );
                self.calls.push(call);
                self.calls.len() - 1
            }
        };
        if arguments.is_empty() {
            return;
        }
        let call = &mut self.calls[at];
        call.arguments.push_str(arguments);
        let chunk = json!({"type": "tool-input-delta", "toolCallId": call.id,
                           "inputTextDelta": arguments});
        self.chunk(out, chunk);
    }

    fn done(&mut self, out: &mut Frames, reason: FinishReason) {
        self.close(out);
        let calls = std::mem::take(&mut self.calls);
        for call in &calls {
            // The arguments as JSON; a call whose arguments do not parse keeps them as
            // a string (an empty one has none: `{}`).
            let input = if call.arguments.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str(&call.arguments)
                    .unwrap_or_else(|_| Value::String(call.arguments.clone()))
            };
            let chunk = json!({"type": "tool-input-available", "toolCallId": call.id,
                               "toolName": call.name, "input": input});
            self.chunk(out, chunk);
        }
        self.chunk(out, json!({"type": "finish-step"}));
        let reason = match reason {
            FinishReason::Stop => Some("stop"),
            FinishReason::Length => Some("length"),
            FinishReason::ToolCalls => Some("tool-calls"),
            FinishReason::ContentFilter => Some("content-filter"),
            FinishReason::Cancelled => None,
        };
        match reason {
            Some(reason) => self.chunk(out, json!({"type": "finish", "finishReason": reason})),
            None => {
                self.chunk(out, json!({"type": "abort", "reason": "cancelled"}));
                self.chunk(out, json!({"type": "finish"}));
            }
        }
        self.frame(out, "[DONE]");
    }
}

impl Render for UiStream {
    fn heartbeat(&self) -> &'static str {
        PING
    }

    fn numbering(&self) -> Numbering {
        Numbering::Frames
    }

    fn render(&mut self, event: &Event, out: &mut Frames) {
        match event.data() {
            Some(EventData::Start(_)) => {
                let start = json!({"type": "start", "messageId": self.message_id});
                self.chunk(out, start);
                self.chunk(out, json!({"type": "start-step"}));
            }
            Some(EventData::Token(t)) => self.text(out, event.seq, &t.text),
            Some(EventData::Refusal(r)) => self.text(out, event.seq, &r.text),
            Some(EventData::Reasoning(r)) => self.reasoning(out, event.seq, &r.text),
            Some(EventData::ToolCall(c)) => self.tool_call(
                out,
                c.index,
                c.id.as_deref(),
                c.name.as_deref(),
                &c.arguments,
            ),
            Some(EventData::Done(d)) => self.done(out, d.finish_reason),
            Some(EventData::Error(e)) => {
                self.close(out);
                self.chunk(out, json!({"type": "error", "errorText": e.message}));
                self.frame(out, "[DONE]");
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ReasoningField, ToolCallData, Usage};

    fn frames(events: &[Event], after: Option<u64>) -> String {
        let mut r = UiStream::new("st_a");
        let mut out = Frames::new(after);
        for e in events {
            r.render(e, &mut out);
        }
        out.take()
    }

    fn parsed(text: &str) -> Vec<(u64, Value)> {
        text.split("\n\n")
            .filter(|f| !f.is_empty())
            .map(|f| {
                let (id, data) = f.split_once('\n').unwrap();
                let id = id.strip_prefix("id: ").unwrap().parse().unwrap();
                let data = data.strip_prefix("data: ").unwrap();
                let value = serde_json::from_str(data).unwrap_or(Value::String(data.into()));
                (id, value)
            })
            .collect()
    }

    fn answer() -> Vec<Event> {
        let call = |seq, id: Option<&str>, name: Option<&str>, args: &str| {
            Event::tool_call(
                seq,
                &ToolCallData {
                    index: 0,
                    id: id.map(Into::into),
                    name: name.map(Into::into),
                    arguments: args.into(),
                },
            )
        };
        vec![
            Event::start(1, "st_a", "m", "t"),
            Event::reasoning(2, "hmm", ReasoningField::Reasoning),
            Event::token(3, "Let"),
            Event::token(4, " me."),
            call(5, Some("c1"), Some("weather"), ""),
            call(6, None, None, "{\"city\":"),
            call(7, None, None, "\"Oslo\"}"),
            Event::done(8, FinishReason::ToolCalls, Usage::default()),
        ]
    }

    #[test]
    fn an_answer_becomes_the_sdks_chunks_numbered_from_zero() {
        let got = parsed(&frames(&answer(), None));
        let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, (0..got.len() as u64).collect::<Vec<_>>());
        let types: Vec<&str> = got
            .iter()
            .map(|(_, v)| v["type"].as_str().unwrap_or("[DONE]"))
            .collect();
        assert_eq!(
            types,
            [
                "start",
                "start-step",
                "reasoning-start",
                "reasoning-delta",
                "reasoning-end",
                "text-start",
                "text-delta",
                "text-delta",
                "text-end",
                "tool-input-start",
                "tool-input-delta",
                "tool-input-delta",
                "tool-input-available",
                "finish-step",
                "finish",
                "[DONE]"
            ]
        );
        assert_eq!(got[0].1, json!({"type": "start", "messageId": "st_a"}));
        assert_eq!(
            got[7].1,
            json!({"type": "text-delta", "id": "text-3", "delta": " me."})
        );
        assert_eq!(
            got[12].1,
            json!({"type": "tool-input-available", "toolCallId": "c1", "toolName": "weather",
                   "input": {"city": "Oslo"}})
        );
        assert_eq!(
            got[14].1,
            json!({"type": "finish", "finishReason": "tool-calls"})
        );
    }

    #[test]
    fn a_resume_after_any_frame_is_the_rest_of_the_same_bytes() {
        let events = answer();
        let whole = frames(&events, None);
        let n = parsed(&whole).len() as u64;
        for after in 0..n {
            let rest = frames(&events, Some(after));
            let cut = whole
                .find(&format!("id: {}\n", after + 1))
                .unwrap_or(whole.len());
            assert_eq!(rest, whole[cut..], "after frame {after}");
        }
    }

    #[test]
    fn cancelled_and_failed_answers_end_as_the_sdk_expects() {
        let cancelled = [
            Event::start(1, "st_a", "m", "t"),
            Event::token(2, "Hi"),
            Event::done(3, FinishReason::Cancelled, Usage::default()),
        ];
        let types: Vec<Value> = parsed(&frames(&cancelled, None))
            .into_iter()
            .map(|(_, v)| v)
            .skip(4)
            .collect();
        assert_eq!(
            types,
            [
                json!({"type": "text-end", "id": "text-2"}),
                json!({"type": "finish-step"}),
                json!({"type": "abort", "reason": "cancelled"}),
                json!({"type": "finish"}),
                json!("[DONE]"),
            ]
        );
        let failed = [
            Event::start(1, "st_a", "m", "t"),
            Event::error(2, "upstream_error", "it broke"),
        ];
        let got = parsed(&frames(&failed, None));
        assert_eq!(got[2].1, json!({"type": "error", "errorText": "it broke"}));
        assert_eq!(got[3].1, json!("[DONE]"));
    }
}
