//! `/v1/sessions`: create a conversation, read its history, add a user turn. A turn is
//! an ordinary stream (same response forms as `POST /v1/streams`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::auth::Owner;
use super::error::ApiError;
use super::extract::{JsonBody, QueryParams, decode_json};
use super::params::StreamParams;
use super::streams::{CreateQuery, started_response, wants_sse};
use crate::app::AppState;
use crate::engine::{NewSessionRequest, SayError, Started};
use crate::event::rfc3339;
use crate::ids::looks_like_session_id;
use crate::store::{SessionRow, TurnRow};

pub fn router() -> Router<AppState> {
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
    pub fn validate(self, state: &AppState) -> Result<NewSessionRequest, ApiError> {
        if let Some(model) = &self.model
            && state.engine.models().get(model).is_none()
        {
            let available = state.engine.models().names();
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "model_not_found",
                format!(
                    "unknown model {model:?}; available: {}",
                    available.join(", ")
                ),
            ));
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
    State(state): State<AppState>,
    Owner(owner): Owner,
    body: Bytes,
) -> Result<Response, ApiError> {
    let params: SessionParams = if body.iter().all(u8::is_ascii_whitespace) {
        SessionParams::default()
    } else {
        decode_json(&body)?
    };
    let row = state
        .engine
        .create_session(params.validate(&state)?, owner)
        .await?;
    let mut response = (StatusCode::CREATED, Json(describe(&row, &[]))).into_response();
    if let Ok(v) = format!("/v1/sessions/{}", row.id).parse() {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// `GET /v1/sessions/{id}`: the session and its turns.
async fn read(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let row = find(&state, &id, owner.as_deref()).await?;
    let turns = state.store.turns(&id).await?;
    Ok(Json(describe(&row, &turns)))
}

/// `POST /v1/sessions/{id}/messages`: a user turn; answers like `POST /v1/streams`.
async fn message(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<CreateQuery>,
    headers: HeaderMap,
    JsonBody(params): JsonBody<StreamParams>,
) -> Result<Response, ApiError> {
    let wants_sse = wants_sse(&query, &headers)?;
    if params.session_id.as_ref().is_some_and(|s| *s != id) {
        return Err(ApiError::invalid(
            "`session_id` in the body differs from the session in the path",
        ));
    }
    let started = say(&state, &id, params, owner).await?;
    Ok(started_response(&state, &started, wants_sse))
}

/// Starts the next turn of session `id` with `params` (its `content` or `prompt`).
pub async fn say(
    state: &AppState,
    id: &str,
    params: StreamParams,
    owner: Option<String>,
) -> Result<Started, ApiError> {
    let session = find(state, id, owner.as_deref()).await?;
    let request = params.validate_turn(
        &state.config,
        state.engine.models(),
        session.model.as_deref(),
    )?;
    state
        .engine
        .say(&session, request, owner)
        .await
        .map_err(|e| match e {
            SayError::TurnInProgress => ApiError::new(
                StatusCode::CONFLICT,
                "turn_in_progress",
                "the previous turn of this session is still running; wait for its end or cancel it",
            ),
            SayError::Start(e) => e.into(),
            SayError::Store(e) => e.into(),
        })
}

pub async fn find(state: &AppState, id: &str, owner: Option<&str>) -> Result<SessionRow, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "session_not_found",
            "no such session",
        )
    };
    if !looks_like_session_id(id) {
        return Err(not_found());
    }
    state.store.session(id, owner).await?.ok_or_else(not_found)
}

/// The session object: its settings and turns.
pub fn describe(row: &SessionRow, turns: &[TurnRow]) -> Value {
    let metadata = row
        .metadata
        .as_deref()
        .and_then(|m| serde_json::from_str::<Value>(m).ok());
    json!({
        "id": row.id,
        "object": "session",
        "model": row.model,
        "system": row.system,
        "metadata": metadata,
        "created_at": rfc3339(row.created_at),
        "turns": turns.iter().map(|t| {
            let mut turn = json!({
                "role": t.role,
                "content": t.content.clone().unwrap_or_default(),
                "created_at": rfc3339(t.created_at),
            });
            if let Some(stream) = &t.stream_id {
                turn["stream_id"] = Value::from(stream.as_str());
                turn["status"] = t.status.clone().map_or(Value::from("deleted"), Value::from);
            }
            turn
        }).collect::<Vec<_>>(),
    })
}
