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
use crate::llm::{Backend, Message, Prompt, PromptCost, Role, SessionTurn};
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
    /// A `/v1/chats` chat's own id (see `engine::chats`).
    pub chat_id: Option<String>,
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
            chat_id: request.chat_id.clone(),
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
            chat_id: request.chat_id,
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
        if !self.log.edit(edit).await? {
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
            .edit(SessionEdit::Delete { id: id.to_owned() })
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

/// The messages a new turn adds: the user's message (a text prompt) or the tool
/// results it was given as `messages`.
pub(super) fn turn_input(prompt: &Prompt) -> Vec<Message> {
    match prompt {
        Prompt::Text(text) => vec![Message::text(Role::User, text.clone())],
        Prompt::Messages(messages) => messages.clone(),
    }
}

/// Whether `input` is tool results (else it is one user message).
pub(super) fn is_tool_turn(input: &[Message]) -> bool {
    input.first().is_some_and(|m| m.role == Role::Tool)
}

/// The ids of the tool calls of an assistant turn.
fn call_ids(turn: &TurnRow) -> Vec<String> {
    turn.tool_call_values()
        .iter()
        .filter_map(|c| c["id"].as_str().map(str::to_owned))
        .collect()
}

/// Tool results answer the last answer's tool calls, each exactly once, all of them
/// (an upstream refuses a call without its result): the message why not, if not.
pub(super) fn check_tool_results(turns: &[TurnRow], input: &[Message]) -> Result<(), String> {
    if !is_tool_turn(input) {
        return Ok(());
    }
    let calls = turns
        .last()
        .filter(|t| t.role == "assistant")
        .map(call_ids)
        .unwrap_or_default();
    if calls.is_empty() {
        return Err(
            "tool results answer the tool calls of the session's last answer, \
                    and it made none that completed"
                .to_owned(),
        );
    }
    let mut answered: Vec<&str> = Vec::with_capacity(input.len());
    for m in input {
        let id = m.tool_call_id.as_deref().unwrap_or_default();
        if !calls.iter().any(|c| c == id) {
            return Err(format!(
                "`tool_call_id` {id:?} is not one of the last answer's tool calls ({})",
                calls.join(", ")
            ));
        }
        if answered.contains(&id) {
            return Err(format!("tool call {id:?} is answered twice"));
        }
        answered.push(id);
    }
    let missing: Vec<&str> = calls
        .iter()
        .map(String::as_str)
        .filter(|c| !answered.contains(c))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "every tool call of the last answer needs its result in this turn; missing: {}",
            missing.join(", ")
        ));
    }
    Ok(())
}

/// The prompt of `turn`: the system prompt, the turns `turn.from .. turn.idx` that
/// have text or tool calls, then the new turn's `input`. The same for the turn's start
/// and for its continuation after a crash (earlier turns do not change once a later
/// one exists).
pub(super) fn prompt(
    session: &SessionRow,
    turns: &[TurnRow],
    input: &[Message],
    turn: &SessionTurn,
) -> Vec<Message> {
    let mut messages = Vec::with_capacity(turns.len() + input.len() + 1);
    if let Some(system) = &session.system {
        messages.push(Message::text(Role::System, system.clone()));
    }
    for row in history(turns, turn.from, turn.idx, input) {
        messages.extend(row.messages);
    }
    messages.extend(input.iter().cloned());
    messages
}

/// One earlier turn as the model sees it.
struct Past {
    idx: i64,
    role: Role,
    messages: Vec<Message>,
}

/// The turns `from .. to` that have text or tool calls, each as its messages; `next`
/// is turn `to` (the new turn's input). An assistant's tool calls go only with the
/// results the next turn gives them, and results only after the calls they answer:
/// upstreams refuse one without the other.
fn history(turns: &[TurnRow], from: i64, to: i64, next: &[Message]) -> Vec<Past> {
    let in_range: Vec<&TurnRow> = turns
        .iter()
        .filter(|t| t.idx >= from && t.idx < to)
        .collect();
    let mut out = Vec::with_capacity(in_range.len());
    for (i, t) in in_range.iter().enumerate() {
        match t.role.as_str() {
            "user" => {
                // Given as a message (content parts): as it was given.
                let given = t.given_messages();
                let messages = match t.content.as_deref() {
                    _ if !given.is_empty() => given,
                    Some(text) if !text.is_empty() => vec![Message::text(Role::User, text)],
                    _ => continue,
                };
                out.push(Past {
                    idx: t.idx,
                    role: Role::User,
                    messages,
                });
            }
            "tool" => {
                let before = i.checked_sub(1).and_then(|j| in_range.get(j));
                let calls = before.map(|b| call_ids(b)).unwrap_or_default();
                let results: Vec<Message> = t
                    .given_messages()
                    .into_iter()
                    .filter(|m| {
                        m.tool_call_id
                            .as_deref()
                            .is_some_and(|id| calls.iter().any(|c| c == id))
                    })
                    .collect();
                if !results.is_empty() {
                    out.push(Past {
                        idx: t.idx,
                        role: Role::Tool,
                        messages: results,
                    });
                }
            }
            _ => {
                let answered: Vec<String> = match in_range.get(i + 1) {
                    Some(n) if n.role == "tool" => n
                        .given_messages()
                        .into_iter()
                        .filter_map(|m| m.tool_call_id)
                        .collect(),
                    Some(_) => Vec::new(),
                    None => next
                        .iter()
                        .filter(|m| m.role == Role::Tool)
                        .filter_map(|m| m.tool_call_id.clone())
                        .collect(),
                };
                let calls: Vec<serde_json::Value> = t
                    .tool_call_values()
                    .into_iter()
                    .filter(|c| {
                        c["id"]
                            .as_str()
                            .is_some_and(|id| answered.iter().any(|a| a == id))
                    })
                    .collect();
                let text = t.content.as_deref().unwrap_or_default();
                if text.is_empty() && calls.is_empty() {
                    continue;
                }
                let mut m = Message::text(Role::Assistant, text);
                m.tool_calls = (!calls.is_empty()).then_some(calls);
                out.push(Past {
                    idx: t.idx,
                    role: Role::Assistant,
                    messages: vec![m],
                });
            }
        }
    }
    out
}

/// How much of the history the prompt of turn `idx` holds: the most recent exchanges
/// whose tokens, with the system prompt and the new turn's `input`, fit both the
/// model's context less `max_tokens` and `limit` (`SPOOL_SESSION_MAX_PROMPT_TOKENS`).
/// Whole exchanges drop, oldest first (a kept history starts with a user turn, so an
/// answer's tool calls and their results stay together); tool results keep the
/// exchange they belong to, whose calls they answer. With no bound known, all of it
/// stays.
pub(super) fn fit(
    session: &SessionRow,
    turns: &[TurnRow],
    input: &[Message],
    idx: i64,
    backend: &dyn Backend,
    max_tokens: u32,
    limit: Option<u32>,
) -> SessionTurn {
    let past = history(turns, 0, idx, input);
    let all = |from: i64, dropped: usize| SessionTurn {
        idx,
        from,
        used: (past.len() - dropped + 1) as u32,
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
    let messages = prompt(session, turns, input, &whole);
    let cost = backend
        .prompt_cost(&messages)
        .filter(|c| c.messages.len() == messages.len())
        .unwrap_or_else(|| PromptCost::estimate(&messages));
    // Each past turn's tokens; the system prompt (first, if any) and the new turn's
    // messages (last) always stay.
    let mut at = usize::from(session.system.is_some());
    let costs: Vec<usize> = past
        .iter()
        .map(|p| {
            let n = p.messages.len();
            let c = cost.messages.iter().skip(at).take(n).sum();
            at += n;
            c
        })
        .collect();
    // Tool results need the exchange they answer: it stays with them.
    let keep = if is_tool_turn(input) {
        past.iter().rposition(|p| p.role == Role::User).unwrap_or(0)
    } else {
        past.len()
    };
    let mut total: usize = cost.fixed + cost.messages.iter().sum::<usize>();
    let mut dropped = 0;
    while total > budget && dropped < keep {
        // One exchange: a user turn and every turn after it up to the next.
        loop {
            total -= costs.get(dropped).copied().unwrap_or(0);
            dropped += 1;
            match past.get(dropped) {
                Some(p) if p.role == Role::User => break,
                None => break,
                Some(_) => {}
            }
        }
    }
    match past.get(dropped) {
        Some(p) => all(p.idx, dropped),
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
            tool_calls: None,
            messages: None,
        }
    }

    fn new(text: &str) -> Vec<Message> {
        vec![Message::text(Role::User, text)]
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
            chat_id: None,
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
        let h = prompt(&session(Some("be brief")), &turns, &new("again"), &all);
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
        assert_eq!(
            prompt(&session(None), &turns, &new("again"), &later).len(),
            2
        );
        assert!(running(&turn(1, "assistant", None, Some("running"))));
        assert!(!running(&turn(1, "assistant", None, Some("cancelled"))));
        assert!(!running(&turn(1, "assistant", None, None)));
    }

    #[test]
    fn the_oldest_exchanges_drop_out_first_and_the_system_prompt_stays() {
        let turns = exchanges(10);
        let s = session(Some("sys"));
        // No bound: everything.
        let t = fit(
            &s,
            &turns,
            &new("new"),
            20,
            &Counting { context: None },
            10,
            None,
        );
        assert_eq!((t.from, t.used), (0, 21));
        // 5 + sys 10 + new 10 = 25 always; a context of 100 less 10 for the answer
        // leaves 65: six messages, three exchanges.
        let backend = Counting { context: Some(100) };
        let t = fit(&s, &turns, &new("new"), 20, &backend, 10, None);
        assert_eq!((t.from, t.used), (14, 7));
        let p = prompt(&s, &turns, &new("new"), &t);
        assert_eq!(p.len(), 8);
        assert_eq!((p[0].role, p[1].role), (Role::System, Role::User));
        // The setting bounds it too, whichever is smaller.
        let t = fit(&s, &turns, &new("new"), 20, &backend, 10, Some(45));
        assert_eq!((t.from, t.used), (18, 3));
        // Not even the new message fits: it goes alone with the system prompt (the
        // backend's own check then decides).
        let t = fit(&s, &turns, &new("new"), 20, &backend, 95, None);
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
        let t = fit(&session(None), &turns, &new("new"), 6, &backend, 10, None);
        assert_eq!((t.from, t.used), (4, 3));
        // 30 more: the lone question of turn 2 as well.
        let backend = Counting { context: Some(60) };
        let t = fit(&session(None), &turns, &new("new"), 6, &backend, 10, None);
        assert_eq!((t.from, t.used), (2, 4));
    }

    fn tool(id: &str, content: &str) -> Message {
        let mut m = Message::text(Role::Tool, content);
        m.tool_call_id = Some(id.to_owned());
        m
    }

    fn calls(ids: &[&str]) -> Option<String> {
        let calls: Vec<serde_json::Value> = ids
            .iter()
            .map(|id| {
                serde_json::json!({"id": id, "type": "function",
                                          "function": {"name": "f", "arguments": "{}"}})
            })
            .collect();
        Some(serde_json::Value::from(calls).to_string())
    }

    /// q → answer with calls `ids` → their results → final answer, at `at`.
    fn agent_exchange(at: i64, ids: &[&str]) -> Vec<TurnRow> {
        let mut asked = turn(at + 1, "assistant", Some(""), Some("completed"));
        asked.tool_calls = calls(ids);
        let mut results = turn(at + 2, "tool", Some("r"), None);
        let rs: Vec<Message> = ids.iter().map(|id| tool(id, "r")).collect();
        results.messages = serde_json::to_string(&rs).ok();
        vec![
            turn(at, "user", Some("q"), None),
            asked,
            results,
            turn(at + 3, "assistant", Some("a"), Some("completed")),
        ]
    }

    #[test]
    fn tool_results_must_answer_every_call_of_the_last_answer_once() {
        let mut turns = agent_exchange(0, &["a", "b"]);
        turns.truncate(2);
        assert!(check_tool_results(&turns, &new("plain")).is_ok());
        assert!(check_tool_results(&turns, &[tool("a", "1"), tool("b", "2")]).is_ok());
        let e = check_tool_results(&turns, &[tool("a", "1")]).unwrap_err();
        assert!(e.contains("missing: b"), "{e}");
        let e = check_tool_results(&turns, &[tool("a", "1"), tool("a", "1")]).unwrap_err();
        assert!(e.contains("twice"), "{e}");
        let e = check_tool_results(&turns, &[tool("z", "1"), tool("b", "2")]).unwrap_err();
        assert!(e.contains("\"z\""), "{e}");
        // An answer without calls, or a user turn last: nothing to answer.
        turns[1].tool_calls = None;
        assert!(check_tool_results(&turns, &[tool("a", "1")]).is_err());
        assert!(check_tool_results(&turns[..1], &[tool("a", "1")]).is_err());
    }

    #[test]
    fn the_history_holds_tool_calls_with_their_results_and_never_one_alone() {
        let mut turns = agent_exchange(0, &["a", "b"]);
        // A later answer made a call the user never answered: it asked something else.
        let mut unanswered = turn(5, "assistant", Some("shall I?"), Some("completed"));
        unanswered.tool_calls = calls(&["c"]);
        turns.push(turn(4, "user", Some("q2"), None));
        turns.push(unanswered);
        let all = SessionTurn {
            idx: 6,
            from: 0,
            used: 0,
        };
        let p = prompt(&session(None), &turns, &new("q3"), &all);
        let shape: Vec<(Role, usize, Option<&str>)> = p
            .iter()
            .map(|m| {
                (
                    m.role,
                    m.tool_calls.as_ref().map_or(0, Vec::len),
                    m.tool_call_id.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                (Role::User, 0, None),
                (Role::Assistant, 2, None),
                (Role::Tool, 0, Some("a")),
                (Role::Tool, 0, Some("b")),
                (Role::Assistant, 0, None),
                (Role::User, 0, None),
                // Its text stays, its unanswered call does not.
                (Role::Assistant, 0, None),
                (Role::User, 0, None),
            ]
        );
        // The same answer's call goes up when this turn answers it.
        let p = prompt(&session(None), &turns, &[tool("c", "yes")], &all);
        let n = p.len();
        assert_eq!(p[n - 2].tool_calls.as_ref().map(Vec::len), Some(1));
        assert_eq!(p[n - 1].tool_call_id.as_deref(), Some("c"));
    }

    #[test]
    fn trimming_drops_whole_agent_exchanges_and_keeps_the_one_results_answer() {
        // Three agent exchanges of four turns (the answer with calls, its results,
        // the final answer), each message 10 tokens.
        let turns: Vec<TurnRow> = (0..3).flat_map(|i| agent_exchange(4 * i, &["x"])).collect();
        let s = session(None);
        // 5 fixed + new 10; 60 leaves room for one exchange of four messages.
        let backend = Counting { context: Some(70) };
        let t = fit(&s, &turns, &new("q"), 12, &backend, 10, None);
        assert_eq!((t.from, t.used), (8, 5));
        // Results of a call of a fifth answer, with no room at all: the exchange they
        // answer (its question and the calls) stays with them.
        let mut turns = turns;
        turns.push(turn(12, "user", Some("q"), None));
        let mut asked = turn(13, "assistant", Some(""), Some("completed"));
        asked.tool_calls = calls(&["y"]);
        turns.push(asked);
        let t = fit(&s, &turns, &[tool("y", "r")], 14, &backend, 60, None);
        assert_eq!((t.from, t.used), (12, 3));
        let p = prompt(&s, &turns, &[tool("y", "r")], &t);
        let roles: Vec<Role> = p.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::User, Role::Assistant, Role::Tool]);
    }
}
