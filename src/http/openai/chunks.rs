//! The OpenAI streaming wire format: each stored event as a `chat.completion.chunk`,
//! exactly as the official SDKs parse them, plus an `id:` line so the stream resumes
//! with `Last-Event-ID` like the native one.
//!
//! Unlike the native format there is no `retry:` line and the heartbeat is a bare
//! `: ping` line (the Python SDK breaks on a standalone `retry:` and on a comment
//! followed by a blank line after an event with an id).

use serde_json::{Value, json};

use crate::event::{Event, EventKind};

/// The heartbeat comment of this format: one line, no blank line after it.
pub const PING: &str = ": ping\n";

/// What every chunk of one stream repeats.
#[derive(Debug, Clone)]
pub struct ChunkFormat {
    pub stream_id: String,
    pub model: String,
    /// Unix seconds of the stream's creation.
    pub created: i64,
    /// `stream_options.include_usage`: a last chunk with `usage` and no choices.
    pub include_usage: bool,
}

impl ChunkFormat {
    fn chunk(&self, delta: Value, finish_reason: Value) -> Value {
        json!({
            "id": self.stream_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        })
    }

    /// Appends `event` in this format. The terminal event is followed by the usage
    /// chunk (if asked for) and `data: [DONE]`, which carry no id of their own.
    pub fn write(&self, out: &mut String, event: &Event) {
        let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
        let mut frame = |value: &Value, id: Option<u64>| {
            if let Some(id) = id {
                out.push_str("id: ");
                out.push_str(&id.to_string());
                out.push('\n');
            }
            out.push_str("data: ");
            out.push_str(&value.to_string());
            out.push_str("\n\n");
        };
        match event.kind {
            EventKind::Start => frame(
                &self.chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                Some(event.seq),
            ),
            EventKind::Token => frame(
                &self.chunk(json!({"content": data["text"]}), Value::Null),
                Some(event.seq),
            ),
            EventKind::Done => {
                let reason = match data["finish_reason"].as_str() {
                    Some("length") => "length",
                    // `cancelled` has no OpenAI name; the text simply stops there.
                    _ => "stop",
                };
                frame(&self.chunk(json!({}), Value::from(reason)), Some(event.seq));
                if self.include_usage {
                    let usage = usage(&data["usage"]);
                    let mut last = self.chunk(json!({}), Value::Null);
                    last["choices"] = json!([]);
                    last["usage"] = usage;
                    frame(&last, None);
                }
                out.push_str("data: [DONE]\n\n");
            }
            EventKind::Error => {
                let code = data["code"].as_str().unwrap_or("backend_error");
                let message = data["message"].as_str().unwrap_or("the generation failed");
                frame(
                    &json!({"error": {"message": message, "type": "server_error", "param": null, "code": code}}),
                    Some(event.seq),
                );
                out.push_str("data: [DONE]\n\n");
            }
        }
    }
}

/// OpenAI's usage object from ours.
pub fn usage(ours: &Value) -> Value {
    let prompt = ours["prompt_tokens"].as_u64().unwrap_or(0);
    let completion = ours["completion_tokens"].as_u64().unwrap_or(0);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{FinishReason, Usage};

    fn format(include_usage: bool) -> ChunkFormat {
        ChunkFormat {
            stream_id: "st_x".into(),
            model: "mock".into(),
            created: 1,
            include_usage,
        }
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
        let f = format(true);
        let mut out = String::new();
        f.write(&mut out, &Event::start(1, "st_x", "mock", "t"));
        f.write(&mut out, &Event::token(2, " hi"));
        f.write(
            &mut out,
            &Event::done(
                3,
                FinishReason::Length,
                Usage {
                    prompt_tokens: 2,
                    completion_tokens: 1,
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

    #[test]
    fn errors_and_cancels() {
        let f = format(false);
        let mut out = String::new();
        f.write(&mut out, &Event::error(5, "backend_error", "boom"));
        let chunks = data_lines(&out);
        assert_eq!(chunks[0]["error"]["code"], "backend_error");
        assert_eq!(chunks[0]["error"]["message"], "boom");
        let mut out = String::new();
        f.write(
            &mut out,
            &Event::done(4, FinishReason::Cancelled, Usage::default()),
        );
        assert_eq!(data_lines(&out)[0]["choices"][0]["finish_reason"], "stop");
        assert_eq!(data_lines(&out).len(), 1, "no usage chunk unless asked");
    }
}
