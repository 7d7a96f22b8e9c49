//! Durable Streams subscriptions (`/ds/v1/stream/__ds/subscriptions/{id}`, issue 21)
//! beyond what the protocol's suite asks: a webhook that fails is retried with backoff
//! and its deliveries verify against the published key; a pull-wake subscription's
//! cursor, lease and fencing survive `kill -9`; with keys a subscription is its
//! creator's and sees only its creator's streams; bad requests change nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

/// What a test webhook receiver got: each body with its `Webhook-Signature`.
type Received = Arc<Mutex<Vec<(String, String)>>>;

/// A webhook receiver on a port-0 socket: answers `500` to its first `fail` requests,
/// then `200` with `answer`.
async fn receiver(fail: usize, answer: Value) -> (String, Received) {
    let received: Received = Arc::default();
    let state = (received.clone(), fail, answer);
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |State((received, fail, answer)): State<(Received, usize, Value)>,
                 headers: HeaderMap,
                 body: String| async move {
                    let signature = headers
                        .get("webhook-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let n = {
                        let mut r = received.lock().unwrap();
                        r.push((body, signature));
                        r.len()
                    };
                    if n <= fail {
                        (AxumStatus::INTERNAL_SERVER_ERROR, axum::Json(json!({})))
                    } else {
                        (AxumStatus::OK, axum::Json(answer))
                    }
                },
            ),
        )
        .with_state(state);
    let addr = serve(app).await;
    (format!("http://127.0.0.1:{}/hook", addr.port()), received)
}

/// Waits, with a deadline, until `check` gives something.
async fn until<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn stream(base: &str, path: &str) -> String {
    format!("{base}/ds/v1/stream/{path}")
}

fn sub(base: &str, id: &str) -> String {
    stream(base, &format!("__ds/subscriptions/{id}"))
}

async fn put_json(c: &reqwest::Client, url: &str, body: &Value) -> reqwest::Response {
    c.put(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn post_json(c: &reqwest::Client, url: &str, body: &Value) -> reqwest::Response {
    c.post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// `PUT url` of JSON with an API key.
async fn put_as(c: &reqwest::Client, url: &str, key: &str, body: &Value) -> reqwest::Response {
    c.put(url).bearer_auth(key).json(body).send().await.unwrap()
}

/// `POST url` with a wake's token as the bearer.
async fn with_token(
    c: &reqwest::Client,
    url: &str,
    token: &str,
    body: &Value,
) -> reqwest::Response {
    c.post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Verifies `Webhook-Signature` over `body` with the key of `jwks` it names.
fn verifies(jwks: &Value, body: &str, signature: &str) -> bool {
    let Some((prefix, sig)) = signature.rsplit_once(",ed25519=") else {
        return false;
    };
    let Some((t, kid)) = prefix
        .strip_prefix("t=")
        .and_then(|p| p.split_once(",kid="))
    else {
        return false;
    };
    let Some(key) = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
    else {
        return false;
    };
    let x = URL_SAFE_NO_PAD.decode(key["x"].as_str().unwrap()).unwrap();
    let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, x)
        .verify(format!("{t}.{body}").as_bytes(), &sig)
        .is_ok()
}

#[tokio::test]
async fn a_failing_webhook_is_retried_with_backoff_and_every_delivery_is_signed() {
    let app = spawn_app().await;
    let c = reqwest::Client::new();
    let (url, received) = receiver(2, json!({"done": true})).await;
    let r = put_json(
        &c,
        &sub(&app.base, "retry"),
        &json!({"type": "webhook", "pattern": "jobs/*", "webhook": {"url": url}}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let jwks: Value = c
        .get(stream(&app.base, "__ds/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let r = put_json(&c, &stream(&app.base, "jobs/1"), &json!({"n": 1})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let tail = r.headers()["stream-next-offset"]
        .to_str()
        .unwrap()
        .to_owned();

    // The first attempt fails: the subscription says so, with when it tries again.
    until("the first delivery", async || {
        (!received.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    let view: Value = until("status failed", async || {
        let v: Value = c
            .get(sub(&app.base, "retry"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["status"] == "failed").then_some(v)
    })
    .await;
    assert!(view["next_attempt_at"].is_string(), "{view}");

    // The third attempt (after ~1 s, then ~2 s) is answered `done`: acked, active.
    let view: Value = until("acked after the retries", async || {
        let v: Value = c
            .get(sub(&app.base, "retry"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["streams"][0]["acked_offset"] == tail.as_str()).then_some(v)
    })
    .await;
    assert_eq!(view["status"], "active", "{view}");
    assert!(view.get("next_attempt_at").is_none(), "{view}");
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 3, "two failures and one success");
    for (body, signature) in &got {
        assert!(verifies(&jwks, body, signature), "{signature} over {body}");
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["generation"], 1, "a retry is the same wake: {body}");
        assert_eq!(body["streams"][0]["path"], "jobs/1");
    }
    // A signature over other bytes does not verify.
    assert!(!verifies(&jwks, "{}", &got[0].1));
}

#[tokio::test]
async fn a_pull_wake_subscription_keeps_its_cursor_lease_and_fence_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("subs.db");
    let c = reqwest::Client::new();
    let mut server = crate::process::start(&db, &[], DEADLINE);
    let base = server.base.clone();
    assert_eq!(
        put_json(&c, &stream(&base, "wake/pool"), &json!([]))
            .await
            .status(),
        StatusCode::CREATED
    );
    let r = put_json(
        &c,
        &sub(&base, "pool"),
        &json!({"type": "pull-wake", "pattern": "orders/*", "wake_stream": "wake/pool", "lease_ttl_ms": 600000}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    put_json(&c, &stream(&base, "orders/a"), &json!({"order": 1})).await;
    let r = post_json(&c, &stream(&base, "orders/a"), &json!({"order": 2})).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let claimed: Value = post_json(
        &c,
        &format!("{}/claim", sub(&base, "pool")),
        &json!({"worker": "w1"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let token = claimed["token"].as_str().unwrap().to_owned();
    let tail = claimed["streams"][0]["tail_offset"]
        .as_str()
        .unwrap()
        .to_owned();
    // The first message is processed: ack it, keep the lease (not done).
    let first: Value = c
        .get(format!("{}?offset=-1", stream(&base, "orders/a")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first, json!([{"order": 1}, {"order": 2}]));
    let heads = c.head(stream(&base, "orders/a")).send().await.unwrap();
    assert_eq!(heads.headers()["stream-next-offset"], tail.as_str());
    let ack = json!({
        "wake_id": claimed["wake_id"], "generation": claimed["generation"],
        "acks": [{"stream": "orders/a", "offset": tail}],
    });
    let r = with_token(&c, &format!("{}/ack", sub(&base, "pool")), &token, &ack).await;
    assert_eq!(r.status(), StatusCode::OK);

    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    let server = crate::process::start(&db, &[], DEADLINE);
    let base = server.base.clone();

    // The cursor, the holder and the wake's token are as they were answered.
    let view: Value = c
        .get(sub(&base, "pool"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["streams"][0]["acked_offset"], tail.as_str(), "{view}");
    let r = post_json(
        &c,
        &format!("{}/claim", sub(&base, "pool")),
        &json!({"worker": "w2"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let busy: Value = r.json().await.unwrap();
    assert_eq!(busy["error"]["code"], "ALREADY_CLAIMED");
    assert_eq!(busy["error"]["current_holder"], "w1");
    let done =
        json!({"wake_id": claimed["wake_id"], "generation": claimed["generation"], "done": true});
    let r = with_token(&c, &format!("{}/ack", sub(&base, "pool")), &token, &done).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"ok": true, "next_wake": false})
    );
    // That wake is over: its token is fenced, and nothing is pending.
    let r = with_token(&c, &format!("{}/ack", sub(&base, "pool")), &token, &done).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "FENCED");
    let r = post_json(
        &c,
        &format!("{}/claim", sub(&base, "pool")),
        &json!({"worker": "w2"}),
    )
    .await;
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "NO_PENDING_WORK"
    );

    // A new append wakes it again, announced on the wake stream with the next
    // generation; the restarted process announces it like the first.
    post_json(&c, &stream(&base, "orders/a"), &json!({"order": 3})).await;
    let wakes: Value = c
        .get(format!("{}?offset=-1", stream(&base, "wake/pool")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let generations: Vec<&Value> = wakes
        .as_array()
        .unwrap()
        .iter()
        .map(|w| &w["generation"])
        .collect();
    assert_eq!(generations, [&json!(1), &json!(2)], "{wakes}");
    assert_eq!(wakes[1]["type"], "wake");
    assert_eq!(wakes[1]["subscription_id"], "pool");
    assert_eq!(wakes[1]["stream"], "orders/a");
}

#[tokio::test]
async fn with_keys_a_subscription_is_its_creators_and_sees_only_its_streams() {
    let app = spawn_with(|c| c.auth.api_keys = vec!["alpha-key".into(), "beta-key".into()]).await;
    let c = reqwest::Client::new();
    let (url, received) = receiver(0, json!({})).await;
    let config = json!({"type": "webhook", "pattern": "*", "webhook": {"url": url}});
    // No key: refused, nothing made.
    let r = put_json(&c, &sub(&app.base, "mine"), &config).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = put_as(&c, &sub(&app.base, "mine"), "alpha-key", &config).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    // Another key neither reads nor takes it.
    let r = c
        .get(sub(&app.base, "mine"))
        .bearer_auth("beta-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "SUBSCRIPTION_NOT_FOUND"
    );
    let r = put_as(&c, &sub(&app.base, "mine"), "beta-key", &config).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    // beta's stream matches the pattern but is not alpha's: no wake.
    let r = put_as(
        &c,
        &stream(&app.base, "b-stream"),
        "beta-key",
        &json!({"x": 1}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = put_as(
        &c,
        &stream(&app.base, "a-stream"),
        "alpha-key",
        &json!({"x": 1}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    until("alpha's wake", async || {
        (!received.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    let (body, _) = received.lock().unwrap()[0].clone();
    let body: Value = serde_json::from_str(&body).unwrap();
    let paths: Vec<&Value> = body["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["path"])
        .collect();
    assert_eq!(paths, [&json!("a-stream")], "{body}");
    // The callback needs no key: its token is the right.
    let r = with_token(
        &c,
        body["callback_url"].as_str().unwrap(),
        body["callback_token"].as_str().unwrap(),
        &json!({"wake_id": body["wake_id"], "generation": body["generation"], "done": true}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
    // The keys are public.
    let r = c
        .get(stream(&app.base, "__ds/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/jwk-set+json");
}

#[tokio::test]
async fn bad_subscription_requests_get_the_protocols_errors_and_change_nothing() {
    let app = spawn_app().await;
    let c = reqwest::Client::new();
    let url = sub(&app.base, "s1");
    for (body, code) in [
        (json!({"type": "push", "pattern": "a"}), "INVALID_REQUEST"),
        (
            json!({"type": "webhook", "webhook": {"url": "http://localhost:1/h"}}),
            "INVALID_REQUEST",
        ),
        (
            json!({"type": "pull-wake", "pattern": "a"}),
            "INVALID_REQUEST",
        ),
        (
            json!({"type": "pull-wake", "pattern": "a", "wake_stream": "w", "lease_ttl_ms": 10}),
            "INVALID_REQUEST",
        ),
        (
            json!({"type": "webhook", "pattern": "a", "webhook": {"url": "https://169.254.169.254/x"}}),
            "WEBHOOK_URL_REJECTED",
        ),
    ] {
        let r = put_json(&c, &url, &body).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"]["code"],
            code,
            "{body}"
        );
    }
    let r = c
        .put(&url)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        c.get(&url).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );

    // A real one; then wrong tokens, stale wakes and offsets beyond the tail.
    put_json(&c, &stream(&app.base, "w"), &json!([])).await;
    let r = put_json(
        &c,
        &url,
        &json!({"type": "pull-wake", "streams": ["q/1"], "wake_stream": "w"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    put_json(&c, &stream(&app.base, "q/1"), &json!({"job": 1})).await;
    let claimed: Value = post_json(&c, &format!("{url}/claim"), &json!({"worker": "w"}))
        .await
        .json()
        .await
        .unwrap();
    let ack = |offset: &str| {
        json!({"wake_id": claimed["wake_id"], "generation": claimed["generation"],
               "acks": [{"stream": "q/1", "offset": offset}]})
    };
    let token = claimed["token"].as_str().unwrap();
    let r = post_json(
        &c,
        &format!("{url}/ack"),
        &ack("0000000000000000_0000000000000000"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "no token");
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "TOKEN_INVALID"
    );
    let r = with_token(
        &c,
        &format!("{url}/ack"),
        "1.forged",
        &ack("0000000000000000_0000000000000000"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = with_token(
        &c,
        &format!("{url}/ack"),
        token,
        &ack("9999999999999999_0000000000000000"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "INVALID_OFFSET"
    );
    let stale = json!({"wake_id": "w_other", "generation": claimed["generation"]});
    let r = with_token(&c, &format!("{url}/release"), token, &stale).await;
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "FENCED");
    let view: Value = c.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        view["streams"][0]["acked_offset"], "0000000000000000_0000000000000000",
        "unchanged: {view}"
    );
    // A webhook's callback is not a pull-wake's ack.
    let r = with_token(
        &c,
        &format!("{url}/callback"),
        token,
        &ack("0000000000000000_0000000000000000"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Deleted: its in-flight token acks nothing.
    assert_eq!(
        c.delete(&url).send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    let r = with_token(
        &c,
        &format!("{url}/ack"),
        token,
        &ack("0000000000000001_0000000000000000"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        c.delete(&url).send().await.unwrap().status(),
        StatusCode::NO_CONTENT,
        "idempotent"
    );
    // The reserved prefix is no stream.
    let r = put_json(&c, &stream(&app.base, "__ds/x"), &json!([])).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "SUBSCRIPTION_NOT_FOUND"
    );
}

#[tokio::test]
async fn on_two_nodes_a_subscription_is_served_by_the_node_that_made_it() {
    let db = crate::pg::TestDb::create().await;
    let c = reqwest::Client::new();
    let a = crate::process::start_url(&db.url, &[("SPOOL_NODE_ID", "a")], DEADLINE);
    let b = crate::process::start_url(&db.url, &[("SPOOL_NODE_ID", "b")], DEADLINE);
    put_json(&c, &stream(&a.base, "wake/a"), &json!([])).await;
    let config = json!({"type": "pull-wake", "pattern": "work/*", "wake_stream": "wake/a"});
    let r = put_json(&c, &sub(&a.base, "on-a"), &config).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    // Its id is taken in the store: b does not make a second one beside it.
    let r = put_json(&c, &sub(&b.base, "on-a"), &config).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "SUBSCRIPTION_ALREADY_EXISTS"
    );
    // a takes the appends and wakes it; the wake is read on b like any stream.
    put_json(&c, &stream(&a.base, "work/1"), &json!({"n": 1})).await;
    let wakes: Value = until("the wake, read on b", async || {
        let v: Value = c
            .get(format!("{}?offset=-1", stream(&b.base, "wake/a")))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v.as_array()?.len() == 1).then_some(v)
    })
    .await;
    assert_eq!(wakes[0]["subscription_id"], "on-a");
    let r = post_json(
        &c,
        &format!("{}/claim", sub(&a.base, "on-a")),
        &json!({"worker": "w"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    // b, restarted, leaves a's subscription to a.
    drop(b);
    let b = crate::process::start_url(&db.url, &[("SPOOL_NODE_ID", "b")], DEADLINE);
    let r = c.get(sub(&b.base, "on-a")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c.get(sub(&a.base, "on-a")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    drop((a, b));
    drop(db);
}
