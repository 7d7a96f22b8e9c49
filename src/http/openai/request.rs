//! The OpenAI chat request, as the SDKs send it, turned into our validated
//! [`GenerateRequest`] by way of the native [`StreamParams`] rules. Unknown fields are
//! ignored, as OpenAI-compatible servers do.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::ServeConfig;
use crate::http::error::ApiError;
use crate::http::params::{MessageParam, StopParam, StreamParams};
use crate::llm::{GenerateRequest, Models};

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
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
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    /// A string, or a list of content parts of which only `text` parts are taken.
    pub content: Option<Value>,
}

impl ChatRequest {
    pub fn into_request(
        self,
        config: &ServeConfig,
        models: &Models,
    ) -> Result<GenerateRequest, ApiError> {
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
        let messages = messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let role = match m.role.as_str() {
                    "developer" => "system".to_owned(),
                    other => other.to_owned(),
                };
                Ok(MessageParam {
                    role,
                    content: content_text(i, m.content)?,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
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
            session_id: None,
            content: None,
        };
        let mut request = params.validate(config, models)?;
        request.include_usage = include_usage;
        Ok(request)
    }
}

fn content_text(i: usize, content: Option<Value>) -> Result<String, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::invalid(format!(
                            "`messages[{i}].content` has a part of type {:?}; only text parts are supported",
                            kind.unwrap_or("?")
                        )));
                    }
                }
            }
            Ok(text)
        }
        Some(_) => Err(ApiError::invalid(format!(
            "`messages[{i}].content` must be a string or a list of text parts"
        ))),
    }
}
