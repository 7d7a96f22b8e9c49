//! Bad input: a clear 4xx JSON error, and nothing stored.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn every_bad_input_is_a_clear_4xx_and_changes_nothing() {
    let app = spawn_app().await;
    let big_prompt = format!(r#"{{"prompt":"{}"}}"#, "a".repeat(300 * 1024));
    let huge_body = format!(r#"{{"prompt":"{}"}}"#, "a".repeat(2 * 1024 * 1024));
    let cases: Vec<(Method, &str, Vec<u8>, u16, &str)> = vec![
        (
            Method::POST,
            "/v1/streams",
            b"not json".to_vec(),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/v1/streams",
            b"".to_vec(),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/v1/streams",
            b"{\"prompt\":".to_vec(),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/v1/streams",
            b"\xff\xfe".to_vec(),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/v1/streams",
            b"[]".to_vec(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/streams",
            b"{}".to_vec(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/streams",
            br#"{"prompt":5}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/streams",
            br#"{"prompt":""}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/streams",
            br#"{"prompt":"x","messages":[{"role":"user","content":"y"}]}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/streams",
            br#"{"messages":"hi"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/streams",
            br#"{"messages":[]}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/streams",
            br#"{"messages":[{"role":"bot","content":"y"}]}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/streams",
            br#"{"messages":[{"role":"user"}]}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/streams",
            br#"{"prompt":"x","max_tokens":0}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/streams",
            br#"{"prompt":"x","max_tokens":-1}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/streams",
            br#"{"prompt":"x","max_tokens":1000000000}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/streams",
            br#"{"prompt":"x","max_tokens":"5"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/streams",
            br#"{"prompt":"x","temperature":"hot"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/streams",
            br#"{"prompt":"x","temperature":9}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/streams",
            br#"{"prompt":"x","top_p":2}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/streams",
            br#"{"prompt":"x","seed":-3}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/streams",
            br#"{"prompt":"x","stop":5}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/streams",
            br#"{"prompt":"x","metadata":[1]}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/streams",
            br#"{"prompt":"x","model":"gpt-9"}"#.to_vec(),
            404,
            "model_not_found",
        ),
        (
            Method::POST,
            "/v1/streams",
            br#"{"prompt":"x","session_id":"se_1"}"#.to_vec(),
            404,
            "session_not_found",
        ),
        (
            Method::POST,
            "/v1/streams?stream=maybe",
            br#"{"prompt":"x"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/streams",
            big_prompt.into_bytes(),
            400,
            "prompt_too_long",
        ),
        (
            Method::POST,
            "/v1/streams",
            huge_body.into_bytes(),
            413,
            "payload_too_large",
        ),
        (Method::GET, "/v1/nope", Vec::new(), 404, "not_found"),
        (
            Method::PUT,
            "/v1/streams",
            Vec::new(),
            405,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/v1/streams/st_aaaaaaaaaaaaaaaaaaaaa",
            Vec::new(),
            404,
            "stream_not_found",
        ),
        (
            Method::GET,
            "/v1/streams/..%2F..%2Fetc",
            Vec::new(),
            404,
            "stream_not_found",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        let r = app
            .client
            .request(method.clone(), app.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{method} {path} {shown}");
        let v: Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{method} {path} {shown}: not JSON: {e}"));
        assert_eq!(v["error"]["code"], code, "{method} {path} {shown}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(!message.is_empty());
        assert!(!message.to_lowercase().contains("sqlite"), "{message}");
    }
    // The unknown-model error lists the models.
    let r = app
        .client
        .post(app.url("/v1/streams"))
        .body(r#"{"prompt":"x","model":"gpt-9"}"#)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["models"], serde_json::json!(["mock"]));

    // Nothing was stored, and the server still works.
    let list: Value = app.client.get(app.url("/v1/streams")).send_json().await;
    assert_eq!(list["data"], serde_json::json!([]));
    assert_eq!(app.metric("spool_streams_started_total").await, 0.0);
    assert_eq!(app.metric("spool_events_committed_total").await, 0.0);
    let id = app
        .create(serde_json::json!({"prompt": "still fine", "max_tokens": 1}))
        .await;
    assert_eq!(app.wait_terminal(&id).await["status"], "completed");
}
