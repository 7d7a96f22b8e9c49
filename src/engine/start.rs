//! The one start path. Every way a stream begins — `POST /v1/streams`, a session's
//! turn over HTTP or the WebSocket, a WebSocket `generate`, `/v1/chat/completions` —
//! ends in [`Engine::start`] with a validated request, its owner and, for a session's
//! turn, the session. Every admission rule is applied here, in this order:
//!
//! 1. the server is not shutting down (nor draining), and the store accepts writes;
//! 2. the model is served;
//! 3. a start that came without an HTTP request of its own ([`Via::Socket`]) takes a
//!    token from its key's rate limit (an HTTP request was counted by the key check);
//! 4. a session runs one turn at a time (a new session is created here, for its first
//!    turn); the prompt becomes as much of the session's history as fits the model
//!    (see `sessions`), and the stored request keeps only the user's message;
//! 5. the backend can take the request (context length, parameters);
//! 6. a place in the queue ([`super::Admission`]): within the key's own caps, else
//!    `KeyBusy`, and within the global limits, else `Busy`.
//!
//! Only then is anything stored: the stream row and its `start` event, committed before
//! this returns. The generation task is spawned first and stores them itself: while
//! that commit runs it already waits for its run permit and opens the backend (an
//! upstream request is sent, the first token read), so a stream's first token does not
//! wait for two round trips in turn. Nothing of the generation is written, and nothing
//! reaches a reader, before the stream is stored; if it is not, the generation stops
//! without a trace (a backend's request is dropped).

use std::sync::Arc;

use tracing::Instrument;

use sha2::{Digest, Sha256};

use super::admission::Refused;
use super::sessions::{
    NewSessionRequest, Starting, check_tool_results, fit, is_tool_turn, prompt, running, turn_input,
};
use super::{Engine, Live, StartError, Started, generation};
use crate::event::{Event, now_ms, rfc3339};
use crate::ids::new_stream_id;
use crate::llm::{GenerateRequest, Prompt};
use crate::store::{IdempotencyKey, KEY_TTL, NewStream, NewTurn, SessionRow, StoreError};

/// What every surface hands the start path.
#[derive(Debug)]
pub struct StartRequest {
    /// Validated; for a session's turn, its prompt is the user's message.
    pub request: GenerateRequest,
    /// The API key's owner (`None` without keys).
    pub owner: Option<String>,
    /// The session whose next turn this is.
    pub session: Option<TurnOf>,
    pub via: Via,
    /// The request's `Idempotency-Key`: a retry with the same key (and owner) within
    /// 24 h gets the stream the first request started.
    pub idempotency_key: Option<String>,
}

/// Which session a turn belongs to.
#[derive(Debug)]
pub enum TurnOf {
    /// An existing session (found for the request's owner).
    Session(SessionRow),
    /// A session created for this, its first turn (WebSocket `session.say` without a
    /// `session_id`): created once the start has passed the rate limit.
    New(NewSessionRequest),
}

/// How a start reached the server, for the per-key rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// An HTTP request of its own, which the key check has already counted.
    Http,
    /// A message on an open WebSocket: counted here.
    Socket,
}

impl Engine {
    /// Accepts a generation: applies every admission rule, stores the stream and its
    /// `start` event, then starts the generation task. Returns once the `start` event
    /// is committed.
    pub async fn start(self: &Arc<Self>, start: StartRequest) -> Result<Started, StartError> {
        let StartRequest {
            mut request,
            owner,
            session,
            via,
            idempotency_key,
        } = start;
        if self.draining.is_cancelled() {
            return Err(StartError::ShuttingDown);
        }
        if !self.log.available() {
            return Err(StartError::StoreUnavailable);
        }
        // A retry: the stream its first request started, before any other rule.
        let mut _key_claim = None;
        let idempotency = match idempotency_key {
            None => None,
            Some(key) => {
                let key = IdempotencyKey {
                    owner: owner.clone().unwrap_or_default(),
                    request_hash: request_hash(&request, session.as_ref()),
                    key,
                    expired_before: now_ms() - KEY_TTL.as_millis() as i64,
                };
                if let Some(started) = self.started_under(&key).await? {
                    return Ok(started);
                }
                _key_claim = Some(
                    Starting::claim(self, format!("key/{}/{}", key.owner, key.key)).ok_or(
                        StartError::IdempotencyConflict(
                            "a request with this Idempotency-Key is being started; retry it",
                        ),
                    )?,
                );
                Some(key)
            }
        };
        let Some(backend) = self.models.get(&request.model).cloned() else {
            return Err(StartError::UnknownModel {
                model: request.model.clone(),
                available: self.models.names(),
            });
        };
        if let (Via::Socket, Some(owner)) = (via, owner.as_deref()) {
            self.charge(owner)?;
        }
        let (session, new_session) = match session {
            None => (None, false),
            Some(TurnOf::Session(row)) => (Some(row), false),
            Some(TurnOf::New(new)) => (Some(self.create_session(new, owner.clone()).await?), true),
        };
        // A session's turn: held in `starting_turns` until the stream is stored.
        let mut _starting = None;
        let turn = match &session {
            None => None,
            Some(session) => {
                _starting = Some(
                    Starting::claim(self, format!("turn/{}", session.id))
                        .ok_or(StartError::TurnInProgress)?,
                );
                let turns = self.store.turns(&session.id).await?;
                if turns.last().is_some_and(running) {
                    return Err(StartError::TurnInProgress);
                }
                let input = turn_input(&request.prompt);
                check_tool_results(&turns, &input).map_err(StartError::InvalidTurn)?;
                let idx = turns.last().map_or(0, |t| t.idx + 1);
                let fitted = fit(
                    session,
                    &turns,
                    &input,
                    idx,
                    backend.as_ref(),
                    request.max_tokens,
                    self.session_max_prompt_tokens,
                );
                let turn = NewTurn {
                    session_id: session.id.clone(),
                    idx,
                    role: if is_tool_turn(&input) { "tool" } else { "user" },
                    content: request.prompt.flat_text(),
                    // Given as messages (tool results, content parts): kept as such.
                    messages: match &request.prompt {
                        Prompt::Messages(_) => serde_json::to_string(&input).ok(),
                        Prompt::Text(_) => None,
                    },
                };
                request.prompt = Prompt::Messages(prompt(session, &turns, &input, &fitted));
                request.session_id = Some(session.id.clone());
                request.session_turn = Some(fitted);
                Some((turn, input))
            }
        };
        backend.check(&request).map_err(StartError::Unsupported)?;
        let ticket = match self.admission.try_admit(owner.as_deref()) {
            Ok(ticket) => ticket,
            Err(Refused::Full) => {
                self.metrics.rejected_busy();
                return Err(StartError::Busy);
            }
            Err(Refused::KeyFull { limit }) => {
                self.metrics.rejected_key_limit();
                return Err(StartError::KeyBusy { limit });
            }
        };
        let id = new_stream_id().map_err(|_| StartError::Random)?;
        // At `error` level, like the request span, so it exists under any filter.
        let span = tracing::error_span!("stream", stream_id = %id);
        let created_at = now_ms();
        // A session's turn is stored as its message alone (the history is in the
        // session): the prompt is rebuilt from it to continue after a crash.
        let params = match &turn {
            Some((turn, input)) => {
                // The user's message as text (as it always was), or the messages
                // the turn was given.
                let stored = match turn.messages {
                    Some(_) => Prompt::Messages(input.clone()),
                    None => Prompt::Text(turn.content.clone()),
                };
                let history = std::mem::replace(&mut request.prompt, stored);
                let stored = serde_json::to_string(&request);
                request.prompt = history;
                stored
            }
            None => serde_json::to_string(&request),
        }
        .unwrap_or_else(|_| "{}".to_owned());
        let live = Live::new(self.shutdown.child_token(), request.unattended);

        // Live before the first event exists, so no reader can miss it.
        self.hub.open(&id);
        let early = self.hub.subscribe_early(&id);
        self.live().insert(id.clone(), live.clone());
        let stream = NewStream {
            id: id.clone(),
            owner: owner.clone(),
            model: request.model.clone(),
            params,
            created_at,
            turn: turn.map(|(turn, _)| turn),
            idempotency: idempotency.clone(),
        };
        let start = Event::start(1, &id, &request.model, &rfc3339(created_at));
        let started = Started {
            id: id.clone(),
            model: request.model.clone(),
            created_at,
            session_id: request.session_id.clone(),
            new_session,
            owner,
            early,
        };
        let max_tokens = request.max_tokens;
        let (reply, stored) = tokio::sync::oneshot::channel();
        self.spawn_generation(
            &id,
            request,
            backend,
            live,
            1,
            ticket,
            span.clone(),
            Some(generation::Create {
                stream,
                start,
                reply,
            }),
        );
        let stored = stored.await.unwrap_or(Err(StoreError::Closed));
        if let Err(e) = stored {
            self.hub.close(&id);
            self.live().remove(&id);
            if let (StoreError::Conflict, Some(key)) = (&e, &idempotency) {
                // Another node started this key's request first: that is the answer.
                if let Some(started) = self.started_under(key).await? {
                    return Ok(started);
                }
            }
            return Err(match e {
                // Another node started this session's turn first.
                StoreError::Conflict if session.is_some() => StartError::TurnInProgress,
                StoreError::Unavailable | StoreError::Fenced => StartError::StoreUnavailable,
                e => e.into(),
            });
        }
        self.metrics.stream_started();
        span.in_scope(|| {
            tracing::info!(
                model = %started.model,
                max_tokens,
                session_id = started.session_id.as_deref(),
                "stream started"
            );
        });
        Ok(started)
    }

    /// The stream a request with `key` started within the key's lifetime, if any: the
    /// same request gets it back, a different one is a conflict.
    async fn started_under(&self, key: &IdempotencyKey) -> Result<Option<Started>, StartError> {
        let Some(found) = self
            .store
            .idempotent(&key.owner, &key.key, key.expired_before)
            .await?
        else {
            return Ok(None);
        };
        if found.request_hash != key.request_hash {
            return Err(StartError::IdempotencyConflict(
                "this Idempotency-Key was used for a different request",
            ));
        }
        let Some(row) = self.store.stream_unscoped(&found.stream_id).await? else {
            return Ok(None);
        };
        let request = row.request()?;
        tracing::info!(stream_id = %row.id, "a retried request: the stream its key started");
        Ok(Some(Started {
            id: row.id,
            model: row.model,
            created_at: row.created_at,
            session_id: request.session_id,
            new_session: false,
            early: Default::default(),
            owner: Some(key.owner.clone()).filter(|o| !o.is_empty()),
        }))
    }

    /// Takes one token from `owner`'s rate limit (`SPOOL_RATE_LIMIT`): for every `/v1`
    /// request, and for every stream started without one.
    pub fn charge(&self, owner: &str) -> Result<(), StartError> {
        self.rate
            .take(owner)
            .map_err(|wait| StartError::RateLimited {
                per_minute: self.rate.per_minute(),
                wait,
            })
    }

    /// Runs a stream's generation in a tracked task, after its event `last_seq`; with
    /// `create`, a new stream that the task stores first.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn spawn_generation(
        self: &Arc<Self>,
        id: &str,
        request: GenerateRequest,
        backend: Arc<dyn crate::llm::Backend>,
        live: Live,
        last_seq: u64,
        ticket: super::admission::Ticket,
        span: tracing::Span,
        create: Option<generation::Create>,
    ) {
        let generation = generation::Generation {
            engine: self.clone(),
            id: Arc::from(id),
            request,
            backend,
            cancel: live.cancel,
            ended: live.ended,
            last_seq,
        };
        self.tasks
            .spawn(generation.run(ticket, create).instrument(span));
    }
}

/// A digest of what a request asks for: a retry under the same key must ask the same.
fn request_hash(request: &GenerateRequest, session: Option<&TurnOf>) -> String {
    let mut hash = Sha256::new();
    hash.update(serde_json::to_string(request).unwrap_or_default());
    if let Some(TurnOf::Session(s)) = session {
        hash.update(b"\0session:");
        hash.update(s.id.as_bytes());
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
