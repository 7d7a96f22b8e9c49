//! `/v1/sessions`: create a conversation, list the caller's (newest first, paginated
//! like `GET /v1/streams`), read one with its history, rename it or set its metadata,
//! delete it with its streams, and add a user turn. A turn is an ordinary stream
//! started on the one start path (same response forms as `POST /v1/streams`).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserializer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::auth::Owner;
use super::error::ApiError;
use super::extract::{JsonBody, QueryParams, RawBody, decode_json};
use super::listing::{ListQuery, Page};
use super::params::StreamParams;
use super::state::HttpState;
use super::streams::{CreateQuery, idempotency_header, started_response, wants_sse};
use crate::engine::{NewSessionRequest, SessionUpdate, Via};
use crate::event::rfc3339;
use crate::llm::Models;
use crate::store::{SessionRow, SessionSummary, TurnRow};

pub fn router() -> Router<HttpState> {
    Router::new()
        .route("/v1/sessions", post(create).get(list))
        .route("/v1/sessions/{id}", get(read).patch(update).delete(delete))
        .route("/v1/sessions/{id}/messages", post(message))
}

/// Longest title, in characters.
const MAX_TITLE_CHARS: usize = 200;
/// A title made from the first message is cut to this many characters.
const DERIVED_TITLE_CHARS: usize = 80;

/// A title as stored: trimmed, not empty, one line, at most [`MAX_TITLE_CHARS`].
fn valid_title(title: &str) -> Result<String, ApiError> {
    let title = title.trim();
    if title.is_empty() {
        return Err(ApiError::invalid(
            "`title` is empty; send null to go back to the first message",
        ));
    }
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(ApiError::invalid(format!(
            "`title` is longer than {MAX_TITLE_CHARS} characters"
        )));
    }
    if title.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "`title` has control characters (a title is one line)",
        ));
    }
    Ok(title.to_owned())
}

/// The title of a session whose client set none: its first message, on one line, cut.
fn derived_title(first: &str) -> String {
    let line = first.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= DERIVED_TITLE_CHARS {
        return line;
    }
    let mut cut: String = line.chars().take(DERIVED_TITLE_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// Longest system prompt, in bytes.
const MAX_SYSTEM_BYTES: usize = 64 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionParams {
    pub model: Option<String>,
    pub system: Option<String>,
    pub metadata: Option<Map<String, Value>>,
    pub title: Option<String>,
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
            title: self.title.as_deref().map(valid_title).transpose()?,
            chat_id: None,
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
    let summary = SessionSummary {
        row,
        first_message: None,
        last_turn_at: None,
        last_finished_at: None,
    };
    let row = &summary.row;
    let body = SessionObject::of(&summary, Some(&[]));
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
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
    let summary = state
        .engine()
        .session_summary(&id, owner.as_deref())
        .await?
        .ok_or_else(ApiError::session_not_found)?;
    let turns = state.engine().turns(&id).await?;
    Ok(Json(SessionObject::of(&summary, Some(&turns))).into_response())
}

/// `GET /v1/sessions`: the caller's sessions, newest first (by creation); `before` is
/// the last id of the previous page, as for `GET /v1/streams`.
async fn list(
    State(state): State<HttpState>,
    Owner(owner): Owner,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = query.limit()?;
    let before = query.before.as_deref();
    let Some(rows) = state
        .engine()
        .list_sessions(owner.as_deref(), before, limit + 1)
        .await?
    else {
        return Err(query.unknown_before("session"));
    };
    let page = Page::of(
        &rows,
        limit,
        |r| r.row.id.as_str(),
        |r| Ok(SessionObject::of(r, None)),
    )?;
    Ok(Json(page).into_response())
}

/// What `PATCH /v1/sessions/{id}` may change. An absent field stays; `null` clears it
/// (a title goes back to the first message).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionPatch {
    #[serde(default, deserialize_with = "present")]
    pub title: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub metadata: Option<Option<Map<String, Value>>>,
}

/// A field that is present, `null` included (absent is the `default`).
fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl SessionPatch {
    pub fn validate(self) -> Result<SessionUpdate, ApiError> {
        let title = match self.title {
            Some(Some(t)) => Some(Some(valid_title(&t)?)),
            other => other,
        };
        Ok(SessionUpdate {
            title,
            metadata: self.metadata,
        })
    }
}

/// `PATCH /v1/sessions/{id}`: renames the session or sets its metadata; answers the
/// session as it is now (without its turns). Bad input changes nothing.
async fn update(
    State(state): State<HttpState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
    JsonBody(patch): JsonBody<SessionPatch>,
) -> Result<Response, ApiError> {
    let update = patch.validate()?;
    let summary = state
        .engine()
        .update_session(&id, owner.as_deref(), update)
        .await?
        .ok_or_else(ApiError::session_not_found)?;
    Ok(Json(SessionObject::of(&summary, None)).into_response())
}

/// `DELETE /v1/sessions/{id}`: the session, its turns and their streams (a running
/// turn is cancelled first); `204`.
async fn delete(
    State(state): State<HttpState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.engine().delete_session(&id, owner.as_deref()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::session_not_found())
    }
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

/// The session object: its settings, title and last activity, and (reading one
/// session) its turns.
#[derive(Serialize)]
pub struct SessionObject<'a> {
    id: &'a str,
    object: &'static str,
    /// The client's title, else the first message (`null` before there is one).
    title: Option<String>,
    model: Option<&'a str>,
    system: Option<&'a str>,
    metadata: Option<Value>,
    created_at: String,
    /// The latest of its creation, its last turn's start and that turn's end.
    last_activity_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    turns: Option<Vec<TurnObject<'a>>>,
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
    /// An assistant turn's tool calls (once its stream completed), in OpenAI's shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Value>,
    /// A `tool` turn's results: `[{"tool_call_id", "content"}]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_results: Option<Vec<ToolResult>>,
}

#[derive(Serialize)]
struct ToolResult {
    tool_call_id: String,
    content: String,
}

/// A `tool` turn's results, from the messages it stored.
fn tool_results(turn: &TurnRow) -> Option<Vec<ToolResult>> {
    if turn.role != "tool" {
        return None;
    }
    turn.messages.as_ref()?;
    Some(
        turn.given_messages()
            .into_iter()
            .map(|m| ToolResult {
                tool_call_id: m.tool_call_id.unwrap_or_default(),
                content: m.content,
            })
            .collect(),
    )
}

impl<'a> SessionObject<'a> {
    pub fn of(summary: &'a SessionSummary, turns: Option<&'a [TurnRow]>) -> Self {
        let row: &SessionRow = &summary.row;
        SessionObject {
            id: &row.id,
            object: "session",
            title: row
                .title
                .clone()
                .or_else(|| summary.first_message.as_deref().map(derived_title)),
            model: row.model.as_deref(),
            system: row.system.as_deref(),
            metadata: row
                .metadata
                .as_deref()
                .and_then(|m| serde_json::from_str::<Value>(m).ok()),
            created_at: rfc3339(row.created_at),
            last_activity_at: rfc3339(summary.last_activity_at()),
            turns: turns.map(|turns| {
                turns
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
                        tool_calls: t
                            .tool_calls
                            .as_deref()
                            .and_then(|c| serde_json::from_str(c).ok()),
                        tool_results: tool_results(t),
                    })
                    .collect()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_one_trimmed_line_and_derived_ones_are_cut() {
        assert_eq!(valid_title("  Trip plans ").unwrap(), "Trip plans");
        assert!(valid_title("   ").is_err());
        assert!(valid_title("a\nb").is_err());
        assert!(valid_title(&"x".repeat(201)).is_err());
        assert_eq!(valid_title(&"é".repeat(200)).unwrap().chars().count(), 200);
        assert_eq!(derived_title("What is\n  spool?"), "What is spool?");
        let long = derived_title(&"word ".repeat(40));
        assert_eq!(long.chars().count(), 80);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn a_patch_tells_absent_from_null() {
        let p: SessionPatch = serde_json::from_str(r#"{"title": null}"#).unwrap();
        assert_eq!(p.title, Some(None));
        assert_eq!(p.metadata, None);
        let p: SessionPatch = serde_json::from_str(r#"{"metadata": {"k": 1}}"#).unwrap();
        assert!(p.title.is_none() && p.metadata.is_some());
        assert!(serde_json::from_str::<SessionPatch>(r#"{"titel": "x"}"#).is_err());
        assert!(serde_json::from_str::<SessionPatch>(r#"{"title": 3}"#).is_err());
        assert!(serde_json::from_str::<SessionPatch>(r#"{"metadata": []}"#).is_err());
    }
}
