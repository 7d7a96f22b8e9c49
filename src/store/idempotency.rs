//! Idempotency keys: a request that starts a stream may carry one (`Idempotency-Key`);
//! a retry with the same key and owner within [`KEY_TTL`] gets the same stream back. A
//! key's row is written in the transaction that creates its stream (see the batch
//! writers), so a key never points at a stream that was not created, and deleted with
//! it.

use std::time::Duration;

use super::{Store, StoreError, on_db};

/// How long a key is remembered.
pub const KEY_TTL: Duration = Duration::from_secs(24 * 3600);
pub(super) const KEY_TTL_MS: i64 = KEY_TTL.as_millis() as i64;

/// The key a new stream is created under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The API key's owner, `""` without keys.
    pub owner: String,
    pub key: String,
    /// A digest of the validated request: a retry must send the same request.
    pub request_hash: String,
    /// `created_at` before which a key is forgotten (ms), for the insert to replace it.
    pub expired_before: i64,
}

/// The upsert that records a key for a new stream. It replaces a row only when that
/// row has expired (a deleted stream's key is deleted with it); a live row makes it
/// change nothing (0 rows), which the writer treats as a conflict. The condition reads
/// only the conflicting row itself, so that on PostgreSQL a second transaction waiting
/// on the first's insert judges the row the first committed. Binds: owner, key, hash,
/// stream id, created_at, expired_before.
pub(super) const RECORD: &str = "INSERT INTO idempotency_keys \
     (owner, key, request_hash, stream_id, created_at) VALUES (?, ?, ?, ?, ?) \
     ON CONFLICT (owner, key) DO UPDATE SET request_hash = excluded.request_hash, \
     stream_id = excluded.stream_id, created_at = excluded.created_at \
     WHERE idempotency_keys.created_at < ?";

/// Forgets keys older than the bound.
pub(super) const FORGET: &str = "DELETE FROM idempotency_keys WHERE created_at < ?";

/// A key as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRow {
    pub request_hash: String,
    pub stream_id: String,
}

impl Store {
    /// The stream `owner` started under `key` since `since` (ms), if it still exists.
    pub async fn idempotent(
        &self,
        owner: &str,
        key: &str,
        since: i64,
    ) -> Result<Option<KeyRow>, StoreError> {
        let text = "SELECT k.request_hash, k.stream_id FROM idempotency_keys k \
             JOIN streams s ON s.id = k.stream_id \
             WHERE k.owner = ? AND k.key = ? AND k.created_at >= ?";
        Ok(on_db!(&self.db, text, |pool, sql| sqlx::query_as::<
            _,
            KeyRow,
        >(sql)
        .bind(owner)
        .bind(key)
        .bind(since)
        .fetch_optional(pool)
        .await?))
    }
}
