//! The Responses API's streaming format: a stream's stored events as the typed events
//! the official SDKs parse (`response.created`, `response.output_item.added`,
//! `response.output_text.delta`, …, `response.completed`), and the response object
//! they assemble into.
//!
//! The format numbers its own frames ([`Numbering::Frames`]): every frame carries a
//! `sequence_number` counting the frames from 0 and an SSE `id:` equal to it, so
//! `starting_after=N` and `Last-Event-ID: N` resume exactly after frame N. The frames
//! are a pure function of the stored events and the stream's stored request: the same
//! events give the same bytes, live, replayed or on another node.
//!
//! Stored events become output items in order: reasoning text a `reasoning` item,
//! tokens and refusals the parts of a `message` item, each tool call a `function_call`
//! item. An item is closed (its `.done` events) when a part of another kind begins, or
//! at the end. The terminal event closes everything and says how the response ended:
//! `response.completed`, `response.incomplete` (`max_output_tokens`, `content_filter`,
//! and a cancelled response, whose status is `cancelled`) or `response.failed`.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::event::{Event, EventData, FinishReason, ToolCallData, Usage};
use crate::http::render::{Frames, Numbering, Render, itoa};
use crate::llm::ResponseOptions;
use crate::store::{StoreError, StreamRow};

/// The heartbeat: a bare comment line (the SDKs' SSE decoders read a comment followed
/// by a blank line after an event with an id as an empty event).
const PING: &str = ": ping\n";

/// What every frame and the response object repeat of the stream.
#[derive(Debug, Clone)]
struct Head {
    id: String,
    /// What makes item ids unique: the stream id without its prefix.
    suffix: String,
    /// Unix seconds.
    created_at: i64,
    model: String,
    options: ResponseOptions,
    metadata: Option<Map<String, Value>>,
    temperature: Option<f32>,
    top_p: Option<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ItemStatus {
    InProgress,
    Completed,
    Incomplete,
}

impl ItemStatus {
    fn as_str(self) -> &'static str {
        match self {
            ItemStatus::InProgress => "in_progress",
            ItemStatus::Completed => "completed",
            ItemStatus::Incomplete => "incomplete",
        }
    }
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Refusal(String),
}

#[derive(Debug, Clone)]
enum Item {
    Message {
        parts: Vec<Part>,
        status: ItemStatus,
    },
    Reasoning {
        text: String,
        status: ItemStatus,
    },
    Call {
        call_id: String,
        name: String,
        arguments: String,
        status: ItemStatus,
    },
}

/// How the response ended.
#[derive(Debug, Clone)]
enum End {
    Completed(Usage),
    Incomplete(&'static str, Usage),
    Cancelled(Usage),
    Failed { code: String, message: String },
}

/// The format of one response's stream (and the assembly of its object).
#[derive(Debug, Clone)]
pub struct ResponseFormat {
    head: Head,
    /// The next frame's sequence number.
    next: u64,
    items: Vec<Item>,
    open_message: Option<usize>,
    open_reasoning: Option<usize>,
    /// Open function-call items by the tool call's index.
    open_calls: BTreeMap<u32, usize>,
    end: Option<End>,
}

/// A text delta frame (the frame written per token).
#[derive(Serialize)]
struct DeltaFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    item_id: &'a str,
    output_index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_index: Option<usize>,
    delta: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<[(); 0]>,
    sequence_number: u64,
}

/// A float as it was written (an `f32` widened prints its binary noise).
fn float(x: Option<f32>) -> Value {
    x.and_then(|x| x.to_string().parse::<f64>().ok())
        .map_or(Value::Null, Value::from)
}

/// OpenAI's usage object.
pub fn usage_json(u: Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

impl ResponseFormat {
    /// The format of a stored stream.
    pub fn of(row: &StreamRow) -> Result<Self, StoreError> {
        let request = row.request()?;
        let suffix = row.id.strip_prefix("st_").unwrap_or(&row.id).to_owned();
        Ok(ResponseFormat::new(Head {
            id: row.id.clone(),
            suffix,
            created_at: row.created_at / 1000,
            model: row.model.clone(),
            options: request.response.unwrap_or_default(),
            metadata: request.metadata,
            temperature: request.temperature,
            top_p: request.top_p,
        }))
    }

    fn new(head: Head) -> Self {
        ResponseFormat {
            head,
            next: 0,
            items: Vec::new(),
            open_message: None,
            open_reasoning: None,
            open_calls: BTreeMap::new(),
            end: None,
        }
    }

    /// How many frames the events fed so far made (the last one's number is one less).
    pub fn frames(&self) -> u64 {
        self.next
    }

    /// The stored request's options (what `input_items` lists).
    pub fn options(&self) -> &ResponseOptions {
        &self.head.options
    }

    /// An item id: unique per stream and output index, the same on every read.
    fn item_id(&self, index: usize) -> String {
        let prefix = match self.items.get(index) {
            Some(Item::Message { .. }) | None => "msg",
            Some(Item::Reasoning { .. }) => "rs",
            Some(Item::Call { .. }) => "fc",
        };
        format!("{prefix}_{}_{index}", self.head.suffix)
    }

    /// An input item's id, when the client gave it none.
    pub fn input_item_id(&self, kind: &str, index: usize) -> String {
        let prefix = match kind {
            "function_call" => "fc",
            "function_call_output" => "fco",
            "reasoning" => "rs",
            _ => "msg",
        };
        format!("{prefix}_{}_in{index}", self.head.suffix)
    }

    fn part_json(part: &Part) -> Value {
        match part {
            Part::Text(text) => {
                json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text})
            }
            Part::Refusal(refusal) => json!({"type": "refusal", "refusal": refusal}),
        }
    }

    fn item_json(&self, index: usize) -> Value {
        let id = self.item_id(index);
        match &self.items[index] {
            Item::Message { parts, status } => json!({
                "id": id,
                "type": "message",
                "status": status.as_str(),
                "content": parts.iter().map(Self::part_json).collect::<Vec<_>>(),
                "role": "assistant",
            }),
            Item::Reasoning { text, status } => {
                let content = if *status == ItemStatus::InProgress && text.is_empty() {
                    json!([])
                } else {
                    json!([{"type": "reasoning_text", "text": text}])
                };
                json!({"id": id, "type": "reasoning", "summary": [], "content": content,
                       "status": status.as_str()})
            }
            Item::Call {
                call_id,
                name,
                arguments,
                status,
            } => json!({
                "id": id,
                "type": "function_call",
                "status": status.as_str(),
                "arguments": arguments,
                "call_id": call_id,
                "name": name,
            }),
        }
    }

    /// The response object as the events fed so far make it, with `status` unless the
    /// stream has ended (then its end says).
    pub fn object(&self, status: &str) -> Value {
        let h = &self.head;
        let o = &h.options;
        let (status, error, incomplete, usage) = match &self.end {
            None => (status, Value::Null, Value::Null, Value::Null),
            Some(End::Completed(u)) => ("completed", Value::Null, Value::Null, usage_json(*u)),
            Some(End::Incomplete(reason, u)) => (
                "incomplete",
                Value::Null,
                json!({"reason": reason}),
                usage_json(*u),
            ),
            Some(End::Cancelled(u)) => ("cancelled", Value::Null, Value::Null, usage_json(*u)),
            Some(End::Failed { code, message }) => (
                "failed",
                json!({"code": "server_error", "message": format!("{message} ({code})")}),
                Value::Null,
                Value::Null,
            ),
        };
        let output: Vec<Value> = (0..self.items.len()).map(|i| self.item_json(i)).collect();
        json!({
            "id": h.id,
            "object": "response",
            "created_at": h.created_at,
            "status": status,
            "background": o.background,
            "error": error,
            "incomplete_details": incomplete,
            "instructions": o.instructions,
            "max_output_tokens": o.max_output_tokens,
            "max_tool_calls": null,
            "model": h.model,
            "output": output,
            "parallel_tool_calls": o.parallel_tool_calls.unwrap_or(true),
            "previous_response_id": o.previous_response_id,
            "reasoning": {"effort": null, "summary": null},
            "service_tier": "default",
            "store": o.store.unwrap_or(true),
            "temperature": float(h.temperature),
            "text": o.text.clone().unwrap_or_else(|| json!({"format": {"type": "text"}})),
            "tool_choice": o.tool_choice.clone().unwrap_or_else(|| json!("auto")),
            "tools": o.tools,
            "top_p": float(h.top_p),
            "truncation": "disabled",
            "usage": usage,
            "user": null,
            "metadata": h.metadata.clone().unwrap_or_default(),
        })
    }

    /// The text of the output's messages, as the SDKs' `output_text` joins it.
    pub fn output_text(&self) -> String {
        let mut text = String::new();
        for item in &self.items {
            if let Item::Message { parts, .. } = item {
                for part in parts {
                    if let Part::Text(t) = part {
                        text.push_str(t);
                    }
                }
            }
        }
        text
    }

    /// Takes the next sequence number and, unless the reader has that frame, where to
    /// write it.
    fn open<'o>(&mut self, out: &'o mut Frames) -> (u64, Option<&'o mut String>) {
        let seq = self.next;
        self.next += 1;
        (seq, out.frame(Some(seq)))
    }

    /// Writes one frame whose body `body` makes (only if the reader lacks it).
    fn emit(&mut self, out: &mut Frames, kind: &'static str, body: impl FnOnce(&Self) -> Value) {
        let (seq, text) = self.open(out);
        let Some(text) = text else { return };
        let mut data = Map::new();
        data.insert("type".to_owned(), Value::from(kind));
        if let Value::Object(body) = body(self) {
            data.extend(body);
        }
        data.insert("sequence_number".to_owned(), Value::from(seq));
        // Serializing a JSON value cannot fail.
        let json = serde_json::to_string(&data).unwrap_or_default();
        write_frame(text, seq, kind, &json);
    }

    fn emit_delta(
        &mut self,
        out: &mut Frames,
        kind: &'static str,
        index: usize,
        content_index: Option<usize>,
        delta: &str,
    ) {
        let item_id = self.item_id(index);
        let (seq, text) = self.open(out);
        let Some(text) = text else { return };
        let frame = DeltaFrame {
            kind,
            item_id: &item_id,
            output_index: index,
            content_index,
            delta,
            logprobs: (kind == "response.output_text.delta").then_some([]),
            sequence_number: seq,
        };
        let json = serde_json::to_string(&frame).unwrap_or_default();
        write_frame(text, seq, kind, &json);
    }

    fn item_added(&mut self, out: &mut Frames, index: usize) {
        self.emit(
            out,
            "response.output_item.added",
            |f| json!({"output_index": index, "item": f.item_json(index)}),
        );
    }

    fn item_done(&mut self, out: &mut Frames, index: usize) {
        self.emit(
            out,
            "response.output_item.done",
            |f| json!({"output_index": index, "item": f.item_json(index)}),
        );
    }

    fn part_event(&mut self, out: &mut Frames, kind: &'static str, index: usize, part: usize) {
        self.emit(out, kind, |f| {
            let part_json = match &f.items[index] {
                Item::Message { parts, .. } => parts.get(part).map(Self::part_json),
                Item::Reasoning { text, .. } => {
                    Some(json!({"type": "reasoning_text", "text": text}))
                }
                Item::Call { .. } => None,
            };
            json!({"item_id": f.item_id(index), "output_index": index, "content_index": part,
                   "part": part_json})
        });
    }

    fn set_status(&mut self, index: usize, new: ItemStatus) {
        if let Some(
            Item::Message { status, .. }
            | Item::Reasoning { status, .. }
            | Item::Call { status, .. },
        ) = self.items.get_mut(index)
        {
            *status = new;
        }
    }

    fn close_message(&mut self, out: &mut Frames, status: ItemStatus) {
        let Some(index) = self.open_message.take() else {
            return;
        };
        let last = match &self.items[index] {
            Item::Message { parts, .. } => parts.len().checked_sub(1),
            _ => None,
        };
        if let Some(part) = last {
            self.close_part(out, index, part);
        }
        self.set_status(index, status);
        self.item_done(out, index);
    }

    fn close_part(&mut self, out: &mut Frames, index: usize, part: usize) {
        let Some(Item::Message { parts, .. }) = self.items.get(index) else {
            return;
        };
        match parts.get(part) {
            Some(Part::Text(_)) => self.emit(out, "response.output_text.done", |f| {
                let text = match &f.items[index] {
                    Item::Message { parts, .. } => match parts.get(part) {
                        Some(Part::Text(t)) => t.as_str(),
                        _ => "",
                    },
                    _ => "",
                };
                json!({"item_id": f.item_id(index), "output_index": index, "content_index": part,
                       "text": text, "logprobs": []})
            }),
            Some(Part::Refusal(_)) => self.emit(out, "response.refusal.done", |f| {
                let refusal = match &f.items[index] {
                    Item::Message { parts, .. } => match parts.get(part) {
                        Some(Part::Refusal(t)) => t.as_str(),
                        _ => "",
                    },
                    _ => "",
                };
                json!({"item_id": f.item_id(index), "output_index": index, "content_index": part,
                       "refusal": refusal})
            }),
            None => return,
        }
        self.part_event(out, "response.content_part.done", index, part);
    }

    fn close_reasoning(&mut self, out: &mut Frames, status: ItemStatus) {
        let Some(index) = self.open_reasoning.take() else {
            return;
        };
        self.emit(out, "response.reasoning_text.done", |f| {
            let text = match &f.items[index] {
                Item::Reasoning { text, .. } => text.as_str(),
                _ => "",
            };
            json!({"item_id": f.item_id(index), "output_index": index, "content_index": 0,
                   "text": text})
        });
        self.part_event(out, "response.content_part.done", index, 0);
        self.set_status(index, status);
        self.item_done(out, index);
    }

    fn close_calls(&mut self, out: &mut Frames, status: ItemStatus) {
        let mut open: Vec<usize> = std::mem::take(&mut self.open_calls).into_values().collect();
        open.sort_unstable();
        for index in open {
            self.emit(out, "response.function_call_arguments.done", |f| {
                let (name, arguments) = match &f.items[index] {
                    Item::Call {
                        name, arguments, ..
                    } => (name.as_str(), arguments.as_str()),
                    _ => ("", ""),
                };
                json!({"item_id": f.item_id(index), "output_index": index, "name": name,
                       "arguments": arguments})
            });
            self.set_status(index, status);
            self.item_done(out, index);
        }
    }

    fn close_all(&mut self, out: &mut Frames, status: ItemStatus) {
        self.close_reasoning(out, status);
        self.close_message(out, status);
        self.close_calls(out, status);
    }

    /// A piece of the message's text (`refusal`: of its refusal).
    fn message_part(&mut self, out: &mut Frames, piece: &str, refusal: bool) {
        if piece.is_empty() {
            return;
        }
        self.close_reasoning(out, ItemStatus::Completed);
        self.close_calls(out, ItemStatus::Completed);
        let index = match self.open_message {
            Some(index) => index,
            None => {
                self.items.push(Item::Message {
                    parts: Vec::new(),
                    status: ItemStatus::InProgress,
                });
                let index = self.items.len() - 1;
                self.open_message = Some(index);
                self.item_added(out, index);
                index
            }
        };
        let (count, same_kind) = match &self.items[index] {
            Item::Message { parts, .. } => (
                parts.len(),
                matches!(
                    (parts.last(), refusal),
                    (Some(Part::Text(_)), false) | (Some(Part::Refusal(_)), true)
                ),
            ),
            _ => (0, false),
        };
        let part = if same_kind {
            count - 1
        } else {
            if count > 0 {
                self.close_part(out, index, count - 1);
            }
            if let Some(Item::Message { parts, .. }) = self.items.get_mut(index) {
                parts.push(if refusal {
                    Part::Refusal(String::new())
                } else {
                    Part::Text(String::new())
                });
            }
            self.part_event(out, "response.content_part.added", index, count);
            count
        };
        if let Some(Item::Message { parts, .. }) = self.items.get_mut(index)
            && let Some(Part::Text(t) | Part::Refusal(t)) = parts.get_mut(part)
        {
            t.push_str(piece);
        }
        let kind = if refusal {
            "response.refusal.delta"
        } else {
            "response.output_text.delta"
        };
        self.emit_delta(out, kind, index, Some(part), piece);
    }

    fn reasoning(&mut self, out: &mut Frames, piece: &str) {
        if piece.is_empty() {
            return;
        }
        self.close_message(out, ItemStatus::Completed);
        self.close_calls(out, ItemStatus::Completed);
        let index = match self.open_reasoning {
            Some(index) => index,
            None => {
                self.items.push(Item::Reasoning {
                    text: String::new(),
                    status: ItemStatus::InProgress,
                });
                let index = self.items.len() - 1;
                self.open_reasoning = Some(index);
                self.item_added(out, index);
                self.part_event(out, "response.content_part.added", index, 0);
                index
            }
        };
        if let Some(Item::Reasoning { text, .. }) = self.items.get_mut(index) {
            text.push_str(piece);
        }
        self.emit_delta(out, "response.reasoning_text.delta", index, Some(0), piece);
    }

    fn tool_call(&mut self, out: &mut Frames, call: &ToolCallData<'_>) {
        self.close_message(out, ItemStatus::Completed);
        self.close_reasoning(out, ItemStatus::Completed);
        let index = match self.open_calls.get(&call.index) {
            Some(index) => *index,
            None => {
                self.items.push(Item::Call {
                    call_id: call.id.as_deref().unwrap_or_default().to_owned(),
                    name: call.name.as_deref().unwrap_or_default().to_owned(),
                    arguments: String::new(),
                    status: ItemStatus::InProgress,
                });
                let index = self.items.len() - 1;
                self.open_calls.insert(call.index, index);
                self.item_added(out, index);
                index
            }
        };
        if let Some(Item::Call { arguments, .. }) = self.items.get_mut(index) {
            arguments.push_str(&call.arguments);
        }
        if !call.arguments.is_empty() {
            self.emit_delta(
                out,
                "response.function_call_arguments.delta",
                index,
                None,
                &call.arguments,
            );
        }
    }

    fn finish(&mut self, out: &mut Frames, end: End) {
        let (status, kind) = match &end {
            End::Completed(_) => (ItemStatus::Completed, "response.completed"),
            End::Incomplete(..) | End::Cancelled(_) => {
                (ItemStatus::Incomplete, "response.incomplete")
            }
            End::Failed { .. } => (ItemStatus::Incomplete, "response.failed"),
        };
        self.close_all(out, status);
        self.end = Some(end);
        self.emit(out, kind, |f| json!({"response": f.object("completed")}));
    }
}

fn write_frame(out: &mut String, seq: u64, kind: &str, json: &str) {
    out.reserve(json.len() + kind.len() + 32);
    out.push_str("id: ");
    out.push_str(itoa(seq).as_str());
    out.push_str("\nevent: ");
    out.push_str(kind);
    out.push_str("\ndata: ");
    out.push_str(json);
    out.push_str("\n\n");
}

impl Render for ResponseFormat {
    fn heartbeat(&self) -> &'static str {
        PING
    }

    fn numbering(&self) -> Numbering {
        Numbering::Frames
    }

    fn render(&mut self, event: &Event, out: &mut Frames) {
        match event.data() {
            Some(EventData::Start(_)) => {
                let first = if self.head.options.background {
                    "queued"
                } else {
                    "in_progress"
                };
                self.emit(
                    out,
                    "response.created",
                    |f| json!({"response": f.object(first)}),
                );
                self.emit(
                    out,
                    "response.in_progress",
                    |f| json!({"response": f.object("in_progress")}),
                );
            }
            Some(EventData::Token(t)) => self.message_part(out, &t.text, false),
            Some(EventData::Refusal(r)) => self.message_part(out, &r.text, true),
            Some(EventData::Reasoning(r)) => self.reasoning(out, &r.text),
            Some(EventData::ToolCall(c)) => self.tool_call(out, &c),
            Some(EventData::Done(done)) => {
                let end = match done.finish_reason {
                    FinishReason::Stop | FinishReason::ToolCalls => End::Completed(done.usage),
                    FinishReason::Length => End::Incomplete("max_output_tokens", done.usage),
                    FinishReason::ContentFilter => End::Incomplete("content_filter", done.usage),
                    FinishReason::Cancelled => End::Cancelled(done.usage),
                };
                self.finish(out, end);
            }
            Some(EventData::Error(e)) => self.finish(
                out,
                End::Failed {
                    code: e.code.into_owned(),
                    message: e.message.into_owned(),
                },
            ),
            None => self.finish(
                out,
                End::Failed {
                    code: "backend_error".to_owned(),
                    message: "the generation failed".to_owned(),
                },
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ReasoningField;

    fn format() -> ResponseFormat {
        ResponseFormat::new(Head {
            id: "st_x".into(),
            suffix: "x".into(),
            created_at: 1,
            model: "mock".into(),
            options: ResponseOptions::default(),
            metadata: None,
            temperature: Some(0.7),
            top_p: None,
        })
    }

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

    fn events() -> Vec<Event> {
        vec![
            Event::start(1, "st_x", "mock", "t"),
            Event::reasoning(2, "think", ReasoningField::ReasoningContent),
            Event::token(3, "Let me"),
            Event::token(4, " check."),
            call(5, 0, Some("c0"), Some("weather"), ""),
            call(6, 0, None, None, "{\"city\":"),
            call(7, 1, Some("c1"), Some("time"), "{}"),
            call(8, 0, None, None, "\"Oslo\"}"),
            Event::done(
                9,
                FinishReason::ToolCalls,
                Usage {
                    prompt_tokens: 3,
                    completion_tokens: 6,
                    session_turns: None,
                },
            ),
        ]
    }

    fn render_all(resumed_after: Option<u64>) -> (String, ResponseFormat) {
        let mut f = format();
        let mut out = Frames::new(resumed_after);
        for e in events() {
            f.render(&e, &mut out);
        }
        (out.take(), f)
    }

    fn frames(text: &str) -> Vec<(u64, String, Value)> {
        text.split_inclusive("\n\n")
            .map(|frame| {
                let mut lines = frame.lines();
                let id = lines
                    .next()
                    .unwrap()
                    .strip_prefix("id: ")
                    .unwrap()
                    .parse()
                    .unwrap();
                let kind = lines
                    .next()
                    .unwrap()
                    .strip_prefix("event: ")
                    .unwrap()
                    .to_owned();
                let data =
                    serde_json::from_str(lines.next().unwrap().strip_prefix("data: ").unwrap())
                        .unwrap();
                (id, kind, data)
            })
            .collect()
    }

    #[test]
    fn the_events_of_an_answer_in_the_sdks_order() {
        let (text, f) = render_all(None);
        let frames = frames(&text);
        let kinds: Vec<&str> = frames.iter().map(|(_, k, _)| k.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.reasoning_text.delta",
                "response.reasoning_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, (id, kind, data)) in frames.iter().enumerate() {
            assert_eq!(*id, i as u64);
            assert_eq!(data["sequence_number"], i as u64, "{kind}");
            assert_eq!(data["type"], kind.as_str());
        }
        assert_eq!(frames[0].2["response"]["status"], "in_progress");
        assert_eq!(frames[0].2["response"]["temperature"], 0.7);
        assert_eq!(
            frames[10].2,
            json!({"type": "response.output_text.delta", "item_id": "msg_x_1", "output_index": 1,
                   "content_index": 0, "delta": "Let me", "logprobs": [], "sequence_number": 10})
        );
        let done = &frames[24].2["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["usage"]["total_tokens"], 9);
        assert_eq!(done["output"][1]["content"][0]["text"], "Let me check.");
        assert_eq!(done["output"][2]["arguments"], "{\"city\":\"Oslo\"}");
        assert_eq!(done["output"][2]["call_id"], "c0");
        assert_eq!(done["output"][3]["name"], "time");
        assert_eq!(done["output"][0]["content"][0]["text"], "think");
        assert_eq!(f.output_text(), "Let me check.");
        assert_eq!(f.frames(), 25);
    }

    #[test]
    fn a_resume_at_any_frame_is_exactly_the_rest() {
        let (whole, _) = render_all(None);
        let frames: Vec<&str> = whole.split_inclusive("\n\n").collect();
        for cursor in 0..frames.len() as u64 {
            let expected: String = frames[cursor as usize + 1..].concat();
            assert_eq!(render_all(Some(cursor)).0, expected, "after frame {cursor}");
        }
    }

    #[test]
    fn how_a_response_ends() {
        for (end, kind, status, reason) in [
            (
                Event::done(3, FinishReason::Length, Usage::default()),
                "response.incomplete",
                "incomplete",
                json!({"reason": "max_output_tokens"}),
            ),
            (
                Event::done(3, FinishReason::Cancelled, Usage::default()),
                "response.incomplete",
                "cancelled",
                Value::Null,
            ),
            (
                Event::error(3, "interrupted", "the server stopped"),
                "response.failed",
                "failed",
                Value::Null,
            ),
        ] {
            let mut f = format();
            let mut out = Frames::new(None);
            for e in [
                Event::start(1, "st_x", "mock", "t"),
                Event::token(2, "a"),
                end,
            ] {
                f.render(&e, &mut out);
            }
            let text = out.take();
            let last = frames(&text).pop().unwrap();
            assert_eq!(last.1, kind);
            let response = &last.2["response"];
            assert_eq!(response["status"], status);
            assert_eq!(response["incomplete_details"], reason);
            assert_eq!(response["output"][0]["status"], "incomplete");
            if status == "failed" {
                assert_eq!(response["error"]["code"], "server_error");
                assert!(
                    response["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("interrupted")
                );
            }
        }
    }
}
