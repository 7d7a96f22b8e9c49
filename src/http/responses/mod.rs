//! The OpenAI Responses API over spool's streams: `POST /v1/responses`, `GET
//! /v1/responses/{id}` (the response object, or with `?stream=true` its events after
//! `starting_after` / `Last-Event-ID`), `POST /v1/responses/{id}/cancel`, `DELETE
//! /v1/responses/{id}` and `GET /v1/responses/{id}/input_items`, in the shapes the
//! official SDKs send and parse.
//!
//! A response *is* a spool stream: its id is the stream id, it starts on the one start
//! path, and it is persisted, listed, cancelled and resumed like any other (also from
//! `/v1/streams/{id}`). `background: true` makes it unattended: it runs to its end
//! whether or not anyone reads it, and stays resumable for as long as the store keeps
//! it. `request` maps the body onto the native request; `events` is the wire format and
//! the response object, both assembled from the stored events by one renderer.

pub mod events;
pub mod request;

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{Owner, ReadGrant};
use super::error::{ApiError, ErrorCode};
use super::extract::{JsonBody, QueryParams};
use super::render::{Frames, Render};
use super::state::HttpState;
use super::streams::{idempotency_header, set_header};
use crate::engine::{Access, Cancel, Follow, Via, parse_cursor};
use crate::event::StreamStatus;
use crate::http::params::MessageParam;
use crate::llm::{Message, Prompt, Role};
use crate::store::StreamRow;
use events::ResponseFormat;
use request::ResponsesRequest;

pub fn router() -> Router<HttpState> {
    Router::new()
        .route("/v1/responses", post(create))
        .route("/v1/responses/{id}", get(retrieve).delete(delete))
        .route("/v1/responses/{id}/cancel", post(cancel))
        .route("/v1/responses/{id}/input_items", get(input_items))
}

/// Every answer of this surface: errors in OpenAI's shape.
fn openai(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(ApiError::into_openai)
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no response with id {id:?}"))
}

/// A sink that keeps no frame: feeding it only assembles the response.
fn assembling() -> Frames {
    Frames::new(Some(u64::MAX))
}

/// The object's status for a stream whose end is not stored yet.
fn live_status(row: &StreamRow) -> Result<&'static str, ApiError> {
    Ok(match row.status()? {
        StreamStatus::Queued => "queued",
        StreamStatus::Running => "in_progress",
        StreamStatus::Cancelled => "cancelled",
        StreamStatus::Completed => "completed",
        StreamStatus::Failed | StreamStatus::Interrupted => "failed",
    })
}

/// The response object of a stream, assembled from its stored events.
async fn object_of(
    state: &HttpState,
    row: &StreamRow,
) -> Result<(Value, ResponseFormat), ApiError> {
    let mut format = ResponseFormat::of(row)?;
    let mut sink = assembling();
    for event in state.engine().events(&row.id).await? {
        format.render(&event, &mut sink);
    }
    let mut object = format.object(live_status(row)?);
    if let Some(fields) = object.as_object_mut() {
        fields.insert("output_text".to_owned(), Value::from(format.output_text()));
        if let Some(done) = row.finished_at.filter(|_| row.status == "completed") {
            fields.insert("completed_at".to_owned(), Value::from(done / 1000));
        }
    }
    Ok((object, format))
}

async fn find(state: &HttpState, id: &str, access: Access<'_>) -> Result<StreamRow, ApiError> {
    state
        .engine()
        .stream(id, access)
        .await?
        .ok_or_else(|| not_found(id))
}

/// `POST /v1/responses`.
async fn create(
    State(state): State<HttpState>,
    Owner(owner): Owner,
    headers: HeaderMap,
    body: Result<JsonBody<ResponsesRequest>, ApiError>,
) -> Response {
    openai(start(state, owner, &headers, body).await)
}

async fn start(
    state: HttpState,
    owner: Option<String>,
    headers: &HeaderMap,
    body: Result<JsonBody<ResponsesRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let JsonBody(request) = body?;
    let (streaming, background) = (request.streaming(), request.background());
    let stored = request.stored();
    let history = match request.previous_response_id.as_deref() {
        None => Vec::new(),
        Some(previous) => history_of(&state, owner.as_deref(), previous).await?,
    };
    let mut params = request.into_params(history)?;
    params.idempotency_key = idempotency_header(headers)?;
    let started = state.start(params, owner, Via::Http).await?;
    let row = find(&state, &started.id, Access::Owner(started.owner.as_deref())).await?;
    // `store: false`: deleted once it has ended and (not streamed) its object is made.
    let (made, release) = tokio::sync::oneshot::channel::<()>();
    if !stored {
        forget_when_over(&state, &started, release);
    }
    let mut response = if streaming {
        state.events_started(&started, Box::new(ResponseFormat::of(&row)?))
    } else if background {
        // Answered at once; the client polls, or streams it by id.
        Json(object_of(&state, &row).await?.0).into_response()
    } else {
        wait_for_end(&state, &row).await?
    };
    drop(made);
    set_header(&mut response, "x-stream-id", &started.id);
    if let Some(token) = state
        .keys()
        .read_token(&started.id, started.owner.as_deref())
    {
        set_header(&mut response, "x-read-token", &token);
    }
    Ok(response)
}

/// The conversation a response continues (`previous_response_id`): that response's
/// messages — without its instructions, which are not carried over, as OpenAI
/// documents — and its answer (text and tool calls) as an assistant message. Each
/// response's stored prompt holds its whole conversation, so a chain of any length,
/// and branches from any response of it, need nothing else.
async fn history_of(
    state: &HttpState,
    owner: Option<&str>,
    previous: &str,
) -> Result<Vec<MessageParam>, ApiError> {
    let missing = || {
        ApiError::new(
            ErrorCode::PreviousResponseNotFound,
            format!("previous response with id {previous:?} not found"),
        )
        .with("param", Value::from("previous_response_id"))
    };
    let row = state
        .engine()
        .stream(previous, Access::Owner(owner))
        .await?
        .ok_or_else(missing)?;
    let request = row.request()?;
    let Some(options) = request.response.as_ref() else {
        return Err(ApiError::invalid(format!(
            "{previous:?} is a stream, not a response: only a response can be continued"
        ))
        .with("param", Value::from("previous_response_id")));
    };
    if options.store == Some(false) {
        return Err(missing());
    }
    if !row.status()?.is_terminal() {
        return Err(ApiError::invalid(format!(
            "the previous response {previous:?} is still in progress: continue it once it has ended"
        ))
        .with("param", Value::from("previous_response_id")));
    }
    let mut messages = match request.prompt {
        Prompt::Messages(messages) => messages,
        Prompt::Text(text) => vec![Message::text(Role::User, text)],
    };
    if options.instructions.is_some() && messages.first().is_some_and(|m| m.role == Role::System) {
        messages.remove(0);
    }
    let mut history: Vec<MessageParam> = messages.into_iter().map(param_of).collect();
    let answer = state.engine().answer(previous).await?;
    let calls: Vec<Value> = answer
        .tool_calls()
        .iter()
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect();
    if !answer.text.is_empty() || !calls.is_empty() {
        history.push(MessageParam {
            role: "assistant".to_owned(),
            content: (!answer.text.is_empty()).then(|| Value::from(answer.text)),
            tool_calls: (!calls.is_empty()).then_some(calls),
            tool_call_id: None,
            name: None,
        });
    }
    Ok(history)
}

/// A stored message as the request message it came from.
fn param_of(m: Message) -> MessageParam {
    let content = match m.parts {
        Some(parts) => Some(Value::Array(parts)),
        None if m.content.is_empty() && m.tool_calls.is_some() => None,
        None => Some(Value::from(m.content)),
    };
    MessageParam {
        role: m.role.as_str().to_owned(),
        content,
        tool_calls: m.tool_calls,
        tool_call_id: m.tool_call_id,
        name: m.name,
    }
}

/// `store: false`: the response is deleted once its end is written and `release`
/// resolves (a waiting create has made its object; dropped, it resolves too). At
/// shutdown it is left to retention: the task does not hold the shutdown up.
fn forget_when_over(
    state: &HttpState,
    started: &crate::engine::Started,
    release: tokio::sync::oneshot::Receiver<()>,
) {
    let engine = state.engine().clone();
    let ending = engine.end_of(&started.id);
    let shutdown = engine.shutdown_token();
    let (id, owner) = (started.id.clone(), started.owner.clone());
    let forget = engine.clone();
    engine.spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = async {
                if let Some(ending) = ending {
                    ending.over().await;
                }
                let _ = release.await;
            } => {}
        }
        match forget.delete(&id, owner.as_deref()).await {
            Ok(_) => tracing::info!(stream_id = %id, "a response with store: false ended: deleted"),
            Err(e) => tracing::warn!(stream_id = %id, error = %e, "deleting a response with store: false failed"),
        }
    });
}

/// `stream: false` without `background`: reads the stream to its end and answers its
/// object. The client going away does not cancel the generation.
async fn wait_for_end(state: &HttpState, row: &StreamRow) -> Result<Response, ApiError> {
    let mut feed = std::pin::pin!(state.engine().feed(&row.id, 0));
    while let Some(chunk) = feed.next().await {
        if chunk?.events().iter().any(|e| e.kind.is_terminal()) {
            let row = find(state, &row.id, Access::Granted).await?;
            return Ok(Json(object_of(state, &row).await?.0).into_response());
        }
    }
    Err(ApiError::internal(
        "responses",
        &"the stream ended without a terminal event",
    ))
}

#[derive(Debug, Deserialize)]
struct RetrieveQuery {
    stream: Option<String>,
    starting_after: Option<String>,
}

fn flag(name: &str, value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(other) => Err(ApiError::invalid(format!(
            "`{name}` is {other:?}; expected true or false"
        ))),
    }
}

/// `GET /v1/responses/{id}`: the object, or with `?stream=true` its events after
/// `starting_after` (or `Last-Event-ID`, which wins), by `sequence_number`. At the last
/// frame of an ended response the stream ends at once; past the last frame is `400`.
/// A read token for the stream opens it (a browser's `EventSource`).
async fn retrieve(
    State(state): State<HttpState>,
    Owner(owner): Owner,
    grant: Option<axum::Extension<ReadGrant>>,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<RetrieveQuery>,
    headers: HeaderMap,
) -> Response {
    openai(read(state, owner, grant, id, query, &headers).await)
}

async fn read(
    state: HttpState,
    owner: Option<String>,
    grant: Option<axum::Extension<ReadGrant>>,
    id: String,
    query: RetrieveQuery,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let streaming = flag("stream", query.stream.as_deref())?;
    let access = match grant {
        Some(axum::Extension(ReadGrant(granted))) if granted == id => Access::Granted,
        _ => Access::Owner(owner.as_deref()),
    };
    let cursor = match headers.get("last-event-id") {
        Some(v) => Some(parse_cursor(v.to_str().map_err(|_| {
            ApiError::new(ErrorCode::InvalidCursor, "Last-Event-ID is not text")
        })?)?),
        None => query
            .starting_after
            .as_deref()
            .map(parse_cursor)
            .transpose()?,
    };
    let row = find(&state, &id, access).await?;
    if !streaming {
        return Ok(Json(object_of(&state, &row).await?.0).into_response());
    }
    let format = ResponseFormat::of(&row)?;
    let after = match cursor {
        None => None,
        Some(cursor) => {
            // The cursor rule, in frames: as many as the stored events make so far.
            let frames = object_of(&state, &row).await?.1.frames();
            match state.engine().follow_frames(row, cursor, frames)? {
                Follow::Ended(_) => return Ok(ended_stream()),
                Follow::From { row: _, after } => Some(after),
            }
        }
    };
    Ok(state.events(&id, after, Box::new(format)))
}

/// An event stream with nothing more to say: the reader has every frame.
fn ended_stream() -> Response {
    let mut response = Response::new(Body::empty());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response
}

/// `POST /v1/responses/{id}/cancel`: stops a running response and answers its object
/// once its end is stored (status `cancelled`). A response that ended otherwise cannot
/// be cancelled (`400`, as OpenAI answers).
async fn cancel(
    State(state): State<HttpState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> Response {
    openai(stop(state, owner, id).await)
}

/// How long a cancel waits for the stream's end to be stored.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

async fn stop(state: HttpState, owner: Option<String>, id: String) -> Result<Response, ApiError> {
    let row = match state.engine().cancel(&id, owner.as_deref()).await? {
        None => return Err(not_found(&id)),
        Some(Cancel::AlreadyEnded(row)) => row,
        Some(Cancel::Stopping(_)) => {
            let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
            // Generated here: its end is on its way to the store once this fires. On
            // another node: the store says when it has ended.
            if let Some(ending) = state.engine().end_of(&id) {
                let _ = tokio::time::timeout_at(deadline, ending.over()).await;
            }
            loop {
                let row = find(&state, &id, Access::Owner(owner.as_deref())).await?;
                if row.status()?.is_terminal() || tokio::time::Instant::now() >= deadline {
                    break row;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let status = row.status()?;
    if status.is_terminal() && status != StreamStatus::Cancelled {
        return Err(ApiError::invalid(format!(
            "this response has already ended ({}); only a queued or running response can be cancelled",
            status.as_str()
        )));
    }
    Ok(Json(object_of(&state, &row).await?.0).into_response())
}

/// `DELETE /v1/responses/{id}`: cancels it if running, deletes it and its events, and
/// answers OpenAI's deletion object.
async fn delete(
    State(state): State<HttpState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> Response {
    openai(remove(state, owner, id).await)
}

async fn remove(state: HttpState, owner: Option<String>, id: String) -> Result<Response, ApiError> {
    if !state.engine().delete(&id, owner.as_deref()).await? {
        return Err(not_found(&id));
    }
    Ok(Json(json!({"id": id, "object": "response", "deleted": true})).into_response())
}

#[derive(Debug, Deserialize)]
struct ItemsQuery {
    limit: Option<String>,
    order: Option<String>,
    after: Option<String>,
}

/// The most input items one page holds, and the default.
const MAX_ITEMS: usize = 100;
const DEFAULT_ITEMS: usize = 20;

/// `GET /v1/responses/{id}/input_items`: the input items as sent (each with an id),
/// newest first unless `order=asc`, `limit` per page, `after` an item id.
async fn input_items(
    State(state): State<HttpState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<ItemsQuery>,
) -> Response {
    openai(list_items(state, owner, id, query).await)
}

async fn list_items(
    state: HttpState,
    owner: Option<String>,
    id: String,
    query: ItemsQuery,
) -> Result<Response, ApiError> {
    let limit = match query.limit.as_deref() {
        None => DEFAULT_ITEMS,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_ITEMS).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(format!(
                    "`limit` must be an integer from 1 to {MAX_ITEMS}"
                )));
            }
        },
    };
    let ascending = match query.order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "`order` is {other:?}; expected \"asc\" or \"desc\""
            )));
        }
    };
    let row = find(&state, &id, Access::Owner(owner.as_deref())).await?;
    let format = ResponseFormat::of(&row)?;
    let mut items: Vec<Value> = format
        .options()
        .input
        .iter()
        .enumerate()
        .map(|(i, item)| input_item(&format, i, item))
        .collect();
    if !ascending {
        items.reverse();
    }
    if let Some(after) = &query.after {
        let Some(at) = items.iter().position(|i| i["id"] == after.as_str()) else {
            return Err(ApiError::invalid(format!(
                "`after` is {after:?}, which is not an input item of this response"
            )));
        };
        items.drain(..=at);
    }
    let has_more = items.len() > limit;
    items.truncate(limit);
    let first_id = items.first().map(|i| i["id"].clone());
    let last_id = items.last().map(|i| i["id"].clone());
    Ok(Json(json!({
        "object": "list",
        "data": items,
        "first_id": first_id,
        "last_id": last_id,
        "has_more": has_more,
    }))
    .into_response())
}

/// An input item as OpenAI lists it: a message's string content as one text part,
/// and an id and status if the client gave none.
fn input_item(format: &ResponseFormat, i: usize, item: &Value) -> Value {
    let mut item = item.as_object().cloned().unwrap_or_default();
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message")
        .to_owned();
    item.insert("type".to_owned(), Value::from(kind.as_str()));
    if kind == "message"
        && let Some(Value::String(text)) = item.get("content")
    {
        let part = if item.get("role").and_then(Value::as_str) == Some("assistant") {
            json!({"type": "output_text", "text": text, "annotations": []})
        } else {
            json!({"type": "input_text", "text": text})
        };
        item.insert("content".to_owned(), json!([part]));
    }
    item.entry("id")
        .or_insert_with(|| Value::from(format.input_item_id(&kind, i)));
    item.entry("status")
        .or_insert_with(|| Value::from("completed"));
    Value::Object(item)
}
