//! kill -9 in the middle of a real model's stream: the restarted server continues it
//! from its stored token ids, readers see no gap, and with a seed the text is exactly
//! what an uninterrupted run produces.

use futures_util::StreamExt;
use serde_json::Value;

use crate::server::{DEADLINE, Event, ask, model_path};

use crate::process::Server;

/// The real binary on port 0, with the local model, ready.
async fn start(db: &std::path::Path) -> Server {
    let db = db.to_path_buf();
    let model = model_path().display().to_string();
    let server = tokio::task::spawn_blocking(move || {
        crate::process::start(
            &db,
            &[
                ("SPOOL_BACKEND", "local"),
                ("SPOOL_MODEL_PATH", &model),
                ("CANDLE_NUM_THREADS", "1"),
            ],
            DEADLINE,
        )
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(r) = client.get(format!("{}/readyz", server.base)).send().await
            && r.status() == 200
        {
            return server;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the model never got ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn parse(body: &str) -> Vec<Event> {
    body.split("\n\n")
        .filter_map(|block| {
            let mut id = None;
            let mut event = String::new();
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.parse().unwrap());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(v.to_owned());
                }
            }
            data.map(|data| Event { id, event, data })
        })
        .collect()
}

fn text(events: &[Event]) -> String {
    events
        .iter()
        .filter(|e| e.event == "token")
        .map(|e| e.json()["text"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn kill_9_mid_stream_then_the_restart_continues_it_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let client = reqwest::Client::new();
    let request = ask("Write a short story about a lighthouse keeper.", 150, 11);

    let mut server = start(&db).await;
    // The uninterrupted run, for reference.
    let reference = client
        .post(format!("{}/v1/streams?stream=true", server.base))
        .json(&request)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let reference = parse(&reference);
    assert_eq!(reference.last().unwrap().event, "done");
    let expected = text(&reference);

    // The same request again, killed after a few tokens.
    let r = client
        .post(format!("{}/v1/streams?stream=true", server.base))
        .json(&request)
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-stream-id"].to_str().unwrap().to_owned();
    let mut body = r.bytes_stream();
    let mut seen = Vec::new();
    while parse(std::str::from_utf8(&seen).unwrap_or_default())
        .iter()
        .filter(|e| e.event == "token")
        .count()
        < 12
    {
        let chunk = tokio::time::timeout(DEADLINE, body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.extend_from_slice(&chunk);
    }
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    let seen = String::from_utf8(seen).unwrap();
    // Only whole events count as seen.
    let seen = &seen[..seen.rfind("\n\n").unwrap() + 2];
    let seen = parse(seen);
    let last_seen = seen.last().unwrap().id.unwrap();
    assert_ne!(
        seen.last().unwrap().event,
        "done",
        "the stream ended before the kill"
    );

    // The reader comes back with its Last-Event-ID and reads on to the end.
    let server = start(&db).await;
    let rest = client
        .get(format!("{}/v1/streams/{id}/events", server.base))
        .header("Last-Event-ID", last_seen.to_string())
        .timeout(DEADLINE)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rest = parse(&rest);
    let all: Vec<Event> = seen.iter().chain(rest.iter()).cloned().collect();
    let ids: Vec<u64> = all.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<_>>(),
        "a gap or a duplicate"
    );
    assert_eq!(all.last().unwrap().event, "done", "{:?}", all.last());
    assert_eq!(
        text(&all),
        expected,
        "the continued text differs from an uninterrupted run"
    );
    let status: Value = client
        .get(format!("{}/v1/streams/{id}", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(
        status["usage"]["completion_tokens"],
        reference.last().unwrap().json()["usage"]["completion_tokens"]
    );
}
