//! Several nodes on one PostgreSQL database (SPEC §6, issue 9): three real `spool`
//! processes (`a`, `b`, `c`) on a fresh database, driven over HTTP. A stream generated
//! on one node is read, resumed, cancelled and deleted through the others; a node
//! killed with SIGKILL has its streams ended — or continued — by exactly one survivor
//! within its lease; a lost `LISTEN` connection is re-established without a reader
//! missing anything.
//!
//! The tests of this file run one at a time: each starts three processes, and the lease
//! timing they check should not compete with another test's cluster for two cores.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::helpers::{
    DEADLINE, SendJson, SseEvent, SseReader, assert_contiguous, mock_text, parse_sse,
};
use crate::pg::TestDb;
use crate::process::{self, Server};
use crate::sse::{raw, text};

/// The nodes' lease: short, so a dead node is noticed within seconds.
const LEASE: Duration = Duration::from_secs(3);
/// Tokens per second of the mock backend: streams of a few dozen tokens stay live
/// long enough to read them on several nodes while they are generated.
const RATE: &str = "30";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Cluster {
    // Dropped in this order: the processes, then their database.
    nodes: Vec<Server>,
    db: TestDb,
    /// Added to every node's environment.
    env: Vec<(String, String)>,
    client: reqwest::Client,
    key: Option<&'static str>,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

const NAMES: [&str; 3] = ["a", "b", "c"];

/// Starts node `name` on the database at `url`; `env` adds or overrides.
fn start_node(url: &str, name: &str, env: &[(String, String)]) -> Server {
    let lease = format!("{}s", LEASE.as_secs());
    let mut vars = vec![
        ("SPOOL_NODE_ID", name),
        ("SPOOL_NODE_LEASE", lease.as_str()),
        ("SPOOL_MOCK_RATE", RATE),
    ];
    vars.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    process::start_url(url, &vars, DEADLINE)
}

impl Cluster {
    /// Nodes `a`, `b`, `c` on a fresh database, started together (they migrate it
    /// concurrently); `env` is added to every node's environment.
    async fn start(env: &[(&str, &str)]) -> Cluster {
        let serial = SERIAL.lock().await;
        let db = TestDb::create().await;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let nodes = std::thread::scope(|s| {
            let handles: Vec<_> = NAMES
                .iter()
                .map(|name| {
                    let (url, env) = (&db.url, &env);
                    s.spawn(move || start_node(url, name, env))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        });
        Cluster {
            nodes,
            db,
            env,
            client: reqwest::Client::new(),
            key: None,
            _serial: serial,
        }
    }

    /// Kills `name` with SIGKILL.
    fn kill(&mut self, name: &str) {
        let node = &mut self.nodes[NAMES.iter().position(|n| *n == name).unwrap()];
        node.child.kill().unwrap();
        node.child.wait().unwrap();
    }

    /// Sends `name` SIGTERM and waits (by `within`) for it to exit; returns its code.
    async fn terminate(&mut self, name: &str, within: Duration) -> Option<i32> {
        let node = &mut self.nodes[NAMES.iter().position(|n| *n == name).unwrap()];
        let pid = node.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        let until = Instant::now() + within;
        loop {
            if let Some(status) = node.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < until,
                "{name} still runs {within:?} after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts `name` again, under the same node id.
    fn restart(&mut self, name: &str) {
        let i = NAMES.iter().position(|n| *n == name).unwrap();
        self.nodes[i] = start_node(&self.db.url, name, &self.env);
    }

    fn node(&self, name: &str) -> &Server {
        &self.nodes[NAMES.iter().position(|n| *n == name).unwrap()]
    }

    fn url(&self, node: &str, path: &str) -> String {
        format!("{}{path}", self.node(node).base)
    }

    fn get(&self, node: &str, path: &str) -> reqwest::RequestBuilder {
        self.authed(self.client.get(self.url(node, path)))
    }

    fn post(&self, node: &str, path: &str) -> reqwest::RequestBuilder {
        self.authed(self.client.post(self.url(node, path)))
    }

    fn authed(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.key {
            Some(key) => r.bearer_auth(key),
            None => r,
        }
    }

    /// `POST /v1/streams` on `node`, expecting `201`; returns the response body.
    async fn create(&self, node: &str, max_tokens: u32) -> Value {
        let r = self
            .post(node, "/v1/streams")
            .json(&json!({"prompt": "x", "max_tokens": max_tokens}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        r.json().await.unwrap()
    }

    async fn create_id(&self, node: &str, max_tokens: u32) -> String {
        self.create(node, max_tokens).await["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// `GET /v1/streams/{id}` on `node`: the status code and body.
    async fn status(&self, node: &str, id: &str) -> (u16, Value) {
        let r = self
            .get(node, &format!("/v1/streams/{id}"))
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    /// Waits (with a deadline) until the stream's status on `node` is `want`.
    async fn wait_status(&self, node: &str, id: &str, want: &str) -> Value {
        let until = Instant::now() + DEADLINE;
        loop {
            let (code, s) = self.status(node, id).await;
            if code == 200 && s["status"] == want {
                return s;
            }
            assert!(
                Instant::now() < until,
                "{id} on {node} is not {want}: {code} {s}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Opens the events of `id` on `node`, from `after` (`Last-Event-ID`).
    async fn events(&self, node: &str, id: &str, after: Option<u64>) -> SseReader {
        let mut r = self.get(node, &format!("/v1/streams/{id}/events"));
        if let Some(after) = after {
            r = r.header("Last-Event-ID", after.to_string());
        }
        SseReader::open(r, DEADLINE).await
    }

    /// One complete read of `id` on `node`, from the start.
    async fn read_all(&self, node: &str, id: &str) -> String {
        self.events(node, id, None)
            .await
            .read_to_end(Instant::now() + DEADLINE)
            .await
    }

    /// Log lines of `node` that contain `text`.
    fn logged(&self, node: &str, text: &str) -> Vec<String> {
        self.node(node)
            .log_lines()
            .into_iter()
            .filter(|l| l.contains(text))
            .collect()
    }

    /// The backend pid of `node`'s `LISTEN` connection, if it has one.
    async fn listener_pid(&self, pool: &sqlx::PgPool, node: &str) -> Option<i32> {
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2 \
             AND query LIKE 'LISTEN %'",
        )
        .bind(&self.db.name)
        .bind(format!("spool-listen-{node}"))
        .fetch_all(pool)
        .await
        .unwrap();
        assert!(
            pids.len() <= 1,
            "{node} has {} LISTEN connections",
            pids.len()
        );
        pids.first().copied()
    }
}

#[tokio::test]
async fn a_stream_generated_on_a_reads_the_same_live_on_every_node() {
    let cluster = Cluster::start(&[]).await;
    let id = cluster.create_id("a", 90).await;

    let mut readers = Vec::new();
    for node in NAMES {
        readers.push(cluster.events(node, &id, None).await);
    }
    // Every reader gets events while the stream is still being generated: they follow
    // it live, not a copy read after the end.
    for reader in &mut readers {
        reader.until(3).await;
    }
    let (_, status) = cluster.status("b", &id).await;
    assert_eq!(status["status"], "running", "{status}");

    let until = Instant::now() + DEADLINE;
    let mut bodies = Vec::new();
    for reader in readers {
        bodies.push(reader.read_to_end(until).await);
    }
    assert_eq!(
        bodies[0], bodies[1],
        "a reader on b saw other bytes than on a"
    );
    assert_eq!(
        bodies[0], bodies[2],
        "a reader on c saw other bytes than on a"
    );
    let events = parse_sse(&bodies[0]);
    assert_contiguous(&events);
    assert_eq!(events.len(), 92);
    assert_eq!(text(&events), mock_text(90));
    let last = events.last().unwrap();
    assert_eq!(last.event, "done");
    assert_eq!(last.json()["finish_reason"], "length");
    for node in NAMES {
        cluster.wait_status(node, &id, "completed").await;
    }
}

#[tokio::test]
async fn drop_on_b_and_resume_on_c_gives_exactly_the_rest() {
    let cluster = Cluster::start(&[]).await;
    let id = cluster.create_id("a", 90).await;
    let unbroken = cluster.events("a", &id, None).await;

    let mut on_b = cluster.events("b", &id, None).await;
    let first = on_b.until(20).await;
    drop(on_b);
    let (_, status) = cluster.status("c", &id).await;
    assert_eq!(status["status"], "running", "the drop was not mid-stream");
    let last_seen = first.last().unwrap().id.unwrap();

    let rest = cluster
        .events("c", &id, Some(last_seen))
        .await
        .read_to_end(Instant::now() + DEADLINE)
        .await;
    let rest = parse_sse(&rest);
    assert_eq!(rest[0].id, Some(last_seen + 1));
    let unbroken = parse_sse(&unbroken.read_to_end(Instant::now() + DEADLINE).await);
    assert_contiguous(&unbroken);
    assert_eq!(unbroken.len(), 92);
    assert_eq!(
        raw(&first) + &raw(&rest),
        raw(&unbroken),
        "b's events then c's are not exactly an unbroken read on a"
    );
}

#[tokio::test]
async fn cancel_and_delete_through_c_reach_the_node_that_runs_the_stream() {
    let cluster = Cluster::start(&[]).await;

    // Cancel: every reader, on every node, sees the stream end `cancelled`.
    let id = cluster.create_id("a", 10_000).await;
    let mut readers = Vec::new();
    for node in NAMES {
        let mut r = cluster.events(node, &id, None).await;
        r.until(5).await;
        readers.push(r);
    }
    let r = cluster
        .post("c", &format!("/v1/streams/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let until = Instant::now() + DEADLINE;
    let mut bodies = Vec::new();
    for reader in readers {
        bodies.push(reader.read_to_end(until).await);
    }
    assert_eq!(bodies[0], bodies[1]);
    assert_eq!(bodies[0], bodies[2]);
    let events = parse_sse(&bodies[0]);
    assert_contiguous(&events);
    let last = events.last().unwrap();
    assert_eq!(last.event, "done", "{}", last.data);
    assert_eq!(last.json()["finish_reason"], "cancelled");
    for node in NAMES {
        let s = cluster.wait_status(node, &id, "cancelled").await;
        assert_eq!(s["last_seq"], events.len());
    }
    // Cancelling again anywhere: it has ended.
    let r = cluster
        .post("b", &format!("/v1/streams/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Delete of a running stream: it stops on `a`, then it is gone everywhere, and a
    // reader following it on `b` is not left waiting forever.
    let id = cluster.create_id("a", 10_000).await;
    let mut on_b = cluster.events("b", &id, None).await;
    on_b.until(3).await;
    let r = cluster
        .client
        .delete(cluster.url("c", &format!("/v1/streams/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    for node in NAMES {
        let (code, body) = cluster.status(node, &id).await;
        assert_eq!(code, 404, "{node}: {body}");
        let r = cluster
            .get(node, &format!("/v1/streams/{id}/events"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{node}");
    }
    let body = on_b.read_to_end(Instant::now() + DEADLINE).await;
    let events = parse_sse(&body);
    assert!(events.len() >= 3);
    // Nothing is generated for it any more: a's writer would fail on rows it no longer
    // has, and a new stream there still works.
    let fresh = cluster.create_id("a", 3).await;
    cluster.wait_status("b", &fresh, "completed").await;
}

#[tokio::test]
async fn kill_9_ends_the_dead_nodes_streams_interrupted_exactly_once() {
    let mut cluster = Cluster::start(&[]).await;
    let ids = [
        cluster.create_id("a", 10_000).await,
        cluster.create_id("a", 10_000).await,
    ];
    // Readers of both streams on every node, all past their tenth event.
    let mut readers = Vec::new();
    for id in &ids {
        for node in NAMES {
            let mut r = cluster.events(node, id, None).await;
            r.until(10).await;
            readers.push((id.clone(), node, r));
        }
    }

    cluster.kill("a");
    let killed = Instant::now();
    // A survivor ends them within the lease, after a sweep; the margin is for a
    // loaded machine.
    let until = killed + LEASE + Duration::from_secs(8);

    let mut seen = Vec::new();
    for (id, node, reader) in readers {
        let body = if node == "a" {
            reader.leftovers().await
        } else {
            reader.read_to_end(until).await
        };
        seen.push((id, node, body));
    }
    for id in &ids {
        let stored = cluster.read_all("b", id).await;
        assert_eq!(stored, cluster.read_all("c", id).await);
        let events = parse_sse(&stored);
        assert_contiguous(&events);
        let last = events.last().unwrap();
        assert_eq!(last.event, "error", "{}", last.data);
        assert_eq!(last.json()["code"], "interrupted");
        assert_eq!(text(&events), mock_text(events.len() as u32 - 2));
        for (seen_id, node, body) in &seen {
            if seen_id != id {
                continue;
            }
            let saw = parse_sse(body);
            if *node == "a" {
                assert!(saw.len() >= 10 && saw.len() < events.len());
                assert_eq!(
                    raw(&saw),
                    raw(&events[..saw.len()]),
                    "an event the reader on a saw before the kill is not stored"
                );
            } else {
                assert_eq!(
                    *body, stored,
                    "the reader on {node} followed to another end"
                );
            }
        }
        for node in ["b", "c"] {
            let s = cluster.wait_status(node, id, "interrupted").await;
            assert_eq!(s["last_seq"], events.len());
        }
    }
    // One survivor took the dead node over, once, for both streams.
    let sweeps: Vec<String> = ["b", "c"]
        .iter()
        .flat_map(|n| cluster.logged(n, "took over from dead nodes"))
        .collect();
    assert_eq!(sweeps.len(), 1, "{sweeps:#?}");
    assert!(sweeps[0].contains("ended=2"), "{}", sweeps[0]);
    // The cluster goes on without it.
    let fresh = cluster.create_id("c", 3).await;
    cluster.wait_status("b", &fresh, "completed").await;
}

#[tokio::test]
async fn kill_9_with_a_continuable_backend_one_survivor_finishes_the_stream() {
    let mut cluster = Cluster::start(&[("SPOOL_MOCK_CONTINUE", "true")]).await;
    let id = cluster.create_id("a", 150).await;
    let mut readers = Vec::new();
    for node in ["b", "c"] {
        let mut r = cluster.events(node, &id, None).await;
        r.until(10).await;
        readers.push(r);
    }
    cluster.kill("a");
    let (_, status) = cluster.status("b", &id).await;
    assert_eq!(
        status["status"], "running",
        "the stream ended before the kill"
    );

    let until = Instant::now() + DEADLINE;
    let mut bodies = Vec::new();
    for reader in readers {
        bodies.push(reader.read_to_end(until).await);
    }
    assert_eq!(bodies[0], bodies[1]);
    let events = parse_sse(&bodies[0]);
    assert_contiguous(&events);
    assert_eq!(events.len(), 152);
    assert_eq!(text(&events), mock_text(150), "a gap or a duplicate token");
    let last = events.last().unwrap();
    assert_eq!(last.event, "done", "{}", last.data);
    assert_eq!(last.json()["finish_reason"], "length");
    assert_eq!(last.json()["usage"]["completion_tokens"], 150);
    assert_eq!(cluster.read_all("c", &id).await, bodies[0]);
    let s = cluster.wait_status("b", &id, "completed").await;
    assert_eq!(s["text"], mock_text(150));

    let continued: Vec<&str> = ["b", "c"]
        .into_iter()
        .filter(|n| {
            cluster
                .logged(n, "stream continued")
                .iter()
                .any(|l| l.contains(&id))
        })
        .collect();
    assert_eq!(continued.len(), 1, "continued by {continued:?}");
}

#[tokio::test]
async fn a_lost_listen_connection_is_reestablished_and_its_readers_miss_nothing() {
    let cluster = Cluster::start(&[]).await;
    let pool = cluster.db.pool().await;
    let id = cluster.create_id("a", 150).await;
    let mut on_a = cluster.events("a", &id, None).await;
    let mut on_b = cluster.events("b", &id, None).await;
    on_a.until(10).await;
    on_b.until(10).await;

    let old = cluster
        .listener_pid(&pool, "b")
        .await
        .expect("b does not listen");
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(old)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(terminated);

    // b listens again, on a new connection.
    let until = Instant::now() + DEADLINE;
    loop {
        match cluster.listener_pid(&pool, "b").await {
            Some(pid) if pid != old => break,
            _ => {}
        }
        assert!(Instant::now() < until, "b did not listen again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, status) = cluster.status("a", &id).await;
    assert_eq!(
        status["status"], "running",
        "the stream ended before b listened again"
    );
    // And hears what is sent there: a cancel, which has no other way to reach b.
    let on_b_id = cluster.create_id("b", 10_000).await;
    let r = cluster
        .post("c", &format!("/v1/streams/{on_b_id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    cluster.wait_status("c", &on_b_id, "cancelled").await;

    // The reader on b saw every event, the same bytes as the reader on a.
    let until = Instant::now() + DEADLINE;
    let on_a = on_a.read_to_end(until).await;
    let on_b = on_b.read_to_end(until).await;
    assert_eq!(on_a, on_b);
    let events = parse_sse(&on_b);
    assert_contiguous(&events);
    assert_eq!(text(&events), mock_text(150));
    assert!(
        !cluster.logged("b", "lost the LISTEN connection").is_empty()
            || !cluster
                .logged("b", "the LISTEN connection failed")
                .is_empty(),
        "b did not notice"
    );
}

#[tokio::test]
async fn sessions_and_read_tokens_work_across_nodes() {
    let mut cluster = Cluster::start(&[("SPOOL_API_KEYS", "alpha-key,beta-key")]).await;
    cluster.key = Some("alpha-key");

    // A session made on a gets a turn through b and another through c.
    let r = cluster.post("a", "/v1/sessions").send().await.unwrap();
    assert_eq!(r.status(), 201);
    let session: Value = r.json().await.unwrap();
    let sid = session["id"].as_str().unwrap().to_owned();
    for (node, content) in [("b", "one"), ("c", "two")] {
        let r = cluster
            .post(node, &format!("/v1/sessions/{sid}/messages"))
            .json(&json!({"content": content, "max_tokens": 3}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{node}: {}", r.text().await.unwrap());
        let turn: Value = r.json().await.unwrap();
        cluster
            .wait_status("a", turn["id"].as_str().unwrap(), "completed")
            .await;
    }
    let history: Value = cluster
        .get("a", &format!("/v1/sessions/{sid}"))
        .send_json()
        .await;
    let turns: Vec<(String, String)> = history["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["role"].as_str().unwrap().to_owned(),
                t["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let answer = mock_text(3);
    assert_eq!(
        turns,
        [
            ("user".to_owned(), "one".to_owned()),
            ("assistant".to_owned(), answer.clone()),
            ("user".to_owned(), "two".to_owned()),
            ("assistant".to_owned(), answer),
        ]
    );
    // Another key does not see it, on any node.
    let r = cluster
        .client
        .get(cluster.url("b", &format!("/v1/sessions/{sid}")))
        .bearer_auth("beta-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A read token from a's POST opens the stream's events on c and b without a key.
    let created = cluster.create("a", 5).await;
    let id = created["id"].as_str().unwrap();
    let token = created["read_token"].as_str().unwrap();
    for node in ["c", "b"] {
        let r = cluster
            .client
            .get(cluster.url(node, &format!("/v1/streams/{id}/events?token={token}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{node}");
        let events = parse_sse(&r.text().await.unwrap());
        assert_contiguous(&events);
        assert_eq!(events.last().unwrap().event, "done");
        assert_eq!(text(&events), mock_text(5));
        // Without it, or with it for another stream, no.
        let r = cluster
            .client
            .get(cluster.url(node, &format!("/v1/streams/{id}/events")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{node}");
        let r = cluster
            .client
            .get(cluster.url(node, &format!("/v1/streams/{id}?token={token}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{node}");
    }
}

#[tokio::test]
async fn a_reader_of_a_stream_deleted_before_it_saw_the_end_is_not_left_waiting() {
    // Streams that stall after two tokens: nothing more is written to them.
    let cluster = Cluster::start(&[("SPOOL_MOCK_STALL_AFTER", "2")]).await;
    let pool = cluster.db.pool().await;
    let id = cluster.create_id("a", 10).await;
    let mut on_b = cluster.events("b", &id, None).await;
    assert_eq!(on_b.until(3).await.len(), 3);
    // Gone before the reader on b read an end (a delete through another node can
    // commit before that reader reads the terminal event it was woken for).
    for sql in [
        "DELETE FROM chunks WHERE stream_key = (SELECT key FROM streams WHERE id = $1)",
        "DELETE FROM streams WHERE id = $1",
    ] {
        sqlx::query(sql).bind(&id).execute(&pool).await.unwrap();
    }
    let body = on_b.read_to_end(Instant::now() + DEADLINE).await;
    assert_eq!(parse_sse(&body).len(), 3, "{body}");
    let (code, _) = cluster.status("b", &id).await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn a_node_restarted_under_its_id_ends_the_streams_it_left_open() {
    // A lease longer than the test: no survivor may take a's streams, only a itself
    // once it is back (as a node restarted by its supervisor would be).
    let mut cluster = Cluster::start(&[("SPOOL_NODE_LEASE", "5min")]).await;
    let id = cluster.create_id("a", 10_000).await;
    let mut on_b = cluster.events("b", &id, None).await;
    let before = on_b.until(5).await;
    cluster.kill("a");
    cluster.restart("a");

    let body = on_b.read_to_end(Instant::now() + DEADLINE).await;
    let events = parse_sse(&body);
    assert_contiguous(&events);
    assert_eq!(raw(&events[..before.len()]), raw(&before));
    let last = events.last().unwrap();
    assert_eq!(last.event, "error", "{}", last.data);
    assert_eq!(last.json()["code"], "interrupted");
    assert_eq!(cluster.read_all("a", &id).await, body);
    let s = cluster.wait_status("c", &id, "interrupted").await;
    assert_eq!(s["last_seq"], events.len());
    assert_eq!(cluster.logged("a", "left running").len(), 1);
}

#[tokio::test]
async fn a_node_whose_lease_was_taken_stops_with_75_and_writes_nothing_more() {
    // Streams that stall: they stay running on `a` until something ends them.
    let mut cluster = Cluster::start(&[("SPOOL_MOCK_STALL_AFTER", "3")]).await;
    let pool = cluster.db.pool().await;
    let id = cluster.create_id("a", 100).await;
    let mut on_b = cluster.events("b", &id, None).await;
    let before = on_b.until(4).await;
    // As a survivor's sweep does when `a` was silent past its lease.
    sqlx::query("DELETE FROM nodes WHERE id = 'a'")
        .execute(&pool)
        .await
        .unwrap();
    let until = std::time::Instant::now() + DEADLINE;
    let status = loop {
        let node = &mut cluster.nodes[0];
        if let Some(status) = node.child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < until, "a did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        status.code(),
        Some(75),
        "{:?}",
        cluster.node("a").log_lines()
    );
    assert!(!cluster.logged("a", "lease is not ours").is_empty());
    // `a` wrote no end of its own; a survivor ends the stream, once.
    let body = on_b.read_to_end(Instant::now() + DEADLINE).await;
    let events = parse_sse(&body);
    assert_contiguous(&events);
    assert_eq!(raw(&events[..before.len()]), raw(&before));
    let last = events.last().unwrap();
    assert_eq!(last.event, "error", "{}", last.data);
    assert_eq!(last.json()["code"], "interrupted");
    assert_eq!(events.iter().filter(|e| e.event == "error").count(), 1);
    cluster.wait_status("c", &id, "interrupted").await;
}

#[tokio::test]
async fn sigterm_hands_a_continuable_stream_to_another_node_with_no_gap() {
    let mut cluster = Cluster::start(&[
        ("SPOOL_MOCK_CONTINUE", "true"),
        ("SPOOL_DRAIN_TIMEOUT", "1s"),
    ])
    .await;
    let id = cluster.create_id("a", 150).await;
    // A reader on `a` (the generating node) and one on `b`.
    let mut on_a = cluster.events("a", &id, None).await;
    let mut on_b = cluster.events("b", &id, None).await;
    on_a.until(5).await;
    on_b.until(5).await;
    assert_eq!(cluster.terminate("a", DEADLINE).await, Some(0));
    let (_, status) = cluster.status("b", &id).await;
    assert_ne!(status["status"], "interrupted", "{status}");

    // The reader on `a` was let go without an end; it resumes on `c`.
    let left = parse_sse(&on_a.read_to_close().await);
    assert_ne!(left.last().unwrap().event, "error");
    let last = left.last().unwrap().id.unwrap();
    let rest = cluster
        .events("c", &id, Some(last))
        .await
        .read_to_end(Instant::now() + DEADLINE)
        .await;
    let resumed: Vec<SseEvent> = left.iter().cloned().chain(parse_sse(&rest)).collect();
    // The reader on `b` never noticed: one unbroken read to the end.
    let body = on_b.read_to_end(Instant::now() + DEADLINE).await;
    let events = parse_sse(&body);
    assert_contiguous(&events);
    assert_eq!(events.len(), 152);
    assert_eq!(text(&events), mock_text(150), "a gap or a duplicate token");
    assert_eq!(events.last().unwrap().event, "done");
    assert_eq!(raw(&resumed), raw(&events), "the resumed read differs");
    let continued: Vec<&str> = ["b", "c"]
        .into_iter()
        .filter(|n| {
            cluster
                .logged(n, "stream continued")
                .iter()
                .any(|l| l.contains(&id))
        })
        .collect();
    assert_eq!(continued.len(), 1, "continued by {continued:?}");
    cluster.wait_status("b", &id, "completed").await;
}

#[tokio::test]
async fn one_idempotency_key_sent_to_two_nodes_at_once_starts_one_stream() {
    let cluster = Cluster::start(&[]).await;
    let pool = cluster.db.pool().await;
    for round in 0..5 {
        let key = format!("retry-{round}");
        let body = json!({"prompt": "x", "max_tokens": 3});
        let send = |node: &'static str| {
            cluster
                .post(node, "/v1/streams")
                .header("Idempotency-Key", key.as_str())
                .json(&body)
                .send()
        };
        let (on_a, on_b) = tokio::join!(send("a"), send("b"));
        let (on_a, on_b) = (on_a.unwrap(), on_b.unwrap());
        assert_eq!((on_a.status().as_u16(), on_b.status().as_u16()), (201, 201));
        let (a, b): (Value, Value) = (on_a.json().await.unwrap(), on_b.json().await.unwrap());
        assert_eq!(a["id"], b["id"], "round {round}");
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM streams")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 5);
}

/// What one reader of the rolling restart saw.
#[derive(Default)]
struct Followed {
    events: Vec<SseEvent>,
    duplicates: usize,
    gaps: usize,
    resumes: usize,
    /// The longest silence between two events, across a resume (the takeover).
    longest_gap: Duration,
}

/// Follows `id` to its end through whichever node answers, resuming with
/// `Last-Event-ID` whenever a response ends without the stream's end.
async fn follow_anywhere(
    client: reqwest::Client,
    bases: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    id: String,
    start: usize,
) -> Followed {
    let mut seen = Followed::default();
    let mut last: u64 = 0;
    let mut at = Instant::now();
    let until = Instant::now() + Duration::from_secs(60);
    let mut pick = start;
    loop {
        assert!(Instant::now() < until, "{id} never ended");
        let base = {
            let bases = bases.lock().unwrap();
            bases[pick % bases.len()].clone()
        };
        pick += 1;
        let mut request = client.get(format!("{base}/v1/streams/{id}/events"));
        if last > 0 {
            request = request.header("Last-Event-ID", last.to_string());
            seen.resumes += 1;
        }
        let Ok(response) = request.send().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if response.status() == 204 {
            return seen;
        }
        if response.status() != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let mut reader = SseReader::new(response, Duration::from_secs(30));
        while let Some(event) = reader.next_or_gone().await {
            let n = event.id.unwrap();
            if n <= last {
                seen.duplicates += 1;
                continue;
            }
            if n != last + 1 {
                seen.gaps += 1;
            }
            seen.longest_gap = seen.longest_gap.max(at.elapsed());
            at = Instant::now();
            last = n;
            let terminal = event.event == "done" || event.event == "error";
            seen.events.push(event);
            if terminal {
                return seen;
            }
        }
    }
}

#[tokio::test]
async fn a_rolling_restart_under_load_loses_nothing_and_duplicates_nothing() {
    let mut cluster = Cluster::start(&[
        ("SPOOL_MOCK_CONTINUE", "true"),
        ("SPOOL_MOCK_RATE", "50"),
        ("SPOOL_DRAIN_TIMEOUT", "1s"),
    ])
    .await;
    let tokens = 120u32;
    let bases = std::sync::Arc::new(std::sync::Mutex::new(
        NAMES
            .iter()
            .map(|n| cluster.node(n).base.clone())
            .collect::<Vec<_>>(),
    ));
    // Steady load: a new stream every 100 ms on a node that takes it, each followed by
    // a reader through another node, for as long as the restarts take.
    let stop = tokio_util::sync::CancellationToken::new();
    let load = {
        let (client, bases, stop) = (cluster.client.clone(), bases.clone(), stop.clone());
        tokio::spawn(async move {
            let mut readers = Vec::new();
            let mut n = 0usize;
            while !stop.is_cancelled() {
                let base = {
                    let b = bases.lock().unwrap();
                    b[n % b.len()].clone()
                };
                n += 1;
                let created = client
                    .post(format!("{base}/v1/streams"))
                    .json(&json!({"prompt": "x", "max_tokens": tokens}))
                    .send()
                    .await;
                if let Ok(r) = created
                    && r.status() == 201
                {
                    let v: Value = r.json().await.unwrap();
                    let id = v["id"].as_str().unwrap().to_owned();
                    readers.push(tokio::spawn(follow_anywhere(
                        client.clone(),
                        bases.clone(),
                        id.clone(),
                        n,
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            readers
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    for (i, name) in NAMES.iter().enumerate() {
        assert_eq!(cluster.terminate(name, DEADLINE).await, Some(0), "{name}");
        cluster.restart(name);
        bases.lock().unwrap()[i] = cluster.node(name).base.clone();
    }
    let restarts = started.elapsed();
    stop.cancel();
    let readers = load.await.unwrap();
    let streams = readers.len();
    let mut totals = Followed::default();
    for reader in readers {
        let seen = reader.await.unwrap();
        let events = &seen.events;
        assert_eq!(
            events.len() as u32,
            tokens + 2,
            "a stream did not end whole"
        );
        assert_eq!(events.last().unwrap().event, "done");
        assert_eq!(
            text(events),
            mock_text(tokens),
            "not an unbroken run's text"
        );
        totals.events.extend(seen.events);
        totals.duplicates += seen.duplicates;
        totals.gaps += seen.gaps;
        totals.resumes += seen.resumes;
        totals.longest_gap = totals.longest_gap.max(seen.longest_gap);
    }
    eprintln!(
        "rolling restart: {streams} streams, {} events read, {} resumes, {} duplicates \
         skipped by the cursor rule, {} gaps, longest silence across a takeover {:?}, \
         three restarts in {restarts:?}",
        totals.events.len(),
        totals.resumes,
        totals.duplicates,
        totals.gaps,
        totals.longest_gap
    );
    assert!(streams >= 20, "only {streams} streams");
    assert_eq!(totals.duplicates, 0, "an event was sent twice");
    assert_eq!(totals.gaps, 0, "an event was lost");
    assert!(
        totals.resumes > 0,
        "no reader had to resume: the test restarted nothing"
    );
    let handed: usize = NAMES
        .iter()
        .map(|n| cluster.logged(n, "stream continued").len())
        .sum();
    eprintln!("rolling restart: {handed} streams continued on another node");
}

/// A Responses API background response made on `a` is read on `b`, dropped mid-answer,
/// and resumed on `c` by `starting_after`: exactly the rest of an unbroken read on `a`,
/// the same bytes (the frames are a function of the stored events, on any node).
#[tokio::test]
async fn a_background_response_made_on_a_resumes_on_c_by_sequence_number() {
    let cluster = Cluster::start(&[]).await;
    let created = cluster
        .post("a", "/v1/responses")
        .json(&json!({"model": "mock", "input": "x", "max_output_tokens": 60, "background": true}))
        .send_json()
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let url = format!("/v1/responses/{id}?stream=true");
    let unbroken = SseReader::open(cluster.get("a", &url), DEADLINE).await;

    let mut on_b = SseReader::open(cluster.get("b", &url), DEADLINE).await;
    let first = on_b.until(12).await;
    drop(on_b);
    let object = cluster
        .get("c", &format!("/v1/responses/{id}"))
        .send_json()
        .await;
    assert_eq!(
        object["status"], "in_progress",
        "the drop was not mid-answer"
    );
    let last_seen = first.last().unwrap().id.unwrap();

    let rest = SseReader::open(
        cluster.get("c", &format!("{url}&starting_after={last_seen}")),
        DEADLINE,
    )
    .await
    .read_to_end(Instant::now() + DEADLINE)
    .await;
    let rest = parse_sse(&rest);
    assert_eq!(rest[0].id, Some(last_seen + 1));
    let unbroken = parse_sse(&unbroken.read_to_end(Instant::now() + DEADLINE).await);
    assert_eq!(unbroken.last().unwrap().event, "response.incomplete");
    assert_eq!(raw(&first) + &raw(&rest), raw(&unbroken));
    let done = cluster
        .get("b", &format!("/v1/responses/{id}"))
        .send_json()
        .await;
    assert_eq!(done["output_text"], mock_text(60));

    // A cancel through c reaches a, and answers once the end is stored.
    let long = cluster
        .post("a", "/v1/responses")
        .json(
            &json!({"model": "mock", "input": "x", "max_output_tokens": 5000, "background": true}),
        )
        .send_json()
        .await;
    let long = long["id"].as_str().unwrap();
    let cancelled = cluster
        .post("c", &format!("/v1/responses/{long}/cancel"))
        .send_json()
        .await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
}

#[tokio::test]
async fn a_durable_stream_written_on_a_is_read_on_b_live_and_closed() {
    let cluster = Cluster::start(&[("SPOOL_DS_LONG_POLL_TIMEOUT", "5s")]).await;
    let url = |node: &str| cluster.url(node, "/ds/v1/stream/shared/log");
    let r = cluster
        .client
        .put(url("a"))
        .header("content-type", "application/json")
        .body(r#"[{"n":1}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let tail = r.headers()["stream-next-offset"]
        .to_str()
        .unwrap()
        .to_owned();
    // b waits at the tail; a's append wakes it.
    let poll = cluster
        .client
        .get(format!("{}?offset={tail}&live=long-poll", url("b")))
        .send();
    let append = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = cluster
            .client
            .post(url("a"))
            .header("content-type", "application/json")
            .body(r#"{"n":2}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    };
    let (r, ()) = tokio::join!(poll, append);
    let r = r.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!([{"n": 2}]));
    // c reads it all; a closes it; every node says closed.
    let all: Value = cluster
        .client
        .get(format!("{}?offset=-1", url("c")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all, json!([{"n": 1}, {"n": 2}]));
    let r = cluster
        .client
        .post(url("a"))
        .header("stream-closed", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    for node in NAMES {
        let head = cluster.client.head(url(node)).send().await.unwrap();
        assert_eq!(head.status(), 200, "{node}");
        assert_eq!(head.headers()["stream-closed"], "true", "{node}");
    }
}
