//! `/v1/sessions`: create a conversation, read its history, add a user turn. A turn is
//! an ordinary stream started on the one start path (same response forms as
//! `POST /v1/streams`).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::auth::Owner;
use super::error::ApiError;
use super::extract::{JsonBody, QueryParams, RawBody, decode_json};
use super::params::StreamParams;
use super::state::HttpState;
use super::streams::{CreateQuery, idempotency_header, started_response, wants_sse};
use crate::engine::{NewSessionRequest, Via};
use crate::event::rfc3339;
use crate::llm::Models;
use crate::store::{SessionRow, TurnRow};

pub fn router() -> Router<HttpState> {
    Router::new()
        .route("/v1/sessions", post(create))
        .route("/v1/sessions/{id}", get(read))
        .route("/v1/sessions/{id}/messages", post(message))
}

/// Longest system prompt, in bytes.
const MAX_SYSTEM_BYTES: usize = 64 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionParams {
    pub model: Option<String>,
    pub system: Option<String>,
    pub metadata: Option<Map<String, Value>>,
}

impl SessionParams {
    /// Checks the fields; an unknown model is `404` here, not at the first turn.
    pub fn validate(self, models: &Models) -> Result<NewSessionRequest, ApiError> {
        if let Some(model) = &self.model
            && models.get(model).is_none()
        {
            return Err(ApiError::model_not_found(model, models.names()));
        }
        if self
            .system
            .as_ref()
            .is_some_and(|s| s.len() > MAX_SYSTEM_BYTES)
        {
            return Err(ApiError::invalid(format!(
                "`system` is longer than {MAX_SYSTEM_BYTES} bytes"
            )));
        }
        Ok(NewSessionRequest {
            model: self.model,
            system: self.system,
            metadata: self.metadata,
        })
    }
}

/// `POST /v1/sessions` (the body is optional): `201` with the empty session.
async fn create(
    State(state): State<HttpState>,
    Owner(owner): Owner,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let params: SessionParams = if body.iter().all(u8::is_ascii_whitespace) {
        SessionParams::default()
    } else {
        decode_json(&body)?
    };
    let request = params.validate(state.engine().models())?;
    let row = state.engine().create_session(request, owner).await?;
    let mut response = (StatusCode::CREATED, Json(SessionObject::of(&row, &[]))).into_response();
    if let Ok(v) = format!("/v1/sessions/{}", row.id).parse() {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// `GET /v1/sessions/{id}`: the session and its turns.
async fn read(
    State(state): State<HttpState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let row = state
        .engine()
        .session(&id, owner.as_deref())
        .await?
        .ok_or_else(ApiError::session_not_found)?;
    let turns = state.engine().turns(&id).await?;
    Ok(Json(SessionObject::of(&row, &turns)).into_response())
}

/// `POST /v1/sessions/{id}/messages`: a user turn; answers like `POST /v1/streams`.
async fn message(
    State(state): State<HttpState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<CreateQuery>,
    headers: HeaderMap,
    JsonBody(mut params): JsonBody<StreamParams>,
) -> Result<Response, ApiError> {
    let wants_sse = wants_sse(&query, &headers)?;
    if params.session_id.as_ref().is_some_and(|s| *s != id) {
        return Err(ApiError::invalid(
            "`session_id` in the body differs from the session in the path",
        ));
    }
    params.session_id = Some(id);
    params.idempotency_key = idempotency_header(&headers)?;
    let started = state.start(params, owner, Via::Http).await?;
    Ok(started_response(&state, &started, wants_sse))
}

/// The session object: its settings and turns.
#[derive(Serialize)]
pub struct SessionObject<'a> {
    id: &'a str,
    object: &'static str,
    model: Option<&'a str>,
    system: Option<&'a str>,
    metadata: Option<Value>,
    created_at: String,
    turns: Vec<TurnObject<'a>>,
}

#[derive(Serialize)]
struct TurnObject<'a> {
    role: &'a str,
    content: &'a str,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_id: Option<&'a str>,
    /// With `stream_id`: the stream's status, `deleted` once it is gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a str>,
}

impl<'a> SessionObject<'a> {
    pub fn of(row: &'a SessionRow, turns: &'a [TurnRow]) -> Self {
        SessionObject {
            id: &row.id,
            object: "session",
            model: row.model.as_deref(),
            system: row.system.as_deref(),
            metadata: row
                .metadata
                .as_deref()
                .and_then(|m| serde_json::from_str::<Value>(m).ok()),
            created_at: rfc3339(row.created_at),
            turns: turns
                .iter()
                .map(|t| TurnObject {
                    role: &t.role,
                    content: t.content.as_deref().unwrap_or_default(),
                    created_at: rfc3339(t.created_at),
                    stream_id: t.stream_id.as_deref(),
                    status: t
                        .stream_id
                        .as_ref()
                        .map(|_| t.status.as_deref().unwrap_or("deleted")),
                })
                .collect(),
        }
    }
}
