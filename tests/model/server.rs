//! One shared server on the real model, on its own thread and runtime, and running a
//! stream on it to its end (with the shared SSE reader, which keeps bytes until an event
//! is whole: a chunk may end inside a UTF-8 character).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde_json::{Value, json};
use spool::ServeConfig;
use spool::config::BackendKind;

use crate::sse::{SseEvent, SseReader};

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
        crate::ready::wait_ready(&base, DEADLINE);
        base
    })
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// A finished stream as a reader saw it.
#[derive(Debug)]
pub struct Run {
    pub id: String,
    pub events: Vec<SseEvent>,
}

impl Run {
    /// The concatenated token texts.
    pub fn text(&self) -> String {
        crate::sse::text(&self.events)
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
    let mut reader = SseReader::new(r, DEADLINE);
    let ended = reader
        .read_until(|r| {
            r.events()
                .last()
                .is_some_and(|e| e.event == "done" || e.event == "error")
        })
        .await;
    assert!(ended, "the stream ended early; got {:?}", reader.events());
    Run {
        id,
        events: reader.into_events(),
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
