//! The body `useChat` sends (`{id, messages, trigger, messageId}` plus the transport's
//! `body` option) and the turn it means: the last message alone, as native parameters
//! for the one start path. A user message's text parts are its content (image files
//! become `image_url` parts); an assistant message whose tool parts have outputs gives
//! those outputs as tool results.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::http::error::ApiError;
use crate::http::params::{MessageParam, StreamParams};
use crate::llm::{Prompt, UpstreamOptions};

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub id: String,
    #[serde(default)]
    pub messages: Vec<UiMessage>,
    /// `submit-message` or `regenerate-message` (`messageId`, which names the message
    /// to regenerate, is not read: it is always the last answer).
    #[serde(default)]
    pub trigger: Option<String>,
    /// From the transport's `body` option: the model, and a system prompt for a new chat.
    pub model: Option<String>,
    pub system: Option<String>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub metadata: Option<Map<String, Value>>,
    #[serde(flatten)]
    pub options: UpstreamOptions,
}

/// A UIMessage: only what a turn is made of is read.
#[derive(Debug, Deserialize)]
pub struct UiMessage {
    pub role: String,
    #[serde(default)]
    pub parts: Vec<Value>,
}

impl ChatRequest {
    pub fn regenerates(&self) -> bool {
        self.trigger.as_deref() == Some("regenerate-message")
    }

    /// The turn the last message means.
    pub fn turn(&self) -> Result<Prompt, ApiError> {
        match self.trigger.as_deref() {
            None | Some("submit-message") => {}
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "`trigger` is {other:?}; expected \"submit-message\" or \"regenerate-message\""
                )));
            }
        }
        let Some(last) = self.messages.last() else {
            return Err(ApiError::invalid(
                "`messages` is empty: send the new message",
            ));
        };
        match last.role.as_str() {
            "user" => user_turn(last),
            "assistant" => tool_results(last),
            other => Err(ApiError::invalid(format!(
                "the last message's `role` is {other:?}: a turn is a user message, or an \
                 assistant message with tool outputs"
            ))),
        }
    }

    /// The native parameters of the turn `prompt` of session `session_id`.
    pub fn into_params(self, session_id: String, prompt: Prompt) -> StreamParams {
        let (content, messages) = match prompt {
            Prompt::Text(text) => (Some(text), None),
            Prompt::Messages(ms) => (None, Some(ms.into_iter().map(MessageParam::from).collect())),
        };
        StreamParams {
            content,
            messages,
            session_id: Some(session_id),
            // `None`: the session's model.
            model: None,
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            metadata: self.metadata,
            options: self.options,
            ..StreamParams::default()
        }
    }
}

fn user_turn(m: &UiMessage) -> Result<Prompt, ApiError> {
    let mut text = String::new();
    let mut images = Vec::new();
    for part in &m.parts {
        match part["type"].as_str() {
            Some("text") => text.push_str(part["text"].as_str().unwrap_or_default()),
            Some("file")
                if part["mediaType"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("image/")) =>
            {
                if let Some(url) = part["url"].as_str() {
                    images
                        .push(serde_json::json!({"type": "image_url", "image_url": {"url": url}}));
                }
            }
            _ => {}
        }
    }
    if text.trim().is_empty() && images.is_empty() {
        return Err(ApiError::invalid(
            "the last message has no text: a user message needs a `text` part",
        ));
    }
    if images.is_empty() {
        return Ok(Prompt::Text(text));
    }
    let mut parts = vec![serde_json::json!({"type": "text", "text": text})];
    parts.extend(images);
    Ok(Prompt::Messages(vec![crate::llm::Message {
        parts: Some(parts),
        ..crate::llm::Message::text(crate::llm::Role::User, text)
    }]))
}

/// The outputs of an assistant message's tool parts (`tool-NAME` or `dynamic-tool`,
/// state `output-available`) as tool results.
fn tool_results(m: &UiMessage) -> Result<Prompt, ApiError> {
    let results: Vec<crate::llm::Message> = m
        .parts
        .iter()
        .filter(|p| {
            p["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("tool-") || t == "dynamic-tool")
        })
        .filter(|p| p["state"] == "output-available")
        .filter_map(|p| {
            let id = p["toolCallId"].as_str()?;
            let content = match &p["output"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let mut m = crate::llm::Message::text(crate::llm::Role::Tool, content);
            m.tool_call_id = Some(id.to_owned());
            Some(m)
        })
        .collect();
    if results.is_empty() {
        return Err(ApiError::invalid(
            "the last message is the assistant's without tool outputs: send a user message",
        ));
    }
    Ok(Prompt::Messages(results))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> ChatRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_last_message_is_the_turn() {
        let b = body(
            json!({"id": "c1", "trigger": "submit-message", "messages": [
            {"id": "a", "role": "user", "parts": [{"type": "text", "text": "old"}]},
            {"id": "b", "role": "assistant", "parts": [{"type": "text", "text": "reply"}]},
            {"id": "c", "role": "user", "parts": [{"type": "text", "text": "Hi "},
                                                  {"type": "text", "text": "there"}]}]}),
        );
        assert_eq!(b.turn().unwrap(), Prompt::Text("Hi there".into()));
        let only = body(json!({"id": "c1", "messages": [
            {"id": "c", "role": "user", "parts": [{"type": "text", "text": "Hi there"}]}]}));
        assert_eq!(only.turn().unwrap(), b.turn().unwrap());
    }

    #[test]
    fn tool_outputs_are_tool_results_and_bad_turns_are_refused() {
        let b = body(
            json!({"id": "c1", "messages": [{"id": "b", "role": "assistant", "parts": [
            {"type": "step-start"},
            {"type": "tool-weather", "toolCallId": "t1", "state": "output-available",
             "input": {"city": "Oslo"}, "output": {"temp": 21}},
            {"type": "tool-time", "toolCallId": "t2", "state": "output-available",
             "input": {}, "output": "noon"}]}]}),
        );
        let Prompt::Messages(ms) = b.turn().unwrap() else {
            panic!("tool results are messages");
        };
        let got: Vec<(&str, Option<&str>)> = ms
            .iter()
            .map(|m| (m.content.as_str(), m.tool_call_id.as_deref()))
            .collect();
        assert_eq!(got, [("{\"temp\":21}", Some("t1")), ("noon", Some("t2"))]);
        for bad in [
            json!({"id": "c1", "messages": []}),
            json!({"id": "c1", "messages": [{"role": "user", "parts": []}]}),
            json!({"id": "c1", "messages": [{"role": "system", "parts": [{"type": "text", "text": "x"}]}]}),
            json!({"id": "c1", "messages": [{"role": "assistant", "parts": [{"type": "text", "text": "x"}]}]}),
            json!({"id": "c1", "trigger": "resume", "messages": [{"role": "user", "parts": [{"type": "text", "text": "x"}]}]}),
        ] {
            assert!(body(bad.clone()).turn().is_err(), "{bad}");
        }
    }
}
