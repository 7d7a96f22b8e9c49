//! Resume: cursor rules, and the property that any drop points give the same events as
//! an unbroken read.

use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn cursor_rules() {
    let app = spawn_app().await;
    let id = app.create(json!({"prompt": "x", "max_tokens": 3})).await; // events 1..=5
    app.wait_terminal(&id).await;

    let (code, body) = app.read_events(&id, Some(2)).await;
    assert_eq!(code, 200);
    let ids: Vec<_> = parse_sse(&body).iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, [3, 4, 5]);
    assert!(body.starts_with("retry: 1000\n\n"));

    // `?after=` works, and `Last-Event-ID` wins over it.
    let r = app
        .client
        .get(app.url(&format!("/v1/streams/{id}/events?after=3")))
        .send()
        .await
        .unwrap();
    let ids: Vec<_> = parse_sse(&r.text().await.unwrap())
        .iter()
        .map(|e| e.id.unwrap())
        .collect();
    assert_eq!(ids, [4, 5]);
    let r = app
        .client
        .get(app.url(&format!("/v1/streams/{id}/events?after=1")))
        .header("Last-Event-ID", "4")
        .send()
        .await
        .unwrap();
    let ids: Vec<_> = parse_sse(&r.text().await.unwrap())
        .iter()
        .map(|e| e.id.unwrap())
        .collect();
    assert_eq!(ids, [5]);

    // At the terminal id: 204, so EventSource stops reconnecting.
    assert_eq!(app.read_events(&id, Some(5)).await.0, 204);
    // Beyond it, or not a non-negative integer: 400, never "from the start".
    for bad in ["6", "-1", "abc", "1.5", "", "+2", "99999999999999999999999"] {
        let r = app
            .client
            .get(app.url(&format!("/v1/streams/{id}/events")))
            .header("Last-Event-ID", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "Last-Event-ID {bad:?}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(v["error"]["code"].is_string());
    }
    let r = app
        .client
        .get(app.url(&format!("/v1/streams/{id}/events?after=x")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Unknown streams: 404.
    for unknown in ["st_aaaaaaaaaaaaaaaaaaaaa", "nope"] {
        let r = app
            .client
            .get(app.url(&format!("/v1/streams/{unknown}/events")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "stream_not_found");
    }
}

#[tokio::test]
async fn resume_of_a_live_stream_is_exact() {
    let app = spawn_with(|c| c.mock.rate = 200.0).await;
    let id = app.create(json!({"prompt": "x", "max_tokens": 40})).await;
    let first = read_n_events(&app, &id, 6).await; // start + 5 tokens, stream still running
    assert_eq!(app.status(&id).await["status"], "running");
    let (code, rest) = app.read_events(&id, first.last().unwrap().id).await;
    assert_eq!(code, 200);
    let mut all = first;
    all.extend(parse_sse(&rest));
    let (_, unbroken) = app.read_events(&id, None).await;
    assert_eq!(all, parse_sse(&unbroken));
    assert_eq!(all.len(), 42);
    let ids: Vec<u64> = all.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, (1..=42).collect::<Vec<_>>());
}

/// Reads the events body, cutting the connection after `cut` body bytes (mid-event
/// included), and returns the complete events received plus whether the body ended.
async fn read_until_cut(
    app: &TestApp,
    id: &str,
    last: Option<u64>,
    cut: usize,
) -> (Vec<SseEvent>, bool) {
    let mut req = app.client.get(app.url(&format!("/v1/streams/{id}/events")));
    if let Some(n) = last {
        req = req.header("Last-Event-ID", n.to_string());
    }
    let r = req.send().await.unwrap();
    if r.status() == 204 {
        return (Vec::new(), true);
    }
    assert_eq!(r.status(), 200);
    let mut reader = SseReader::new(r, DEADLINE);
    let ended = !reader.read_until(|r| r.bytes().len() >= cut).await;
    let body = reader.bytes();
    (parse_sse(&body[..cut.min(body.len())]), ended)
}

/// Follows a stream through a sequence of drops at the given body offsets, resuming
/// with `Last-Event-ID` each time, until the terminal event.
async fn read_with_drops(app: &TestApp, id: &str, cuts: &[usize]) -> Vec<SseEvent> {
    let mut got: Vec<SseEvent> = Vec::new();
    let mut cuts = cuts.iter().copied();
    loop {
        let last = got.last().and_then(|e| e.id);
        let cut = cuts.next().unwrap_or(usize::MAX);
        let (events, ended) = read_until_cut(app, id, last, cut).await;
        got.extend(events);
        if got
            .last()
            .is_some_and(|e| e.event == "done" || e.event == "error")
        {
            return got;
        }
        assert!(!ended, "the body ended before the terminal event: {got:?}");
    }
}

#[test]
fn any_drop_points_give_the_unbroken_events() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(spawn_with(|c| c.mock.rate = 2000.0));
    // A finished stream and, per case, a live one.
    let finished = rt.block_on(async {
        let id = app.create(json!({"prompt": "x", "max_tokens": 30})).await;
        app.wait_terminal(&id).await;
        id
    });
    let (_, reference) = rt.block_on(app.read_events(&finished, None));
    let reference = parse_sse(&reference);
    assert_eq!(reference.len(), 32);

    let config = ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let strategy = proptest::collection::vec(0usize..700, 0..6);
    runner
        .run(&strategy, |cuts| {
            rt.block_on(async {
                let got = read_with_drops(&app, &finished, &cuts).await;
                prop_assert_eq!(&got, &reference);

                let live = app.create(json!({"prompt": "x", "max_tokens": 30})).await;
                let got = read_with_drops(&app, &live, &cuts).await;
                let (_, unbroken) = app.read_events(&live, None).await;
                prop_assert_eq!(got.len(), 32);
                prop_assert_eq!(got, parse_sse(&unbroken));
                Ok(())
            })
        })
        .unwrap();
    drop(app);
    rt.shutdown_timeout(Duration::from_secs(5));
}
