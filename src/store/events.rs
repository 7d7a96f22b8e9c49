//! Reading persisted events back: replay after a cursor, a stream's text so far, and
//! what a backend needs to continue it after a crash.

use super::batch::decode_ids;
use super::{Store, StoreError, on_db};
use crate::event::{Event, EventKind};
use crate::llm::Continuation;

/// An `events` row of `stream_id` as an event.
pub(super) fn stored_event(
    stream_id: &str,
    seq: i64,
    kind: &str,
    data: String,
) -> Result<Event, StoreError> {
    let kind = EventKind::parse(kind)
        .ok_or_else(|| StoreError::Corrupt(format!("event kind {kind:?} in {stream_id}")))?;
    Ok(Event {
        seq: seq.max(0) as u64,
        kind,
        data,
    })
}

impl Store {
    /// Up to `limit` events of `stream_id` with `seq > after`, in order.
    pub async fn events_after(
        &self,
        stream_id: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        let rows: Vec<(i64, String, String)> = on_db!(
            &self.db,
            "SELECT seq, kind, data FROM events WHERE stream_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            |pool, sql| sqlx::query_as(sql)
                .bind(stream_id)
                .bind(after as i64)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        );
        rows.into_iter()
            .map(|(seq, kind, data)| stored_event(stream_id, seq, &kind, data))
            .collect()
    }

    /// What a backend needs to continue a stream after a crash: the token ids stored
    /// with its events, the text stored after the last event that had ids, and all of
    /// its text.
    pub async fn continuation(&self, stream_id: &str) -> Result<Continuation, StoreError> {
        let rows: Vec<(String, Option<Vec<u8>>)> = on_db!(
            &self.db,
            "SELECT data, ids FROM events WHERE stream_id = ? AND kind = 'token' ORDER BY seq",
            |pool, sql| sqlx::query_as(sql).bind(stream_id).fetch_all(pool).await?
        );
        let mut c = Continuation::default();
        for (data, ids) in rows {
            let text = token_text(stream_id, &data)?;
            c.text.push_str(&text);
            match ids {
                Some(ids) => {
                    c.ids.extend(decode_ids(&ids));
                    c.unstored_text.clear();
                }
                None => c.unstored_text.push_str(&text),
            }
        }
        Ok(c)
    }

    /// The concatenated text of every token event so far.
    pub async fn text(&self, stream_id: &str) -> Result<String, StoreError> {
        let rows: Vec<(String,)> = on_db!(
            &self.db,
            "SELECT data FROM events WHERE stream_id = ? AND kind = 'token' ORDER BY seq",
            |pool, sql| sqlx::query_as(sql).bind(stream_id).fetch_all(pool).await?
        );
        let mut text = String::new();
        for (data,) in rows {
            text.push_str(&token_text(stream_id, &data)?);
        }
        Ok(text)
    }
}

fn token_text(stream_id: &str, data: &str) -> Result<String, StoreError> {
    let value: serde_json::Value = serde_json::from_str(data)
        .map_err(|e| StoreError::Corrupt(format!("token data of {stream_id}: {e}")))?;
    Ok(value
        .get("text")
        .and_then(|t| t.as_str())
        .unwrap_or_default()
        .to_owned())
}
