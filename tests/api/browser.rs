//! The chat page at `/` in a real headless browser: Debian's `chromium` driven by
//! `playwright-core` (installed by `tests/clients/install.sh`; no browser download). Each
//! test starts spool (mock backend, paced) and runs `tests/browser/chat.mjs` for one
//! case — ask, resume after a cut connection, Stop, reload, a server with API keys, the
//! sidebar managing the server's conversations, Markdown answers — then
//! checks the outcome against the API. Screenshots go to `target/screenshots/`.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::helpers::*;
use crate::sdk::{clients_dir, install, repo};

const CHROMIUM: &str = "/usr/bin/chromium";

pub(crate) fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs one case of `chat.mjs` against `base`; returns its JSON result.
pub async fn run_case(case: &str, base: &str) -> Value {
    run_case_with(case, base, None).await
}

/// [`run_case`] with an argument for the case (a stream id to show).
pub async fn run_case_with(case: &str, base: &str, arg: Option<&str>) -> Value {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "the browser tests need Debian's chromium: apt-get install -y chromium"
    );
    install();
    // ESM resolves `playwright-core` next to the script: run a copy inside the install.
    let script = clients_dir().join("node/chat.mjs");
    std::fs::copy(repo().join("tests/browser/chat.mjs"), &script).unwrap();
    let shot = screenshots().join(format!("chat-{case}.png"));
    let args = [
        script.display().to_string(),
        case.to_string(),
        base.to_string(),
        shot.display().to_string(),
        arg.unwrap_or_default().to_string(),
    ];
    let started = std::time::Instant::now();
    let output = tokio::task::spawn_blocking(move || Command::new("node").args(args).output())
        .await
        .unwrap()
        .expect("node could not be started");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "browser case {case} failed:\n{stdout}\n{stderr}"
    );
    eprintln!("browser case {case}: {:?}", started.elapsed());
    assert!(shot.exists(), "no screenshot at {}", shot.display());
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn expected(n: u32) -> String {
    (1..=n).map(|i| format!(" tok{i}")).collect()
}

#[tokio::test]
async fn the_page_streams_an_answer() {
    let app = spawn_with(|c| c.mock.rate = 40.0).await;
    let r = run_case("ask", &app.base).await;
    assert_eq!(r["text"], expected(7));
    let id = r["streamId"].as_str().unwrap();
    let status = app.status(id).await;
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["text"], expected(7));
}

#[tokio::test]
async fn the_eventsource_example_streams_in_a_browser() {
    let app = spawn_with(|c| c.mock.rate = 40.0).await;
    let r = run_case("eventsource", &app.base).await;
    assert_eq!(r["ok"], true);
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_from_the_binary() {
    let app = spawn_app().await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/page/app.js", "text/javascript"),
        ("/page/markdown.js", "text/javascript"),
        ("/page/style.css", "text/css"),
    ] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        assert!(
            r.headers().contains_key("content-security-policy"),
            "{path}"
        );
    }
    let r = app
        .client
        .get(app.url("/favicon.ico"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

#[tokio::test]
async fn the_page_resumes_a_cut_connection_with_the_exact_text() {
    let app = spawn_with(|c| c.mock.rate = 40.0).await;
    let base = cutting_proxy(app.addr, 600, 1, Cut::EventsOnly).await;
    let r = run_case("resume", &base).await;
    assert!(r["reconnects"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["text"], expected(60));
    let status = app.status(r["streamId"].as_str().unwrap()).await;
    assert_eq!(
        r["text"], status["text"],
        "the page differs from the stored stream"
    );
}

#[tokio::test]
async fn the_stop_button_cancels_over_the_websocket() {
    let app = spawn_with(|c| c.mock.rate = 40.0).await;
    let r = run_case("stop", &app.base).await;
    assert_eq!(r["state"], "cancelled");
    let status = app.wait_terminal(r["streamId"].as_str().unwrap()).await;
    assert_eq!(status["status"], "cancelled", "{status}");
    assert_eq!(status["finish_reason"], "cancelled", "{status}");
    assert_eq!(
        r["text"], status["text"],
        "the page differs from the stored stream"
    );
}

#[tokio::test]
async fn a_reload_finds_the_sessions_and_their_turns() {
    let app = spawn_with(|c| c.mock.rate = 40.0).await;
    let r = run_case("reload", &app.base).await;
    for id in [&r["first"], &r["second"]] {
        assert_eq!(
            app.status(id.as_str().unwrap()).await["status"],
            "completed"
        );
    }
}

#[tokio::test]
async fn with_api_keys_the_page_asks_for_a_key_then_streams_and_stops() {
    // `page-key-1` is the key chat.mjs types.
    let app = spawn_with(|c| {
        c.mock.rate = 40.0;
        c.auth.api_keys = vec!["page-key-1".into()];
    })
    .await;
    let r = run_case("keys", &app.base).await;
    let status = |id: &str| {
        let request = app
            .client
            .get(app.url(&format!("/v1/streams/{id}")))
            .bearer_auth("page-key-1");
        async move {
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let first = status(r["first"].as_str().unwrap()).await;
    assert_eq!(first["status"], "completed", "{first}");
    assert_eq!(first["text"], expected(5));
    let until = tokio::time::Instant::now() + DEADLINE;
    let second = loop {
        let s = status(r["second"].as_str().unwrap()).await;
        if !matches!(s["status"].as_str(), Some("queued" | "running")) {
            break s;
        }
        assert!(tokio::time::Instant::now() < until, "never ended: {s}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(second["status"], "cancelled", "{second}");
    assert_eq!(
        r["stoppedText"], second["text"],
        "the page differs from the stored stream"
    );
}

#[tokio::test]
async fn the_page_lists_renames_and_deletes_the_servers_conversations() {
    let app = spawn_with(|c| c.mock.rate = 40.0).await;
    let r = run_case("manage", &app.base).await;
    let renamed: Value = app
        .client
        .get(app.url(&format!("/v1/sessions/{}", r["renamed"].as_str().unwrap())))
        .send_json()
        .await;
    assert_eq!(renamed["title"], "Renamed trip", "{renamed}");
    let page: Value = app.client.get(app.url("/v1/sessions")).send_json().await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1, "{page}");
    let deleted = app
        .client
        .get(app.url(&format!(
            "/v1/streams/{}",
            r["deletedStream"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 404, "the deleted conversation's stream");
}

#[tokio::test]
async fn the_page_renders_markdown_answers_without_model_html() {
    let app = spawn_with(|c| c.mock.rate = 40.0).await;
    let r = run_case("markdown", &app.base).await;
    assert_eq!(r["ok"], true, "{r}");
}
