//! API keys: with `SPOOL_API_KEYS` set, `/v1` needs a bearer key, and a key sees only
//! its own streams and sessions (another key's are a plain `404`).

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::*;

async fn keyed_app() -> TestApp {
    spawn_with(|c| c.auth.api_keys = vec!["alpha-key".into(), "beta-key".into()]).await
}

fn post(app: &TestApp, path: &str, key: Option<&str>) -> reqwest::RequestBuilder {
    let r = app.client.post(app.url(path));
    match key {
        Some(k) => r.bearer_auth(k),
        None => r,
    }
}

fn get(app: &TestApp, path: &str, key: Option<&str>) -> reqwest::RequestBuilder {
    let r = app.client.get(app.url(path));
    match key {
        Some(k) => r.bearer_auth(k),
        None => r,
    }
}

#[tokio::test]
async fn without_a_valid_key_v1_is_401_and_the_probes_stay_open() {
    let app = keyed_app().await;
    for key in [None, Some("wrong")] {
        let r = post(&app, "/v1/streams", key)
            .json(&json!({"prompt": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "unauthorized");
        let r = get(&app, "/v1/models", key).send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    for open in ["/healthz", "/readyz", "/metrics", "/"] {
        let r = get(&app, open, None).send().await.unwrap();
        assert_eq!(r.status(), 200, "{open}");
    }
    // Nothing was stored by the refused requests.
    let list: Value = get(&app, "/v1/streams", Some("alpha-key"))
        .send_json()
        .await;
    assert_eq!(list["data"], json!([]));
}

#[tokio::test]
async fn a_key_sees_only_its_own_streams_and_sessions() {
    let app = keyed_app().await;
    let r = post(&app, "/v1/streams", Some("alpha-key"))
        .json(&json!({"prompt": "x", "max_tokens": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The owner reads it to the end.
    let body = get(&app, &format!("/v1/streams/{id}/events"), Some("alpha-key"))
        .send_text()
        .await;
    assert_eq!(parse_sse(&body).last().unwrap().event, "done");

    // The other key: 404 everywhere, exactly like a stream that does not exist.
    for path in [
        format!("/v1/streams/{id}"),
        format!("/v1/streams/{id}/events"),
        format!("/v1/streams/{id}/events?format=openai"),
    ] {
        let r = get(&app, &path, Some("beta-key")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "stream_not_found");
    }
    let r = post(&app, &format!("/v1/streams/{id}/cancel"), Some("beta-key"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = app
        .client
        .delete(app.url(&format!("/v1/streams/{id}")))
        .bearer_auth("beta-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let theirs: Value = get(&app, "/v1/streams", Some("beta-key")).send_json().await;
    assert_eq!(theirs["data"], json!([]));
    let mine: Value = get(&app, "/v1/streams", Some("alpha-key"))
        .send_json()
        .await;
    assert_eq!(mine["data"][0]["id"], id.as_str());

    // Sessions too.
    let s: Value = post(&app, "/v1/sessions", Some("alpha-key"))
        .send_json()
        .await;
    let sid = s["id"].as_str().unwrap();
    let r = get(&app, &format!("/v1/sessions/{sid}"), Some("beta-key"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = post(
        &app,
        &format!("/v1/sessions/{sid}/messages"),
        Some("beta-key"),
    )
    .json(&json!({"content": "hi"}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 404);

    // And over the WebSocket: the key comes with the upgrade.
    let mut request = format!("ws://{}/v1/ws", app.addr)
        .into_client_request()
        .unwrap();
    assert!(
        tokio_tungstenite::connect_async(request.clone())
            .await
            .is_err()
    );
    request
        .headers_mut()
        .insert("authorization", "Bearer beta-key".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        json!({"type": "subscribe", "stream_id": id}).to_string(),
    ))
    .await
    .unwrap();
    let reply = loop {
        match tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            tokio_tungstenite::tungstenite::Message::Text(t) => {
                break serde_json::from_str::<Value>(t.as_str()).unwrap();
            }
            _ => continue,
        }
    };
    assert_eq!(reply["code"], "stream_not_found");
}

#[tokio::test]
async fn a_read_token_opens_one_streams_events_without_a_key() {
    let app = keyed_app().await;
    let create = || async {
        let r = post(&app, "/v1/streams", Some("alpha-key"))
            .json(&json!({"prompt": "x", "max_tokens": 3}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()
    };
    let a = create().await;
    let b = create().await;
    let (id, token) = (a["id"].as_str().unwrap(), a["read_token"].as_str().unwrap());

    // As a browser's EventSource would: no header, the token in the URL.
    let r = get(
        &app,
        &format!("/v1/streams/{id}/events?token={token}"),
        None,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let events = parse_sse(&r.text().await.unwrap());
    assert_eq!(events.last().unwrap().event, "done");
    // Resume works with it too.
    let r = get(
        &app,
        &format!("/v1/streams/{id}/events?token={token}"),
        None,
    )
    .header("Last-Event-ID", "2")
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(parse_sse(&r.text().await.unwrap())[0].id, Some(3));

    // Only that stream, only its events URL, only as issued.
    let other = b["id"].as_str().unwrap();
    let flipped = if token.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{flipped}", &token[..token.len() - 1]);
    for path in [
        format!("/v1/streams/{other}/events?token={token}"),
        format!("/v1/streams/{id}?token={token}"),
        format!("/v1/streams/{id}/events?token={forged}"),
        format!("/v1/streams/{id}/events?token=garbage"),
    ] {
        let r = get(&app, &path, None).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    // Without keys there are no tokens (everything is open anyway).
    let open = spawn_app().await;
    let body = open
        .client
        .post(open.url("/v1/streams"))
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert!(
        body.json::<Value>()
            .await
            .unwrap()
            .get("read_token")
            .is_none()
    );
}

#[tokio::test]
async fn an_expired_read_token_is_refused() {
    let app = spawn_with(|c| {
        c.auth.api_keys = vec!["k".into()];
        c.auth.read_token_ttl = std::time::Duration::ZERO;
    })
    .await;
    let a: Value = post(&app, "/v1/streams", Some("k"))
        .json(&json!({"prompt": "x", "max_tokens": 1}))
        .send_json()
        .await;
    let (id, token) = (a["id"].as_str().unwrap(), a["read_token"].as_str().unwrap());
    let r = get(
        &app,
        &format!("/v1/streams/{id}/events?token={token}"),
        None,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"].as_str().unwrap().contains("expired"),
        "{e}"
    );
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after_and_others_do_not() {
    let app = spawn_with(|c| {
        c.auth.api_keys = vec!["alpha-key".into(), "beta-key".into()];
        c.auth.rate_limit = 5;
    })
    .await;
    let mut codes = Vec::new();
    for _ in 0..7 {
        let r = get(&app, "/v1/models", Some("alpha-key"))
            .send()
            .await
            .unwrap();
        codes.push(r.status().as_u16());
        if r.status() == 429 {
            assert!(
                r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
                    >= 1
            );
            let e: Value = r.json().await.unwrap();
            assert_eq!(e["error"]["code"], "rate_limited");
        }
    }
    assert_eq!(codes, [200, 200, 200, 200, 200, 429, 429]);
    let r = get(&app, "/v1/models", Some("beta-key"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn cors_is_closed_by_default_and_open_to_listed_origins() {
    let closed = spawn_app().await;
    let r = closed
        .client
        .get(closed.url("/v1/models"))
        .header("Origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());

    let app = spawn_with(|c| {
        c.server.cors_origins = vec!["https://app.example".into()];
        c.auth.api_keys = vec!["k".into()];
    })
    .await;
    // The preflight is answered without a key.
    let r = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/v1/streams"))
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let r = post(&app, "/v1/streams", Some("k"))
        .header("Origin", "https://app.example")
        .json(&json!({"prompt": "x", "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(
        r.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("x-stream-id")
    );
    let r = get(&app, "/v1/models", Some("k"))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}
