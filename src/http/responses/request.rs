//! The body of `POST /v1/responses`, as the SDKs send it, turned into the native
//! [`StreamParams`] (validated by the same rules on the one start path): `instructions`
//! and `input` (a string or items: messages with content parts, function calls and
//! their outputs) become `messages`; function `tools`, `tool_choice` and `text.format`
//! become their chat-shaped equivalents for the backend; `background` makes the stream
//! unattended. What the response object repeats of the request is kept as sent
//! ([`ResponseOptions`]). Unknown members are ignored, as OpenAI-compatible servers do;
//! members that would change what is generated and that spool cannot honour are a
//! `400 unsupported_parameter` naming them.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::http::error::{ApiError, ErrorCode};
use crate::http::params::{MessageParam, StreamParams};
use crate::llm::{ResponseOptions, UpstreamOptions};

#[derive(Debug, Deserialize)]
pub struct ResponsesRequest {
    pub model: Option<String>,
    pub input: Option<Value>,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub text: Option<TextConfig>,
    pub store: Option<bool>,
    pub background: Option<bool>,
    pub stream: Option<bool>,
    pub metadata: Option<Map<String, Value>>,
    pub previous_response_id: Option<String>,
    pub conversation: Option<Value>,
    pub user: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct TextConfig {
    pub format: Option<Value>,
}

/// A parameter spool cannot honour, named.
fn unsupported(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::UnsupportedParameter, message).with("param", Value::from(param))
}

impl ResponsesRequest {
    /// Whether the client reads the answer as an event stream.
    pub fn streaming(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn background(&self) -> bool {
        self.background.unwrap_or(false)
    }

    /// Whether the response is kept beyond its live stream (`store`, true by default).
    pub fn stored(&self) -> bool {
        self.store != Some(false)
    }

    /// The native parameters this request means (validated on the start path).
    /// `history` is the conversation of `previous_response_id` (its messages and its
    /// answer), which comes after this request's instructions and before its input.
    pub fn into_params(self, history: Vec<MessageParam>) -> Result<StreamParams, ApiError> {
        if self.conversation.is_some() {
            return Err(unsupported(
                "conversation",
                "`conversation` is not supported: use `previous_response_id`, or send the conversation as `input` items",
            ));
        }
        if self.background() && !self.stored() {
            return Err(ApiError::invalid(
                "`background` needs `store`: a background response is kept to be read by its id",
            )
            .with("param", Value::from("store")));
        }
        let Some(input) = self.input else {
            return Err(ApiError::invalid("`input` is required"));
        };
        let items = match input {
            Value::String(text) => {
                vec![json!({"type": "message", "role": "user", "content": text})]
            }
            Value::Array(items) => items,
            _ => {
                return Err(ApiError::invalid(
                    "`input` must be a string or a list of input items",
                ));
            }
        };
        let mut messages = Vec::with_capacity(items.len() + 1);
        if let Some(instructions) = &self.instructions {
            messages.push(MessageParam {
                role: "system".to_owned(),
                content: Some(Value::from(instructions.as_str())),
                tool_calls: None,
                tool_call_id: None,
                name: None,
            });
        }
        messages.extend(history);
        for (i, item) in items.iter().enumerate() {
            push_item(&mut messages, i, item)?;
        }
        let tools = self.tools.unwrap_or_default();
        let chat_tools = tools
            .iter()
            .enumerate()
            .map(|(i, t)| chat_tool(i, t))
            .collect::<Result<Vec<_>, _>>()?;
        let tool_choice = self
            .tool_choice
            .as_ref()
            .map(chat_tool_choice)
            .transpose()?;
        let format = self.text.as_ref().and_then(|t| t.format.as_ref());
        let response_format = format.map(chat_response_format).transpose()?;
        let background = self.background.unwrap_or(false);
        let response = ResponseOptions {
            instructions: self.instructions,
            input: items,
            background,
            max_output_tokens: self.max_output_tokens,
            tools,
            tool_choice: self.tool_choice,
            parallel_tool_calls: self.parallel_tool_calls,
            text: self
                .text
                .and_then(|t| t.format)
                .map(|f| json!({"format": f})),
            previous_response_id: self.previous_response_id,
            store: self.store,
        };
        Ok(StreamParams {
            prompt: None,
            messages: Some(messages),
            model: self.model,
            max_tokens: self.max_output_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: None,
            stop: None,
            metadata: self.metadata,
            session_id: None,
            content: None,
            role: None,
            tool_call_id: None,
            options: UpstreamOptions {
                tools: (!chat_tools.is_empty()).then_some(chat_tools),
                tool_choice,
                parallel_tool_calls: self.parallel_tool_calls,
                response_format,
                user: self.user,
                ..UpstreamOptions::default()
            },
            include_usage: false,
            idempotency_key: None,
            unattended: background,
            response: Some(response),
        })
    }
}

/// One input item as the chat messages it means (a function call joins the assistant
/// message before it, as chat requests carry tool calls).
fn push_item(messages: &mut Vec<MessageParam>, i: usize, item: &Value) -> Result<(), ApiError> {
    let Some(object) = item.as_object() else {
        return Err(ApiError::invalid(format!("`input[{i}]` must be an object")));
    };
    let kind = match object.get("type") {
        None if object.contains_key("role") => "message",
        None => {
            return Err(ApiError::invalid(format!(
                "`input[{i}]` needs a `type` (or a `role`, for a message)"
            )));
        }
        Some(Value::String(t)) => t.as_str(),
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "`input[{i}].type` must be a string"
            )));
        }
    };
    let text_of = |key: &str| object.get(key).and_then(Value::as_str).unwrap_or_default();
    match kind {
        "message" => {
            let role = match text_of("role") {
                "developer" | "system" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(ApiError::invalid(format!(
                        "`input[{i}].role` is {other:?}; expected \"user\", \"assistant\", \"system\" or \"developer\""
                    )));
                }
            };
            let content = match object.get("content") {
                Some(Value::String(s)) => Value::from(s.as_str()),
                Some(Value::Array(parts)) => Value::Array(
                    parts
                        .iter()
                        .enumerate()
                        .map(|(j, p)| chat_part(i, j, p))
                        .collect::<Result<_, _>>()?,
                ),
                _ => {
                    return Err(ApiError::invalid(format!(
                        "`input[{i}].content` must be a string or a list of content parts"
                    )));
                }
            };
            messages.push(MessageParam {
                role: role.to_owned(),
                content: Some(content),
                tool_calls: None,
                tool_call_id: None,
                name: None,
            });
        }
        "function_call" => {
            let (call_id, name) = (text_of("call_id"), text_of("name"));
            if call_id.is_empty() || name.is_empty() {
                return Err(ApiError::invalid(format!(
                    "`input[{i}]` is a function_call: it needs a string `call_id` and `name`"
                )));
            }
            let call = json!({"id": call_id, "type": "function",
                              "function": {"name": name, "arguments": text_of("arguments")}});
            match messages.last_mut() {
                Some(last) if last.role == "assistant" => {
                    last.tool_calls.get_or_insert_with(Vec::new).push(call);
                }
                _ => messages.push(MessageParam {
                    role: "assistant".to_owned(),
                    content: None,
                    tool_calls: Some(vec![call]),
                    tool_call_id: None,
                    name: None,
                }),
            }
        }
        "function_call_output" => {
            let call_id = text_of("call_id");
            if call_id.is_empty() {
                return Err(ApiError::invalid(format!(
                    "`input[{i}]` is a function_call_output: it needs the `call_id` it answers"
                )));
            }
            let output = match object.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect(),
                _ => {
                    return Err(ApiError::invalid(format!(
                        "`input[{i}].output` must be a string or a list of content parts"
                    )));
                }
            };
            messages.push(MessageParam {
                role: "tool".to_owned(),
                content: Some(Value::from(output)),
                tool_calls: None,
                tool_call_id: Some(call_id.to_owned()),
                name: None,
            });
        }
        // A model's reasoning given back: nothing a chat backend takes.
        "reasoning" => {}
        other => {
            return Err(unsupported(
                &format!("input[{i}].type"),
                format!("input items of type {other:?} are not supported"),
            ));
        }
    }
    Ok(())
}

/// A Responses content part as a chat content part.
fn chat_part(i: usize, j: usize, part: &Value) -> Result<Value, ApiError> {
    let kind = part.get("type").and_then(Value::as_str);
    let text = part.get("text").and_then(Value::as_str);
    match (kind, text) {
        (Some("input_text" | "output_text" | "text"), Some(text)) => {
            Ok(json!({"type": "text", "text": text}))
        }
        (Some("refusal"), _) => Ok(json!({"type": "text",
            "text": part.get("refusal").and_then(Value::as_str).unwrap_or_default()})),
        (Some("input_image"), _) => match part.get("image_url").and_then(Value::as_str) {
            Some(url) if !url.is_empty() => {
                let detail = part.get("detail").and_then(Value::as_str).unwrap_or("auto");
                Ok(json!({"type": "image_url", "image_url": {"url": url, "detail": detail}}))
            }
            _ => Err(unsupported(
                &format!("input[{i}].content[{j}]"),
                "an input_image needs an `image_url` (file ids are not supported)",
            )),
        },
        (Some("input_text" | "output_text" | "text"), None) => Err(ApiError::invalid(format!(
            "`input[{i}].content[{j}]` is a text part without a string `text`"
        ))),
        (Some(other), _) => Err(unsupported(
            &format!("input[{i}].content[{j}]"),
            format!("content parts of type {other:?} are not supported"),
        )),
        (None, _) => Err(ApiError::invalid(format!(
            "`input[{i}].content[{j}]` must be an object with a string `type`"
        ))),
    }
}

/// A Responses function tool (`{type, name, description, parameters, strict}`) in the
/// chat shape (`{type, function: {…}}`).
fn chat_tool(i: usize, tool: &Value) -> Result<Value, ApiError> {
    match tool.get("type").and_then(Value::as_str) {
        Some("function") => {}
        Some(other) => {
            return Err(unsupported(
                &format!("tools[{i}].type"),
                format!("tools of type {other:?} are not supported; function tools are"),
            ));
        }
        None => {
            return Err(ApiError::invalid(format!(
                "`tools[{i}]` must be an object with a string `type`"
            )));
        }
    }
    let mut function = Map::new();
    for key in ["name", "description", "parameters", "strict"] {
        if let Some(v) = tool.get(key).filter(|v| !v.is_null()) {
            function.insert(key.to_owned(), v.clone());
        }
    }
    if function
        .get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(ApiError::invalid(format!(
            "`tools[{i}]` is a function without a `name`"
        )));
    }
    Ok(json!({"type": "function", "function": function}))
}

/// `tool_choice` in the chat shape.
fn chat_tool_choice(choice: &Value) -> Result<Value, ApiError> {
    match choice {
        Value::String(s) if matches!(s.as_str(), "none" | "auto" | "required") => {
            Ok(choice.clone())
        }
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            match o.get("name").and_then(Value::as_str) {
                Some(name) if !name.is_empty() => {
                    Ok(json!({"type": "function", "function": {"name": name}}))
                }
                _ => Err(ApiError::invalid(
                    "`tool_choice` of type function needs a `name`",
                )),
            }
        }
        Value::Object(_) => Err(unsupported(
            "tool_choice",
            "`tool_choice` may be \"none\", \"auto\", \"required\" or a function",
        )),
        _ => Err(ApiError::invalid(
            "`tool_choice` must be \"none\", \"auto\", \"required\" or an object naming a function",
        )),
    }
}

/// `text.format` as the chat `response_format`.
fn chat_response_format(format: &Value) -> Result<Value, ApiError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(json!({"type": "text"})),
        Some("json_object") => Ok(json!({"type": "json_object"})),
        Some("json_schema") => {
            let mut schema = Map::new();
            for key in ["name", "schema", "description", "strict"] {
                if let Some(v) = format.get(key).filter(|v| !v.is_null()) {
                    schema.insert(key.to_owned(), v.clone());
                }
            }
            if !schema.get("schema").is_some_and(Value::is_object) {
                return Err(ApiError::invalid(
                    "`text.format` of type json_schema needs a `schema` object",
                ));
            }
            Ok(json!({"type": "json_schema", "json_schema": schema}))
        }
        _ => Err(ApiError::invalid(
            "`text.format.type` must be \"text\", \"json_object\" or \"json_schema\"",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::extract::decode_json;
    use crate::http::strategies::{SETUP, body, check, config};
    use crate::llm::{GenerateRequest, Prompt, Role};
    use proptest::prelude::*;

    fn responses(bytes: &[u8]) -> Result<GenerateRequest, ApiError> {
        let (config, models) = &*SETUP;
        decode_json::<ResponsesRequest>(bytes)?
            .into_params(Vec::new())?
            .validate(config, models)
    }

    const FIELDS: &[&str] = &[
        "model",
        "input",
        "instructions",
        "role",
        "content",
        "type",
        "text",
        "format",
        "max_output_tokens",
        "temperature",
        "tools",
        "tool_choice",
        "name",
        "call_id",
        "output",
        "background",
        "stream",
        "store",
        "metadata",
    ];

    proptest! {
        #![proptest_config(config(256))]

        #[test]
        fn any_responses_body_is_accepted_whole_or_rejected_with_a_400(bytes in body(FIELDS)) {
            // A member spool cannot honour is named (`unsupported_parameter`), else the
            // native rules hold.
            match responses(&bytes) {
                Err(e) if e.code == "unsupported_parameter" => prop_assert_eq!(e.status, 400),
                result => check(result)?,
            }
        }
    }

    #[test]
    fn items_become_messages_and_tools_the_chat_shape() {
        let body = json!({
            "model": "mock",
            "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": "Weather?"},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "21"},
                {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "x"}]},
            ],
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
            "background": true,
        });
        let params = decode_json::<ResponsesRequest>(body.to_string().as_bytes())
            .unwrap()
            .into_params(Vec::new())
            .unwrap();
        assert!(params.unattended);
        let options = params.options.clone();
        assert_eq!(
            options.tools.unwrap()[0],
            json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}})
        );
        assert_eq!(
            options.tool_choice.unwrap(),
            json!({"type": "function", "function": {"name": "get_weather"}})
        );
        assert_eq!(options.response_format.unwrap()["json_schema"]["name"], "w");
        let messages = params.messages.as_ref().unwrap();
        let roles: Vec<&str> = messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "system"]);
        assert_eq!(messages[2].tool_calls.as_ref().unwrap()[0]["id"], "c1");
        assert_eq!(messages[3].tool_call_id.as_deref(), Some("c1"));

        let text = responses(br#"{"model":"mock","input":"hi","max_output_tokens":5}"#).unwrap();
        assert_eq!(text.max_tokens, 5);
        match text.prompt {
            Prompt::Messages(ms) => {
                assert_eq!((ms[0].role, ms[0].content.as_str()), (Role::User, "hi"))
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            json!({"input": 3}),
            json!({"input": [{"type": "file_search_call"}]}),
            json!({"input": "hi", "tools": [{"type": "web_search"}]}),
            json!({"input": "hi", "background": true, "store": false}),
        ] {
            let e = responses(bad.to_string().as_bytes()).unwrap_err();
            assert_eq!(e.status.as_u16(), 400, "{bad}");
        }
    }
}
