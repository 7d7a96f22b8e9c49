//! Durable Streams on the engine: named streams whose appends are `message` events of
//! a spool stream, written through the one group-commit writer and announced by the
//! hub like tokens (see `crate::ds` for the rules).
//!
//! **Architecture Invariant:** one writer per Durable Stream per process. Every
//! operation on a name holds that name's lock (`DsCache`) from validation to commit,
//! so producer checks, `Stream-Seq` checks and appends are serialized; what the
//! stream's appends left (tail, producers, close) is rebuilt from its events the first
//! time a process meets it. Appends return once committed. Several nodes may read a
//! Durable Stream; its writes belong on one node at a time (two nodes appending to the
//! same name would each trust their own view of its producers).
//!
//! TTL and expiry: a stream past its `Stream-Expires-At`, or idle (no read or write;
//! `HEAD` does not count) for its `Stream-TTL`, is gone — deleted on the next access.
//! Idleness is kept in memory: a restart counts from the restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;

use super::Engine;
use crate::ds::{self, CloseData, Message, Offset, Producer, Writers};
use crate::event::{Event, EventKind, FinishReason, StreamStatus, Usage, now_ms, rfc3339};
use crate::ids::new_stream_id;
use crate::store::ds::{DsRow, NewDs};
use crate::store::{NewStream, StoreError, StreamEnd};

/// At most this many Durable Streams are kept in memory; past it, those not in use
/// are forgotten (and rebuilt from the store when met again).
const CACHE_MAX: usize = 10_000;

/// Events read per page when a stream is rebuilt or read.
const PAGE: u32 = 1024;

/// What a Durable Stream's messages are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsKind {
    /// Bytes or JSON messages of the protocol (`message` events).
    Plain,
    /// Spool events sent as `{"seq","event","data"}` messages, stored as themselves: the
    /// stream is readable on every spool surface.
    Spool,
    /// A stream spool generated, read-only at its own id.
    Native,
}

/// A Durable Stream as this process knows it.
#[derive(Debug, Clone)]
pub struct DsLive {
    pub kind: DsKind,
    pub name: String,
    pub owner: Option<String>,
    pub stream_id: String,
    pub content_type: String,
    pub ttl_seconds: Option<i64>,
    pub expires_at: Option<i64>,
    pub writers: Writers,
    /// Last read or write (ms), for the sliding TTL.
    pub last_access: i64,
    /// A fork: its source's name, the source offset (seq) it diverges at, and its
    /// sub-offset. Its own events continue the source's offsets from there.
    pub fork: Option<(String, u64, u64)>,
    /// Deleted while forks read through it: `410` to everyone else.
    pub soft_deleted: bool,
}

impl DsLive {
    /// How far its own seqs are from its offsets (a fork's start event is at the
    /// offset it diverges at).
    fn base(&self) -> i64 {
        self.fork.as_ref().map_or(0, |(_, at, _)| *at as i64 - 1)
    }

    /// The offset (as a seq) of its own event `own`.
    pub fn ext(&self, own: u64) -> u64 {
        u64::try_from(own as i64 + self.base()).unwrap_or(0)
    }

    /// Its own seq of offset `ext` (0: before its first event).
    fn own(&self, ext: u64) -> u64 {
        u64::try_from(ext as i64 - self.base()).unwrap_or(0)
    }

    /// Its tail as a seq.
    pub fn tail_seq(&self) -> u64 {
        self.ext(self.writers.tail)
    }

    pub fn tail(&self) -> String {
        ds::offset(self.tail_seq())
    }

    fn expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
            || self
                .ttl_seconds
                .is_some_and(|ttl| self.last_access + ttl.saturating_mul(1000) <= now)
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<DsLive>>>;

/// The lock and known state of each name met in this process.
#[derive(Default)]
pub struct DsCache(Mutex<HashMap<String, Slot>>);

impl DsCache {
    fn slot(&self, name: &str) -> Slot {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CACHE_MAX {
            map.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        map.entry(name.to_owned()).or_default().clone()
    }
}

/// A new stream's configuration, from `PUT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsConfig {
    /// `None`: `application/octet-stream`, or a fork's source's.
    pub content_type: Option<String>,
    pub ttl_seconds: Option<i64>,
    pub expires_at: Option<i64>,
    pub closed: bool,
    /// Its messages are spool events (`Spool-Events: true`).
    pub spool_events: bool,
    pub fork: Option<Fork>,
}

/// A fork's `Stream-Forked-From`, `Stream-Fork-Offset` and `Stream-Fork-Sub-Offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fork {
    pub source: String,
    /// `None`: the source's tail.
    pub at: Option<u64>,
    pub sub: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DsError {
    #[error("no such stream")]
    NotFound,
    #[error("the stream exists with another configuration")]
    ConfigConflict,
    #[error("the body is not valid JSON")]
    InvalidJson,
    #[error("an empty JSON array appends nothing")]
    EmptyArray,
    #[error("the content type differs from the stream's")]
    ContentType,
    #[error("Stream-Seq must increase")]
    StreamSeq,
    #[error("{0}")]
    NotSpoolEvent(String),
    #[error("a stream spool generated is read-only here")]
    ReadOnly,
    #[error("the stream is deleted (its forks still read it)")]
    Gone,
    #[error("the fork's source does not exist")]
    SourceNotFound,
    #[error("the fork's source is deleted (its other forks still read it)")]
    SourceGone,
    #[error("{0}")]
    BadFork(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a `PUT` did.
pub enum Created {
    New(DsLive),
    /// It exists already with this configuration.
    Existing(DsLive),
}

/// A `POST` (append, close, or both).
#[derive(Debug, Clone, Default)]
pub struct Append {
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    pub close: bool,
    pub producer: Option<(String, u64, u64)>,
    pub stream_seq: Option<String>,
}

/// What a `POST` did.
pub enum Appended {
    /// Appended (and closed, if asked): the stream now.
    Done(DsLive),
    /// Closed already and this is not the append that closed it: `409`.
    Closed(DsLive),
    /// A producer's append that was refused or deduplicated.
    Producer(Producer, DsLive),
}

/// A catch-up read.
pub struct Read {
    pub stream: DsLive,
    /// Each message with its seq.
    pub messages: Vec<(u64, Message)>,
    /// The seq of the last message returned (the offset to go on from).
    pub next: u64,
    /// Everything there was is returned.
    pub up_to_date: bool,
}

impl Engine {
    /// Rebuilds what `name`'s events left, or `None` if there is no such stream (or it
    /// expired: then it is deleted).
    async fn ds_load(&self, name: &str, slot: &mut Option<DsLive>) -> Result<(), StoreError> {
        // The row each time: another node may have appended to, closed or deleted it.
        let Some(row) = self.store.ds_stream(name).await? else {
            *slot = None;
            return Ok(());
        };
        match slot.as_mut() {
            Some(s) if s.stream_id == row.stream_id => {
                let stored = u64::try_from(row.last_seq).unwrap_or(0);
                if stored > s.writers.last_seq {
                    self.ds_catch_up(s).await?;
                }
            }
            _ => *slot = Some(self.ds_rebuild(row).await?),
        }
        if slot
            .as_ref()
            .is_some_and(|s| !s.soft_deleted && s.expired(now_ms()))
        {
            tracing::info!(name, "durable stream expired: deleting it");
            Box::pin(self.ds_remove(slot)).await?;
        }
        Ok(())
    }

    /// Takes in what was stored after what `s` knows (another node's appends).
    async fn ds_catch_up(&self, s: &mut DsLive) -> Result<(), StoreError> {
        loop {
            let events = self
                .store
                .events_after(&s.stream_id, s.writers.last_seq, PAGE)
                .await?;
            for e in &events {
                s.writers.replay(e);
                if s.kind == DsKind::Spool {
                    s.writers.tail = e.seq;
                }
            }
            if events.len() < PAGE as usize {
                return Ok(());
            }
        }
    }

    async fn ds_rebuild(&self, row: DsRow) -> Result<DsLive, StoreError> {
        let kind = if row.spool_events {
            DsKind::Spool
        } else {
            DsKind::Plain
        };
        let mut writers = Writers::default();
        let mut after = 0;
        loop {
            let events = self.store.events_after(&row.stream_id, after, PAGE).await?;
            for e in &events {
                writers.replay(e);
                if kind == DsKind::Spool {
                    // Every event is a message.
                    writers.tail = e.seq;
                }
            }
            match events.last() {
                Some(last) if events.len() == PAGE as usize => after = last.seq,
                _ => break,
            }
        }
        Ok(DsLive {
            kind,
            name: row.name,
            owner: row.owner,
            stream_id: row.stream_id,
            content_type: row.content_type,
            ttl_seconds: row.ttl_seconds,
            expires_at: row.expires_at,
            writers,
            last_access: now_ms(),
            fork: match (row.forked_from, row.fork_seq) {
                (Some(source), Some(at)) => Some((
                    source,
                    u64::try_from(at).unwrap_or(0),
                    u64::try_from(row.fork_sub.unwrap_or(0)).unwrap_or(0),
                )),
                _ => None,
            },
            soft_deleted: row.soft_deleted,
        })
    }

    /// The stream named `name`, if `owner` may see it (`touch`: a read or write, which
    /// restarts its TTL).
    pub async fn ds_get(
        &self,
        name: &str,
        owner: Option<&str>,
        touch: bool,
    ) -> Result<Option<DsLive>, StoreError> {
        let slot = self.ds.slot(name);
        let mut guard = slot.lock().await;
        self.ds_load(name, &mut guard).await?;
        Ok(match guard.as_mut() {
            Some(s) if s.owner.as_deref() == owner => {
                if touch {
                    s.last_access = now_ms();
                }
                Some(s.clone())
            }
            Some(_) => None,
            None => self.ds_native(name, owner).await?,
        })
    }

    /// A stream spool generated, seen as a read-only JSON-mode Durable Stream at its
    /// own id: one message per event.
    async fn ds_native(
        &self,
        name: &str,
        owner: Option<&str>,
    ) -> Result<Option<DsLive>, StoreError> {
        let Some(row) = self.stream(name, super::Access::Owner(owner)).await? else {
            return Ok(None);
        };
        if row.model == ds::MODEL {
            // A Durable Stream's own spool stream: read it by its name.
            return Ok(None);
        }
        let closed = row.status().is_ok_and(|s| s.is_terminal());
        Ok(Some(DsLive {
            kind: DsKind::Native,
            name: name.to_owned(),
            owner: row.owner.clone(),
            stream_id: row.id.clone(),
            content_type: "application/json".to_owned(),
            ttl_seconds: None,
            expires_at: None,
            writers: Writers {
                tail: row.last_seq(),
                last_seq: row.last_seq(),
                closed,
                ..Writers::default()
            },
            last_access: now_ms(),
            fork: None,
            soft_deleted: false,
        }))
    }

    /// `PUT`: creates `name` (with `body` as its first append), or finds it with the
    /// same configuration. A fork inherits its source's messages up to its offset (and
    /// `sub` more of the next append, as its own first message), its content type if
    /// none is given, and its TTL or expiry if it sets neither; not its producers.
    pub async fn ds_create(
        &self,
        name: &str,
        owner: Option<&str>,
        config: DsConfig,
        body: &[u8],
    ) -> Result<Created, DsError> {
        let created = self.ds_make(name, owner, config, body).await?;
        if matches!(created, Created::New(_)) && !body.is_empty() {
            self.subs_appended(name, owner).await;
        }
        Ok(created)
    }

    /// [`Engine::ds_create`] without telling subscriptions.
    async fn ds_make(
        &self,
        name: &str,
        owner: Option<&str>,
        config: DsConfig,
        body: &[u8],
    ) -> Result<Created, DsError> {
        let slot = self.ds.slot(name);
        let mut guard = slot.lock().await;
        self.ds_load(name, &mut guard).await?;
        if guard.is_none() && crate::ids::looks_like_stream_id(name) {
            // The name of a spool stream's own view.
            return Err(DsError::ConfigConflict);
        }
        // A fork's source, and what the fork inherits from it.
        let mut inherited_prefix = None;
        let mut fork = None;
        let mut content_type = config.content_type.clone();
        let (mut ttl_seconds, mut expires_at) = (config.ttl_seconds, config.expires_at);
        if let Some(f) = &config.fork {
            let source = match self.ds_internal(&f.source).await? {
                Some(src) if src.owner.as_deref() == owner => src,
                _ => return Err(DsError::SourceNotFound),
            };
            if source.soft_deleted {
                return Err(DsError::SourceGone);
            }
            if let Some(ct) = &content_type
                && ds::media_type(ct) != ds::media_type(&source.content_type)
            {
                return Err(DsError::ContentType);
            }
            content_type = Some(source.content_type.clone());
            let tail = source.tail_seq();
            let at = f.at.unwrap_or(tail);
            if at > tail {
                return Err(DsError::BadFork(
                    "Stream-Fork-Offset is beyond the source's tail".to_owned(),
                ));
            }
            if f.sub > 0 {
                if f.at.is_none() {
                    return Err(DsError::BadFork(
                        "Stream-Fork-Sub-Offset needs a Stream-Fork-Offset".to_owned(),
                    ));
                }
                let (next, _) = Box::pin(self.ds_messages(&source, at, None, 1)).await?;
                let Some((_, m)) = next.into_iter().next() else {
                    return Err(DsError::BadFork(
                        "Stream-Fork-Sub-Offset is past the source's data".to_owned(),
                    ));
                };
                inherited_prefix = Some(prefix(&m, f.sub).ok_or_else(|| {
                    DsError::BadFork(
                        "Stream-Fork-Sub-Offset is past the next append's end".to_owned(),
                    )
                })?);
            }
            if ttl_seconds.is_none() && expires_at.is_none() {
                ttl_seconds = source.ttl_seconds;
                expires_at = source.expires_at;
            }
            fork = Some((f.source.clone(), at, f.sub));
        }
        let content_type = content_type.unwrap_or_else(|| "application/octet-stream".to_owned());
        if let Some(s) = guard.as_mut() {
            if s.soft_deleted {
                return Err(DsError::ConfigConflict);
            }
            if s.owner.as_deref() != owner {
                return Err(DsError::ConfigConflict);
            }
            let same_fork = match (&s.fork, &fork, &config.fork) {
                (None, None, _) => true,
                (Some((src, at, sub)), Some(_), Some(req)) => {
                    *src == req.source && req.at.is_none_or(|a| a == *at) && *sub == req.sub
                }
                _ => false,
            };
            let same = ds::media_type(&s.content_type) == ds::media_type(&content_type)
                && s.ttl_seconds == ttl_seconds
                && s.expires_at == expires_at
                && s.writers.closed == config.closed
                && (s.kind == DsKind::Spool) == config.spool_events
                && same_fork;
            if !same {
                return Err(DsError::ConfigConflict);
            }
            s.last_access = now_ms();
            return Ok(Created::Existing(s.clone()));
        }
        if config.spool_events && (!ds::is_json(&content_type) || fork.is_some()) {
            return Err(DsError::NotSpoolEvent(
                "a stream of spool events is application/json, and not a fork".to_owned(),
            ));
        }
        let first = Message::of(&content_type, body, true).map_err(|e| match e {
            ds::BodyError::InvalidJson => DsError::InvalidJson,
            ds::BodyError::EmptyArray => DsError::EmptyArray,
        })?;
        let kind = if config.spool_events {
            DsKind::Spool
        } else {
            DsKind::Plain
        };
        let first_events = match (&first, kind) {
            (Some(m), DsKind::Spool) => spool_events(m, 2)?,
            _ => Vec::new(),
        };
        let id = new_stream_id().map_err(|_| StoreError::Closed)?;
        let created_at = now_ms();
        let stream = NewStream {
            id: id.clone(),
            owner: owner.map(str::to_owned),
            model: ds::MODEL.to_owned(),
            // A request of its own shape, for the surfaces that read one.
            params: serde_json::json!({"model": ds::MODEL, "prompt": "", "max_tokens": 0,
                "metadata": {"durable_stream": name, "content_type": content_type}})
            .to_string(),
            created_at,
            turn: None,
            idempotency: None,
            ds: Some(Box::new(NewDs {
                name: name.to_owned(),
                content_type: content_type.clone(),
                ttl_seconds,
                expires_at,
                spool_events: config.spool_events,
                fork: fork
                    .as_ref()
                    .map(|(src, at, sub)| (src.clone(), *at as i64, *sub as i64)),
            })),
        };
        self.hub.open(&id);
        let start = Event::start(1, &id, ds::MODEL, &rfc3339(created_at));
        self.log.create(stream, start).await?;
        let mut writers = Writers {
            tail: 1,
            last_seq: 1,
            ..Writers::default()
        };
        if kind == DsKind::Spool {
            self.ds_spool_append(&id, &mut writers, first_events)
                .await?;
        } else {
            for m in inherited_prefix.into_iter().chain(first) {
                writers.last_seq += 1;
                writers.tail = writers.last_seq;
                let event = Event {
                    seq: writers.last_seq,
                    kind: EventKind::Message,
                    data: m.to_data(),
                };
                self.log.append(Arc::from(id.as_str()), event, None).await?;
            }
        }
        if config.closed && !writers.closed {
            self.ds_close_event(&id, &mut writers, None).await?;
            if kind == DsKind::Spool {
                writers.tail = writers.last_seq;
            }
        }
        self.log.flush().await?;
        // Another node may have taken the name first: the stored row says whose it is.
        let row = self.store.ds_stream(name).await?;
        if row.as_ref().is_none_or(|r| r.stream_id != id) {
            self.log.delete(id).await?;
            *guard = None;
            return Err(DsError::ConfigConflict);
        }
        let live = DsLive {
            kind,
            name: name.to_owned(),
            owner: owner.map(str::to_owned),
            stream_id: id,
            content_type,
            ttl_seconds,
            expires_at,
            writers,
            last_access: now_ms(),
            fork,
            soft_deleted: false,
        };
        *guard = Some(live.clone());
        Ok(Created::New(live))
    }

    /// The owner of `name` (`Some(None)`: a stream without one), for a read token's
    /// bearer.
    pub async fn ds_owner(&self, name: &str) -> Result<Option<Option<String>>, StoreError> {
        Ok(self.ds_internal(name).await?.map(|s| s.owner))
    }

    /// `name` as stored, whoever owns it and soft-deleted or not (a fork reads its
    /// source through this).
    pub(super) async fn ds_internal(&self, name: &str) -> Result<Option<DsLive>, StoreError> {
        let slot = self.ds.slot(name);
        let mut guard = slot.lock().await;
        self.ds_load(name, &mut guard).await?;
        Ok(guard.clone())
    }

    /// The messages of `s` after offset `after` (as seqs), up to `upto` and at most
    /// `limit`: a fork's inherited ones from its source (recursively), then its own.
    /// `true` with them: there may be more.
    async fn ds_messages(
        &self,
        s: &DsLive,
        after: u64,
        upto: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<(u64, Message)>, bool), StoreError> {
        let mut out = Vec::new();
        if let Some((source, at, _)) = &s.fork
            && after < *at
            && let Some(src) = self.ds_internal(source).await?
        {
            let bound = upto.map_or(*at, |u| u.min(*at));
            let (inherited, more) =
                Box::pin(self.ds_messages(&src, after, Some(bound), limit)).await?;
            out = inherited;
            if more || out.len() >= limit {
                return Ok((out, true));
            }
        }
        let own_after = s.own(after);
        let page = self
            .store
            .events_after(&s.stream_id, own_after, PAGE)
            .await?;
        let full = page.len() == PAGE as usize;
        for e in &page {
            let ext = s.ext(e.seq);
            if ext <= after {
                continue;
            }
            if upto.is_some_and(|u| ext > u) {
                return Ok((out, false));
            }
            let m = match s.kind {
                DsKind::Plain if e.kind == EventKind::Message => Message::parse(&e.data),
                DsKind::Plain => None,
                DsKind::Spool | DsKind::Native => event_message(e),
            };
            if let Some(m) = m {
                out.push((ext, m));
                if out.len() >= limit {
                    return Ok((out, true));
                }
            }
        }
        Ok((out, full))
    }

    /// Queues the terminal `done` of a close (the caller flushes).
    async fn ds_close_event(
        &self,
        id: &str,
        writers: &mut Writers,
        closed_by: Option<(String, u64, u64)>,
    ) -> Result<(), StoreError> {
        writers.last_seq += 1;
        let mut done = Event::done(writers.last_seq, FinishReason::Stop, Usage::default());
        if closed_by.is_some() {
            // The done event's own members, plus who closed it.
            let mut value: serde_json::Value =
                serde_json::from_str(&done.data).unwrap_or_else(|_| serde_json::json!({}));
            if let Some(obj) = value.as_object_mut() {
                let extra = serde_json::to_value(CloseData {
                    closed_by: closed_by.clone(),
                })
                .unwrap_or_default();
                if let Some(extra) = extra.as_object() {
                    obj.extend(extra.clone());
                }
            }
            done.data = value.to_string();
        }
        let end = StreamEnd {
            status: StreamStatus::Completed,
            finish_reason: Some(FinishReason::Stop),
            error: None,
            usage: Usage::default(),
            finished_at: now_ms(),
            turn_text: None,
            turn_tool_calls: None,
        };
        self.log.append(Arc::from(id), done, Some(end)).await?;
        writers.closed = true;
        writers.closed_by = closed_by;
        Ok(())
    }

    /// `POST`: appends, closes, or both, once validated; returns once committed.
    pub async fn ds_append(
        &self,
        name: &str,
        owner: Option<&str>,
        append: Append,
    ) -> Result<Appended, DsError> {
        let appends = !append.body.is_empty();
        let appended = self.ds_write(name, owner, append).await?;
        // Announced to subscriptions once the stream's lock is released (see
        // `engine::subscriptions` for the lock order).
        if appends && matches!(appended, Appended::Done(_)) {
            self.subs_appended(name, owner).await;
        }
        Ok(appended)
    }

    /// [`Engine::ds_append`] without telling subscriptions (a wake stream's own
    /// announcements are written with it).
    pub(super) async fn ds_write(
        &self,
        name: &str,
        owner: Option<&str>,
        append: Append,
    ) -> Result<Appended, DsError> {
        let slot = self.ds.slot(name);
        let mut guard = slot.lock().await;
        self.ds_load(name, &mut guard).await?;
        if guard
            .as_ref()
            .is_some_and(|s| s.soft_deleted && s.owner.as_deref() == owner)
        {
            return Err(DsError::Gone);
        }
        let Some(s) = guard.as_mut().filter(|s| s.owner.as_deref() == owner) else {
            drop(guard);
            return Err(match self.ds_native(name, owner).await? {
                Some(_) => DsError::ReadOnly,
                None => DsError::NotFound,
            });
        };
        s.last_access = now_ms();
        if s.writers.closed {
            // The retry of the append that closed it is a duplicate; a plain close-only
            // is idempotent; anything else meets a closed stream.
            if append.producer.is_some() && append.producer == s.writers.closed_by {
                let last = append.producer.as_ref().map_or(0, |p| p.2);
                return Ok(Appended::Producer(Producer::Duplicate { last }, s.clone()));
            }
            if append.body.is_empty() && append.close && append.producer.is_none() {
                return Ok(Appended::Done(s.clone()));
            }
            return Ok(Appended::Closed(s.clone()));
        }
        let message = if append.body.is_empty() {
            None
        } else {
            if let Some(ct) = &append.content_type
                && ds::media_type(ct) != ds::media_type(&s.content_type)
            {
                return Err(DsError::ContentType);
            }
            Some(
                Message::of(&s.content_type, &append.body, false).map_err(|e| match e {
                    ds::BodyError::InvalidJson => DsError::InvalidJson,
                    ds::BodyError::EmptyArray => DsError::EmptyArray,
                })?,
            )
        };
        if let Some((id, epoch, seq)) = &append.producer {
            let verdict = ds::check_producer(s.writers.producers.get(id).copied(), *epoch, *seq);
            if verdict != Producer::Accept {
                return Ok(Appended::Producer(verdict, s.clone()));
            }
        }
        if let Some(q) = &append.stream_seq
            && s.writers.stream_seq.as_ref().is_some_and(|last| q <= last)
        {
            return Err(DsError::StreamSeq);
        }
        let id: Arc<str> = Arc::from(s.stream_id.as_str());
        // This process writes it: its appends are announced live to its readers
        // (another node's readers hear of them through the store).
        if self.hub.readers(&id).is_none() {
            self.hub.open(&id);
        }
        let mut writers = s.writers.clone();
        if s.kind == DsKind::Spool {
            let events = match &message {
                Some(Some(m)) => spool_events(m, writers.last_seq + 1)?,
                _ => Vec::new(),
            };
            self.ds_spool_append(&id, &mut writers, events).await?;
            if let Some((pid, epoch, seq)) = &append.producer {
                writers.producers.insert(pid.clone(), (*epoch, *seq));
            }
            if append.stream_seq.is_some() {
                writers.stream_seq = append.stream_seq.clone();
            }
            if append.close && !writers.closed {
                self.ds_close_event(&id, &mut writers, append.producer.clone())
                    .await?;
                writers.tail = writers.last_seq;
            }
            self.log.flush().await?;
            s.writers = writers;
            return Ok(Appended::Done(s.clone()));
        }
        if let Some(Some(mut m)) = message {
            m.p = append.producer.clone();
            m.q = append.stream_seq.clone();
            writers.last_seq += 1;
            writers.tail = writers.last_seq;
            let event = Event {
                seq: writers.last_seq,
                kind: EventKind::Message,
                data: m.to_data(),
            };
            self.log.append(id.clone(), event, None).await?;
        }
        if let Some((pid, epoch, seq)) = &append.producer {
            writers.producers.insert(pid.clone(), (*epoch, *seq));
        }
        if append.stream_seq.is_some() {
            writers.stream_seq = append.stream_seq.clone();
        }
        if append.close {
            self.ds_close_event(&id, &mut writers, append.producer.clone())
                .await?;
        }
        self.log.flush().await?;
        s.writers = writers;
        Ok(Appended::Done(s.clone()))
    }

    /// Appends spool events sent as messages (a terminal one closes the stream).
    async fn ds_spool_append(
        &self,
        id: &str,
        writers: &mut Writers,
        events: Vec<Event>,
    ) -> Result<(), StoreError> {
        for event in events {
            writers.last_seq = event.seq;
            writers.tail = event.seq;
            let end = event.kind.is_terminal().then(|| spool_end(&event));
            if end.is_some() {
                writers.closed = true;
            }
            self.log.append(Arc::from(id), event, end).await?;
        }
        Ok(())
    }

    /// `DELETE` (the stream leaves every subscription). `false`: no such stream of
    /// `owner`'s.
    pub async fn ds_delete(&self, name: &str, owner: Option<&str>) -> Result<bool, DsError> {
        let deleted = self.ds_drop(name, owner).await?;
        if deleted {
            self.subs_removed(name).await;
        }
        Ok(deleted)
    }

    async fn ds_drop(&self, name: &str, owner: Option<&str>) -> Result<bool, DsError> {
        let slot = self.ds.slot(name);
        let mut guard = slot.lock().await;
        self.ds_load(name, &mut guard).await?;
        match guard.as_ref() {
            Some(s) if s.owner.as_deref() == owner => {
                if s.soft_deleted {
                    return Err(DsError::Gone);
                }
                self.ds_remove(&mut guard).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Deletes the stream in `slot` — or, while forks read through it, marks it
    /// deleted — then a soft-deleted source it was the last fork of, and so on up.
    async fn ds_remove(&self, slot: &mut Option<DsLive>) -> Result<(), StoreError> {
        let Some(s) = slot.as_mut() else {
            return Ok(());
        };
        if self.store.ds_forks(&s.name).await? > 0 {
            self.log
                .edit(crate::store::RowEdit::DsSoftDelete {
                    name: s.name.clone(),
                })
                .await?;
            s.soft_deleted = true;
            return Ok(());
        }
        let Some(s) = slot.take() else {
            return Ok(());
        };
        self.hub.close(&s.stream_id);
        self.log.delete(s.stream_id.clone()).await?;
        let mut parent = s.fork.map(|(source, _, _)| source);
        while let Some(name) = parent.take() {
            let pslot = self.ds.slot(&name);
            let mut pguard = pslot.lock().await;
            self.ds_load(&name, &mut pguard).await?;
            let Some(p) = pguard.as_ref() else {
                break;
            };
            if !p.soft_deleted || self.store.ds_forks(&name).await? > 0 {
                break;
            }
            parent = p.fork.as_ref().map(|(source, _, _)| source.clone());
            let stream_id = p.stream_id.clone();
            *pguard = None;
            self.hub.close(&stream_id);
            self.log.delete(stream_id).await?;
        }
        Ok(())
    }

    /// The messages of `name` after `from`, as far as one page goes.
    pub async fn ds_read(
        &self,
        name: &str,
        owner: Option<&str>,
        from: Offset,
    ) -> Result<Option<Read>, StoreError> {
        let Some(stream) = self.ds_get(name, owner, true).await? else {
            return Ok(None);
        };
        let after = match from {
            Offset::Start => 0,
            Offset::Now => stream.tail_seq(),
            Offset::After(seq) => seq,
        };
        let (messages, _) = self
            .ds_messages(&stream, after, None, PAGE as usize)
            .await?;
        // With no message, the reader is at the tail.
        let next = messages.last().map_or(stream.tail_seq(), |(seq, _)| *seq);
        Ok(Some(Read {
            up_to_date: next >= stream.tail_seq(),
            stream,
            messages,
            next,
        }))
    }

    /// Waits up to `timeout` for a message of `s` after offset `after`, or its close
    /// (a fork waits for its own appends only). `true`: something happened (read again).
    pub async fn ds_wait(&self, s: &DsLive, after: u64, timeout: Duration) -> bool {
        let feed = self.feed(&s.stream_id, s.own(after));
        let mut feed = std::pin::pin!(feed);
        let waited = tokio::time::timeout(timeout, async {
            while let Some(chunk) = feed.next().await {
                let Ok(chunk) = chunk else {
                    return true;
                };
                if chunk
                    .events()
                    .iter()
                    .any(|e| e.kind == EventKind::Message || e.kind.is_terminal())
                {
                    return true;
                }
            }
            true
        });
        tokio::select! {
            r = waited => r.unwrap_or(false),
            _ = self.shutdown.cancelled() => false,
        }
    }
}

/// A spool event as a Durable Streams message: `{"seq","event","data"}`.
fn event_message(e: &Event) -> Option<Message> {
    let text = format!(
        r#"{{"seq":{},"event":"{}","data":{}}}"#,
        e.seq,
        e.kind.as_str(),
        e.data
    );
    let raw = serde_json::value::RawValue::from_string(text).ok()?;
    Some(Message {
        m: Some(vec![raw]),
        b: None,
        p: None,
        q: None,
    })
}

/// The messages of an append to a stream of spool events as the events they are,
/// numbered from `first`: each `{"event", "data"}` (and `seq`, which must be the one
/// it gets); `start` is the stream's own, and nothing follows a `done` or `error`.
fn spool_events(m: &Message, first: u64) -> Result<Vec<Event>, DsError> {
    #[derive(serde::Deserialize)]
    struct Shape<'a> {
        seq: Option<u64>,
        event: String,
        #[serde(borrow)]
        data: &'a serde_json::value::RawValue,
    }
    let bad = DsError::NotSpoolEvent;
    let mut out: Vec<Event> = Vec::new();
    for (i, raw) in m.m.iter().flatten().enumerate() {
        let seq = first + i as u64;
        let shape: Shape = serde_json::from_str(raw.get()).map_err(|_| {
            bad(format!(
                "message {i} is not {{\"seq\", \"event\", \"data\"}}, as a stream of spool events takes"
            ))
        })?;
        if let Some(given) = shape.seq.filter(|s| *s != seq) {
            return Err(bad(format!(
                "message {i} has seq {given}, but it is event {seq} of the stream"
            )));
        }
        let kind = EventKind::parse(&shape.event)
            .filter(|k| !matches!(k, EventKind::Start | EventKind::Message))
            .ok_or_else(|| {
                bad(format!(
                    "`event` {:?} is not one of token, reasoning, tool_call, refusal, done, error",
                    shape.event
                ))
            })?;
        if out.last().is_some_and(|e| e.kind.is_terminal()) {
            return Err(bad("nothing follows a `done` or `error` event".to_owned()));
        }
        let event = Event {
            seq,
            kind,
            data: shape.data.get().to_owned(),
        };
        if event.data().is_none() {
            return Err(bad(format!(
                "the `data` of message {i} is not the shape of a `{}` event",
                shape.event
            )));
        }
        out.push(event);
    }
    Ok(out)
}

/// How a terminal event sent by a producer ends the stream.
fn spool_end(event: &Event) -> StreamEnd {
    let (status, finish_reason, error) = match event.data() {
        Some(crate::event::EventData::Done(d)) => (
            if d.finish_reason == FinishReason::Cancelled {
                StreamStatus::Cancelled
            } else {
                StreamStatus::Completed
            },
            Some(d.finish_reason),
            None,
        ),
        Some(crate::event::EventData::Error(e)) => (
            StreamStatus::Failed,
            None,
            Some((e.code.into_owned(), e.message.into_owned())),
        ),
        _ => (StreamStatus::Completed, Some(FinishReason::Stop), None),
    };
    StreamEnd {
        status,
        finish_reason,
        error,
        usage: Usage::default(),
        finished_at: now_ms(),
        turn_text: None,
        turn_tool_calls: None,
    }
}

/// The first `k` messages (JSON) or bytes of an append, as a message of its own;
/// `None` past its end.
fn prefix(m: &Message, k: u64) -> Option<Message> {
    let k = usize::try_from(k).ok()?;
    match &m.m {
        Some(messages) => {
            if k > messages.len() {
                return None;
            }
            Some(Message {
                m: Some(messages[..k].to_vec()),
                b: None,
                p: None,
                q: None,
            })
        }
        None => {
            let bytes = m.bytes();
            if k > bytes.len() {
                return None;
            }
            Some(Message {
                m: None,
                b: Some(base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    &bytes[..k],
                )),
                p: None,
                q: None,
            })
        }
    }
}
