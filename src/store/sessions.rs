//! Session rows: persisted conversations and their turns (reads; the writer inserts).

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
    pub created_at: i64,
}

/// The two turns a new stream of a session adds: the user's message (at `idx`) and
/// the assistant's answer (at `idx + 1`), which is the stream.
#[derive(Debug, Clone)]
pub struct NewTurn {
    pub session_id: String,
    pub idx: i64,
    pub content: String,
}

#[derive(Debug, Clone, FromRow)]
pub struct SessionRow {
    pub id: String,
    pub owner: Option<String>,
    pub model: Option<String>,
    pub system: Option<String>,
    pub metadata: Option<String>,
    pub created_at: i64,
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
}

impl Store {
    /// One session, if it exists and belongs to `owner`.
    pub async fn session(
        &self,
        id: &str,
        owner: Option<&str>,
    ) -> Result<Option<SessionRow>, StoreError> {
        Ok(on_db!(
            &self.db,
            "SELECT id, owner, model, system, metadata, created_at FROM sessions \
             WHERE id = ? AND owner IS ?",
            |pool, sql| sqlx::query_as::<_, SessionRow>(sql)
                .bind(id)
                .bind(owner)
                .fetch_optional(pool)
                .await?
        ))
    }

    /// A session's turns in order, each assistant turn with its text so far.
    pub async fn turns(&self, session_id: &str) -> Result<Vec<TurnRow>, StoreError> {
        let mut turns: Vec<TurnRow> = on_db!(
            &self.db,
            "SELECT t.idx, t.role, t.content, t.stream_id, t.created_at, s.status \
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
