//! `/v1/streams`: start, read (SSE), inspect, list, cancel and delete streams.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{Owner, ReadGrant};
use super::error::ApiError;
use super::extract::{JsonBody, QueryParams};
use super::params::StreamParams;
use super::sse;
use crate::app::AppState;
use crate::engine::{Cancel, Started};
use crate::event::{StreamStatus, rfc3339};
use crate::feed;
use crate::ids::looks_like_stream_id;
use crate::store::{ListCursor, StreamRow};

pub fn router() -> Router<AppState> {
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
async fn create(
    State(state): State<AppState>,
    Owner(owner): Owner,
    QueryParams(query): QueryParams<CreateQuery>,
    headers: HeaderMap,
    JsonBody(params): JsonBody<StreamParams>,
) -> Result<Response, ApiError> {
    let wants_sse = wants_sse(&query, &headers)?;
    if let Some(session_id) = params.session_id.clone() {
        // A stream that answers a session's turn: `prompt` is the user's message.
        let started = super::sessions::say(&state, &session_id, params, owner).await?;
        return Ok(started_response(&state, &started, wants_sse));
    }
    let request = params.validate(&state.config, state.engine.models())?;
    let started = state.engine.start(request, owner).await?;
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

/// `201` with the new stream's JSON, or `200` and its SSE from the first event.
pub(super) fn started_response(state: &AppState, started: &Started, wants_sse: bool) -> Response {
    let location = format!("/v1/streams/{}", started.id);
    if wants_sse {
        let mut response = event_response(state, started.id.clone(), 0, sse::Format::Native);
        set_header(&mut response, "x-stream-id", &started.id);
        set_header(&mut response, header::LOCATION.as_str(), &location);
        if let Some(session) = &started.session_id {
            set_header(&mut response, "x-session-id", session);
        }
        return response;
    }
    let mut body = created_body(started);
    if let Some(token) = state.keys.read_token(&started.id) {
        body["read_token"] = Value::from(token);
    }
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    set_header(&mut response, header::LOCATION.as_str(), &location);
    response
}

fn created_body(s: &Started) -> Value {
    let mut body = json!({
        "id": s.id,
        "status": StreamStatus::Queued,
        "model": s.model,
        "created_at": rfc3339(s.created_at),
        "events_url": format!("/v1/streams/{}/events", s.id),
    });
    if let Some(session) = &s.session_id {
        body["session_id"] = Value::from(session.as_str());
    }
    body
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
/// terminal event. `Last-Event-ID` wins over `?after=`.
async fn events(
    State(state): State<AppState>,
    Owner(owner): Owner,
    grant: Option<axum::Extension<ReadGrant>>,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let cursor = match headers.get("last-event-id") {
        Some(v) => Some(sse::parse_cursor(v.to_str().map_err(|_| {
            ApiError::bad_request("invalid_cursor", "Last-Event-ID is not text")
        })?)?),
        None => query.after.as_deref().map(sse::parse_cursor).transpose()?,
    };
    let row = match grant {
        // A read token for this stream (checked by `auth`) opens it whoever owns it.
        Some(axum::Extension(ReadGrant(granted))) if granted == id => state
            .store
            .stream_unscoped(&id)
            .await?
            .ok_or_else(ApiError::stream_not_found)?,
        _ => find(&state, &id, owner.as_deref()).await?,
    };
    let format = match query.format.as_deref() {
        None | Some("sse" | "native") => sse::Format::Native,
        Some("openai") => sse::Format::OpenAi(super::openai::chunk_format(&row)),
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "`format` is {other:?}; expected \"openai\" or nothing"
            )));
        }
    };
    let after = cursor.unwrap_or(0);
    let last = row.last_seq();
    if after > last {
        return Err(ApiError::bad_request(
            "cursor_out_of_range",
            format!("the resume point {after} is beyond the stream's last event ({last})"),
        ));
    }
    if after == last && row.status()?.is_terminal() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    if cursor.is_some() {
        state.metrics.resumed();
    }
    Ok(event_response(&state, id, after, format))
}

pub(super) fn event_response(
    state: &AppState,
    id: String,
    after: u64,
    format: sse::Format,
) -> Response {
    let feed = feed::follow(
        state.store.clone(),
        state.hub.clone(),
        state.metrics.clone(),
        id,
        after,
    );
    sse::response(
        feed,
        sse::BodyOptions {
            format,
            heartbeat: state.config.heartbeat,
            shutdown: state.http_shutdown.clone(),
            metrics: state.metrics.clone(),
        },
    )
}

/// `GET /v1/streams/{id}`: the stream's state and its text so far.
async fn status(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let row = find(&state, &id, owner.as_deref()).await?;
    let text = state.store.text(&id).await?;
    let mut body = describe(&row)?;
    body["text"] = Value::from(text);
    Ok(Json(body))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<String>,
    before: Option<String>,
}

/// `GET /v1/streams`: newest first; `before` is the last id of the previous page.
async fn list(
    State(state): State<AppState>,
    Owner(owner): Owner,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = match query.limit.as_deref() {
        None => 20,
        Some(raw) => match raw.parse::<u32>() {
            Ok(n @ 1..=100) => n,
            _ => {
                return Err(ApiError::invalid(
                    "`limit` must be an integer from 1 to 100",
                ));
            }
        },
    };
    let cursor = match query.before.as_deref() {
        None => None,
        Some(id) => {
            let row = find(&state, id, owner.as_deref())
                .await
                .map_err(|_| ApiError::invalid(format!("`before` is not a stream: {id:?}")))?;
            Some(ListCursor {
                created_at: row.created_at,
                id: row.id,
            })
        }
    };
    let mut rows = state
        .store
        .list_streams(owner.as_deref(), cursor.as_ref(), limit + 1)
        .await?;
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let data = rows.iter().map(describe).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "has_more": has_more,
        "last_id": rows.last().map(|r| r.id.clone()),
    })))
}

/// `POST /v1/streams/{id}/cancel`: `202` while it stops, `200` if it had ended.
async fn cancel(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if !looks_like_stream_id(&id) {
        return Err(ApiError::stream_not_found());
    }
    match state.engine.cancel(&id, owner.as_deref()).await? {
        None => Err(ApiError::stream_not_found()),
        Some(Cancel::Stopping(row)) => {
            Ok((StatusCode::ACCEPTED, Json(describe(&row)?)).into_response())
        }
        Some(Cancel::AlreadyEnded(row)) => {
            Ok((StatusCode::OK, Json(describe(&row)?)).into_response())
        }
    }
}

/// `DELETE /v1/streams/{id}`: cancel if running, then delete; `204`.
async fn delete(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !looks_like_stream_id(&id) {
        return Err(ApiError::stream_not_found());
    }
    if state.engine.delete(&id, owner.as_deref()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::stream_not_found())
    }
}

pub(super) async fn find(
    state: &AppState,
    id: &str,
    owner: Option<&str>,
) -> Result<StreamRow, ApiError> {
    if !looks_like_stream_id(id) {
        return Err(ApiError::stream_not_found());
    }
    state
        .store
        .stream(id, owner)
        .await?
        .ok_or_else(ApiError::stream_not_found)
}

/// The stream object of SPEC §2, without `text`.
fn describe(row: &StreamRow) -> Result<Value, ApiError> {
    let status = row.status()?;
    let mut body = json!({
        "id": row.id,
        "object": "stream",
        "status": status,
        "model": row.model,
        "created_at": rfc3339(row.created_at),
        "started_at": row.started_at.map(rfc3339),
        "finished_at": row.finished_at.map(rfc3339),
        "finish_reason": row.finish_reason(),
        "usage": row.usage(),
        "last_seq": row.last_seq(),
        "events_url": format!("/v1/streams/{}/events", row.id),
    });
    if let (Some(code), Some(message)) = (&row.error_code, &row.error_message) {
        body["error"] = json!({ "code": code, "message": message });
    }
    if let Ok(params) = serde_json::from_str::<Value>(&row.params) {
        if let Some(metadata) = params.get("metadata") {
            body["metadata"] = metadata.clone();
        }
        if let Some(session) = params.get("session_id") {
            body["session_id"] = session.clone();
        }
    }
    Ok(body)
}
