//! Sessions: multi-turn conversations whose history lives on the server.
//!
//! Each user turn starts an ordinary stream whose prompt is the session's history:
//! its system prompt, then the turns with text, then the new message — as much of the
//! history as fits ([`fit`]): the model's context less the turn's `max_tokens`, and
//! `SPOOL_SESSION_MAX_PROMPT_TOKENS` if set. The oldest exchanges drop out first; the
//! system prompt and the new message always stay, so a turn never fails because the
//! history grew. Tokens are counted by the backend (the local model's tokenizer) or,
//! for a backend that cannot count (`openai`, `mock`), estimated as a quarter token
//! per byte ([`crate::llm::PromptCost::estimate`]).
//!
//! The stream's stored request keeps the turn, not the history: its `prompt` is the
//! user's message and its [`SessionTurn`] says which turns the prompt held, so the
//! very same prompt is rebuilt ([`prompt`]) to continue the stream after a crash.
//!
//! The user turn and the assistant turn (the stream) are inserted in the transaction
//! that creates the stream; the assistant's text is written in the transaction of the
//! stream's terminal event.
//!
//! What a turn that did not complete leaves: a cancelled or failed turn keeps the text
//! it streamed (possibly none) and its stream's status; a turn with text is part of the
//! history later turns see, one without text is left out (its user message stays).
//! A turn that a restart continues gets its text when it ends; until then it is read
//! from its events.
//!
//! Managing sessions: listed newest first (by creation, so pages stay stable while
//! conversations go on), renamed and given metadata through the writer, deleted with
//! their streams — a running turn is cancelled first, and no turn starts meanwhile.
//!
//! **Architecture Invariant:** a session runs one turn at a time. A new turn is refused
//! (`turn_in_progress`) while the last one's stream is queued or running, and two
//! turns being started at once are serialized by `Engine::starting`. A turn
//! starts on the one start path (`start`), like every stream.

use std::time::Duration;

use super::{Engine, StartError};
use crate::event::{StreamStatus, now_ms};
use crate::ids::{looks_like_session_id, new_session_id};
use crate::llm::{Backend, Message, PromptCost, Role, SessionTurn};
use crate::store::{
    NewSession, SessionCursor, SessionEdit, SessionRow, SessionSummary, StoreError, TurnRow,
};

/// What a new session may set.
#[derive(Debug, Clone, Default)]
pub struct NewSessionRequest {
    pub model: Option<String>,
    pub system: Option<String>,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    pub title: Option<String>,
}

/// What `PATCH /v1/sessions/{id}` changes: a field that is `Some` is set (`Some(None)`
/// clears it), the others stay.
#[derive(Debug, Clone, Default)]
pub struct SessionUpdate {
    pub title: Option<Option<String>>,
    pub metadata: Option<Option<serde_json::Map<String, serde_json::Value>>>,
}

/// Marks something being started — a session's next turn, a request's idempotency
/// key — in `Engine::starting` until the start is over, however it ended: two starts of
/// the same thing at once are serialized (the second is refused).
pub(super) struct Starting<'a> {
    engine: &'a Engine,
    name: String,
}

impl<'a> Starting<'a> {
    /// `None` if `name` is being started already.
    pub(super) fn claim(engine: &'a Engine, name: String) -> Option<Self> {
        let inserted = engine
            .starting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone());
        inserted.then_some(Starting { engine, name })
    }
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.engine
            .starting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
    }
}

impl Engine {
    /// Creates a session; returns once it is committed.
    pub async fn create_session(
        &self,
        request: NewSessionRequest,
        owner: Option<String>,
    ) -> Result<SessionRow, StartError> {
        if self.draining.is_cancelled() {
            return Err(StartError::ShuttingDown);
        }
        let id = new_session_id().map_err(|_| StartError::Random)?;
        let metadata = request
            .metadata
            .map(|m| serde_json::Value::Object(m).to_string());
        let session = NewSession {
            id: id.clone(),
            owner: owner.clone(),
            model: request.model.clone(),
            system: request.system.clone(),
            metadata: metadata.clone(),
            title: request.title.clone(),
            created_at: now_ms(),
        };
        let created_at = session.created_at;
        self.log.create_session(session).await?;
        Ok(SessionRow {
            id,
            owner,
            model: request.model,
            system: request.system,
            metadata,
            title: request.title,
            created_at,
        })
    }

    /// One session with what its turns say about it (title, last activity).
    pub async fn session_summary(
        &self,
        id: &str,
        owner: Option<&str>,
    ) -> Result<Option<SessionSummary>, StoreError> {
        if !looks_like_session_id(id) {
            return Ok(None);
        }
        self.store.session_summary(id, owner).await
    }

    /// The owner's sessions, newest first, after the session `before` (the last of the
    /// previous page). `None`: `before` is not one of the owner's sessions.
    pub async fn list_sessions(
        &self,
        owner: Option<&str>,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Option<Vec<SessionSummary>>, StoreError> {
        let cursor = match before {
            None => None,
            Some(id) => match self.session(id, owner).await? {
                Some(row) => Some(SessionCursor {
                    created_at: row.created_at,
                    id: row.id,
                }),
                None => return Ok(None),
            },
        };
        self.store
            .list_sessions(owner, cursor.as_ref(), limit)
            .await
            .map(Some)
    }

    /// Renames a session or sets its metadata; returns it as it is now. `None`: no
    /// such session of `owner`'s.
    pub async fn update_session(
        &self,
        id: &str,
        owner: Option<&str>,
        update: SessionUpdate,
    ) -> Result<Option<SessionSummary>, StoreError> {
        if self.session(id, owner).await?.is_none() {
            return Ok(None);
        }
        let edit = SessionEdit::Update {
            id: id.to_owned(),
            title: update.title,
            metadata: update
                .metadata
                .map(|m| m.map(|m| serde_json::Value::Object(m).to_string())),
        };
        if !self.log.edit_session(edit).await? {
            return Ok(None);
        }
        self.session_summary(id, owner).await
    }

    /// Deletes a session, its turns and their streams; a running turn is cancelled
    /// first (and its end written), and no new turn starts meanwhile. `false`: no such
    /// session of `owner`'s.
    pub async fn delete_session(&self, id: &str, owner: Option<&str>) -> Result<bool, StartError> {
        if !looks_like_session_id(id) || self.session(id, owner).await?.is_none() {
            return Ok(false);
        }
        // A turn being started holds this only until its stream is stored.
        let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
        let _claim = loop {
            if let Some(claim) = Starting::claim(self, format!("turn/{id}")) {
                break claim;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StartError::TurnInProgress);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let streams = self.store.turn_streams(id).await?;
        tracing::info!(session_id = %id, streams = streams.len(), "deleting a session and its streams");
        // Each stream's own delete: a running one is cancelled and its end awaited.
        futures_util::future::try_join_all(streams.iter().map(|s| self.delete(s, owner))).await?;
        Ok(self
            .log
            .edit_session(SessionEdit::Delete { id: id.to_owned() })
            .await?)
    }
}

/// How long a delete waits for a turn being started to be stored.
const CLAIM_WAIT: Duration = Duration::from_secs(5);

pub(super) fn running(turn: &TurnRow) -> bool {
    turn.status
        .as_deref()
        .and_then(StreamStatus::parse)
        .is_some_and(|s| !s.is_terminal())
}

/// The prompt of `turn`: the system prompt, the turns `turn.from .. turn.idx` that
/// have text, then the user's message. The same for the turn's start and for its
/// continuation after a crash (earlier turns do not change once a later one exists).
pub(super) fn prompt(
    session: &SessionRow,
    turns: &[TurnRow],
    content: &str,
    turn: &SessionTurn,
) -> Vec<Message> {
    let mut messages = Vec::with_capacity(turns.len() + 2);
    if let Some(system) = &session.system {
        messages.push(Message {
            role: Role::System,
            content: system.clone(),
        });
    }
    for (_, role, text) in history(turns, turn.from, turn.idx) {
        messages.push(Message {
            role,
            content: text.to_owned(),
        });
    }
    messages.push(Message {
        role: Role::User,
        content: content.to_owned(),
    });
    messages
}

/// The turns `from .. to` that have text, with their roles.
fn history(turns: &[TurnRow], from: i64, to: i64) -> impl Iterator<Item = (i64, Role, &str)> {
    turns
        .iter()
        .filter(move |t| t.idx >= from && t.idx < to)
        .filter_map(|t| {
            let role = match t.role.as_str() {
                "user" => Role::User,
                _ => Role::Assistant,
            };
            match t.content.as_deref() {
                Some(text) if !text.is_empty() => Some((t.idx, role, text)),
                _ => None,
            }
        })
}

/// How much of the history the prompt of turn `idx` holds: the most recent exchanges
/// whose tokens, with the system prompt and `content`, fit both the model's context
/// less `max_tokens` and `limit` (`SPOOL_SESSION_MAX_PROMPT_TOKENS`). Whole exchanges
/// drop, oldest first (a kept history starts with a user turn); with no bound known,
/// all of it stays.
pub(super) fn fit(
    session: &SessionRow,
    turns: &[TurnRow],
    content: &str,
    idx: i64,
    backend: &dyn Backend,
    max_tokens: u32,
    limit: Option<u32>,
) -> SessionTurn {
    let kept: Vec<(i64, Role)> = history(turns, 0, idx).map(|(i, r, _)| (i, r)).collect();
    let all = |from: i64, dropped: usize| SessionTurn {
        idx,
        from,
        used: (kept.len() - dropped + 1) as u32,
    };
    let context = backend
        .context_length()
        .map(|c| c.saturating_sub(max_tokens as usize));
    let Some(budget) = [context, limit.map(|l| l as usize)]
        .into_iter()
        .flatten()
        .min()
    else {
        return all(0, 0);
    };
    let whole = SessionTurn {
        idx,
        from: 0,
        used: 0,
    };
    let messages = prompt(session, turns, content, &whole);
    let cost = backend
        .prompt_cost(&messages)
        .filter(|c| c.messages.len() == messages.len())
        .unwrap_or_else(|| PromptCost::estimate(&messages));
    // The system prompt (first, if any) and the new message (last) always stay.
    let offset = messages.len() - kept.len() - 1;
    let costs = &cost.messages;
    let mut total: usize = cost.fixed + costs.iter().sum::<usize>();
    let mut dropped = 0;
    while total > budget && dropped < kept.len() {
        // One exchange: a turn and every assistant turn after it.
        loop {
            total -= costs.get(offset + dropped).copied().unwrap_or(0);
            dropped += 1;
            match kept.get(dropped) {
                Some((_, Role::User)) | None => break,
                Some(_) => {}
            }
        }
    }
    match kept.get(dropped) {
        Some(&(from, _)) => all(from, dropped),
        None => all(idx, dropped),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{GenerateRequest, TokenStream};

    fn turn(idx: i64, role: &str, content: Option<&str>, status: Option<&str>) -> TurnRow {
        TurnRow {
            idx,
            role: role.into(),
            content: content.map(str::to_owned),
            stream_id: (role == "assistant").then(|| "st_x".to_owned()),
            created_at: 0,
            status: status.map(str::to_owned),
        }
    }

    fn session(system: Option<&str>) -> SessionRow {
        SessionRow {
            id: "se_x".into(),
            owner: None,
            model: None,
            system: system.map(str::to_owned),
            metadata: None,
            title: None,
            created_at: 0,
        }
    }

    /// A backend whose every message costs 10 tokens, with a context of `context`.
    struct Counting {
        context: Option<usize>,
    }

    impl Backend for Counting {
        fn models(&self) -> Vec<String> {
            vec!["c".into()]
        }
        fn context_length(&self) -> Option<usize> {
            self.context
        }
        fn prompt_cost(&self, messages: &[Message]) -> Option<PromptCost> {
            Some(PromptCost {
                fixed: 5,
                messages: vec![10; messages.len()],
            })
        }
        fn generate(
            &self,
            _: GenerateRequest,
            _: tokio_util::sync::CancellationToken,
        ) -> TokenStream {
            Box::pin(futures_util::stream::empty())
        }
    }

    /// `n` exchanges, each with text.
    fn exchanges(n: i64) -> Vec<TurnRow> {
        (0..n)
            .flat_map(|i| {
                [
                    turn(2 * i, "user", Some("q"), None),
                    turn(2 * i + 1, "assistant", Some("a"), Some("completed")),
                ]
            })
            .collect()
    }

    #[test]
    fn the_prompt_skips_turns_without_text_and_ends_with_the_new_message() {
        let turns = [
            turn(0, "user", Some("hi"), None),
            turn(1, "assistant", Some("hello"), Some("completed")),
            turn(2, "user", Some("and?"), None),
            turn(3, "assistant", Some(""), Some("failed")),
        ];
        let all = SessionTurn {
            idx: 4,
            from: 0,
            used: 4,
        };
        let h = prompt(&session(Some("be brief")), &turns, "again", &all);
        let roles: Vec<Role> = h.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::System,
                Role::User,
                Role::Assistant,
                Role::User,
                Role::User
            ]
        );
        assert_eq!(h.last().unwrap().content, "again");
        let later = SessionTurn { from: 2, ..all };
        assert_eq!(prompt(&session(None), &turns, "again", &later).len(), 2);
        assert!(running(&turn(1, "assistant", None, Some("running"))));
        assert!(!running(&turn(1, "assistant", None, Some("cancelled"))));
        assert!(!running(&turn(1, "assistant", None, None)));
    }

    #[test]
    fn the_oldest_exchanges_drop_out_first_and_the_system_prompt_stays() {
        let turns = exchanges(10);
        let s = session(Some("sys"));
        // No bound: everything.
        let t = fit(&s, &turns, "new", 20, &Counting { context: None }, 10, None);
        assert_eq!((t.from, t.used), (0, 21));
        // 5 + sys 10 + new 10 = 25 always; a context of 100 less 10 for the answer
        // leaves 65: six messages, three exchanges.
        let backend = Counting { context: Some(100) };
        let t = fit(&s, &turns, "new", 20, &backend, 10, None);
        assert_eq!((t.from, t.used), (14, 7));
        let p = prompt(&s, &turns, "new", &t);
        assert_eq!(p.len(), 8);
        assert_eq!((p[0].role, p[1].role), (Role::System, Role::User));
        // The setting bounds it too, whichever is smaller.
        let t = fit(&s, &turns, "new", 20, &backend, 10, Some(45));
        assert_eq!((t.from, t.used), (18, 3));
        // Not even the new message fits: it goes alone with the system prompt (the
        // backend's own check then decides).
        let t = fit(&s, &turns, "new", 20, &backend, 95, None);
        assert_eq!((t.from, t.used), (20, 1));
    }

    #[test]
    fn a_kept_history_starts_with_a_user_turn() {
        // The second exchange's answer failed without text: its question alone.
        let turns = [
            turn(0, "user", Some("q"), None),
            turn(1, "assistant", Some("a"), Some("completed")),
            turn(2, "user", Some("q"), None),
            turn(3, "assistant", None, Some("failed")),
            turn(4, "user", Some("q"), None),
            turn(5, "assistant", Some("a"), Some("completed")),
        ];
        // 5 fixed + new 10 = 15; 40 leaves room for two messages: the last exchange.
        let backend = Counting { context: Some(50) };
        let t = fit(&session(None), &turns, "new", 6, &backend, 10, None);
        assert_eq!((t.from, t.used), (4, 3));
        // 30 more: the lone question of turn 2 as well.
        let backend = Counting { context: Some(60) };
        let t = fit(&session(None), &turns, "new", 6, &backend, 10, None);
        assert_eq!((t.from, t.used), (2, 4));
    }
}
