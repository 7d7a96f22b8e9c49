//! Store faults (issue 15, SPEC §6): the real binary on a disk that fills up, a
//! database locked by another connection, PostgreSQL connections killed, PostgreSQL
//! cut off behind a proxy, a node frozen with SIGSTOP, and a second process on a live
//! SQLite file. Each test asserts what a client sees, that no stream is left
//! `running`, and that no event a reader saw is lost or duplicated.
//!
//! The disk is a 4 MiB tmpfs the test mounts (these tests run as root, as CI does) and
//! fills with a file; freeing it is deleting that file.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::helpers::{
    DEADLINE, SendJson, SseEvent, SseReader, assert_contiguous, mock_text, parse_sse,
};
use crate::pg::TestDb;
use crate::process::{self, Server};
use crate::sse::{raw, text};

/// One test at a time: they time faults on two shared cores, and the PostgreSQL ones
/// start several processes.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits (with a deadline) until `check` gives a value.
async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let until = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A client of one server.
struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn of(server: &Server) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: server.base.clone(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `/readyz`: its status and body.
    async fn ready(&self) -> (u16, Value) {
        let r = self.http.get(self.url("/readyz")).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn wait_ready(&self, want: u16) -> Value {
        wait_for(&format!("/readyz {want}"), DEADLINE, || async {
            let (code, body) = self.ready().await;
            (code == want).then_some(body)
        })
        .await
    }

    async fn metric(&self, name: &str) -> f64 {
        crate::helpers::metric(&self.http, &self.base, name).await
    }

    /// `POST /v1/streams` with `max_tokens`: the response.
    async fn post(&self, max_tokens: u32) -> reqwest::Response {
        self.http
            .post(self.url("/v1/streams"))
            .json(&json!({"prompt": "x", "max_tokens": max_tokens}))
            .send()
            .await
            .unwrap()
    }

    async fn create(&self, max_tokens: u32) -> String {
        let r = self.post(max_tokens).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let v: Value = r.json().await.unwrap();
        v["id"].as_str().unwrap().to_owned()
    }

    async fn status(&self, id: &str) -> Value {
        let url = self.url(&format!("/v1/streams/{id}"));
        self.http.get(url).send_json().await
    }

    async fn wait_status(&self, id: &str, want: &str) -> Value {
        wait_for(&format!("{id} {want}"), DEADLINE, || async {
            let s = self.status(id).await;
            (s["status"] == want).then_some(s)
        })
        .await
    }

    /// The events of `id` after `after`, read live.
    async fn events(&self, id: &str, after: Option<u64>) -> SseReader {
        let mut r = self.http.get(self.url(&format!("/v1/streams/{id}/events")));
        if let Some(after) = after {
            r = r.header("Last-Event-ID", after.to_string());
        }
        SseReader::open(r, DEADLINE).await
    }

    /// Everything stored of `id`.
    async fn read_all(&self, id: &str) -> Vec<SseEvent> {
        let body = self
            .events(id, None)
            .await
            .read_to_end(Instant::now() + DEADLINE)
            .await;
        parse_sse(&body)
    }

    async fn cancel(&self, id: &str) -> u16 {
        self.http
            .post(self.url(&format!("/v1/streams/{id}/cancel")))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Asserts that none of the server's streams is queued or running.
    async fn assert_none_running(&self) {
        let list = self
            .http
            .get(self.url("/v1/streams?limit=100"))
            .send_json()
            .await;
        for s in list["data"].as_array().unwrap() {
            assert!(
                !matches!(s["status"].as_str(), Some("queued" | "running")),
                "left {}: {s}",
                s["status"]
            );
        }
    }
}

/// A 4 MiB tmpfs, unmounted when dropped (also when the test panics).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount() -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "cannot mount a tmpfs: these tests run as root (as CI does)"
        );
        SmallDisk { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Fills what is left of the disk with one file.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path("filler")).unwrap();
        let chunk = vec![0u8; 16 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.flush();
    }

    fn free(&self) {
        std::fs::remove_file(self.path("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Starts `n` streams of `max_tokens` on `on`, each with an SSE reader on `read_on`
/// that has read its first `past` events.
async fn streams_read(
    on: &Client,
    read_on: &Client,
    n: usize,
    max_tokens: u32,
    past: usize,
) -> Vec<(String, SseReader)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let id = on.create(max_tokens).await;
        let mut reader = read_on.events(&id, None).await;
        reader.until(past).await;
        out.push((id, reader));
    }
    out
}

/// `n` streams of `max_tokens` with a reader each on the same server, past event 5.
async fn streams_with_readers(c: &Client, n: usize, max_tokens: u32) -> Vec<(String, SseReader)> {
    streams_read(c, c, n, max_tokens, 5).await
}

async fn assert_refused_with_retry_after(c: &Client) {
    let r = c.post(5).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"), "no Retry-After");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
}

#[tokio::test]
async fn a_full_disk_freed_within_the_window_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let disk = SmallDisk::mount();
    // A small batch bound: the writer's queue fills within the fault, so generations
    // really wait.
    let server = process::start(
        &disk.path("spool.db"),
        &[
            ("SPOOL_STORE_RETRY_WINDOW", "60s"),
            ("SPOOL_BATCH_MAX", "32"),
        ],
        DEADLINE,
    );
    let c = Client::of(&server);
    let streams = streams_with_readers(&c, 4, 400).await;

    disk.fill();
    let ready = c.wait_ready(503).await;
    assert_eq!(ready["store"], false, "{ready}");
    assert!(
        ready["reason"].as_str().unwrap().contains("disk is full"),
        "{ready}"
    );
    assert_eq!(c.metric("spool_store_available").await, 0.0);
    assert_refused_with_retry_after(&c).await;
    // Backpressure: the generations wait for the writer (no token is made for a while).
    let until = Instant::now() + DEADLINE;
    let mut before = c.metric("spool_tokens_generated_total").await;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = c.metric("spool_tokens_generated_total").await;
        if now == before {
            break;
        }
        assert!(
            Instant::now() < until,
            "the generations did not wait for the store"
        );
        before = now;
    }
    disk.free();

    c.wait_ready(200).await;
    assert_eq!(c.metric("spool_store_available").await, 1.0);
    assert!(c.metric("spool_store_commit_errors_total").await > 0.0);
    let until = Instant::now() + DEADLINE;
    for (id, reader) in streams {
        let events = parse_sse(&reader.read_to_end(until).await);
        assert_contiguous(&events);
        assert_eq!(
            text(&events),
            mock_text(400),
            "{id}: a token lost or doubled"
        );
        assert_eq!(events.last().unwrap().json()["finish_reason"], "length");
        assert_eq!(c.status(&id).await["status"], "completed");
    }
    let fresh = c.create(3).await;
    c.wait_status(&fresh, "completed").await;
    c.assert_none_running().await;
}

#[tokio::test]
async fn a_disk_full_past_the_window_ends_each_stream_store_unavailable() {
    let _serial = SERIAL.lock().await;
    let disk = SmallDisk::mount();
    let server = process::start(
        &disk.path("spool.db"),
        &[("SPOOL_STORE_RETRY_WINDOW", "2s")],
        DEADLINE,
    );
    let c = Client::of(&server);
    // A session's turn among the streams: its next turn must be accepted afterwards.
    let session = c.http.post(c.url("/v1/sessions")).send_json().await;
    let sid = session["id"].as_str().unwrap().to_owned();
    let say = |content: &'static str| {
        c.http
            .post(c.url(&format!("/v1/sessions/{sid}/messages")))
            .json(&json!({"content": content, "max_tokens": 5000}))
            .send()
    };
    let turn: Value = say("one").await.unwrap().json().await.unwrap();
    let turn_id = turn["id"].as_str().unwrap().to_owned();
    let mut streams = streams_with_readers(&c, 3, 5000).await;
    let mut turn_reader = c.events(&turn_id, None).await;
    turn_reader.until(5).await;
    streams.push((turn_id.clone(), turn_reader));

    disk.fill();
    c.wait_ready(503).await;
    assert_refused_with_retry_after(&c).await;
    // Past the window every reader's response ends, without a terminal event: the
    // client resumes later.
    let until = Instant::now() + Duration::from_secs(2) + DEADLINE;
    let mut seen = Vec::new();
    for (id, reader) in streams {
        let events = parse_sse(&reader.read_to_end(until).await);
        assert!(events.len() >= 5, "{id}");
        assert!(
            events
                .iter()
                .all(|e| e.event == "start" || e.event == "token"),
            "{id} ended while the store refused writes"
        );
        seen.push((id, events));
    }
    // Their generations have stopped; cancel is answered.
    wait_for("the generations to stop", DEADLINE, || async {
        (c.metric("spool_streams{state=\"running\"}").await == 0.0).then_some(())
    })
    .await;
    let cancelled = &seen[0].0;
    assert!(matches!(c.cancel(cancelled).await, 200 | 202));

    disk.free();
    c.wait_ready(200).await;
    for (id, before) in &seen {
        let s = c.wait_status(id, "failed").await;
        assert_eq!(s["error"]["code"], "store_unavailable", "{s}");
        // A resume from the last event seen gets the rest, up to that error event.
        let last = before.last().unwrap().id.unwrap();
        let rest = c
            .events(id, Some(last))
            .await
            .read_to_end(Instant::now() + DEADLINE)
            .await;
        let all: Vec<SseEvent> = before.iter().cloned().chain(parse_sse(&rest)).collect();
        assert_contiguous(&all);
        let end = all.last().unwrap();
        assert_eq!(end.event, "error");
        assert_eq!(end.json()["code"], "store_unavailable");
        assert_eq!(s["last_seq"], all.len(), "{s}");
        assert_eq!(
            raw(&all),
            raw(&c.read_all(id).await),
            "{id}: stored ≠ seen + resumed"
        );
    }
    assert_eq!(c.cancel(cancelled).await, 200);
    c.assert_none_running().await;
    // The session goes on, and so do new streams.
    let r = say("two").await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let fresh = c.create(3).await;
    c.wait_status(&fresh, "completed").await;
}

#[tokio::test]
async fn a_write_lock_held_by_another_connection_is_waited_out() {
    use sqlx::{ConnectOptions, Connection};
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("busy.db");
    let server = process::start(&db, &[("SPOOL_STORE_RETRY_WINDOW", "60s")], DEADLINE);
    let c = Client::of(&server);
    let streams = streams_with_readers(&c, 2, 300).await;

    // A plain SQLite connection (a shell, a backup) may open the file; it takes the
    // write lock and keeps it.
    let mut other = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&db)
        .busy_timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let ready = c.wait_ready(503).await;
    assert!(
        ready["reason"].as_str().unwrap().contains("locked"),
        "{ready}"
    );
    assert_refused_with_retry_after(&c).await;
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    other.close().await.unwrap();

    c.wait_ready(200).await;
    let until = Instant::now() + DEADLINE;
    for (id, reader) in streams {
        let events = parse_sse(&reader.read_to_end(until).await);
        assert_contiguous(&events);
        assert_eq!(text(&events), mock_text(300), "{id}");
        assert_eq!(c.status(&id).await["status"], "completed");
    }
    c.assert_none_running().await;
}

/// Runs the binary on `db` expecting it to stop by itself; returns its exit code and
/// stderr.
fn run_to_exit(db: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spool"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SPOOL_ADDR", "127.0.0.1:0")
        .env("DATABASE_URL", format!("sqlite://{}", db.display()))
        .env("SPOOL_BACKEND", "mock")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("a second process on a live SQLite file did not stop");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (code, err)
}

#[tokio::test]
async fn a_second_process_on_a_live_sqlite_file_refuses_to_start() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("one.db");
    let mut first = process::start(&db, &[], DEADLINE);
    let c = Client::of(&first);
    let (id, reader) = streams_with_readers(&c, 1, 200).await.remove(0);

    let (code, err) = run_to_exit(&db);
    assert_eq!(code, Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("spool:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains(&db.display().to_string()), "{err}");
    assert!(
        lines[0].contains(&format!("pid {}", first.child.id())),
        "{err}"
    );

    // The first process is undisturbed.
    let events = parse_sse(&reader.read_to_end(Instant::now() + DEADLINE).await);
    assert_contiguous(&events);
    assert_eq!(text(&events), mock_text(200));
    assert_eq!(c.status(&id).await["status"], "completed");

    // A file left by a process that died is recovered as always.
    let (open, reader) = streams_with_readers(&c, 1, 10_000).await.remove(0);
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let seen = parse_sse(&reader.leftovers().await);
    let next = process::start(&db, &[], DEADLINE);
    let c = Client::of(&next);
    let s = c.status(&open).await;
    assert_eq!(s["status"], "interrupted", "{s}");
    let stored = c.read_all(&open).await;
    assert_contiguous(&stored);
    assert_eq!(raw(&seen), raw(&stored[..seen.len()]));
    c.assert_none_running().await;
}

/// Nodes on PostgreSQL with a short lease and a mock backend that can continue.
const LEASE: &str = "2s";

fn start_node(url: &str, name: &str) -> Server {
    process::start_url(
        url,
        &[
            ("SPOOL_NODE_ID", name),
            ("SPOOL_NODE_LEASE", LEASE),
            ("SPOOL_MOCK_RATE", "50"),
            ("SPOOL_MOCK_CONTINUE", "true"),
        ],
        DEADLINE,
    )
}

/// Lines of `server`'s log that contain `text`.
fn logged(server: &Server, text: &str) -> Vec<String> {
    server
        .log_lines()
        .into_iter()
        .filter(|l| l.contains(text))
        .collect()
}

/// Waits for `server` to exit by itself; its exit code.
async fn wait_exit(server: &mut Server, within: Duration) -> Option<i32> {
    let until = Instant::now() + within;
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status.code();
        }
        assert!(Instant::now() < until, "the node did not stop");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn postgres_connections_killed_are_reestablished() {
    let _serial = SERIAL.lock().await;
    let db = TestDb::create().await;
    let a = start_node(&db.url, "a");
    let b = start_node(&db.url, "b");
    let (on_a, on_b) = (Client::of(&a), Client::of(&b));
    let id = on_a.create(150).await;
    let mut reader_a = on_a.events(&id, None).await;
    let mut reader_b = on_b.events(&id, None).await;
    reader_a.until(10).await;
    reader_b.until(10).await;

    let pool = db.pool().await;
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND application_name IN ('spool-writer-a', 'spool-listen-a', 'spool-a')",
    )
    .bind(&db.name)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(killed.len() >= 3, "a had {} connections", killed.len());

    // The stream goes on with no gap, read the same on both nodes.
    let until = Instant::now() + DEADLINE;
    let body_a = reader_a.read_to_end(until).await;
    let body_b = reader_b.read_to_end(until).await;
    assert_eq!(body_a, body_b);
    let events = parse_sse(&body_a);
    assert_contiguous(&events);
    assert_eq!(text(&events), mock_text(150));
    on_b.wait_status(&id, "completed").await;
    // a writes, reads and hears cancels again.
    let fresh = on_a.create(10_000).await;
    on_a.events(&fresh, None).await.until(3).await;
    assert_eq!(on_b.cancel(&fresh).await, 202);
    on_a.wait_status(&fresh, "cancelled").await;
    on_a.wait_ready(200).await;
    assert!(!logged(&a, "writer's connection to PostgreSQL is re-established").is_empty());
    assert!(logged(&a, "store commit failed; the batch is lost").is_empty());
    on_a.assert_none_running().await;
}

/// A TCP proxy to PostgreSQL that the test cuts (every connection closed, new ones
/// refused) and restores. It runs on a thread of its own: starting a node blocks the
/// test's thread.
struct Proxy {
    port: u16,
    open: Arc<std::sync::atomic::AtomicBool>,
    cut: tokio_util::sync::CancellationToken,
    cuts: Arc<std::sync::Mutex<tokio_util::sync::CancellationToken>>,
}

impl Proxy {
    fn start(target: &str) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let cuts = Arc::new(std::sync::Mutex::new(
            tokio_util::sync::CancellationToken::new(),
        ));
        let stop = tokio_util::sync::CancellationToken::new();
        let (flag, current, done, target) =
            (open.clone(), cuts.clone(), stop.clone(), target.to_owned());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        std::thread::spawn(move || {
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (mut client, _) = tokio::select! {
                        _ = done.cancelled() => return,
                        a = listener.accept() => match a { Ok(a) => a, Err(_) => return },
                    };
                    if !flag.load(Ordering::SeqCst) {
                        continue; // dropped: refused
                    }
                    let cut = current.lock().unwrap().clone();
                    let target = target.clone();
                    tokio::spawn(async move {
                        let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = cut.cancelled() => {}
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        }
                    });
                }
            })
        });
        Proxy {
            port,
            open,
            cut: stop,
            cuts,
        }
    }

    /// `url` through this proxy.
    fn url(&self, url: &str) -> String {
        url.replace(":5432/", &format!(":{}/", self.port))
    }

    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut cuts = self.cuts.lock().unwrap();
        cuts.cancel();
        *cuts = tokio_util::sync::CancellationToken::new();
    }

    fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut.cancel();
    }
}

/// Tokens of the streams a survivor takes over: three seconds' worth.
const TAKEN_OVER: u32 = 150;

/// Streams on `a` with readers on `b`, each reader past its tenth event.
async fn streams_read_elsewhere(
    on_a: &Client,
    on_b: &Client,
    n: usize,
) -> Vec<(String, SseReader)> {
    streams_read(on_a, on_b, n, TAKEN_OVER, 10).await
}

/// The streams a survivor took over end as an unbroken run would have.
async fn assert_continued_intact(on_b: &Client, streams: Vec<(String, SseReader)>) {
    let until = Instant::now() + DEADLINE;
    for (id, reader) in streams {
        let events = parse_sse(&reader.read_to_end(until).await);
        assert_contiguous(&events);
        assert_eq!(events.last().unwrap().event, "done", "{id}");
        assert_eq!(
            text(&events),
            mock_text(TAKEN_OVER),
            "{id}: a token lost or doubled"
        );
        assert_eq!(raw(&events), raw(&on_b.read_all(&id).await));
        on_b.wait_status(&id, "completed").await;
    }
    on_b.assert_none_running().await;
}

#[tokio::test]
async fn postgres_unreachable_past_the_lease_hands_the_streams_over() {
    let _serial = SERIAL.lock().await;
    let db = TestDb::create().await;
    let proxy = Proxy::start("127.0.0.1:5432");
    let mut a = start_node(&proxy.url(&db.url), "a");
    let b = start_node(&db.url, "b");
    let (on_a, on_b) = (Client::of(&a), Client::of(&b));
    let streams = streams_read_elsewhere(&on_a, &on_b, 3).await;
    let (id_a, mut reader_a) = (streams[0].0.clone(), on_a.events(&streams[0].0, None).await);
    reader_a.until(10).await;

    proxy.cut();
    let cut = Instant::now();
    // a cannot renew its lease: it stops (before a survivor may take its streams).
    let code = wait_exit(&mut a, DEADLINE).await;
    assert_eq!(code, Some(75), "{:#?}", a.log_lines());
    let seen_on_a = parse_sse(&reader_a.leftovers().await);
    // b takes the streams over within about a lease.
    wait_for("b to take a's streams over", DEADLINE, || async {
        (!logged(&b, "took over from dead nodes").is_empty()).then_some(())
    })
    .await;
    let took = cut.elapsed();
    assert!(took < Duration::from_secs(6), "took over after {took:?}");
    proxy.restore();

    let stored = on_b.read_all(&id_a).await;
    assert_eq!(raw(&seen_on_a), raw(&stored[..seen_on_a.len()]));
    assert_continued_intact(&on_b, streams).await;
    assert!(
        logged(&b, "store commit failed").is_empty(),
        "b's batch failed"
    );
    eprintln!("takeover after {took:?}");
}

fn signal(server: &Server, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &server.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

#[tokio::test]
async fn a_node_stopped_past_its_lease_is_fenced_when_it_resumes() {
    let _serial = SERIAL.lock().await;
    let db = TestDb::create().await;
    let mut a = start_node(&db.url, "a");
    let b = start_node(&db.url, "b");
    let (on_a, on_b) = (Client::of(&a), Client::of(&b));
    let streams = streams_read_elsewhere(&on_a, &on_b, 3).await;

    signal(&a, "-STOP");
    let stopped = Instant::now();
    wait_for("b to take a's streams over", DEADLINE, || async {
        (!logged(&b, "took over from dead nodes").is_empty()).then_some(())
    })
    .await;
    eprintln!("takeover after {:?}", stopped.elapsed());
    signal(&a, "-CONT");

    // a's next batch does not commit: it stops (75) without writing beside b.
    let code = wait_exit(&mut a, DEADLINE).await;
    assert_eq!(code, Some(75), "{:#?}", a.log_lines());
    assert!(!logged(&a, "lease is not ours any more").is_empty());
    // Its writer met the fence (its batch's transaction found the lease gone).
    assert!(
        !logged(&a, "its batch was not committed").is_empty(),
        "{:#?}",
        a.log_lines()
    );
    assert_continued_intact(&on_b, streams).await;
    assert!(
        logged(&b, "store commit failed").is_empty(),
        "b's batch failed"
    );
}
