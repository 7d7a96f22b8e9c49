//! One WebSocket connection: reads client messages, starts and cancels streams, and
//! follows any number of streams at once, each in its own task.
//!
//! Backpressure: every outgoing message goes through one bounded queue drained by the
//! connection's writer. A follower whose message does not fit waits; meanwhile its
//! stream's live channel runs ahead without it, and when it gets going again it is
//! told it lagged and catches up from the store. So a slow socket never slows a
//! generation or another socket, and memory per socket is bounded.
//!
//! A peer that sends but never reads cannot stall the read loop: the server's own
//! replies (`started`, `error`, `pong`) wait at most the pong timeout for room in the
//! queue, and past it the socket is closed as a dead peer; once the read loop has ended,
//! the writer has [`FINAL_WRITE`] to flush. Shutdown and the pong timeout always apply.
//!
//! The stream limit (`SPOOL_WS_MAX_STREAMS`) counts the streams this socket follows and
//! the generations it started and has not seen end, so `unsubscribe` frees no room
//! while a generation runs on. The same record holds the `cancel_on_disconnect` streams,
//! and is pruned as its streams end.
//!
//! **Architecture Invariant:** a socket closing never cancels its streams, except the
//! ones generated with `"cancel_on_disconnect": true`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, close_code};
use futures_util::{SinkExt, StreamExt};

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;

use super::protocol::{self, Incoming};
use crate::engine::{Access, Follow, Started, StreamEnding, Via};
use crate::http::error::{ApiError, ErrorCode};
use crate::http::params::StreamParams;
use crate::http::sessions::SessionParams;
use crate::http::sse::FINAL_WRITE;
use crate::http::state::HttpState;

/// What the writer sends: a text message, a Ping, or the closing frame.
enum Out {
    Text(String),
    Ping,
    Close(u16, &'static str),
}

pub async fn run(
    socket: WebSocket,
    state: HttpState,
    owner: Option<String>,
    _permit: OwnedSemaphorePermit,
) {
    state.metrics().ws_opened();
    let (sink, frames) = socket.split();
    let (out, out_rx) = mpsc::channel(state.ws().queue.max(1));
    let mut connection = Connection {
        state: state.clone(),
        owner,
        out,
        followers: JoinSet::new(),
        following: HashMap::new(),
        generated: HashMap::new(),
        stalled: AtomicBool::new(false),
    };
    let read_done = tokio_util::sync::CancellationToken::new();
    // The reader owns the connection, so that its end drops the last sender of the
    // writer's queue: the writer then closes the socket (else a peer that closed, or
    // broke the protocol, would leave the socket and its permit held for good).
    let reader = {
        let read_done = read_done.clone();
        async move {
            connection.read_loop(frames).await;
            connection.finish().await;
            read_done.cancel();
        }
    };
    // A peer that does not read blocks the writer in `send`: once the reader is done,
    // the writer gets a bounded time to flush, then the socket is dropped.
    let writer = async {
        tokio::select! {
            _ = write_loop(sink, out_rx) => {}
            _ = async {
                read_done.cancelled().await;
                tokio::time::sleep(FINAL_WRITE).await;
            } => tracing::debug!("the peer reads nothing; dropping the socket"),
        }
    };
    tokio::join!(reader, writer);
    state.metrics().ws_closed();
    tracing::info!("websocket closed");
}

async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Out>,
) {
    while let Some(out) = rx.recv().await {
        let (message, last) = match out {
            Out::Text(text) => (Message::Text(Utf8Bytes::from(text)), false),
            Out::Ping => (Message::Ping(Default::default()), false),
            Out::Close(code, reason) => (
                Message::Close(Some(CloseFrame {
                    code,
                    reason: Utf8Bytes::from_static(reason),
                })),
                true,
            ),
        };
        if sink.send(message).await.is_err() || last {
            break;
        }
    }
    let _ = sink.close().await;
}

struct Connection {
    state: HttpState,
    /// The API key's owner (see `http::auth`); every stream it touches is scoped to it.
    owner: Option<String>,
    out: mpsc::Sender<Out>,
    /// One task per followed stream; each returns its stream id when it ends.
    followers: JoinSet<String>,
    following: HashMap<String, AbortHandle>,
    /// The generations this socket started whose end it has not seen (pruned as they
    /// end): they count against the stream limit whether followed or not.
    generated: HashMap<String, Generated>,
    /// A reply found no room in the queue within the pong timeout: the peer does not
    /// read, and the read loop closes the socket.
    stalled: AtomicBool,
}

/// A generation this socket started.
struct Generated {
    ending: StreamEnding,
    /// Cancelled when the socket closes.
    cancel_on_disconnect: bool,
}

impl Connection {
    async fn read_loop(&mut self, mut frames: futures_util::stream::SplitStream<WebSocket>) {
        let config = self.state.ws().clone();
        let shutdown = self.state.shutdown_token();
        let mut ping = tokio::time::interval_at(
            Instant::now() + config.ping_interval,
            config.ping_interval.max(Duration::from_millis(10)),
        );
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    // Followers of streams that ended at shutdown send their end first.
                    let finish = async {
                        while let Some(done) = self.followers.join_next().await {
                            if let Ok(id) = done {
                                self.following.remove(&id);
                            }
                        }
                    };
                    let _ = tokio::time::timeout(crate::http::sse::FINAL_WRITE, finish).await;
                    self.close(close_code::AWAY, "the server is shutting down").await;
                    return;
                }
                frame = frames.next() => {
                    let message = match frame {
                        None => return,
                        Some(Ok(message)) => message,
                        Some(Err(e)) => {
                            if is_too_big(&e) {
                                self.close(close_code::SIZE, "message too big").await;
                            }
                            return;
                        }
                    };
                    heard = Instant::now();
                    match message {
                        Message::Text(text) => {
                            self.on_text(text.as_str()).await;
                            if self.stalled.load(Ordering::Relaxed) {
                                self.state.metrics().ws_timed_out();
                                tracing::info!("closing a socket whose peer reads nothing");
                                return;
                            }
                        }
                        Message::Binary(_) => {
                            self.send(protocol::error(
                                ErrorCode::UnsupportedFrame.as_str(),
                                "binary frames are not supported; send JSON text frames",
                                None,
                                None,
                            ))
                            .await;
                        }
                        Message::Ping(_) | Message::Pong(_) => {}
                        Message::Close(_) => return,
                    }
                }
                _ = ping.tick() => {
                    self.prune();
                    if heard.elapsed() > config.pong_timeout {
                        self.state.metrics().ws_timed_out();
                        self.close(close_code::POLICY, "no pong within the timeout").await;
                        return;
                    }
                    // Never wait on a full queue for a ping: a peer that slow will time out.
                    let _ = self.out.try_send(Out::Ping);
                }
                Some(done) = self.followers.join_next() => {
                    if let Ok(id) = done {
                        self.following.remove(&id);
                    }
                    self.prune();
                }
            }
        }
    }

    /// Forgets the generations that have ended.
    fn prune(&mut self) {
        self.generated.retain(|_, g| !g.ending.is_over());
    }

    /// Stops every follower and cancels the streams that asked for it.
    async fn finish(&mut self) {
        self.followers.abort_all();
        while self.followers.join_next().await.is_some() {}
        let cancel = self
            .generated
            .drain()
            .filter(|(_, g)| g.cancel_on_disconnect && !g.ending.is_over());
        for (id, _) in cancel {
            if let Err(e) = self.state.engine().cancel(&id, self.owner.as_deref()).await {
                tracing::warn!(stream_id = %id, error = %e, "cancel on disconnect failed");
            }
        }
    }

    /// Queues a reply. It waits for room at most the pong timeout (a peer that reads
    /// nothing fills the queue): past it the reply is dropped and the socket marked
    /// stalled, for the read loop to close. At shutdown the reply is dropped (the read
    /// loop closes the socket next); with the writer gone, so is the peer.
    async fn send(&self, text: String) {
        if self.stalled.load(Ordering::Relaxed) {
            return;
        }
        let shutdown = self.state.shutdown_token();
        let timed_out = tokio::select! {
            _ = self.out.send(Out::Text(text)) => false,
            _ = tokio::time::sleep(self.state.ws().pong_timeout) => true,
            _ = shutdown.cancelled() => false,
        };
        if timed_out {
            self.stalled.store(true, Ordering::Relaxed);
        }
    }

    /// Queues the closing frame, if there is room within [`FINAL_WRITE`].
    async fn close(&self, code: u16, reason: &'static str) {
        let _ = tokio::time::timeout(FINAL_WRITE, self.out.send(Out::Close(code, reason))).await;
    }

    async fn send_error(&self, e: &ApiError, reference: Option<&str>, stream_id: Option<&str>) {
        self.send(protocol::api_error(e, reference, stream_id))
            .await;
    }

    async fn on_text(&mut self, text: &str) {
        let message = match protocol::parse(text) {
            Ok(m) => m,
            Err(r) => {
                self.send(protocol::error(
                    r.code.as_str(),
                    &r.message,
                    r.reference.as_deref(),
                    None,
                ))
                .await;
                return;
            }
        };
        match message {
            Incoming::Ping => self.send(protocol::PONG.to_owned()).await,
            Incoming::Generate {
                reference,
                cancel_on_disconnect,
                idempotency_key,
                body,
            } => {
                let params = protocol::keyed_params(body, idempotency_key);
                if let Err(e) = self
                    .generate(reference.as_deref(), cancel_on_disconnect, params)
                    .await
                {
                    self.send_error(&e, reference.as_deref(), None).await;
                }
            }
            Incoming::SessionSay {
                reference,
                session_id,
                idempotency_key,
                body,
            } => {
                let params = protocol::keyed_params(body, idempotency_key);
                if let Err(e) = self.say(reference.as_deref(), session_id, params).await {
                    self.send_error(&e, reference.as_deref(), None).await;
                }
            }
            Incoming::Subscribe { stream_id, after } => {
                if let Err(e) = self.subscribe(&stream_id, after).await {
                    self.send_error(&e, None, Some(&stream_id)).await;
                }
            }
            Incoming::Cancel { stream_id } => {
                let found = self
                    .state
                    .engine()
                    .cancel(&stream_id, self.owner.as_deref())
                    .await;
                match found {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        self.send_error(&ApiError::stream_not_found(), None, Some(&stream_id))
                            .await;
                    }
                    Err(e) => self.send_error(&e.into(), None, Some(&stream_id)).await,
                }
            }
            Incoming::Unsubscribe { stream_id } => {
                if let Some(task) = self.following.remove(&stream_id) {
                    task.abort();
                }
            }
        }
    }

    /// Whether the socket may take one more stream: it counts those it follows and the
    /// generations it started that have not ended (followed or not). Following again a
    /// generation it started (`again`) takes no more room.
    fn room_for_one_more(&mut self, again: Option<&str>) -> Result<(), ApiError> {
        self.prune();
        if again.is_some_and(|id| self.generated.contains_key(id)) {
            return Ok(());
        }
        let max = self.state.ws().max_streams;
        let unfollowed = self
            .generated
            .keys()
            .filter(|id| !self.following.contains_key(*id))
            .count();
        if self.following.len() + unfollowed >= max {
            return Err(ApiError::new(
                ErrorCode::TooManyStreams,
                format!(
                    "this socket has its limit of {max} streams (followed, or generated and \
                     still running); unsubscribe from one, or wait for one to end"
                ),
            ));
        }
        Ok(())
    }

    /// Records a generation this socket started, until it ends.
    fn generated(&mut self, id: &str, cancel_on_disconnect: bool) {
        if let Some(ending) = self.state.engine().end_of(id) {
            let generated = Generated {
                ending,
                cancel_on_disconnect,
            };
            self.generated.insert(id.to_owned(), generated);
        }
    }

    /// `generate`: a stream (or, with `session_id`, a session's turn) on the one start
    /// path; it counts against the key's rate limit like a `POST`.
    async fn generate(
        &mut self,
        reference: Option<&str>,
        cancel_on_disconnect: bool,
        params: Result<StreamParams, ApiError>,
    ) -> Result<(), ApiError> {
        self.room_for_one_more(None)?;
        let params = params?;
        let started = self
            .state
            .start(params, self.owner.clone(), Via::Socket)
            .await?;
        self.generated(&started.id, cancel_on_disconnect);
        self.started(reference, started).await;
        Ok(())
    }

    /// `session.say`: the next turn of a session (a new one without `session_id`).
    async fn say(
        &mut self,
        reference: Option<&str>,
        session_id: Option<String>,
        params: Result<StreamParams, ApiError>,
    ) -> Result<(), ApiError> {
        self.room_for_one_more(None)?;
        let mut params = params?;
        let owner = self.owner.clone();
        let started = match session_id {
            Some(id) => {
                params.session_id = Some(id);
                self.state.start(params, owner, Via::Socket).await?
            }
            None => {
                let new = SessionParams {
                    model: params.model.clone(),
                    system: None,
                    metadata: None,
                    title: None,
                }
                .validate(self.state.engine().models())?;
                self.state
                    .start_in_new_session(params, owner, Via::Socket, new)
                    .await?
            }
        };
        self.generated(&started.id, false);
        self.started(reference, started).await;
        Ok(())
    }

    /// Tells the client what started (`session` first, for a session made for it),
    /// then follows the stream from its first event.
    async fn started(&mut self, reference: Option<&str>, started: Started) {
        if let Some(session) = started.session_id.as_deref()
            && started.new_session
        {
            self.send(protocol::session(reference, session)).await;
        }
        self.send(protocol::started(
            reference,
            &started.id,
            started.session_id.as_deref(),
        ))
        .await;
        self.follow(started.id, 1);
    }

    /// `subscribe`: the cursor rule, in this protocol's words (`stream_ended`,
    /// `cursor_out_of_range`, `stream_not_found`).
    async fn subscribe(&mut self, stream_id: &str, after: Option<u64>) -> Result<(), ApiError> {
        if self.following.contains_key(stream_id) {
            return Err(ApiError::new(
                ErrorCode::AlreadySubscribed,
                "this socket already follows that stream",
            ));
        }
        self.room_for_one_more(Some(stream_id))?;
        let access = Access::Owner(self.owner.as_deref());
        match self.state.engine().follow(stream_id, access, after).await? {
            Follow::Ended(row) => Err(ApiError::new(
                ErrorCode::StreamEnded,
                format!(
                    "the stream ended with event {}; nothing follows it",
                    row.last_seq()
                ),
            )),
            Follow::From { after, .. } => {
                self.follow(stream_id.to_owned(), after);
                Ok(())
            }
        }
    }

    /// Follows a stream from `after` to its end in a task of this connection.
    fn follow(&mut self, stream_id: String, after: u64) {
        let state = self.state.clone();
        let out = self.out.clone();
        let id = stream_id.clone();
        let span = tracing::Span::current();
        let task = self.followers.spawn(
            async move {
                let feed = state.engine().feed(&id, after);
                futures_util::pin_mut!(feed);
                while let Some(chunk) = feed.next().await {
                    let chunk = match chunk {
                        Ok(chunk) => chunk,
                        Err(e) => {
                            let e: ApiError = e.into();
                            let text = protocol::api_error(&e, None, Some(&id));
                            let _ = out.send(Out::Text(text)).await;
                            break;
                        }
                    };
                    let events = chunk.events();
                    state.metrics().events_delivered(events.len());
                    for event in events {
                        if let Some(text) = protocol::event_message(&id, event)
                            && out.send(Out::Text(text)).await.is_err()
                        {
                            return id;
                        }
                    }
                }
                id
            }
            .instrument(span),
        );
        if let Some(old) = self.following.insert(stream_id, task) {
            old.abort();
        }
    }
}

/// Whether a read failed because the client's message was over the size limit.
fn is_too_big(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("too long") || text.contains("too big") || text.contains("Space limit")
}
