//! The generation task of one stream: store a new stream (see [`Create`]), wait for a
//! run permit, pull tokens from the backend, number and persist them, and end the
//! stream with exactly one terminal event.
//! It runs inside the stream's span (see the engine), and logs one line when the stream
//! ends: how, with what usage, after how long.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::admission::{Activation, RunPermit, Ticket};
use super::{Engine, StopFilter};
use crate::answer::Answer;
use crate::event::{Event, FinishReason, StreamStatus, ToolCallData, Usage, now_ms};
use crate::llm::{Backend, BackendError, GenerateRequest, Output, TokenStream};
use crate::store::{INTERRUPTED, INTERRUPTED_MESSAGE, NewStream, StoreError, StreamEnd};

/// A new stream, which the generation stores before it writes anything else. Until
/// that commit returns it only prepares: it waits for its run permit and opens the
/// backend's stream, reading at most its first item (an upstream's first token).
/// `reply` hears how the commit went; if it failed, the generation ends without
/// writing anything.
pub(super) struct Create {
    pub stream: NewStream,
    pub start: Event,
    pub reply: oneshot::Sender<Result<(), StoreError>>,
}

/// What a generation readies while its stream is being stored.
#[derive(Default)]
struct Ready {
    permit: Option<RunPermit>,
    /// The admission queue is gone (shutdown): no permit will come.
    lost: bool,
    tokens: Option<TokenStream>,
    /// The backend's first item, read ahead.
    first: Option<Option<Result<Output, BackendError>>>,
}

pub(super) struct Generation {
    pub engine: Arc<Engine>,
    pub id: Arc<str>,
    pub request: GenerateRequest,
    pub backend: Arc<dyn Backend>,
    pub cancel: CancellationToken,
    pub ended: CancellationToken,
    /// The seq of the stream's last stored event: 1 (its `start`) for a new stream,
    /// more for one continued after a crash.
    pub last_seq: u64,
}

/// How a generation ended.
enum Ending {
    Finished(FinishReason),
    Cancelled,
    Interrupted,
    /// Stopped at shutdown without an end: the next process (or another node)
    /// continues it from its stored events.
    HandedOn,
    Failed(BackendError),
    /// The store refused an event (it has shut down, or the writer took the stream
    /// over after the retry window and ends it itself): nothing more is written.
    StoreGone,
    /// The new stream could not be stored: it does not exist, and nothing is written.
    NotStored,
}

struct Progress {
    /// When the task began (the stream was accepted).
    began: Instant,
    /// The seq of the last event handed to the writer (`start` is 1).
    seq: u64,
    /// The seq of the first event this run appends (it skips the writer's queue).
    first_seq: u64,
    prompt_tokens: u32,
    completion_tokens: u32,
    reported: Option<Usage>,
    /// Everything emitted, kept only for a session's turn: its text and tool calls are
    /// the turn's content at the end.
    turn: Option<Answer>,
    /// Token ids whose text is not in an event yet (see `Output::Token`).
    pending_ids: Vec<u32>,
    /// Log-probabilities of text not in an event yet (see `Output::Logprobs`).
    pending_logprobs: Vec<serde_json::Value>,
    /// A continued stream: text already stored that the backend generates again.
    skip: String,
}

impl Generation {
    pub async fn run(self, ticket: Ticket, create: Option<Create>) {
        let mut progress = Progress {
            began: Instant::now(),
            seq: self.last_seq,
            first_seq: self.last_seq + 1,
            prompt_tokens: 0,
            completion_tokens: 0,
            reported: None,
            // A continued turn's text so far (backends that continue a stream emit
            // no tool calls).
            turn: self.request.session_id.as_ref().map(|_| {
                let mut turn = Answer::default();
                if let Some(c) = &self.request.continuation {
                    turn.text.clone_from(&c.text);
                }
                turn
            }),
            pending_ids: Vec::new(),
            pending_logprobs: Vec::new(),
            skip: self
                .request
                .continuation
                .as_ref()
                .map(|c| c.unstored_text.clone())
                .unwrap_or_default(),
        };
        let ending = self.drive(ticket, create, &mut progress).await;
        if matches!(ending, Ending::NotStored) {
            self.engine.forget(&self.id);
            self.ended.cancel();
            return;
        }
        self.end(ending, &progress).await;
        if self.engine.log.is_doomed(&self.id) {
            // The writer ends this stream (store_unavailable); it waits for this word
            // before it stops dropping the stream's events.
            self.engine.log.abandon(self.id.clone()).await;
        }
        self.engine.forget(&self.id);
        self.ended.cancel();
    }

    /// Why `cancel` fired: the server's shutdown or a client. At shutdown a stream
    /// whose backend can continue it is handed on; so is every stream of a halted
    /// engine (another node owns them).
    fn stopped(&self) -> Ending {
        if !self.engine.shutdown.is_cancelled() {
            Ending::Cancelled
        } else if self.engine.is_halted() || self.backend.can_continue() {
            Ending::HandedOn
        } else {
            Ending::Interrupted
        }
    }

    /// Stores a new stream (see [`Create`]) while getting ready to run it.
    async fn store(
        &self,
        create: Option<Create>,
        activation: &mut Activation<'_>,
        ready: &mut Ready,
    ) -> bool {
        let Some(Create {
            stream,
            start,
            reply,
        }) = create
        else {
            return true;
        };
        let stored = {
            let commit = self.engine.log.create(stream, start);
            tokio::pin!(commit);
            tokio::select! {
                biased;
                stored = &mut commit => stored,
                () = self.get_ready(activation, ready) => commit.await,
            }
        };
        let ok = stored.is_ok();
        // The start path may have given up waiting (its client went away): the stream
        // runs all the same, as one whose request returned.
        let _ = reply.send(stored);
        ok
    }

    /// Waits for the run permit, then opens the backend's stream and reads its first
    /// item; then waits for ever (the caller stops waiting once the stream is stored).
    /// Dropped at any await, what it got so far stays in `ready`.
    async fn get_ready(&self, activation: &mut Activation<'_>, ready: &mut Ready) {
        if ready.permit.is_none() && !ready.lost {
            match activation.await {
                Ok(p) => ready.permit = Some(p),
                Err(_) => {
                    ready.lost = true;
                    return std::future::pending().await;
                }
            }
        }
        if self.cancel.is_cancelled() {
            return std::future::pending().await;
        }
        let tokens = ready.tokens.get_or_insert_with(|| {
            self.backend
                .generate(self.request.clone(), self.cancel.clone())
        });
        if ready.first.is_none() {
            ready.first = Some(tokens.next().await);
        }
        std::future::pending().await
    }

    async fn drive(
        &self,
        ticket: Ticket,
        create: Option<Create>,
        progress: &mut Progress,
    ) -> Ending {
        let accepted = Instant::now();
        let mut ready = Ready::default();
        // In the queue from now on (and in the same place until the permit comes).
        let mut activation = ticket.activate();
        if !self.store(create, &mut activation, &mut ready).await {
            return Ending::NotStored;
        }
        let _permit = match ready.permit.take() {
            Some(p) => p,
            None if ready.lost => return Ending::Interrupted,
            None => tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return self.stopped(),
                permit = &mut activation => match permit {
                    Ok(p) => p,
                    Err(_) => return Ending::Interrupted,
                },
            },
        };
        if self.cancel.is_cancelled() {
            return self.stopped();
        }
        if self
            .engine
            .log
            .running(self.id.clone(), now_ms())
            .await
            .is_err()
        {
            return Ending::StoreGone;
        }
        tracing::debug!(
            queued_ms = accepted.elapsed().as_millis() as u64,
            "stream running"
        );
        let mut stop = StopFilter::new(&self.request.stop);
        let mut tokens = match ready.tokens.take() {
            Some(tokens) => tokens,
            None => self
                .backend
                .generate(self.request.clone(), self.cancel.clone()),
        };
        let mut read_ahead = ready.first.take();
        let mut first = true;
        // A backend that is slow to yield must not keep a stream the writer took over.
        let mut doomed = self.engine.log.doom_changes();
        loop {
            let item = match read_ahead.take() {
                Some(item) => item,
                None => tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return self.stopped(),
                Ok(()) = doomed.changed() => {
                    if self.engine.log.is_doomed(&self.id) {
                        return Ending::StoreGone;
                    }
                    continue;
                }
                item = tokens.next() => item,
                },
            };
            let text = match item {
                Some(Ok(Output::Token { text, id })) => {
                    progress.pending_ids.extend(id);
                    skip_stored(&mut progress.skip, text)
                }
                Some(Ok(Output::Prompt { tokens })) => {
                    progress.prompt_tokens = tokens;
                    continue;
                }
                Some(Ok(Output::Logprobs { content })) => {
                    progress.pending_logprobs.extend(content);
                    continue;
                }
                Some(Ok(
                    part @ (Output::Reasoning { .. }
                    | Output::ToolCall { .. }
                    | Output::Refusal { .. }),
                )) => {
                    // A part other than text ends any text held back for a stop
                    // sequence: that text came first.
                    if let Err(e) = self.emit(stop.finish(), true, progress).await {
                        return e;
                    }
                    progress.completion_tokens += 1;
                    self.engine.metrics.token_generated();
                    if first {
                        first = false;
                        self.engine.metrics.observe_ttft(accepted.elapsed());
                    }
                    if let Err(e) = self.emit_part(part, progress).await {
                        return e;
                    }
                    continue;
                }
                Some(Ok(Output::Done { reason, usage })) => {
                    progress.reported = usage;
                    if let Err(e) = self.emit(stop.finish(), true, progress).await {
                        return e;
                    }
                    return Ending::Finished(reason);
                }
                Some(Err(e)) => return Ending::Failed(e),
                None => {
                    return Ending::Failed(BackendError {
                        code: "backend_error".into(),
                        message: "the backend ended the stream without finishing it".into(),
                    });
                }
            };
            progress.completion_tokens += 1;
            self.engine.metrics.token_generated();
            if first {
                first = false;
                self.engine.metrics.observe_ttft(accepted.elapsed());
            }
            let filtered = stop.push(text);
            // Ids go with an event only when it leaves no text of theirs held back.
            let complete = !stop.is_holding();
            if let Err(e) = self.emit(filtered.text, complete, progress).await {
                return e;
            }
            if filtered.stopped {
                return Ending::Finished(FinishReason::Stop);
            }
        }
    }

    /// Queues one token event, unless there is no text. With `complete`, the event
    /// carries the ids of every token whose text it completes.
    async fn emit(
        &self,
        text: String,
        complete: bool,
        progress: &mut Progress,
    ) -> Result<(), Ending> {
        if text.is_empty() {
            return Ok(());
        }
        progress.seq += 1;
        if let Some(turn) = &mut progress.turn {
            turn.text.push_str(&text);
        }
        let ids = if complete {
            std::mem::take(&mut progress.pending_ids)
        } else {
            Vec::new()
        };
        let event = if progress.pending_logprobs.is_empty() {
            Event::token(progress.seq, &text)
        } else {
            let logprobs = std::mem::take(&mut progress.pending_logprobs);
            Event::token_with_logprobs(progress.seq, &text, logprobs)
        };
        let log = &self.engine.log;
        if progress.seq == progress.first_seq {
            log.append_first(self.id.clone(), event, ids, None).await
        } else {
            log.append_with_ids(self.id.clone(), event, ids, None).await
        }
        .map_err(|_: StoreError| Ending::StoreGone)
    }

    /// Queues one event for a part of the answer other than text.
    async fn emit_part(&self, part: Output, progress: &mut Progress) -> Result<(), Ending> {
        let seq = progress.seq + 1;
        let event = match part {
            Output::Reasoning { text, field } => Event::reasoning(seq, &text, field),
            Output::Refusal { text } => Event::refusal(seq, &text),
            Output::ToolCall {
                index,
                id,
                name,
                arguments,
            } => Event::tool_call(
                seq,
                &ToolCallData {
                    index,
                    id: id.map(Into::into),
                    name: name.map(Into::into),
                    arguments: arguments.into(),
                },
            ),
            Output::Token { .. }
            | Output::Prompt { .. }
            | Output::Logprobs { .. }
            | Output::Done { .. } => return Ok(()),
        };
        progress.seq = seq;
        if let Some(turn) = &mut progress.turn {
            turn.push(&event);
        }
        let log = &self.engine.log;
        if seq == progress.first_seq {
            // The run's first event skips the writer's queue, whatever part it is.
            log.append_first(self.id.clone(), event, Vec::new(), None)
                .await
        } else {
            log.append(self.id.clone(), event, None).await
        }
        .map_err(|_: StoreError| Ending::StoreGone)
    }

    /// Writes the one terminal event (none once the engine is halted: the stream
    /// belongs to another node).
    async fn end(&self, ending: Ending, progress: &Progress) {
        if self.engine.is_halted() {
            tracing::warn!("stream left to the node that took it over");
            return;
        }
        if self.engine.log.is_doomed(&self.id) {
            tracing::warn!(
                "the store refused this stream's events for longer than the retry window; \
                 it ends with store_unavailable once the store accepts writes"
            );
            return;
        }
        if let Ending::HandedOn = ending {
            tracing::info!(
                events = progress.seq,
                "stream left running for the next process to continue"
            );
            self.engine.handed_on(&self.id);
            return;
        }
        let mut usage = progress.reported.unwrap_or(Usage {
            prompt_tokens: progress.prompt_tokens,
            completion_tokens: progress.completion_tokens,
            session_turns: None,
        });
        usage.session_turns = self.request.session_turn.map(|t| t.used);
        let seq = progress.seq + 1;
        let finished_at = now_ms();
        let (event, status, reason, error) = match ending {
            Ending::Finished(reason) => (
                Event::done(seq, reason, usage),
                StreamStatus::Completed,
                Some(reason),
                None,
            ),
            Ending::Cancelled => (
                Event::done(seq, FinishReason::Cancelled, usage),
                StreamStatus::Cancelled,
                Some(FinishReason::Cancelled),
                None,
            ),
            Ending::Interrupted => (
                Event::error(seq, INTERRUPTED, INTERRUPTED_MESSAGE),
                StreamStatus::Interrupted,
                None,
                Some((INTERRUPTED.to_owned(), INTERRUPTED_MESSAGE.to_owned())),
            ),
            Ending::Failed(e) => (
                Event::error(seq, &e.code, &e.message),
                StreamStatus::Failed,
                None,
                Some((e.code, e.message)),
            ),
            Ending::HandedOn | Ending::NotStored => return,
            Ending::StoreGone => {
                tracing::error!(
                    "the store refused this stream's events; start-up recovery will end it"
                );
                return;
            }
        };
        let ms = progress.began.elapsed().as_millis() as u64;
        let (code, message) = error.as_ref().map(|(c, m)| (c.clone(), m.clone())).unzip();
        let end = StreamEnd {
            status,
            finish_reason: reason,
            error,
            usage,
            finished_at,
            turn_text: progress.turn.as_ref().map(|t| t.text.clone()),
            // Only a completed answer's calls are part of the history: a cut-off one's
            // arguments may be half written.
            turn_tool_calls: progress
                .turn
                .as_ref()
                .map(Answer::tool_calls)
                .filter(|calls| status == StreamStatus::Completed && !calls.is_empty())
                .and_then(|calls| serde_json::to_string(&calls).ok()),
        };
        match self
            .engine
            .log
            .append(self.id.clone(), event, Some(end))
            .await
        {
            Ok(()) => {
                self.engine.finished(status);
                if status == StreamStatus::Failed {
                    tracing::warn!(
                        status = status.as_str(),
                        code,
                        message,
                        prompt_tokens = usage.prompt_tokens,
                        completion_tokens = usage.completion_tokens,
                        events = seq,
                        ms,
                        "stream ended"
                    );
                } else {
                    tracing::info!(
                        status = status.as_str(),
                        finish_reason = reason.map(FinishReason::as_str),
                        code,
                        prompt_tokens = usage.prompt_tokens,
                        completion_tokens = usage.completion_tokens,
                        events = seq,
                        ms,
                        "stream ended"
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "could not write the terminal event"),
        }
    }
}

/// A continued stream regenerates the text that was stored after its last stored ids;
/// that much is dropped (it was sent before the crash). Returns what is left of `text`.
fn skip_stored(skip: &mut String, text: String) -> String {
    if skip.is_empty() {
        return text;
    }
    if skip.starts_with(&text) {
        skip.drain(..text.len());
        return String::new();
    }
    if let Some(rest) = text.strip_prefix(skip.as_str()) {
        let rest = rest.to_owned();
        skip.clear();
        return rest;
    }
    // Only a backend that is not deterministic gets here; send its text as it is.
    tracing::warn!("a continued stream did not regenerate its stored text");
    skip.clear();
    text
}

#[cfg(test)]
mod tests {
    use super::skip_stored;

    #[test]
    fn stored_text_is_skipped_across_token_boundaries() {
        let mut skip = " wor".to_owned();
        assert_eq!(skip_stored(&mut skip, " w".into()), "");
        assert_eq!(skip_stored(&mut skip, "orld".into()), "ld");
        assert!(skip.is_empty());
        assert_eq!(skip_stored(&mut skip, " next".into()), " next");
    }
}
