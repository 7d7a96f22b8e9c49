//! Durable Streams subscriptions on the engine (the protocol's §6–7; its rules are in
//! `crate::subscription`): durable cursors over the Durable Streams a glob `pattern`
//! or an explicit list names, that wake a worker — by a signed webhook `POST`, or by a
//! `wake` message appended to a wake stream for pull-wake workers to claim — whenever
//! a linked stream's tail passes its acked offset.
//!
//! **Architecture Invariant:** every change to a subscription happens under its lock,
//! is made on a copy, and is in memory only once the writer committed it (a row edit
//! of `ds_subscriptions`): a restart — even `kill -9` — resumes its cursors, its wake
//! generation, its lease and its webhook retry schedule as they were last answered.
//! Lock order: a subscription's lock, then (for a tail) a stream's; a stream's lock is
//! never held when a subscription's is taken (appends are announced after their lock
//! is released).
//!
//! Fencing: a wake has a generation (counting up per subscription) and a `wake_id`; its
//! token is an HMAC of the subscription, its incarnation (`nonce`: a re-created
//! subscription's old tokens do not count) and the generation. A callback, ack or
//! release counts only for the current wake.
//!
//! Timers: one tracked task ([`Engine::start_subscriptions`]) looks at every
//! subscription each [`TICK`] (sooner when kicked): an expired lease is cleared (and a
//! new wake made if work is pending), and a webhook wake due for delivery is sent, each
//! delivery a tracked task of its own.
//!
//! Several nodes (PostgreSQL): a subscription is served by the node that created it
//! (its `node`, reloaded by that node only), and sees the appends that node takes —
//! like a Durable Stream's writes, which belong on one node at a time (`engine::ds`).
//! Its id is unique in the store: another node's `PUT` of it is `409`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Engine;
use super::ds::Append;
use crate::ds;
use crate::event::{now_ms, rfc3339};
use crate::store::ds::SubscriptionRow;
use crate::store::{RowEdit, StoreError};
use crate::subscription::{self, BEFORE_FIRST, Config, Delivery, Signer};

/// How often leases and due webhook deliveries are looked at.
const TICK: Duration = Duration::from_millis(200);
/// How long one webhook delivery may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// The most subscriptions one process keeps.
const MAX_SUBSCRIPTIONS: usize = 100_000;

/// Why a subscription request is refused.
#[derive(Debug, thiserror::Error)]
pub enum SubError {
    #[error("no such subscription")]
    NotFound,
    #[error("the subscription exists with another configuration")]
    Exists,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    UrlRejected(String),
    #[error("the token is not valid for this subscription")]
    TokenInvalid,
    #[error("the wake generation is stale")]
    Fenced,
    #[error("another worker holds the lease")]
    AlreadyClaimed { holder: String, generation: u64 },
    #[error("the subscription has no pending work")]
    NoPendingWork,
    #[error("{0}")]
    InvalidOffset(String),
    #[error("this server holds {MAX_SUBSCRIPTIONS} subscriptions already")]
    TooMany,
    /// The OS random source failed.
    #[error("no randomness: {0}")]
    Random(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SubError {
    fn random(e: getrandom::Error) -> Self {
        SubError::Random(e.to_string())
    }
}

/// A callback's, ack's or release's body.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct WakeReply {
    pub wake_id: Option<String>,
    pub generation: Option<u64>,
    #[serde(default)]
    pub acks: Vec<AckOf>,
    #[serde(default)]
    pub done: bool,
}

/// One stream's ack: processed up to `offset`, inclusive.
#[derive(Debug, Clone, Deserialize)]
pub struct AckOf {
    #[serde(alias = "path")]
    pub stream: String,
    pub offset: String,
}

/// How a stream came to be linked, and its cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Link {
    explicit: bool,
    glob: bool,
    acked: String,
}

/// The wake in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Wake {
    id: String,
    /// The tails it was sent with (a webhook's `done` acks them).
    snapshot: BTreeMap<String, String>,
    /// A pull-wake worker that claimed it.
    holder: Option<String>,
    /// When its lease ends (ms): from its issue (webhook) or claim (pull-wake).
    lease_until: Option<i64>,
    /// A webhook answered 2xx for it.
    delivered: bool,
}

/// What changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    /// The stream root URL, as the creating request reached this server (for the
    /// callback URL).
    root: String,
    /// The node that created it and serves it (see the module's doc).
    #[serde(default)]
    node: String,
    nonce: String,
    links: BTreeMap<String, Link>,
    generation: u64,
    wake: Option<Wake>,
    retry_count: u32,
    next_attempt_at: Option<i64>,
}

struct Sub {
    id: String,
    owner: Option<String>,
    config: Config,
    hash: String,
    created_at: i64,
    state: State,
    /// Deleted: whoever still holds it must not act on it.
    deleted: bool,
    /// A webhook delivery of its current wake is on its way.
    delivering: bool,
}

type Slot = Arc<tokio::sync::Mutex<Sub>>;

/// A subscription and its owner (which never changes: it is read without the lock).
#[derive(Clone)]
struct Entry {
    owner: Option<String>,
    slot: Slot,
}

/// The subscriptions of this process.
#[derive(Default)]
pub struct Subscriptions {
    map: Mutex<HashMap<String, Entry>>,
    signer: OnceLock<Signer>,
    client: OnceLock<reqwest::Client>,
    kick: tokio::sync::Notify,
}

impl Subscriptions {
    fn get(&self, id: &str) -> Option<Slot> {
        self.lock().get(id).map(|e| e.slot.clone())
    }

    fn all(&self) -> Vec<Slot> {
        self.lock().values().map(|e| e.slot.clone()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn signer(&self) -> Result<&Signer, SubError> {
        self.signer
            .get()
            .ok_or(SubError::Store(StoreError::Unavailable))
    }
}

/// One linked stream as the protocol shows it.
struct Info {
    path: String,
    explicit: bool,
    acked: String,
    tail: String,
}

impl Info {
    fn pending(&self) -> bool {
        self.tail.as_str() > self.acked.as_str()
    }

    fn full(&self) -> Value {
        json!({
            "path": self.path,
            "link_type": if self.explicit { "explicit" } else { "glob" },
            "acked_offset": self.acked,
            "tail_offset": self.tail,
            "has_pending": self.pending(),
        })
    }
}

fn unix_secs() -> u64 {
    u64::try_from(now_ms() / 1000).unwrap_or(0)
}

fn jitter() -> f64 {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX) * 2.0 - 1.0
}

impl Engine {
    /// Loads the stored subscriptions and starts their timer task. `seed` is the
    /// stored webhook signing seed.
    pub async fn start_subscriptions(self: &Arc<Self>, seed: &[u8]) -> anyhow::Result<()> {
        let signer = Signer::new(seed).map_err(anyhow::Error::msg)?;
        let _ = self.subs.signer.set(signer);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(DELIVERY_TIMEOUT)
            .dns_resolver(Arc::new(PublicOnly))
            .build()?;
        let _ = self.subs.client.set(client);
        let rows = self.store.ds_subscriptions().await?;
        {
            let mut map = self.subs.lock();
            for row in rows {
                let parsed = serde_json::from_str::<Config>(&row.config)
                    .and_then(|c| serde_json::from_str::<State>(&row.state).map(|s| (c, s)));
                match parsed {
                    // Another node's: it serves it.
                    Ok((_, state)) if !state.node.is_empty() && state.node != self.store.node() => {
                    }
                    Ok((config, state)) => {
                        let sub = Sub {
                            id: row.id.clone(),
                            owner: row.owner,
                            config,
                            hash: row.config_hash,
                            created_at: row.created_at,
                            state,
                            deleted: false,
                            delivering: false,
                        };
                        let owner = sub.owner.clone();
                        let slot = Arc::new(tokio::sync::Mutex::new(sub));
                        map.insert(row.id, Entry { owner, slot });
                    }
                    Err(e) => {
                        tracing::error!(subscription = %row.id, error = %e, "a stored subscription does not parse; skipped")
                    }
                }
            }
            if !map.is_empty() {
                tracing::info!(
                    subscriptions = map.len(),
                    "Durable Streams subscriptions loaded"
                );
            }
        }
        let engine = self.clone();
        let shutdown = self.shutdown_token();
        self.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(TICK) => {}
                    _ = engine.subs.kick.notified() => {}
                }
                engine.subs_tick().await;
            }
        });
        Ok(())
    }

    /// The public JWK Set of the webhook signing key.
    pub fn subs_jwks(&self) -> Result<Value, SubError> {
        Ok(self.subs.signer()?.jwks())
    }

    /// `PUT`: creates the subscription, or re-confirms it with the same configuration
    /// (`false`). `root` is the stream root URL the request reached.
    pub async fn subs_put(
        &self,
        id: &str,
        owner: Option<&str>,
        config: Config,
        root: &str,
    ) -> Result<(bool, Value), SubError> {
        let hash = config.hash();
        if let Some(slot) = self.subs.get(id)
            && let Some(reconfirmed) = self.subs_reconfirm(&slot, owner, &hash, root).await
        {
            return reconfirmed;
        }
        if self.subs.lock().len() >= MAX_SUBSCRIPTIONS {
            return Err(SubError::TooMany);
        }
        let mut links = BTreeMap::new();
        for path in &config.streams {
            let tail = self.subs_tail(path, owner).await?;
            links.insert(
                path.clone(),
                Link {
                    explicit: true,
                    glob: false,
                    acked: tail,
                },
            );
        }
        if let Some(pattern) = &config.pattern {
            // Existing matches are linked at their tail: no replay of history.
            for (name, stream_owner) in self.store.ds_names().await? {
                if stream_owner.as_deref() != owner || !subscription::glob_match(pattern, &name) {
                    continue;
                }
                if let Some(link) = links.get_mut(&name) {
                    link.glob = true;
                    continue;
                }
                let tail = self.subs_tail(&name, owner).await?;
                links.insert(
                    name,
                    Link {
                        explicit: false,
                        glob: true,
                        acked: tail,
                    },
                );
            }
        }
        let sub = Sub {
            id: id.to_owned(),
            owner: owner.map(str::to_owned),
            config,
            hash: hash.clone(),
            created_at: now_ms(),
            state: State {
                root: root.to_owned(),
                node: self.store.node().to_owned(),
                nonce: crate::ids::new_nonce().map_err(SubError::random)?,
                links,
                generation: 0,
                wake: None,
                retry_count: 0,
                next_attempt_at: None,
            },
            deleted: false,
            delivering: false,
        };
        // Two creates of one id: the first one in the map wins, the other re-confirms
        // or conflicts with it.
        let slot = Arc::new(tokio::sync::Mutex::new(sub));
        let entry = Entry {
            owner: owner.map(str::to_owned),
            slot: slot.clone(),
        };
        let raced = {
            let mut map = self.subs.lock();
            match map.get(id) {
                Some(existing) => Some(existing.slot.clone()),
                None => {
                    map.insert(id.to_owned(), entry.clone());
                    None
                }
            }
        };
        if let Some(existing) = raced {
            if let Some(reconfirmed) = self.subs_reconfirm(&existing, owner, &hash, root).await {
                return reconfirmed;
            }
            self.subs.lock().insert(id.to_owned(), entry);
        }
        let mut sub = slot.lock().await;
        let row = SubscriptionRow {
            id: sub.id.clone(),
            owner: sub.owner.clone(),
            config: serde_json::to_string(&sub.config).unwrap_or_default(),
            config_hash: sub.hash.clone(),
            created_at: sub.created_at,
            state: serde_json::to_string(&sub.state).unwrap_or_default(),
        };
        let stored = match self.log.edit(RowEdit::SubscriptionCreate(row)).await {
            // Taken in the store (another node's): not this one's to answer for.
            Ok(false) => Err(SubError::Exists),
            Ok(true) => Ok(()),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = stored {
            sub.deleted = true;
            drop(sub);
            let mut map = self.subs.lock();
            if map.get(id).is_some_and(|e| Arc::ptr_eq(&e.slot, &slot)) {
                map.remove(id);
            }
            return Err(e);
        }
        let view = self.subs_view(&sub, root).await?;
        Ok((true, view))
    }

    /// A `PUT` of a subscription that exists (`None`: it was deleted): its view if the
    /// configuration is the same and `owner`'s, else `Exists`.
    async fn subs_reconfirm(
        &self,
        slot: &Slot,
        owner: Option<&str>,
        hash: &str,
        root: &str,
    ) -> Option<Result<(bool, Value), SubError>> {
        let sub = slot.lock().await;
        if sub.deleted {
            return None;
        }
        if sub.owner.as_deref() != owner || sub.hash != hash {
            return Some(Err(SubError::Exists));
        }
        Some(self.subs_view(&sub, root).await.map(|view| (false, view)))
    }

    /// `GET`: the subscription as the protocol shows it.
    pub async fn subs_get(
        &self,
        id: &str,
        owner: Option<&str>,
        root: &str,
    ) -> Result<Value, SubError> {
        let slot = self.subs_owned(id, owner)?;
        let sub = slot.lock().await;
        if sub.deleted {
            return Err(SubError::NotFound);
        }
        self.subs_view(&sub, root).await
    }

    /// `DELETE`: gone, and its wake with it (callbacks for it are refused). Deleting
    /// what does not exist changes nothing.
    pub async fn subs_delete(&self, id: &str, owner: Option<&str>) -> Result<(), SubError> {
        let Ok(slot) = self.subs_owned(id, owner) else {
            return Ok(());
        };
        let mut sub = slot.lock().await;
        if sub.deleted {
            return Ok(());
        }
        self.log
            .edit(RowEdit::SubscriptionDelete { id: id.to_owned() })
            .await?;
        sub.deleted = true;
        let mut map = self.subs.lock();
        if map.get(id).is_some_and(|e| Arc::ptr_eq(&e.slot, &slot)) {
            map.remove(id);
        }
        Ok(())
    }

    /// `POST …/streams`: links these streams explicitly (at their tails; a linked one
    /// stays as it is).
    pub async fn subs_add_streams(
        &self,
        id: &str,
        owner: Option<&str>,
        streams: Vec<String>,
    ) -> Result<(), SubError> {
        let slot = self.subs_owned(id, owner)?;
        let mut sub = slot.lock().await;
        if sub.deleted {
            return Err(SubError::NotFound);
        }
        let mut next = sub.state.clone();
        for path in streams {
            match next.links.get_mut(&path) {
                Some(link) => link.explicit = true,
                None => {
                    let tail = self.subs_tail(&path, owner).await?;
                    next.links.insert(
                        path,
                        Link {
                            explicit: true,
                            glob: false,
                            acked: tail,
                        },
                    );
                }
            }
        }
        self.subs_commit(&mut sub, next).await
    }

    /// `DELETE …/streams/{path}`: removes the explicit link only (a matching pattern
    /// keeps it linked). Removing what is not linked changes nothing.
    pub async fn subs_remove_stream(
        &self,
        id: &str,
        owner: Option<&str>,
        path: &str,
    ) -> Result<(), SubError> {
        let slot = self.subs_owned(id, owner)?;
        let mut sub = slot.lock().await;
        if sub.deleted {
            return Err(SubError::NotFound);
        }
        let mut next = sub.state.clone();
        if let Some(link) = next.links.get_mut(path) {
            link.explicit = false;
            if !link.glob {
                next.links.remove(path);
            }
        }
        self.subs_commit(&mut sub, next).await
    }

    /// `POST …/callback` (webhook), `…/ack` (pull-wake): applies the acks of the current
    /// wake; `done` ends it (and makes the next if work is still pending: `true`), else
    /// extends its lease.
    pub async fn subs_ack(
        &self,
        id: &str,
        token: &str,
        reply: WakeReply,
        delivery: Delivery,
    ) -> Result<bool, SubError> {
        let slot = self.subs.get(id).ok_or(SubError::NotFound)?;
        let mut sub = slot.lock().await;
        if sub.deleted {
            return Err(SubError::NotFound);
        }
        self.subs_fence(&sub, token, &reply, delivery)?;
        let mut next = sub.state.clone();
        for ack in &reply.acks {
            let path = subscription::stream_path(&ack.stream)
                .map_err(|why| SubError::InvalidOffset(why.to_owned()))?;
            let Some(link) = next.links.get(&path) else {
                return Err(SubError::InvalidOffset(format!(
                    "{path} is not a stream of this subscription"
                )));
            };
            if !matches!(ds::parse_offset(&ack.offset), Some(ds::Offset::After(_))) {
                return Err(SubError::InvalidOffset(format!(
                    "{} is not an offset of {path}",
                    ack.offset
                )));
            }
            if ack.offset < link.acked {
                return Err(SubError::InvalidOffset(format!(
                    "{} is before {path}'s acked offset",
                    ack.offset
                )));
            }
            let tail = self.subs_tail(&path, sub.owner.as_deref()).await?;
            if ack.offset > tail {
                return Err(SubError::InvalidOffset(format!(
                    "{} is beyond {path}'s tail",
                    ack.offset
                )));
            }
            if let Some(link) = next.links.get_mut(&path) {
                link.acked = ack.offset.clone();
            }
        }
        let lease = i64::try_from(sub.config.lease_ttl_ms).unwrap_or(i64::MAX);
        let mut woke = false;
        if reply.done {
            next.wake = None;
            woke = self.subs_maybe_wake(&sub, &mut next).await?;
        } else if let Some(wake) = next.wake.as_mut() {
            wake.lease_until = Some(now_ms() + lease);
        }
        self.subs_commit(&mut sub, next).await?;
        Ok(woke)
    }

    /// `POST …/release`: gives the claimed wake back unacked (a new one is made if work
    /// is pending).
    pub async fn subs_release(
        &self,
        id: &str,
        token: &str,
        reply: WakeReply,
    ) -> Result<(), SubError> {
        let slot = self.subs.get(id).ok_or(SubError::NotFound)?;
        let mut sub = slot.lock().await;
        if sub.deleted {
            return Err(SubError::NotFound);
        }
        self.subs_fence(&sub, token, &reply, Delivery::PullWake)?;
        let mut next = sub.state.clone();
        next.wake = None;
        self.subs_maybe_wake(&sub, &mut next).await?;
        self.subs_commit(&mut sub, next).await
    }

    /// `POST …/claim`: `worker` takes the pull-wake subscription's pending work.
    pub async fn subs_claim(
        &self,
        id: &str,
        owner: Option<&str>,
        worker: &str,
    ) -> Result<Value, SubError> {
        let slot = self.subs_owned(id, owner)?;
        let mut sub = slot.lock().await;
        if sub.deleted {
            return Err(SubError::NotFound);
        }
        if sub.config.delivery != Delivery::PullWake {
            return Err(SubError::Invalid(
                "only a pull-wake subscription is claimed".into(),
            ));
        }
        if let Some(holder) = sub.state.wake.as_ref().and_then(|w| w.holder.clone()) {
            return Err(SubError::AlreadyClaimed {
                holder,
                generation: sub.state.generation,
            });
        }
        let infos = self.subs_infos(&sub.state, sub.owner.as_deref()).await?;
        if !infos.iter().any(Info::pending) {
            return Err(SubError::NoPendingWork);
        }
        let mut next = sub.state.clone();
        if next.wake.is_none() {
            self.subs_new_wake(&sub, &mut next, &infos).await?;
        }
        let lease = i64::try_from(sub.config.lease_ttl_ms).unwrap_or(i64::MAX);
        let Some(wake) = next.wake.as_mut() else {
            return Err(SubError::NoPendingWork);
        };
        wake.holder = Some(worker.to_owned());
        wake.lease_until = Some(now_ms() + lease);
        let wake_id = wake.id.clone();
        let token = self
            .subs
            .signer()?
            .token(&sub.id, &next.nonce, next.generation);
        let generation = next.generation;
        self.subs_commit(&mut sub, next).await?;
        Ok(json!({
            "wake_id": wake_id,
            "generation": generation,
            "token": token,
            "streams": infos.iter().map(Info::full).collect::<Vec<_>>(),
            "lease_ttl_ms": sub.config.lease_ttl_ms,
        }))
    }

    /// After an append to Durable Stream `name` of `owner`'s (its lock released): links
    /// it to the subscriptions whose pattern matches, and wakes the idle ones it gave
    /// work. Failures are logged: the append itself is committed.
    pub(super) async fn subs_appended(&self, name: &str, owner: Option<&str>) {
        if self.subs.lock().is_empty() {
            return;
        }
        for slot in self.subs.all() {
            let mut sub = slot.lock().await;
            if sub.deleted || sub.owner.as_deref() != owner {
                continue;
            }
            let glob = sub
                .config
                .pattern
                .as_deref()
                .is_some_and(|p| subscription::glob_match(p, name));
            let linked = sub.state.links.get(name);
            if linked.is_none() && !glob {
                continue;
            }
            let mut next = sub.state.clone();
            if glob && !linked.is_some_and(|l| l.glob) {
                next.links
                    .entry(name.to_owned())
                    .or_insert_with(|| Link {
                        explicit: false,
                        glob: false,
                        acked: BEFORE_FIRST.to_owned(),
                    })
                    .glob = true;
            }
            let result = async {
                if next.wake.is_none() {
                    self.subs_maybe_wake(&sub, &mut next).await?;
                }
                self.subs_commit(&mut sub, next).await
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(subscription = %sub.id, stream = name, error = %e, "a subscription could not take an append");
            }
        }
    }

    /// After Durable Stream `name` is deleted: it leaves every subscription.
    pub(super) async fn subs_removed(&self, name: &str) {
        if self.subs.lock().is_empty() {
            return;
        }
        for slot in self.subs.all() {
            let mut sub = slot.lock().await;
            if sub.deleted || !sub.state.links.contains_key(name) {
                continue;
            }
            let mut next = sub.state.clone();
            next.links.remove(name);
            if let Err(e) = self.subs_commit(&mut sub, next).await {
                tracing::warn!(subscription = %sub.id, stream = name, error = %e, "a deleted stream could not leave a subscription");
            }
        }
    }

    /// One look at every subscription: expired leases, due webhook deliveries.
    async fn subs_tick(self: &Arc<Self>) {
        let now = now_ms();
        for slot in self.subs.all() {
            let Ok(mut sub) = slot.try_lock() else {
                continue;
            };
            if sub.deleted {
                continue;
            }
            if sub
                .state
                .wake
                .as_ref()
                .and_then(|w| w.lease_until)
                .is_some_and(|until| until <= now)
            {
                let mut next = sub.state.clone();
                next.wake = None;
                let result = async {
                    self.subs_maybe_wake(&sub, &mut next).await?;
                    self.subs_commit(&mut sub, next).await
                }
                .await;
                if let Err(e) = result {
                    tracing::warn!(subscription = %sub.id, error = %e, "an expired lease could not be cleared");
                    continue;
                }
            }
            let due = sub.config.delivery == Delivery::Webhook
                && !sub.delivering
                && sub.state.wake.as_ref().is_some_and(|w| !w.delivered)
                && sub.state.next_attempt_at.is_none_or(|at| at <= now);
            if due {
                sub.delivering = true;
                let engine = self.clone();
                let slot = slot.clone();
                let shutdown = self.shutdown_token();
                self.spawn(async move {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = engine.subs_deliver(slot.clone()) => {}
                    }
                    slot.lock().await.delivering = false;
                });
            }
        }
    }

    /// Sends a webhook subscription's current wake, signed, and takes its answer: `2xx`
    /// delivers it (`{"done": true}` also acks its snapshot and ends it); anything else
    /// schedules a retry.
    async fn subs_deliver(&self, slot: Slot) {
        let (url, body, wake_id, signature) = {
            let mut sub = slot.lock().await;
            let Some(wake) = sub.state.wake.clone().filter(|_| !sub.deleted) else {
                return;
            };
            let (Some(url), Ok(signer)) = (sub.config.webhook_url.clone(), self.subs.signer())
            else {
                return;
            };
            let infos = match self.subs_infos(&sub.state, sub.owner.as_deref()).await {
                Ok(infos) => infos,
                Err(e) => {
                    tracing::warn!(subscription = %sub.id, error = %e, "a webhook could not be prepared");
                    return;
                }
            };
            let body = json!({
                "subscription_id": sub.id,
                "wake_id": wake.id,
                "generation": sub.state.generation,
                "streams": infos.iter().map(Info::full).collect::<Vec<_>>(),
                "callback_url": format!(
                    "{}/{}/subscriptions/{}/callback",
                    sub.state.root,
                    subscription::RESERVED,
                    ds::encode_path(&sub.id)
                ),
                "callback_token": signer.token(&sub.id, &sub.state.nonce, sub.state.generation),
            })
            .to_string();
            // What it is sent with is what `done` acks.
            let mut next = sub.state.clone();
            if let Some(w) = next.wake.as_mut() {
                w.snapshot = infos
                    .iter()
                    .map(|i| (i.path.clone(), i.tail.clone()))
                    .collect();
            }
            if let Err(e) = self.subs_commit(&mut sub, next).await {
                tracing::warn!(subscription = %sub.id, error = %e, "a webhook could not be prepared");
                return;
            }
            let signature = signer.signature(unix_secs(), body.as_bytes());
            (url, body, wake.id, signature)
        };
        let Some(client) = self.subs.client.get() else {
            return;
        };
        let answer = client
            .post(&url)
            .header("content-type", "application/json")
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let outcome = match answer {
            Ok(r) if r.status().is_success() => {
                let done = r
                    .json::<Value>()
                    .await
                    .ok()
                    .is_some_and(|v| v.get("done") == Some(&Value::Bool(true)));
                Ok(done)
            }
            Ok(r) => Err(format!("answered {}", r.status())),
            Err(e) => Err(e.to_string()),
        };
        let mut sub = slot.lock().await;
        if sub.deleted || sub.state.wake.as_ref().is_none_or(|w| w.id != wake_id) {
            return;
        }
        let mut next = sub.state.clone();
        let result = async {
            match outcome {
                Ok(done) => {
                    next.retry_count = 0;
                    next.next_attempt_at = None;
                    let snapshot = match next.wake.as_mut() {
                        Some(w) => {
                            w.delivered = true;
                            w.snapshot.clone()
                        }
                        None => BTreeMap::new(),
                    };
                    if done {
                        for (path, tail) in snapshot {
                            if let Some(link) = next.links.get_mut(&path)
                                && tail > link.acked
                            {
                                link.acked = tail;
                            }
                        }
                        next.wake = None;
                        self.subs_maybe_wake(&sub, &mut next).await?;
                    }
                }
                Err(why) => {
                    next.retry_count = next.retry_count.saturating_add(1);
                    let delay = subscription::retry_delay(next.retry_count, jitter());
                    next.next_attempt_at =
                        Some(now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
                    tracing::warn!(subscription = %sub.id, url, why, retry_in = ?delay, "a webhook delivery failed");
                }
            }
            self.subs_commit(&mut sub, next).await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(subscription = %sub.id, error = %e, "a webhook's answer could not be recorded");
        }
    }

    /// The subscription `id` if `owner` may see it.
    fn subs_owned(&self, id: &str, owner: Option<&str>) -> Result<Slot, SubError> {
        match self.subs.lock().get(id) {
            Some(e) if e.owner.as_deref() == owner => Ok(e.slot.clone()),
            _ => Err(SubError::NotFound),
        }
    }

    /// A callback's, ack's or release's right to act on the current wake.
    fn subs_fence(
        &self,
        sub: &Sub,
        token: &str,
        reply: &WakeReply,
        delivery: Delivery,
    ) -> Result<(), SubError> {
        let generation = self
            .subs
            .signer()?
            .token_generation(&sub.id, &sub.state.nonce, token)
            .ok_or(SubError::TokenInvalid)?;
        if sub.config.delivery != delivery {
            return Err(SubError::Invalid(match delivery {
                Delivery::Webhook => "a pull-wake subscription acks through …/ack".into(),
                Delivery::PullWake => "a webhook subscription acks through …/callback".into(),
            }));
        }
        let current = sub.state.wake.as_ref().filter(|w| {
            generation == sub.state.generation
                && reply.generation == Some(generation)
                && reply.wake_id.as_deref() == Some(w.id.as_str())
                && (delivery == Delivery::Webhook || w.holder.is_some())
        });
        current.map(|_| ()).ok_or(SubError::Fenced)
    }

    /// Makes a new wake in `next` if it has none and work is pending; `true` if it did.
    async fn subs_maybe_wake(&self, sub: &Sub, next: &mut State) -> Result<bool, SubError> {
        if next.wake.is_some() {
            return Ok(false);
        }
        let infos = self.subs_infos(next, sub.owner.as_deref()).await?;
        if !infos.iter().any(Info::pending) {
            return Ok(false);
        }
        self.subs_new_wake(sub, next, &infos).await?;
        Ok(true)
    }

    /// The next generation's wake: a webhook's is delivered by the timer task (kicked
    /// now); a pull-wake's is announced on its wake stream.
    async fn subs_new_wake(
        &self,
        sub: &Sub,
        next: &mut State,
        infos: &[Info],
    ) -> Result<(), SubError> {
        next.generation += 1;
        let lease = i64::try_from(sub.config.lease_ttl_ms).unwrap_or(i64::MAX);
        next.wake = Some(Wake {
            id: crate::ids::new_wake_id().map_err(SubError::random)?,
            snapshot: infos
                .iter()
                .map(|i| (i.path.clone(), i.tail.clone()))
                .collect(),
            holder: None,
            lease_until: (sub.config.delivery == Delivery::Webhook).then(|| now_ms() + lease),
            delivered: false,
        });
        match (&sub.config.delivery, &sub.config.wake_stream) {
            (Delivery::Webhook, _) => self.subs.kick.notify_one(),
            (Delivery::PullWake, Some(wake_stream)) => {
                let trigger = infos.iter().find(|i| i.pending()).map(|i| i.path.as_str());
                let event = json!({
                    "type": "wake",
                    "subscription_id": sub.id,
                    "stream": trigger,
                    "generation": next.generation,
                    "ts": now_ms(),
                });
                let append = Append {
                    content_type: Some("application/json".into()),
                    body: event.to_string().into_bytes(),
                    ..Append::default()
                };
                // A missing (or closed) wake stream loses the announcement, not the
                // work: a worker's claim still finds it.
                if let Err(e) = self
                    .ds_write(wake_stream, sub.owner.as_deref(), append)
                    .await
                {
                    tracing::warn!(subscription = %sub.id, wake_stream, error = %e, "a wake could not be announced");
                }
            }
            (Delivery::PullWake, None) => {}
        }
        Ok(())
    }

    /// Every linked stream with its tail.
    async fn subs_infos(
        &self,
        state: &State,
        owner: Option<&str>,
    ) -> Result<Vec<Info>, StoreError> {
        let mut infos = Vec::with_capacity(state.links.len());
        for (path, link) in &state.links {
            infos.push(Info {
                path: path.clone(),
                explicit: link.explicit,
                acked: link.acked.clone(),
                tail: self.subs_tail(path, owner).await?,
            });
        }
        Ok(infos)
    }

    /// The tail offset of `owner`'s stream `name` (the zero offset: none).
    async fn subs_tail(&self, name: &str, owner: Option<&str>) -> Result<String, StoreError> {
        Ok(match self.ds_internal(name).await? {
            Some(s) if s.owner.as_deref() == owner => s.tail(),
            _ => ds::offset(0),
        })
    }

    /// The subscription as `GET` and `PUT` answer it.
    async fn subs_view(&self, sub: &Sub, root: &str) -> Result<Value, SubError> {
        let infos = self.subs_infos(&sub.state, sub.owner.as_deref()).await?;
        let webhook = match &sub.config.webhook_url {
            Some(url) => json!({
                "url": url,
                "signing": {
                    "alg": "ed25519",
                    "kid": self.subs.signer()?.kid(),
                    "jwks_url": format!("{root}/{}/jwks.json", subscription::RESERVED),
                },
            }),
            None => Value::Null,
        };
        let failed = sub.state.next_attempt_at.is_some();
        let mut view = json!({
            "id": sub.id,
            "subscription_id": sub.id,
            "type": sub.config.delivery,
            "pattern": sub.config.pattern,
            "streams": infos.iter().map(|i| json!({
                "path": i.path,
                "link_type": if i.explicit { "explicit" } else { "glob" },
                "acked_offset": i.acked,
            })).collect::<Vec<_>>(),
            "webhook": webhook,
            "wake_stream": sub.config.wake_stream,
            "lease_ttl_ms": sub.config.lease_ttl_ms,
            "created_at": rfc3339(sub.created_at),
            "status": if failed { "failed" } else { "active" },
            "description": sub.config.description,
            "generation": sub.state.generation,
        });
        if let (Some(at), Some(o)) = (sub.state.next_attempt_at, view.as_object_mut()) {
            o.insert("next_attempt_at".into(), Value::String(rfc3339(at)));
        }
        Ok(view)
    }

    /// Commits `next` as the subscription's state, then holds it in memory. A row gone
    /// from the store (deleted on another node) is gone here too.
    async fn subs_commit(&self, sub: &mut Sub, next: State) -> Result<(), SubError> {
        if next == sub.state {
            return Ok(());
        }
        let edit = RowEdit::SubscriptionState {
            id: sub.id.clone(),
            state: serde_json::to_string(&next).unwrap_or_default(),
        };
        if !self.log.edit(edit).await? {
            // Nothing acts on it again; a new `PUT` of its id replaces it.
            sub.deleted = true;
            return Err(SubError::NotFound);
        }
        sub.state = next;
        Ok(())
    }
}

/// Resolves webhook hosts to public addresses only (`localhost` to loopback), so a
/// name cannot point a delivery into the local network.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed: Vec<std::net::SocketAddr> = found
                .filter(|a| subscription::deliverable(&host, a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}
