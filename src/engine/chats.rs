//! Chats: sessions named by the client's own chat id, as the AI SDK's `useChat` names
//! its conversations (`/v1/chats`). A chat is a session with a `chat_id`, one per owner
//! and chat id (two keys using the same chat id never see each other's chat), created
//! on first use; everything else — its turns, its one-turn-at-a-time rule, its history
//! — is the session's.
//!
//! Regenerating a chat's last answer drops its last exchange (the turn that asked and
//! the answer, whose stream is deleted) and asks the same again as a new turn.

use std::time::Duration;

use super::sessions::{NewSessionRequest, Starting, running};
use super::{Engine, StartError};
use crate::llm::Prompt;
use crate::store::{SessionEdit, SessionRow, StoreError, TurnRow};

/// The longest chat id (`useChat` makes 16-character ones).
pub const MAX_CHAT_ID: usize = 128;

/// A chat id as a client may choose it: 1 to 128 URL-safe characters
/// (`A–Z a–z 0–9 - _`).
pub fn valid_chat_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CHAT_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// How long a chat's first use waits for another request creating the same chat.
const CLAIM_WAIT: Duration = Duration::from_secs(5);

impl Engine {
    /// The session of `owner`'s chat `chat_id`, if it was started.
    pub async fn find_chat(
        &self,
        chat_id: &str,
        owner: Option<&str>,
    ) -> Result<Option<SessionRow>, StoreError> {
        if !valid_chat_id(chat_id) {
            return Ok(None);
        }
        self.store.chat_session(chat_id, owner).await
    }

    /// The session of `owner`'s chat `chat_id`, created on first use (with `model` and
    /// `system`). Two first uses at once get the same session: here they are
    /// serialized, and across nodes the store keeps the first and ignores the other.
    pub async fn chat(
        &self,
        chat_id: &str,
        owner: Option<&str>,
        new: NewSessionRequest,
    ) -> Result<SessionRow, StartError> {
        if let Some(row) = self.find_chat(chat_id, owner).await? {
            return Ok(row);
        }
        let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
        let _claim = loop {
            let name = format!("chat/{}/{chat_id}", owner.unwrap_or_default());
            if let Some(claim) = Starting::claim(self, name) {
                break claim;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StartError::TurnInProgress);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if let Some(row) = self.find_chat(chat_id, owner).await? {
            return Ok(row);
        }
        let new = NewSessionRequest {
            chat_id: Some(chat_id.to_owned()),
            ..new
        };
        self.create_session(new, owner.map(str::to_owned)).await?;
        self.find_chat(chat_id, owner)
            .await?
            .ok_or(StartError::SessionNotFound)
    }

    /// Drops the session's last exchange to ask it again: deletes its last answer's
    /// stream and the turns from the one that asked, and returns what that turn asked
    /// (its prompt, to start the new turn with). `None`: there is no answer to
    /// regenerate. A running answer is `TurnInProgress`: stop it first.
    pub async fn drop_last_exchange(
        &self,
        session: &SessionRow,
        owner: Option<&str>,
    ) -> Result<Option<Prompt>, StartError> {
        let Some(_claim) = Starting::claim(self, format!("turn/{}", session.id)) else {
            return Err(StartError::TurnInProgress);
        };
        let turns = self.store.turns(&session.id).await?;
        let Some(answer) = turns.last().filter(|t| t.role == "assistant") else {
            return Ok(None);
        };
        if running(answer) {
            return Err(StartError::TurnInProgress);
        }
        let Some(asked) = turns.iter().rev().find(|t| t.role != "assistant") else {
            return Ok(None);
        };
        let prompt = asked_prompt(asked);
        for stream in turns
            .iter()
            .filter(|t| t.idx > asked.idx)
            .filter_map(|t| t.stream_id.as_deref())
        {
            self.delete(stream, owner).await?;
        }
        let edit = SessionEdit::Truncate {
            id: session.id.clone(),
            idx: asked.idx,
        };
        self.log.edit(edit).await?;
        Ok(Some(prompt))
    }
}

/// What a user or tool turn asked, as the prompt it was started with.
fn asked_prompt(turn: &TurnRow) -> Prompt {
    let given = turn.given_messages();
    if given.is_empty() {
        Prompt::Text(turn.content.clone().unwrap_or_default())
    } else {
        Prompt::Messages(given)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_ids_are_one_to_128_url_safe_characters() {
        for ok in ["a", "Zx9_-", &"k".repeat(128), "hJ3kL9mN2pQ4rS6t"] {
            assert!(valid_chat_id(ok), "{ok}");
        }
        for bad in ["", &"k".repeat(129), "a/b", "a b", "é", "a.b", "a%20"] {
            assert!(!valid_chat_id(bad), "{bad}");
        }
    }
}
