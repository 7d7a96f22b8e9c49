//! Limits that hold per API key (`SPOOL_MAX_ACTIVE_PER_KEY`, `SPOOL_MAX_QUEUED_PER_KEY`):
//! one key looping over HTTP and WebSocket at full speed cannot keep another key out;
//! the queue serves keys in turn; a key over its caps gets `429 overloaded` with
//! `Retry-After` on every surface, and a log line names its id; a socket's stream limit
//! counts the generations it started until they end, so `unsubscribe` does not free it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::helpers::*;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const A: &str = "alpha-key";
const B: &str = "beta-key";

async fn ws_as(base: &str, key: &str) -> Ws {
    let mut request = format!("{}/v1/ws", base.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

async fn ws_send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next JSON message, within the deadline.
async fn ws_next(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("no message before the deadline")
            .expect("the socket closed")
            .unwrap();
        if let Message::Text(t) = frame {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// Sends `msg` with `ref` and returns the first message that carries that `ref` back.
async fn ws_answer(ws: &mut Ws, reference: &str, mut msg: Value) -> Value {
    msg["ref"] = json!(reference);
    ws_send(ws, msg).await;
    loop {
        let m = ws_next(ws).await;
        if m["ref"] == reference {
            return m;
        }
    }
}

fn post(app: &TestApp, key: &str, body: Value) -> reqwest::RequestBuilder {
    app.client
        .post(app.url("/v1/streams"))
        .bearer_auth(key)
        .json(&body)
}

/// Key A runs as fast as it can over HTTP (eight loops) and WebSocket (two sockets
/// generating and unsubscribing); key B is still admitted, and its first token comes
/// within a few seconds.
#[tokio::test]
async fn one_key_at_full_speed_cannot_keep_another_out() {
    let app = spawn_with(|c| {
        c.auth.api_keys = vec![A.into(), B.into()];
        c.limits.max_active = 4;
        c.limits.max_queued = 8;
        c.mock.rate = 50.0;
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (client, url) = (app.client.clone(), app.url("/v1/streams"));
        let (stop, refused) = (stop.clone(), refused.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = client
                    .post(&url)
                    .bearer_auth(A)
                    .json(&json!({"prompt": "x", "max_tokens": 20}))
                    .send()
                    .await
                    .unwrap();
                if r.status() == 429 {
                    assert!(r.headers().contains_key("retry-after"));
                    let body: Value = r.json().await.unwrap();
                    assert_eq!(body["error"]["code"], "overloaded", "{body}");
                    refused.fetch_add(1, Ordering::Relaxed);
                } else {
                    assert_eq!(r.status(), 201);
                }
            }
        }));
    }
    for socket in 0..2 {
        let base = app.base.clone();
        let (stop, refused) = (stop.clone(), refused.clone());
        load.push(tokio::spawn(async move {
            let mut ws = ws_as(&base, A).await;
            let generate = json!({"type": "generate", "prompt": "x", "max_tokens": 20});
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let m = ws_answer(&mut ws, &format!("{socket}-{n}"), generate.clone()).await;
                match (m["type"].as_str(), m["code"].as_str()) {
                    (Some("started"), _) => {
                        let id = m["stream_id"].clone();
                        ws_send(&mut ws, json!({"type": "unsubscribe", "stream_id": id})).await;
                    }
                    (Some("error"), Some("overloaded" | "too_many_streams")) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("unexpected answer {other:?}: {m}"),
                }
            }
        }));
    }
    // A is saturated once it is being refused.
    let until = tokio::time::Instant::now() + DEADLINE;
    while refused.load(Ordering::Relaxed) < 20 {
        assert!(
            tokio::time::Instant::now() < until,
            "key A was never refused"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let asked = tokio::time::Instant::now();
    let r = post(&app, B, json!({"prompt": "x", "max_tokens": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        201,
        "key B was refused: {}",
        r.text().await.unwrap()
    );
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut events = SseReader::open(
        app.client
            .get(app.url(&format!("/v1/streams/{id}/events")))
            .bearer_auth(B),
        DEADLINE,
    )
    .await;
    assert!(
        events
            .read_until(|r| r.events().iter().any(|e| e.event == "token"))
            .await
    );
    let waited = asked.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "key B waited {waited:?} for its first token"
    );
    stop.store(true, Ordering::Relaxed);
    for task in load {
        tokio::time::timeout(DEADLINE, task)
            .await
            .expect("a load loop hung")
            .unwrap();
    }
    assert!(app.metric("spool_rejected_key_limit_total").await >= 1.0);
}

/// With no per-key caps (`0`), one key may fill the queue, but the queue serves keys in
/// turn: another key's one request is served after at most one more of the first's.
#[tokio::test]
async fn the_queue_serves_keys_in_turn() {
    let app = spawn_with(|c| {
        c.auth.api_keys = vec![A.into(), B.into()];
        c.limits.max_active = 1;
        c.limits.max_queued = 50;
        c.limits.max_active_per_key = Some(0);
        c.limits.max_queued_per_key = Some(0);
        c.mock.rate = 100.0;
    })
    .await;
    let mut a_streams = Vec::new();
    // A second each: all twenty are queued before the first ends.
    for _ in 0..20 {
        let r = post(&app, A, json!({"prompt": "x", "max_tokens": 100}))
            .send_json()
            .await;
        a_streams.push(r["id"].as_str().unwrap().to_owned());
    }
    let b = post(&app, B, json!({"prompt": "x", "max_tokens": 10}))
        .send_json()
        .await;
    let b = b["id"].as_str().unwrap().to_owned();
    let status = |id: String, key: &'static str| {
        let request = app
            .client
            .get(app.url(&format!("/v1/streams/{id}")))
            .bearer_auth(key);
        async move { request.send_json().await }
    };
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let s = status(b.clone(), B).await;
        if s["status"] != "queued" {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "B never ran: {s}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut done = 0;
    for id in &a_streams {
        if status(id.clone(), A).await["status"] == "completed" {
            done += 1;
        }
    }
    assert!(
        done <= 2,
        "B ran only after {done} of A's streams (first come, first served would be 20)"
    );
}

/// Past its caps a key gets `429 overloaded` with `Retry-After` from every surface —
/// `POST /v1/streams`, the OpenAI facade, a WebSocket `generate` and `session.say` —
/// while another key is served; once its streams end it is served again.
#[tokio::test]
async fn a_key_over_its_caps_is_refused_on_every_surface() {
    let app = spawn_with(|c| {
        c.auth.api_keys = vec![A.into(), B.into()];
        c.limits.max_active_per_key = Some(1);
        c.limits.max_queued_per_key = Some(1);
        c.mock.rate = 20.0;
    })
    .await;
    let long = json!({"prompt": "x", "max_tokens": 10_000});
    let mut held = Vec::new();
    for _ in 0..2 {
        let r = post(&app, A, long.clone()).send_json().await;
        held.push(r["id"].as_str().unwrap().to_owned());
    }
    let r = post(&app, A, long.clone()).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");

    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(A)
        .json(&json!({"model": "mock", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));

    let mut ws = ws_as(&app.base, A).await;
    let m = ws_answer(
        &mut ws,
        "g",
        json!({"type": "generate", "prompt": "x", "max_tokens": 3}),
    )
    .await;
    assert_eq!(
        (m["type"].as_str(), m["code"].as_str()),
        (Some("error"), Some("overloaded")),
        "{m}"
    );
    let m = ws_answer(
        &mut ws,
        "s",
        json!({"type": "session.say", "content": "hi"}),
    )
    .await;
    assert_eq!(m["code"], "overloaded", "{m}");

    // Another key is not held back.
    let r = post(&app, B, json!({"prompt": "x", "max_tokens": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // A's streams end: it is served again.
    for id in &held {
        let r = app
            .client
            .post(app.url(&format!("/v1/streams/{id}/cancel")))
            .bearer_auth(A)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let r = post(&app, A, json!({"prompt": "x", "max_tokens": 1}))
            .send()
            .await
            .unwrap();
        if r.status() == 201 {
            break;
        }
        assert_eq!(r.status(), 429);
        assert!(tokio::time::Instant::now() < until, "A stayed refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(app.metric("spool_rejected_key_limit_total").await >= 4.0);
}

/// The defaults: with two keys, half of each global limit per key; with one key, none.
#[tokio::test]
async fn by_default_a_key_gets_half_of_the_limits_when_there_are_several() {
    let two = spawn_with(|c| {
        c.auth.api_keys = vec![A.into(), B.into()];
        c.limits.max_active = 2;
        c.limits.max_queued = 2;
        c.mock.rate = 20.0;
    })
    .await;
    let long = json!({"prompt": "x", "max_tokens": 10_000});
    let codes = async |app: &TestApp| {
        let mut codes = Vec::new();
        for _ in 0..5 {
            codes.push(
                post(app, A, long.clone())
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16(),
            );
        }
        codes
    };
    // One running and one queued of A's; B still has room.
    assert_eq!(codes(&two).await, [201, 201, 429, 429, 429]);
    assert_eq!(
        post(&two, B, long.clone()).send().await.unwrap().status(),
        201
    );

    let one = spawn_with(|c| {
        c.auth.api_keys = vec![A.into()];
        c.limits.max_active = 2;
        c.limits.max_queued = 2;
        c.mock.rate = 20.0;
    })
    .await;
    assert_eq!(codes(&one).await, [201, 201, 201, 201, 429]);
}

/// The log names the throttled key's id (never the key), in the real binary's logs.
#[tokio::test]
async fn a_throttled_key_is_named_in_the_log() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let server = crate::process::start(
        &dir.path().join("throttle.db"),
        &[
            ("SPOOL_API_KEYS", "alpha-key,beta-key"),
            ("SPOOL_MAX_ACTIVE_PER_KEY", "1"),
            ("SPOOL_MAX_QUEUED_PER_KEY", "1"),
            ("SPOOL_MOCK_RATE", "20"),
        ],
        DEADLINE,
    );
    let client = reqwest::Client::new();
    let mut codes = Vec::new();
    for _ in 0..3 {
        let r = client
            .post(format!("{}/v1/streams", server.base))
            .bearer_auth(A)
            .json(&json!({"prompt": "x", "max_tokens": 10_000}))
            .send()
            .await
            .unwrap();
        codes.push(r.status().as_u16());
    }
    assert_eq!(codes, [201, 201, 429]);
    let digest = sha2::Sha256::digest(A.as_bytes());
    let id: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let id = format!("key_{id}");
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let lines = server.log_lines();
        if let Some(line) = lines.iter().find(|l| l.contains("key throttled")) {
            assert!(line.contains(&id), "the line does not name {id}: {line}");
            assert!(
                !lines.iter().any(|l| l.contains(A)),
                "a key reached the log"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "no throttle line: {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A socket's stream limit counts the generations it started until they end: an
/// `unsubscribe` does not make room while the generation runs on; its end does.
#[tokio::test]
async fn unsubscribe_does_not_free_a_sockets_stream_limit() {
    let app = spawn_with(|c| {
        c.ws.max_streams = 2;
        c.mock.rate = 20.0;
    })
    .await;
    let mut ws = ws_as(&app.base, "unused").await;
    let long = json!({"type": "generate", "prompt": "x", "max_tokens": 10_000});
    let mut running = Vec::new();
    for n in 0..2 {
        let m = ws_answer(&mut ws, &format!("g{n}"), long.clone()).await;
        assert_eq!(m["type"], "started", "{m}");
        let id = m["stream_id"].as_str().unwrap().to_owned();
        ws_send(&mut ws, json!({"type": "unsubscribe", "stream_id": id})).await;
        running.push(id);
    }
    let m = ws_answer(&mut ws, "g2", long.clone()).await;
    assert_eq!(m["code"], "too_many_streams", "{m}");
    // Following again a generation it started takes no more room.
    ws_send(
        &mut ws,
        json!({"type": "subscribe", "stream_id": running[0]}),
    )
    .await;
    loop {
        let m = ws_next(&mut ws).await;
        if m["stream_id"] == running[0].as_str() {
            assert_eq!(m["type"], "token", "{m}");
            break;
        }
    }
    ws_send(
        &mut ws,
        json!({"type": "unsubscribe", "stream_id": running[0]}),
    )
    .await;

    // One ends (cancelled): there is room again. Short generations that asked to be
    // cancelled on disconnect leave nothing behind once they end either.
    ws_send(&mut ws, json!({"type": "cancel", "stream_id": running[0]})).await;
    app.wait_terminal(&running[0]).await;
    for n in 0..5 {
        let m = ws_answer(
            &mut ws,
            &format!("short{n}"),
            json!({"type": "generate", "prompt": "x", "max_tokens": 1, "cancel_on_disconnect": true}),
        )
        .await;
        assert_eq!(m["type"], "started", "{m}");
        let id = m["stream_id"].as_str().unwrap().to_owned();
        app.wait_terminal(&id).await;
    }
    drop(ws);
    assert_eq!(app.status(&running[1]).await["status"], "running");
}
