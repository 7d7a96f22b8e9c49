//! The Durable Streams protocol at `/ds/v1/stream/{name}` (issue 21): the protocol's
//! own conformance suite (`@durable-streams/server-conformance-tests`, with vitest)
//! run against spool on SQLite; the official TypeScript and Python clients; spool's
//! own streams read as Durable Streams; and an app's own producer feeding spool's
//! readers (native SSE with `Last-Event-ID`, the WebSocket, the status); and a
//! producer's retries and close across `kill -9`.

use std::process::Command;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::sdk::{clients_dir, install, repo};

/// How long the server's long-poll waits in these tests (the suite is told a little
/// more, so it never gives up first).
const LONG_POLL: std::time::Duration = std::time::Duration::from_secs(1);

async fn ds_app() -> TestApp {
    spawn_with(|c| {
        c.mock.rate = 300.0;
        c.server.ds_long_poll_timeout = LONG_POLL;
        c.server.cors_origins = vec!["*".into()];
    })
    .await
}

/// Runs the whole suite against `app`; asserts every test that runs passes.
async fn conformance(app: &TestApp, store: &str) {
    install();
    let node = clients_dir().join("node");
    std::fs::copy(
        repo().join("tests/clients/ds_conformance.test.mjs"),
        node.join("ds_conformance.test.mjs"),
    )
    .unwrap();
    let report = node.join(format!("ds_conformance_{store}.json"));
    let _ = std::fs::remove_file(&report);
    let base = format!("{}/ds", app.base);
    let args = [
        "node_modules/vitest/vitest.mjs".to_owned(),
        "run".to_owned(),
        "ds_conformance.test.mjs".to_owned(),
        "--reporter=json".to_owned(),
        format!("--outputFile={}", report.display()),
    ];
    let dir = node.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(args)
            .current_dir(dir)
            .env("DS_BASE", base)
            .env("DS_LONG_POLL_MS", "4000")
            .output()
    })
    .await
    .unwrap()
    .expect("node");
    let report: Value = serde_json::from_slice(&std::fs::read(&report).unwrap_or_else(|_| {
        panic!(
            "vitest wrote no report:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }))
    .unwrap();
    let tests: Vec<&Value> = report["testResults"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["assertionResults"].as_array().unwrap())
        .collect();
    let count = |status: &str| tests.iter().filter(|t| t["status"] == status).count();
    let failed: Vec<String> = tests
        .iter()
        .filter(|t| t["status"] == "failed")
        .map(|t| t["fullName"].as_str().unwrap_or_default().to_owned())
        .collect();
    let skipped = tests.len() - count("passed") - failed.len();
    eprintln!(
        "Durable Streams conformance 0.3.6 on {store}: {} passed, {} failed, {skipped} skipped, of {}",
        count("passed"),
        failed.len(),
        tests.len()
    );
    assert_eq!(tests.len(), 338, "the suite's size changed");
    assert!(failed.is_empty(), "failed: {failed:#?}");
    // Its reserved subscription APIs included (`subscriptions: true`).
    assert_eq!(count("passed"), 338);
}

#[tokio::test]
async fn the_protocols_conformance_suite_passes_on_sqlite() {
    let app = ds_app().await;
    conformance(&app, "sqlite").await;
}

#[tokio::test]
async fn the_protocols_conformance_suite_passes_on_postgres() {
    let db = crate::pg::TestDb::create().await;
    let url = db.url.clone();
    let app = spawn_with(move |c| {
        c.store.database_url = url;
        c.cluster.node_id = Some("ds".into());
        c.mock.rate = 300.0;
        c.server.ds_long_poll_timeout = LONG_POLL;
        c.server.cors_origins = vec!["*".into()];
    })
    .await;
    conformance(&app, "postgres").await;
    drop(app);
    drop(db);
}

#[tokio::test]
async fn the_official_typescript_and_python_clients_read_and_write_spool_streams() {
    install();
    let app = ds_app().await;
    let native = app.create(json!({"prompt": "hi", "max_tokens": 5})).await;
    app.wait_terminal(&native).await;
    let base = format!("{}/ds", app.base);
    let script = clients_dir().join("node/ds_clients.mjs");
    std::fs::copy(repo().join("tests/clients/ds_clients.mjs"), &script).unwrap();
    for (program, script) in [
        ("node".into(), script),
        (
            clients_dir().join("venv/bin/python"),
            repo().join("tests/clients/ds_clients.py"),
        ),
    ] {
        let args = [script.display().to_string(), base.clone(), native.clone()];
        let out = tokio::task::spawn_blocking(move || Command::new(program).args(args).output())
            .await
            .unwrap()
            .expect("the client runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(seen["text"], mock_text(5), "{seen}");
    }
}

#[tokio::test]
async fn a_stream_spool_generates_is_a_read_only_json_durable_stream() {
    let app = spawn_with(|c| {
        c.mock.rate = 40.0;
        c.server.ds_long_poll_timeout = LONG_POLL;
    })
    .await;
    let id = app.create(json!({"prompt": "hi", "max_tokens": 30})).await;
    let url = app.url(&format!("/ds/v1/stream/{id}"));
    // Catch-up while it runs: the events so far, one message each.
    let r = app
        .client
        .get(format!("{url}?offset=-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let next = r.headers()["stream-next-offset"]
        .to_str()
        .unwrap()
        .to_owned();
    let first: Vec<Value> = r.json().await.unwrap();
    assert_eq!(first[0]["event"], "start");
    assert_eq!(first[0]["seq"], 1);
    // Long-poll from there: the next events, then the rest to the done.
    let mut messages = first;
    let mut offset = next;
    loop {
        let r = app
            .client
            .get(format!("{url}?offset={offset}&live=long-poll"))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::NO_CONTENT {
            assert_eq!(r.headers()["stream-closed"], "true");
            break;
        }
        offset = r.headers()["stream-next-offset"]
            .to_str()
            .unwrap()
            .to_owned();
        let more: Vec<Value> = r.json().await.unwrap();
        messages.extend(more);
    }
    let seqs: Vec<u64> = messages
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=32).collect::<Vec<_>>());
    let text: String = messages
        .iter()
        .filter(|m| m["event"] == "token")
        .map(|m| m["data"]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, mock_text(30));
    assert_eq!(messages.last().unwrap()["event"], "done");
    // Read-only: no append, no delete; another key's would be 404 (tested with keys).
    let r = app
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let r = app.client.put(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn an_apps_own_producer_feeds_spools_readers_and_a_close_appends_done() {
    let app = ds_app().await;
    let url = app.url("/ds/v1/stream/agents/run-1");
    let r = app
        .client
        .put(&url)
        .header("content-type", "application/json")
        .header("spool-events", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.headers()["spool-stream-id"].to_str().unwrap().to_owned();
    // A native reader and a WebSocket subscriber follow it before anything is sent.
    let native = app.open_events(&id).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(app.url("/v1/ws").replace("http", "ws"))
        .await
        .unwrap();
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        json!({"type": "subscribe", "stream_id": id})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let post = |body: Value| {
        app.client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let r = post(json!([
        {"seq": 2, "event": "reasoning", "data": {"text": "plan", "field": "reasoning"}},
        {"event": "token", "data": {"text": "Step "}},
        {"event": "token", "data": {"text": "one."}}
    ]))
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // Not spool events: refused, and nothing is stored.
    for bad in [
        json!({"event": "token", "data": {"text": 5}}),
        json!({"event": "start", "data": {}}),
        json!({"event": "nonsense", "data": {}}),
        json!({"seq": 99, "event": "token", "data": {"text": "x"}}),
        json!({"text": "no event"}),
    ] {
        let r = post(bad.clone()).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    // Closing without a terminal event appends `done`.
    let r = app
        .client
        .post(&url)
        .header("stream-closed", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let body = native
        .read_to_end(tokio::time::Instant::now() + DEADLINE)
        .await;
    let events = parse_sse(&body);
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["start", "reasoning", "token", "token", "done"]);
    assert_contiguous(&events);
    // Resumed with Last-Event-ID: exactly the rest, the same bytes.
    let (_, rest) = app.read_events(&id, Some(3)).await;
    let cut = body.find("id: 4\n").unwrap();
    assert_eq!(rest.trim_start_matches("retry: 1000\n\n"), &body[cut..]);
    // The WebSocket got each event as its kind.
    let mut ws_kinds = Vec::new();
    while ws_kinds.last().map(String::as_str) != Some("done") {
        let msg = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            ws_kinds.push(v["type"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(ws_kinds, ["reasoning", "token", "token", "done"]);
    let status = app.status(&id).await;
    assert_eq!(status["status"], "completed");
    assert_eq!(status["text"], "Step one.");
    assert_eq!(status["reasoning"], "plan");
    // And the Durable Stream gives the same events back as messages.
    let all: Vec<Value> = app
        .client
        .get(format!("{url}?offset=-1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(
        all[2],
        json!({"seq": 3, "event": "token", "data": {"text": "Step "}})
    );
}

/// A request with a text body (none when empty) and maybe an API key.
async fn send_text(
    app: &TestApp,
    method: reqwest::Method,
    url: &str,
    key: Option<&str>,
    body: &str,
) -> reqwest::Response {
    let mut r = app.client.request(method, url);
    if let Some(key) = key {
        r = r.bearer_auth(key);
    }
    if !body.is_empty() {
        r = r.header("content-type", "text/plain").body(body.to_owned());
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn with_keys_a_durable_stream_belongs_to_its_creator() {
    let app = spawn_with(|c| c.auth.api_keys = vec!["alpha-key".into(), "beta-key".into()]).await;
    let url = app.url("/ds/v1/stream/owned");
    let r = app.client.put(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = send_text(&app, reqwest::Method::PUT, &url, Some("alpha-key"), "mine").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let token = r.headers()["stream-read-token"]
        .to_str()
        .unwrap()
        .to_owned();
    let theirs = send_text(
        &app,
        reqwest::Method::GET,
        &format!("{url}?offset=-1"),
        Some("beta-key"),
        "",
    )
    .await;
    assert_eq!(theirs.status(), StatusCode::NOT_FOUND);
    let r = send_text(&app, reqwest::Method::POST, &url, Some("beta-key"), "x").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let mine = send_text(
        &app,
        reqwest::Method::GET,
        &format!("{url}?offset=-1"),
        Some("alpha-key"),
        "",
    )
    .await;
    assert_eq!(mine.text().await.unwrap(), "mine");
    // A browser's EventSource sends no header: the read token opens this stream's
    // GETs (catch-up and live), nothing else.
    let by_token = app
        .client
        .get(format!("{url}?offset=-1&token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_token.text().await.unwrap(), "mine");
    let sse = app
        .client
        .get(format!("{url}?offset=-1&live=sse&token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    drop(sse);
    // A name with `+` and an escaped space: the token names it as the route does.
    let odd = app.url("/ds/v1/stream/a+b%20c");
    let r = send_text(&app, reqwest::Method::PUT, &odd, Some("alpha-key"), "odd").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let odd_token = r.headers()["stream-read-token"]
        .to_str()
        .unwrap()
        .to_owned();
    let by_token = app
        .client
        .get(format!("{odd}?offset=-1&token={odd_token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_token.text().await.unwrap(), "odd");
    for (method, path) in [
        ("POST", "/ds/v1/stream/owned"),
        ("GET", "/ds/v1/stream/other"),
        ("GET", "/v1/streams"),
    ] {
        let r = app
            .client
            .request(
                method.parse().unwrap(),
                app.url(&format!("{path}?token={token}")),
            )
            .header("content-type", "text/plain")
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
    }
}

#[tokio::test]
async fn the_chat_page_shows_a_stream_an_apps_producer_wrote() {
    let app = ds_app().await;
    let url = app.url("/ds/v1/stream/page-run");
    let r = app
        .client
        .put(&url)
        .header("content-type", "application/json")
        .header("spool-events", "true")
        .body(r#"[{"event":"token","data":{"text":"Hello "}},{"event":"token","data":{"text":"from an agent."}}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.headers()["spool-stream-id"].to_str().unwrap().to_owned();
    let closed = app
        .client
        .post(&url)
        .header("stream-closed", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status(), StatusCode::NO_CONTENT);
    let r = crate::browser::run_case_with("stream", &app.base, Some(&id)).await;
    assert_eq!(r["text"], "Hello from an agent.", "{r}");
    assert_eq!(r["streamId"], id.as_str());
}

#[tokio::test]
async fn the_curl_producer_example_runs_as_documented() {
    let app = ds_app().await;
    let script = repo().join("examples/ds_producer.sh");
    let out = tokio::process::Command::new("bash")
        .arg(&script)
        .arg(&app.base)
        .output();
    let out = tokio::time::timeout(DEADLINE, out).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("event: start event: reasoning event: token event: token event: done"),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("Step one done. Step two done.\n"),
        "{stdout}"
    );
    let docs = std::fs::read_to_string(repo().join("docs/api.md")).unwrap();
    let code = std::fs::read_to_string(&script).unwrap();
    assert!(
        docs.contains(code.split_once("\n\n").unwrap().1),
        "docs/api.md does not show examples/ds_producer.sh as it is"
    );
}

/// One producer append of `body` (JSON), maybe closing the stream.
async fn produce(
    c: &reqwest::Client,
    url: &str,
    seq: u64,
    body: &str,
    close: bool,
) -> reqwest::Response {
    let mut r = c
        .post(url)
        .header("content-type", "application/json")
        .header("producer-id", "p1")
        .header("producer-epoch", "0")
        .header("producer-seq", seq.to_string());
    if close {
        r = r.header("stream-closed", "true");
    }
    r.body(body.to_owned()).send().await.unwrap()
}

#[tokio::test]
async fn a_producers_retry_after_kill_9_is_a_duplicate_and_its_close_stays() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ds.db");
    let c = reqwest::Client::new();
    let mut server = crate::process::start(&db, &[], DEADLINE);
    let url = format!("{}/ds/v1/stream/jobs/run", server.base);
    let r = c
        .put(&url)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        produce(&c, &url, 0, r#"{"n":0}"#, false).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        produce(&c, &url, 1, r#"{"n":1}"#, false).await.status(),
        StatusCode::OK
    );

    // Killed after the append of seq 1 was answered: its retry must not append again.
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    let mut server = crate::process::start(&db, &[], DEADLINE);
    let url = format!("{}/ds/v1/stream/jobs/run", server.base);
    let r = produce(&c, &url, 1, r#"{"n":1}"#, false).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT, "a duplicate");
    // A gap is still a gap; the next seq appends and closes.
    let r = produce(&c, &url, 5, r#"{"n":5}"#, false).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(r.headers()["producer-expected-seq"], "2");
    assert_eq!(
        produce(&c, &url, 2, r#"{"n":2}"#, true).await.status(),
        StatusCode::OK
    );

    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let server = crate::process::start(&db, &[], DEADLINE);
    let url = format!("{}/ds/v1/stream/jobs/run", server.base);
    // The closing append's retry is a duplicate; anything else meets a closed stream.
    let r = produce(&c, &url, 2, r#"{"n":2}"#, true).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = produce(&c, &url, 3, r#"{"n":3}"#, false).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(r.headers()["stream-closed"], "true");
    let all: Value = c
        .get(format!("{url}?offset=-1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all, json!([{"n": 0}, {"n": 1}, {"n": 2}]), "each once");
}
