//! Spawning a server for a test, and reading its streams (with the shared SSE client).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use spool::ServeConfig;
use spool::config::BackendKind;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use crate::sse::{SseEvent, SseReader, parse as parse_sse};

pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub db: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

/// A mock-backed server with unlimited rate, a fresh database, and `tweak` applied.
pub async fn spawn_with(tweak: impl FnOnce(&mut ServeConfig)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("spool.db");
    let mut app = spawn_on(&db, tweak).await;
    app._dir = Some(dir);
    app
}

pub async fn spawn_app() -> TestApp {
    spawn_with(|_| {}).await
}

/// A server on an existing database file (the caller keeps the directory).
pub async fn spawn_on(db: &std::path::Path, tweak: impl FnOnce(&mut ServeConfig)) -> TestApp {
    let mut config = ServeConfig::defaults();
    config.store.database_url = format!("sqlite://{}", db.display());
    config.backend = BackendKind::Mock;
    config.mock.rate = 0.0;
    config.server.addr = "127.0.0.1:0".parse().unwrap();
    tweak(&mut config);
    let listener = spool::listen(config.server.addr).unwrap();
    let addr = listener.local_addr().unwrap();
    let spool = spool::Spool::start(config).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(spool.serve(listener, async move {
        let _ = stopped.await;
    }));
    TestApp {
        addr,
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        db: db.to_path_buf(),
        stop: Some(stop),
        handle: Some(handle),
        _dir: None,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Graceful shutdown; returns how long it took.
    pub async fn shutdown(&mut self) -> Duration {
        let started = std::time::Instant::now();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(15), handle)
                .await
                .expect("shutdown hung")
                .unwrap()
                .unwrap();
        }
        started.elapsed()
    }

    /// Keeps the database directory when the server is dropped (for restarts).
    pub fn take_dir(&mut self) -> Option<tempfile::TempDir> {
        self._dir.take()
    }

    /// `POST /v1/streams` expecting `201`; returns the stream id.
    pub async fn create(&self, body: Value) -> String {
        let r = self
            .client
            .post(self.url("/v1/streams"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let v: Value = r.json().await.unwrap();
        v["id"].as_str().unwrap().to_owned()
    }

    pub async fn status(&self, id: &str) -> Value {
        let r = self
            .client
            .get(self.url(&format!("/v1/streams/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// Waits (with a deadline) until the stream's status satisfies `done`.
    pub async fn wait_for(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            let s = self.status(id).await;
            if done(&s) {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "timed out waiting for {what}: {s}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_terminal(&self, id: &str) -> Value {
        self.wait_for(id, "a terminal status", |s| {
            !matches!(s["status"].as_str(), Some("queued") | Some("running"))
        })
        .await
    }

    /// Reads a whole events response; returns (status, body).
    pub async fn read_events(&self, id: &str, last_event_id: Option<u64>) -> (u16, String) {
        let mut req = self
            .client
            .get(self.url(&format!("/v1/streams/{id}/events")));
        if let Some(n) = last_event_id {
            req = req.header("Last-Event-ID", n.to_string());
        }
        let r = tokio::time::timeout(DEADLINE, req.send())
            .await
            .expect("events request hung")
            .unwrap();
        let status = r.status().as_u16();
        let body = tokio::time::timeout(DEADLINE, r.text())
            .await
            .expect("events body hung")
            .unwrap();
        (status, body)
    }

    /// Opens the events of `id` (expecting `200`), to read as far as a test asks.
    pub async fn open_events(&self, id: &str) -> SseReader {
        let request = self
            .client
            .get(self.url(&format!("/v1/streams/{id}/events")));
        SseReader::open(request, DEADLINE).await
    }

    pub async fn metric(&self, name: &str) -> f64 {
        metric(&self.client, &self.base, name).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The value of the first line of `{base}/metrics` that starts with `name` (labels
/// included, e.g. `spool_streams{state="running"}`).
pub async fn metric(client: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = client.get(format!("{base}/metrics")).send_text().await;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no metric {name}"))
        .trim()
        .parse()
        .unwrap()
}

/// Asserts that the events' ids are 1, 2, 3 … with no gap or duplicate, that the first
/// is `start`, and that only the last is terminal.
pub fn assert_contiguous(events: &[SseEvent]) {
    let ids: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(
        ids,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "a gap or a duplicate"
    );
    assert_eq!(events[0].event, "start");
    let terminal: Vec<u64> = events
        .iter()
        .filter(|e| e.event == "done" || e.event == "error")
        .map(|e| e.id.unwrap())
        .collect();
    assert_eq!(
        terminal,
        [events.len() as u64],
        "not exactly one terminal event, last"
    );
}

/// The mock backend's first `n` tokens.
pub fn mock_text(n: u32) -> String {
    (1..=n).map(|i| format!(" tok{i}")).collect()
}

/// Opens the events URL and reads until `n` complete events arrived, then drops the
/// connection. Returns those events.
pub async fn read_n_events(app: &TestApp, id: &str, n: usize) -> Vec<SseEvent> {
    let mut events = app.open_events(id).await.until(n).await;
    events.truncate(n);
    events
}

/// Sends a request and reads its JSON body (tests only: panics on any failure).
pub trait SendJson {
    async fn send_json(self) -> Value;
}

impl SendJson for reqwest::RequestBuilder {
    async fn send_json(self) -> Value {
        self.send().await.unwrap().json().await.unwrap()
    }
}

/// Sends a request and reads its body as text (tests only: panics on any failure).
pub trait SendText {
    async fn send_text(self) -> String;
}

impl SendText for reqwest::RequestBuilder {
    async fn send_text(self) -> String {
        self.send().await.unwrap().text().await.unwrap()
    }
}

/// Which connections [`cutting_proxy`] may cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Any connection.
    Any,
    /// Only one whose request is for an `/events` URL.
    EventsOnly,
}

/// A TCP proxy in front of `target` that cuts connections mid-response, as a flaky
/// network does: an eligible connection is closed (both sides) once it has carried
/// `after` bytes to the client, until `cuts` connections have been cut; every other
/// connection passes through untouched. Returns the proxy's base URL.
pub async fn cutting_proxy(target: SocketAddr, after: usize, cuts: usize, which: Cut) -> String {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let budget = Arc::new(AtomicUsize::new(cuts));
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let budget = budget.clone();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let eligible = AtomicBool::new(which == Cut::Any);
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = async {
                    let mut buf = [0u8; 4096];
                    loop {
                        let k = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => k,
                        };
                        if buf[..k].windows(7).any(|w| w == b"/events") {
                            eligible.store(true, Ordering::SeqCst);
                        }
                        if sw.write_all(&buf[..k]).await.is_err() {
                            break;
                        }
                    }
                };
                let down = async {
                    let mut sent = 0;
                    let mut buf = [0u8; 256];
                    loop {
                        let k = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => k,
                        };
                        if cw.write_all(&buf[..k]).await.is_err() {
                            break;
                        }
                        if eligible.load(Ordering::SeqCst) {
                            sent += k;
                            if sent >= after
                                && budget
                                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                        n.checked_sub(1)
                                    })
                                    .is_ok()
                            {
                                break; // cut: drop both sides
                            }
                        }
                    }
                };
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    });
    format!("http://{addr}")
}

/// Serves `app` on a port of 127.0.0.1 for the rest of the test (a controlled upstream);
/// returns its address.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}
