//! Reading persisted events back: replay after a cursor, a stream's text so far, and
//! what a backend needs to continue it after a crash.
//!
//! Events are stored as chunks (see [`super::chunk`]): a read after a cursor is one
//! range query on the chunk index — the chunks with `last_seq > cursor` and
//! `first_seq <= cursor + limit`, in order — and the first is trimmed to the events
//! after the cursor. Seqs have no gaps, so those chunks hold exactly the events asked
//! for, plus at most the start of the first and the end of the last.

use super::chunk::{self, BadChunk};
use super::{Store, StoreError, on_db};
use crate::event::{Event, EventKind};
use crate::llm::Continuation;

/// The chunks of a stream whose events reach past `after` and begin by `until`.
const CHUNKS_AFTER: &str = "SELECT first_seq, data FROM chunks \
     WHERE stream_key = (SELECT key FROM streams WHERE id = ?) \
     AND last_seq > ? AND first_seq <= ? ORDER BY last_seq";

/// Every chunk of a stream, in order.
const ALL_CHUNKS: &str = "SELECT first_seq, data FROM chunks \
     WHERE stream_key = (SELECT key FROM streams WHERE id = ?) ORDER BY last_seq";

/// A seq as a database integer.
fn db_seq(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn corrupt(stream_id: &str, e: BadChunk) -> StoreError {
    StoreError::Corrupt(format!("{stream_id}: {e}"))
}

/// Appends to `out` the events of chunk rows (`first_seq`, bytes) with `seq > after`,
/// up to `limit` in all.
pub(super) fn events_of(
    stream_id: &str,
    rows: &[(i64, Vec<u8>)],
    after: u64,
    limit: usize,
    out: &mut Vec<Event>,
) -> Result<(), StoreError> {
    for (first, data) in rows {
        if out.len() >= limit {
            break;
        }
        for stored in
            chunk::read(data, (*first).max(0) as u64).map_err(|e| corrupt(stream_id, e))?
        {
            if stored.seq > after && out.len() < limit {
                out.push(stored.to_event());
            }
        }
    }
    Ok(())
}

impl Store {
    /// Up to `limit` events of `stream_id` with `seq > after`, in order.
    pub async fn events_after(
        &self,
        stream_id: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        let until = after.saturating_add(u64::from(limit));
        let rows: Vec<(i64, Vec<u8>)> = on_db!(&self.db, CHUNKS_AFTER, |pool, sql| {
            sqlx::query_as(sql)
                .bind(stream_id)
                .bind(db_seq(after))
                .bind(db_seq(until))
                .fetch_all(pool)
                .await?
        });
        let mut out = Vec::with_capacity(limit.min(1024) as usize);
        events_of(stream_id, &rows, after, limit as usize, &mut out)?;
        Ok(out)
    }

    /// Every chunk of a stream, in order.
    async fn all_chunks(&self, stream_id: &str) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        Ok(on_db!(&self.db, ALL_CHUNKS, |pool, sql| sqlx::query_as(
            sql
        )
        .bind(stream_id)
        .fetch_all(pool)
        .await?))
    }

    /// What a backend needs to continue a stream after a crash: the token ids stored
    /// with its events, the text stored after the last event that had ids, and all of
    /// its text.
    pub async fn continuation(&self, stream_id: &str) -> Result<Continuation, StoreError> {
        let rows = self.all_chunks(stream_id).await?;
        let mut c = Continuation::default();
        for (first, data) in &rows {
            let events =
                chunk::read(data, (*first).max(0) as u64).map_err(|e| corrupt(stream_id, e))?;
            for stored in events.iter().filter(|s| s.kind == EventKind::Token) {
                let text = token_text(stream_id, stored.data)?;
                c.text.push_str(&text);
                let ids = stored.ids();
                if ids.is_empty() {
                    c.unstored_text.push_str(&text);
                } else {
                    c.ids.extend(ids);
                    c.unstored_text.clear();
                }
            }
        }
        Ok(c)
    }

    /// The concatenated text of every token event so far.
    pub async fn text(&self, stream_id: &str) -> Result<String, StoreError> {
        let rows = self.all_chunks(stream_id).await?;
        let mut text = String::new();
        for (first, data) in &rows {
            let events =
                chunk::read(data, (*first).max(0) as u64).map_err(|e| corrupt(stream_id, e))?;
            for stored in events.iter().filter(|s| s.kind == EventKind::Token) {
                text.push_str(&token_text(stream_id, stored.data)?);
            }
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
