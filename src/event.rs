//! The vocabulary of a stream: its events, their kinds, statuses and finish reasons.
//!
//! An [`Event`]'s `data` is the exact JSON text that was persisted; every reader, live or
//! replaying, writes these same bytes, which is what makes resume byte-exact.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// What an event is. `Done` and `Error` are terminal: exactly one ends every stream.
/// `Token`, `Reasoning`, `ToolCall` and `Refusal` are the parts of an answer, in the
/// order the backend produced them, numbered in the one seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Start,
    Token,
    Reasoning,
    ToolCall,
    Refusal,
    Done,
    Error,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Start => "start",
            EventKind::Token => "token",
            EventKind::Reasoning => "reasoning",
            EventKind::ToolCall => "tool_call",
            EventKind::Refusal => "refusal",
            EventKind::Done => "done",
            EventKind::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "start" => EventKind::Start,
            "token" => EventKind::Token,
            "reasoning" => EventKind::Reasoning,
            "tool_call" => EventKind::ToolCall,
            "refusal" => EventKind::Refusal,
            "done" => EventKind::Done,
            "error" => EventKind::Error,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, EventKind::Done | EventKind::Error)
    }
}

/// One persisted record of a stream. `seq` starts at 1 and has no gaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub seq: u64,
    pub kind: EventKind,
    /// One line of JSON, exactly as stored.
    pub data: String,
}

impl Event {
    pub fn start(seq: u64, stream_id: &str, model: &str, created_at: &str) -> Self {
        Event::of(
            seq,
            EventKind::Start,
            &StartData {
                stream_id: stream_id.into(),
                model: model.into(),
                created_at: created_at.into(),
            },
        )
    }

    pub fn token(seq: u64, text: &str) -> Self {
        Event::of(
            seq,
            EventKind::Token,
            &TokenData {
                text: text.into(),
                logprobs: None,
            },
        )
    }

    /// A token with the upstream's log-probabilities for its text.
    pub fn token_with_logprobs(seq: u64, text: &str, logprobs: Vec<serde_json::Value>) -> Self {
        Event::of(
            seq,
            EventKind::Token,
            &TokenData {
                text: text.into(),
                logprobs: Some(logprobs),
            },
        )
    }

    /// A piece of the model's reasoning, under the name its upstream gave it.
    pub fn reasoning(seq: u64, text: &str, field: ReasoningField) -> Self {
        Event::of(
            seq,
            EventKind::Reasoning,
            &ReasoningData {
                text: text.into(),
                field,
            },
        )
    }

    /// A fragment of a tool call (the first of each call carries its id and name).
    pub fn tool_call(seq: u64, call: &ToolCallData<'_>) -> Self {
        Event::of(seq, EventKind::ToolCall, call)
    }

    /// A piece of a refusal.
    pub fn refusal(seq: u64, text: &str) -> Self {
        Event::of(
            seq,
            EventKind::Refusal,
            &TokenData {
                text: text.into(),
                logprobs: None,
            },
        )
    }

    pub fn done(seq: u64, reason: FinishReason, usage: Usage) -> Self {
        Event::of(
            seq,
            EventKind::Done,
            &DoneData {
                finish_reason: reason,
                usage,
            },
        )
    }

    pub fn error(seq: u64, code: &str, message: &str) -> Self {
        Event::of(
            seq,
            EventKind::Error,
            &ErrorData {
                code: code.into(),
                message: message.into(),
            },
        )
    }

    fn of(seq: u64, kind: EventKind, data: &impl Serialize) -> Self {
        Event {
            seq,
            kind,
            // Serializing these structs cannot fail: strings, numbers and enums only.
            data: serde_json::to_string(data).unwrap_or_else(|_| "{}".to_owned()),
        }
    }

    /// The text of a token event (`None` for other kinds or unreadable data).
    pub fn token_text(&self) -> Option<String> {
        if self.kind != EventKind::Token {
            return None;
        }
        let data: TokenData = serde_json::from_str(&self.data).ok()?;
        Some(data.text.into_owned())
    }

    /// The stored data, read back as its kind's shape (`None` if it is unreadable).
    pub fn data(&self) -> Option<EventData<'_>> {
        Some(match self.kind {
            EventKind::Start => EventData::Start(serde_json::from_str(&self.data).ok()?),
            EventKind::Token => EventData::Token(serde_json::from_str(&self.data).ok()?),
            EventKind::Reasoning => EventData::Reasoning(serde_json::from_str(&self.data).ok()?),
            EventKind::ToolCall => EventData::ToolCall(serde_json::from_str(&self.data).ok()?),
            EventKind::Refusal => EventData::Refusal(serde_json::from_str(&self.data).ok()?),
            EventKind::Done => EventData::Done(serde_json::from_str(&self.data).ok()?),
            EventKind::Error => EventData::Error(serde_json::from_str(&self.data).ok()?),
        })
    }
}

/// An event's data, by kind: the one shape each kind is stored in (SPEC §3).
#[derive(Debug, Clone, PartialEq)]
pub enum EventData<'a> {
    Start(StartData<'a>),
    Token(TokenData<'a>),
    Reasoning(ReasoningData<'a>),
    ToolCall(ToolCallData<'a>),
    /// `refusal`: `{"text"}`, the shape of a token.
    Refusal(TokenData<'a>),
    Done(DoneData),
    Error(ErrorData<'a>),
}

/// `start`: `{"stream_id","model","created_at"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartData<'a> {
    #[serde(borrow)]
    pub stream_id: Cow<'a, str>,
    #[serde(borrow)]
    pub model: Cow<'a, str>,
    #[serde(borrow)]
    pub created_at: Cow<'a, str>,
}

/// `token`: `{"text"}`, and `"logprobs"` when the request asked for them and the
/// upstream sent them: its `choices[].logprobs.content` entries for this text, as it
/// sent them (`refusal` uses the same shape, without them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenData<'a> {
    #[serde(borrow)]
    pub text: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<serde_json::Value>>,
}

/// `reasoning`: `{"text","field"}` — `field` is the member the upstream sent it in
/// (`reasoning_content`, as DeepSeek and vLLM name it, or `reasoning`, as Ollama and
/// OpenRouter do), so that the OpenAI format gives it back under the same name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReasoningData<'a> {
    #[serde(borrow)]
    pub text: Cow<'a, str>,
    pub field: ReasoningField,
}

/// The upstream's name for reasoning text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReasoningField {
    #[default]
    ReasoningContent,
    Reasoning,
}

impl ReasoningField {
    pub fn as_str(self) -> &'static str {
        match self {
            ReasoningField::ReasoningContent => "reasoning_content",
            ReasoningField::Reasoning => "reasoning",
        }
    }
}

/// `tool_call`: `{"index","id","name","arguments"}` — one fragment of the tool call
/// numbered `index` in this answer. The call's first fragment has its `id` and
/// function `name`; the `arguments` of its fragments, joined in order, are the call's
/// arguments (a JSON text, streamed as the upstream split it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallData<'a> {
    pub index: u32,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub arguments: Cow<'a, str>,
}

/// `done`: `{"finish_reason","usage"}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DoneData {
    pub finish_reason: FinishReason,
    pub usage: Usage,
}

/// `error`: `{"code","message"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorData<'a> {
    #[serde(borrow)]
    pub code: Cow<'a, str>,
    #[serde(borrow)]
    pub message: Cow<'a, str>,
}

/// Where a stream is in its life (SPEC §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamStatus {
    Queued,
    Running,
    Completed,
    Cancelled,
    Failed,
    Interrupted,
}

impl StreamStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamStatus::Queued => "queued",
            StreamStatus::Running => "running",
            StreamStatus::Completed => "completed",
            StreamStatus::Cancelled => "cancelled",
            StreamStatus::Failed => "failed",
            StreamStatus::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => StreamStatus::Queued,
            "running" => StreamStatus::Running,
            "completed" => StreamStatus::Completed,
            "cancelled" => StreamStatus::Cancelled,
            "failed" => StreamStatus::Failed,
            "interrupted" => StreamStatus::Interrupted,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, StreamStatus::Queued | StreamStatus::Running)
    }

    pub const ALL: [StreamStatus; 6] = [
        StreamStatus::Queued,
        StreamStatus::Running,
        StreamStatus::Completed,
        StreamStatus::Cancelled,
        StreamStatus::Failed,
        StreamStatus::Interrupted,
    ];
}

/// Why a stream that ended with `done` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    Stop,
    Length,
    Cancelled,
    /// The answer ends with tool calls for the client to run.
    #[serde(rename = "tool_calls")]
    ToolCalls,
    /// The upstream's content filter stopped it.
    #[serde(rename = "content_filter")]
    ContentFilter,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "stop" => FinishReason::Stop,
            "length" => FinishReason::Length,
            "cancelled" => FinishReason::Cancelled,
            "tool_calls" => FinishReason::ToolCalls,
            "content_filter" => FinishReason::ContentFilter,
            _ => return None,
        })
    }
}

/// Token accounting, as OpenAI reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// A session's turn: how many of the session's messages its prompt held (see
    /// `llm::SessionTurn::used`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_turns: Option<u32>,
}

/// Milliseconds since the Unix epoch, the store's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 with milliseconds, UTC (`2026-11-25T20:35:43.123Z`).
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_data_is_one_line_even_with_newlines() {
        let e = Event::token(2, "a\nb\"c");
        assert!(!e.data.contains('\n'));
        assert_eq!(e.token_text().as_deref(), Some("a\nb\"c"));
    }

    /// The stored bytes of each kind, exactly as earlier releases wrote them: a
    /// database written then is read, and resumed, byte for byte.
    #[test]
    fn stored_data_bytes_are_stable() {
        assert_eq!(
            Event::start(1, "st_a", "mock", "2026-01-01T00:00:00.000Z").data,
            r#"{"stream_id":"st_a","model":"mock","created_at":"2026-01-01T00:00:00.000Z"}"#
        );
        assert_eq!(Event::token(2, "é\u{1}").data, "{\"text\":\"é\\u0001\"}");
        let usage = Usage {
            prompt_tokens: 3,
            completion_tokens: 1,
            session_turns: None,
        };
        let done = Event::done(3, FinishReason::Length, usage);
        assert_eq!(
            done.data,
            r#"{"finish_reason":"length","usage":{"prompt_tokens":3,"completion_tokens":1}}"#
        );
        assert_eq!(
            done.data(),
            Some(EventData::Done(DoneData {
                finish_reason: FinishReason::Length,
                usage
            }))
        );
        assert_eq!(
            Event::error(4, "interrupted", "gone").data,
            r#"{"code":"interrupted","message":"gone"}"#
        );
    }

    #[test]
    fn kinds_and_statuses_round_trip() {
        for k in [
            EventKind::Start,
            EventKind::Token,
            EventKind::Done,
            EventKind::Error,
        ] {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        for s in StreamStatus::ALL {
            assert_eq!(StreamStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    }
}
