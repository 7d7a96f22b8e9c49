//! Graceful shutdown with no drain (`SPOOL_DRAIN_TIMEOUT=0s`): running streams end
//! `interrupted` at once, every reader gets that end before its response closes, every
//! event is flushed, and a restart on the same file finds it all. (The drain itself is
//! tested on the real binary in `drain`.)

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn graceful_shutdown_ends_streams_and_flushes_every_event() {
    let mut app = spawn_with(|c| {
        c.mock.rate = 50.0;
        c.server.drain_timeout = Duration::ZERO;
    })
    .await;
    let mut ids = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..5 {
        let id = app
            .create(json!({"prompt": "x", "max_tokens": 10_000}))
            .await;
        let reader = app.open_events(&id).await;
        readers.push(tokio::spawn(reader.read_to_close()));
        ids.push(id);
    }
    for id in &ids {
        app.wait_for(id, "a few tokens", |s| {
            s["last_seq"].as_u64().unwrap_or(0) >= 3
        })
        .await;
    }
    let took = app.shutdown().await;
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");

    // Every open response ended (the clients would now resume elsewhere).
    let mut seen = Vec::new();
    for r in readers {
        seen.push(
            tokio::time::timeout(DEADLINE, r)
                .await
                .expect("an SSE response did not end")
                .unwrap(),
        );
    }

    // The writer's last act is a full checkpoint: the write-ahead log is empty.
    let wal = app.db.with_file_name(format!(
        "{}-wal",
        app.db.file_name().unwrap().to_string_lossy()
    ));
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal_len, 0, "{} still holds {wal_len} bytes", wal.display());

    // The shutdown itself ended the streams: no start-up recovery needed.
    {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", app.db.display()))
            .await
            .unwrap();
        let statuses: Vec<(String,)> = sqlx::query_as("SELECT status FROM streams")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert_eq!(statuses.len(), 5);
        assert!(
            statuses.iter().all(|(s,)| s == "interrupted"),
            "{statuses:?}"
        );
    }

    let dir = app.take_dir();
    let restarted = spawn_on(&app.db, |_| {}).await;
    for (id, seen) in ids.iter().zip(&seen) {
        let s = restarted.status(id).await;
        assert_eq!(s["status"], "interrupted", "{s}");
        assert_eq!(s["error"]["code"], "interrupted");
        let (_, body) = restarted.read_events(id, None).await;
        let stored = parse_sse(&body);
        let ids: Vec<u64> = stored.iter().map(|e| e.id.unwrap()).collect();
        assert_eq!(
            ids,
            (1..=stored.len() as u64).collect::<Vec<_>>(),
            "gap in {id}"
        );
        let last = stored.last().unwrap();
        assert_eq!(
            (last.event.as_str(), last.json()["code"].as_str()),
            ("error", Some("interrupted"))
        );
        // What a reader saw is exactly what is stored: its response closed after the
        // stream's end.
        let seen = parse_sse(seen);
        assert_eq!(seen[..], stored[..]);
    }
    drop(dir);
}
