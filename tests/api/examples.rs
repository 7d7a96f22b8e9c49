//! The examples in `examples/` run against a real server, so they never rot.

use crate::helpers::*;

#[tokio::test]
async fn curl_tour_runs_as_documented() {
    let app = spawn_with(|c| c.mock.rate = 200.0).await;
    let out = tokio::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/curl.sh"))
        .arg(&app.base)
        .output()
        .await
        .expect("bash and curl are needed (.ci/run installs them)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("event: done"), "{stdout}");
    // The resume after event 3 starts at event 4.
    let resumed = stdout
        .split("== resume after event 3 (Last-Event-ID)\n")
        .nth(1)
        .unwrap();
    assert!(resumed.starts_with("retry: 1000\n\nid: 4\n"), "{resumed}");
    assert!(
        stdout.contains("== at the terminal event: 204\n204\n"),
        "{stdout}"
    );
    assert!(stdout.contains("200\n204\n"), "{stdout}");
}

/// Runs an example client through a proxy that cuts its first connections mid-stream:
/// the printed text must still be exactly the stream's.
async fn client_example(program: &str, script: &str) {
    let app = spawn_with(|c| c.mock.rate = 300.0).await;
    let base = cutting_proxy(app.addr, 600, 2, Cut::Any).await;
    let out = tokio::process::Command::new(program)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/").to_owned() + script)
        .arg("hi")
        .arg("80")
        .env("SPOOL_BASE", &base)
        .output();
    let out = tokio::time::timeout(DEADLINE, out).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let text: String = (1..=80).map(|i| format!(" tok{i}")).collect();
    assert_eq!(stdout, format!("{text}\n[length, 80 tokens]\n"), "{stderr}");
    assert!(
        stderr.contains("resuming"),
        "the proxy cut nothing: {stderr}"
    );
}

#[tokio::test]
async fn the_python_client_example_resumes_exactly() {
    client_example("python3", "client.py").await;
}

#[tokio::test]
async fn the_node_client_example_resumes_exactly() {
    client_example("node", "client.mjs").await;
}

/// Runs a Responses API background-mode example (the official SDK) through a proxy that
/// cuts its first two connections mid-stream: the printed text must be exactly the
/// response's, and it must have resumed.
async fn responses_example(program: std::path::PathBuf, script: std::path::PathBuf) {
    let app = spawn_with(|c| c.mock.rate = 300.0).await;
    let base = cutting_proxy(app.addr, 3000, 2, Cut::Any).await;
    let out = tokio::process::Command::new(program)
        .arg(script)
        .arg("hi")
        .arg("80")
        .env("SPOOL_BASE", &base)
        .output();
    let out = tokio::time::timeout(DEADLINE, out).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        stdout,
        format!("{}\n[incomplete, 80 tokens]\n", mock_text(80)),
        "{stderr}"
    );
    assert!(
        stderr.contains("resuming"),
        "the proxy cut nothing: {stderr}"
    );
}

#[tokio::test]
async fn the_python_responses_example_resumes_exactly() {
    crate::sdk::install();
    responses_example(
        crate::sdk::clients_dir().join("venv/bin/python"),
        crate::sdk::repo().join("examples/responses_background.py"),
    )
    .await;
}

#[tokio::test]
async fn the_node_responses_example_resumes_exactly() {
    crate::sdk::install();
    // ESM resolves `openai` next to the script: run a copy inside the install.
    let script = crate::sdk::clients_dir().join("node/responses_background.mjs");
    std::fs::copy(
        crate::sdk::repo().join("examples/responses_background.mjs"),
        &script,
    )
    .unwrap();
    responses_example(std::path::PathBuf::from("node"), script).await;
}

/// docs/api.md shows the Responses examples as they are (what a test runs is what a
/// reader pastes).
#[test]
fn the_docs_show_the_responses_examples_as_they_are() {
    let docs = std::fs::read_to_string(crate::sdk::repo().join("docs/api.md")).unwrap();
    for (file, from, fence) in [
        (
            "examples/responses_background.py",
            "import os",
            "```python\n",
        ),
        (
            "examples/responses_background.mjs",
            "import OpenAI",
            "```js\n",
        ),
    ] {
        let code = std::fs::read_to_string(crate::sdk::repo().join(file)).unwrap();
        let body = &code[code.find(from).unwrap()..];
        assert!(
            docs.contains(&format!("{fence}{body}```")),
            "docs/api.md does not show {file} as it is"
        );
    }
}
