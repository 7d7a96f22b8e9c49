//! Managing sessions as a frontend does: `GET /v1/sessions` (newest first, paged like
//! `GET /v1/streams`, each with a title and its last activity), `PATCH` (title,
//! metadata; bad input changes nothing), `DELETE` (its streams too, a running turn
//! cancelled first), each key seeing only its own, and CORS preflights for them.

use serde_json::{Value, json};

use crate::helpers::*;

const ALICE: &str = "key-alice";
const BOB: &str = "key-bob";

async fn keyed() -> TestApp {
    spawn_with(|c| {
        c.auth.api_keys = vec![ALICE.into(), BOB.into()];
        c.mock.rate = 100.0;
    })
    .await
}

fn call(app: &TestApp, method: reqwest::Method, path: &str, key: &str) -> reqwest::RequestBuilder {
    app.client.request(method, app.url(path)).bearer_auth(key)
}

async fn create(app: &TestApp, key: &str, body: Value) -> String {
    let r = call(app, reqwest::Method::POST, "/v1/sessions", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_owned()
}

/// A turn that runs to its end (JSON form, then waiting on its status).
async fn answered(app: &TestApp, key: &str, session: &str, content: &str) -> String {
    let r = call(
        app,
        reqwest::Method::POST,
        &format!("/v1/sessions/{session}/messages"),
        key,
    )
    .json(&json!({"content": content, "max_tokens": 2}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let id = v["id"].as_str().unwrap().to_owned();
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let s: Value = call(app, reqwest::Method::GET, &format!("/v1/streams/{id}"), key)
            .send_json()
            .await;
        if s["status"] == "completed" {
            return id;
        }
        assert!(tokio::time::Instant::now() < until, "never completed: {s}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn list(app: &TestApp, key: &str, query: &str) -> (u16, Value) {
    let r = call(
        app,
        reqwest::Method::GET,
        &format!("/v1/sessions{query}"),
        key,
    )
    .send()
    .await
    .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn sessions_are_listed_newest_first_in_pages_each_with_title_and_activity() {
    let app = keyed().await;
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(create(&app, ALICE, json!({"metadata": {"n": i}})).await);
        next_millisecond().await;
    }
    let titled = create(&app, ALICE, json!({"title": "  Named at birth "})).await;
    made.push(titled.clone());
    create(&app, BOB, json!({})).await;
    answered(&app, ALICE, &made[0], "What is a\n  durable stream?").await;
    made.reverse(); // newest first

    let (status, first) = list(&app, ALICE, "?limit=4").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["object"], "list");
    assert_eq!(first["has_more"], true);
    assert_eq!(ids(&first), made[..4]);
    assert_eq!(first["last_id"], made[3].as_str());
    assert_eq!(first["data"][0]["title"], "Named at birth");
    assert!(first["data"][0].get("turns").is_none(), "{first}");
    let before = made[3].clone();
    let (_, rest) = list(&app, ALICE, &format!("?limit=4&before={before}")).await;
    assert_eq!(ids(&rest), made[4..]);
    assert_eq!(rest["has_more"], false);
    // The oldest has a turn: its title is its first message, on one line; its last
    // activity is that turn's end, after its creation.
    let oldest = &rest["data"][1];
    assert_eq!(oldest["title"], "What is a durable stream?", "{oldest}");
    assert_eq!(oldest["metadata"], json!({"n": 0}));
    assert!(
        oldest["last_activity_at"].as_str().unwrap() > oldest["created_at"].as_str().unwrap(),
        "{oldest}"
    );
    // A session with no turn and no title has none yet.
    assert_eq!(rest["data"][0]["title"], Value::Null);
    assert_eq!(
        rest["data"][0]["last_activity_at"],
        rest["data"][0]["created_at"]
    );
    // The default page, and the same cursor rules as GET /v1/streams.
    let (_, all) = list(&app, ALICE, "").await;
    assert_eq!(ids(&all), made);
    for query in ["?limit=0", "?limit=101", "?limit=x", "?before=se_nope"] {
        let (status, e) = list(&app, ALICE, query).await;
        assert_eq!(status, 400, "{query}: {e}");
        assert_eq!(e["error"]["code"], "invalid_request", "{query}");
    }
    // Another key's session is no cursor here.
    let (_, bobs) = list(&app, BOB, "").await;
    assert_eq!(bobs["data"].as_array().unwrap().len(), 1);
    let (status, _) = list(&app, BOB, &format!("?before={}", made[0])).await;
    assert_eq!(status, 400);
}

async fn patch(app: &TestApp, key: &str, id: &str, body: &str) -> reqwest::Response {
    call(
        app,
        reqwest::Method::PATCH,
        &format!("/v1/sessions/{id}"),
        key,
    )
    .header("content-type", "application/json")
    .body(body.to_owned())
    .send()
    .await
    .unwrap()
}

async fn read(app: &TestApp, key: &str, id: &str) -> Value {
    call(
        app,
        reqwest::Method::GET,
        &format!("/v1/sessions/{id}"),
        key,
    )
    .send_json()
    .await
}

#[tokio::test]
async fn a_session_is_renamed_and_given_metadata_and_bad_input_changes_nothing() {
    let app = keyed().await;
    let id = create(&app, ALICE, json!({"metadata": {"k": 1}})).await;
    answered(&app, ALICE, &id, "first question").await;
    assert_eq!(read(&app, ALICE, &id).await["title"], "first question");

    let r = patch(&app, ALICE, &id, r#"{"title": "Trip plans"}"#).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["title"], "Trip plans");
    assert_eq!(v["metadata"], json!({"k": 1}), "metadata stays");
    let r = patch(&app, ALICE, &id, r#"{"metadata": {"pinned": true}}"#).await;
    assert_eq!(r.status(), 200);
    let s = read(&app, ALICE, &id).await;
    assert_eq!(s["title"], "Trip plans", "the title stays");
    assert_eq!(
        s["metadata"],
        json!({"pinned": true}),
        "metadata is replaced"
    );
    assert_eq!(s["turns"].as_array().unwrap().len(), 2);

    let bad = [
        r#"{"title": ""}"#,
        r#"{"title": "   "}"#,
        r#"{"title": 7}"#,
        r#"{"title": "two\nlines"}"#,
        r#"{"metadata": [1]}"#,
        r#"{"titel": "typo"}"#,
        r#"{"title": "x""#,
        "",
    ];
    let long = json!({ "title": "x".repeat(201) }).to_string();
    for body in bad.iter().copied().chain([long.as_str()]) {
        let r = patch(&app, ALICE, &id, body).await;
        assert_eq!(r.status(), 400, "{body}");
        let e: Value = r.json().await.unwrap();
        let code = e["error"]["code"].as_str().unwrap();
        assert!(
            ["invalid_request", "invalid_json"].contains(&code),
            "{body}: {e}"
        );
    }
    assert_eq!(
        read(&app, ALICE, &id).await,
        s,
        "a refused PATCH changed it"
    );

    // Another key, or no such session: 404, and nothing changes.
    for (key, target) in [(BOB, id.as_str()), (ALICE, "se_aaaaaaaaaaaaaaaaaaaaa")] {
        let r = patch(&app, key, target, r#"{"title": "mine"}"#).await;
        assert_eq!(r.status(), 404, "{key} {target}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "session_not_found");
    }
    assert_eq!(read(&app, ALICE, &id).await, s);

    // null: back to the first message; no metadata; {} changes nothing.
    let r = patch(&app, ALICE, &id, r#"{"title": null, "metadata": null}"#).await;
    assert_eq!(r.status(), 200);
    let r = patch(&app, ALICE, &id, "{}").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["title"], "first question");
    assert_eq!(v["metadata"], Value::Null);
}

#[tokio::test]
async fn deleting_a_session_cancels_its_running_turn_and_deletes_its_streams() {
    let app = keyed().await;
    let id = create(&app, ALICE, json!({})).await;
    let done = answered(&app, ALICE, &id, "one").await;
    let r = call(
        &app,
        reqwest::Method::POST,
        &format!("/v1/sessions/{id}/messages"),
        ALICE,
    )
    .json(&json!({"content": "two", "max_tokens": 10000}))
    .send()
    .await
    .unwrap();
    let running: Value = r.json().await.unwrap();
    let running = running["id"].as_str().unwrap().to_owned();
    // Its reader, to see the end the delete writes first.
    let reader = call(
        &app,
        reqwest::Method::GET,
        &format!("/v1/streams/{running}/events"),
        ALICE,
    );
    let mut reader = SseReader::open(reader, DEADLINE).await;
    reader.until(3).await;

    // Another key cannot.
    let delete = |key: &str| {
        call(
            &app,
            reqwest::Method::DELETE,
            &format!("/v1/sessions/{id}"),
            key,
        )
        .send()
    };
    let r = delete(BOB).await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        read(&app, ALICE, &id).await["turns"]
            .as_array()
            .unwrap()
            .len(),
        4
    );

    let r = delete(ALICE).await.unwrap();
    assert_eq!(r.status(), 204);
    let body = reader
        .read_to_end(tokio::time::Instant::now() + DEADLINE)
        .await;
    let events = parse_sse(&body);
    let last = events.last().expect("the reader got nothing more");
    assert_eq!(last.event, "done");
    assert_eq!(last.json()["finish_reason"], "cancelled");

    for path in [
        format!("/v1/sessions/{id}"),
        format!("/v1/streams/{done}"),
        format!("/v1/streams/{running}"),
        format!("/v1/streams/{running}/events"),
    ] {
        let r = call(&app, reqwest::Method::GET, &path, ALICE)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let (_, page) = list(&app, ALICE, "").await;
    assert!(ids(&page).is_empty(), "{page}");
    let r = delete(ALICE).await.unwrap();
    assert_eq!(r.status(), 404, "a second delete");
    let r = call(
        &app,
        reqwest::Method::POST,
        &format!("/v1/sessions/{id}/messages"),
        ALICE,
    )
    .json(&json!({"content": "three"}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 404, "a turn of a deleted session");
}

#[tokio::test]
async fn a_cors_preflight_allows_every_method_the_api_has() {
    let app = spawn_with(|c| {
        c.server.cors_origins = vec!["https://app.example".into()];
        c.auth.api_keys = vec![ALICE.into()];
    })
    .await;
    let id = create(&app, ALICE, json!({})).await;
    for (method, path) in [
        ("GET", "/v1/sessions".to_owned()),
        ("POST", "/v1/sessions".to_owned()),
        ("PATCH", format!("/v1/sessions/{id}")),
        ("DELETE", format!("/v1/sessions/{id}")),
    ] {
        let r = app
            .client
            .request(reqwest::Method::OPTIONS, app.url(&path))
            .header("Origin", "https://app.example")
            .header("Access-Control-Request-Method", method)
            .header(
                "Access-Control-Request-Headers",
                "authorization, content-type, idempotency-key",
            )
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{method}: {}", r.status());
        let allowed = r.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(allowed.contains(method), "{method}: {allowed}");
        let headers = r.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_lowercase();
        assert!(headers.contains("idempotency-key"), "{headers}");
    }
    // The PATCH itself, cross-origin.
    let r = call(
        &app,
        reqwest::Method::PATCH,
        &format!("/v1/sessions/{id}"),
        ALICE,
    )
    .header("Origin", "https://app.example")
    .json(&json!({"title": "From another origin"}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
}

/// Newest first is by creation time (sessions made in one millisecond list by id): lets
/// the clock pass the millisecond of what was just created, so the order is the order
/// of creation.
async fn next_millisecond() {
    let created_by = spool::event::now_ms();
    while spool::event::now_ms() <= created_by {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}
