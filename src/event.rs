//! The vocabulary of a stream: its events, their kinds, statuses and finish reasons.
//!
//! An [`Event`]'s `data` is the exact JSON text that was persisted; every reader, live or
//! replaying, writes these same bytes, which is what makes resume byte-exact.

use serde::Serialize;
use serde_json::json;

/// What an event is. `Done` and `Error` are terminal: exactly one ends every stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Start,
    Token,
    Done,
    Error,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Start => "start",
            EventKind::Token => "token",
            EventKind::Done => "done",
            EventKind::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "start" => EventKind::Start,
            "token" => EventKind::Token,
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
        let data = json!({"stream_id": stream_id, "model": model, "created_at": created_at});
        Event {
            seq,
            kind: EventKind::Start,
            data: data.to_string(),
        }
    }

    pub fn token(seq: u64, text: &str) -> Self {
        Event {
            seq,
            kind: EventKind::Token,
            data: json!({ "text": text }).to_string(),
        }
    }

    pub fn done(seq: u64, reason: FinishReason, usage: Usage) -> Self {
        let data = json!({"finish_reason": reason.as_str(), "usage": usage});
        Event {
            seq,
            kind: EventKind::Done,
            data: data.to_string(),
        }
    }

    pub fn error(seq: u64, code: &str, message: &str) -> Self {
        let data = json!({"code": code, "message": message});
        Event {
            seq,
            kind: EventKind::Error,
            data: data.to_string(),
        }
    }

    /// The text of a token event (`None` for other kinds or unreadable data).
    pub fn token_text(&self) -> Option<String> {
        if self.kind != EventKind::Token {
            return None;
        }
        let value: serde_json::Value = serde_json::from_str(&self.data).ok()?;
        value.get("text")?.as_str().map(str::to_owned)
    }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    Stop,
    Length,
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "stop" => FinishReason::Stop,
            "length" => FinishReason::Length,
            "cancelled" => FinishReason::Cancelled,
            _ => return None,
        })
    }
}

/// Token accounting, as OpenAI reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
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
