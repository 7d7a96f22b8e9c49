//! kill -9 in the middle of a real model's stream: the restarted server continues it
//! from its stored token ids, readers see no gap, and with a seed the text is exactly
//! what an uninterrupted run produces.

use serde_json::Value;

use crate::process::Server;
use crate::server::{DEADLINE, ask, model_path};
use crate::sse::{SseEvent, SseReader, parse, text};

/// The real binary on port 0, with the local model, ready.
async fn start(db: &std::path::Path) -> Server {
    let db = db.to_path_buf();
    let model = model_path().display().to_string();
    tokio::task::spawn_blocking(move || {
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
    .unwrap()
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
    let mut reader = SseReader::new(r, DEADLINE);
    let tokens = reader
        .read_until(|r| r.events().iter().filter(|e| e.event == "token").count() >= 12)
        .await;
    assert!(tokens, "the stream ended before its 12th token");
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    // Only whole events count as seen.
    let seen = reader.into_events();
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
    let all: Vec<SseEvent> = seen.iter().chain(rest.iter()).cloned().collect();
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
