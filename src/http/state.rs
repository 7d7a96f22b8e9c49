//! What every handler can reach: the engine's operations, the key check, and the
//! settings of the HTTP surfaces. The fields are private: a handler asks for an
//! operation (start, follow from a cursor, cancel, delete, a read) and never wires the
//! store, the hub or a feed itself. `app` builds one and hands it to [`super::router`].

use std::sync::Arc;

use axum::response::Response;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::auth::{ApiKeys, KeyCheck};
use super::error::ApiError;
use super::params::StreamParams;
use super::render::{Numbering, Render};
use super::sse;
use crate::config::{AuthConfig, LimitsConfig, ServerConfig, WsConfig};
use crate::engine::{Engine, NewSessionRequest, StartRequest, Started, TurnOf, Via};
use crate::metrics::Metrics;

/// The parts of the configuration the HTTP layer reads.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub server: ServerConfig,
    pub limits: LimitsConfig,
    pub ws: WsConfig,
    pub auth: AuthConfig,
}

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct HttpState(Arc<Inner>);

struct Inner {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    /// The keys, with the engine for the rate limit (the key check's own state).
    check: Arc<KeyCheck>,
    config: HttpConfig,
    /// Cancelled when the server stops accepting: open SSE responses and sockets end.
    shutdown: CancellationToken,
    /// One permit per open WebSocket (`SPOOL_WS_MAX_SOCKETS`).
    sockets: Arc<Semaphore>,
}

impl HttpState {
    /// `read_token_secret` signs read tokens (kept in the store).
    pub fn new(
        engine: Arc<Engine>,
        metrics: Arc<Metrics>,
        config: HttpConfig,
        read_token_secret: Vec<u8>,
    ) -> Self {
        let keys = ApiKeys::new(
            &config.auth.api_keys,
            config.auth.metrics_auth,
            read_token_secret,
            config.auth.read_token_ttl,
        )
        .guard_prefix(&config.server.ds_prefix);
        let sockets = Arc::new(Semaphore::new(config.ws.max_sockets));
        let check = Arc::new(KeyCheck {
            keys,
            engine: engine.clone(),
        });
        HttpState(Arc::new(Inner {
            engine,
            metrics,
            check,
            config,
            shutdown: CancellationToken::new(),
            sockets,
        }))
    }

    /// Cancelled when the server stops taking requests; cancel it to end open
    /// responses (clients resume elsewhere or later).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.0.shutdown.clone()
    }

    pub(super) fn engine(&self) -> &Arc<Engine> {
        &self.0.engine
    }

    pub(super) fn metrics(&self) -> &Arc<Metrics> {
        &self.0.metrics
    }

    pub(super) fn keys(&self) -> &ApiKeys {
        &self.0.check.keys
    }

    /// The key check's state (for its middleware).
    pub(super) fn key_check(&self) -> Arc<KeyCheck> {
        self.0.check.clone()
    }

    pub(super) fn limits(&self) -> &LimitsConfig {
        &self.0.config.limits
    }

    pub(super) fn server(&self) -> &ServerConfig {
        &self.0.config.server
    }

    pub(super) fn ws(&self) -> &WsConfig {
        &self.0.config.ws
    }

    pub(super) fn is_shutting_down(&self) -> bool {
        self.0.shutdown.is_cancelled()
    }

    /// A WebSocket's place, or `None` when `SPOOL_WS_MAX_SOCKETS` are open.
    pub(super) fn socket_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.0.sockets.clone().try_acquire_owned().ok()
    }

    /// The HTTP side of the one start path: every surface maps its request to
    /// [`StreamParams`] and starts it here. A `session_id` makes it that session's
    /// next turn (found for `owner`; its model is the default). The engine applies the
    /// admission rules (see `engine::start`).
    pub(super) async fn start(
        &self,
        params: StreamParams,
        owner: Option<String>,
        via: Via,
    ) -> Result<Started, ApiError> {
        self.start_with(params, owner, via, None).await
    }

    /// [`HttpState::start`] for the first turn of a session created for it.
    pub(super) async fn start_in_new_session(
        &self,
        params: StreamParams,
        owner: Option<String>,
        via: Via,
        session: NewSessionRequest,
    ) -> Result<Started, ApiError> {
        self.start_with(params, owner, via, Some(session)).await
    }

    async fn start_with(
        &self,
        params: StreamParams,
        owner: Option<String>,
        via: Via,
        new_session: Option<NewSessionRequest>,
    ) -> Result<Started, ApiError> {
        let engine = self.engine();
        let idempotency_key = params.idempotency_key.clone();
        let (request, session) = match (params.session_id.as_deref(), new_session) {
            (Some(id), _) => {
                let row = engine
                    .session(id, owner.as_deref())
                    .await?
                    .ok_or_else(ApiError::session_not_found)?;
                let request =
                    params.validate_turn(self.limits(), engine.models(), row.model.as_deref())?;
                (request, Some(TurnOf::Session(row)))
            }
            (None, Some(new)) => {
                let request =
                    params.validate_turn(self.limits(), engine.models(), new.model.as_deref())?;
                (request, Some(TurnOf::New(new)))
            }
            (None, None) => (params.validate(self.limits(), engine.models())?, None),
        };
        Ok(engine
            .start(StartRequest {
                request,
                owner,
                session,
                via,
                idempotency_key,
            })
            .await?)
    }

    /// The SSE response of stream `id` in the format of `render`, for a reader that
    /// has everything up to `after` (in the format's own numbering; `None`: nothing).
    pub(super) fn events(&self, id: &str, after: Option<u64>, render: Box<dyn Render>) -> Response {
        self.events_early(id, after, render, None)
    }

    /// The SSE response of a stream just started, from its first event, on the live
    /// channel its start subscribed to (no store read to begin with).
    pub(super) fn events_started(
        &self,
        started: &crate::engine::Started,
        render: Box<dyn Render>,
    ) -> Response {
        self.events_early(&started.id, None, render, started.early.take())
    }

    fn events_early(
        &self,
        id: &str,
        after: Option<u64>,
        render: Box<dyn Render>,
        early: Option<tokio::sync::broadcast::Receiver<crate::hub::Published>>,
    ) -> Response {
        // A format that numbers its own frames is rendered from the first event, and
        // the frames the reader has are dropped (see `render`).
        let (feed_after, resumed_after) = match render.numbering() {
            Numbering::Seq => (after.unwrap_or(0), None),
            Numbering::Frames => (0, after),
        };
        sse::response(
            self.engine().feed_early(id, feed_after, early),
            render,
            sse::BodyOptions {
                heartbeat: self.server().heartbeat,
                shutdown: self.shutdown_token(),
                metrics: self.metrics().clone(),
                resumed_after,
            },
        )
    }
}
