//! The OpenAI-compatible facade (SPEC §5): `POST /v1/chat/completions` in the shape the
//! official SDKs send and parse, over the same engine — so an SDK's stream is durable
//! and resumable (`X-Stream-Id`, `id:` lines, `GET /v1/streams/{id}/events?format=openai`).
//! `request` maps the chat request onto the one start path; `chunks` is the format.
//! `GET /v1/models` is shared with the native API (`http::ops`).

pub mod chunks;
pub mod request;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Serialize;

use super::auth::Owner;
use super::error::{ApiError, ErrorCode};
use super::extract::JsonBody;
use super::state::HttpState;
use super::streams::{idempotency_header, set_header};
use crate::answer::{Answer, ToolCall};
use crate::engine::{Started, Via};
use crate::event::{EventData, ReasoningField};
use chunks::{ChunkFormat, OpenAiUsage};
use request::ChatRequest;

pub fn router() -> Router<HttpState> {
    Router::new().route("/v1/chat/completions", post(chat_completions))
}

async fn chat_completions(
    State(state): State<HttpState>,
    Owner(owner): Owner,
    headers: HeaderMap,
    body: Result<JsonBody<ChatRequest>, ApiError>,
) -> Response {
    match complete(state, owner, &headers, body).await {
        Ok(response) => response,
        Err(e) => e.into_openai(),
    }
}

async fn complete(
    state: HttpState,
    owner: Option<String>,
    headers: &HeaderMap,
    body: Result<JsonBody<ChatRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let JsonBody(chat) = body?;
    let streaming = chat.stream.unwrap_or(false);
    let mut params = chat.into_params()?;
    params.idempotency_key = idempotency_header(headers)?;
    let include_usage = params.include_usage;
    let started = state.start(params, owner, Via::Http).await?;
    let mut response = if streaming {
        let format = ChunkFormat::new(
            started.id.clone(),
            started.model.clone(),
            started.created_at / 1000,
            include_usage,
        );
        state.events_started(&started, Box::new(format))
    } else {
        wait_for_completion(&state, &started).await?
    };
    set_header(&mut response, "x-stream-id", &started.id);
    Ok(response)
}

/// `chat.completion`, member for member as OpenAI answers.
#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    system_fingerprint: Option<()>,
    choices: [CompletionChoice<'a>; 1],
    usage: OpenAiUsage,
}

#[derive(Serialize)]
struct CompletionChoice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    logprobs: Option<chunks::Logprobs<'a>>,
    finish_reason: &'static str,
}

/// The answer's message: `content` is `null` for an answer of tool calls only;
/// reasoning appears under the upstream's name for it.
#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: Option<&'a str>,
    refusal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning: Option<&'a str>,
    #[serde(skip_serializing_if = "<[ToolCall]>::is_empty")]
    tool_calls: &'a [ToolCall],
}

impl<'a> AssistantMessage<'a> {
    fn of(answer: &'a Answer, tool_calls: &'a [ToolCall]) -> Self {
        let reasoning = (!answer.reasoning.is_empty()).then_some(answer.reasoning.as_str());
        let field = answer.reasoning_field.unwrap_or_default();
        AssistantMessage {
            role: "assistant",
            content: (!answer.text.is_empty() || tool_calls.is_empty())
                .then_some(answer.text.as_str()),
            refusal: answer.refusal.as_deref(),
            reasoning_content: reasoning.filter(|_| field == ReasoningField::ReasoningContent),
            reasoning: reasoning.filter(|_| field == ReasoningField::Reasoning),
            tool_calls,
        }
    }
}

/// `stream: false`: reads the stream to its end and answers one `chat.completion`.
/// The client going away does not cancel the generation (it can be read by id).
async fn wait_for_completion(state: &HttpState, started: &Started) -> Result<Response, ApiError> {
    let mut feed = std::pin::pin!(state.engine().feed(&started.id, 0));
    let mut answer = Answer::default();
    while let Some(chunk) = feed.next().await {
        let chunk = chunk?;
        for event in chunk.events() {
            answer.push(event);
            match event.data() {
                Some(EventData::Done(done)) => {
                    let tool_calls = answer.tool_calls();
                    let body = Completion {
                        id: &started.id,
                        object: "chat.completion",
                        created: started.created_at / 1000,
                        model: &started.model,
                        system_fingerprint: None,
                        choices: [CompletionChoice {
                            index: 0,
                            message: AssistantMessage::of(&answer, &tool_calls),
                            logprobs: (!answer.logprobs.is_empty()).then(|| chunks::Logprobs {
                                content: &answer.logprobs,
                                refusal: None,
                            }),
                            finish_reason: chunks::finish_reason(done.finish_reason),
                        }],
                        usage: done.usage.into(),
                    };
                    return Ok(Json(body).into_response());
                }
                Some(EventData::Error(e)) => {
                    let status = if e.code.starts_with("upstream") {
                        axum::http::StatusCode::BAD_GATEWAY
                    } else {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    };
                    return Err(
                        ApiError::new(ErrorCode::GenerationFailed, e.message.as_ref())
                            .with_status(status)
                            .with("stream_error_code", e.code.as_ref().into()),
                    );
                }
                _ => {}
            }
        }
    }
    Err(ApiError::internal(
        "chat completion",
        &"the stream ended without a terminal event",
    ))
}
