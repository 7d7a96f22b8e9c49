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
//! turns being started at once are serialized by `Engine::starting_turns`.

use std::sync::Arc;

use super::{Engine, StartError, Started};
use crate::event::{StreamStatus, now_ms};
use crate::ids::new_session_id;
use crate::llm::{GenerateRequest, Message, Prompt, Role};
use crate::store::{NewSession, NewTurn, SessionRow, StoreError, TurnRow};

/// What a new session may set.
#[derive(Debug, Clone, Default)]
pub struct NewSessionRequest {
    pub model: Option<String>,
    pub system: Option<String>,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SayError {
    #[error("the previous turn of this session is still running")]
    TurnInProgress,
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Removes a session from `starting_turns` when the start is over, however it ended.
struct Starting<'a> {
    engine: &'a Engine,
    id: String,
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.engine
            .starting_turns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Engine {
    /// Creates a session; returns once it is committed.
    pub async fn create_session(
        &self,
        request: NewSessionRequest,
        owner: Option<String>,
    ) -> Result<SessionRow, StartError> {
        if self.shutdown.is_cancelled() {
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

    /// Starts the next turn of `session`: `request` was validated with the user's
    /// message as its prompt; its prompt becomes the whole history.
    pub async fn say(
        self: &Arc<Self>,
        session: &SessionRow,
        mut request: GenerateRequest,
        owner: Option<String>,
    ) -> Result<Started, SayError> {
        let content = request.prompt.flat_text();
        let inserted = self
            .starting_turns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.id.clone());
        if !inserted {
            return Err(SayError::TurnInProgress);
        }
        let _starting = Starting {
            engine: self,
            id: session.id.clone(),
        };
        let turns = self.store.turns(&session.id).await?;
        if turns.last().is_some_and(running) {
            return Err(SayError::TurnInProgress);
        }
        request.prompt = Prompt::Messages(history(session, &turns, &content));
        request.session_id = Some(session.id.clone());
        let turn = NewTurn {
            session_id: session.id.clone(),
            idx: turns.last().map_or(0, |t| t.idx + 1),
            content,
        };
        match self.start_with(request, owner, Some(turn)).await {
            // Another node started this turn first.
            Err(StartError::Store(StoreError::Conflict)) => Err(SayError::TurnInProgress),
            other => Ok(other?),
        }
    }
}

fn running(turn: &TurnRow) -> bool {
    turn.status
        .as_deref()
        .and_then(StreamStatus::parse)
        .is_some_and(|s| !s.is_terminal())
}

/// The prompt of the next turn: system prompt, every turn with text, the new message.
fn history(session: &SessionRow, turns: &[TurnRow], content: &str) -> Vec<Message> {
    let mut messages = Vec::with_capacity(turns.len() + 2);
    if let Some(system) = &session.system {
        messages.push(Message {
            role: Role::System,
            content: system.clone(),
        });
    }
    for turn in turns {
        let role = match turn.role.as_str() {
            "user" => Role::User,
            _ => Role::Assistant,
        };
        match &turn.content {
            Some(text) if !text.is_empty() => messages.push(Message {
                role,
                content: text.clone(),
            }),
            _ => {}
        }
    }
    messages.push(Message {
        role: Role::User,
        content: content.to_owned(),
    });
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
