//! Backends: what turns a request into tokens, behind one trait.
//!
//! A backend returns a [`TokenStream`] and owns nothing else of the stream's life: the
//! engine numbers, persists and ends streams. Dropping the token stream must stop the
//! work (an upstream request is aborted, a model thread stops at its next token); the
//! [`CancellationToken`] is passed too for work that runs off the async runtime.

pub mod local;
pub mod mock;
pub mod openai;
pub mod sse_events;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::event::{FinishReason, Usage};

/// A chat message. `content` is its text (the text parts joined); what an upstream
/// needs beyond text is kept as the client sent it, to be passed on unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// The content parts, when the client sent a list (text, `image_url`, …): given to
    /// an upstream as they came. A backend that reads only text refuses a list holding
    /// anything but text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<Vec<serde_json::Value>>,
    /// An assistant message's tool calls (OpenAI's shape: `id`, `type`, `function`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    /// A `tool` message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The author's name (OpenAI's optional `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Message {
    /// A message of text only.
    pub fn text(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            parts: None,
            tool_calls: None,
            tool_call_id: None,
            name: None,
        }
    }

    /// Whether the message says nothing: no text, no part but text ones, no tool calls.
    pub fn is_empty(&self) -> bool {
        self.content.trim().is_empty()
            && self.tool_calls.is_none()
            && self.parts.as_ref().is_none_or(|parts| {
                parts
                    .iter()
                    .all(|p| p.get("type").and_then(serde_json::Value::as_str) == Some("text"))
            })
    }

    /// Whether this message holds only text (no tool calls, tool result or non-text
    /// parts): what a backend that reads only words can take.
    pub fn is_text_only(&self) -> bool {
        self.role != Role::Tool
            && self.tool_calls.is_none()
            && self.parts.as_ref().is_none_or(|parts| {
                parts
                    .iter()
                    .all(|p| p.get("type").and_then(serde_json::Value::as_str) == Some("text"))
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    /// A tool's result, answering an assistant's tool call.
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// What to generate from: a bare prompt or a conversation. Serialized under the name
/// the client used (`prompt` or `messages`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Prompt {
    #[serde(rename = "prompt")]
    Text(String),
    #[serde(rename = "messages")]
    Messages(Vec<Message>),
}

impl Prompt {
    /// All the text of the prompt, for backends that need only words.
    pub fn flat_text(&self) -> String {
        match self {
            Prompt::Text(t) => t.clone(),
            Prompt::Messages(ms) => ms
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    /// For a backend that reads only text: `None` if every message is text, else the
    /// name of the first member it cannot take (`messages[2].content`, …).
    pub fn first_beyond_text(&self) -> Option<String> {
        let Prompt::Messages(ms) = self else {
            return None;
        };
        ms.iter().enumerate().find_map(|(i, m)| {
            if m.role == Role::Tool {
                Some(format!("messages[{i}].role"))
            } else if m.tool_calls.is_some() {
                Some(format!("messages[{i}].tool_calls"))
            } else if !m.is_text_only() {
                Some(format!("messages[{i}].content"))
            } else {
                None
            }
        })
    }
}

/// A validated generation request, as a backend sees it. Stored with the stream (as
/// JSON) so that a stream can be continued after a crash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub model: String,
    #[serde(flatten)]
    pub prompt: Prompt,
    pub max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// The session whose turn this stream answers (its prompt is the history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// A session's turn: which of its turns the prompt holds. Stored instead of the
    /// history (the stored `prompt` is the user's message alone), so that the prompt
    /// can be rebuilt, the same, to continue the stream after a crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_turn: Option<SessionTurn>,
    /// The OpenAI facade's `stream_options.include_usage`, kept so that a resume in
    /// that format ends the same way. Backends ignore it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_usage: bool,
    /// What an OpenAI-compatible upstream takes beyond sampling: tools, response format,
    /// penalties, logprobs, … (passed on unchanged; refused by a backend that cannot
    /// honour them).
    #[serde(flatten)]
    pub options: UpstreamOptions,
    /// The client asked for the stream to run to its end whether or not anyone reads it
    /// (a background response): abandonment (`SPOOL_ABANDON_AFTER`) never cancels it.
    /// Set by a surface, never from a native request's body. Backends ignore it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unattended: bool,
    /// A stream started by the Responses API (`POST /v1/responses`): the members of its
    /// request that its response object and events repeat, kept so that a resume, or a
    /// read on another node, renders the same. Backends ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<ResponseOptions>,
    /// Set when a stream a dead process was generating is continued: what it had
    /// already emitted. Never stored.
    #[serde(skip)]
    pub continuation: Option<Continuation>,
}

/// What the Responses API's object repeats of its request, as the client sent it
/// (spool's own request holds the chat-shaped equivalents the backend is given).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResponseOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// The input items, as sent (a string input is one user message item).
    #[serde(default)]
    pub input: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub background: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    /// `tools`, in the Responses API's shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// `text` (its `format`), as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<serde_json::Value>,
    /// The response this one continues (its prompt holds that one's conversation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_response_id: Option<String>,
    /// `store: false`: kept only while it runs, never continued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<bool>,
}

/// The request members an OpenAI-compatible upstream honours and spool carries as they
/// came (validated for shape only). Each is absent unless the client sent it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpstreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl UpstreamOptions {
    /// The first member set to something a backend that generates text only, with
    /// plain sampling, cannot honour: its name. (`user` is only a label; a `text`
    /// response format, `tool_choice: "none"` and zero penalties change nothing.)
    pub fn first_beyond_text(&self) -> Option<&'static str> {
        use serde_json::Value;
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Some("tools");
        }
        if self
            .tool_choice
            .as_ref()
            .is_some_and(|c| c.as_str() != Some("none") && c.as_str() != Some("auto"))
        {
            return Some("tool_choice");
        }
        if self
            .response_format
            .as_ref()
            .is_some_and(|f| f.get("type").and_then(Value::as_str) != Some("text"))
        {
            return Some("response_format");
        }
        if self.frequency_penalty.is_some_and(|p| p != 0.0) {
            return Some("frequency_penalty");
        }
        if self.presence_penalty.is_some_and(|p| p != 0.0) {
            return Some("presence_penalty");
        }
        if self.logprobs == Some(true) {
            return Some("logprobs");
        }
        if self.top_logprobs.is_some_and(|n| n > 0) {
            return Some("top_logprobs");
        }
        if self.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
            return Some("logit_bias");
        }
        None
    }
}

/// Where a session's turn sits in its history, and how much of it the prompt holds:
/// the session's system prompt, its turns `from .. idx` that have text, then the
/// user's message (turn `idx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionTurn {
    /// The user turn's index in the session (its answer is `idx + 1`).
    pub idx: i64,
    /// The first earlier turn the prompt holds (`idx`: none).
    pub from: i64,
    /// How many of the session's messages the prompt holds, the user's message
    /// included and the system prompt not: the `done` event's `usage.session_turns`.
    pub used: u32,
}

/// What a prompt costs in a backend's tokens, message by message, for fitting a
/// session's history into the model's context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptCost {
    /// The tokens of the prompt besides its messages (a default system prompt, the
    /// opening of the answer).
    pub fixed: usize,
    /// Each message's tokens, its framing included.
    pub messages: Vec<usize>,
}

impl PromptCost {
    /// The estimate for a backend that cannot count: a quarter token per byte (rounded
    /// up) of the content and of any tool calls, and four tokens of framing per
    /// message, three for the prompt.
    pub fn estimate(messages: &[Message]) -> PromptCost {
        PromptCost {
            fixed: 3,
            messages: messages
                .iter()
                .map(|m| {
                    let calls: usize = m
                        .tool_calls
                        .iter()
                        .flatten()
                        .map(|c| c.to_string().len())
                        .sum();
                    (m.content.len() + calls).div_ceil(4) + 4
                })
                .collect(),
        }
    }
}

/// What a continued stream had already generated before the process died.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Continuation {
    /// The ids of the tokens whose text was stored, in order: the backend re-feeds them
    /// after the prompt and generates what follows.
    pub ids: Vec<u32>,
    /// The text stored after the last event that carried ids (text whose tokens had
    /// not been stored yet). The engine drops this much of what the backend
    /// generates again, so nothing is sent twice.
    pub unstored_text: String,
    /// All the text stored so far (a session's turn keeps it).
    pub text: String,
}

/// One step of a generation.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// The prompt's size, as soon as the backend knows it.
    Prompt { tokens: u32 },
    /// One generated token: its text (never splitting a UTF-8 character; may be empty
    /// while a character is incomplete) and, for a backend that can continue a stream
    /// after a crash, its id (stored with the event that carries its text).
    Token { text: String, id: Option<u32> },
    /// A piece of reasoning text, and the name the upstream sent it under.
    Reasoning {
        text: String,
        field: crate::event::ReasoningField,
    },
    /// A fragment of tool call number `index`: its first fragment has `id` and `name`.
    ToolCall {
        index: u32,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    },
    /// A piece of a refusal.
    Refusal { text: String },
    /// Log-probabilities (an upstream's `logprobs.content` entries) of the text that
    /// comes next: stored with the token event that carries it.
    Logprobs { content: Vec<serde_json::Value> },
    /// The backend finished by itself; `usage` if it counted.
    Done {
        reason: FinishReason,
        usage: Option<Usage>,
    },
}

/// A failure the backend reports; becomes the stream's `error` event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct BackendError {
    /// Stable and machine-readable: `backend_error`, `upstream_timeout`, …
    pub code: String,
    /// Safe to show a client: no paths, no secrets.
    pub message: String,
}

/// A request the backend cannot take, known before anything is stored (→ `400`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Unsupported {
    /// The member it cannot honour (→ `unsupported_parameter` naming it); `None` for
    /// a request that is too big for it (→ `invalid_request`).
    pub param: Option<String>,
    pub message: String,
}

impl Unsupported {
    /// The request does not fit (context length, …).
    pub fn invalid(message: impl Into<String>) -> Self {
        Unsupported {
            param: None,
            message: message.into(),
        }
    }

    /// `param` is something this backend cannot do.
    pub fn parameter(param: impl Into<String>, backend: &str) -> Self {
        let param = param.into();
        Unsupported {
            message: format!("`{param}` is not supported by the {backend} backend"),
            param: Some(param),
        }
    }

    /// The one check of the backends that generate text only (the local model, the
    /// mock): a request holding tools, non-text content, … is refused naming the member.
    pub fn text_only(request: &GenerateRequest, backend: &str) -> Result<(), Self> {
        if let Some(param) = request.prompt.first_beyond_text() {
            return Err(Unsupported::parameter(param, backend));
        }
        if let Some(param) = request.options.first_beyond_text() {
            return Err(Unsupported::parameter(param, backend));
        }
        Ok(())
    }
}

pub type TokenStream = Pin<Box<dyn Stream<Item = Result<Output, BackendError>> + Send>>;

pub trait Backend: Send + Sync + 'static {
    /// The model names this backend serves.
    fn models(&self) -> Vec<String>;

    /// Whether it can generate now (a model still loading is not ready).
    fn ready(&self) -> bool {
        true
    }

    /// Checks what only the backend knows (context length, parameters it lacks).
    fn check(&self, _request: &GenerateRequest) -> Result<(), Unsupported> {
        Ok(())
    }

    /// The model's context, in tokens (prompt and completion together), if known.
    fn context_length(&self) -> Option<usize> {
        None
    }

    /// What `messages` cost as a prompt of this backend; `None` if it cannot count
    /// (the engine then uses [`PromptCost::estimate`]).
    fn prompt_cost(&self, _messages: &[Message]) -> Option<PromptCost> {
        None
    }

    /// Whether it can continue a stream from the token ids it had generated
    /// ([`GenerateRequest::continuation`], from the ids it reported with its tokens): the
    /// stream then yields only the tokens after those ids, and `Done`'s usage counts the
    /// whole generation. With the same seed, the continuation must be what an
    /// uninterrupted run would have generated.
    fn can_continue(&self) -> bool {
        false
    }

    /// Starts generating. The stream ends after `Done` or an error; dropping it, or
    /// cancelling `cancel`, stops the work.
    fn generate(&self, request: GenerateRequest, cancel: CancellationToken) -> TokenStream;
}

/// Model name → backend.
#[derive(Clone, Default)]
pub struct Models {
    by_name: BTreeMap<String, Arc<dyn Backend>>,
    default: Option<String>,
}

impl Models {
    /// Registers every model of `backend`; the first model registered is the default.
    pub fn add(&mut self, backend: Arc<dyn Backend>) {
        for name in backend.models() {
            if self.default.is_none() {
                self.default = Some(name.clone());
            }
            self.by_name.insert(name, backend.clone());
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Backend>> {
        self.by_name.get(name)
    }

    pub fn default_model(&self) -> Option<&str> {
        self.default.as_deref()
    }

    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    /// Whether `name`'s backend can continue a stream after a crash.
    pub fn can_continue(&self, name: &str) -> bool {
        self.get(name).is_some_and(|b| b.can_continue())
    }

    pub fn ready(&self) -> bool {
        !self.by_name.is_empty() && self.by_name.values().all(|b| b.ready())
    }
}
