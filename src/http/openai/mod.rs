//! The OpenAI-compatible facade (SPEC §5): `POST /v1/chat/completions` in the shape the
//! official SDKs send and parse, over the same engine — so an SDK's stream is durable
//! and resumable (`X-Stream-Id`, `id:` lines, `GET /v1/streams/{id}/events?format=openai`).
//! `GET /v1/models` is shared with the native API (`http::ops`).

pub mod chunks;
pub mod request;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::auth::Owner;
use super::error::ApiError;
use super::extract::JsonBody;
use super::sse;
use super::streams::{event_response, set_header};
use crate::app::AppState;
use crate::engine::Started;
use crate::event::EventKind;
use crate::feed;
use crate::store::StreamRow;
use chunks::ChunkFormat;
use request::ChatRequest;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/chat/completions", post(chat_completions))
}

/// Our error as OpenAI shapes it: `{"error":{"message","type","param","code"}}`.
pub fn openai_error(mut e: ApiError) -> Response {
    let kind = match e.status.as_u16() {
        401 => "authentication_error",
        404 => "invalid_request_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    let extra = e.extra.get_or_insert_with(Default::default);
    extra.insert("type".into(), Value::from(kind));
    extra.entry("param").or_insert(Value::Null);
    e.into_response()
}

/// The chunk format of a stored stream (for a resume with `?format=openai`).
pub fn chunk_format(row: &StreamRow) -> ChunkFormat {
    let include_usage = serde_json::from_str::<Value>(&row.params)
        .ok()
        .and_then(|p| p.get("include_usage").and_then(Value::as_bool))
        .unwrap_or(false);
    ChunkFormat {
        stream_id: row.id.clone(),
        model: row.model.clone(),
        created: row.created_at / 1000,
        include_usage,
    }
}

async fn chat_completions(
    State(state): State<AppState>,
    Owner(owner): Owner,
    body: Result<JsonBody<ChatRequest>, ApiError>,
) -> Response {
    match complete(state, owner, body).await {
        Ok(response) => response,
        Err(e) => openai_error(e),
    }
}

async fn complete(
    state: AppState,
    owner: Option<String>,
    body: Result<JsonBody<ChatRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let JsonBody(chat) = body?;
    let streaming = chat.stream.unwrap_or(false);
    let request = chat.into_request(&state.config, state.engine.models())?;
    let include_usage = request.include_usage;
    let started = state.engine.start(request, owner).await?;
    let format = ChunkFormat {
        stream_id: started.id.clone(),
        model: started.model.clone(),
        created: started.created_at / 1000,
        include_usage,
    };
    if streaming {
        let mut response =
            event_response(&state, started.id.clone(), 0, sse::Format::OpenAi(format));
        set_header(&mut response, "x-stream-id", &started.id);
        return Ok(response);
    }
    let mut response = wait_for_completion(&state, &started).await?;
    set_header(&mut response, "x-stream-id", &started.id);
    Ok(response)
}

/// `stream: false`: reads the stream to its end and answers one `chat.completion`.
/// The client going away does not cancel the generation (it can be read by id).
async fn wait_for_completion(state: &AppState, started: &Started) -> Result<Response, ApiError> {
    let feed = feed::follow(
        state.store.clone(),
        state.hub.clone(),
        state.metrics.clone(),
        started.id.clone(),
        0,
    );
    let mut feed = std::pin::pin!(feed);
    let mut text = String::new();
    while let Some(chunk) = feed.next().await {
        let chunk = chunk?;
        for event in chunk.events() {
            let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
            match event.kind {
                EventKind::Start => {}
                EventKind::Token => text.push_str(data["text"].as_str().unwrap_or_default()),
                EventKind::Done => {
                    let reason = match data["finish_reason"].as_str() {
                        Some("length") => "length",
                        _ => "stop",
                    };
                    let body = json!({
                        "id": started.id,
                        "object": "chat.completion",
                        "created": started.created_at / 1000,
                        "model": started.model,
                        "system_fingerprint": null,
                        "choices": [{
                            "index": 0,
                            "message": {"role": "assistant", "content": text, "refusal": null},
                            "logprobs": null,
                            "finish_reason": reason,
                        }],
                        "usage": chunks::usage(&data["usage"]),
                    });
                    return Ok((StatusCode::OK, Json(body)).into_response());
                }
                EventKind::Error => {
                    let code = data["code"].as_str().unwrap_or("backend_error");
                    let message = data["message"]
                        .as_str()
                        .unwrap_or("the generation failed")
                        .to_owned();
                    let status = if code.starts_with("upstream") {
                        StatusCode::BAD_GATEWAY
                    } else {
                        StatusCode::INTERNAL_SERVER_ERROR
                    };
                    let mut e = ApiError::new(status, "generation_failed", message);
                    e.extra
                        .get_or_insert_with(Default::default)
                        .insert("stream_error_code".into(), Value::from(code));
                    return Err(e);
                }
            }
        }
    }
    Err(ApiError::internal(
        "chat completion",
        &"the stream ended without a terminal event",
    ))
}
