//! `spool generate` and `spool tail`, the real binary against a server on port 0 —
//! including connections cut mid-stream by a proxy in the test.

use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::helpers::*;

async fn spool(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_spool"))
        .args(args)
        .env_remove("SPOOL_BASE")
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(DEADLINE, out).await.unwrap().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn expected(n: u32) -> String {
    (1..=n).map(|i| format!(" tok{i}")).collect::<String>() + "\n"
}

#[tokio::test]
async fn generate_prints_the_text_and_exits_0() {
    let app = spawn_app().await;
    let (code, out, err) =
        spool(&["generate", "--base", &app.base, "--max-tokens", "5", "hi"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, expected(5));

    let (code, out, _) = spool(&[
        "generate",
        "--base",
        &app.base,
        "--max-tokens",
        "2",
        "--json",
        "hi",
    ])
    .await;
    assert_eq!(code, 0);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["start", "token", "token", "done"]);
    assert_eq!(lines[1]["data"]["text"], " tok1");
}

#[tokio::test]
async fn exit_codes_say_what_happened() {
    let app = spawn_with(|c| c.mock.fail_after = Some(2)).await;
    let (code, out, err) =
        spool(&["generate", "--base", &app.base, "--max-tokens", "5", "hi"]).await;
    assert_eq!(code, 4, "{err}");
    assert_eq!(out, " tok1 tok2\n");
    assert!(err.contains("backend_error"), "{err}");

    let (code, _, err) = spool(&["generate", "--base", &app.base, "--model", "nope", "hi"]).await;
    assert_eq!(code, 5);
    assert!(err.contains("404"), "{err}");

    let (code, _, err) = spool(&["generate", "--base", "http://127.0.0.1:9", "hi"]).await;
    assert_eq!(code, 5);
    assert!(err.contains("cannot reach"), "{err}");

    let (code, _, err) = spool(&["tail", "--base", &app.base, "st_aaaaaaaaaaaaaaaaaaaaa"]).await;
    assert_eq!(code, 5);
    assert!(err.contains("404"), "{err}");
}

#[tokio::test]
async fn tail_follows_from_a_point() {
    let app = spawn_app().await;
    let id = app.create(json!({"prompt": "x", "max_tokens": 6})).await;
    app.wait_terminal(&id).await;
    let (code, out, _) = spool(&["tail", "--base", &app.base, "--after", "4", &id]).await;
    assert_eq!(code, 0);
    assert_eq!(out, " tok4 tok5 tok6\n");
}

#[tokio::test]
async fn a_cut_connection_is_resumed_without_repeating_text() {
    let app = spawn_with(|c| c.mock.rate = 300.0).await;
    let base = cutting_proxy(app.addr, 700, 3, Cut::Any).await;
    let (code, out, err) = spool(&["generate", "--base", &base, "--max-tokens", "120", "hi"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, expected(120), "stdout differs from an unbroken run");
    assert!(err.contains("resuming"), "no notice on stderr: {err}");
}

/// Runs `generate` on a slow stream, sends it SIGINT after its first output.
async fn interrupted(app: &TestApp, mode: &str) -> (i32, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_spool"))
        .args([
            "generate",
            "--base",
            &app.base,
            "--max-tokens",
            "10000",
            "--on-interrupt",
            mode,
            "hi",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 8];
    tokio::time::timeout(DEADLINE, stdout.read_exact(&mut first))
        .await
        .unwrap()
        .unwrap();
    let pid = child.id().unwrap().to_string();
    let status = tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let mut rest = Vec::new();
    let _ = stdout.read_to_end(&mut rest).await;
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    let code = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap()
        .unwrap();
    (code.code().unwrap_or(-1), err)
}

#[tokio::test]
async fn ctrl_c_leaves_the_stream_running_or_cancels_it() {
    let app = spawn_with(|c| c.mock.rate = 50.0).await;
    let (code, err) = interrupted(&app, "leave").await;
    assert_eq!(code, 130, "{err}");
    let id = err
        .split_whitespace()
        .find(|w| w.starts_with("st_"))
        .unwrap()
        .to_owned();
    assert!(err.contains(&format!("spool tail {id} --after")), "{err}");
    assert_eq!(app.status(&id).await["status"], "running");

    let (code, err) = interrupted(&app, "cancel").await;
    assert_eq!(code, 3, "{err}");
    let id = err
        .split_whitespace()
        .find(|w| w.starts_with("st_"))
        .unwrap()
        .to_owned();
    assert_eq!(app.wait_terminal(&id).await["status"], "cancelled");
}
