//! Sessions over plain HTTP: create, add turns (both response forms), read history,
//! and every refusal.

use serde_json::{Value, json};

use crate::helpers::*;

async fn new_session(app: &TestApp, body: Option<Value>) -> Value {
    let mut req = app.client.post(app.url("/v1/sessions"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/v1/sessions/se_")
    );
    r.json().await.unwrap()
}

async fn say(app: &TestApp, session: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/v1/sessions/{session}/messages")))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn history(app: &TestApp, session: &str) -> Value {
    app.client
        .get(app.url(&format!("/v1/sessions/{session}")))
        .send_json()
        .await
}

#[tokio::test]
async fn three_turns_over_http_in_both_response_forms() {
    let app = spawn_app().await;
    let s = new_session(
        &app,
        Some(json!({"system": "be brief", "metadata": {"k": 1}})),
    )
    .await;
    let id = s["id"].as_str().unwrap().to_owned();
    assert_eq!(s["turns"], json!([]));
    assert_eq!(s["metadata"], json!({"k": 1}));

    // JSON form.
    let r = say(&app, &id, json!({"content": "one", "max_tokens": 2})).await;
    assert_eq!(r.status(), 201);
    let first: Value = r.json().await.unwrap();
    assert_eq!(first["session_id"], id.as_str());
    app.wait_terminal(first["id"].as_str().unwrap()).await;

    // SSE form, with `prompt` as the message.
    let r = app
        .client
        .post(app.url(&format!("/v1/sessions/{id}/messages?stream=true")))
        .json(&json!({"prompt": "two", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-session-id"], id.as_str());
    let body = r.text().await.unwrap();
    assert_eq!(parse_sse(&body).last().unwrap().event, "done");

    // POST /v1/streams with session_id is a turn too.
    let r = app
        .client
        .post(app.url("/v1/streams"))
        .json(&json!({"session_id": id, "prompt": "three", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let third: Value = r.json().await.unwrap();
    let done = app.wait_terminal(third["id"].as_str().unwrap()).await;
    // system (2 words) + one + 2 tokens + two + 2 tokens + three
    assert_eq!(done["usage"]["prompt_tokens"], 9, "{done}");

    let h = history(&app, &id).await;
    let turns = h["turns"].as_array().unwrap();
    let roles: Vec<&str> = turns.iter().map(|t| t["role"].as_str().unwrap()).collect();
    assert_eq!(
        roles,
        [
            "user",
            "assistant",
            "user",
            "assistant",
            "user",
            "assistant"
        ]
    );
    assert_eq!(turns[2]["content"], "two");
    assert_eq!(turns[5]["content"], " tok1 tok2");
    assert_eq!(turns[5]["status"], "completed");
    assert_eq!(h["system"], "be brief");
}

#[tokio::test]
async fn a_cancelled_turn_keeps_its_text_and_the_next_turn_sees_it() {
    let app = spawn_with(|c| c.mock.rate = 50.0).await;
    let id = new_session(&app, None).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = say(&app, &id, json!({"content": "go", "max_tokens": 10_000})).await;
    let stream: Value = r.json().await.unwrap();
    let stream = stream["id"].as_str().unwrap().to_owned();
    app.wait_for(&stream, "two tokens", |s| {
        s["last_seq"].as_u64().unwrap_or(0) >= 3
    })
    .await;

    // Busy: the turn is still running.
    let r = say(&app, &id, json!({"content": "again"})).await;
    assert_eq!(r.status(), 409);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "turn_in_progress");

    app.client
        .post(app.url(&format!("/v1/streams/{stream}/cancel")))
        .send()
        .await
        .unwrap();
    let ended = app.wait_terminal(&stream).await;
    assert_eq!(ended["status"], "cancelled");
    let h = history(&app, &id).await;
    assert_eq!(h["turns"][1]["status"], "cancelled");
    assert_eq!(h["turns"][1]["content"], ended["text"]);
    assert!(!ended["text"].as_str().unwrap().is_empty());

    let r = say(&app, &id, json!({"content": "next", "max_tokens": 1})).await;
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn refusals_are_clear_and_change_nothing() {
    let app = spawn_app().await;
    let id = new_session(&app, None).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cases = [
        (json!({}), 400, "invalid_request"),
        (json!({"content": ""}), 400, "invalid_request"),
        (
            json!({"content": "a", "prompt": "b"}),
            400,
            "invalid_request",
        ),
        (
            // The session holds the history: a turn brings one message, or tool results.
            json!({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}),
            400,
            "invalid_request",
        ),
        (
            // No answer with tool calls to answer.
            json!({"role": "tool", "tool_call_id": "call_1", "content": "42"}),
            400,
            "invalid_request",
        ),
        (
            json!({"content": "a", "max_tokens": 0}),
            400,
            "invalid_request",
        ),
        (
            json!({"content": "a", "model": "nope"}),
            404,
            "model_not_found",
        ),
    ];
    for (body, status, code) in cases {
        let r = say(&app, &id, body.clone()).await;
        assert_eq!(r.status(), status, "{body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], code, "{body}");
    }
    assert_eq!(history(&app, &id).await["turns"], json!([]));

    let r = say(&app, "se_aaaaaaaaaaaaaaaaaaaaa", json!({"content": "x"})).await;
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "session_not_found");
    let r = app
        .client
        .get(app.url("/v1/sessions/../etc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = app
        .client
        .post(app.url("/v1/streams"))
        .json(&json!({"session_id": "se_nope", "prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = app
        .client
        .post(app.url("/v1/sessions"))
        .json(&json!({"model": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = app
        .client
        .post(app.url("/v1/sessions"))
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
