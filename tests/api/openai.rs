//! The OpenAI facade's bytes and errors as a client sees them (the SDKs themselves run
//! in `sdk`).

use serde_json::{Value, json};

use crate::helpers::*;

async fn chat(app: &TestApp, body: Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_stream_is_chunks_with_ids_and_done_and_resumes_in_the_same_format() {
    let app = spawn_app().await;
    let r = chat(
        &app,
        json!({"model": "mock", "messages": [{"role": "user", "content": "hi"}],
               "max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let id = r.headers()["x-stream-id"].to_str().unwrap().to_owned();
    let body = r.text().await.unwrap();
    assert!(!body.contains("retry:"), "{body}");
    assert!(body.starts_with("id: 1\ndata: {"), "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    let data: Vec<String> = parse_sse(&body).into_iter().map(|e| e.data).collect();
    // role chunk, 4 tokens, finish, usage, [DONE]
    assert_eq!(data.len(), 8, "{body}");
    let usage: Value = serde_json::from_str(&data[6]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 4);
    assert_eq!(usage["choices"], json!([]));

    // The tail after event 3, resumed: byte for byte the tail of the first read.
    let r = app
        .client
        .get(app.url(&format!("/v1/streams/{id}/events?format=openai")))
        .header("Last-Event-ID", "3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let tail = r.text().await.unwrap();
    let at = body.find("id: 4\n").unwrap();
    assert_eq!(tail, &body[at..]);

    let r = app
        .client
        .get(app.url(&format!("/v1/streams/{id}/events?format=xml")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn a_completion_and_openai_shaped_errors() {
    let app = spawn_app().await;
    let r = chat(
        &app,
        json!({"model": "mock", "messages": [{"role": "developer", "content": "be brief"},
               {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
               "max_completion_tokens": 3, "max_tokens": 99, "unknown_field": 1}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-stream-id"].to_str().unwrap().to_owned();
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["object"], "chat.completion");
    assert_eq!(c["id"], id.as_str());
    assert_eq!(c["choices"][0]["message"]["content"], " tok1 tok2 tok3");
    assert_eq!(c["usage"]["total_tokens"], 3 + 3);

    for (body, status, code) in [
        (
            json!({"model": "mock", "messages": [{"role": "user", "content": "x"}], "n": 2}),
            400,
            "invalid_request",
        ),
        (json!({"model": "mock"}), 400, "invalid_request"),
        (
            json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
            404,
            "model_not_found",
        ),
        (
            json!({"model": "mock", "messages": [{"role": "tool", "content": "x"}]}),
            400,
            "invalid_request",
        ),
        (
            json!({"model": "mock", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            400,
            "invalid_request",
        ),
    ] {
        let r = chat(&app, body.clone()).await;
        assert_eq!(r.status(), status, "{body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], code, "{body}");
        assert!(e["error"]["type"].is_string(), "{e}");
        assert!(e["error"].get("param").is_some(), "{e}");
        assert!(e["error"]["message"].is_string(), "{e}");
    }
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error");
}
