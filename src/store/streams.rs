//! Stream rows: what is stored about a generation besides its events.

use sqlx::FromRow;

use super::idempotency::IdempotencyKey;
use super::sessions::NewTurn;
use super::{Store, StoreError, on_db};
use crate::event::{FinishReason, StreamStatus, Usage};
use crate::llm::GenerateRequest;

/// A new stream, as the writer inserts it.
#[derive(Debug, Clone)]
pub struct NewStream {
    pub id: String,
    pub owner: Option<String>,
    pub model: String,
    /// The validated request, as JSON.
    pub params: String,
    pub created_at: i64,
    /// Set when the stream answers a turn of a session.
    pub turn: Option<NewTurn>,
    /// Set when the request carried an `Idempotency-Key`.
    pub idempotency: Option<IdempotencyKey>,
    /// Set for a Durable Stream: its name and configuration.
    pub ds: Option<Box<super::ds::NewDs>>,
}

/// A stream as stored.
#[derive(Debug, Clone, FromRow)]
pub struct StreamRow {
    pub id: String,
    pub owner: Option<String>,
    pub status: String,
    pub model: String,
    pub params: String,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub finish_reason: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub last_seq: i64,
}

impl StreamRow {
    pub fn status(&self) -> Result<StreamStatus, StoreError> {
        StreamStatus::parse(&self.status).ok_or_else(|| {
            StoreError::Corrupt(format!("stream {} has status {:?}", self.id, self.status))
        })
    }

    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish_reason.as_deref().and_then(FinishReason::parse)
    }

    pub fn usage(&self) -> Option<Usage> {
        match (self.prompt_tokens, self.completion_tokens) {
            (Some(p), Some(c)) => Some(Usage {
                prompt_tokens: p.max(0) as u32,
                completion_tokens: c.max(0) as u32,
                session_turns: self
                    .request()
                    .ok()
                    .and_then(|r| r.session_turn)
                    .map(|t| t.used),
            }),
            _ => None,
        }
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq.max(0) as u64
    }

    /// The validated request the stream was started with, as it was stored.
    pub fn request(&self) -> Result<GenerateRequest, StoreError> {
        serde_json::from_str(&self.params).map_err(|e| {
            StoreError::Corrupt(format!("stream {} has an unreadable request: {e}", self.id))
        })
    }
}

/// Where a page of the newest-first listing starts: just below this stream.
#[derive(Debug, Clone)]
pub struct ListCursor {
    pub created_at: i64,
    pub id: String,
}

const COLUMNS: &str = "id, owner, status, model, params, created_at, started_at, finished_at, \
     finish_reason, error_code, error_message, prompt_tokens, completion_tokens, last_seq";

impl Store {
    /// One stream, if it exists and belongs to `owner`.
    pub async fn stream(
        &self,
        id: &str,
        owner: Option<&str>,
    ) -> Result<Option<StreamRow>, StoreError> {
        let text = format!("SELECT {COLUMNS} FROM streams WHERE id = ? AND owner IS ?");
        Ok(on_db!(&self.db, text, |pool, sql| sqlx::query_as::<
            _,
            StreamRow,
        >(sql)
        .bind(id)
        .bind(owner)
        .fetch_optional(pool)
        .await?))
    }

    /// One stream, whoever owns it: only for a request that proved its right to it
    /// otherwise (a read token).
    pub async fn stream_unscoped(&self, id: &str) -> Result<Option<StreamRow>, StoreError> {
        let text = format!("SELECT {COLUMNS} FROM streams WHERE id = ?");
        Ok(on_db!(&self.db, text, |pool, sql| sqlx::query_as::<
            _,
            StreamRow,
        >(sql)
        .bind(id)
        .fetch_optional(pool)
        .await?))
    }

    /// The owner's streams, newest first, strictly below `before`.
    pub async fn list_streams(
        &self,
        owner: Option<&str>,
        before: Option<&ListCursor>,
        limit: u32,
    ) -> Result<Vec<StreamRow>, StoreError> {
        let rows = match before {
            None => {
                let text = format!(
                    "SELECT {COLUMNS} FROM streams WHERE owner IS ? \
                     ORDER BY created_at DESC, id DESC LIMIT ?"
                );
                on_db!(&self.db, text, |pool, sql| sqlx::query_as::<_, StreamRow>(
                    sql
                )
                .bind(owner)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?)
            }
            Some(c) => {
                let text = format!(
                    "SELECT {COLUMNS} FROM streams WHERE owner IS ? \
                     AND (created_at < ? OR (created_at = ? AND id < ?)) \
                     ORDER BY created_at DESC, id DESC LIMIT ?"
                );
                on_db!(&self.db, text, |pool, sql| sqlx::query_as::<_, StreamRow>(
                    sql
                )
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
}
