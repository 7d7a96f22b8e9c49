//! `/v1/streams`: start, read (SSE), inspect, list, cancel and delete streams — the
//! native surface. Its bodies are the typed structs below; its wire format is
//! `sse::Native` (or another format by `?format=`, see `formats`).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::auth::{Owner, ReadGrant};
use super::error::{ApiError, ErrorCode};
use super::extract::{JsonBody, QueryParams};
use super::formats::Format;
use super::listing::{ListQuery, Page};
use super::params::StreamParams;
use super::sse;
use super::state::HttpState;
use crate::engine::{Access, Cancel, Follow, Started, Via, parse_cursor};
use crate::event::{FinishReason, StreamStatus, Usage, rfc3339};
use crate::store::StreamRow;

pub fn router() -> Router<HttpState> {
    Router::new()
        .route("/v1/streams", post(create).get(list))
        .route("/v1/streams/{id}", get(status).delete(delete))
        .route("/v1/streams/{id}/events", get(events))
        .route("/v1/streams/{id}/cancel", post(cancel))
}

#[derive(Debug, Deserialize)]
pub(super) struct CreateQuery {
    stream: Option<String>,
}

/// `POST /v1/streams`: `201` with the stream's JSON, or `200` and its SSE from the start.
/// With `session_id`, the stream answers that session's next turn.
async fn create(
    State(state): State<HttpState>,
    Owner(owner): Owner,
    QueryParams(query): QueryParams<CreateQuery>,
    headers: HeaderMap,
    JsonBody(mut params): JsonBody<StreamParams>,
) -> Result<Response, ApiError> {
    let wants_sse = wants_sse(&query, &headers)?;
    params.idempotency_key = idempotency_header(&headers)?;
    let started = state.start(params, owner, Via::Http).await?;
    Ok(started_response(&state, &started, wants_sse))
}

/// Whether a `POST` that starts a stream answers with its SSE (`?stream=` wins over
/// `Accept: text/event-stream`).
pub(super) fn wants_sse(query: &CreateQuery, headers: &HeaderMap) -> Result<bool, ApiError> {
    Ok(match query.stream.as_deref() {
        Some("true" | "1") => true,
        Some("false" | "0") => false,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "`stream` is {other:?}; expected true or false"
            )));
        }
        None => accepts_event_stream(headers),
    })
}

/// The answer to `POST /v1/streams` (and a session's turn).
#[derive(Serialize)]
struct Created<'a> {
    id: &'a str,
    status: StreamStatus,
    model: &'a str,
    created_at: String,
    events_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    read_token: Option<String>,
}

/// `201` with the new stream's JSON, or `200` and its SSE from the first event.
pub(super) fn started_response(state: &HttpState, started: &Started, wants_sse: bool) -> Response {
    let location = format!("/v1/streams/{}", started.id);
    if wants_sse {
        let mut response = state.events_started(started, Box::new(sse::Native));
        set_header(&mut response, "x-stream-id", &started.id);
        set_header(&mut response, header::LOCATION.as_str(), &location);
        if let Some(session) = &started.session_id {
            set_header(&mut response, "x-session-id", session);
        }
        return response;
    }
    let body = Created {
        id: &started.id,
        status: StreamStatus::Queued,
        model: &started.model,
        created_at: rfc3339(started.created_at),
        events_url: format!("/v1/streams/{}/events", started.id),
        session_id: started.session_id.as_deref(),
        read_token: state
            .keys()
            .read_token(&started.id, started.owner.as_deref()),
    };
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    set_header(&mut response, header::LOCATION.as_str(), &location);
    response
}

/// The request's `Idempotency-Key`, checked.
pub(super) fn idempotency_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    super::params::idempotency_key(headers.get("idempotency-key").map(|v| v.as_bytes()))
}

fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().starts_with("text/event-stream"))
        })
}

pub(super) fn set_header(response: &mut Response, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, v);
    }
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    after: Option<String>,
    format: Option<String>,
}

/// `GET /v1/streams/{id}/events`: replay after the cursor, follow, end after the
/// terminal event. `Last-Event-ID` wins over `?after=`. The cursor rule's outcomes in
/// SSE words: ended there → `204` (an `EventSource` stops), beyond the end → `400`.
async fn events(
    State(state): State<HttpState>,
    Owner(owner): Owner,
    grant: Option<axum::Extension<ReadGrant>>,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let cursor = match headers.get("last-event-id") {
        Some(v) => Some(parse_cursor(v.to_str().map_err(|_| {
            ApiError::new(ErrorCode::InvalidCursor, "Last-Event-ID is not text")
        })?)?),
        None => query.after.as_deref().map(parse_cursor).transpose()?,
    };
    let Some(format) = Format::parse(query.format.as_deref()) else {
        return Err(ApiError::invalid(format!(
            "`format` is {:?}; expected \"openai\" or nothing",
            query.format.unwrap_or_default()
        )));
    };
    // A read token for this stream (checked by `auth`) opens it whoever owns it.
    let access = match grant {
        Some(axum::Extension(ReadGrant(granted))) if granted == id => Access::Granted,
        _ => Access::Owner(owner.as_deref()),
    };
    let (row, after) = match state.engine().follow(&id, access, cursor).await? {
        Follow::Ended(_) => return Ok(StatusCode::NO_CONTENT.into_response()),
        Follow::From { row, after } => (row, after),
    };
    Ok(state.events(&id, Some(after), format.renderer(&row)?))
}

/// The stream object of SPEC §2.
#[derive(Serialize)]
struct StreamObject<'a> {
    id: &'a str,
    object: &'static str,
    status: StreamStatus,
    model: &'a str,
    created_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    finish_reason: Option<FinishReason>,
    usage: Option<Usage>,
    last_seq: u64,
    events_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<StreamErrorObject<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<String>,
    /// `GET /v1/streams/{id}` only: the text so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    /// `GET /v1/streams/{id}` only, when the answer has them: the reasoning text, the
    /// refusal, the tool calls assembled (OpenAI's shape).
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<crate::answer::ToolCall>,
}

#[derive(Serialize)]
struct StreamErrorObject<'a> {
    code: &'a str,
    message: &'a str,
}

impl<'a> StreamObject<'a> {
    fn of(row: &'a StreamRow) -> Result<Self, ApiError> {
        let status = row.status()?;
        let request = row.request()?;
        Ok(StreamObject {
            id: &row.id,
            object: "stream",
            status,
            model: &row.model,
            created_at: rfc3339(row.created_at),
            started_at: row.started_at.map(rfc3339),
            finished_at: row.finished_at.map(rfc3339),
            finish_reason: row.finish_reason(),
            usage: row.usage(),
            last_seq: row.last_seq(),
            events_url: format!("/v1/streams/{}/events", row.id),
            error: match (&row.error_code, &row.error_message) {
                (Some(code), Some(message)) => Some(StreamErrorObject { code, message }),
                _ => None,
            },
            metadata: request.metadata,
            session_id: request.session_id,
            text: None,
            reasoning: None,
            refusal: None,
            tool_calls: Vec::new(),
        })
    }
}

/// `GET /v1/streams/{id}`: the stream's state and its text so far.
async fn status(
    State(state): State<HttpState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let row = find(&state, &id, owner.as_deref()).await?;
    let mut body = StreamObject::of(&row)?;
    let answer = state.engine().answer(&id).await?;
    body.tool_calls = answer.tool_calls();
    body.reasoning = (!answer.reasoning.is_empty()).then_some(answer.reasoning);
    body.refusal = answer.refusal;
    body.text = Some(answer.text);
    Ok(Json(body).into_response())
}

/// `GET /v1/streams`: newest first; `before` is the last id of the previous page.
async fn list(
    State(state): State<HttpState>,
    Owner(owner): Owner,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = query.limit()?;
    let before = query.before.as_deref();
    let Some(rows) = state
        .engine()
        .list_streams(owner.as_deref(), before, limit + 1)
        .await?
    else {
        return Err(query.unknown_before("stream"));
    };
    let page = Page::of(&rows, limit, |r| r.id.as_str(), StreamObject::of)?;
    Ok(Json(page).into_response())
}

/// `POST /v1/streams/{id}/cancel`: `202` while it stops, `200` if it had ended.
async fn cancel(
    State(state): State<HttpState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (status, row) = match state.engine().cancel(&id, owner.as_deref()).await? {
        None => return Err(ApiError::stream_not_found()),
        Some(Cancel::Stopping(row)) => (StatusCode::ACCEPTED, row),
        Some(Cancel::AlreadyEnded(row)) => (StatusCode::OK, row),
    };
    Ok((status, Json(StreamObject::of(&row)?)).into_response())
}

/// `DELETE /v1/streams/{id}`: cancel if running, then delete; `204`.
async fn delete(
    State(state): State<HttpState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.engine().delete(&id, owner.as_deref()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::stream_not_found())
    }
}

async fn find(state: &HttpState, id: &str, owner: Option<&str>) -> Result<StreamRow, ApiError> {
    state
        .engine()
        .stream(id, Access::Owner(owner))
        .await?
        .ok_or_else(ApiError::stream_not_found)
}
