//! A chat's history as the AI SDK's UIMessages, for a page that reloads
//! (`useChat({ messages })`): a user turn is a user message with a text part; an
//! answer is an assistant message whose id is its stream's (the `messageId` of its
//! stream's `start`), with its reasoning, text and tool calls as parts, read from its
//! events — a running answer as far as it got. A turn of tool results gives its outputs
//! to the tool parts of the answer before it, as `useChat` keeps them; it is no message
//! of its own.

use serde_json::{Value, json};

use crate::engine::Engine;
use crate::store::{SessionRow, StoreError, TurnRow};

/// The UIMessages of `session`'s turns.
pub async fn of(engine: &Engine, session: &SessionRow) -> Result<Vec<Value>, StoreError> {
    let turns = engine.turns(&session.id).await?;
    let mut out: Vec<Value> = Vec::with_capacity(turns.len());
    for (i, turn) in turns.iter().enumerate() {
        match turn.role.as_str() {
            "user" => out.push(json!({
                "id": format!("{}-{}", session.id, turn.idx),
                "role": "user",
                "parts": [{"type": "text", "text": turn.content.as_deref().unwrap_or_default()}],
            })),
            "tool" => {}
            _ => {
                let results = turns.get(i + 1).filter(|t| t.role == "tool").map(outputs);
                out.push(answer(engine, turn, results.unwrap_or_default()).await?);
            }
        }
    }
    Ok(out)
}

/// A tool turn's outputs, by call id.
fn outputs(turn: &TurnRow) -> Vec<(String, Value)> {
    turn.given_messages()
        .into_iter()
        .filter_map(|m| {
            let output = serde_json::from_str(&m.content).unwrap_or(Value::String(m.content));
            Some((m.tool_call_id?, output))
        })
        .collect()
}

async fn answer(
    engine: &Engine,
    turn: &TurnRow,
    outputs: Vec<(String, Value)>,
) -> Result<Value, StoreError> {
    let Some(stream) = &turn.stream_id else {
        return Ok(json!({"id": format!("turn-{}", turn.idx), "role": "assistant", "parts": []}));
    };
    let answer = engine.answer(stream).await?;
    let done = !matches!(turn.status.as_deref(), Some("queued" | "running"));
    let state = if done { "done" } else { "streaming" };
    let mut parts = vec![json!({"type": "step-start"})];
    if !answer.reasoning.is_empty() {
        parts.push(json!({"type": "reasoning", "text": answer.reasoning, "state": state}));
    }
    let mut text = answer.text.clone();
    if let Some(refusal) = &answer.refusal {
        text.push_str(refusal);
    }
    if !text.is_empty() {
        parts.push(json!({"type": "text", "text": text, "state": state}));
    }
    for call in answer.tool_calls() {
        let input: Value = serde_json::from_str(&call.function.arguments)
            .unwrap_or(Value::String(call.function.arguments.clone()));
        let mut part = json!({"type": format!("tool-{}", call.function.name),
                              "toolCallId": call.id, "state": "input-available", "input": input});
        if let Some((_, output)) = outputs.iter().find(|(id, _)| *id == call.id) {
            part["state"] = json!("output-available");
            part["output"] = output.clone();
        }
        parts.push(part);
    }
    Ok(json!({"id": stream, "role": "assistant", "parts": parts}))
}
