//! Session rows: persisted conversations and their turns. Reads run on the pool; the
//! writer inserts sessions and turns, and applies [`SessionEdit`]s (a rename, new
//! metadata, a delete) as row edits (`store::edits`) inside its batches.

use sqlx::FromRow;

use super::{Store, StoreError, on_db};

/// A new session, as the writer inserts it.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: String,
    pub owner: Option<String>,
    pub model: Option<String>,
    pub system: Option<String>,
    /// Client metadata, as JSON.
    pub metadata: Option<String>,
    pub title: Option<String>,
    pub created_at: i64,
    /// The chat id a `/v1/chats` client gave it (unique per owner).
    pub chat_id: Option<String>,
}

/// The two turns a new stream of a session adds: the user's message or the tool
/// results (at `idx`) and the assistant's answer (at `idx + 1`), which is the stream.
#[derive(Debug, Clone)]
pub struct NewTurn {
    pub session_id: String,
    pub idx: i64,
    /// `user` or `tool`.
    pub role: &'static str,
    /// The user's message; for tool results, their contents one per line.
    pub content: String,
    /// A `tool` turn's results, as JSON (a list of tool messages).
    pub messages: Option<String>,
}

#[derive(Debug, Clone, FromRow)]
pub struct SessionRow {
    pub id: String,
    pub owner: Option<String>,
    pub model: Option<String>,
    pub system: Option<String>,
    pub metadata: Option<String>,
    /// Set by the client; `None`: the first user message stands for it.
    pub title: Option<String>,
    pub created_at: i64,
    /// The chat id of a `/v1/chats` chat.
    pub chat_id: Option<String>,
}

/// A session as `GET /v1/sessions` lists it: its row, and what its turns say about it.
#[derive(Debug, Clone, FromRow)]
pub struct SessionSummary {
    #[sqlx(flatten)]
    pub row: SessionRow,
    /// The content of its first user turn (the title when none was set).
    pub first_message: Option<String>,
    /// When its last turn was started.
    pub last_turn_at: Option<i64>,
    /// When its last turn's stream ended (`None` while it runs, or if it is gone).
    pub last_finished_at: Option<i64>,
}

impl SessionSummary {
    /// The latest of: its creation, its last turn's start, that turn's end.
    pub fn last_activity_at(&self) -> i64 {
        [self.last_turn_at, self.last_finished_at]
            .into_iter()
            .flatten()
            .fold(self.row.created_at, i64::max)
    }
}

/// A turn, with its stream's status (assistant turns).
#[derive(Debug, Clone, FromRow)]
pub struct TurnRow {
    pub idx: i64,
    pub role: String,
    /// `None` for an assistant turn whose stream has not ended: read its events.
    pub content: Option<String>,
    pub stream_id: Option<String>,
    pub created_at: i64,
    /// `None` if the stream was deleted.
    pub status: Option<String>,
    /// An assistant turn's tool calls (JSON, OpenAI's shape), once its stream completed.
    pub tool_calls: Option<String>,
    /// A `tool` turn's results (JSON, a list of tool messages).
    pub messages: Option<String>,
}

impl TurnRow {
    /// The messages the turn was given as (tool results, a user message with content
    /// parts); none for a turn given as text, or an answer.
    pub fn given_messages(&self) -> Vec<crate::llm::Message> {
        self.messages
            .as_deref()
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or_default()
    }

    /// An answer's tool calls, in OpenAI's shape (none before it completed).
    pub fn tool_call_values(&self) -> Vec<serde_json::Value> {
        self.tool_calls
            .as_deref()
            .and_then(|c| serde_json::from_str(c).ok())
            .unwrap_or_default()
    }
}

/// A change to a session the writer applies; answered with whether the session existed.
#[derive(Debug, Clone)]
pub enum SessionEdit {
    /// Sets what is `Some` (`Some(None)` clears it); the rest stays.
    Update {
        id: String,
        title: Option<Option<String>>,
        /// As JSON.
        metadata: Option<Option<String>>,
    },
    /// Deletes the session and its turns (its streams are deleted before, one by one).
    Delete { id: String },
    /// Deletes the turns from `idx` on (a regenerated answer: its stream is deleted
    /// before).
    Truncate { id: String, idx: i64 },
}

const COLUMNS: &str = "id, owner, model, system, metadata, title, created_at, chat_id";

/// The summary columns, after `s.`-qualified [`COLUMNS`].
const SUMMARY: &str = "s.id, s.owner, s.model, s.system, s.metadata, s.title, s.created_at, \
     s.chat_id, \
     (SELECT t.content FROM turns t WHERE t.session_id = s.id AND t.idx = 0) AS first_message, \
     (SELECT t.created_at FROM turns t WHERE t.session_id = s.id \
      ORDER BY t.idx DESC LIMIT 1) AS last_turn_at, \
     (SELECT st.finished_at FROM turns t JOIN streams st ON st.id = t.stream_id \
      WHERE t.session_id = s.id ORDER BY t.idx DESC LIMIT 1) AS last_finished_at";

/// Where a page of the newest-first listing of sessions starts: just below this one.
#[derive(Debug, Clone)]
pub struct SessionCursor {
    pub created_at: i64,
    pub id: String,
}

impl Store {
    /// One session, if it exists and belongs to `owner`.
    pub async fn session(
        &self,
        id: &str,
        owner: Option<&str>,
    ) -> Result<Option<SessionRow>, StoreError> {
        let text = format!("SELECT {COLUMNS} FROM sessions WHERE id = ? AND owner IS ?");
        Ok(on_db!(&self.db, text, |pool, sql| sqlx::query_as::<
            _,
            SessionRow,
        >(sql)
        .bind(id)
        .bind(owner)
        .fetch_optional(pool)
        .await?))
    }

    /// The session of `owner`'s chat `chat_id`, if it has been started.
    pub async fn chat_session(
        &self,
        chat_id: &str,
        owner: Option<&str>,
    ) -> Result<Option<SessionRow>, StoreError> {
        let text = format!("SELECT {COLUMNS} FROM sessions WHERE chat_id = ? AND owner IS ?");
        Ok(on_db!(&self.db, text, |pool, sql| sqlx::query_as::<
            _,
            SessionRow,
        >(sql)
        .bind(chat_id)
        .bind(owner)
        .fetch_optional(pool)
        .await?))
    }

    /// One session, whoever owns it: for continuing a turn after a crash.
    pub async fn session_unscoped(&self, id: &str) -> Result<Option<SessionRow>, StoreError> {
        let text = format!("SELECT {COLUMNS} FROM sessions WHERE id = ?");
        Ok(on_db!(&self.db, text, |pool, sql| sqlx::query_as::<
            _,
            SessionRow,
        >(sql)
        .bind(id)
        .fetch_optional(pool)
        .await?))
    }

    /// One session with what its turns say about it, if it belongs to `owner`.
    pub async fn session_summary(
        &self,
        id: &str,
        owner: Option<&str>,
    ) -> Result<Option<SessionSummary>, StoreError> {
        let text = format!("SELECT {SUMMARY} FROM sessions s WHERE s.id = ? AND s.owner IS ?");
        Ok(on_db!(&self.db, text, |pool, sql| sqlx::query_as::<
            _,
            SessionSummary,
        >(sql)
        .bind(id)
        .bind(owner)
        .fetch_optional(pool)
        .await?))
    }

    /// The owner's sessions, newest first, strictly below `before`.
    pub async fn list_sessions(
        &self,
        owner: Option<&str>,
        before: Option<&SessionCursor>,
        limit: u32,
    ) -> Result<Vec<SessionSummary>, StoreError> {
        let rows = match before {
            None => {
                let text = format!(
                    "SELECT {SUMMARY} FROM sessions s WHERE s.owner IS ? \
                     ORDER BY s.created_at DESC, s.id DESC LIMIT ?"
                );
                on_db!(&self.db, text, |pool, sql| sqlx::query_as::<
                    _,
                    SessionSummary,
                >(sql)
                .bind(owner)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?)
            }
            Some(c) => {
                let text = format!(
                    "SELECT {SUMMARY} FROM sessions s WHERE s.owner IS ? \
                     AND (s.created_at < ? OR (s.created_at = ? AND s.id < ?)) \
                     ORDER BY s.created_at DESC, s.id DESC LIMIT ?"
                );
                on_db!(&self.db, text, |pool, sql| sqlx::query_as::<
                    _,
                    SessionSummary,
                >(sql)
                .bind(owner)
                .bind(c.created_at)
                .bind(c.created_at)
                .bind(&c.id)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?)
            }
        };
        Ok(rows)
    }

    /// The streams of a session's turns, oldest first.
    pub async fn turn_streams(&self, session_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(on_db!(
            &self.db,
            "SELECT stream_id FROM turns WHERE session_id = ? AND stream_id IS NOT NULL \
             ORDER BY idx",
            |pool, sql| sqlx::query_scalar::<_, String>(sql)
                .bind(session_id)
                .fetch_all(pool)
                .await?
        ))
    }

    /// A session's turns in order, each assistant turn with its text so far.
    pub async fn turns(&self, session_id: &str) -> Result<Vec<TurnRow>, StoreError> {
        let mut turns: Vec<TurnRow> = on_db!(
            &self.db,
            "SELECT t.idx, t.role, t.content, t.stream_id, t.created_at, s.status, \
             t.tool_calls, t.messages \
             FROM turns t LEFT JOIN streams s ON s.id = t.stream_id \
             WHERE t.session_id = ? ORDER BY t.idx",
            |pool, sql| sqlx::query_as::<_, TurnRow>(sql)
                .bind(session_id)
                .fetch_all(pool)
                .await?
        );
        for turn in &mut turns {
            if turn.content.is_none()
                && let Some(stream) = &turn.stream_id
            {
                turn.content = Some(self.text(stream).await?);
            }
        }
        Ok(turns)
    }
}
