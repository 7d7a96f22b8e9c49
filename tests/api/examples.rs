//! The examples in `examples/` run against a real server, so they never rot.

use crate::helpers::*;

#[tokio::test]
async fn curl_tour_runs_as_documented() {
    let app = spawn_with(|c| c.mock_rate = 200.0).await;
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
