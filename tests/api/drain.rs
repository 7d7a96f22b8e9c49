//! Deploys lose no answer (issue 15): SIGTERM on the real binary with readers
//! connected. `/readyz` turns 503 and new streams are refused at once; running streams
//! go on with their readers served (and resumable) for `SPOOL_DRAIN_TIMEOUT`; a stream
//! that ends meanwhile ends normally; then what still runs is left for the next process
//! (a backend that can continue) or ends `interrupted` — and every connected reader has
//! that end, or resumes on the next process to exactly the rest.

use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;
use crate::process::Server;

fn start(db: &std::path::Path, env: &[(&str, &str)]) -> Server {
    crate::process::start(db, env, DEADLINE)
}

fn sigterm(server: &Server) {
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
}

/// Waits for the process to exit by `within`; returns its exit code.
async fn exit_code(server: &mut Server, within: Duration) -> Option<i32> {
    let until = Instant::now() + within;
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status.code();
        }
        assert!(Instant::now() < until, "still running after {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn open(client: &reqwest::Client, server: &Server, max_tokens: u32) -> (String, SseReader) {
    let r = client
        .post(format!("{}/v1/streams", server.base))
        .header("Accept", "text/event-stream")
        .json(&json!({"prompt": "x", "max_tokens": max_tokens}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-stream-id"].to_str().unwrap().to_owned();
    let mut reader = SseReader::new(r, DEADLINE);
    reader.until(3).await;
    (id, reader)
}

fn ids(events: &[SseEvent]) -> Vec<u64> {
    events.iter().map(|e| e.id.unwrap()).collect()
}

#[tokio::test]
async fn sigterm_drains_running_streams_and_every_reader_gets_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("drain.db");
    let client = reqwest::Client::new();
    let drain = Duration::from_secs(3);
    let mut server = start(
        &db,
        &[("SPOOL_MOCK_RATE", "100"), ("SPOOL_DRAIN_TIMEOUT", "3s")],
    );
    // Three streams that end within the drain (1.5 s of tokens), two that do not.
    let mut short = Vec::new();
    for _ in 0..3 {
        short.push(open(&client, &server, 150).await);
    }
    let mut long = Vec::new();
    for _ in 0..2 {
        long.push(open(&client, &server, 30_000).await);
    }
    let (ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/v1/ws",
        server.base.trim_start_matches("http://")
    ))
    .await
    .unwrap();
    let signalled = Instant::now();
    sigterm(&server);

    // At once: not ready, and no new stream on either surface.
    let until = Instant::now() + DEADLINE;
    loop {
        let r = client
            .get(format!("{}/readyz", server.base))
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["shutting_down"], true, "{body}");
            break;
        }
        assert!(Instant::now() < until, "/readyz never said 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = client
        .post(format!("{}/v1/streams", server.base))
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "shutting_down");
    let (mut sink, mut frames) = ws.split();
    sink.send(Message::text(
        json!({"type": "generate", "ref": "late", "prompt": "x"}).to_string(),
    ))
    .await
    .unwrap();
    let refused = loop {
        match tokio::time::timeout(DEADLINE, frames.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => break serde_json::from_str::<Value>(t.as_str()).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(refused["code"], "shutting_down", "{refused}");

    // During the drain a reader can still resume a running stream.
    let resumed_id = long[0].0.clone();
    let resumed = SseReader::open(
        client
            .get(format!("{}/v1/streams/{resumed_id}/events", server.base))
            .header("Last-Event-ID", "2"),
        DEADLINE,
    )
    .await;

    // Every reader reads to the end of its response: the stream's own end.
    let mut seen = Vec::new();
    for (id, reader) in short.into_iter().chain(long) {
        let body = tokio::time::timeout(DEADLINE, reader.read_to_close())
            .await
            .expect("a response did not end");
        seen.push((id, parse_sse(&body)));
    }
    let resumed = parse_sse(&resumed.read_to_close().await);
    let code = exit_code(&mut server, drain + Duration::from_secs(8) + DEADLINE).await;
    assert_eq!(code, Some(0));
    assert!(
        signalled.elapsed() < drain + Duration::from_secs(8),
        "took {:?}",
        signalled.elapsed()
    );

    for (i, (_, events)) in seen.iter().enumerate() {
        assert_eq!(ids(events), (1..=events.len() as u64).collect::<Vec<_>>());
        let last = events.last().unwrap();
        if i < 3 {
            assert_eq!(last.event, "done", "{}", last.data);
            assert_eq!(last.json()["finish_reason"], "length");
            assert_eq!(events.len(), 152);
        } else {
            assert_eq!(last.event, "error", "{}", last.data);
            assert_eq!(last.json()["code"], "interrupted");
        }
    }
    assert_eq!(resumed.first().unwrap().id, Some(3));
    assert_eq!(
        resumed.last(),
        seen[3].1.last(),
        "the resumed reader got the end too"
    );

    // What the readers saw is what is stored, to the last event; nothing runs.
    let server = start(&db, &[]);
    for (id, events) in &seen {
        let stored = client
            .get(format!("{}/v1/streams/{id}/events", server.base))
            .send_text()
            .await;
        assert_eq!(parse_sse(&stored), *events, "{id}");
        let s: Value = client
            .get(format!("{}/v1/streams/{id}", server.base))
            .send_json()
            .await;
        assert!(
            s["status"] == "completed" || s["status"] == "interrupted",
            "{s}"
        );
    }
}

#[tokio::test]
async fn sigterm_leaves_continuable_streams_and_the_next_process_goes_on_with_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("handover.db");
    let client = reqwest::Client::new();
    let env = [
        ("SPOOL_MOCK_CONTINUE", "true"),
        ("SPOOL_MOCK_RATE", "100"),
        ("SPOOL_DRAIN_TIMEOUT", "1s"),
    ];
    let mut server = start(&db, &env);
    let mut readers = Vec::new();
    for _ in 0..2 {
        readers.push(open(&client, &server, 600).await);
    }
    sigterm(&server);
    let mut seen = Vec::new();
    for (id, reader) in readers {
        let body = tokio::time::timeout(DEADLINE, reader.read_to_close())
            .await
            .expect("a response did not end");
        let events = parse_sse(&body);
        // No end: the stream was left running, not interrupted.
        assert_eq!(events.last().unwrap().event, "token", "{body}");
        seen.push((id, events));
    }
    assert_eq!(exit_code(&mut server, DEADLINE).await, Some(0));
    assert!(
        server
            .log_lines()
            .iter()
            .any(|l| l.contains("left running")),
        "{:?}",
        server.log_lines()
    );

    // The next process continues each stream; its reader resumes with Last-Event-ID.
    let next = start(&db, &env);
    for (id, events) in &seen {
        let last = events.last().unwrap().id.unwrap();
        let rest = client
            .get(format!("{}/v1/streams/{id}/events", next.base))
            .header("Last-Event-ID", last.to_string())
            .timeout(DEADLINE)
            .send_text()
            .await;
        let all: Vec<SseEvent> = events.iter().cloned().chain(parse_sse(&rest)).collect();
        assert_eq!(
            ids(&all),
            (1..=602).collect::<Vec<_>>(),
            "a gap or a duplicate"
        );
        assert_eq!(all.last().unwrap().event, "done");
        let expected: String = (1..=600).map(|i| format!(" tok{i}")).collect();
        assert_eq!(crate::sse::text(&all), expected);
        assert!(all.iter().all(|e| e.event != "error"));
    }
}
