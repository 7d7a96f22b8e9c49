//! An answer assembled from a stream's events: its text, reasoning, refusal and tool
//! calls (each call's argument fragments joined in order). What `GET /v1/streams/{id}`
//! and a non-streaming chat completion report, read from the same events every reader
//! replays.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::event::{Event, EventData, ReasoningField};

/// The parts of an answer so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    pub text: String,
    pub reasoning: String,
    /// The upstream's name for the reasoning (`None` until there is some).
    pub reasoning_field: Option<ReasoningField>,
    pub refusal: Option<String>,
    /// The text's log-probabilities, when the stream has them.
    pub logprobs: Vec<serde_json::Value>,
    calls: BTreeMap<u32, ToolCall>,
}

/// One assembled tool call, in OpenAI's shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: Function,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Function {
    pub name: String,
    pub arguments: String,
}

impl Answer {
    /// Adds one event (events other than the answer's parts change nothing).
    pub fn push(&mut self, event: &Event) {
        match event.data() {
            Some(EventData::Token(t)) => {
                self.text.push_str(&t.text);
                self.logprobs.extend(t.logprobs.into_iter().flatten());
            }
            Some(EventData::Reasoning(r)) => {
                self.reasoning.push_str(&r.text);
                self.reasoning_field.get_or_insert(r.field);
            }
            Some(EventData::Refusal(r)) => self
                .refusal
                .get_or_insert_with(String::new)
                .push_str(&r.text),
            Some(EventData::ToolCall(c)) => {
                let call = self.calls.entry(c.index).or_insert_with(|| ToolCall {
                    kind: "function",
                    ..ToolCall::default()
                });
                if let Some(id) = c.id {
                    call.id = id.into_owned();
                }
                if let Some(name) = c.name {
                    call.function.name.push_str(&name);
                }
                call.function.arguments.push_str(&c.arguments);
            }
            Some(EventData::Start(_) | EventData::Done(_) | EventData::Error(_)) | None => {}
        }
    }

    /// The assembled tool calls, by index.
    pub fn tool_calls(&self) -> Vec<ToolCall> {
        self.calls.values().cloned().collect()
    }

    pub fn of<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        let mut answer = Answer::default();
        for event in events {
            answer.push(event);
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ToolCallData;

    fn call(seq: u64, index: u32, id: Option<&str>, name: Option<&str>, args: &str) -> Event {
        Event::tool_call(
            seq,
            &ToolCallData {
                index,
                id: id.map(Into::into),
                name: name.map(Into::into),
                arguments: args.into(),
            },
        )
    }

    #[test]
    fn fragments_are_joined_by_index_and_parts_kept_apart() {
        let events = [
            Event::reasoning(2, "think", ReasoningField::Reasoning),
            Event::token(3, "Let me look."),
            call(4, 1, Some("b"), Some("time"), "{\"tz\":"),
            call(5, 0, Some("a"), Some("weather"), ""),
            call(6, 0, None, None, "{\"city\":\"Oslo\"}"),
            call(7, 1, None, None, "\"UTC\"}"),
            Event::refusal(8, "no"),
        ];
        let a = Answer::of(&events);
        assert_eq!(a.text, "Let me look.");
        assert_eq!(a.reasoning, "think");
        assert_eq!(a.reasoning_field, Some(ReasoningField::Reasoning));
        assert_eq!(a.refusal.as_deref(), Some("no"));
        let calls = a.tool_calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (calls[0].id.as_str(), calls[0].function.name.as_str()),
            ("a", "weather")
        );
        assert_eq!(calls[0].function.arguments, "{\"city\":\"Oslo\"}");
        assert_eq!(calls[1].function.arguments, "{\"tz\":\"UTC\"}");
        assert_eq!(
            serde_json::to_value(&calls[1]).unwrap(),
            serde_json::json!({"id":"b","type":"function","function":{"name":"time","arguments":"{\"tz\":\"UTC\"}"}})
        );
    }
}
