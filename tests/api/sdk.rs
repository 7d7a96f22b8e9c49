//! The official `openai` SDKs for Python and Node, unchanged, against a spool on port 0:
//! completions, streams with usage, resuming an SDK-started stream by id, errors. The
//! client scripts are `tests/clients/`; `tests/clients/install.sh` installs the SDKs
//! (once) into the target directory.

use std::path::PathBuf;
use std::process::Command;

use crate::helpers::*;

pub fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("clients")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Installs the SDKs if they are not there yet; one install at a time.
pub fn install() {
    static ONCE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return;
    }
    let status = Command::new("bash")
        .arg(repo().join("tests/clients/install.sh"))
        .arg(clients_dir())
        .status()
        .expect("bash");
    assert!(
        status.success(),
        "installing the openai SDKs failed (python3 with venv and npm are needed)"
    );
    *done = true;
}

async fn run(program: PathBuf, script: PathBuf) {
    let app = spawn_app().await;
    run_client(program, script, vec![app.base.clone()]).await;
}

/// Runs a client script with `args` (base URLs); it must exit 0 and say `: ok`.
pub async fn run_client(program: PathBuf, script: PathBuf, args: Vec<String>) {
    install();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&program).arg(&script).args(&args).output()
    })
    .await
    .unwrap()
    .expect("the client could not be started");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(": ok"), "{stdout}");
}

#[tokio::test]
async fn the_python_openai_sdk_works_unchanged() {
    run(
        clients_dir().join("venv/bin/python"),
        repo().join("tests/clients/openai_sdk.py"),
    )
    .await;
}

#[tokio::test]
async fn the_node_openai_sdk_works_unchanged() {
    install();
    // ESM resolves `openai` next to the script: run a copy inside the install.
    let script = clients_dir().join("node/openai_sdk.mjs");
    std::fs::copy(repo().join("tests/clients/openai_sdk.mjs"), &script).unwrap();
    run(PathBuf::from("node"), script).await;
}
