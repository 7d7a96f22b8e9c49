//! Abandonment (`SPOOL_ABANDON_AFTER`, SPEC §6): a stream no one has read for that long
//! is cancelled — `cancelled`, with a log line and `spool_streams_abandoned_total`; a
//! stream being read is not, and without the setting nothing is. Streams a client asked
//! to run unattended — a Responses API `background` response — are exempt.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn an_unread_stream_is_cancelled_with_a_log_line_and_a_metric() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::process::start(
        &dir.path().join("abandon.db"),
        &[("SPOOL_ABANDON_AFTER", "300ms"), ("SPOOL_MOCK_RATE", "20")],
        DEADLINE,
    );
    let client = reqwest::Client::new();
    let created = client
        .post(format!("{}/v1/streams", server.base))
        .json(&json!({"prompt": "x", "max_tokens": 10_000}))
        .send_json()
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let until = tokio::time::Instant::now() + DEADLINE;
    let status = loop {
        let s = client
            .get(format!("{}/v1/streams/{id}", server.base))
            .send_json()
            .await;
        if s["status"] != "running" && s["status"] != "queued" {
            break s;
        }
        assert!(tokio::time::Instant::now() < until, "never abandoned: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status["status"], "cancelled", "{status}");
    // Its events end like any cancelled stream's.
    let body = client
        .get(format!("{}/v1/streams/{id}/events", server.base))
        .send_text()
        .await;
    let events = parse_sse(&body);
    assert_contiguous(&events);
    assert_eq!(
        events.last().unwrap().json()["finish_reason"],
        "cancelled",
        "{body}"
    );
    assert_eq!(
        metric(&client, &server.base, "spool_streams_abandoned_total").await,
        1.0
    );
    let lines = server.log_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("stream abandoned") && l.contains(&id)),
        "no log line names the abandoned stream: {lines:#?}"
    );
}

#[tokio::test]
async fn a_stream_being_read_is_kept_until_its_readers_leave() {
    let app = spawn_with(|c| {
        c.limits.abandon_after = Duration::from_millis(300);
        c.mock.rate = 50.0;
    })
    .await;
    let id = app
        .create(json!({"prompt": "x", "max_tokens": 10_000}))
        .await;
    let mut reader = app.open_events(&id).await;
    // Read for several times the abandonment period.
    let reading = tokio::time::Instant::now();
    while reading.elapsed() < Duration::from_millis(1200) {
        assert!(reader.next_event().await.is_some());
    }
    assert_eq!(app.status(&id).await["status"], "running");
    drop(reader);
    let s = app.wait_terminal(&id).await;
    assert_eq!(s["status"], "cancelled", "{s}");
    assert_eq!(app.metric("spool_streams_abandoned_total").await, 1.0);
}

#[tokio::test]
async fn without_the_setting_an_unread_stream_runs_to_its_end() {
    let app = spawn_with(|c| c.mock.rate = 100.0).await;
    let id = app.create(json!({"prompt": "x", "max_tokens": 60})).await;
    let s = app.wait_terminal(&id).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(app.metric("spool_streams_abandoned_total").await, 0.0);
}

#[tokio::test]
async fn a_background_response_no_one_reads_runs_to_its_end() {
    let app = spawn_with(|c| {
        c.limits.abandon_after = Duration::from_millis(200);
        c.mock.rate = 50.0;
    })
    .await;
    let body = json!({"model": "mock", "input": "x", "max_output_tokens": 40});
    let mut ids = Vec::new();
    for background in [true, false] {
        let mut body = body.clone();
        body["background"] = json!(background);
        body["stream"] = json!(!background);
        // The streamed one's reader leaves at once: unread, it is abandoned.
        let r = app
            .client
            .post(app.url("/v1/responses"))
            .json(&body)
            .send()
            .await
            .unwrap();
        ids.push(r.headers()["x-stream-id"].to_str().unwrap().to_owned());
        drop(r);
    }
    let background = app.wait_terminal(&ids[0]).await;
    assert_eq!(background["status"], "completed", "{background}");
    assert_eq!(background["finish_reason"], "length");
    assert_eq!(background["text"], mock_text(40));
    let dropped = app.wait_terminal(&ids[1]).await;
    assert_eq!(dropped["status"], "cancelled", "{dropped}");
}
