//! `/v1/chats`: the AI SDK's chat protocol, so that an unchanged `useChat` page with
//! `DefaultChatTransport({ api: ".../v1/chats" })` and `resume: true` gets durable,
//! resumable, cancellable answers from spool alone.
//!
//! - `POST /v1/chats` `{id, messages, trigger, messageId, …}` starts a turn of chat `id`
//!   (a session, created on first use, scoped to the caller) and answers the UI message
//!   stream ([`stream::UiStream`]). Only the last message counts — the session holds
//!   the history — so sending all messages or only the last gives the same prompt. A
//!   user message is the turn; an assistant message whose tool parts have outputs is a
//!   turn of tool results; `trigger: "regenerate-message"` drops the last answer and
//!   asks again.
//! - `GET /v1/chats/{id}/stream` replays the running answer from its start (`204` when
//!   none runs), or after `Last-Event-ID`.
//! - `POST /v1/chats/{id}/stop` cancels the running turn (`202`; `200` if none runs).
//! - `GET /v1/chats/{id}` is `{id, messages}` as UIMessages ([`messages`]); a chat
//!   not started yet has none.
//! - `POST /v1/chats/{id}/token` (with a key) mints a chat token for a page.
//!
//! With keys, a request carries the key or a chat token of that chat
//! (`crate::http::auth::ChatBearer`); every route resolves its caller through
//! [`caller`].

mod messages;
mod request;
pub mod stream;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::json;

use super::auth::{ChatBearer, Owner};
use super::error::{ApiError, ErrorCode};
use super::extract::JsonBody;
use super::state::HttpState;
use super::streams::set_header;
use crate::engine::{Cancel, NewSessionRequest, Via, valid_chat_id};
use request::ChatRequest;
use stream::UiStream;

pub fn router() -> Router<HttpState> {
    Router::new()
        .route("/v1/chats", post(send))
        .route("/v1/chats/{id}", get(read))
        .route("/v1/chats/{id}/stream", get(resume))
        .route("/v1/chats/{id}/stop", post(stop))
        .route("/v1/chats/{id}/token", post(token))
}

/// Who a chat request speaks for: its key's owner, or the owner a chat token of
/// `chat_id` stands for (`None` without keys).
fn caller(
    state: &HttpState,
    owner: Owner,
    bearer: Option<Extension<ChatBearer>>,
    chat_id: &str,
) -> Result<Option<String>, ApiError> {
    match bearer {
        Some(Extension(ChatBearer(token))) => state
            .keys()
            .chat_owner(chat_id, &token)
            .map(Some)
            .map_err(|why| ApiError::new(ErrorCode::Unauthorized, why)),
        None => Ok(owner.0),
    }
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if valid_chat_id(id) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "a chat `id` is 1 to 128 characters of A-Z, a-z, 0-9, `-` and `_`",
        ))
    }
}

/// The UI message stream of stream `id`, from its start or after frame `after`.
fn ui_stream(state: &HttpState, stream_id: &str, after: Option<u64>) -> Response {
    let mut response = state.events(stream_id, after, Box::new(UiStream::new(stream_id)));
    set_header(&mut response, "x-vercel-ai-ui-message-stream", "v1");
    set_header(&mut response, "x-stream-id", stream_id);
    response
}

/// `POST /v1/chats`: a turn of the chat the body names; the UI message stream.
async fn send(
    State(state): State<HttpState>,
    owner: Owner,
    bearer: Option<Extension<ChatBearer>>,
    JsonBody(body): JsonBody<ChatRequest>,
) -> Result<Response, ApiError> {
    check_id(&body.id)?;
    let owner = caller(&state, owner, bearer, &body.id)?;
    let engine = state.engine();
    let no_answer = || ApiError::invalid("this chat has no answer to regenerate");
    // The turn is read before the chat is created: a bad one creates nothing.
    let (session, prompt) = if body.regenerates() {
        let session = engine
            .find_chat(&body.id, owner.as_deref())
            .await?
            .ok_or_else(no_answer)?;
        let prompt = engine
            .drop_last_exchange(&session, owner.as_deref())
            .await?
            .ok_or_else(no_answer)?;
        (session, prompt)
    } else {
        let prompt = body.turn()?;
        let new = NewSessionRequest {
            model: body.model.clone(),
            system: body.system.clone(),
            ..NewSessionRequest::default()
        };
        (engine.chat(&body.id, owner.as_deref(), new).await?, prompt)
    };
    let chat_id = body.id.clone();
    let params = body.into_params(session.id.clone(), prompt);
    let started = state.start(params, owner.clone(), Via::Http).await?;
    let mut response = ui_stream(&state, &started.id, None);
    set_header(&mut response, "x-session-id", &session.id);
    if let Some((token, _)) = state.keys().chat_token(&chat_id, owner.as_deref()) {
        set_header(&mut response, "x-chat-token", &token);
    }
    Ok(response)
}

/// `GET /v1/chats/{id}/stream`: the running answer, replayed from its start (or after
/// `Last-Event-ID`); `204` when nothing runs.
async fn resume(
    State(state): State<HttpState>,
    owner: Owner,
    bearer: Option<Extension<ChatBearer>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let owner = caller(&state, owner, bearer, &id)?;
    let after = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidCursor,
                        "`Last-Event-ID` must be a frame id of this stream (an integer)",
                    )
                })?,
        ),
    };
    let Some(session) = state.engine().find_chat(&id, owner.as_deref()).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let turns = state.engine().turns(&session.id).await?;
    let running = turns
        .last()
        .filter(|t| t.role == "assistant")
        .filter(|t| matches!(t.status.as_deref(), Some("queued" | "running")))
        .and_then(|t| t.stream_id.clone());
    Ok(match running {
        Some(stream) => ui_stream(&state, &stream, after),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// `POST /v1/chats/{id}/stop`: cancels the running turn: `202`, or `200` when none runs.
async fn stop(
    State(state): State<HttpState>,
    owner: Owner,
    bearer: Option<Extension<ChatBearer>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let owner = caller(&state, owner, bearer, &id)?;
    let Some(session) = state.engine().find_chat(&id, owner.as_deref()).await? else {
        return Ok((StatusCode::OK, Json(json!({"id": id, "stopped": false}))).into_response());
    };
    let turns = state.engine().turns(&session.id).await?;
    let last = turns
        .last()
        .filter(|t| t.role == "assistant")
        .and_then(|t| t.stream_id.clone());
    let stopping = match last {
        Some(stream) => matches!(
            state.engine().cancel(&stream, owner.as_deref()).await?,
            Some(Cancel::Stopping(_))
        ),
        None => false,
    };
    let status = if stopping {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({"id": id, "stopped": stopping}))).into_response())
}

/// `GET /v1/chats/{id}`: `{id, messages}`, the history as UIMessages.
async fn read(
    State(state): State<HttpState>,
    owner: Owner,
    bearer: Option<Extension<ChatBearer>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let owner = caller(&state, owner, bearer, &id)?;
    check_id(&id)?;
    // A chat not started yet has no messages (a page opens it before its first turn).
    let messages = match state.engine().find_chat(&id, owner.as_deref()).await? {
        Some(session) => messages::of(state.engine(), &session).await?,
        None => Vec::new(),
    };
    Ok(Json(json!({"id": id, "messages": messages})).into_response())
}

/// `POST /v1/chats/{id}/token`: a chat token for the page of chat `id` (with a key:
/// a chat token cannot mint another).
async fn token(
    State(state): State<HttpState>,
    Owner(owner): Owner,
    bearer: Option<Extension<ChatBearer>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    if bearer.is_some() {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "a chat token is minted with an API key, not with another chat token",
        ));
    }
    let Some((token, expires)) = state.keys().chat_token(&id, owner.as_deref()) else {
        return Err(ApiError::invalid(
            "this server has no API keys: its chats need no token",
        ));
    };
    let body = json!({"chat_id": id, "token": token,
                      "expires_at": crate::event::rfc3339(expires as i64 * 1000)});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}
