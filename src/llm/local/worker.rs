//! The model thread: finds and loads the model, then runs every local generation in one
//! continuous batch.
//!
//! Each step it takes new jobs from its bounded queue, drops sequences whose reader is
//! gone or whose stream was cancelled, and runs one forward pass over every remaining
//! sequence (prompt chunks of newcomers, one token of the others), then samples one token
//! per sequence that has consumed all its input. Output goes to each stream through its
//! own bounded channel; a stream whose channel is full is paused (left out of the batch)
//! until it drains, so a slow consumer never stalls the others.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::model::{KvCache, Model, Segment};
use super::sampler::{self, SamplerConfig};
use super::tokenizer::{ChatTokenizer, Detokenizer, END_OF_TEXT, IM_END};
use super::{LoadState, fetch};
use crate::event::{FinishReason, Usage};
use crate::llm::{BackendError, Output};

/// Sequences decoded together at most; more wait in the queue.
pub const MAX_BATCH: usize = 16;
/// Prompt tokens a sequence feeds per step, so a long prompt does not stall the others
/// for long. Fixed per sequence (not shared), so how a prompt is split never depends on
/// what else runs, and results stay identical solo or batched.
pub const PREFILL_CHUNK: usize = 256;

pub type Reply = Result<Output, BackendError>;

pub enum Msg {
    Job(Job),
    /// Wakes the thread to look at its stop flag.
    Wake,
}

pub struct Job {
    pub prompt: Vec<u32>,
    /// Where the assistant's answer starts in `prompt`: the repeat penalty looks only at
    /// the answer, never at the question (it would steer away from the words asked about).
    pub answer_start: usize,
    pub max_tokens: u32,
    /// A continued stream's tokens generated before a crash: re-fed after the prompt.
    pub generated: Vec<u32>,
    /// The detokenizer as it was after `generated`.
    pub detok: Detokenizer,
    pub sampler: SamplerConfig,
    pub tx: mpsc::Sender<Reply>,
    pub cancel: CancellationToken,
}

struct Seq {
    job: Job,
    prompt_tokens: u32,
    /// Prompt and generated ids.
    context: Vec<u32>,
    /// How many of `context` are in the cache.
    fed: usize,
    cache: KvCache,
    generated: u32,
    detok: Detokenizer,
    outbox: VecDeque<Reply>,
    finished: bool,
}

impl Seq {
    fn new(mut job: Job) -> Seq {
        let mut context = job.prompt.clone();
        context.extend_from_slice(&job.generated);
        Seq {
            prompt_tokens: job.prompt.len() as u32,
            fed: 0,
            cache: KvCache::default(),
            generated: job.generated.len() as u32,
            detok: std::mem::take(&mut job.detok),
            context,
            outbox: VecDeque::new(),
            finished: false,
            job,
        }
    }

    /// Sends what it can; false once the reader is gone.
    fn flush(&mut self) -> bool {
        while let Some(reply) = self.outbox.pop_front() {
            match self.job.tx.try_send(reply) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(reply)) => {
                    self.outbox.push_front(reply);
                    return true;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        true
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.generated,
            session_turns: None,
        }
    }

    fn finish(&mut self, reason: FinishReason, text: String) {
        if !text.is_empty() {
            self.outbox.push_back(Ok(Output::Token { text, id: None }));
        }
        let usage = Some(self.usage());
        self.outbox.push_back(Ok(Output::Done { reason, usage }));
        self.finished = true;
    }

    fn fail(&mut self, message: String) {
        self.outbox.push_back(Err(BackendError {
            code: "backend_error".into(),
            message,
        }));
        self.finished = true;
    }

    /// Takes the token sampled at the end of `context`.
    fn accept(&mut self, id: u32, tokenizer: &ChatTokenizer, context_limit: usize) {
        if id == IM_END || id == END_OF_TEXT {
            let rest = self.detok.finish();
            self.finish(FinishReason::Stop, rest);
            return;
        }
        self.context.push(id);
        self.generated += 1;
        let mut text = self.detok.push(tokenizer.token_bytes(id));
        if self.generated >= self.job.max_tokens || self.context.len() >= context_limit {
            text.push_str(&self.detok.finish());
            self.outbox
                .push_back(Ok(Output::Token { text, id: Some(id) }));
            let usage = Some(self.usage());
            self.outbox.push_back(Ok(Output::Done {
                reason: FinishReason::Length,
                usage,
            }));
            self.finished = true;
            return;
        }
        // One output per token, even when it completes no character yet, so the engine's
        // count of tokens is true; the id lets a crash continue the stream exactly.
        self.outbox
            .push_back(Ok(Output::Token { text, id: Some(id) }));
    }
}

/// What the model thread needs.
pub struct WorkerSetup {
    pub model_path: Option<PathBuf>,
    pub rx: mpsc::Receiver<Msg>,
    pub state: watch::Sender<LoadState>,
    pub stop: Arc<AtomicBool>,
}

/// The body of the model thread.
pub fn run(setup: WorkerSetup) {
    let WorkerSetup {
        model_path,
        mut rx,
        state,
        stop,
    } = setup;
    let started = Instant::now();
    let loaded = fetch::locate(model_path.as_deref(), &stop).and_then(|path| {
        tracing::info!(path = %path.display(), "loading the model");
        Model::load(&path)
    });
    // One warm-up step before declaring ready: candle repacks each weight matrix on its
    // first use, which would otherwise land on the first client's time to first token.
    let loaded = loaded.and_then(|l| {
        let mut cache = KvCache::default();
        l.model.forward(&mut [Segment {
            cache: &mut cache,
            tokens: &[IM_END, END_OF_TEXT],
        }])?;
        Ok(l)
    });
    let (model, tokenizer) = match loaded {
        Ok(l) => (l.model, Arc::new(l.tokenizer)),
        Err(e) => {
            if !stop.load(Ordering::Relaxed) {
                tracing::error!("the local model is unavailable: {e:#}");
            }
            state.send_replace(LoadState::Failed(format!("{e:#}")));
            return;
        }
    };
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        layers = model.config.layers,
        vocab = model.config.vocab,
        compute_threads = std::env::var("CANDLE_NUM_THREADS")
            .unwrap_or_else(|_| "all physical cores (CANDLE_NUM_THREADS unset)".into()),
        "model loaded"
    );
    state.send_replace(LoadState::Ready(tokenizer.clone(), model.config.context));
    serve(&model, &tokenizer, &mut rx, &stop);
    // Jobs still queued end with an error rather than hanging their streams.
    rx.close();
    while let Ok(msg) = rx.try_recv() {
        if let Msg::Job(job) = msg {
            let _ = job.tx.try_send(Err(stopped()));
        }
    }
}

fn stopped() -> BackendError {
    BackendError {
        code: "backend_error".into(),
        message: "the model is shutting down".into(),
    }
}

fn serve(
    model: &Model,
    tokenizer: &ChatTokenizer,
    rx: &mut mpsc::Receiver<Msg>,
    stop: &AtomicBool,
) {
    let mut active: Vec<Seq> = Vec::new();
    loop {
        if stop.load(Ordering::Relaxed) {
            for mut seq in active {
                seq.outbox.clear();
                seq.outbox.push_back(Err(stopped()));
                seq.flush();
            }
            return;
        }
        // Intake: block only when there is nothing to do.
        while active.len() < MAX_BATCH {
            let msg = if active.is_empty() {
                match rx.blocking_recv() {
                    Some(m) => m,
                    None => return,
                }
            } else {
                match rx.try_recv() {
                    Ok(m) => m,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            };
            match msg {
                Msg::Job(job) => active.push(Seq::new(job)),
                Msg::Wake => break,
            }
        }
        // Leave out what is over: cancelled, reader gone, or finished and delivered.
        active.retain_mut(|seq| {
            if seq.job.cancel.is_cancelled() || seq.job.tx.is_closed() {
                return false;
            }
            seq.flush() && !(seq.finished && seq.outbox.is_empty())
        });
        // Paused: finished but undelivered, or a full channel.
        let runnable: Vec<usize> = (0..active.len())
            .filter(|&i| !active[i].finished && active[i].outbox.is_empty())
            .collect();
        if runnable.is_empty() {
            if !active.is_empty() {
                std::thread::sleep(Duration::from_millis(2));
            }
            continue;
        }
        step(model, tokenizer, &mut active, &runnable);
    }
}

/// One forward pass over the runnable sequences, and one sampled token for each that has
/// consumed all its input.
fn step(model: &Model, tokenizer: &ChatTokenizer, active: &mut [Seq], runnable: &[usize]) {
    let context_limit = model.config.context;
    // Each runnable sequence lends its cache and its next input: the rest of its prompt
    // (up to a chunk) or its last sampled token.
    let mut picked: Vec<&mut Seq> = active
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| runnable.contains(i))
        .map(|(_, s)| s)
        .collect();
    let mut chunks = Vec::with_capacity(picked.len());
    let mut segs = Vec::with_capacity(picked.len());
    for seq in picked.iter_mut() {
        let Seq {
            cache,
            context,
            fed,
            ..
        } = &mut **seq;
        let end = context.len().min(*fed + PREFILL_CHUNK);
        chunks.push(end);
        segs.push(Segment {
            cache,
            tokens: &context[*fed..end],
        });
    }
    let result = model.forward(&mut segs);
    drop(segs);
    match result {
        Ok(logits) => {
            for ((seq, to), mut logits) in picked.iter_mut().zip(chunks).zip(logits) {
                seq.fed = to;
                if seq.fed < seq.context.len() || logits.is_empty() {
                    continue; // still prefilling
                }
                let position = seq.context.len() as u64;
                let answer = &seq.context[seq.job.answer_start.min(seq.context.len())..];
                let id = sampler::sample(&seq.job.sampler, &mut logits, answer, position);
                seq.accept(id, tokenizer, context_limit);
                seq.flush();
            }
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "forward pass failed");
            for seq in picked.iter_mut() {
                seq.fail(format!("the model failed: {e}"));
                seq.flush();
            }
        }
    }
}
