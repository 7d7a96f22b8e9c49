//! A stream's life: disconnects, cancel, delete, failures, admission, listing,
//! stop sequences, many readers and retention.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn a_reader_that_disconnects_does_not_cancel() {
    let app = spawn_with(|c| c.mock.rate = 100.0).await;
    let id = app.create(json!({"prompt": "x", "max_tokens": 20})).await;
    let seen = read_n_events(&app, &id, 3).await; // then the connection is dropped
    assert_eq!(seen[2].id, Some(3));
    let s = app.wait_terminal(&id).await;
    assert_eq!(s["status"], "completed");
    assert_eq!(s["last_seq"], 22);
    let expected: String = (1..=20).map(|i| format!(" tok{i}")).collect();
    assert_eq!(s["text"], expected);
}

#[tokio::test]
async fn cancel_is_idempotent_and_ends_with_done_cancelled() {
    let app = spawn_with(|c| c.mock.stall_after = Some(2)).await;
    let id = app.create(json!({"prompt": "x", "max_tokens": 10})).await;
    read_n_events(&app, &id, 3).await;
    let url = app.url(&format!("/v1/streams/{id}/cancel"));
    let r = app.client.post(&url).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let s = app.wait_terminal(&id).await;
    assert_eq!(s["status"], "cancelled");
    assert_eq!(s["finish_reason"], "cancelled");
    let r = app.client.post(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "cancelled");

    let (_, body) = app.read_events(&id, None).await;
    let events = parse_sse(&body);
    let last = events.last().unwrap();
    assert_eq!((last.id, last.event.as_str()), (Some(4), "done"));
    assert_eq!(last.json()["finish_reason"], "cancelled");
    assert_eq!(last.json()["usage"]["completion_tokens"], 2);

    let r = app
        .client
        .post(app.url("/v1/streams/st_aaaaaaaaaaaaaaaaaaaaa/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn delete_cancels_then_removes_everything() {
    let app = spawn_with(|c| c.mock.stall_after = Some(1)).await;
    let id = app.create(json!({"prompt": "x"})).await;
    read_n_events(&app, &id, 2).await;
    let url = app.url(&format!("/v1/streams/{id}"));
    assert_eq!(app.client.delete(&url).send().await.unwrap().status(), 204);
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), 404);
    assert_eq!(app.read_events(&id, None).await.0, 404);
    assert_eq!(app.client.delete(&url).send().await.unwrap().status(), 404);
    let list: Value = app.client.get(app.url("/v1/streams")).send_json().await;
    assert_eq!(list["data"], json!([]));
}

#[tokio::test]
async fn backend_failure_ends_with_an_error_event() {
    let app = spawn_with(|c| c.mock.fail_after = Some(2)).await;
    let id = app.create(json!({"prompt": "x", "max_tokens": 10})).await;
    let s = app.wait_terminal(&id).await;
    assert_eq!(s["status"], "failed");
    assert_eq!(s["error"]["code"], "backend_error");
    let (_, body) = app.read_events(&id, None).await;
    let events = parse_sse(&body);
    let kinds: Vec<_> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["start", "token", "token", "error"]);
    assert_eq!(events[3].json()["code"], "backend_error");
    assert!(events[3].json()["message"].is_string());
}

#[tokio::test]
async fn full_queue_answers_429_with_retry_after_and_queued_streams_wait() {
    let app = spawn_with(|c| {
        c.limits.max_active = 1;
        c.limits.max_queued = 1;
        c.mock.stall_after = Some(1);
    })
    .await;
    let running = app.create(json!({"prompt": "x"})).await;
    app.wait_for(&running, "running", |s| s["status"] == "running")
        .await;
    let queued = app.create(json!({"prompt": "x"})).await;
    assert_eq!(app.status(&queued).await["status"], "queued");

    let r = app
        .client
        .post(app.url("/v1/streams"))
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "overloaded"
    );
    assert_eq!(app.metric("spool_queue_depth").await, 1.0);

    // Cancelling the running one lets the queued one run.
    app.client
        .post(app.url(&format!("/v1/streams/{running}/cancel")))
        .send()
        .await
        .unwrap();
    app.wait_for(&queued, "the queued stream to run", |s| {
        s["status"] == "running"
    })
    .await;
    // A queued stream can be cancelled before it runs.
    let third = app.create(json!({"prompt": "x"})).await;
    assert_eq!(
        app.client
            .post(app.url(&format!("/v1/streams/{third}/cancel")))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    let s = app.wait_terminal(&third).await;
    assert_eq!(s["status"], "cancelled");
    assert_eq!(s["usage"]["completion_tokens"], 0);
}

#[tokio::test]
async fn stop_sequences_end_the_text_before_them() {
    let app = spawn_app().await;
    let id = app
        .create(json!({"prompt": "x", "max_tokens": 10, "stop": [" tok3"]}))
        .await;
    let s = app.wait_terminal(&id).await;
    assert_eq!(s["text"], " tok1 tok2");
    assert_eq!(s["finish_reason"], "stop");
}

#[tokio::test]
async fn list_is_newest_first_with_a_cursor() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.create(json!({"prompt": "x", "max_tokens": 1})).await);
        // Newest first is by creation time (ties in one millisecond go by id): let the
        // clock pass the millisecond it was created in, so the order is the order of
        // creation.
        let created_by = spool::event::now_ms();
        while spool::event::now_ms() <= created_by {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
    let page: Value = app
        .client
        .get(app.url("/v1/streams?limit=2"))
        .send_json()
        .await;
    let got: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[4].as_str(), ids[3].as_str()]);
    assert_eq!(page["has_more"], true);
    let next = page["last_id"].as_str().unwrap();
    let page: Value = app
        .client
        .get(app.url(&format!("/v1/streams?limit=10&before={next}")))
        .send_json()
        .await;
    let got: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[2].as_str(), ids[1].as_str(), ids[0].as_str()]);
    assert_eq!(page["has_more"], false);
    for bad in [
        "limit=0",
        "limit=101",
        "limit=x",
        "before=st_aaaaaaaaaaaaaaaaaaaaa",
    ] {
        let r = app
            .client
            .get(app.url(&format!("/v1/streams?{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
}

#[tokio::test]
async fn many_readers_of_one_stream_see_the_same_bytes() {
    let app = spawn_with(|c| c.mock.rate = 300.0).await;
    let id = app.create(json!({"prompt": "x", "max_tokens": 30})).await;
    let mut readers = Vec::new();
    for _ in 0..20 {
        let client = app.client.clone();
        let url = app.url(&format!("/v1/streams/{id}/events"));
        readers.push(tokio::spawn(async move {
            client.get(url).send().await.unwrap().text().await.unwrap()
        }));
    }
    let mut bodies = Vec::new();
    for r in readers {
        bodies.push(tokio::time::timeout(DEADLINE, r).await.unwrap().unwrap());
    }
    assert_eq!(parse_sse(&bodies[0]).len(), 32);
    assert!(bodies.iter().all(|b| b == &bodies[0]));
}

#[tokio::test]
async fn retention_deletes_old_streams() {
    let app = spawn_with(|c| c.store.retention = Duration::from_millis(500)).await;
    let id = app.create(json!({"prompt": "x", "max_tokens": 1})).await;
    app.wait_terminal(&id).await;
    let url = app.url(&format!("/v1/streams/{id}"));
    let until = tokio::time::Instant::now() + DEADLINE;
    while app.client.get(&url).send().await.unwrap().status() != 404 {
        assert!(
            tokio::time::Instant::now() < until,
            "the stream was never deleted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
