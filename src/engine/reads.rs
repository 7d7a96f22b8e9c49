//! The read operations every surface uses: find a stream or session for its owner,
//! list, and follow a stream from a cursor (the cursor rule of [`super::cursor`], then
//! a [`feed`](crate::feed) over the store and the hub). Surfaces never reach the store
//! or the hub themselves.

use futures_util::Stream;

use super::Engine;
use super::cursor::{self, FollowError, Resume};
use crate::event::Event;
use crate::feed::{self, Chunk};
use crate::ids::{looks_like_session_id, looks_like_stream_id};
use crate::store::{ListCursor, SessionRow, StoreError, StreamRow, TurnRow};

/// Whose stream a read may open.
#[derive(Debug, Clone, Copy)]
pub enum Access<'a> {
    /// The caller's own (`None`: no keys are configured, everything is open).
    Owner(Option<&'a str>),
    /// Any owner's: the caller holds a read token for this stream.
    Granted,
}

/// A stream to follow, as the cursor rule found it.
#[derive(Debug)]
pub enum Follow {
    /// Replay the events after `after`, then follow live.
    From { row: StreamRow, after: u64 },
    /// The cursor is the stream's terminal event: nothing follows.
    Ended(StreamRow),
}

impl Engine {
    /// One stream, if it exists and `access` may see it.
    pub async fn stream(
        &self,
        id: &str,
        access: Access<'_>,
    ) -> Result<Option<StreamRow>, StoreError> {
        if !looks_like_stream_id(id) {
            return Ok(None);
        }
        match access {
            Access::Owner(owner) => self.store.stream(id, owner).await,
            Access::Granted => self.store.stream_unscoped(id).await,
        }
    }

    /// The text of a stream's token events so far.
    pub async fn text(&self, id: &str) -> Result<String, StoreError> {
        self.store.text(id).await
    }

    /// The stream's answer so far, assembled from its stored events.
    pub async fn answer(&self, id: &str) -> Result<crate::answer::Answer, StoreError> {
        Ok(crate::answer::Answer::of(&self.events(id).await?))
    }

    /// Every stored event of a stream so far, in order.
    pub async fn events(&self, id: &str) -> Result<Vec<Event>, StoreError> {
        const PAGE: u32 = 4096;
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let events = self.store.events_after(id, after, PAGE).await?;
            let full = events.len() == PAGE as usize;
            let last = events.last().map(|e| e.seq);
            all.extend(events);
            match last {
                Some(last) if full => after = last,
                _ => return Ok(all),
            }
        }
    }

    /// The owner's streams, newest first, strictly below `before` (a stream id).
    /// `None` when `before` is not one of the owner's streams.
    pub async fn list_streams(
        &self,
        owner: Option<&str>,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Option<Vec<StreamRow>>, StoreError> {
        let cursor = match before {
            None => None,
            Some(id) => match self.stream(id, Access::Owner(owner)).await? {
                Some(row) => Some(ListCursor {
                    created_at: row.created_at,
                    id: row.id,
                }),
                None => return Ok(None),
            },
        };
        self.store
            .list_streams(owner, cursor.as_ref(), limit)
            .await
            .map(Some)
    }

    /// One session, if it exists and belongs to `owner`.
    pub async fn session(
        &self,
        id: &str,
        owner: Option<&str>,
    ) -> Result<Option<SessionRow>, StoreError> {
        if !looks_like_session_id(id) {
            return Ok(None);
        }
        self.store.session(id, owner).await
    }

    /// A session's turns, oldest first.
    pub async fn turns(&self, session_id: &str) -> Result<Vec<TurnRow>, StoreError> {
        self.store.turns(session_id).await
    }

    /// Finds a stream for `access` and applies the cursor rule to `cursor` (`None`:
    /// from the start). Counts a resume when a cursor was given.
    pub async fn follow(
        &self,
        id: &str,
        access: Access<'_>,
        cursor: Option<u64>,
    ) -> Result<Follow, FollowError> {
        let row = self
            .stream(id, access)
            .await?
            .ok_or(FollowError::NotFound)?;
        let ended = row.status()?.is_terminal();
        match cursor::resolve(cursor.unwrap_or(0), row.last_seq(), ended)? {
            Resume::Ended => Ok(Follow::Ended(row)),
            Resume::After(after) => {
                if cursor.is_some() {
                    self.metrics.resumed();
                }
                Ok(Follow::From { row, after })
            }
        }
    }

    /// The cursor rule for a format that numbers its own frames (the Responses API's
    /// `sequence_number`): `frames` is how many frames the stream's stored events make,
    /// so its last frame is `frames - 1`. Counts a resume.
    pub fn follow_frames(
        &self,
        row: StreamRow,
        cursor: u64,
        frames: u64,
    ) -> Result<Follow, FollowError> {
        let ended = row.status()?.is_terminal();
        match cursor::resolve(cursor, frames.saturating_sub(1), ended)? {
            Resume::Ended => Ok(Follow::Ended(row)),
            Resume::After(after) => {
                self.metrics.resumed();
                Ok(Follow::From { row, after })
            }
        }
    }

    /// The events of stream `id` after `after`: stored ones, then live ones, to the end.
    pub fn feed(
        &self,
        id: &str,
        after: u64,
    ) -> impl Stream<Item = Result<Chunk, StoreError>> + Send + 'static + use<> {
        self.feed_early(id, after, None)
    }

    /// [`Engine::feed`] from the first event of a stream just started, on the live
    /// channel its start subscribed to (see [`crate::hub::Early`]): nothing is read
    /// from the store unless the reader falls behind.
    pub fn feed_early(
        &self,
        id: &str,
        after: u64,
        early: Option<tokio::sync::broadcast::Receiver<crate::hub::Published>>,
    ) -> impl Stream<Item = Result<Chunk, StoreError>> + Send + 'static + use<> {
        feed::follow(
            self.store.clone(),
            self.hub.clone(),
            self.metrics.clone(),
            id.to_owned(),
            after,
            early.filter(|_| after == 0),
        )
    }
}
