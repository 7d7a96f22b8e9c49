//! kill -9: the real binary is killed mid-stream; a restart on the same file still has
//! every event a reader saw, and ends the stream with `interrupted` — or, when the
//! backend can continue, continues it with no gap.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;

use crate::process::Server;

fn start(db: &std::path::Path) -> Server {
    crate::process::start(db, &[], DEADLINE)
}

fn start_with(db: &std::path::Path, env: &[(&str, &str)]) -> Server {
    crate::process::start(db, env, DEADLINE)
}

/// Starts a stream of `max_tokens` over SSE and reads its first 20 events.
async fn start_reading(
    client: &reqwest::Client,
    server: &Server,
    max_tokens: u32,
) -> (String, SseReader) {
    let r = client
        .post(format!("{}/v1/streams", server.base))
        .header("Accept", "text/event-stream")
        .json(&json!({"prompt": "x", "max_tokens": max_tokens}))
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-stream-id"].to_str().unwrap().to_owned();
    let mut reader = SseReader::new(r, DEADLINE);
    reader.until(20).await;
    (id, reader)
}

#[tokio::test]
async fn kill_9_loses_no_event_a_reader_saw() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let client = reqwest::Client::new();

    let mut server = start(&db);
    let (id, reader) = start_reading(&client, &server, 10_000).await;
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    // Whatever else was in flight on the socket was committed before it was sent too.
    let seen = parse_sse(&reader.leftovers().await);

    let server = start(&db);
    let status: Value = client
        .get(format!("{}/v1/streams/{id}", server.base))
        .send_json()
        .await;
    assert_eq!(status["status"], "interrupted", "{status}");
    let stored = client
        .get(format!("{}/v1/streams/{id}/events", server.base))
        .send_text()
        .await;
    let stored = parse_sse(&stored);
    assert!(stored.len() > seen.len(), "the terminal event is missing");
    assert_eq!(
        seen[..],
        stored[..seen.len()],
        "an event a reader saw was lost or changed"
    );
    let ids: Vec<u64> = stored.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, (1..=stored.len() as u64).collect::<Vec<_>>());
    let last = stored.last().unwrap();
    assert_eq!(last.event, "error");
    assert_eq!(last.json()["code"], "interrupted");
    assert_eq!(status["last_seq"], stored.len());
}

/// With no drain (`SPOOL_DRAIN_TIMEOUT=0s`), SIGTERM stops at once: the stream ends
/// `interrupted`, its reader gets that end, and the process exits within 10 s.
#[tokio::test]
async fn sigterm_with_no_drain_ends_streams_flushes_and_exits_within_10s() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("term.db");
    let client = reqwest::Client::new();

    let mut server = start_with(&db, &[("SPOOL_DRAIN_TIMEOUT", "0s")]);
    let r = client
        .post(format!("{}/v1/streams", server.base))
        .header("Accept", "text/event-stream")
        .json(&json!({"prompt": "x", "max_tokens": 10_000}))
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-stream-id"].to_str().unwrap().to_owned();
    let mut reader = SseReader::new(r, DEADLINE);
    reader.until(5).await;
    let signalled = Instant::now();
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // The open response ends by itself.
    let seen = tokio::time::timeout(DEADLINE, reader.read_to_close())
        .await
        .expect("the SSE response did not end");
    let code = loop {
        if let Some(code) = server.child.try_wait().unwrap() {
            break code;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(code.success(), "exit status {code}");
    let seen = parse_sse(&seen);

    let server = start(&db);
    let stored = client
        .get(format!("{}/v1/streams/{id}/events", server.base))
        .send_text()
        .await;
    let stored = parse_sse(&stored);
    assert_eq!(
        seen[..],
        stored[..],
        "the reader got every event, its end included"
    );
    let last = stored.last().unwrap();
    assert_eq!(
        (last.event.as_str(), last.json()["code"].as_str()),
        ("error", Some("interrupted"))
    );
    let ids: Vec<u64> = stored.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, (1..=stored.len() as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn kill_9_then_a_continuable_stream_goes_on_with_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("continue.db");
    let client = reqwest::Client::new();
    let env = [("SPOOL_MOCK_CONTINUE", "true"), ("SPOOL_MOCK_RATE", "200")];

    let mut server = start_with(&db, &env);
    let (id, reader) = start_reading(&client, &server, 300).await;
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    let seen = reader.events().to_vec();
    let last_seen = seen.last().unwrap().id.unwrap();
    assert!(last_seen < 250, "the stream ended before the kill");

    // The reader comes back to the restarted server with its Last-Event-ID and reads
    // to the end: the stream was continued, not interrupted.
    let server = start_with(&db, &env);
    let rest = client
        .get(format!("{}/v1/streams/{id}/events", server.base))
        .header("Last-Event-ID", last_seen.to_string())
        .timeout(DEADLINE)
        .send_text()
        .await;
    let rest = parse_sse(&rest);
    let all: Vec<_> = seen.iter().chain(rest.iter()).cloned().collect();
    let ids: Vec<u64> = all.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, (1..=302).collect::<Vec<_>>(), "a gap or a duplicate");
    let last = all.last().unwrap();
    assert_eq!(last.event, "done", "{:?}", last.data);
    assert_eq!(last.json()["finish_reason"], "length");
    assert_eq!(last.json()["usage"]["completion_tokens"], 300);
    // Exactly the text of an unbroken run.
    let text = crate::sse::text(&all);
    let expected: String = (1..=300).map(|i| format!(" tok{i}")).collect();
    assert_eq!(text, expected);
    let status: Value = client
        .get(format!("{}/v1/streams/{id}", server.base))
        .send_json()
        .await;
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["text"], expected);
}
