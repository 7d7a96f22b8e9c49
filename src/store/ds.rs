//! Durable Stream rows: a name of the Durable Streams protocol, the spool stream that
//! holds its appends, and the configuration it was created with. Written with the
//! stream's create (`NewStream::ds`) and deleted with it; read here. Also the rows of
//! Durable Streams subscriptions (written by the writer as row edits).

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
    /// A fork: its source's name, the source offset (seq) it diverges at, and its
    /// sub-offset.
    pub fork: Option<(String, i64, i64)>,
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
    pub forked_from: Option<String>,
    pub fork_seq: Option<i64>,
    pub fork_sub: Option<i64>,
    pub soft_deleted: bool,
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
             d.created_at, d.spool_events, d.forked_from, d.fork_seq, d.fork_sub, d.soft_deleted, \
             s.status, s.last_seq \
             FROM ds_streams d JOIN streams s ON s.id = d.stream_id WHERE d.name = ?",
            |pool, sql| sqlx::query_as::<_, DsRow>(sql)
                .bind(name)
                .fetch_optional(pool)
                .await?
        ))
    }

    /// How many streams are forks of `name` (soft-deleted ones included: they still
    /// read through it).
    pub async fn ds_forks(&self, name: &str) -> Result<i64, StoreError> {
        Ok(on_db!(
            &self.db,
            "SELECT COUNT(*) FROM ds_streams WHERE forked_from = ?",
            |pool, sql| sqlx::query_scalar::<_, i64>(sql)
                .bind(name)
                .fetch_one(pool)
                .await?
        ))
    }
}

/// A Durable Streams subscription as stored (see `engine::subscriptions`).
#[derive(Debug, Clone, FromRow)]
pub struct SubscriptionRow {
    pub id: String,
    pub owner: Option<String>,
    /// Its normalized configuration, JSON.
    pub config: String,
    pub config_hash: String,
    pub created_at: i64,
    /// Its links, cursors, wake and lease, JSON.
    pub state: String,
}

impl Store {
    /// Every subscription, for a starting process.
    pub async fn ds_subscriptions(&self) -> Result<Vec<SubscriptionRow>, StoreError> {
        Ok(on_db!(
            &self.db,
            "SELECT id, owner, config, config_hash, created_at, state FROM ds_subscriptions",
            |pool, sql| sqlx::query_as::<_, SubscriptionRow>(sql)
                .fetch_all(pool)
                .await?
        ))
    }

    /// The name and owner of every Durable Stream not deleted (a new subscription's
    /// pattern is matched against them).
    pub async fn ds_names(&self) -> Result<Vec<(String, Option<String>)>, StoreError> {
        Ok(on_db!(
            &self.db,
            "SELECT name, owner FROM ds_streams WHERE soft_deleted = FALSE ORDER BY name",
            |pool, sql| sqlx::query_as::<_, (String, Option<String>)>(sql)
                .fetch_all(pool)
                .await?
        ))
    }
}
