//! The `openai` backend (SPEC §7): streams from any OpenAI-compatible upstream (vLLM,
//! Ollama, llama.cpp's server, TGI, OpenAI) and makes its streams durable.
//!
//! One streaming `POST {base}/chat/completions` per stream. Its body is read with
//! [`super::sse_events`] and each chunk parsed into borrowed, typed structs: a token's
//! text is the one thing copied out of the upstream's bytes (unless it holds escapes,
//! nothing else is allocated per chunk). Faults become the stream's `error` event with a clear code:
//! `upstream_timeout` (no connection, no first token within the TTFT timeout, or
//! silence between chunks past the idle timeout) and `upstream_error` (a non-2xx answer
//! with its status, an `error` chunk, a stream cut before it finished). Nothing is
//! retried: once a token is persisted a retry could only duplicate or diverge, and
//! before that the client is better told at once. Dropping the token stream (cancel)
//! drops the response, which closes the upstream connection at once.

use std::borrow::Cow;
use std::time::Duration;

use anyhow::Context;
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::sse_events::{Next, SseEvents};
use super::{
    Backend, BackendError, GenerateRequest, Message, Output, Prompt, Role, TokenStream,
    UpstreamOptions,
};
use crate::config::OpenAiConfig;
use crate::event::{FinishReason, ReasoningField, Usage};

#[derive(Clone)]
pub struct OpenAiBackend {
    client: reqwest::Client,
    /// `…/v1`, without a trailing slash.
    base: String,
    api_key: Option<String>,
    models: Vec<String>,
    ttft_timeout: Duration,
    idle_timeout: Duration,
}

/// One streamed chunk, as far as it matters here (other members are ignored; strings
/// are borrowed from the event's data unless they hold escapes).
#[derive(Deserialize)]
struct ChunkIn<'a> {
    #[serde(default, borrow)]
    choices: Choices<'a>,
    #[serde(default)]
    usage: Option<UsageIn>,
    #[serde(default)]
    error: Option<ErrorIn>,
}

#[derive(Deserialize)]
struct ChoiceIn<'a> {
    #[serde(default, borrow)]
    delta: DeltaIn<'a>,
    /// Present when the request asked for `logprobs`.
    #[serde(default)]
    logprobs: Option<LogprobsIn>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct LogprobsIn {
    #[serde(default)]
    content: Option<Vec<serde_json::Value>>,
}

#[derive(Deserialize, Default)]
struct DeltaIn<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    /// Reasoning text, as DeepSeek, vLLM and llama.cpp name it …
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    /// … and as Ollama and OpenRouter do.
    #[serde(default, borrow)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    refusal: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCallIn<'a>>>,
}

/// A fragment of a tool call: `index` says which (absent from some servers that send
/// each call whole: its place in the list then), the first has `id` and the name.
#[derive(Deserialize)]
struct ToolCallIn<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    function: Option<FunctionIn<'a>>,
}

#[derive(Deserialize)]
struct FunctionIn<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
}

/// The request to the upstream: the stream's request as OpenAI's body, with what the
/// client sent beyond text (content parts, tool calls, tools, …) as it came.
#[derive(Serialize)]
struct BodyOut<'a> {
    model: &'a str,
    messages: Vec<MessageOut<'a>>,
    max_tokens: u32,
    stream: bool,
    stream_options: StreamOptionsOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(flatten)]
    options: &'a UpstreamOptions,
}

#[derive(Serialize)]
struct StreamOptionsOut {
    include_usage: bool,
}

#[derive(Serialize)]
struct MessageOut<'a> {
    role: &'static str,
    /// The text, the content parts, or `null` (an assistant's message that only calls
    /// tools).
    content: Option<ContentOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<&'a [Value]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ContentOut<'a> {
    Text(&'a str),
    Parts(&'a [Value]),
}

impl<'a> MessageOut<'a> {
    fn of(m: &'a Message) -> Self {
        let content = match &m.parts {
            Some(parts) => Some(ContentOut::Parts(parts)),
            None if m.content.is_empty() && m.tool_calls.is_some() => None,
            None => Some(ContentOut::Text(&m.content)),
        };
        MessageOut {
            role: m.role.as_str(),
            content,
            tool_calls: m.tool_calls.as_deref(),
            tool_call_id: m.tool_call_id.as_deref(),
            name: m.name.as_deref(),
        }
    }
}

/// A chunk's `choices`: spool asks for one (no `n`), so the first is kept in place
/// and any others in a vector that allocates only if there are some.
#[derive(Default)]
struct Choices<'a> {
    first: Option<ChoiceIn<'a>>,
    more: Vec<ChoiceIn<'a>>,
}

impl<'a> Choices<'a> {
    fn into_iter(self) -> impl Iterator<Item = ChoiceIn<'a>> {
        self.first.into_iter().chain(self.more)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Choices<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Seq<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Seq<'a> {
            type Value = Choices<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of choices")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Choices::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Choices::default();
                while let Some(choice) = seq.next_element::<ChoiceIn<'a>>()? {
                    if out.first.is_none() {
                        out.first = Some(choice);
                    } else {
                        out.more.push(choice);
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_any(Seq(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct UsageIn {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[derive(Deserialize)]
struct ErrorIn {
    #[serde(default)]
    message: Option<String>,
}

/// Most bytes of an upstream's error body quoted in the error message.
const ERROR_BODY: usize = 300;

impl OpenAiBackend {
    /// Builds the client and resolves the model names (asking the upstream's `/models`
    /// when none are configured).
    pub async fn connect(config: &OpenAiConfig) -> anyhow::Result<Self> {
        let base = config
            .base_url
            .as_deref()
            .map(|b| b.trim_end_matches('/').to_owned())
            .filter(|b| !b.is_empty())
            .context(
                "SPOOL_BACKEND=openai needs SPOOL_OPENAI_BASE_URL (e.g. http://127.0.0.1:11434/v1)",
            )?;
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .build()
            .context("cannot build the HTTP client")?;
        let mut backend = OpenAiBackend {
            client,
            base,
            api_key: config.api_key.clone().filter(|k| !k.is_empty()),
            models: config
                .models
                .iter()
                .map(|m| m.trim().to_owned())
                .filter(|m| !m.is_empty())
                .collect(),
            ttft_timeout: config.ttft_timeout,
            idle_timeout: config.idle_timeout,
        };
        if backend.models.is_empty() {
            backend.models = backend.list_models().await.with_context(|| {
                format!(
                    "cannot list the models of the upstream at {}; set SPOOL_OPENAI_MODELS to name them",
                    backend.base
                )
            })?;
            tracing::info!(models = ?backend.models, "models from the upstream");
        }
        anyhow::ensure!(
            !backend.models.is_empty(),
            "the upstream at {} lists no models; set SPOOL_OPENAI_MODELS",
            backend.base
        );
        Ok(backend)
    }

    async fn list_models(&self) -> anyhow::Result<Vec<String>> {
        let mut request = self.client.get(format!("{}/models", self.base));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = tokio::time::timeout(self.ttft_timeout, request.send())
            .await
            .context("no answer")??
            .error_for_status()?;
        let list: Value = response.json().await?;
        Ok(list["data"]
            .as_array()
            .map(|models| {
                models
                    .iter()
                    .filter_map(|m| m["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn body(request: &GenerateRequest) -> BodyOut<'_> {
        let messages = match &request.prompt {
            Prompt::Text(text) => vec![MessageOut {
                role: Role::User.as_str(),
                content: Some(ContentOut::Text(text)),
                tool_calls: None,
                tool_call_id: None,
                name: None,
            }],
            Prompt::Messages(ms) => ms.iter().map(MessageOut::of).collect(),
        };
        BodyOut {
            model: &request.model,
            messages,
            max_tokens: request.max_tokens,
            stream: true,
            stream_options: StreamOptionsOut {
                include_usage: true,
            },
            temperature: request.temperature,
            top_p: request.top_p,
            seed: request.seed,
            stop: &request.stop,
            options: &request.options,
        }
    }
}

fn timeout(message: String) -> BackendError {
    BackendError {
        code: "upstream_timeout".into(),
        message,
    }
}

fn upstream_error(message: String) -> BackendError {
    BackendError {
        code: "upstream_error".into(),
        message,
    }
}

/// A transport failure, described without the upstream's URL.
fn describe(e: &reqwest::Error) -> String {
    if e.is_connect() {
        "cannot connect to the upstream".to_owned()
    } else if e.is_timeout() {
        "the upstream did not answer in time".to_owned()
    } else if e.is_body() || e.is_decode() {
        "the upstream's stream broke off".to_owned()
    } else {
        "the request to the upstream failed".to_owned()
    }
}

impl Backend for OpenAiBackend {
    fn models(&self) -> Vec<String> {
        self.models.clone()
    }

    fn generate(&self, request: GenerateRequest, _cancel: CancellationToken) -> TokenStream {
        let this = self.clone();
        Box::pin(async_stream::stream! {
            let started = Instant::now();
            let first_token_by = started + this.ttft_timeout;
            let mut call = this
                .client
                .post(format!("{}/chat/completions", this.base))
                .json(&Self::body(&request));
            if let Some(key) = &this.api_key {
                call = call.bearer_auth(key);
            }
            let response = match tokio::time::timeout_at(first_token_by, call.send()).await {
                Err(_) => {
                    yield Err(timeout(format!("the upstream sent nothing within {:?}", this.ttft_timeout)));
                    return;
                }
                Ok(Err(e)) if e.is_connect() && e.is_timeout() => {
                    yield Err(timeout("cannot connect to the upstream in time".to_owned()));
                    return;
                }
                Ok(Err(e)) => {
                    yield Err(upstream_error(describe(&e)));
                    return;
                }
                Ok(Ok(r)) => r,
            };
            let status = response.status();
            if !status.is_success() {
                let body = tokio::time::timeout(this.idle_timeout, response.text()).await;
                let body = match body {
                    Ok(Ok(text)) => text,
                    _ => String::new(),
                };
                let detail: String = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                    .unwrap_or(body)
                    .chars()
                    .take(ERROR_BODY)
                    .collect();
                yield Err(upstream_error(format!(
                    "the upstream answered {}{}{}",
                    status.as_u16(),
                    if detail.is_empty() { "" } else { ": " },
                    detail.trim()
                )));
                return;
            }

            let mut response = response;
            let mut events = SseEvents::default();
            let mut got_token = false;
            let mut finish: Option<FinishReason> = None;
            let mut usage: Option<Usage> = None;
            let mut completion_tokens = 0u32;
            let mut done = false;
            'body: loop {
                // Every event the bytes read so far hold, then read more.
                loop {
                    let data = match events.next_event() {
                        Next::Event(data) => data.trim_ascii(),
                        Next::More => break,
                        Next::TooLong => {
                            yield Err(upstream_error("the upstream sent an event over 1 MiB".to_owned()));
                            return;
                        }
                    };
                    if data == b"[DONE]" {
                        done = true;
                        break 'body;
                    }
                    if data.is_empty() {
                        continue;
                    }
                    let chunk = match serde_json::from_slice::<ChunkIn<'_>>(data) {
                        Ok(chunk) => chunk,
                        Err(_) => {
                            yield Err(upstream_error("the upstream sent a chunk that is not a chat completion chunk".to_owned()));
                            return;
                        }
                    };
                    if let Some(error) = chunk.error {
                        let message = error.message.unwrap_or_else(|| "unknown error".to_owned());
                        yield Err(upstream_error(format!("the upstream failed: {message}")));
                        return;
                    }
                    if let Some(u) = chunk.usage {
                        usage = Some(Usage {
                            prompt_tokens: u.prompt_tokens as u32,
                            completion_tokens: u.completion_tokens as u32,
                            session_turns: None,
                        });
                    }
                    for choice in chunk.choices.into_iter() {
                        // Before the text they score, which carries them.
                        if let Some(content) = choice.logprobs.and_then(|l| l.content).filter(|c| !c.is_empty()) {
                            yield Ok(Output::Logprobs { content });
                        }
                        for output in outputs(choice.delta) {
                            got_token = true;
                            completion_tokens += 1;
                            yield Ok(output);
                        }
                        if let Some(reason) = choice.finish_reason.as_deref() {
                            finish = Some(finish_reason(reason));
                        }
                    }
                }
                // Before the first token the TTFT deadline holds (chunks without text do
                // not extend it); after it, each read must come within the idle timeout.
                let deadline = if got_token {
                    Instant::now() + this.idle_timeout
                } else {
                    first_token_by
                };
                match tokio::time::timeout_at(deadline, response.chunk()).await {
                    Err(_) if got_token => {
                        yield Err(timeout(format!("the upstream went silent for {:?}", this.idle_timeout)));
                        return;
                    }
                    Err(_) => {
                        yield Err(timeout(format!("no token from the upstream within {:?}", this.ttft_timeout)));
                        return;
                    }
                    Ok(Ok(Some(bytes))) => events.feed(&bytes),
                    Ok(Ok(None)) => break,
                    Ok(Err(_)) => {
                        yield Err(upstream_error("the upstream's stream broke off".to_owned()));
                        return;
                    }
                }
            }
            if !done && finish.is_none() {
                yield Err(upstream_error("the upstream closed the stream before it finished".to_owned()));
                return;
            }
            let usage = usage.unwrap_or(Usage { prompt_tokens: 0, completion_tokens, session_turns: None });
            yield Ok(Output::Prompt { tokens: usage.prompt_tokens });
            yield Ok(Output::Done {
                reason: finish.unwrap_or(FinishReason::Stop),
                usage: Some(usage),
            });
        })
    }
}

/// OpenAI's finish reasons as spool's (`function_call` is the legacy name of
/// `tool_calls`; anything unknown is a plain stop).
fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

/// The parts of one delta, in the order an answer reads: reasoning, text, refusal,
/// tool calls. Empty pieces are dropped. An iterator, not a list: a chunk of text (the
/// usual one) allocates nothing beyond its text.
fn outputs(delta: DeltaIn<'_>) -> impl Iterator<Item = Output> + '_ {
    let text = |t: Option<Cow<'_, str>>| t.filter(|t| !t.is_empty()).map(Cow::into_owned);
    let reasoning = [
        (delta.reasoning_content, ReasoningField::ReasoningContent),
        (delta.reasoning, ReasoningField::Reasoning),
    ]
    .into_iter()
    .filter_map(move |(t, field)| text(t).map(|text| Output::Reasoning { text, field }));
    let content = text(delta.content).map(|text| Output::Token { text, id: None });
    let refusal = text(delta.refusal).map(|text| Output::Refusal { text });
    let calls = delta
        .tool_calls
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(place, call)| {
            let (name, arguments) = match call.function {
                Some(f) => (f.name, f.arguments),
                None => (None, None),
            };
            let id = call.id.filter(|i| !i.is_empty()).map(Cow::into_owned);
            let name = name.filter(|n| !n.is_empty()).map(Cow::into_owned);
            let arguments = arguments.map(Cow::into_owned).unwrap_or_default();
            (id.is_some() || name.is_some() || !arguments.is_empty()).then(|| Output::ToolCall {
                index: call.index.unwrap_or(place as u32),
                id,
                name,
                arguments,
            })
        });
    reasoning.chain(content).chain(refusal).chain(calls)
}
