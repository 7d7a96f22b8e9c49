//! Request ids and logs: every response echoes its `X-Request-Id` (the client's when it
//! is sane, else a fresh `req_…`), and the real binary's logs — JSON or text — tie a
//! request to everything its stream logged afterwards.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::*;
use crate::process::Server;

fn request_id(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-request-id")
        .expect("no X-Request-Id in the response")
        .to_str()
        .unwrap()
        .to_owned()
}

/// Reads an SSE response until its `done` event.
async fn read_to_done(r: reqwest::Response) {
    let mut reader = SseReader::new(r, DEADLINE);
    let done = reader
        .read_until(|r| r.events().iter().any(|e| e.event == "done"))
        .await;
    assert!(done, "the response ended before done: {}", reader.text());
}

/// A field of a JSON log line: the event's own, else the innermost span's that has it.
fn field(line: &Value, name: &str) -> Option<String> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if let Some(v) = line.get(name) {
        return Some(text(v));
    }
    line["spans"]
        .as_array()?
        .iter()
        .rev()
        .find_map(|span| span.get(name).map(text))
}

/// Waits until the server has logged a line satisfying `found`; returns every line so
/// far, parsed (each must be JSON).
async fn wait_for_json_log(
    server: &Server,
    what: &str,
    found: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let until = Instant::now() + DEADLINE;
    loop {
        let lines: Vec<Value> = server
            .log_lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        if lines.iter().any(&found) {
            return lines;
        }
        assert!(Instant::now() < until, "no log line {what}: {lines:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The one line with `message` for `stream`.
fn stream_line<'a>(lines: &'a [Value], message: &str, stream: &str) -> &'a Value {
    let found: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == message && field(l, "stream_id").as_deref() == Some(stream))
        .collect();
    assert_eq!(found.len(), 1, "{message} for {stream}: {lines:#?}");
    found[0]
}

#[tokio::test]
async fn a_request_id_reaches_the_json_logs_of_its_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::process::start(
        &dir.path().join("logs.db"),
        &[("SPOOL_LOG_FORMAT", "json")],
        DEADLINE,
    );
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/v1/streams?stream=true", server.base))
        .header("X-Request-Id", "my-req-1")
        .json(&json!({"prompt": "x", "max_tokens": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(request_id(&r), "my-req-1");
    let stream = r.headers()["x-stream-id"].to_str().unwrap().to_owned();
    read_to_done(r).await;

    let lines = wait_for_json_log(&server, "stream ended", |l| {
        l["message"] == "stream ended" && field(l, "stream_id").as_deref() == Some(&stream)
    })
    .await;
    // The request's own line.
    let response = lines
        .iter()
        .find(|l| {
            l["message"] == "response" && field(l, "request_id").as_deref() == Some("my-req-1")
        })
        .unwrap_or_else(|| panic!("no response line: {lines:#?}"));
    assert_eq!(response["status"], 200, "{response}");
    assert_eq!(field(response, "method").as_deref(), Some("POST"));
    assert_eq!(field(response, "path").as_deref(), Some("/v1/streams"));
    // The stream's start and end, long after the handler returned, under the same id.
    let started = stream_line(&lines, "stream started", &stream);
    assert_eq!(
        field(started, "request_id").as_deref(),
        Some("my-req-1"),
        "{started}"
    );
    assert_eq!(started["max_tokens"], 5, "{started}");
    let ended = stream_line(&lines, "stream ended", &stream);
    assert_eq!(
        field(ended, "request_id").as_deref(),
        Some("my-req-1"),
        "{ended}"
    );
    assert_eq!(ended["status"], "completed", "{ended}");
    assert_eq!(ended["finish_reason"], "length", "{ended}");
    assert_eq!(ended["completion_tokens"], 5, "{ended}");
    assert_eq!(ended["level"], "INFO", "{ended}");

    // A cancel: its request logs it under its own id, the stream ends under the id that
    // started it.
    let r = client
        .post(format!("{}/v1/streams", server.base))
        .header("X-Request-Id", "my-req-2")
        .json(&json!({"prompt": "x", "max_tokens": 30000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let long: Value = r.json().await.unwrap();
    let long = long["id"].as_str().unwrap().to_owned();
    let r = client
        .post(format!("{}/v1/streams/{long}/cancel", server.base))
        .header("X-Request-Id", "my-cancel-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(request_id(&r), "my-cancel-1");
    let lines = wait_for_json_log(&server, "the cancelled stream's end", |l| {
        l["message"] == "stream ended" && field(l, "stream_id").as_deref() == Some(&long)
    })
    .await;
    let cancel = stream_line(&lines, "cancel requested", &long);
    assert_eq!(
        field(cancel, "request_id").as_deref(),
        Some("my-cancel-1"),
        "{cancel}"
    );
    let ended = stream_line(&lines, "stream ended", &long);
    assert_eq!(
        field(ended, "request_id").as_deref(),
        Some("my-req-2"),
        "{ended}"
    );
    assert_eq!(ended["status"], "cancelled", "{ended}");
}

#[tokio::test]
async fn a_websockets_streams_log_under_its_request_id_in_text_logs() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::process::start(&dir.path().join("ws-logs.db"), &[], DEADLINE);
    let mut request = format!("{}/v1/ws", server.base.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("x-request-id", "my-ws-1".parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "my-ws-1");
    ws.send(Message::text(
        json!({"type": "generate", "ref": "a", "prompt": "x", "max_tokens": 3}).to_string(),
    ))
    .await
    .unwrap();
    let mut stream = None;
    loop {
        let message = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Message::Text(text) = message else {
            continue;
        };
        let v: Value = serde_json::from_str(&text).unwrap();
        match v["type"].as_str() {
            Some("started") => stream = Some(v["stream_id"].as_str().unwrap().to_owned()),
            Some("done") => break,
            Some("error") => panic!("{v}"),
            _ => {}
        }
    }
    let stream = stream.expect("no started message");

    // `grep my-ws-1` finds the stream's start and end.
    let until = Instant::now() + DEADLINE;
    let ended = loop {
        let lines = server.log_lines();
        if let Some(line) = lines
            .iter()
            .find(|l| l.contains("stream ended") && l.contains(&stream))
        {
            break (line.clone(), lines);
        }
        assert!(Instant::now() < until, "no end line: {lines:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (ended, lines) = ended;
    assert!(ended.contains("request_id=my-ws-1"), "{ended}");
    assert!(
        ended.contains("status=\"completed\"") || ended.contains("status=completed"),
        "{ended}"
    );
    let started = lines
        .iter()
        .find(|l| l.contains("stream started") && l.contains(&stream))
        .unwrap_or_else(|| panic!("no start line: {lines:#?}"));
    assert!(started.contains("request_id=my-ws-1"), "{started}");
}

#[tokio::test]
async fn requests_without_a_sane_id_get_a_fresh_one() {
    let app = spawn_app().await;
    let get = |id: Option<&'static str>| {
        let mut r = app.client.get(app.url("/v1/models"));
        if let Some(id) = id {
            r = r.header("X-Request-Id", id);
        }
        async move { request_id(&r.send().await.unwrap()) }
    };
    let a = get(None).await;
    let b = get(None).await;
    assert!(a.starts_with("req_") && b.starts_with("req_"), "{a} {b}");
    assert_ne!(a, b);

    let longest: &'static str = "a".repeat(128).leak();
    assert_eq!(get(Some(longest)).await, longest);
    let too_long: &'static str = "a".repeat(129).leak();
    for bad in [too_long, "bad\tid", "two words", " "] {
        let got = get(Some(bad)).await;
        assert!(got.starts_with("req_") && got != bad, "{bad:?} → {got:?}");
    }
    // A control character that HTTP lets through (DEL is not visible ASCII).
    let r = app
        .client
        .get(app.url("/v1/models"))
        .header(
            "X-Request-Id",
            reqwest::header::HeaderValue::from_bytes(b"id\xffx").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert!(request_id(&r).starts_with("req_"));
}

#[tokio::test]
async fn errors_and_event_streams_echo_the_request_id() {
    let app = spawn_with(|c| {
        c.auth.api_keys = vec!["k".into()];
        c.auth.rate_limit = 2;
    })
    .await;
    let send = |r: reqwest::RequestBuilder, id: &'static str| async move {
        let r = r.header("X-Request-Id", id).send().await.unwrap();
        (r.status().as_u16(), request_id(&r))
    };
    let c = &app.client;
    assert_eq!(
        send(c.get(app.url("/v1/models")), "e-401").await,
        (401, "e-401".into())
    );
    assert_eq!(
        send(c.get(app.url("/no/such/route")), "e-404").await,
        (404, "e-404".into())
    );
    let created: Value = c
        .post(app.url("/v1/streams"))
        .bearer_auth("k")
        .json(&json!({"prompt": "x", "max_tokens": 2}))
        .send_json()
        .await;
    let events = format!(
        "/v1/streams/{}/events?token={}",
        created["id"].as_str().unwrap(),
        created["read_token"].as_str().unwrap()
    );
    let r = c
        .get(app.url(&events))
        .header("X-Request-Id", "e-sse")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(request_id(&r), "e-sse");
    read_to_done(r).await;
    assert_eq!(
        send(
            c.get(app.url("/v1/streams/st_nope")).bearer_auth("k"),
            "e-404b"
        )
        .await,
        (404, "e-404b".into())
    );
    // The key's bucket (2 a minute) is empty now.
    assert_eq!(
        send(c.get(app.url("/v1/models")).bearer_auth("k"), "e-429").await,
        (429, "e-429".into())
    );
}
