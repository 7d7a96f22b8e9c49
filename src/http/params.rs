//! The native request — the body of `POST /v1/streams`, of a session's turn and of a
//! WebSocket `generate`, and what every other surface maps its request onto — and its
//! validation into a [`GenerateRequest`]. Every rule here answers `400` with a message
//! that names the field; nothing reaches the engine unvalidated.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::{ApiError, ErrorCode};
use crate::config::LimitsConfig;
use crate::llm::{GenerateRequest, Message, Models, Prompt, Role, UpstreamOptions};

#[derive(Debug, Default, Deserialize)]
pub struct StreamParams {
    pub prompt: Option<String>,
    pub messages: Option<Vec<MessageParam>>,
    pub model: Option<String>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<StopParam>,
    pub metadata: Option<Map<String, Value>>,
    pub session_id: Option<String>,
    /// A session turn's message (`prompt` is accepted too), or a tool result's content.
    pub content: Option<String>,
    /// A session turn that is one tool result: `"tool"`, with `tool_call_id`.
    pub role: Option<String>,
    pub tool_call_id: Option<String>,
    /// Tools, response format, penalties, logprobs, `user`: carried to the backend.
    #[serde(flatten)]
    pub options: UpstreamOptions,
    /// Set by the OpenAI facade (`stream_options.include_usage`), never by a client of
    /// the native API.
    #[serde(skip)]
    pub include_usage: bool,
    /// The request's `Idempotency-Key` header (or a WebSocket message's
    /// `idempotency_key`), set by the surface.
    #[serde(skip)]
    pub idempotency_key: Option<String>,
    /// Set by the Responses API for `background: true`: the stream runs to its end
    /// unread (never abandoned). Never from a native request's body.
    #[serde(skip)]
    pub unattended: bool,
    /// Set by the Responses API: what its object repeats of the request.
    #[serde(skip)]
    pub response: Option<crate::llm::ResponseOptions>,
}

/// The longest `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// An `Idempotency-Key` as a client sent it: 1 to 255 visible ASCII characters.
pub fn idempotency_key(raw: Option<&[u8]>) -> Result<Option<String>, ApiError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let ok = !raw.is_empty()
        && raw.len() <= MAX_IDEMPOTENCY_KEY
        && raw.iter().all(|b| b.is_ascii_graphic());
    if !ok {
        return Err(ApiError::invalid(format!(
            "`Idempotency-Key` must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        )));
    }
    Ok(Some(String::from_utf8_lossy(raw).into_owned()))
}

/// One message of `messages`, in OpenAI's shape: `content` is a string or a list of
/// content parts (`text`, `image_url`, …); an assistant's message may carry
/// `tool_calls`, a `tool` message answers one by `tool_call_id`.
#[derive(Debug, Deserialize)]
pub struct MessageParam {
    pub role: String,
    #[serde(default)]
    pub content: Option<Value>,
    #[serde(default)]
    pub tool_calls: Option<Vec<Value>>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

impl From<Message> for MessageParam {
    /// A validated message as a client would have sent it.
    fn from(m: Message) -> Self {
        MessageParam {
            role: m.role.as_str().to_owned(),
            content: Some(match m.parts {
                Some(parts) => Value::Array(parts),
                None => Value::String(m.content),
            }),
            tool_calls: m.tool_calls,
            tool_call_id: m.tool_call_id,
            name: m.name,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopParam {
    One(String),
    Many(Vec<String>),
}

/// At most this many stop sequences, as OpenAI allows.
const MAX_STOPS: usize = 4;
/// The longest stop sequence, in bytes: every token is checked against each.
const MAX_STOP_BYTES: usize = 256;

impl StreamParams {
    /// Checks every field; the model is resolved (default or named) but not looked up:
    /// an unknown model is the engine's `404`.
    pub fn validate(
        self,
        limits: &LimitsConfig,
        models: &Models,
    ) -> Result<GenerateRequest, ApiError> {
        if self.content.is_some() {
            return Err(ApiError::invalid(
                "`content` is for a session's turn; a stream takes `prompt` or `messages`",
            ));
        }
        if self.role.is_some() || self.tool_call_id.is_some() {
            return Err(ApiError::invalid(
                "`role` and `tool_call_id` are for a session's turn; a stream takes `messages`",
            ));
        }
        self.validate_prompt(limits, models)
    }

    /// Validates a session's turn: the user's message is `content` (or `prompt`), or
    /// `messages` holding one user message or tool results only; one tool result may
    /// also be given as `role: "tool"`, `tool_call_id` and `content`. `model` defaults
    /// to the session's. (Whether tool results answer the last answer's calls is the
    /// engine's check, against the history.)
    pub fn validate_turn(
        mut self,
        limits: &LimitsConfig,
        models: &Models,
        session_model: Option<&str>,
    ) -> Result<GenerateRequest, ApiError> {
        match (self.role.take().as_deref(), self.tool_call_id.take()) {
            (None | Some("user"), None) => {}
            (Some("tool"), Some(id)) => {
                if self.messages.is_some() || self.prompt.is_some() {
                    return Err(ApiError::invalid(
                        "a tool result takes `content`, not `prompt` or `messages`",
                    ));
                }
                let content = self
                    .content
                    .take()
                    .ok_or_else(|| ApiError::invalid("a tool result needs its `content`"))?;
                self.messages = Some(vec![MessageParam {
                    role: "tool".to_owned(),
                    content: Some(Value::String(content)),
                    tool_calls: None,
                    tool_call_id: Some(id),
                    name: None,
                }]);
            }
            (Some("tool"), None) => {
                return Err(ApiError::invalid(
                    "a tool result needs the `tool_call_id` it answers",
                ));
            }
            (None | Some("user"), Some(_)) => {
                return Err(ApiError::invalid(
                    "`tool_call_id` belongs to a tool result (`role`: \"tool\")",
                ));
            }
            (Some(other), _) => {
                return Err(ApiError::invalid(format!(
                    "a session's turn has `role` \"user\" or \"tool\", not {other:?}"
                )));
            }
        }
        if let Some(messages) = &self.messages {
            if self.content.is_some() || self.prompt.is_some() {
                return Err(ApiError::invalid(
                    "give either `content` or `messages`, not both",
                ));
            }
            let tools = messages.iter().filter(|m| m.role == "tool").count();
            let one_user = messages.len() == 1 && messages[0].role == "user";
            if !(one_user || (tools > 0 && tools == messages.len())) {
                return Err(ApiError::invalid(
                    "a session's turn in `messages` is one `user` message or tool results \
                     (`role`: \"tool\") only: the session holds the rest of the history",
                ));
            }
            if self.model.is_none() {
                self.model = session_model.map(str::to_owned);
            }
            return self.validate_prompt(limits, models);
        }
        match (self.content.take(), &self.prompt) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "give either `content` or `prompt`, not both",
                ));
            }
            (Some(c), None) => self.prompt = Some(c),
            (None, Some(_)) => {}
            (None, None) => return Err(ApiError::invalid("`content` (a string) is required")),
        }
        if self.model.is_none() {
            self.model = session_model.map(str::to_owned);
        }
        self.validate_prompt(limits, models)
    }

    fn validate_prompt(
        self,
        limits: &LimitsConfig,
        models: &Models,
    ) -> Result<GenerateRequest, ApiError> {
        let prompt = match (self.prompt, self.messages) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "give either `prompt` or `messages`, not both",
                ));
            }
            (None, None) => {
                return Err(ApiError::invalid(
                    "`prompt` (a string) or `messages` (a list) is required",
                ));
            }
            (Some(text), None) => {
                if text.trim().is_empty() {
                    return Err(ApiError::invalid("`prompt` is empty"));
                }
                Prompt::Text(text)
            }
            (None, Some(messages)) => Prompt::Messages(validate_messages(messages)?),
        };
        let prompt_bytes = match &prompt {
            Prompt::Text(t) => t.len(),
            Prompt::Messages(ms) => ms.iter().map(|m| m.content.len()).sum(),
        };
        if prompt_bytes > limits.max_prompt_bytes {
            return Err(ApiError::new(
                ErrorCode::PromptTooLong,
                format!(
                    "the prompt is {prompt_bytes} bytes; the limit is {}",
                    limits.max_prompt_bytes
                ),
            ));
        }

        let max_tokens = self
            .max_tokens
            .unwrap_or(limits.default_max_tokens.min(limits.max_tokens_limit));
        if max_tokens == 0 || max_tokens > limits.max_tokens_limit {
            return Err(ApiError::invalid(format!(
                "`max_tokens` must be between 1 and {}",
                limits.max_tokens_limit
            )));
        }
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(ApiError::invalid("`temperature` must be between 0 and 2"));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(ApiError::invalid(
                "`top_p` must be greater than 0 and at most 1",
            ));
        }
        validate_options(&self.options)?;
        let stop = match self.stop {
            None => Vec::new(),
            Some(StopParam::One(s)) => vec![s],
            Some(StopParam::Many(list)) => list,
        };
        if stop.len() > MAX_STOPS {
            return Err(ApiError::invalid(format!(
                "`stop` takes at most {MAX_STOPS} sequences"
            )));
        }
        if stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid("`stop` sequences must not be empty"));
        }
        if stop.iter().any(|s| s.len() > MAX_STOP_BYTES) {
            return Err(ApiError::invalid(format!(
                "`stop` sequences are at most {MAX_STOP_BYTES} bytes each"
            )));
        }
        let model = match self.model {
            Some(m) if m.trim().is_empty() => return Err(ApiError::invalid("`model` is empty")),
            Some(m) => m,
            None => models
                .default_model()
                .map(str::to_owned)
                .ok_or_else(|| ApiError::internal("no model is configured", &"empty model list"))?,
        };
        Ok(GenerateRequest {
            model,
            prompt,
            max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            stop,
            metadata: self.metadata,
            session_turn: None,
            session_id: None,
            include_usage: self.include_usage,
            options: self.options,
            unattended: self.unattended,
            response: self.response,
            continuation: None,
        })
    }
}

fn validate_messages(messages: Vec<MessageParam>) -> Result<Vec<Message>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("`messages` is empty"));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        out.push(validate_message(i, m)?);
    }
    if out.iter().all(Message::is_empty) {
        return Err(ApiError::invalid("every message in `messages` is empty"));
    }
    Ok(out)
}

fn validate_message(i: usize, m: MessageParam) -> Result<Message, ApiError> {
    let role = match m.role.as_str() {
        "system" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        other => {
            return Err(ApiError::invalid(format!(
                "`messages[{i}].role` is {other:?}; expected \"system\", \"user\", \"assistant\" or \"tool\""
            )));
        }
    };
    let (content, parts) = match m.content {
        None | Some(Value::Null) => (String::new(), None),
        Some(Value::String(s)) => (s, None),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => match part.get("text") {
                        Some(Value::String(t)) => text.push_str(t),
                        _ => {
                            return Err(ApiError::invalid(format!(
                                "`messages[{i}].content[{j}]` is a text part without a string `text`"
                            )));
                        }
                    },
                    Some("image_url") => {
                        let url = part.get("image_url").and_then(|u| match u {
                            Value::String(s) => Some(s.as_str()),
                            Value::Object(o) => o.get("url").and_then(Value::as_str),
                            _ => None,
                        });
                        if url.is_none_or(str::is_empty) {
                            return Err(ApiError::invalid(format!(
                                "`messages[{i}].content[{j}]` is an image_url part without `image_url.url`"
                            )));
                        }
                    }
                    Some(_) => {}
                    None => {
                        return Err(ApiError::invalid(format!(
                            "`messages[{i}].content[{j}]` must be an object with a string `type`"
                        )));
                    }
                }
            }
            (text, Some(parts))
        }
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "`messages[{i}].content` must be a string or a list of content parts"
            )));
        }
    };
    if let Some(calls) = &m.tool_calls {
        if role != Role::Assistant {
            return Err(ApiError::invalid(format!(
                "`messages[{i}].tool_calls` belongs to an assistant message"
            )));
        }
        for (j, call) in calls.iter().enumerate() {
            let id = call.get("id").and_then(Value::as_str);
            let name = call
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str);
            if id.is_none_or(str::is_empty) || name.is_none_or(str::is_empty) {
                return Err(ApiError::invalid(format!(
                    "`messages[{i}].tool_calls[{j}]` needs a string `id` and `function.name`"
                )));
            }
        }
    }
    if role == Role::Tool && m.tool_call_id.as_deref().is_none_or(str::is_empty) {
        return Err(ApiError::invalid(format!(
            "`messages[{i}]` is a tool result: it needs the `tool_call_id` it answers"
        )));
    }
    Ok(Message {
        role,
        content,
        parts,
        tool_calls: m.tool_calls,
        tool_call_id: m.tool_call_id,
        name: m.name,
    })
}

/// Most tools in one request, and longest `user`, as OpenAI allows.
const MAX_TOOLS: usize = 128;
const MAX_USER: usize = 256;

/// Shape checks of what is carried to the upstream: what could not mean anything is
/// refused here; what the upstream may or may not support is its to judge.
fn validate_options(o: &UpstreamOptions) -> Result<(), ApiError> {
    if let Some(tools) = &o.tools {
        if tools.len() > MAX_TOOLS {
            return Err(ApiError::invalid(format!(
                "`tools` takes at most {MAX_TOOLS} tools"
            )));
        }
        for (i, tool) in tools.iter().enumerate() {
            let kind = tool.get("type").and_then(Value::as_str);
            let named = tool
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            match kind {
                Some("function") if named => {}
                Some("function") => {
                    return Err(ApiError::invalid(format!(
                        "`tools[{i}]` is a function without `function.name`"
                    )));
                }
                Some(_) => {}
                None => {
                    return Err(ApiError::invalid(format!(
                        "`tools[{i}]` must be an object with a string `type`"
                    )));
                }
            }
        }
    }
    match &o.tool_choice {
        None => {}
        Some(Value::String(s)) if matches!(s.as_str(), "none" | "auto" | "required") => {}
        Some(Value::Object(_)) => {}
        Some(_) => {
            return Err(ApiError::invalid(
                "`tool_choice` must be \"none\", \"auto\", \"required\" or an object naming a tool",
            ));
        }
    }
    if let Some(format) = &o.response_format {
        match format.get("type").and_then(Value::as_str) {
            Some("text") | Some("json_object") => {}
            Some("json_schema") if format.get("json_schema").is_some_and(Value::is_object) => {}
            Some("json_schema") => {
                return Err(ApiError::invalid(
                    "`response_format` of type json_schema needs a `json_schema` object",
                ));
            }
            _ => {
                return Err(ApiError::invalid(
                    "`response_format.type` must be \"text\", \"json_object\" or \"json_schema\"",
                ));
            }
        }
    }
    for (name, value) in [
        ("frequency_penalty", o.frequency_penalty),
        ("presence_penalty", o.presence_penalty),
    ] {
        if value.is_some_and(|p| !(-2.0..=2.0).contains(&p)) {
            return Err(ApiError::invalid(format!(
                "`{name}` must be between -2 and 2"
            )));
        }
    }
    if o.top_logprobs.is_some_and(|n| n > 20) {
        return Err(ApiError::invalid("`top_logprobs` must be between 0 and 20"));
    }
    if let Some(bias) = &o.logit_bias {
        let ok = bias
            .values()
            .all(|v| v.as_f64().is_some_and(|b| (-100.0..=100.0).contains(&b)));
        if !ok {
            return Err(ApiError::invalid(
                "`logit_bias` maps token ids to numbers between -100 and 100",
            ));
        }
    }
    if o.user.as_ref().is_some_and(|u| u.len() > MAX_USER) {
        return Err(ApiError::invalid(format!(
            "`user` is at most {MAX_USER} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::mock::MockBackend;
    use std::sync::Arc;

    fn check(body: &str) -> Result<GenerateRequest, ApiError> {
        let mut models = Models::default();
        models.add(Arc::new(MockBackend::default()));
        let params: StreamParams =
            serde_json::from_str(body).map_err(|e| ApiError::invalid(e.to_string()))?;
        params.validate(&crate::ServeConfig::defaults().limits, &models)
    }

    #[test]
    fn accepts_prompt_and_messages() {
        let r = check(r#"{"prompt":"hi","stop":"x","unknown":1}"#).unwrap();
        assert_eq!(
            (r.model.as_str(), r.max_tokens, r.stop.len()),
            ("mock", 256, 1)
        );
        let r = check(r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":3}"#).unwrap();
        assert_eq!(r.max_tokens, 3);
    }

    #[test]
    fn rejects_what_it_should() {
        let too_long_stop = format!(r#"{{"prompt":"a","stop":["{}"]}}"#, "x".repeat(257));
        for body in [
            r#"{}"#,
            r#"{"prompt":""}"#,
            r#"{"prompt":"  "}"#,
            r#"{"prompt":"a","messages":[]}"#,
            r#"{"messages":[]}"#,
            r#"{"messages":[{"role":"robot","content":"x"}]}"#,
            r#"{"prompt":"a","max_tokens":0}"#,
            r#"{"prompt":"a","max_tokens":1000000}"#,
            r#"{"prompt":"a","temperature":3}"#,
            r#"{"prompt":"a","top_p":0}"#,
            r#"{"prompt":"a","stop":["a","b","c","d","e"]}"#,
            r#"{"prompt":"a","stop":[""]}"#,
            too_long_stop.as_str(),
            r#"{"prompt":"a","model":""}"#,
        ] {
            let e = check(body)
                .err()
                .unwrap_or_else(|| panic!("accepted {body}"));
            assert_eq!(e.status, 400, "{body}");
        }
    }

    mod properties {
        use super::*;
        use crate::http::extract::decode_json;
        use crate::http::strategies::{
            self, Field, SETUP, a_float, a_list, a_string, an_integer, an_object, body, check,
            check_accepted, object, one_of, run_shaped,
        };
        use proptest::prelude::*;

        const FIELDS: &[&str] = &[
            "prompt",
            "messages",
            "role",
            "content",
            "model",
            "max_tokens",
            "temperature",
            "top_p",
            "seed",
            "stop",
            "metadata",
            "session_id",
        ];

        /// `POST /v1/streams`: the body as the handler decodes and validates it.
        fn stream(bytes: &[u8]) -> Result<GenerateRequest, ApiError> {
            let (config, models) = &*SETUP;
            decode_json::<StreamParams>(bytes)?.validate(config, models)
        }

        /// `POST /v1/sessions/{id}/messages`.
        fn turn(bytes: &[u8]) -> Result<GenerateRequest, ApiError> {
            let (config, models) = &*SETUP;
            decode_json::<StreamParams>(bytes)?.validate_turn(config, models, Some("mock"))
        }

        /// A `POST /v1/streams` body, give or take: its required and optional members.
        fn stream_fields() -> (Vec<Field>, Vec<Field>) {
            let message = an_object(
                vec![
                    ("role", one_of(&["system", "user", "assistant", "robot"])),
                    ("content", a_string()),
                ],
                vec![],
            );
            let required = vec![("prompt", a_string())];
            let optional = vec![
                ("messages", a_list(message, 0..4)),
                ("model", one_of(&["mock", "", " ", "other"])),
                ("max_tokens", an_integer(&[0, 256, 32768, u32::MAX as i64])),
                ("temperature", a_float(0.0, 2.0)),
                ("top_p", a_float(0.0, 1.0)),
                ("seed", an_integer(&[0, i64::MAX])),
                (
                    "stop",
                    prop_oneof![a_string(), a_list(a_string(), 0..6)].boxed(),
                ),
                ("metadata", an_object(vec![], vec![("k", a_string())])),
                ("session_id", a_string()),
                ("content", a_string()),
            ];
            (required, optional)
        }

        #[test]
        fn any_shaped_body_is_accepted_whole_or_rejected_with_a_400() {
            run_shaped(stream_fields(), 1024, 20, |bytes| {
                vec![stream(bytes), turn(bytes)]
            });
        }

        fn nonblank() -> impl Strategy<Value = String> {
            any::<String>().prop_filter("blank", |s| !s.trim().is_empty())
        }

        proptest! {
            #![proptest_config(strategies::config(384))]

            #[test]
            fn any_body_is_accepted_whole_or_rejected_with_a_400(bytes in body(FIELDS)) {
                check(stream(&bytes))?;
                check(turn(&bytes))?;
            }

            #[test]
            fn any_object_is_accepted_whole_or_rejected_with_a_400(o in object(FIELDS)) {
                let bytes = Value::Object(o).to_string().into_bytes();
                check(stream(&bytes))?;
                check(turn(&bytes))?;
            }

            #[test]
            fn a_valid_request_arrives_as_sent(
                prompt in prop_oneof![
                    nonblank().prop_map(Prompt::Text),
                    prop::collection::vec(
                        (prop::sample::select(&[Role::System, Role::User, Role::Assistant][..]), any::<String>()),
                        1..4,
                    )
                    .prop_map(|ms| Prompt::Messages(
                        ms.into_iter().map(|(role, content)| Message::text(role, content)).collect()
                    ))
                    .prop_filter("all blank", |p| !p.flat_text().trim().is_empty()),
                ],
                max_tokens in prop::option::of(1u32..=32768),
                temperature in prop::option::of(0.0f32..=2.0),
                top_p in prop::option::of(prop_oneof![Just(1.0f32), 0.0001f32..1.0]),
                seed in prop::option::of(any::<u64>()),
                stop in prop::collection::vec(any::<String>().prop_filter("empty", |s| !s.is_empty()), 0..=4),
                model in prop::option::of(nonblank()),
            ) {
                let mut body = serde_json::to_value(&prompt).unwrap();
                let m = body.as_object_mut().unwrap();
                m.insert("max_tokens".into(), serde_json::json!(max_tokens));
                m.insert("temperature".into(), serde_json::json!(temperature));
                m.insert("top_p".into(), serde_json::json!(top_p));
                m.insert("seed".into(), serde_json::json!(seed));
                m.insert("stop".into(), serde_json::json!(stop));
                m.insert("model".into(), serde_json::json!(model));
                let r = stream(body.to_string().as_bytes())
                    .map_err(|e| TestCaseError::fail(format!("rejected {body}: {e:?}")))?;
                check_accepted(&r)?;
                prop_assert_eq!(&r.prompt, &prompt);
                prop_assert_eq!(r.max_tokens, max_tokens.unwrap_or(256));
                prop_assert_eq!(r.temperature, temperature);
                prop_assert_eq!(r.top_p, top_p);
                prop_assert_eq!(r.seed, seed);
                prop_assert_eq!(&r.stop, &stop);
                prop_assert_eq!(r.model, model.unwrap_or_else(|| "mock".into()));
            }
        }
    }
}
