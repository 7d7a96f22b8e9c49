//! Health, readiness, metrics and the model list.

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn health_readiness_models_and_metrics() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["store"].clone(), v["models"].clone()),
        (json!(true), json!(true))
    );

    let v: Value = app.client.get(app.url("/v1/models")).send_json().await;
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "mock");
    assert_eq!(v["data"][0]["object"], "model");

    let id = app.create(json!({"prompt": "x", "max_tokens": 4})).await;
    app.wait_terminal(&id).await;
    app.read_events(&id, None).await;
    app.read_events(&id, Some(2)).await;
    assert_eq!(app.metric("spool_streams_started_total").await, 1.0);
    assert_eq!(app.metric("spool_tokens_generated_total").await, 4.0);
    assert_eq!(app.metric("spool_events_committed_total").await, 6.0);
    assert_eq!(app.metric("spool_events_delivered_total").await, 6.0 + 4.0);
    assert_eq!(app.metric("spool_resumes_total").await, 1.0);
    assert!(app.metric("spool_store_batch_events_count").await >= 1.0);
    assert!(app.metric("spool_time_to_first_token_seconds_count").await >= 1.0);
}
