//! Assembly: open the store, build the backends and the engine, hand the HTTP layer
//! its state, serve, and shut everything down in order. `app` depends on every part;
//! no part depends on `app`.
//!
//! Shutdown order, and why: (1) drain — `/readyz` 503 and new streams refused at once
//! (a load balancer stops routing), running streams go on with their readers served,
//! for up to `SPOOL_DRAIN_TIMEOUT`; (2) stop what still runs — a stream whose backend
//! can continue is left for the next process (or another node), the rest end
//! `interrupted` — and commit it all; (3) stop accepting and close connections, each
//! response writing its last events first, so every connected reader has its stream's
//! end (or resumes where it goes on); (4) stop the model thread; (5) close the writer;
//! (6) give up the lease and close the read pool. After the drain, each step has its
//! share of `SPOOL_SHUTDOWN_TIMEOUT` (three eighths, a quarter, an eighth, a quarter),
//! so the process exits within `SPOOL_DRAIN_TIMEOUT + SPOOL_SHUTDOWN_TIMEOUT`.
//!
//! A fatal condition found by a background task (the model failed to load, this node's
//! lease was taken) ends `serve` through the same path, with an error `main` turns into
//! the process's exit status (`crate::fatal`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{BackendKind, ServeConfig};
use crate::engine::{Admission, Engine, RateLimit};
use crate::event::now_ms;
use crate::fatal::{Fatal, FatalSender};
use crate::http::{HttpConfig, HttpState};
use crate::hub::StreamHub;
use crate::llm::Models;
use crate::llm::local::{LocalBackend, LocalHandle};
use crate::llm::mock::MockBackend;
use crate::llm::openai::OpenAiBackend;
use crate::metrics::Metrics;
use crate::store::{self, EventLog, Store, WriterTask};
use crate::tls::Tls;
use crate::{http, server};

/// A started spool: store open, engine ready, not yet serving.
pub struct Spool {
    config: ServeConfig,
    engine: Arc<Engine>,
    http: HttpState,
    store: Store,
    log: EventLog,
    writer: WriterTask,
    metrics: Arc<Metrics>,
    /// The model thread of the local backend, if it is in use.
    local: Option<LocalHandle>,
    /// Set when the port speaks TLS.
    tls: Option<Tls>,
    fatal: mpsc::Receiver<Fatal>,
}

impl Spool {
    pub async fn start(config: ServeConfig) -> anyhow::Result<Spool> {
        // First: a bad certificate should not wait for a model to load to be reported.
        let tls = Tls::from_config(&config.tls)?;
        let metrics = Arc::new(Metrics::default());
        let hub = Arc::new(StreamHub::new(config.limits.reader_buffer));
        let (models, local) = build_models(&config).await?;
        let opened = store::open(
            &config.store,
            &config.cluster,
            hub.clone(),
            metrics.clone(),
            &|model| models.can_continue(model),
        )
        .await?;
        let (store, log, writer) = (opened.store, opened.log, opened.writer);
        let engine = Engine::new(
            models,
            log.clone(),
            store.clone(),
            hub.clone(),
            metrics.clone(),
            Admission::new(
                config.limits.max_active,
                config.limits.max_queued,
                config.limits.per_key(config.auth.key_count()),
            ),
            RateLimit::new(config.auth.rate_limit),
            config.limits.session_max_prompt_tokens,
        );
        engine.continue_unfinished(opened.unfinished).await;
        engine.start_subscriptions(&opened.signing_seed).await?;
        let (fatal_tx, fatal) = FatalSender::channel();
        if store.is_shared() {
            tracing::info!(node = store.node(), "sharing the database with other nodes");
            crate::cluster::start(
                &engine,
                store.clone(),
                hub.clone(),
                &config.cluster,
                fatal_tx.clone(),
            );
        }
        if let Some(local) = &local {
            let failed = local.failed();
            let report = fatal_tx;
            let shutdown = engine.shutdown_token();
            engine.spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    error = failed => report.report(Fatal::ModelFailed(error)),
                }
            });
        }
        if !config.store.retention.is_zero() {
            engine.spawn(retention(
                log.clone(),
                config.store.retention,
                engine.shutdown_token(),
            ));
        }
        if !config.limits.abandon_after.is_zero() {
            engine.watch_abandoned(config.limits.abandon_after);
        }
        let http = HttpState::new(
            engine.clone(),
            metrics.clone(),
            HttpConfig {
                server: config.server.clone(),
                limits: config.limits.clone(),
                ws: config.ws.clone(),
                auth: config.auth.clone(),
            },
            opened.read_token_secret,
        );
        Ok(Spool {
            config,
            engine,
            http,
            store,
            log,
            writer,
            metrics,
            local,
            tls,
            fatal,
        })
    }

    pub fn router(&self) -> Router {
        http::router(self.http.clone())
    }

    /// Serves on `listener` until `shutdown` resolves (or a [`Fatal`] condition is
    /// reported), then drains and shuts down in order. A fatal condition is the error
    /// returned.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = listener.local_addr().context("listener address")?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        tracing::info!("spool listening on {scheme}://{addr}");
        let close = self.http.shutdown_token();
        let grace = self.config.server.shutdown_timeout;
        let server = tokio::spawn(server::serve(
            listener,
            self.router(),
            close.clone(),
            server::Options {
                tls: self.tls.take(),
                max_connections: self.config.server.max_connections,
                header_read_timeout: self.config.server.header_read_timeout,
                idle_timeout: self.config.server.http2_idle_timeout,
                ping_interval: self.config.server.http2_ping_interval,
                drain: grace / 4,
                metrics: self.metrics.clone(),
            },
        ));

        // No sender left means no task can report anything: wait for the signal.
        let mut fatal_rx = std::mem::replace(&mut self.fatal, mpsc::channel(1).1);
        let reported = async {
            match fatal_rx.recv().await {
                Some(fatal) => fatal,
                None => std::future::pending().await,
            }
        };
        let fatal = tokio::select! {
            _ = shutdown => None,
            fatal = reported => Some(fatal),
        };
        if let Some(fatal) = &fatal {
            tracing::error!(error = %fatal, "stopping");
        }
        let fenced = fatal == Some(Fatal::LeaseLost);

        if fenced {
            // A survivor owns this node's streams now: write nothing more to them.
            close.cancel();
            tracing::info!("shutting down: leaving running streams to the survivor");
            self.engine.halt(grace * 3 / 8).await;
        } else {
            // `/readyz` answers 503 and new streams are refused from now on; running
            // streams go on, their readers served, until they end or the drain is over.
            self.engine.begin_drain();
            let drain = self.config.server.drain_timeout;
            if fatal.is_none() && !drain.is_zero() {
                tracing::info!(timeout = ?drain, "draining");
                if tokio::time::timeout(drain, self.engine.drained())
                    .await
                    .is_err()
                {
                    tracing::info!("the drain is over; stopping the streams still running");
                }
            }
            let left = self.engine.shutdown(grace * 3 / 8).await;
            if left > 0 {
                tracing::info!(
                    streams = left,
                    "left running streams for the next process to continue"
                );
            }
            // Every stream has ended (or was handed on) and is committed: readers get
            // their last events as their responses close.
            close.cancel();
        }
        if tokio::time::timeout(grace / 4 + sse_final_write(), server)
            .await
            .is_err()
        {
            tracing::warn!("connections still open at the shutdown deadline");
        }
        if let Some(local) = self.local.take() {
            local.shutdown(grace / 8).await;
        }
        let flush = async {
            if let Err(e) = self.log.close().await {
                tracing::error!(error = %e, "flushing the event log failed");
            }
            drop(self.log);
            if self.writer.await.is_err() {
                tracing::warn!("the writer task failed");
            }
        };
        if tokio::time::timeout(grace / 4, flush).await.is_err() {
            tracing::warn!("the writer did not stop in time");
        }
        if !fenced {
            // Every stream of this node has ended or was handed on and is stored: give
            // up the lease, so that a survivor continues the streams left at once (and
            // ends any that did not end as an orphan's).
            if let Err(e) = self.store.release_lease().await {
                tracing::warn!(error = %e, "could not release this node's lease");
            }
        }
        self.store.close().await;
        match fatal {
            Some(fatal) => Err(fatal.into()),
            None => {
                tracing::info!("stopped");
                Ok(())
            }
        }
    }
}

/// Responses write their last events for this long after the close.
fn sse_final_write() -> Duration {
    crate::http::FINAL_WRITE
}

async fn build_models(config: &ServeConfig) -> anyhow::Result<(Models, Option<LocalHandle>)> {
    let mut models = Models::default();
    let mut local = None;
    match config.backend {
        BackendKind::Local => {
            let (backend, handle) = LocalBackend::start(
                config.local.model_path.clone(),
                config.local.context.map(|c| c as usize),
            )?;
            models.add(Arc::new(backend));
            local = Some(handle);
        }
        BackendKind::Mock => {
            models.add(Arc::new(MockBackend::from_config(&config.mock)));
        }
        BackendKind::Openai => {
            models.add(Arc::new(OpenAiBackend::connect(&config.openai).await?));
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
