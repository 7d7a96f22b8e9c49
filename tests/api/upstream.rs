//! The `openai` backend against a controllable OpenAI-compatible upstream started by the
//! test (a real HTTP server on port 0): a normal stream, a slow first token, a hang
//! mid-stream, an error status, a connection cut mid-stream, cancel propagation (the
//! upstream sees the disconnect), and a reader's disconnect that does not cancel.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use spool::config::BackendKind;

use crate::helpers::*;

#[derive(Default)]
struct Upstream {
    /// Streams whose client went away before the upstream finished them.
    disconnects: AtomicUsize,
    requests: AtomicUsize,
}

/// Counts a disconnect when dropped before `finished` is set.
struct Watch(Arc<Upstream>, bool);

impl Drop for Watch {
    fn drop(&mut self) {
        if !self.1 {
            self.0.disconnects.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn chunk(delta: Value, finish: Option<&str>) -> Bytes {
    let c = json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    Bytes::from(format!("data: {c}\n\n"))
}

async fn completions(State(up): State<Arc<Upstream>>, Json(body): Json<Value>) -> Response {
    up.requests.fetch_add(1, Ordering::SeqCst);
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let n = body["max_tokens"].as_u64().unwrap_or(3);
    assert_eq!(body["stream"], true);
    match model.as_str() {
        "error" => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": {"message": "the GPU caught fire", "type": "server_error"}})),
            )
                .into_response();
        }
        "slow" => tokio::time::sleep(Duration::from_secs(3)).await,
        _ => {}
    }
    let stream = async_stream::stream! {
        let mut watch = Watch(up.clone(), false);
        yield Ok::<_, std::io::Error>(chunk(json!({"role": "assistant", "content": ""}), None));
        for i in 1..=n {
            if model == "long" {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            yield Ok(chunk(json!({"content": format!(" a{i}")}), None));
            if i == 2 && model == "hang" {
                std::future::pending::<()>().await;
            }
            if i == 2 && model == "drop" {
                // Let what was sent reach spool, then cut the connection.
                tokio::time::sleep(Duration::from_millis(50)).await;
                watch.1 = true;
                yield Err(std::io::Error::other("cut"));
                return;
            }
        }
        yield Ok(chunk(json!({}), Some("length")));
        let usage = json!({"id": "c", "object": "chat.completion.chunk", "choices": [],
                           "usage": {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}});
        yield Ok(Bytes::from(format!("data: {usage}\n\n")));
        yield Ok(Bytes::from_static(b"data: [DONE]\n\n"));
        watch.1 = true;
    };
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    r
}

async fn models() -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": "normal"}, {"id": "long"}]}))
}

/// Starts the upstream; returns its state and its `/v1` base URL.
async fn upstream() -> (Arc<Upstream>, String) {
    let state = Arc::new(Upstream::default());
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(completions))
        .route("/v1/models", get(models))
        .with_state(state.clone());
    (state, format!("http://{}/v1", serve(app).await))
}

async fn spool_in_front(base: &str, models: &[&str]) -> TestApp {
    let base = base.to_owned();
    let models: Vec<String> = models.iter().map(|m| (*m).to_owned()).collect();
    spawn_with(move |c| {
        c.backend = BackendKind::Openai;
        c.openai.base_url = Some(base);
        c.openai.models = models;
        c.openai.ttft_timeout = Duration::from_millis(500);
        c.openai.idle_timeout = Duration::from_millis(500);
    })
    .await
}

const ALL: [&str; 6] = ["normal", "slow", "hang", "error", "drop", "long"];

async fn ended(app: &TestApp, model: &str, max_tokens: u32) -> (Vec<SseEvent>, Value) {
    let id = app
        .create(json!({"model": model, "prompt": "hi", "max_tokens": max_tokens}))
        .await;
    let status = app.wait_terminal(&id).await;
    let (_, body) = app.read_events(&id, None).await;
    (parse_sse(&body), status)
}

#[tokio::test]
async fn a_normal_stream_is_relayed_with_the_upstream_usage() {
    let (_, base) = upstream().await;
    let app = spool_in_front(&base, &ALL).await;
    let (events, status) = ended(&app, "normal", 3).await;
    let tokens: Vec<String> = events
        .iter()
        .filter(|e| e.event == "token")
        .map(|e| e.json()["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tokens, [" a1", " a2", " a3"]);
    assert_eq!(status["status"], "completed");
    assert_eq!(status["finish_reason"], "length");
    assert_eq!(
        status["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 3})
    );
}

#[tokio::test]
async fn every_upstream_fault_ends_the_stream_with_a_clear_error() {
    let (_, base) = upstream().await;
    let app = spool_in_front(&base, &ALL).await;
    for (model, code, tokens, says) in [
        ("slow", "upstream_timeout", 0, "within"),
        ("hang", "upstream_timeout", 2, "silent"),
        ("error", "upstream_error", 0, "500: the GPU caught fire"),
        ("drop", "upstream_error", 2, "broke off"),
    ] {
        let (events, status) = ended(&app, model, 5).await;
        assert_eq!(status["status"], "failed", "{model}: {status}");
        let last = events.last().unwrap();
        assert_eq!(last.event, "error", "{model}");
        assert_eq!(last.json()["code"], code, "{model}");
        let message = last.json()["message"].as_str().unwrap().to_owned();
        assert!(message.contains(says), "{model}: {message}");
        assert!(
            !message.contains("127.0.0.1"),
            "{model}: the upstream's address leaked: {message}"
        );
        let n = events.iter().filter(|e| e.event == "token").count();
        assert_eq!(n, tokens, "{model}");
    }
    // Nothing listening: a clear error, not a hang.
    let dead = spool_in_front("http://127.0.0.1:9/v1", &["normal"]).await;
    let (events, _) = ended(&dead, "normal", 3).await;
    assert_eq!(events.last().unwrap().json()["code"], "upstream_error");
}

#[tokio::test]
async fn cancel_aborts_the_upstream_request_and_a_reader_leaving_does_not() {
    let (up, base) = upstream().await;
    let app = spool_in_front(&base, &ALL).await;

    // A reader that leaves: the upstream keeps streaming to spool.
    let id = app
        .create(json!({"model": "long", "prompt": "hi", "max_tokens": 100}))
        .await;
    let mut reader = app.open_events(&id).await;
    reader.read_until(|r| !r.bytes().is_empty()).await;
    drop(reader);
    let before = app.status(&id).await["last_seq"].as_u64().unwrap();
    app.wait_for(&id, "more tokens after the reader left", |s| {
        s["last_seq"].as_u64().unwrap_or(0) > before + 5
    })
    .await;
    assert_eq!(up.disconnects.load(Ordering::SeqCst), 0);

    // Cancel: the upstream sees its client go away, promptly.
    let r = app
        .client
        .post(app.url(&format!("/v1/streams/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while up.disconnects.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream never saw the cancel"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(app.wait_terminal(&id).await["status"], "cancelled");
}

#[tokio::test]
async fn models_come_from_the_upstream_when_none_are_configured() {
    let (_, base) = upstream().await;
    let app = spool_in_front(&base, &[]).await;
    let list: Value = app.client.get(app.url("/v1/models")).send_json().await;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["long", "normal"]);
}
