//! Durable Stream rows: a name of the Durable Streams protocol, the spool stream that
//! holds its appends, and the configuration it was created with. Written with the
//! stream's create (`NewStream::ds`) and deleted with it; read here.

use sqlx::FromRow;

use super::{Store, StoreError, on_db};

/// What a new Durable Stream stores besides its spool stream.
#[derive(Debug, Clone)]
pub struct NewDs {
    pub name: String,
    pub content_type: String,
    pub ttl_seconds: Option<i64>,
    /// Absolute expiry, ms.
    pub expires_at: Option<i64>,
    /// Its messages are spool events (`{"seq","event","data"}`), stored as such.
    pub spool_events: bool,
}

/// A Durable Stream with its spool stream's state.
#[derive(Debug, Clone, FromRow)]
pub struct DsRow {
    pub name: String,
    pub owner: Option<String>,
    pub stream_id: String,
    pub content_type: String,
    pub ttl_seconds: Option<i64>,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub spool_events: bool,
    /// The spool stream's status and last seq.
    pub status: String,
    pub last_seq: i64,
}

impl Store {
    /// The Durable Stream named `name`, whoever owns it (the caller checks).
    pub async fn ds_stream(&self, name: &str) -> Result<Option<DsRow>, StoreError> {
        Ok(on_db!(
            &self.db,
            "SELECT d.name, d.owner, d.stream_id, d.content_type, d.ttl_seconds, d.expires_at, \
             d.created_at, d.spool_events, s.status, s.last_seq \
             FROM ds_streams d JOIN streams s ON s.id = d.stream_id WHERE d.name = ?",
            |pool, sql| sqlx::query_as::<_, DsRow>(sql)
                .bind(name)
                .fetch_optional(pool)
                .await?
        ))
    }
}
