//! Sessions: multi-turn conversations whose history lives on the server.
//!
//! Each user turn starts an ordinary stream whose prompt is the whole history (the
//! session's system prompt, then every turn with text, then the new message). The user
//! turn and the assistant turn (the stream) are inserted in the transaction that
//! creates the stream; the assistant's text is written in the transaction of the
//! stream's terminal event.
//!
//! What a turn that did not complete leaves: a cancelled or failed turn keeps the text
//! it streamed (possibly none) and its stream's status; a turn with text is part of the
//! history later turns see, one without text is left out (its user message stays).
//! A turn that a restart continues gets its text when it ends; until then it is read
//! from its events.
//!
//! **Architecture Invariant:** a session runs one turn at a time. A new turn is refused
//! (`turn_in_progress`) while the last one's stream is queued or running, and two
//! turns being started at once are serialized by `Engine::starting`. A turn
//! starts on the one start path (`start`), like every stream.

use super::{Engine, StartError};
use crate::event::{StreamStatus, now_ms};
use crate::ids::new_session_id;
use crate::llm::{Message, Role};
use crate::store::{NewSession, SessionRow, TurnRow};

/// What a new session may set.
#[derive(Debug, Clone, Default)]
pub struct NewSessionRequest {
    pub model: Option<String>,
    pub system: Option<String>,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
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
            created_at,
        })
    }
}

pub(super) fn running(turn: &TurnRow) -> bool {
    turn.status
        .as_deref()
        .and_then(StreamStatus::parse)
        .is_some_and(|s| !s.is_terminal())
}

/// The prompt of the next turn: system prompt, every turn with text, the new message.
pub(super) fn history(session: &SessionRow, turns: &[TurnRow], content: &str) -> Vec<Message> {
    let mut messages = Vec::with_capacity(turns.len() + 2);
    if let Some(system) = &session.system {
        messages.push(Message::text(Role::System, system.clone()));
    }
    for turn in turns {
        let role = match turn.role.as_str() {
            "user" => Role::User,
            _ => Role::Assistant,
        };
        match &turn.content {
            Some(text) if !text.is_empty() => messages.push(Message::text(role, text.clone())),
            _ => {}
        }
    }
    messages.push(Message::text(Role::User, content.to_owned()));
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn history_skips_turns_without_text_and_ends_with_the_new_message() {
        let session = SessionRow {
            id: "se_x".into(),
            owner: None,
            model: None,
            system: Some("be brief".into()),
            metadata: None,
            created_at: 0,
        };
        let turns = [
            turn(0, "user", Some("hi"), None),
            turn(1, "assistant", Some("hello"), Some("completed")),
            turn(2, "user", Some("and?"), None),
            turn(3, "assistant", Some(""), Some("failed")),
        ];
        let h = history(&session, &turns, "again");
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
        assert!(running(&turn(1, "assistant", None, Some("running"))));
        assert!(!running(&turn(1, "assistant", None, Some("cancelled"))));
        assert!(!running(&turn(1, "assistant", None, None)));
    }
}
