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

/// A body a little over the limit, as a proxy in front would pass on whole (nginx
/// buffers it, then writes all of it): the answer is spool's JSON `413`, after the body
/// was read, and the connection goes on serving (no broken pipe for the proxy).
#[tokio::test]
async fn a_body_over_the_limit_is_read_then_refused_in_json_on_a_live_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let body = format!("{{\"prompt\":\"{}\"}}", "a".repeat(1536 * 1024));
    let request = format!(
        "POST /v1/streams HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    // All of it is taken: a server that stopped reading would block this write.
    tokio::time::timeout(DEADLINE, tcp.write_all(body.as_bytes()))
        .await
        .expect("the server stopped reading the body")
        .unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + DEADLINE;
    while !String::from_utf8_lossy(&seen).contains("{\"status\":\"ok\"}") {
        match tokio::time::timeout_at(until, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            other => panic!(
                "the connection ended: {other:?}; got {}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("\"code\":\"payload_too_large\""), "{text}");
    assert!(text.contains("HTTP/1.1 200"), "{text}");
}
