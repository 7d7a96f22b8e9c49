//! The local backend (SPEC §7): SmolLM2-135M-Instruct (or any llama GGUF given by
//! `SPOOL_MODEL_PATH`) run on the CPU in process, with candle.
//!
//! [`LocalBackend::start`] returns at once; the model is found (fetched once if needed,
//! see [`fetch`]) and loaded on the model thread, and until then `ready()` is false, so
//! `/readyz` answers 503. If it cannot be loaded, the error is logged as one line saying
//! what to do, streams fail with `model_unavailable`, and [`LocalHandle::failed`]
//! resolves, which makes the server shut down and the process exit non-zero.
//!
//! All generation runs on that one named thread ([`worker`]), fed by a bounded queue and
//! batching every active stream into one forward step; tokio's workers never run the
//! model. The handle stops and joins the thread on shutdown.

pub mod fetch;
pub mod model;
pub mod sampler;
pub mod tokenizer;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{
    Backend, BackendError, GenerateRequest, Message, Output, PromptCost, TokenStream, Unsupported,
};
use sampler::SamplerConfig;
use tokenizer::{ChatTokenizer, Detokenizer};
use worker::{Job, Msg, WorkerSetup};

/// The model name clients use.
pub const MODEL: &str = "smollm2-135m";

/// Jobs waiting for the model thread before `generate` waits for room.
const QUEUE: usize = 64;
/// Outputs buffered per stream before the stream is paused.
const PER_STREAM: usize = 256;

/// Where loading stands.
#[derive(Clone)]
pub enum LoadState {
    Loading,
    /// Loaded: its tokenizer, and the context it serves (the file's own context
    /// length, at most [`model::MAX_CONTEXT`]), which prompts are checked against.
    Ready(Arc<ChatTokenizer>, usize),
    Failed(String),
}

#[derive(Clone)]
pub struct LocalBackend {
    state: watch::Receiver<LoadState>,
    jobs: mpsc::Sender<Msg>,
    /// The most context a stream may use (`SPOOL_MODEL_CONTEXT`, at most
    /// [`model::MAX_CONTEXT`]); the loaded model's own context may be smaller.
    cap: usize,
}

/// Owns the model thread: stop it with [`LocalHandle::shutdown`].
pub struct LocalHandle {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    jobs: mpsc::Sender<Msg>,
    state: watch::Receiver<LoadState>,
}

impl LocalBackend {
    /// Starts the model thread; loading happens there, in the background. `context`
    /// (`SPOOL_MODEL_CONTEXT`) caps the context a stream may use.
    pub fn start(
        model_path: Option<PathBuf>,
        context: Option<usize>,
    ) -> anyhow::Result<(LocalBackend, LocalHandle)> {
        let (jobs, rx) = mpsc::channel(QUEUE);
        let (state_tx, state) = watch::channel(LoadState::Loading);
        let stop = Arc::new(AtomicBool::new(false));
        let setup = WorkerSetup {
            model_path,
            rx,
            state: state_tx,
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("spool-model".into())
            .spawn(move || worker::run(setup))?;
        let backend = LocalBackend {
            state: state.clone(),
            jobs: jobs.clone(),
            cap: context.map_or(model::MAX_CONTEXT, |c| c.min(model::MAX_CONTEXT)),
        };
        let handle = LocalHandle {
            thread: Some(thread),
            stop,
            jobs,
            state,
        };
        Ok((backend, handle))
    }

    /// The tokenizer of the loaded model, and the context a stream may use: the
    /// model's own, within the cap.
    fn tokenizer(&self) -> Option<(Arc<ChatTokenizer>, usize)> {
        match &*self.state.borrow() {
            LoadState::Ready(t, context) => Some((t.clone(), (*context).min(self.cap))),
            _ => None,
        }
    }
}

/// Why a prompt of `prompt_tokens` and `max_tokens` more do not fit in `context`.
fn too_long(context: usize, prompt_tokens: usize, max_tokens: u32) -> Option<String> {
    (prompt_tokens + max_tokens as usize > context).then(|| {
        format!(
            "the prompt is {prompt_tokens} tokens and max_tokens is {max_tokens}: together more than the model's context of {context} tokens"
        )
    })
}

impl LocalHandle {
    /// Resolves with the error if the model cannot be loaded (never otherwise). The
    /// future holds no borrow of the handle.
    pub fn failed(&self) -> impl std::future::Future<Output = String> + Send + 'static + use<> {
        let state = self.state.clone();
        Self::failure(state)
    }

    async fn failure(mut state: watch::Receiver<LoadState>) -> String {
        let error = match state.wait_for(|s| matches!(s, LoadState::Failed(_))).await {
            Ok(s) => match &*s {
                LoadState::Failed(e) => Some(e.clone()),
                _ => None,
            },
            Err(_) => None,
        };
        match error {
            Some(e) => e,
            // The thread ended without failing (shutdown): never resolve.
            None => std::future::pending().await,
        }
    }

    /// Stops the model thread (ongoing streams get an error) and joins it.
    pub async fn shutdown(mut self, timeout: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.jobs.try_send(Msg::Wake);
        let Some(thread) = self.thread.take() else {
            return;
        };
        let joined = tokio::task::spawn_blocking(move || thread.join());
        match tokio::time::timeout(timeout, joined).await {
            Ok(Ok(Ok(()))) => {}
            Ok(_) => tracing::error!("the model thread panicked"),
            Err(_) => tracing::warn!("the model thread did not stop in time"),
        }
    }
}

impl Drop for LocalHandle {
    fn drop(&mut self) {
        // Without a shutdown (a test dropping a server): still tell the thread to stop.
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.jobs.try_send(Msg::Wake);
    }
}

fn unavailable(message: String) -> BackendError {
    BackendError {
        code: "model_unavailable".into(),
        message,
    }
}

impl Backend for LocalBackend {
    fn models(&self) -> Vec<String> {
        vec![MODEL.to_owned()]
    }

    fn ready(&self) -> bool {
        matches!(&*self.state.borrow(), LoadState::Ready(..))
    }

    fn can_continue(&self) -> bool {
        true
    }

    fn context_length(&self) -> Option<usize> {
        Some(self.tokenizer().map_or(self.cap, |(_, context)| context))
    }

    /// Counted by the model's tokenizer; before it is loaded, one token per byte (a
    /// byte-level BPE never makes more), so a fitted history still fits once it is.
    fn prompt_cost(&self, messages: &[Message]) -> Option<PromptCost> {
        let counted = self
            .tokenizer()
            .and_then(|(t, _)| t.prompt_cost(messages).ok());
        Some(counted.unwrap_or_else(|| PromptCost {
            fixed: 64 + tokenizer::DEFAULT_SYSTEM.len(),
            messages: messages.iter().map(|m| m.content.len() + 8).collect(),
        }))
    }

    fn check(&self, request: &GenerateRequest) -> Result<(), Unsupported> {
        // Before the model is loaded its tokenizer is unknown: generate checks then.
        let Some((tokenizer, context)) = self.tokenizer() else {
            return Ok(());
        };
        let prompt = tokenizer
            .chat_prompt(&request.prompt)
            .map_err(|e| Unsupported(format!("the prompt cannot be tokenized: {e}")))?;
        match too_long(context, prompt.ids.len(), request.max_tokens) {
            Some(message) => Err(Unsupported(message)),
            None => Ok(()),
        }
    }

    fn generate(&self, request: GenerateRequest, cancel: CancellationToken) -> TokenStream {
        let this = self.clone();
        Box::pin(async_stream::stream! {
            let mut state = this.state.clone();
            let tokenizer = match state.wait_for(|s| !matches!(s, LoadState::Loading)).await {
                Ok(s) => match &*s {
                    LoadState::Ready(t, context) => Ok((t.clone(), (*context).min(this.cap))),
                    LoadState::Failed(e) => Err(format!("the local model could not be loaded: {e}")),
                    LoadState::Loading => Err("the local model is loading".to_owned()),
                },
                Err(_) => Err("the local model has stopped".to_owned()),
            };
            let (tokenizer, context) = match tokenizer {
                Ok(t) => t,
                Err(message) => {
                    yield Err(unavailable(message));
                    return;
                }
            };
            let prompt = match tokenizer.chat_prompt(&request.prompt) {
                Ok(p) => p,
                Err(e) => {
                    yield Err(BackendError { code: "backend_error".into(), message: format!("{e}") });
                    return;
                }
            };
            let prompt_tokens = prompt.ids.len() as u32;
            let generated = request.continuation.as_ref().map(|c| c.ids.clone()).unwrap_or_default();
            if generated.len() >= request.max_tokens as usize {
                // Everything was generated before the crash; only the end was missing.
                yield Ok(Output::Done {
                    reason: crate::event::FinishReason::Length,
                    usage: Some(crate::event::Usage { prompt_tokens, completion_tokens: generated.len() as u32, session_turns: None }),
                });
                return;
            }
            if let Some(message) = too_long(context, prompt.ids.len(), request.max_tokens) {
                yield Err(BackendError { code: "context_length_exceeded".into(), message });
                return;
            }
            yield Ok(Output::Prompt { tokens: prompt_tokens });
            if request.max_tokens == 0 {
                yield Ok(Output::Done {
                    reason: crate::event::FinishReason::Length,
                    usage: Some(crate::event::Usage { prompt_tokens, completion_tokens: 0, session_turns: None }),
                });
                return;
            }
            let seed = request.seed.unwrap_or_else(|| getrandom::u64().unwrap_or(0x5EED));
            let (tx, mut rx) = mpsc::channel(PER_STREAM);
            let detok = Detokenizer::after(&tokenizer, &generated);
            let job = Job {
                prompt: prompt.ids,
                answer_start: prompt.answer_start,
                max_tokens: request.max_tokens,
                generated,
                detok,
                sampler: SamplerConfig::new(request.temperature, request.top_p, seed),
                tx,
                cancel,
            };
            if this.jobs.send(Msg::Job(job)).await.is_err() {
                yield Err(unavailable("the local model has stopped".to_owned()));
                return;
            }
            while let Some(reply) = rx.recv().await {
                let last = !matches!(reply, Ok(Output::Token { .. }) | Ok(Output::Prompt { .. }));
                yield reply;
                if last {
                    return;
                }
            }
            yield Err(unavailable("the local model stopped before finishing the stream".to_owned()));
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_checked_against_the_loaded_models_context() {
        // A model whose file declares 2048 refuses what one of 4096 takes.
        assert!(too_long(4096, 2000, 100).is_none());
        let refused = too_long(2048, 2000, 100).unwrap();
        assert!(refused.contains("context of 2048 tokens"), "{refused}");
        assert!(too_long(2048, 1948, 100).is_none());
    }
}
