//! The OpenAI chat request, as the SDKs send it, turned into the native
//! [`StreamParams`] (validated by the same rules on the one start path): messages (with
//! content parts, tool calls and tool results), tools, response format and the other
//! members an upstream honours are carried as they came. Unknown fields are ignored, as
//! OpenAI-compatible servers do.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::http::error::ApiError;
use crate::http::params::{MessageParam, StopParam, StreamParams};
use crate::llm::UpstreamOptions;

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Option<Vec<MessageParam>>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<StopParam>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<u32>,
    pub metadata: Option<Map<String, Value>>,
    /// spool's own: makes this a turn of that session, `messages` being the new turn
    /// alone (one user message, or tool results).
    pub session_id: Option<String>,
    #[serde(flatten)]
    pub options: UpstreamOptions,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

impl ChatRequest {
    /// The native parameters this request means (validated on the start path).
    pub fn into_params(self) -> Result<StreamParams, ApiError> {
        if let Some(n) = self.n
            && n != 1
        {
            return Err(ApiError::invalid(format!(
                "`n` is {n}; this server generates one choice per request (n=1)"
            )));
        }
        let Some(messages) = self.messages else {
            return Err(ApiError::invalid("`messages` is required"));
        };
        // OpenAI's newer name for the system prompt.
        let messages = messages
            .into_iter()
            .map(|mut m| {
                if m.role == "developer" {
                    m.role = "system".to_owned();
                }
                m
            })
            .collect();
        let include_usage = self
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let params = StreamParams {
            prompt: None,
            messages: Some(messages),
            model: self.model,
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            stop: self.stop,
            metadata: self.metadata,
            session_id: self.session_id,
            content: None,
            role: None,
            tool_call_id: None,
            options: self.options,
            include_usage,
            idempotency_key: None,
            unattended: false,
            response: None,
        };
        Ok(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::extract::decode_json;
    use crate::http::strategies::{
        self, Field, SETUP, a_float, a_list, a_string, an_integer, an_object, body, check, one_of,
        run_shaped,
    };
    use crate::llm::{GenerateRequest, Message, Prompt, Role};
    use proptest::prelude::*;
    use serde_json::json;

    const FIELDS: &[&str] = &[
        "model",
        "messages",
        "role",
        "content",
        "type",
        "text",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "include_usage",
        "n",
        "metadata",
    ];

    /// `POST /v1/chat/completions`: the body as the handler decodes and validates it.
    fn chat(bytes: &[u8]) -> Result<GenerateRequest, ApiError> {
        let (config, models) = &*SETUP;
        decode_json::<ChatRequest>(bytes)?
            .into_params()?
            .validate(config, models)
    }

    /// A chat body, give or take: its required and optional members.
    fn chat_fields() -> (Vec<Field>, Vec<Field>) {
        let part = an_object(
            vec![
                ("type", one_of(&["text", "image_url", "input_audio"])),
                ("text", a_string()),
            ],
            vec![],
        );
        let content = prop_oneof![a_string(), a_list(part, 0..3), Just(Value::Null).boxed()];
        let message = an_object(
            vec![
                (
                    "role",
                    one_of(&["system", "developer", "user", "assistant", "tool"]),
                ),
                ("content", content.boxed()),
            ],
            vec![],
        );
        let required = vec![("messages", a_list(message, 0..4))];
        let optional = vec![
            ("model", one_of(&["mock", "", "gpt-4o"])),
            ("max_tokens", an_integer(&[0, 256, 32768])),
            ("max_completion_tokens", an_integer(&[0, 32768])),
            ("temperature", a_float(0.0, 2.0)),
            ("top_p", a_float(0.0, 1.0)),
            ("seed", an_integer(&[0])),
            (
                "stop",
                prop_oneof![a_string(), a_list(a_string(), 0..6)].boxed(),
            ),
            ("stream", any::<bool>().prop_map(Value::from).boxed()),
            (
                "stream_options",
                an_object(
                    vec![],
                    vec![("include_usage", any::<bool>().prop_map(Value::from).boxed())],
                ),
            ),
            ("n", an_integer(&[1])),
            ("metadata", an_object(vec![], vec![("k", a_string())])),
        ];
        (required, optional)
    }

    #[test]
    fn any_shaped_chat_body_is_accepted_whole_or_rejected_with_a_400() {
        run_shaped(chat_fields(), 1024, 10, |bytes| vec![chat(bytes)]);
    }

    proptest! {
        #![proptest_config(strategies::config(384))]

        #[test]
        fn any_chat_body_is_accepted_whole_or_rejected_with_a_400(bytes in body(FIELDS)) {
            check(chat(&bytes))?;
        }

        #[test]
        fn chat_messages_arrive_as_sent(
            messages in prop::collection::vec(
                (
                    prop::sample::select(&["system", "developer", "user", "assistant"][..]),
                    prop_oneof![
                        any::<String>().prop_map(|s| (json!(s), s)),
                        prop::collection::vec(any::<String>(), 0..3).prop_map(|parts| {
                            let value = parts.iter().map(|t| json!({"type": "text", "text": t})).collect();
                            (Value::Array(value), parts.concat())
                        }),
                    ],
                ),
                1..4,
            )
            .prop_filter("all blank", |ms| ms.iter().any(|(_, (_, text))| !text.trim().is_empty())),
            include_usage in any::<bool>(),
        ) {
            let body = json!({
                "model": "mock",
                "messages": messages.iter().map(|(role, (content, _))| json!({"role": role, "content": content})).collect::<Vec<_>>(),
                "stream": true,
                "stream_options": {"include_usage": include_usage},
            });
            let r = chat(body.to_string().as_bytes())
                .map_err(|e| TestCaseError::fail(format!("rejected {body}: {e:?}")))?;
            let expected: Vec<Message> = messages
                .iter()
                .map(|(role, (content, text))| Message {
                    parts: content.as_array().cloned(),
                    ..Message::text(
                        match *role {
                            "user" => Role::User,
                            "assistant" => Role::Assistant,
                            _ => Role::System,
                        },
                        text.clone(),
                    )
                })
                .collect();
            prop_assert_eq!(r.prompt, Prompt::Messages(expected));
            prop_assert_eq!(r.include_usage, include_usage);
        }
    }
}
