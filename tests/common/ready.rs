//! Waiting until a server is ready (shared by the test binaries): its `/readyz` polled
//! with a deadline, never a bare sleep.

use std::time::Duration;

use tokio::time::Instant;

/// Polls `{base}/readyz` until it answers `200`. Fails the test at `deadline`, or at
/// once on an answer other than `200` or `503` (`503`: not ready yet, say a model still
/// loading); a connection that fails counts as not ready yet. Blocks the calling
/// thread — it polls from a thread of its own, so it may be called from inside a
/// runtime too.
pub fn wait_ready(base: &str, deadline: Duration) {
    let url = format!("{base}/readyz");
    let polling = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(poll(&url, deadline))
    });
    if let Err(panic) = polling.join() {
        std::panic::resume_unwind(panic);
    }
}

async fn poll(url: &str, deadline: Duration) {
    // A server started with TLS has the test's self-signed certificate: whether it is
    // ready is all this asks.
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let until = Instant::now() + deadline;
    loop {
        let last = match tokio::time::timeout_at(until, client.get(url).send()).await {
            Ok(Ok(r)) if r.status() == 200 => return,
            Ok(Ok(r)) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                assert_eq!(status, 503, "{url}: {body}");
                format!("{status} {body}")
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer".to_owned(),
        };
        assert!(
            Instant::now() < until,
            "{url} not ready within {deadline:?}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
