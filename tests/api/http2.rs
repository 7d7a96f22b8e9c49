//! HTTP/2 without TLS (h2c, prior knowledge) on the same port as HTTP/1.1: many SSE
//! streams multiplexed over one connection, each complete and in order.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_hundred_sse_streams_over_one_http2_connection() {
    let app = spawn_with(|c| c.mock_rate = 200.0).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..100 {
        let r = h2
            .post(app.url("/v1/streams"))
            .json(&json!({"prompt": "x", "max_tokens": 20}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 201);
        let body: serde_json::Value = r.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let reads = ids.iter().map(|id| {
        let h2 = h2.clone();
        let url = app.url(&format!("/v1/streams/{id}/events"));
        async move {
            let r = h2.get(url).send().await.unwrap();
            assert_eq!(r.version(), reqwest::Version::HTTP_2);
            r.text().await.unwrap()
        }
    });
    let bodies = tokio::time::timeout(DEADLINE, futures_util::future::join_all(reads))
        .await
        .expect("the streams did not finish");
    for body in bodies {
        let events = parse_sse(&body);
        let seqs: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
        assert_eq!(seqs, (1..=22).collect::<Vec<_>>());
        assert_eq!(events.last().unwrap().event, "done");
    }
}
