//! `Idempotency-Key` (issue 15): a retried start creates nothing twice. A retry with the
//! same key and owner gets the stream the first request started, on every surface that
//! starts streams; a different request under the same key is `409`; keys are per owner.

use serde_json::{Value, json};

use crate::helpers::*;

async fn post(
    app: &TestApp,
    path: &str,
    key: Option<&str>,
    bearer: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut r = app.client.post(app.url(path)).json(body);
    if let Some(key) = key {
        r = r.header("Idempotency-Key", key);
    }
    if let Some(bearer) = bearer {
        r = r.bearer_auth(bearer);
    }
    r.send().await.unwrap()
}

async fn streams_in_db(app: &TestApp) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", app.db.display()))
        .await
        .unwrap();
    sqlx::query_scalar("SELECT count(*) FROM streams")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_retry_with_the_same_key_gets_the_same_stream() {
    let app = spawn_app().await;
    let body = json!({"prompt": "hi", "max_tokens": 5});
    let first = post(&app, "/v1/streams", Some("k-1"), None, &body).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = post(&app, "/v1/streams", Some("k-1"), None, &body).await;
    assert_eq!(again.status(), 201);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["created_at"], first["created_at"]);
    assert_eq!(streams_in_db(&app).await, 1);

    // The SSE form of the retry is the same stream, from its first event.
    let r = app
        .client
        .post(app.url("/v1/streams"))
        .header("Idempotency-Key", "k-1")
        .header("Accept", "text/event-stream")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-stream-id"], first["id"].as_str().unwrap());
    let retried = r.text().await.unwrap();
    let id = first["id"].as_str().unwrap();
    let (_, stored) = app.read_events(id, None).await;
    assert_eq!(retried, stored);

    // Another key, or none, starts another stream.
    let other = post(&app, "/v1/streams", Some("k-2"), None, &body).await;
    let other: Value = other.json().await.unwrap();
    assert_ne!(other["id"], first["id"]);
    post(&app, "/v1/streams", None, None, &body).await;
    assert_eq!(streams_in_db(&app).await, 3);
}

#[tokio::test]
async fn a_different_request_under_a_used_key_is_409_and_changes_nothing() {
    let app = spawn_app().await;
    let r = post(
        &app,
        "/v1/streams",
        Some("k"),
        None,
        &json!({"prompt": "hi"}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let r = post(
        &app,
        "/v1/streams",
        Some("k"),
        None,
        &json!({"prompt": "bye"}),
    )
    .await;
    assert_eq!(r.status(), 409);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "idempotency_conflict", "{e}");
    assert_eq!(streams_in_db(&app).await, 1);
    for bad in ["", &"x".repeat(256), "caf\u{e9}", "two words"] {
        let r = app
            .client
            .post(app.url("/v1/streams"))
            .header("Idempotency-Key", bad.as_bytes())
            .json(&json!({"prompt": "hi"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad:?}");
    }
    assert_eq!(streams_in_db(&app).await, 1);
}

#[tokio::test]
async fn keys_belong_to_their_owner() {
    let app = spawn_with(|c| c.auth.api_keys = vec!["alpha".into(), "beta".into()]).await;
    let body = json!({"prompt": "hi", "max_tokens": 2});
    let a: Value = post(&app, "/v1/streams", Some("same"), Some("alpha"), &body)
        .await
        .json()
        .await
        .unwrap();
    let b: Value = post(&app, "/v1/streams", Some("same"), Some("beta"), &body)
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(a["id"], b["id"]);
    let a2: Value = post(&app, "/v1/streams", Some("same"), Some("alpha"), &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(a2["id"], a["id"]);
}

#[tokio::test]
async fn chat_completions_and_session_turns_take_keys_too() {
    let app = spawn_app().await;
    let chat =
        json!({"model": "mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3});
    let first = post(&app, "/v1/chat/completions", Some("c"), None, &chat).await;
    assert_eq!(first.status(), 200);
    let id = first.headers()["x-stream-id"].to_str().unwrap().to_owned();
    let first: Value = first.json().await.unwrap();
    let again = post(&app, "/v1/chat/completions", Some("c"), None, &chat).await;
    assert_eq!(again.headers()["x-stream-id"], id.as_str());
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first);

    let session: Value = app
        .client
        .post(app.url("/v1/sessions"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let path = format!("/v1/sessions/{}/messages", session["id"].as_str().unwrap());
    let turn = json!({"content": "hello", "max_tokens": 2});
    let t1: Value = post(&app, &path, Some("t"), None, &turn)
        .await
        .json()
        .await
        .unwrap();
    // A retry while the turn runs or after it ended: the same turn, not a second one
    // (nor `turn_in_progress`).
    let t2 = post(&app, &path, Some("t"), None, &turn).await;
    assert_eq!(t2.status(), 201);
    let t2: Value = t2.json().await.unwrap();
    assert_eq!(t2["id"], t1["id"]);
    app.wait_terminal(t1["id"].as_str().unwrap()).await;
    let t3: Value = post(&app, &path, Some("t"), None, &turn)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(t3["id"], t1["id"]);
    let read: Value = app
        .client
        .get(app.url(&format!("/v1/sessions/{}", session["id"].as_str().unwrap())))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["turns"].as_array().unwrap().len(), 2, "{read}");
}

#[tokio::test]
async fn a_key_outlives_a_restart_and_is_forgotten_with_its_stream() {
    let mut app = spawn_app().await;
    let body = json!({"prompt": "hi", "max_tokens": 2});
    let first: Value = post(&app, "/v1/streams", Some("k"), None, &body)
        .await
        .json()
        .await
        .unwrap();
    app.shutdown().await;
    let dir = app.take_dir();
    let app = spawn_on(&app.db, |_| {}).await;
    let again: Value = post(&app, "/v1/streams", Some("k"), None, &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["id"], first["id"]);
    // Once the stream is deleted, the key starts a new one.
    let r = app
        .client
        .delete(app.url(&format!("/v1/streams/{}", first["id"].as_str().unwrap())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let fresh: Value = post(&app, "/v1/streams", Some("k"), None, &body)
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(fresh["id"], first["id"]);
    drop(dir);
}
