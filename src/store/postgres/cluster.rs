//! The SQL of several nodes sharing one database: leases, the sweep of a dead node's
//! streams, cancel routing, and the `LISTEN` connection. The timing (when to renew,
//! when to sweep, what to do with a notification) is [`crate::cluster`]'s.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgListener, PgPool, PgPoolOptions};

use super::{CANCEL_CHANNEL, EVENTS_CHANNEL, batch};
use crate::event::Event;
use crate::hub::{DELIVER_MAX, ToDeliver};
use crate::store::events::events_of;
use crate::store::plan::{self, Plan};
use crate::store::{Db, Store, StoreError, Unfinished};

/// In a batch's transaction, before it writes: whether this process still holds its
/// lease on `node` — its incarnation's, not expired — renewed for `renew` when given.
/// The row stays locked until the transaction ends, so no sweeper can take the node's
/// streams while its batch commits, and a batch can never commit once a sweeper has
/// (the row is gone). Returns the transaction's id (to find out later whether a
/// `COMMIT` whose answer was lost went through), or `None`: fenced.
pub(in crate::store) async fn hold_lease(
    tx: &mut PgConnection,
    node: &str,
    incarnation: &str,
    renew: Option<Duration>,
) -> Result<Option<i64>, sqlx::Error> {
    match renew {
        Some(lease) => {
            sqlx::query_scalar(
                "UPDATE nodes SET expires_at = now() + make_interval(secs => $3) \
                 WHERE id = $1 AND incarnation = $2 AND expires_at > now() \
                 RETURNING txid_current()",
            )
            .bind(node)
            .bind(incarnation)
            .bind(lease.as_secs_f64())
            .fetch_optional(&mut *tx)
            .await
        }
        None => {
            sqlx::query_scalar(
                "SELECT txid_current() FROM nodes \
                 WHERE id = $1 AND incarnation = $2 AND expires_at > now() FOR SHARE",
            )
            .bind(node)
            .bind(incarnation)
            .fetch_optional(&mut *tx)
            .await
        }
    }
}

/// Takes `node`'s lease at start-up for this process (`incarnation`), whoever held it:
/// a node restarted under its id after a crash should not wait for its old lease to
/// expire. If a live process still held it (two processes given one id), that one
/// finds its lease gone at its next renewal and stops. Streams a previous process of
/// this node left open are then recovered by [`recover_own`].
pub async fn take_lease(
    conn: &mut sqlx::PgConnection,
    node: &str,
    incarnation: &str,
    lease: Duration,
) -> anyhow::Result<()> {
    let previous_live: Option<bool> = sqlx::query_scalar(
        "WITH old AS (SELECT id, expires_at > now() AS live FROM nodes WHERE id = $1) \
         INSERT INTO nodes (id, incarnation, expires_at) \
         VALUES ($1, $2, now() + make_interval(secs => $3)) \
         ON CONFLICT (id) DO UPDATE \
         SET incarnation = EXCLUDED.incarnation, expires_at = EXCLUDED.expires_at \
         RETURNING (SELECT live FROM old)",
    )
    .bind(node)
    .bind(incarnation)
    .bind(lease.as_secs_f64())
    .fetch_one(&mut *conn)
    .await?;
    if previous_live == Some(true) {
        tracing::warn!(
            node,
            "took over a lease of this node id that had not expired (a previous process \
             that just died, or another process given the same SPOOL_NODE_ID: that one \
             stops at its next renewal)"
        );
    }
    Ok(())
}

/// Start-up: ends (or hands back to continue) the streams a previous process with this
/// node's id left open. A node restarted under the same id renews the lease its
/// previous process held, so no survivor would ever take those streams; and a node
/// alone on its database has no survivor at all. Run after taking the lease and before
/// the writer starts; streams a survivor is sweeping right now are skipped.
pub(in crate::store) async fn recover_own(
    conn: &mut PgConnection,
    node: &str,
    continuable: &dyn Fn(&str) -> bool,
) -> Result<Sweep, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let open: Vec<OpenStream> = sqlx::query_as(
        "SELECT id, model, params, last_seq FROM streams \
         WHERE node = $1 AND status IN ('queued', 'running') AND model <> 'durable-stream' \
         FOR UPDATE SKIP LOCKED",
    )
    .bind(node)
    .fetch_all(&mut *tx)
    .await?;
    let mut sweep = Sweep::default();
    if open.is_empty() {
        return Ok(sweep);
    }
    end_or_claim(&mut tx, node, open, continuable, &mut sweep).await?;
    notify_ended(&mut tx, node, &sweep.ended).await?;
    tx.commit().await?;
    Ok(sweep)
}

/// An open stream as a sweep reads it: id, model, params, last seq.
type OpenStream = (String, String, String, i64);

/// In the caller's transaction, which has locked the `open` streams: claims each for
/// `me` when `continuable(model)`, or ends it with an `interrupted` event after its
/// last one.
async fn end_or_claim<F: Fn(&str) -> bool + ?Sized>(
    tx: &mut PgConnection,
    me: &str,
    open: Vec<OpenStream>,
    continuable: &F,
    sweep: &mut Sweep,
) -> Result<(), sqlx::Error> {
    let mut ends: Vec<(Arc<str>, u64)> = Vec::new();
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
        } else {
            ends.push((Arc::from(id.as_str()), last_seq));
        }
    }
    let writes = plan::interrupted(&ends);
    batch::write_plan(tx, &Plan::of(&writes)).await?;
    sweep
        .ended
        .extend(ends.into_iter().map(|(id, last_seq)| SweptStream {
            id: id.to_string(),
            seq: last_seq + 1,
        }));
    Ok(())
}

/// Wakes the readers, on every node, of streams just ended (delivered at commit).
async fn notify_ended(
    tx: &mut PgConnection,
    me: &str,
    ended: &[SweptStream],
) -> Result<(), sqlx::Error> {
    for payload in batch::notifications(me, ended.iter().map(|s| (s.id.as_str(), s.seq))) {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(EVENTS_CHANNEL)
            .bind(payload)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
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
    /// Gives up this node's lease at a graceful stop, once its streams have ended.
    pub async fn release_lease(&self) -> Result<(), StoreError> {
        if let Db::Postgres(pool) = &self.db {
            sqlx::query("DELETE FROM nodes WHERE id = $1 AND incarnation = $2")
                .bind(self.node())
                .bind(&*self.incarnation)
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
        let open: Vec<OpenStream> = sqlx::query_as(
            "SELECT s.id, s.model, s.params, s.last_seq FROM streams s \
             WHERE s.status IN ('queued', 'running') AND s.model <> 'durable-stream' \
             AND s.node IS DISTINCT FROM $1 \
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
        end_or_claim(&mut tx, me, open, continuable, &mut sweep).await?;
        sqlx::query("DELETE FROM nodes WHERE id = ANY($1)")
            .bind(&sweep.dead)
            .execute(&mut *tx)
            .await?;
        notify_ended(&mut tx, me, &sweep.ended).await?;
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
        // Per stream, the chunks that hold its next DELIVER_MAX events (see
        // `store::events`), trimmed below.
        let rows: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT v.i, c.first_seq, c.data \
             FROM UNNEST($1::text[], $2::bigint[]) WITH ORDINALITY AS v(id, after, i) \
             JOIN streams s ON s.id = v.id \
             CROSS JOIN LATERAL (SELECT first_seq, last_seq, data FROM chunks \
             WHERE stream_key = s.key AND last_seq > v.after AND first_seq <= v.after + $3 \
             ORDER BY last_seq) c \
             ORDER BY v.i, c.last_seq",
        )
        .bind(streams.iter().map(|d| &*d.stream_id).collect::<Vec<_>>())
        .bind(streams.iter().map(|d| d.after as i64).collect::<Vec<_>>())
        .bind(DELIVER_MAX as i64)
        .fetch_all(pool)
        .await?;
        let mut rows = rows.into_iter().peekable();
        while let Some((i, first, data)) = rows.next() {
            let mut of_stream = vec![(first, data)];
            while let Some((_, first, data)) = rows.next_if(|(next, _, _)| *next == i) {
                of_stream.push((first, data));
            }
            let at = usize::try_from(i - 1).ok();
            if let Some((d, out)) = at.and_then(|at| streams.get(at).zip(out.get_mut(at))) {
                events_of(&d.stream_id, &of_stream, d.after, DELIVER_MAX as usize, out)?;
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
