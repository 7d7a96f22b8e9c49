//! The engine: starts, cancels and deletes streams, and owns every generation task.
//!
//! A stream's generation runs in a task of the engine's [`TaskTracker`], independent
//! of any HTTP connection: readers come and go, the generation goes on until it ends,
//! is cancelled, or the process shuts down.
//!
//! **Architecture Invariant:** a stream's events are numbered and written only by its
//! generation task (its `start` event by [`Engine::start`] before that task exists),
//! so seqs are gap-free without coordination.
//!
//! Logs: a generation runs in a `stream` span (its `stream_id`), a child of the span
//! that started it — the HTTP request's or the WebSocket's, which carry the request id
//! (see `http::request_id`) — so everything a stream logs, long after its request
//! answered, names the request too. One `info` line when a stream is accepted, one when
//! it ends; nothing per token.

mod abandon;
mod admission;
mod chats;
mod cursor;
mod ds;
mod generation;
mod rate;
mod reads;
mod sessions;
mod start;
mod stop;
mod subscriptions;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::event::Usage;
use crate::event::{Event, StreamStatus, now_ms};
use crate::hub::StreamHub;
use crate::ids::looks_like_stream_id;
use crate::llm::{GenerateRequest, Models, Prompt};
use crate::metrics::{Gauges, Metrics};
use crate::store::{
    EventLog, INTERRUPTED, INTERRUPTED_MESSAGE, Store, StoreError, StreamEnd, StreamRow, Unfinished,
};

pub use admission::Admission;
pub use chats::valid_chat_id;
pub use cursor::{FollowError, InvalidCursor, parse as parse_cursor};
pub use ds::{Append, Appended, Created, DsConfig, DsError, DsKind, DsLive, Fork as DsFork};
pub use rate::RateLimit;
pub use reads::{Access, Follow};
pub use sessions::{NewSessionRequest, SessionUpdate};
pub use start::{StartRequest, TurnOf, Via};
pub use stop::StopFilter;
pub use subscriptions::{SubError, WakeReply};

/// Why a stream could not be started. Nothing was stored.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("unknown model {model:?}")]
    UnknownModel {
        model: String,
        available: Vec<String>,
    },
    #[error("{0}")]
    Unsupported(crate::llm::Unsupported),
    #[error("too many generations are running or queued")]
    Busy,
    /// The key holds every place its per-key caps allow (`limit` in all).
    #[error("this key has its limit of generations running or queued")]
    KeyBusy { limit: usize },
    #[error("the key is over its rate limit")]
    RateLimited { per_minute: u32, wait: u64 },
    #[error("no such session")]
    SessionNotFound,
    #[error("the previous turn of this session is still running")]
    TurnInProgress,
    /// A turn that cannot follow the session's history (tool results that do not
    /// answer its last answer's tool calls).
    #[error("{0}")]
    InvalidTurn(String),
    /// The idempotency key was used for a different request, or a request with it is
    /// being started right now.
    #[error("{0}")]
    IdempotencyConflict(&'static str),
    #[error("the server is shutting down")]
    ShuttingDown,
    /// Commits are failing (and being retried): nothing new is accepted meanwhile.
    #[error("the store does not accept writes right now")]
    StoreUnavailable,
    #[error("no source of randomness for a stream id")]
    Random,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A stream just accepted.
#[derive(Debug, Clone)]
pub struct Started {
    pub id: String,
    pub model: String,
    pub created_at: i64,
    /// The session whose turn the stream answers.
    pub session_id: Option<String>,
    /// Whether that session was created for this turn.
    pub new_session: bool,
    /// The key's owner that started it (`None` without keys): read tokens are bound
    /// to it.
    pub owner: Option<String>,
    /// The live channel, subscribed to before the stream was stored (none for a
    /// retried request's earlier stream).
    pub early: crate::hub::Early,
}

/// What a cancel request found.
pub enum Cancel {
    /// The stream was running or queued here; it is stopping (`202`).
    Stopping(StreamRow),
    /// It had already ended (`200`).
    AlreadyEnded(StreamRow),
}

/// Handles of a stream being generated in this process.
#[derive(Clone)]
struct Live {
    cancel: CancellationToken,
    /// Cancelled once the stream's terminal event has been handed to the writer.
    ended: CancellationToken,
    /// A client asked for it to run whoever reads it: never abandoned.
    unattended: bool,
}

impl Live {
    fn new(cancel: CancellationToken, unattended: bool) -> Self {
        Live {
            cancel,
            ended: CancellationToken::new(),
            unattended,
        }
    }
}

/// Whether a stream generated here has ended (see [`Engine::end_of`]).
#[derive(Clone)]
pub struct StreamEnding(CancellationToken);

impl StreamEnding {
    /// True once the stream's terminal event is written (or it stopped here).
    pub fn is_over(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once the stream's terminal event is written (or it stopped here).
    pub async fn over(&self) {
        self.0.cancelled().await;
    }
}

pub struct Engine {
    models: Models,
    log: EventLog,
    store: Store,
    hub: Arc<StreamHub>,
    metrics: Arc<Metrics>,
    admission: Admission,
    rate: RateLimit,
    tasks: TaskTracker,
    /// Cancelled when a graceful stop begins: no new stream starts, running ones go on.
    draining: CancellationToken,
    /// Cancelled when the drain is over: streams still running are handed on or end
    /// as `interrupted`.
    shutdown: CancellationToken,
    /// Set by [`Engine::halt`]: generations stop without writing anything more.
    halted: std::sync::atomic::AtomicBool,
    /// Streams whose generation stopped at shutdown without an end, for the next
    /// process (or another node) to continue.
    handed_on: Mutex<Vec<String>>,
    /// Notified whenever a stream stops being live here (see [`Engine::drained`]).
    idle: tokio::sync::Notify,
    live: Mutex<HashMap<String, Live>>,
    /// Sessions' turns and idempotency keys being started right now (see
    /// `sessions::Starting`).
    starting: Mutex<std::collections::HashSet<String>>,
    /// `SPOOL_SESSION_MAX_PROMPT_TOKENS`: a bound on a session turn's prompt besides
    /// the model's context (see `sessions::fit`).
    session_max_prompt_tokens: Option<u32>,
    /// The Durable Streams met in this process (see `ds`).
    ds: ds::DsCache,
    /// Durable Streams subscriptions (see `subscriptions`).
    subs: subscriptions::Subscriptions,
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        models: Models,
        log: EventLog,
        store: Store,
        hub: Arc<StreamHub>,
        metrics: Arc<Metrics>,
        admission: Admission,
        rate: RateLimit,
        session_max_prompt_tokens: Option<u32>,
    ) -> Arc<Self> {
        Arc::new(Engine {
            models,
            log,
            store,
            hub,
            metrics,
            admission,
            rate,
            tasks: TaskTracker::new(),
            draining: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            halted: std::sync::atomic::AtomicBool::new(false),
            handed_on: Mutex::new(Vec::new()),
            idle: tokio::sync::Notify::new(),
            live: Mutex::new(HashMap::new()),
            starting: Mutex::new(Default::default()),
            session_max_prompt_tokens,
            ds: ds::DsCache::default(),
            subs: subscriptions::Subscriptions::default(),
        })
    }

    pub fn models(&self) -> &Models {
        &self.models
    }

    /// Tracks a background task so shutdown waits for it; it should end when
    /// [`Engine::shutdown_token`] is cancelled.
    pub fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether the store answers and accepts writes (for `/readyz`).
    pub async fn store_ready(&self) -> bool {
        self.log.available() && self.store.ping().await
    }

    /// Why the store does not accept writes, while it does not (for `/readyz`).
    pub fn store_unavailable_reason(&self) -> Option<String> {
        self.log.unavailable_reason()
    }

    /// The writer's handle (the cluster loops renew the lease through it).
    pub(crate) fn log(&self) -> &EventLog {
        &self.log
    }

    fn live(&self) -> MutexGuard<'_, HashMap<String, Live>> {
        // Held for single map operations only, never across an `.await`.
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Continues the streams a dead process was generating (start-up recovery chose
    /// them: their backend can continue). Each picks up after its last stored event,
    /// so its readers see no gap; one that cannot be continued ends `interrupted`.
    pub async fn continue_unfinished(self: &Arc<Self>, streams: Vec<Unfinished>) {
        for stream in streams {
            if let Err(reason) = self.continue_one(&stream).await {
                tracing::warn!(stream_id = %stream.id, %reason, "cannot continue the stream; ending it as interrupted");
                let end = StreamEnd {
                    status: StreamStatus::Interrupted,
                    finish_reason: None,
                    error: Some((INTERRUPTED.to_owned(), INTERRUPTED_MESSAGE.to_owned())),
                    usage: Usage::default(),
                    finished_at: now_ms(),
                    turn_text: None,
                    turn_tool_calls: None,
                };
                let event = Event::error(stream.last_seq + 1, INTERRUPTED, INTERRUPTED_MESSAGE);
                let _ = self
                    .log
                    .append(Arc::from(stream.id.as_str()), event, Some(end))
                    .await;
            }
        }
    }

    async fn continue_one(self: &Arc<Self>, stream: &Unfinished) -> Result<(), String> {
        let backend = self
            .models
            .get(&stream.model)
            .cloned()
            .ok_or("its model is not served")?;
        let mut request: GenerateRequest = serde_json::from_str(&stream.params)
            .map_err(|e| format!("its stored request is unreadable: {e}"))?;
        if let (Some(turn), Some(session_id)) = (request.session_turn, &request.session_id) {
            // A session's turn stored its message alone: rebuild the prompt it had.
            let session = self
                .store
                .session_unscoped(session_id)
                .await
                .map_err(|e| format!("its session is unreadable: {e}"))?
                .ok_or("its session is gone")?;
            let turns = self
                .store
                .turns(session_id)
                .await
                .map_err(|e| format!("its session's turns are unreadable: {e}"))?;
            let input = sessions::turn_input(&request.prompt);
            request.prompt = Prompt::Messages(sessions::prompt(&session, &turns, &input, &turn));
        }
        let continuation = self
            .store
            .continuation(&stream.id)
            .await
            .map_err(|e| format!("its events are unreadable: {e}"))?;
        request.continuation = Some(continuation);
        // Its owner is not stored with it here: it queues among the unowned, uncapped.
        let ticket = self
            .admission
            .try_admit(None)
            .map_err(|_| "no generation slot is free")?;
        let live = Live::new(self.shutdown.child_token(), request.unattended);
        self.hub.open(&stream.id);
        self.live().insert(stream.id.clone(), live.clone());
        // No request started this one: its span stands alone.
        let span = tracing::error_span!(parent: None, "stream", stream_id = %stream.id);
        span.in_scope(|| {
            tracing::info!(
                model = %stream.model,
                after = stream.last_seq,
                "stream continued: a previous process left it running"
            );
        });
        self.spawn_generation(
            &stream.id,
            request,
            backend,
            live,
            stream.last_seq,
            ticket,
            span,
            None,
        );
        Ok(())
    }

    /// The end of a stream this process generates; `None` if it does not (any more).
    pub fn end_of(&self, id: &str) -> Option<StreamEnding> {
        self.live()
            .get(id)
            .map(|live| StreamEnding(live.ended.clone()))
    }

    /// Cancels a stream if it is still running; idempotent. `None`: no such stream.
    pub async fn cancel(
        &self,
        id: &str,
        owner: Option<&str>,
    ) -> Result<Option<Cancel>, StoreError> {
        if !looks_like_stream_id(id) {
            return Ok(None);
        }
        let Some(row) = self.store.stream(id, owner).await? else {
            return Ok(None);
        };
        if self.cancel_local(id) {
            // In the span of the request that cancels; the stream's own end line
            // (`stream ended … status=cancelled`) follows in the span that started it.
            tracing::info!(stream_id = %id, "cancel requested");
            return Ok(Some(Cancel::Stopping(row)));
        }
        if row.status()?.is_terminal() {
            return Ok(Some(Cancel::AlreadyEnded(row)));
        }
        // Another node runs it: it hears the cancel through the database.
        tracing::info!(stream_id = %id, "cancel requested; passed on to the node running it");
        self.store.route_cancel(id).await?;
        Ok(Some(Cancel::Stopping(row)))
    }

    /// Cancels `id` if this process generates it; false if it does not.
    pub fn cancel_local(&self, id: &str) -> bool {
        let live = self.live().get(id).cloned();
        match live {
            Some(live) => {
                live.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Cancels a stream if running, waits for its end to be written, then deletes it and
    /// its events. `false`: no such stream.
    pub async fn delete(&self, id: &str, owner: Option<&str>) -> Result<bool, StoreError> {
        if !looks_like_stream_id(id) {
            return Ok(false);
        }
        let Some(row) = self.store.stream(id, owner).await? else {
            return Ok(false);
        };
        let live = self.live().get(id).cloned();
        if let Some(live) = live {
            tracing::info!(stream_id = %id, "delete of a running stream: cancelling it");
            live.cancel.cancel();
            // The terminal event is queued before `ended` fires, and the writer keeps
            // order, so the delete below lands after it.
            let _ = tokio::time::timeout(Duration::from_secs(10), live.ended.cancelled()).await;
        } else if !row.status()?.is_terminal() && self.store.is_shared() {
            // Another node runs it: cancel it there and wait until its end is stored,
            // so no event of it is written after the delete.
            self.store.route_cancel(id).await?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while tokio::time::Instant::now() < deadline {
                match self.store.stream_unscoped(id).await? {
                    Some(row) if !row.status()?.is_terminal() => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    _ => break,
                }
            }
        }
        self.log.delete(id.to_owned()).await
    }

    /// Begins a graceful stop: from now on no stream starts (`shutting_down`); running
    /// streams go on.
    pub fn begin_drain(&self) {
        if !self.draining.is_cancelled() {
            tracing::info!(
                live = self.live().len(),
                "draining: no new streams; running ones go on"
            );
            self.draining.cancel();
        }
    }

    /// Whether a graceful stop has begun (for `/readyz`).
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Resolves once no stream is live in this process.
    pub async fn drained(&self) {
        loop {
            let idle = self.idle.notified();
            if self.live().is_empty() {
                return;
            }
            idle.await;
        }
    }

    /// Ends the drain: stops every running stream — one whose backend can continue it
    /// is left, without an end, for the next process on the store (or another node)
    /// to continue; the others end `interrupted` — then waits (at most `grace`) for
    /// every tracked task, commits what they wrote, and ends the live channels of the
    /// streams left, so that every reader has read all there is. Returns how many
    /// streams were left to continue.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.draining.cancel();
        self.shutdown.cancel();
        self.tasks.close();
        let deadline = tokio::time::Instant::now() + grace;
        if tokio::time::timeout_at(deadline, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = self.tasks.len(),
                "engine tasks still running at the shutdown deadline"
            );
        }
        let left = std::mem::take(&mut *self.handed_on.lock().unwrap_or_else(|p| p.into_inner()));
        if self.is_halted() {
            // Nothing more may be written; readers' responses are cut.
            return left.len();
        }
        // The interrupted ends, and the last events of the streams left, reach their
        // readers only once committed.
        match tokio::time::timeout_at(deadline, self.log.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "flushing at shutdown failed"),
            Err(_) => tracing::warn!("flushing at shutdown did not finish in time"),
        }
        for id in &left {
            self.hub.abort(id);
        }
        left.len()
    }

    /// Stops every generation without writing its end (another node owns these
    /// streams now), and waits (at most `grace`) for every tracked task.
    pub async fn halt(&self, grace: Duration) {
        self.halted.store(true, std::sync::atomic::Ordering::SeqCst);
        self.shutdown(grace).await;
    }

    /// Whether [`Engine::halt`] was called.
    fn is_halted(&self) -> bool {
        self.halted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Records a stream whose generation stopped at shutdown without an end.
    fn handed_on(&self, id: &str) {
        self.handed_on
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id.to_owned());
    }

    pub fn gauges(&self) -> Gauges {
        Gauges {
            running: self.admission.running(),
            queued: self.admission.queued(),
            live_streams: self.live().len(),
            remote_readers: self.hub.watching(),
        }
    }

    fn forget(&self, id: &str) {
        self.live().remove(id);
        self.idle.notify_waiters();
    }

    /// The status a stream ends with, for metrics.
    fn finished(&self, status: StreamStatus) {
        self.metrics.stream_finished(status);
    }
}
