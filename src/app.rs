//! Assembly: open the store, build the backends and the engine, serve HTTP, and shut
//! everything down in order.
//!
//! Shutdown order, and why: (1) stop accepting and end open SSE responses, so no client
//! waits on a dying process; (2) end running generations with `interrupted` and wait
//! for every tracked task; (3) flush the writer, so every event handed to it is on disk;
//! (4) close the read pool.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{BackendKind, ServeConfig};
use crate::engine::{Admission, Engine};
use crate::event::now_ms;
use crate::hub::StreamHub;
use crate::llm::Models;
use crate::llm::local::{LocalBackend, LocalHandle};
use crate::llm::mock::MockBackend;
use crate::llm::openai::OpenAiBackend;
use crate::metrics::Metrics;
use crate::store::{self, EventLog, Store, WriterTask};
use crate::tls::Tls;
use crate::{http, server};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ServeConfig>,
    pub engine: Arc<Engine>,
    pub store: Store,
    pub hub: Arc<StreamHub>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the server stops accepting: open SSE responses end.
    pub http_shutdown: CancellationToken,
    /// One permit per open WebSocket (`SPOOL_WS_MAX_SOCKETS`).
    pub ws_sockets: Arc<tokio::sync::Semaphore>,
    /// `SPOOL_API_KEYS`.
    pub keys: Arc<crate::http::auth::ApiKeys>,
}

/// A started spool: store open, engine ready, not yet serving.
pub struct Spool {
    state: AppState,
    log: EventLog,
    writer: WriterTask,
    /// The model thread of the local backend, if it is in use.
    local: Option<LocalHandle>,
    /// Set when the port speaks TLS.
    tls: Option<Tls>,
}

impl Spool {
    pub async fn start(config: ServeConfig) -> anyhow::Result<Spool> {
        // First: a bad certificate should not wait for a model to load to be reported.
        let tls = Tls::from_config(&config)?;
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::default());
        let hub = Arc::new(StreamHub::new(config.reader_buffer));
        let (models, local) = build_models(&config).await?;
        let opened = store::open(&config, hub.clone(), metrics.clone(), &|model| {
            models.can_continue(model)
        })
        .await?;
        let (store, log, writer) = (opened.store, opened.log, opened.writer);
        let admission = Admission::new(config.max_active, config.max_queued);
        let engine = Engine::new(
            models,
            log.clone(),
            store.clone(),
            hub.clone(),
            metrics.clone(),
            admission,
        );
        engine.continue_unfinished(opened.unfinished).await;
        if store.is_shared() {
            tracing::info!(node = store.node(), "sharing the database with other nodes");
            crate::cluster::start(&engine, store.clone(), hub.clone(), config.node_lease);
        }
        if !config.retention.is_zero() {
            engine.spawn(retention(
                log.clone(),
                config.retention,
                engine.shutdown_token(),
            ));
        }
        let ws_sockets = Arc::new(tokio::sync::Semaphore::new(config.ws_max_sockets));
        let keys = Arc::new(
            crate::http::auth::ApiKeys::new(
                &config.api_keys,
                config.metrics_auth,
                opened.read_token_secret.clone(),
                config.read_token_ttl,
            )
            .with_rate_limit(config.rate_limit),
        );
        let state = AppState {
            config,
            engine,
            store,
            hub,
            metrics,
            http_shutdown: CancellationToken::new(),
            ws_sockets,
            keys,
        };
        Ok(Spool {
            state,
            log,
            writer,
            local,
            tls,
        })
    }

    pub fn router(&self) -> Router {
        http::router(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` resolves, then shuts down in order.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = listener.local_addr().context("listener address")?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        tracing::info!("spool listening on {scheme}://{addr}");
        let http_shutdown = self.state.http_shutdown.clone();
        let config = self.state.config.clone();
        let trigger = http_shutdown.clone();
        let local = self.local.take();
        // A model that cannot be loaded stops the server: serving only 503s helps no one.
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<String>();
        let watcher = tokio::spawn(async move {
            let model_failed = async {
                match &local {
                    Some(handle) => handle.failed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown => {}
                _ = trigger.cancelled() => {}
                error = model_failed => {
                    let _ = failed_tx.send(error);
                }
            }
            trigger.cancel();
            local
        });
        let grace = config.shutdown_timeout;
        server::serve(
            listener,
            self.router(),
            http_shutdown,
            server::Options {
                tls: self.tls.take(),
                max_connections: config.max_connections,
                header_read_timeout: config.header_read_timeout,
                drain: grace / 4,
                metrics: self.state.metrics.clone(),
            },
        )
        .await;
        let local = watcher.await.ok().flatten();

        tracing::info!("shutting down: ending running streams");
        self.state.engine.shutdown(grace / 2).await;
        if let Some(local) = local {
            local.shutdown(grace / 8).await;
        }
        let engine_log = self.log;
        if let Err(e) = tokio::time::timeout(grace / 4, engine_log.close())
            .await
            .unwrap_or(Ok(()))
        {
            tracing::error!(error = %e, "flushing the event log failed");
        }
        if tokio::time::timeout(Duration::from_secs(1), self.writer)
            .await
            .is_err()
        {
            tracing::warn!("the writer did not stop in time");
        }
        // Every stream of this node has ended and is stored: give up the lease, so no
        // survivor waits for it to expire (one that did not end is swept as an orphan).
        if let Err(e) = self.state.store.release_lease().await {
            tracing::warn!(error = %e, "could not release this node's lease");
        }
        self.state.store.close().await;
        if let Ok(error) = failed_rx.await {
            anyhow::bail!("the local model could not be loaded: {error}");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

async fn build_models(config: &ServeConfig) -> anyhow::Result<(Models, Option<LocalHandle>)> {
    let mut models = Models::default();
    let mut local = None;
    match config.backend {
        BackendKind::Local => {
            let (backend, handle) = LocalBackend::start(config.model_path.clone())?;
            models.add(Arc::new(backend));
            local = Some(handle);
        }
        BackendKind::Mock => {
            models.add(Arc::new(MockBackend {
                rate: config.mock_rate.max(0.0),
                ttft: Duration::from_millis(config.mock_ttft_ms),
                fail_after: config.mock_fail_after,
                stall_after: config.mock_stall_after,
                continuable: config.mock_continue,
            }));
        }
        BackendKind::Openai => {
            models.add(Arc::new(OpenAiBackend::connect(config).await?));
        }
    }
    Ok((models, local))
}

/// Deletes streams older than `retention`, in small batches, until shutdown.
async fn retention(log: EventLog, retention: Duration, shutdown: CancellationToken) {
    let every = (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(600));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let cutoff = now_ms() - retention.as_millis() as i64;
        loop {
            match log.purge(cutoff, 500).await {
                Ok(500) => continue,
                Ok(0) => break,
                Ok(n) => {
                    tracing::info!(streams = n, "retention: deleted old streams");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention sweep failed");
                    break;
                }
            }
        }
    }
}
