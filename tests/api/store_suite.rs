//! The store test-suite, written once and run against both databases: a SQLite file
//! and a fresh PostgreSQL database (`store_suite::sqlite::…`, `store_suite::postgres::…`).
//!
//! It drives the store's public API as the engine does — [`spool::store::open`], the
//! writer ([`EventLog`]) for every write, [`Store`] for every read — and asserts what a
//! reader of the store sees: events in order and paged, stream rows, listing with
//! cursors and owners, sessions and turns, delete, purge, a failed group commit, and
//! the recovery of the streams a dead process left open.

use std::sync::Arc;
use std::time::Duration;

use spool::ServeConfig;
use spool::event::{Event, EventKind, FinishReason, StreamStatus, Usage, now_ms};
use spool::hub::StreamHub;
use spool::metrics::{Gauges, Metrics};
use spool::store::{
    self, EventLog, ListCursor, NewSession, NewStream, NewTurn, SessionCursor, SessionEdit, Store,
    StreamEnd, Unfinished, WriterTask,
};

use crate::pg::TestDb;

/// Where a suite function's database lives.
enum Place {
    Sqlite(tempfile::TempDir),
    Postgres(TestDb),
}

pub struct Fixture {
    place: Place,
}

impl Fixture {
    async fn sqlite() -> Fixture {
        Fixture {
            place: Place::Sqlite(tempfile::tempdir().unwrap()),
        }
    }

    async fn postgres() -> Fixture {
        Fixture {
            place: Place::Postgres(TestDb::create().await),
        }
    }

    fn config(&self, node: &str) -> ServeConfig {
        let mut config = ServeConfig::defaults();
        config.store.database_url = match &self.place {
            Place::Sqlite(dir) => format!("sqlite://{}", dir.path().join("suite.db").display()),
            Place::Postgres(db) => db.url.clone(),
        };
        config.cluster.node_id = Some(node.to_owned());
        config
    }

    /// Opens the store as the process `node` (on SQLite there is only one).
    async fn open(&self, node: &str) -> Db {
        self.open_with(node, |_| {}, false).await
    }

    async fn open_with(
        &self,
        node: &str,
        tweak: impl FnOnce(&mut ServeConfig),
        continuable: bool,
    ) -> Db {
        let mut config = self.config(node);
        tweak(&mut config);
        let metrics = Arc::new(Metrics::default());
        let hub = Arc::new(StreamHub::new(16));
        let opened = store::open(
            &config.store,
            &config.cluster,
            hub,
            metrics.clone(),
            &|_| continuable,
        )
        .await
        .unwrap();
        Db {
            store: opened.store,
            log: opened.log,
            writer: opened.writer,
            unfinished: opened.unfinished,
            metrics,
        }
    }
}

/// An open store.
struct Db {
    store: Store,
    log: EventLog,
    writer: WriterTask,
    unfinished: Vec<Unfinished>,
    metrics: Arc<Metrics>,
}

impl Db {
    /// Stops as a killed process would leave things: what was written is committed,
    /// nothing is ended, the lease (PostgreSQL) is not given up.
    async fn crash(self) {
        self.log.close().await.unwrap();
        drop(self.log);
        tokio::time::timeout(Duration::from_secs(10), self.writer)
            .await
            .unwrap()
            .unwrap();
        self.store.close().await;
    }

    /// Creates a stream (and its `start` event) and returns its id.
    async fn create(&self, owner: Option<&str>, created_at: i64, turn: Option<NewTurn>) -> String {
        let id = spool::ids::new_stream_id().unwrap();
        self.log
            .create(
                NewStream {
                    id: id.clone(),
                    owner: owner.map(str::to_owned),
                    model: "mock".into(),
                    params: r#"{"model":"mock","prompt":"x","max_tokens":16}"#.into(),
                    created_at,
                    turn,
                    idempotency: None,
                    ds: None,
                },
                Event::start(1, &id, "mock", "2026-01-01T00:00:00Z"),
            )
            .await
            .unwrap();
        id
    }

    /// Appends tokens ` tok{i}` as seqs `from..from + n` (token `i` at seq `i + 1`),
    /// each with its token id.
    async fn tokens(&self, id: &str, from: u64, n: u64) {
        for seq in from..from + n {
            self.log
                .append_with_ids(
                    Arc::from(id),
                    Event::token(seq, &format!(" tok{}", seq - 1)),
                    vec![(seq - 1) as u32],
                    None,
                )
                .await
                .unwrap();
        }
    }

    /// Ends a stream with `done` at `seq`.
    async fn done(&self, id: &str, seq: u64, turn_text: Option<String>) {
        self.done_calling(id, seq, turn_text, None).await
    }

    /// Ends a stream with `done` at `seq`, its turn with `tool_calls` (JSON).
    async fn done_calling(
        &self,
        id: &str,
        seq: u64,
        turn_text: Option<String>,
        turn_tool_calls: Option<String>,
    ) {
        let usage = Usage {
            prompt_tokens: 1,
            completion_tokens: (seq - 2) as u32,
            session_turns: None,
        };
        self.log
            .append(
                Arc::from(id),
                Event::done(seq, FinishReason::Length, usage),
                Some(StreamEnd {
                    status: StreamStatus::Completed,
                    finish_reason: Some(FinishReason::Length),
                    error: None,
                    usage,
                    finished_at: now_ms(),
                    turn_text,
                    turn_tool_calls,
                }),
            )
            .await
            .unwrap();
    }

    /// A finished stream of `tokens` tokens.
    async fn finished(&self, owner: Option<&str>, created_at: i64, tokens: u64) -> String {
        let id = self.create(owner, created_at, None).await;
        self.tokens(&id, 2, tokens).await;
        self.done(&id, tokens + 2, None).await;
        id
    }

    /// Every event of `id`, read in pages of `page`.
    async fn events(&self, id: &str, page: u32) -> Vec<Event> {
        let mut all: Vec<Event> = Vec::new();
        loop {
            let after = all.last().map_or(0, |e| e.seq);
            let got = self.store.events_after(id, after, page).await.unwrap();
            assert!(got.len() <= page as usize);
            let short = got.len() < page as usize;
            all.extend(got);
            if short {
                return all;
            }
        }
    }

    fn metric(&self, name: &str) -> f64 {
        let gauges = Gauges {
            running: 0,
            queued: 0,
            live_streams: 0,
            remote_readers: 0,
        };
        self.metrics
            .render(&gauges)
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap()
    }
}

fn seqs(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

fn mock_text(n: u64) -> String {
    (1..=n).map(|i| format!(" tok{i}")).collect()
}

/// Runs each suite function against both stores.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Fixture::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Fixture::postgres().await).await;
                }
            )*
        }
    };
}

suite!(
    events_are_stored_in_order_paged_and_ended,
    listing_pages_newest_first_and_sees_only_its_owner,
    sessions_keep_their_turns_and_answers,
    sessions_are_listed_renamed_and_deleted,
    delete_removes_a_stream_and_its_events,
    purge_deletes_old_finished_streams_only,
    a_failed_batch_leaves_nothing_and_the_next_one_commits,
    a_restart_ends_the_open_streams_of_a_dead_process,
    a_restart_hands_back_continuable_streams,
);

async fn events_are_stored_in_order_paged_and_ended(f: Fixture) {
    let db = f.open("n1").await;
    let id = db.create(Some("alice"), now_ms(), None).await;
    let row = db.store.stream(&id, Some("alice")).await.unwrap().unwrap();
    assert_eq!(row.status().unwrap(), StreamStatus::Queued);
    assert_eq!(row.last_seq(), 1);
    assert!(row.started_at.is_none());

    db.log
        .running(Arc::from(id.as_str()), now_ms())
        .await
        .unwrap();
    db.tokens(&id, 2, 1200).await;
    db.log.flush().await.unwrap();
    let row = db.store.stream(&id, Some("alice")).await.unwrap().unwrap();
    assert_eq!(row.status().unwrap(), StreamStatus::Running);
    assert_eq!(row.last_seq(), 1201);
    assert!(row.started_at.is_some());
    assert_eq!(db.store.text(&id).await.unwrap(), mock_text(1200));

    db.done(&id, 1202, None).await;
    db.log.flush().await.unwrap();
    for page in [1, 7, 512, 5000] {
        let events = db.events(&id, page).await;
        assert_eq!(seqs(&events), (1..=1202).collect::<Vec<_>>(), "page {page}");
        assert_eq!(events[0].kind, EventKind::Start);
        assert_eq!(events[1], Event::token(2, " tok1"));
        assert_eq!(events[1201].kind, EventKind::Done);
    }
    // After any cursor: exactly the rest.
    let rest = db.store.events_after(&id, 1000, 512).await.unwrap();
    assert_eq!(seqs(&rest), (1001..=1202).collect::<Vec<_>>());
    assert!(
        db.store
            .events_after(&id, 1202, 512)
            .await
            .unwrap()
            .is_empty()
    );
    let row = db.store.stream(&id, Some("alice")).await.unwrap().unwrap();
    assert_eq!(row.status().unwrap(), StreamStatus::Completed);
    assert_eq!(row.finish_reason(), Some(FinishReason::Length));
    assert_eq!(row.last_seq(), 1202);
    assert_eq!(row.usage().unwrap().completion_tokens, 1200);
    assert!(row.finished_at.is_some());
    assert_eq!(db.store.text(&id).await.unwrap(), mock_text(1200));
    let continuation = db.store.continuation(&id).await.unwrap();
    assert_eq!(continuation.ids, (1..=1200).collect::<Vec<u32>>());
    assert_eq!(continuation.text, mock_text(1200));
    assert!(continuation.unstored_text.is_empty());
    // Nothing for a stream that does not exist.
    assert!(db.store.stream("st_nope", None).await.unwrap().is_none());
    assert!(
        db.store
            .events_after("st_nope", 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    db.crash().await;
}

async fn listing_pages_newest_first_and_sees_only_its_owner(f: Fixture) {
    let db = f.open("n1").await;
    let t = now_ms();
    let mut alice = Vec::new();
    // Two share a creation time: the id breaks the tie.
    for (i, at) in [t - 50, t - 40, t - 30, t - 30, t - 20, t - 10]
        .into_iter()
        .enumerate()
    {
        alice.push((at, db.finished(Some("alice"), at, i as u64).await));
    }
    let bob = db.finished(Some("bob"), t, 1).await;
    let nobody = db.finished(None, t, 1).await;
    alice.sort_by(|a, b| b.cmp(a)); // newest first, then the larger id
    let expected: Vec<String> = alice.iter().map(|(_, id)| id.clone()).collect();

    for limit in [1, 2, 4, 100] {
        let mut listed = Vec::new();
        let mut cursor: Option<ListCursor> = None;
        loop {
            let page = db
                .store
                .list_streams(Some("alice"), cursor.as_ref(), limit)
                .await
                .unwrap();
            assert!(page.len() <= limit as usize);
            let Some(last) = page.last() else { break };
            cursor = Some(ListCursor {
                created_at: last.created_at,
                id: last.id.clone(),
            });
            listed.extend(page.iter().map(|r| r.id.clone()));
        }
        assert_eq!(listed, expected, "limit {limit}");
    }
    let ids = |rows: Vec<store::StreamRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(db.store.list_streams(Some("bob"), None, 10).await.unwrap()),
        [bob.as_str()]
    );
    assert_eq!(
        ids(db.store.list_streams(None, None, 10).await.unwrap()),
        [nobody.as_str()]
    );
    assert!(
        db.store
            .list_streams(Some("carol"), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A stream is found only with its owner; unscoped, always.
    assert!(
        db.store
            .stream(&bob, Some("alice"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(db.store.stream(&bob, None).await.unwrap().is_none());
    assert!(
        db.store
            .stream(&nobody, Some("bob"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(db.store.stream(&nobody, None).await.unwrap().is_some());
    assert_eq!(
        db.store.stream_unscoped(&bob).await.unwrap().unwrap().owner,
        Some("bob".to_owned())
    );
    db.crash().await;
}

async fn sessions_keep_their_turns_and_answers(f: Fixture) {
    let db = f.open("n1").await;
    let sid = spool::ids::new_session_id().unwrap();
    let t = now_ms();
    db.log
        .create_session(NewSession {
            id: sid.clone(),
            owner: Some("alice".into()),
            model: Some("mock".into()),
            system: Some("be brief".into()),
            metadata: Some(r#"{"k":1}"#.into()),
            title: None,
            created_at: t,
            chat_id: Some("chat-x".into()),
        })
        .await
        .unwrap();
    // A second session for the same owner's chat id is not stored, and fails nothing:
    // the chat is the first one.
    db.log
        .create_session(NewSession {
            id: spool::ids::new_session_id().unwrap(),
            owner: Some("alice".into()),
            model: None,
            system: None,
            metadata: None,
            title: None,
            created_at: t,
            chat_id: Some("chat-x".into()),
        })
        .await
        .unwrap();
    let chat = db
        .store
        .chat_session("chat-x", Some("alice"))
        .await
        .unwrap();
    assert_eq!(chat.map(|c| c.id), Some(sid.clone()));
    assert!(
        db.store
            .chat_session("chat-x", Some("bob"))
            .await
            .unwrap()
            .is_none()
    );
    let s = db
        .store
        .session(&sid, Some("alice"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.system.as_deref(), Some("be brief"));
    assert_eq!(s.metadata.as_deref(), Some(r#"{"k":1}"#));
    assert!(db.store.session(&sid, Some("bob")).await.unwrap().is_none());
    assert!(db.store.session(&sid, None).await.unwrap().is_none());
    assert!(db.store.turns(&sid).await.unwrap().is_empty());

    let turn = |idx: i64, content: &str| NewTurn {
        session_id: sid.clone(),
        idx,
        role: "user",
        content: content.into(),
        messages: None,
    };
    let first = db.create(Some("alice"), t, Some(turn(0, "one"))).await;
    db.tokens(&first, 2, 3).await;
    db.done(&first, 5, Some(mock_text(3))).await;
    let second = db.create(Some("alice"), t + 1, Some(turn(2, "two"))).await;
    db.tokens(&second, 2, 2).await;
    db.log.flush().await.unwrap();

    let turns = db.store.turns(&sid).await.unwrap();
    let view: Vec<_> = turns
        .iter()
        .map(|t| {
            (
                t.idx,
                t.role.as_str(),
                t.content.as_deref(),
                t.stream_id.as_deref(),
                t.status.as_deref(),
            )
        })
        .collect();
    let answer = mock_text(3);
    let so_far = mock_text(2);
    assert_eq!(
        view,
        [
            (0, "user", Some("one"), None, None),
            (
                1,
                "assistant",
                Some(answer.as_str()),
                Some(first.as_str()),
                Some("completed")
            ),
            (2, "user", Some("two"), None, None),
            // Not ended: its text so far.
            (
                3,
                "assistant",
                Some(so_far.as_str()),
                Some(second.as_str()),
                Some("queued")
            ),
        ]
    );
    // A second turn at an index already taken is refused, and stores nothing.
    let start = Event::start(1, "st_x", "mock", "2026-01-01T00:00:00Z");
    let taken = db
        .log
        .create(
            NewStream {
                id: spool::ids::new_stream_id().unwrap(),
                owner: Some("alice".into()),
                model: "mock".into(),
                params: "{}".into(),
                created_at: t + 2,
                turn: Some(turn(2, "again")),
                idempotency: None,
                ds: None,
            },
            start,
        )
        .await;
    assert!(taken.is_err());
    assert_eq!(db.store.turns(&sid).await.unwrap().len(), 4);

    // An answer with tool calls, and a turn of tool results: both kept as JSON.
    db.done(&second, 4, Some(so_far.clone())).await;
    let calls = r#"[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]"#;
    let asks = db
        .create(Some("alice"), t + 3, Some(turn(4, "call f")))
        .await;
    db.done_calling(&asks, 2, Some(String::new()), Some(calls.into()))
        .await;
    let results = r#"[{"role":"tool","content":"42","tool_call_id":"c1"}]"#;
    let answered = NewTurn {
        role: "tool",
        messages: Some(results.into()),
        ..turn(6, "42")
    };
    let last = db.create(Some("alice"), t + 4, Some(answered)).await;
    db.done(&last, 2, Some(String::new())).await;
    db.log.flush().await.unwrap();
    let turns = db.store.turns(&sid).await.unwrap();
    let view: Vec<_> = turns[4..]
        .iter()
        .map(|t| {
            (
                t.role.as_str(),
                t.tool_calls.as_deref(),
                t.messages.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        view,
        [
            ("user", None, None),
            ("assistant", Some(calls), None),
            ("tool", None, Some(results)),
            ("assistant", None, None),
        ]
    );
    db.crash().await;
}

async fn sessions_are_listed_renamed_and_deleted(f: Fixture) {
    let db = f.open("n1").await;
    let t = now_ms();
    let mut ids = Vec::new();
    for (i, owner) in ["alice", "alice", "bob", "alice"].into_iter().enumerate() {
        let id = spool::ids::new_session_id().unwrap();
        db.log
            .create_session(NewSession {
                id: id.clone(),
                owner: Some(owner.into()),
                model: None,
                system: None,
                metadata: None,
                title: (i == 1).then(|| "Named".to_owned()),
                created_at: t + i as i64,
                chat_id: None,
            })
            .await
            .unwrap();
        ids.push(id);
    }
    // A turn in the oldest one: its first message, and its activity.
    let turn = NewTurn {
        session_id: ids[0].clone(),
        idx: 0,
        role: "user",
        content: "hello there".into(),
        messages: None,
    };
    let stream = db.create(Some("alice"), t + 10, Some(turn)).await;
    db.done(&stream, 2, Some(String::new())).await;
    db.log.flush().await.unwrap();

    let page = db
        .store
        .list_sessions(Some("alice"), None, 2)
        .await
        .unwrap();
    let listed: Vec<&str> = page.iter().map(|s| s.row.id.as_str()).collect();
    assert_eq!(listed, [ids[3].as_str(), ids[1].as_str()]);
    assert_eq!(page[1].row.title.as_deref(), Some("Named"));
    let cursor = SessionCursor {
        created_at: page[1].row.created_at,
        id: page[1].row.id.clone(),
    };
    let rest = db
        .store
        .list_sessions(Some("alice"), Some(&cursor), 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].row.id, ids[0]);
    assert_eq!(rest[0].first_message.as_deref(), Some("hello there"));
    assert_eq!(rest[0].last_turn_at, Some(t + 10));
    assert!(rest[0].last_activity_at() >= t + 10);
    assert!(
        db.store
            .list_sessions(None, None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Title and metadata, each on its own; then a title cleared.
    let rename =
        |title: Option<Option<&str>>, metadata: Option<Option<&str>>| SessionEdit::Update {
            id: ids[0].clone(),
            title: title.map(|t| t.map(str::to_owned)),
            metadata: metadata.map(|m| m.map(str::to_owned)),
        };
    assert!(db.log.edit(rename(Some(Some("Trip")), None)).await.unwrap());
    assert!(
        db.log
            .edit(rename(None, Some(Some(r#"{"a":1}"#))))
            .await
            .unwrap()
    );
    let s = db
        .store
        .session(&ids[0], Some("alice"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (s.title.as_deref(), s.metadata.as_deref()),
        (Some("Trip"), Some(r#"{"a":1}"#))
    );
    assert!(db.log.edit(rename(Some(None), None)).await.unwrap());
    let s = db
        .store
        .session(&ids[0], Some("alice"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (s.title.as_deref(), s.metadata.as_deref()),
        (None, Some(r#"{"a":1}"#))
    );
    let missing = SessionEdit::Update {
        id: "se_missing".into(),
        title: Some(Some("x".into())),
        metadata: None,
    };
    assert!(!db.log.edit(missing).await.unwrap());

    assert_eq!(
        db.store.turn_streams(&ids[0]).await.unwrap(),
        std::slice::from_ref(&stream)
    );
    assert!(db.log.delete(stream).await.unwrap());
    let delete = SessionEdit::Delete { id: ids[0].clone() };
    assert!(db.log.edit(delete.clone()).await.unwrap());
    assert!(!db.log.edit(delete).await.unwrap());
    assert!(
        db.store
            .session(&ids[0], Some("alice"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(db.store.turns(&ids[0]).await.unwrap().is_empty());
    assert_eq!(
        db.store
            .list_sessions(Some("alice"), None, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    db.crash().await;
}

async fn delete_removes_a_stream_and_its_events(f: Fixture) {
    let db = f.open("n1").await;
    let t = now_ms();
    let gone = db.finished(Some("alice"), t, 5).await;
    let kept = db.finished(Some("alice"), t, 5).await;
    assert!(db.log.delete(gone.clone()).await.unwrap());
    assert!(
        db.store
            .stream(&gone, Some("alice"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(db.store.stream_unscoped(&gone).await.unwrap().is_none());
    assert!(
        db.store
            .events_after(&gone, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(db.store.text(&gone).await.unwrap().is_empty());
    // Once is enough.
    assert!(!db.log.delete(gone.clone()).await.unwrap());
    // The other stream is untouched.
    assert_eq!(
        seqs(&db.events(&kept, 100).await),
        (1..=7).collect::<Vec<_>>()
    );
    let listed: Vec<String> = db
        .store
        .list_streams(Some("alice"), None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, [kept]);
    db.crash().await;
}

async fn purge_deletes_old_finished_streams_only(f: Fixture) {
    let db = f.open("n1").await;
    let t = now_ms();
    let day = 24 * 3600 * 1000;
    let old: Vec<String> = {
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(db.finished(None, t - day - i, 2).await);
        }
        ids
    };
    let old_open = db.create(None, t - day, None).await;
    db.tokens(&old_open, 2, 2).await;
    let recent = db.finished(None, t, 2).await;

    let cutoff = t - 3600 * 1000;
    assert_eq!(db.log.purge(cutoff, 2).await.unwrap(), 2);
    assert_eq!(db.log.purge(cutoff, 2).await.unwrap(), 1);
    assert_eq!(db.log.purge(cutoff, 2).await.unwrap(), 0);
    for id in &old {
        assert!(db.store.stream(id, None).await.unwrap().is_none());
        assert!(db.store.events_after(id, 0, 10).await.unwrap().is_empty());
    }
    // A stream still open is kept however old, and so is a recent one.
    assert_eq!(
        seqs(&db.events(&old_open, 100).await),
        (1..=3).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&db.events(&recent, 100).await),
        (1..=4).collect::<Vec<_>>()
    );
    db.crash().await;
}

async fn a_failed_batch_leaves_nothing_and_the_next_one_commits(f: Fixture) {
    let db = f.open("n1").await;
    let t = now_ms();
    let good = db.create(None, t, None).await;
    let bad = db.create(None, t, None).await;
    assert_eq!(db.metric("spool_store_commit_failures_total"), 0.0);

    // One batch: a valid event of one stream, and a second event with seq 1 for
    // another (a duplicate). The writer queues them together (this runtime has one
    // thread: the writer runs only once this task waits on the flush).
    db.log
        .running(Arc::from(good.as_str()), now_ms())
        .await
        .unwrap();
    db.log
        .append(Arc::from(good.as_str()), Event::token(2, " tok1"), None)
        .await
        .unwrap();
    db.log
        .append(Arc::from(bad.as_str()), Event::token(1, " dup"), None)
        .await
        .unwrap();
    db.log.flush().await.unwrap();
    assert_eq!(db.metric("spool_store_commit_failures_total"), 1.0);

    // Nothing of that batch is stored: not the valid event, not the status change.
    for id in [&good, &bad] {
        let events = db.events(id, 10).await;
        assert_eq!(seqs(&events), [1], "{id}");
        assert_eq!(events[0].kind, EventKind::Start);
        let row = db.store.stream(id, None).await.unwrap().unwrap();
        assert_eq!(row.status().unwrap(), StreamStatus::Queued);
        assert_eq!(row.last_seq(), 1);
    }

    // The next batch commits. The streams that lost events get no more (they would
    // have a gap); others go on.
    let next = db.create(None, t, None).await;
    db.tokens(&next, 2, 3).await;
    db.tokens(&good, 3, 1).await;
    db.log.flush().await.unwrap();
    assert_eq!(
        seqs(&db.events(&next, 10).await),
        (1..=4).collect::<Vec<_>>()
    );
    assert_eq!(seqs(&db.events(&good, 10).await), [1]);
    assert_eq!(db.metric("spool_store_commit_failures_total"), 1.0);
    db.crash().await;
}

/// A process (`dead`) that was generating a stream (start and three tokens) and
/// stopped without ending it. Returns its id and that of a stream it had finished.
async fn a_dead_process_with_an_open_stream(f: &Fixture) -> (String, String) {
    let db = f.open("dead").await;
    let id = db.create(Some("alice"), now_ms(), None).await;
    db.log
        .running(Arc::from(id.as_str()), now_ms())
        .await
        .unwrap();
    db.tokens(&id, 2, 3).await;
    let finished = db.finished(Some("alice"), now_ms(), 2).await;
    db.crash().await;
    (id, finished)
}

/// A finished stream is left as it was.
async fn assert_untouched(db: &Db, finished: &str) {
    let events = db.events(finished, 100).await;
    assert_eq!(seqs(&events), [1, 2, 3, 4]);
    assert_eq!(events[3].kind, EventKind::Done);
    let row = db.store.stream_unscoped(finished).await.unwrap().unwrap();
    assert_eq!(row.status().unwrap(), StreamStatus::Completed);
}

/// The stream ended `interrupted` once: `error` at seq 5 after what was stored.
async fn assert_interrupted_once(db: &Db, id: &str) {
    let events = db.events(id, 100).await;
    assert_eq!(seqs(&events), (1..=5).collect::<Vec<_>>());
    let last = &events[4];
    assert_eq!(last.kind, EventKind::Error);
    let data: serde_json::Value = serde_json::from_str(&last.data).unwrap();
    assert_eq!(data["code"], store::INTERRUPTED);
    let row = db.store.stream(id, Some("alice")).await.unwrap().unwrap();
    assert_eq!(row.status().unwrap(), StreamStatus::Interrupted);
    assert_eq!(row.error_code.as_deref(), Some(store::INTERRUPTED));
    assert_eq!(row.last_seq(), 5);
    assert!(row.finished_at.is_some());
    assert_eq!(db.store.text(id).await.unwrap(), mock_text(3));
}

async fn a_restart_ends_the_open_streams_of_a_dead_process(f: Fixture) {
    let (id, finished) = a_dead_process_with_an_open_stream(&f).await;
    // The same process starts again (on PostgreSQL: the same node id, before its
    // lease expired).
    let db = f.open("dead").await;
    assert!(db.unfinished.is_empty());
    assert_interrupted_once(&db, &id).await;
    assert_untouched(&db, &finished).await;
    db.crash().await;
    // And again: nothing more happens to it.
    let db = f.open("dead").await;
    assert_interrupted_once(&db, &id).await;
    db.crash().await;
}

async fn a_restart_hands_back_continuable_streams(f: Fixture) {
    let (id, finished) = a_dead_process_with_an_open_stream(&f).await;
    let db = f.open_with("dead", |_| {}, true).await;
    assert_untouched(&db, &finished).await;
    let unfinished: Vec<(&str, u64)> = db
        .unfinished
        .iter()
        .map(|u| (u.id.as_str(), u.last_seq))
        .collect();
    assert_eq!(unfinished, [(id.as_str(), 4)]);
    assert_eq!(db.unfinished[0].model, "mock");
    // Left open for the caller to continue, with what it needs to.
    let row = db.store.stream(&id, Some("alice")).await.unwrap().unwrap();
    assert_eq!(row.status().unwrap(), StreamStatus::Running);
    assert_eq!(seqs(&db.events(&id, 100).await), [1, 2, 3, 4]);
    let c = db.store.continuation(&id).await.unwrap();
    assert_eq!(c.ids, [1, 2, 3]);
    assert_eq!(c.text, mock_text(3));
    db.tokens(&id, 5, 1).await;
    db.done(&id, 6, None).await;
    db.log.flush().await.unwrap();
    assert_eq!(db.store.text(&id).await.unwrap(), mock_text(4));
    db.crash().await;
}

/// PostgreSQL only: several nodes. A node that stops renewing its lease has its open
/// streams ended by one survivor once the lease has expired — not before — and a
/// continuable stream is claimed by one survivor.
mod postgres_nodes {
    use super::*;

    async fn expire(f: &Fixture, node: &str) {
        let Place::Postgres(db) = &f.place else {
            unreachable!()
        };
        let pool = db.pool().await;
        let n =
            sqlx::query("UPDATE nodes SET expires_at = now() - interval '1 second' WHERE id = $1")
                .bind(node)
                .execute(&pool)
                .await
                .unwrap()
                .rows_affected();
        assert_eq!(n, 1, "{node} has no lease");
        pool.close().await;
    }

    #[tokio::test]
    async fn a_survivor_ends_a_dead_nodes_streams_once_its_lease_expired() {
        let f = Fixture::postgres().await;
        let (id, finished) = a_dead_process_with_an_open_stream(&f).await;
        let b = f.open("b").await;
        let c = f.open("c").await;
        // The lease of `dead` still runs: nobody takes its streams.
        let sweep = b.store.sweep(&|_| false).await.unwrap();
        assert!(sweep.dead.is_empty() && sweep.ended.is_empty() && sweep.claimed.is_empty());
        let row = b.store.stream(&id, Some("alice")).await.unwrap().unwrap();
        assert_eq!(row.status().unwrap(), StreamStatus::Running);

        expire(&f, "dead").await;
        let (first, second) = tokio::join!(c.store.sweep(&|_| false), b.store.sweep(&|_| false));
        let (first, second) = (first.unwrap(), second.unwrap());
        let ended: Vec<_> = first.ended.iter().chain(&second.ended).collect();
        assert_eq!(ended.len(), 1, "{first:?} {second:?}");
        assert_eq!((ended[0].id.as_str(), ended[0].seq), (id.as_str(), 5));
        let dead: Vec<_> = first.dead.iter().chain(&second.dead).collect();
        assert_eq!(dead, ["dead"]);
        assert_interrupted_once(&b, &id).await;
        // Later sweeps find nothing.
        for db in [&b, &c] {
            let sweep = db.store.sweep(&|_| false).await.unwrap();
            assert!(sweep.dead.is_empty() && sweep.ended.is_empty());
        }
        assert_interrupted_once(&c, &id).await;
        assert_untouched(&c, &finished).await;
        b.crash().await;
        c.crash().await;
    }

    #[tokio::test]
    async fn a_survivor_claims_a_dead_nodes_continuable_stream() {
        let f = Fixture::postgres().await;
        let (id, _) = a_dead_process_with_an_open_stream(&f).await;
        let b = f.open("b").await;
        let c = f.open("c").await;
        expire(&f, "dead").await;
        let (first, second) = tokio::join!(c.store.sweep(&|_| true), b.store.sweep(&|_| true));
        let (first, second) = (first.unwrap(), second.unwrap());
        let claimed: Vec<_> = first.claimed.iter().chain(&second.claimed).collect();
        assert_eq!(claimed.len(), 1, "{first:?} {second:?}");
        assert_eq!(
            (claimed[0].id.as_str(), claimed[0].last_seq),
            (id.as_str(), 4)
        );
        assert!(first.ended.is_empty() && second.ended.is_empty());
        // Claimed means owned by a live node: nobody sweeps it again.
        for db in [&b, &c] {
            let sweep = db.store.sweep(&|_| true).await.unwrap();
            assert!(sweep.claimed.is_empty() && sweep.ended.is_empty());
        }
        let row = b.store.stream(&id, Some("alice")).await.unwrap().unwrap();
        assert_eq!(row.status().unwrap(), StreamStatus::Running);
        assert_eq!(seqs(&b.events(&id, 100).await), [1, 2, 3, 4]);
        b.crash().await;
        c.crash().await;
    }
}
