//! The SQL of several nodes sharing one database: leases, the sweep of a dead node's
//! streams, cancel routing, and the `LISTEN` connection. The timing (when to renew,
//! when to sweep, what to do with a notification) is [`crate::cluster`]'s.

use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};

use super::{CANCEL_CHANNEL, EVENTS_CHANNEL, batch};
use crate::event::{Event, StreamStatus, now_ms};
use crate::hub::{DELIVER_MAX, ToDeliver};
use crate::store::events::stored_event;
use crate::store::{Db, INTERRUPTED, INTERRUPTED_MESSAGE, Store, StoreError, Unfinished};

/// Takes or renews `node`'s lease until `lease` from now (the database's clock).
/// Returns false if the row was missing: the lease had expired and a survivor swept
/// this node, or it is the first time.
pub async fn heartbeat(
    conn: impl sqlx::PgExecutor<'_>,
    node: &str,
    lease: Duration,
) -> Result<bool, sqlx::Error> {
    let renewed: bool = sqlx::query_scalar(
        "INSERT INTO nodes (id, expires_at) VALUES ($1, now() + make_interval(secs => $2)) \
         ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at \
         RETURNING xmax <> 0",
    )
    .bind(node)
    .bind(lease.as_secs_f64())
    .fetch_one(conn)
    .await?;
    Ok(renewed)
}

/// What one sweep did.
#[derive(Debug, Default)]
pub struct Sweep {
    /// The dead nodes whose leases were taken.
    pub dead: Vec<String>,
    /// Streams ended `interrupted`, with the seq of their terminal event.
    pub ended: Vec<SweptStream>,
    /// Streams now owned by this node, for it to continue.
    pub claimed: Vec<Unfinished>,
}

#[derive(Debug, Clone)]
pub struct SweptStream {
    pub id: String,
    pub seq: u64,
}

impl Store {
    /// Renews this node's lease (see [`heartbeat`]). Only on PostgreSQL.
    pub async fn renew_lease(&self, lease: Duration) -> Result<bool, StoreError> {
        match &self.db {
            Db::Postgres(pool) => Ok(heartbeat(pool, self.node(), lease).await?),
            Db::Sqlite(_) => Ok(true),
        }
    }

    /// Gives up this node's lease at a graceful stop, once its streams have ended.
    pub async fn release_lease(&self) -> Result<(), StoreError> {
        if let Db::Postgres(pool) = &self.db {
            sqlx::query("DELETE FROM nodes WHERE id = $1")
                .bind(self.node())
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// One sweep, in one transaction: takes the expired leases no other node is
    /// sweeping (`FOR UPDATE SKIP LOCKED`), and the open streams of those nodes or of
    /// no live node at all; ends each with an `interrupted` event, or claims it for
    /// this node when `continuable(model)`; deletes the dead leases; and notifies
    /// readers of the ended streams. Exactly one node sweeps each stream.
    pub async fn sweep(
        &self,
        continuable: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Sweep, StoreError> {
        let Db::Postgres(pool) = &self.db else {
            return Ok(Sweep::default());
        };
        let me = self.node();
        let mut conn = pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let dead: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM nodes WHERE expires_at < now() AND id <> $1 \
             FOR UPDATE SKIP LOCKED",
        )
        .bind(me)
        .fetch_all(&mut *tx)
        .await?;
        let open: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT s.id, s.model, s.params, s.last_seq FROM streams s \
             WHERE s.status IN ('queued', 'running') AND s.node IS DISTINCT FROM $1 \
             AND (s.node = ANY($2) OR s.node IS NULL \
                  OR NOT EXISTS (SELECT 1 FROM nodes n WHERE n.id = s.node)) \
             FOR UPDATE OF s SKIP LOCKED",
        )
        .bind(me)
        .bind(&dead)
        .fetch_all(&mut *tx)
        .await?;
        let mut sweep = Sweep {
            dead,
            ..Sweep::default()
        };
        if open.is_empty() && sweep.dead.is_empty() {
            return Ok(sweep);
        }
        let now = now_ms();
        for (id, model, params, last_seq) in open {
            let last_seq = last_seq.max(0) as u64;
            if continuable(&model) {
                sqlx::query("UPDATE streams SET node = $1 WHERE id = $2")
                    .bind(me)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                sweep.claimed.push(Unfinished {
                    id,
                    model,
                    params,
                    last_seq,
                });
                continue;
            }
            let seq = last_seq + 1;
            let event = Event::error(seq, INTERRUPTED, INTERRUPTED_MESSAGE);
            sqlx::query("INSERT INTO events (stream_id, seq, kind, data) VALUES ($1, $2, $3, $4)")
                .bind(&id)
                .bind(seq as i64)
                .bind(event.kind.as_str())
                .bind(&event.data)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE streams SET status = $1, error_code = $2, error_message = $3, \
                 finished_at = $4, started_at = COALESCE(started_at, $4), last_seq = $5 \
                 WHERE id = $6",
            )
            .bind(StreamStatus::Interrupted.as_str())
            .bind(INTERRUPTED)
            .bind(INTERRUPTED_MESSAGE)
            .bind(now)
            .bind(seq as i64)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
            sweep.ended.push(SweptStream { id, seq });
        }
        sqlx::query("DELETE FROM nodes WHERE id = ANY($1)")
            .bind(&sweep.dead)
            .execute(&mut *tx)
            .await?;
        for payload in batch::notifications(me, sweep.ended.iter().map(|s| (s.id.as_str(), s.seq)))
        {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(EVENTS_CHANNEL)
                .bind(payload)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(sweep)
    }

    /// The events after `after` of each stream, up to [`DELIVER_MAX`] each, in one
    /// query; one list per stream, in seq order. What the cluster listener reads once
    /// for all of this node's readers of streams generated elsewhere. Empty lists on
    /// SQLite.
    pub async fn events_after_each(
        &self,
        streams: &[ToDeliver],
    ) -> Result<Vec<Vec<Event>>, StoreError> {
        let mut out = vec![Vec::new(); streams.len()];
        let Db::Postgres(pool) = &self.db else {
            return Ok(out);
        };
        let rows: Vec<(i64, i64, String, String)> = sqlx::query_as(
            "SELECT v.i, e.seq, e.kind, e.data \
             FROM UNNEST($1::text[], $2::bigint[]) WITH ORDINALITY AS v(id, after, i) \
             CROSS JOIN LATERAL (SELECT seq, kind, data FROM events \
             WHERE stream_id = v.id AND seq > v.after ORDER BY seq LIMIT $3) e \
             ORDER BY v.i, e.seq",
        )
        .bind(streams.iter().map(|d| &*d.stream_id).collect::<Vec<_>>())
        .bind(streams.iter().map(|d| d.after as i64).collect::<Vec<_>>())
        .bind(DELIVER_MAX as i64)
        .fetch_all(pool)
        .await?;
        for (i, seq, kind, data) in rows {
            let at = usize::try_from(i - 1).ok().filter(|&at| at < streams.len());
            if let Some(at) = at {
                out[at].push(stored_event(&streams[at].stream_id, seq, &kind, data)?);
            }
        }
        Ok(out)
    }

    /// Asks whichever node runs `stream_id` to cancel it. Only on PostgreSQL.
    pub async fn route_cancel(&self, stream_id: &str) -> Result<(), StoreError> {
        if let Db::Postgres(pool) = &self.db {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CANCEL_CHANNEL)
                .bind(stream_id)
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// A connection that listens for other nodes' commits and cancels, on its own
    /// one-connection pool (so it can be told apart in `pg_stat_activity`). `None` on
    /// SQLite.
    pub async fn listen(&self) -> Result<Option<Listener>, StoreError> {
        let Db::Postgres(pool) = &self.db else {
            return Ok(None);
        };
        let options = pool
            .connect_options()
            .as_ref()
            .clone()
            .application_name(&format!("spool-listen-{}", self.node()));
        let own = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        let mut listener = PgListener::connect_with(&own).await?;
        listener.ignore_pool_close_event(true);
        listener
            .listen_all([EVENTS_CHANNEL, CANCEL_CHANNEL])
            .await?;
        Ok(Some(Listener {
            listener,
            _pool: own,
        }))
    }
}

/// The `LISTEN` connection (see [`Store::listen`]).
pub struct Listener {
    listener: PgListener,
    _pool: PgPool,
}

/// What a notification says.
#[derive(Debug)]
pub enum Notice {
    /// These streams have committed events up to these seqs.
    Committed(Vec<(String, u64)>),
    /// Cancel this stream if it runs here.
    Cancel(String),
    /// The connection was lost (and is being re-established): anything may have been
    /// missed.
    Lost,
}

impl Listener {
    /// The next notice. A lost connection gives [`Notice::Lost`] once; the next call
    /// reconnects and listens again (or fails, to be retried).
    pub async fn recv(&mut self) -> Result<Notice, StoreError> {
        loop {
            let Some(n) = self.listener.try_recv().await? else {
                return Ok(Notice::Lost);
            };
            match n.channel() {
                CANCEL_CHANNEL => return Ok(Notice::Cancel(n.payload().to_owned())),
                EVENTS_CHANNEL => {
                    if let Some((_, pairs)) = batch::parse_notification(n.payload()) {
                        return Ok(Notice::Committed(
                            pairs
                                .into_iter()
                                .map(|(id, seq)| (id.to_owned(), seq))
                                .collect(),
                        ));
                    }
                }
                _ => {}
            }
        }
    }
}
