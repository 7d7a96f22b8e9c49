//! The OpenAI streaming wire format: each stored event as a `chat.completion.chunk`,
//! exactly as the official SDKs parse them, plus an `id:` line so the stream resumes
//! with `Last-Event-ID` like the native one.
//!
//! Unlike the native format there is no `retry:` line and the heartbeat is a bare
//! `: ping` line (the Python SDK breaks on a standalone `retry:` and on a comment
//! followed by a blank line after an event with an id).

use serde::Serialize;

use crate::event::{Event, EventData, FinishReason, ReasoningField, Usage};
use crate::http::render::{Frames, Render, data_frame};
use crate::store::{StoreError, StreamRow};

/// The heartbeat comment of this format: one line, no blank line after it.
pub const PING: &str = ": ping\n";

/// What every chunk of one stream repeats.
#[derive(Debug, Clone)]
pub struct ChunkFormat {
    stream_id: String,
    model: String,
    /// Unix seconds of the stream's creation.
    created: i64,
    /// `stream_options.include_usage`: a last chunk with `usage` and no choices.
    include_usage: bool,
    /// A token chunk's JSON up to its content's string, and what follows it: a token
    /// whose stored text needs no escapes is written between them as stored, without
    /// being decoded and encoded again (the bytes are the same; a test holds them).
    token_head: String,
}

const TOKEN_TAIL: &str = "},\"logprobs\":null,\"finish_reason\":null}]}";

/// `chat.completion.chunk`, member for member as OpenAI sends it.
#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    system_fingerprint: Option<&'a str>,
    choices: &'a [Choice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<OpenAiUsage>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<Logprobs<'a>>,
    finish_reason: Option<&'static str>,
}

/// A choice's `logprobs`, in OpenAI's shape: the text's entries as the upstream sent
/// them (spool keeps none for a refusal).
#[derive(Serialize)]
pub(super) struct Logprobs<'a> {
    pub content: &'a [serde_json::Value],
    pub refusal: Option<()>,
}

/// A chunk's `delta`: one member set per chunk (one stored event), in OpenAI's shapes.
#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    /// Reasoning, under the name the upstream gave it.
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

/// `delta.tool_calls[]`: `{index, id, type, function: {name, arguments}}` on a call's
/// first fragment, `{index, function: {arguments}}` on the others.
#[derive(Serialize)]
struct ToolCallDelta<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

/// OpenAI's usage object.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct OpenAiUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

impl From<Usage> for OpenAiUsage {
    fn from(u: Usage) -> Self {
        OpenAiUsage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
        }
    }
}

/// The error object of OpenAI's shape, as a stream's failure reaches an SDK.
#[derive(Serialize)]
struct StreamError<'a> {
    error: StreamErrorObject<'a>,
}

#[derive(Serialize)]
struct StreamErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<()>,
    code: &'a str,
}

/// OpenAI's name for how a stream ended: `cancelled` has none (the text simply stops).
pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
    }
}

impl ChunkFormat {
    pub fn new(stream_id: String, model: String, created: i64, include_usage: bool) -> Self {
        let mut format = ChunkFormat {
            stream_id,
            model,
            created,
            include_usage,
            token_head: String::new(),
        };
        // Everything before the content's string: the chunk of an empty token, cut at
        // its `""`.
        let mut probe = String::new();
        format.write_chunk(
            &mut probe,
            None,
            Delta {
                content: Some(""),
                ..Delta::default()
            },
            None,
        );
        let json = probe
            .strip_prefix("data: ")
            .and_then(|p| p.strip_suffix("\n\n"))
            .and_then(|p| p.strip_suffix(TOKEN_TAIL))
            .and_then(|p| p.strip_suffix("\"\""));
        format.token_head = json.unwrap_or_default().to_owned();
        format
    }

    /// The format of a stored stream, for a resume with `?format=openai`.
    pub fn of(row: &StreamRow) -> Result<Self, StoreError> {
        Ok(ChunkFormat::new(
            row.id.clone(),
            row.model.clone(),
            row.created_at / 1000,
            row.request()?.include_usage,
        ))
    }

    /// A token chunk written from the stored data's JSON string as it is, when that
    /// string has no escapes (then decoding and encoding it again gives the same
    /// bytes). False when it cannot be.
    fn write_token_as_stored(&self, out: &mut String, seq: u64, data: &str) -> bool {
        let Some(literal) = data
            .strip_prefix("{\"text\":")
            .and_then(|d| d.strip_suffix('}'))
        else {
            return false;
        };
        let inner = literal
            .strip_prefix('"')
            .and_then(|l| l.strip_suffix('"'))
            .unwrap_or("\\");
        if self.token_head.is_empty() || inner.bytes().any(|b| b == b'\\' || b == b'"' || b < 0x20)
        {
            return false;
        }
        out.reserve(self.token_head.len() + literal.len() + TOKEN_TAIL.len() + 32);
        out.push_str("id: ");
        out.push_str(crate::http::render::itoa(seq).as_str());
        out.push_str("\ndata: ");
        out.push_str(&self.token_head);
        out.push_str(literal);
        out.push_str(TOKEN_TAIL);
        out.push_str("\n\n");
        true
    }

    fn chunk<'a>(&'a self, choices: &'a [Choice<'a>], usage: Option<OpenAiUsage>) -> Chunk<'a> {
        Chunk {
            id: &self.stream_id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            system_fingerprint: None,
            choices,
            usage,
        }
    }

    fn write_chunk(
        &self,
        out: &mut String,
        id: Option<u64>,
        delta: Delta<'_>,
        finish: Option<&'static str>,
    ) {
        self.write_choice(out, id, delta, finish, None);
    }

    fn write_choice(
        &self,
        out: &mut String,
        id: Option<u64>,
        delta: Delta<'_>,
        finish: Option<&'static str>,
        logprobs: Option<Logprobs<'_>>,
    ) {
        let choices = [Choice {
            index: 0,
            delta,
            logprobs,
            finish_reason: finish,
        }];
        write_json(out, id, &self.chunk(&choices, None));
    }
}

fn write_json(out: &mut String, id: Option<u64>, value: &impl Serialize) {
    // Serializing these structs cannot fail: strings and numbers only.
    let json = serde_json::to_string(value).unwrap_or_default();
    data_frame(out, id, &json);
}

impl Render for ChunkFormat {
    fn heartbeat(&self) -> &'static str {
        PING
    }

    fn shared(&self) -> Option<usize> {
        Some(1)
    }

    /// The terminal event is followed by the usage chunk (if asked for) and
    /// `data: [DONE]`, which carry no id of their own.
    fn render(&mut self, event: &Event, frames: &mut Frames) {
        let Some(out) = frames.frame(Some(event.seq)) else {
            return;
        };
        let id = Some(event.seq);
        if event.kind == crate::event::EventKind::Token
            && self.write_token_as_stored(out, event.seq, &event.data)
        {
            return;
        }
        match event.data() {
            Some(EventData::Start(_)) => self.write_chunk(
                out,
                id,
                Delta {
                    role: Some("assistant"),
                    content: Some(""),
                    ..Delta::default()
                },
                None,
            ),
            Some(EventData::Token(t)) => self.write_choice(
                out,
                id,
                Delta {
                    content: Some(&t.text),
                    ..Delta::default()
                },
                None,
                t.logprobs.as_deref().map(|content| Logprobs {
                    content,
                    refusal: None,
                }),
            ),
            Some(EventData::Reasoning(r)) => {
                let delta = match r.field {
                    ReasoningField::ReasoningContent => Delta {
                        reasoning_content: Some(&r.text),
                        ..Delta::default()
                    },
                    ReasoningField::Reasoning => Delta {
                        reasoning: Some(&r.text),
                        ..Delta::default()
                    },
                };
                self.write_chunk(out, id, delta, None)
            }
            Some(EventData::Refusal(r)) => self.write_chunk(
                out,
                id,
                Delta {
                    refusal: Some(&r.text),
                    ..Delta::default()
                },
                None,
            ),
            Some(EventData::ToolCall(c)) => {
                let call = ToolCallDelta {
                    index: c.index,
                    id: c.id.as_deref(),
                    kind: c.id.is_some().then_some("function"),
                    function: FunctionDelta {
                        name: c.name.as_deref(),
                        arguments: &c.arguments,
                    },
                };
                let delta = Delta {
                    tool_calls: Some([call]),
                    ..Delta::default()
                };
                self.write_chunk(out, id, delta, None)
            }
            Some(EventData::Done(done)) => {
                let empty = Delta::default();
                self.write_chunk(out, id, empty, Some(finish_reason(done.finish_reason)));
                if self.include_usage {
                    write_json(out, None, &self.chunk(&[], Some(done.usage.into())));
                }
                out.push_str("data: [DONE]\n\n");
            }
            Some(EventData::Error(e)) => {
                write_error(out, id, &e.code, &e.message);
            }
            None => {
                // Unreadable stored data (never written by spool): say so in the
                // stream's own terms rather than skip an id.
                write_error(out, id, "backend_error", "the generation failed");
            }
        }
    }
}

fn write_error(out: &mut String, id: Option<u64>, code: &str, message: &str) {
    let error = StreamError {
        error: StreamErrorObject {
            message,
            kind: "server_error",
            param: None,
            code,
        },
    };
    write_json(out, id, &error);
    out.push_str("data: [DONE]\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn format(include_usage: bool) -> ChunkFormat {
        ChunkFormat::new("st_x".into(), "mock".into(), 1, include_usage)
    }

    fn write(f: &mut ChunkFormat, out: &mut String, event: &Event) {
        let mut frames = Frames::new(None);
        f.render(event, &mut frames);
        out.push_str(&frames.take());
    }

    fn data_lines(out: &str) -> Vec<Value> {
        out.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    #[test]
    fn a_stream_as_chunks() {
        let mut f = format(true);
        let mut out = String::new();
        write(&mut f, &mut out, &Event::start(1, "st_x", "mock", "t"));
        write(&mut f, &mut out, &Event::token(2, " hi"));
        write(
            &mut f,
            &mut out,
            &Event::done(
                3,
                FinishReason::Length,
                Usage {
                    prompt_tokens: 2,
                    completion_tokens: 1,
                    session_turns: None,
                },
            ),
        );
        assert!(out.starts_with("id: 1\ndata: {"));
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert!(!out.contains("retry:"));
        let chunks = data_lines(&out);
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], " hi");
        assert_eq!(chunks[1]["object"], "chat.completion.chunk");
        assert_eq!(chunks[2]["choices"][0]["finish_reason"], "length");
        assert_eq!(chunks[3]["choices"], json!([]));
        assert_eq!(chunks[3]["usage"]["total_tokens"], 3);
        // The usage chunk and [DONE] carry no id: a resume point stays the done event.
        assert_eq!(out.matches("id: ").count(), 3);
    }

    /// The exact bytes earlier releases sent: a resume in this format must match them.
    #[test]
    fn chunk_bytes_are_stable() {
        let mut f = format(false);
        let mut out = String::new();
        write(&mut f, &mut out, &Event::token(2, " hi"));
        assert_eq!(
            out,
            "id: 2\ndata: {\"id\":\"st_x\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"mock\",\"system_fingerprint\":null,\"choices\":[{\"index\":0,\"delta\":{\"content\":\" hi\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n"
        );
        let mut f = format(true);
        let mut out = String::new();
        write(
            &mut f,
            &mut out,
            &Event::done(
                3,
                FinishReason::Stop,
                Usage {
                    prompt_tokens: 2,
                    completion_tokens: 1,
                    session_turns: None,
                },
            ),
        );
        assert_eq!(
            out,
            "id: 3\ndata: {\"id\":\"st_x\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"mock\",\"system_fingerprint\":null,\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\n\
             data: {\"id\":\"st_x\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"mock\",\"system_fingerprint\":null,\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1,\"total_tokens\":3}}\n\n\
             data: [DONE]\n\n"
        );
        let mut out = String::new();
        write(&mut f, &mut out, &Event::error(4, "backend_error", "boom"));
        assert_eq!(
            out,
            "id: 4\ndata: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\",\"param\":null,\"code\":\"backend_error\"}}\n\ndata: [DONE]\n\n"
        );
    }

    /// A token written from its stored JSON is byte for byte the one decoded and
    /// encoded again, for text with and without escapes.
    #[test]
    fn tokens_as_stored_are_the_same_bytes() {
        let f = format(false);
        for text in [
            " hi",
            "",
            "é😀",
            "a\"b",
            "back\\slash",
            "line\nbreak",
            "\u{1}",
            "</x>",
        ] {
            let event = Event::token(9, text);
            let mut fast = String::new();
            let took = f.write_token_as_stored(&mut fast, 9, &event.data);
            let mut slow = String::new();
            f.write_chunk(
                &mut slow,
                Some(9),
                Delta {
                    content: Some(text),
                    ..Delta::default()
                },
                None,
            );
            assert_eq!(took, !event.data.contains('\\'), "{text:?}");
            if took {
                assert_eq!(fast, slow, "{text:?}");
            }
            let mut rendered = String::new();
            write(&mut f.clone(), &mut rendered, &event);
            assert_eq!(rendered, slow, "{text:?}");
        }
    }

    #[test]
    fn errors_and_cancels() {
        let mut f = format(false);
        let mut out = String::new();
        write(&mut f, &mut out, &Event::error(5, "backend_error", "boom"));
        let chunks = data_lines(&out);
        assert_eq!(chunks[0]["error"]["code"], "backend_error");
        assert_eq!(chunks[0]["error"]["message"], "boom");
        let mut out = String::new();
        write(
            &mut f,
            &mut out,
            &Event::done(4, FinishReason::Cancelled, Usage::default()),
        );
        assert_eq!(data_lines(&out)[0]["choices"][0]["finish_reason"], "stop");
        assert_eq!(data_lines(&out).len(), 1, "no usage chunk unless asked");
    }
}
