//! Reading persisted events back: replay after a cursor, and a stream's text so far.

use super::{Store, StoreError};
use crate::event::{Event, EventKind};

impl Store {
    /// Up to `limit` events of `stream_id` with `seq > after`, in order.
    pub async fn events_after(
        &self,
        stream_id: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT seq, kind, data FROM events WHERE stream_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(stream_id)
        .bind(after as i64)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|(seq, kind, data)| {
                let kind = EventKind::parse(&kind).ok_or_else(|| {
                    StoreError::Corrupt(format!("event kind {kind:?} in {stream_id}"))
                })?;
                Ok(Event {
                    seq: seq.max(0) as u64,
                    kind,
                    data,
                })
            })
            .collect()
    }

    /// The concatenated text of every token event so far.
    pub async fn text(&self, stream_id: &str) -> Result<String, StoreError> {
        Ok(self.token_text(stream_id).await?.0)
    }

    /// The text of every token event so far, and how many there are.
    pub async fn token_text(&self, stream_id: &str) -> Result<(String, u64), StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT data FROM events WHERE stream_id = ? AND kind = 'token' ORDER BY seq",
        )
        .bind(stream_id)
        .fetch_all(&self.read)
        .await?;
        let mut text = String::new();
        let count = rows.len() as u64;
        for (data,) in rows {
            let value: serde_json::Value = serde_json::from_str(&data)
                .map_err(|e| StoreError::Corrupt(format!("token data of {stream_id}: {e}")))?;
            if let Some(t) = value.get("text").and_then(|t| t.as_str()) {
                text.push_str(t);
            }
        }
        Ok((text, count))
    }
}
