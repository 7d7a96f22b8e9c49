//! One shared server on the real model, on its own thread and runtime, and a small SSE
//! client that reads bytes (a chunk may end inside a UTF-8 character).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use spool::ServeConfig;
use spool::config::BackendKind;

pub const DEADLINE: Duration = Duration::from_secs(120);

/// The model file: `SPOOL_MODEL_PATH`, else fetched once into the cache.
pub fn model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let explicit = std::env::var_os("SPOOL_MODEL_PATH").map(PathBuf::from);
        spool::llm::local::fetch::locate(explicit.as_deref(), &AtomicBool::new(false))
            .expect("the model is needed for these tests")
    })
    .clone()
}

/// The base URL of the shared server, started on first use and ready (model loaded).
pub fn base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| {
        let path = model_path();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("model-test-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let dir = tempfile::tempdir().unwrap();
                    let mut config = ServeConfig::defaults();
                    config.store.database_url =
                        format!("sqlite://{}", dir.path().join("spool.db").display());
                    config.backend = BackendKind::Local;
                    config.local.model_path = Some(path);
                    config.server.addr = "127.0.0.1:0".parse().unwrap();
                    let listener = tokio::net::TcpListener::bind(config.server.addr)
                        .await
                        .unwrap();
                    let addr = listener.local_addr().unwrap();
                    let spool = spool::Spool::start(config).await.unwrap();
                    tx.send(format!("http://{addr}")).unwrap();
                    // Serves until the test process exits.
                    spool.serve(listener, std::future::pending()).await.unwrap();
                    drop(dir);
                });
            })
            .unwrap();
        let base = rx.recv().unwrap();
        // Tests call this from inside their runtime: wait on a plain thread.
        let waiting = base.clone();
        std::thread::spawn(move || wait_ready(&waiting))
            .join()
            .unwrap();
        base
    })
}

fn wait_ready(base: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            let r = client.get(format!("{base}/readyz")).send().await.unwrap();
            if r.status() == 200 {
                return;
            }
            assert_eq!(r.status(), 503);
            assert!(
                tokio::time::Instant::now() < until,
                "the model never loaded"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// One SSE event.
#[derive(Debug, Clone)]
pub struct Event {
    #[allow(dead_code)]
    pub id: Option<u64>,
    pub event: String,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// Parses complete events from the front of `buf` (bytes), leaving the rest.
fn take_events(buf: &mut Vec<u8>, out: &mut Vec<Event>) {
    while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
        let block: Vec<u8> = buf.drain(..end + 2).collect();
        let block = String::from_utf8(block).expect("an SSE event is not valid UTF-8");
        let (mut id, mut event, mut data) = (None, String::new(), None);
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.parse().unwrap());
            } else if let Some(v) = line.strip_prefix("event: ") {
                event = v.to_owned();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = Some(v.to_owned());
            }
        }
        if let Some(data) = data {
            out.push(Event { id, event, data });
        }
    }
}

/// A finished stream as a reader saw it.
#[derive(Debug)]
pub struct Run {
    pub id: String,
    pub events: Vec<Event>,
}

impl Run {
    /// The concatenated token texts.
    pub fn text(&self) -> String {
        self.events
            .iter()
            .filter(|e| e.event == "token")
            .map(|e| e.json()["text"].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn last(&self) -> Value {
        self.events.last().unwrap().json()
    }

    pub fn last_kind(&self) -> &str {
        &self.events.last().unwrap().event
    }
}

/// Starts a stream with `body` over SSE and reads it to its end.
pub async fn run(body: Value) -> Run {
    let r = client()
        .post(format!("{}/v1/streams", base()))
        .header("accept", "text/event-stream")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let id = r.headers()["x-stream-id"].to_str().unwrap().to_owned();
    let mut body = r.bytes_stream();
    let mut buf = Vec::new();
    let mut events = Vec::new();
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        take_events(&mut buf, &mut events);
        if events
            .last()
            .is_some_and(|e| e.event == "done" || e.event == "error")
        {
            return Run { id, events };
        }
        match tokio::time::timeout_at(until, body.next())
            .await
            .expect("timed out reading the stream")
        {
            Some(Ok(bytes)) => buf.extend_from_slice(&bytes),
            other => panic!("the stream ended early: {other:?}; got {events:?}"),
        }
    }
}

/// A prompt with sampling settings.
pub fn ask(prompt: &str, max_tokens: u32, seed: u64) -> Value {
    json!({"model": "smollm2-135m", "prompt": prompt, "max_tokens": max_tokens, "seed": seed})
}

pub async fn status(id: &str) -> Value {
    client()
        .get(format!("{}/v1/streams/{id}", base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
