//! Sessions that outgrow the model: a turn's prompt is as much of the history as fits
//! (`SPOOL_SESSION_MAX_PROMPT_TOKENS` here; the model's context in `tests/model`), the
//! `done` event says how many turns it held, every turn is answered, a turn's stored
//! request does not grow with the history, and a crashed turn continues with the very
//! prompt it had.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::process::Server;

/// Creates a session (with `system`, if given) on `base`; returns its id.
async fn new_session(client: &reqwest::Client, base: &str, system: Option<&str>) -> String {
    let body = match system {
        Some(s) => json!({ "system": s }),
        None => json!({}),
    };
    let r = client
        .post(format!("{base}/v1/sessions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_owned()
}

/// One turn over SSE, read to its end: (stream id, the `done` event's data).
async fn turn(
    client: &reqwest::Client,
    base: &str,
    session: &str,
    content: &str,
    max_tokens: u32,
) -> (String, Value) {
    let r = client
        .post(format!("{base}/v1/sessions/{session}/messages?stream=true"))
        .json(&json!({"content": content, "max_tokens": max_tokens}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{content}: {}", r.text().await.unwrap());
    let id = r.headers()["x-stream-id"].to_str().unwrap().to_owned();
    let body = tokio::time::timeout(DEADLINE, r.text())
        .await
        .expect("a turn hung")
        .unwrap();
    let events = parse_sse(&body);
    assert_contiguous(&events);
    let last = events.last().unwrap();
    assert_eq!(last.event, "done", "{content}: {body}");
    (id, last.json())
}

/// The stored request (`streams.params`) of each stream, in bytes, read from the file.
async fn params_sizes(db: &std::path::Path, ids: &[String]) -> Vec<usize> {
    use sqlx::ConnectOptions;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .read_only(true)
        .connect()
        .await
        .unwrap();
    let mut sizes = Vec::with_capacity(ids.len());
    for id in ids {
        let params: String = sqlx::query_scalar("SELECT params FROM streams WHERE id = ?")
            .bind(id)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        sizes.push(params.len());
    }
    sizes
}

#[tokio::test]
async fn a_200_turn_session_answers_every_turn_within_its_prompt_bound() {
    // The mock counts a prompt's words; the bound is estimated at bytes/4 + 4 a message.
    let app = spawn_with(|c| c.limits.session_max_prompt_tokens = Some(200)).await;
    let session = new_session(&app.client, &app.base, Some("be brief")).await;
    let mut ids = Vec::new();
    let mut used = Vec::new();
    for i in 1..=200 {
        let content = format!("question number {i:03} of the long conversation");
        let (id, done) = turn(&app.client, &app.base, &session, &content, 5).await;
        assert_eq!(done["finish_reason"], "length", "turn {i}: {done}");
        let turns = done["usage"]["session_turns"].as_u64().unwrap() as usize;
        // Every earlier message until the bound, then a window of the newest.
        assert!(turns >= 1 && turns < 2 * i, "turn {i}: {done}");
        used.push(turns);
        ids.push(id);
    }
    assert_eq!(used[..3], [1, 3, 5], "the first turns hold all the history");
    let window = *used.last().unwrap();
    assert!(
        (3..40).contains(&window),
        "the history is bounded: {used:?}"
    );
    assert!(
        used[100..].iter().all(|&u| u.abs_diff(window) <= 2),
        "the window stays the same size: {used:?}"
    );
    // Its prompt (the mock counts words) is as long at turn 200 as at turn 50.
    let status = app.status(&ids[199]).await;
    assert_eq!(status["usage"]["session_turns"], window, "{status}");
    let late = status["usage"]["prompt_tokens"].as_u64().unwrap();
    let mid = app.status(&ids[49]).await["usage"]["prompt_tokens"]
        .as_u64()
        .unwrap();
    assert!(late.abs_diff(mid) <= 10, "prompt {mid} then {late} words");

    // The stored request keeps the turn, not the history.
    let sizes = params_sizes(&app.db, &ids).await;
    assert!(
        sizes[199] <= sizes[0] + 16 && sizes[199] < 400,
        "stored params grow: turn 1 {} bytes, turn 200 {} bytes",
        sizes[0],
        sizes[199]
    );
    // And the history is whole: 400 turns, each answer's text.
    let h: Value = app
        .client
        .get(app.url(&format!("/v1/sessions/{session}")))
        .send_json()
        .await;
    let turns = h["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 400);
    assert!(
        turns
            .iter()
            .skip(1)
            .step_by(2)
            .all(|t| t["content"] == mock_text(5))
    );
}

#[tokio::test]
async fn without_a_bound_on_the_mock_the_whole_history_is_sent() {
    let app = spawn_app().await;
    let session = new_session(&app.client, &app.base, None).await;
    for i in 1..=4u64 {
        let (_, done) = turn(&app.client, &app.base, &session, "one two", 2).await;
        assert_eq!(done["usage"]["session_turns"], 2 * i - 1, "{done}");
        // Each earlier exchange adds its question and its answer, two words each.
        assert_eq!(done["usage"]["prompt_tokens"], 2 + 4 * (i - 1), "{done}");
    }
    // A stream that is no session's turn says nothing of turns.
    let id = app.create(json!({"prompt": "x", "max_tokens": 1})).await;
    let done = app.wait_terminal(&id).await;
    assert!(done["usage"].get("session_turns").is_none(), "{done}");
}

fn start(db: &std::path::Path) -> Server {
    let env = [
        ("SPOOL_MOCK_CONTINUE", "true"),
        ("SPOOL_MOCK_RATE", "200"),
        ("SPOOL_SESSION_MAX_PROMPT_TOKENS", "60"),
    ];
    crate::process::start(db, &env, DEADLINE)
}

/// Waits until `id` has ended on `base`; returns its status.
async fn ended(client: &reqwest::Client, base: &str, id: &str) -> Value {
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let s: Value = client
            .get(format!("{base}/v1/streams/{id}"))
            .send_json()
            .await;
        if !matches!(s["status"].as_str(), Some("queued" | "running")) {
            return s;
        }
        assert!(tokio::time::Instant::now() < until, "never ended: {s}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_crashed_turn_continues_with_the_prompt_it_had() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let client = reqwest::Client::new();
    let history = |i: usize| format!("an earlier question, number {i}, of this session");

    let mut server = start(&db);
    let crashed = new_session(&client, &server.base, Some("answer in one word")).await;
    for i in 0..6 {
        turn(&client, &server.base, &crashed, &history(i), 3).await;
    }
    let r = client
        .post(format!(
            "{}/v1/sessions/{crashed}/messages?stream=true",
            server.base
        ))
        .json(&json!({"content": "and the last one?", "max_tokens": 400}))
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-stream-id"].to_str().unwrap().to_owned();
    let mut reader = SseReader::new(r, DEADLINE);
    reader.until(20).await;
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();

    let server = start(&db);
    let status = ended(&client, &server.base, &id).await;
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["text"], mock_text(400));

    // The same conversation, never interrupted, on the restarted server.
    let twin = new_session(&client, &server.base, Some("answer in one word")).await;
    for i in 0..6 {
        turn(&client, &server.base, &twin, &history(i), 3).await;
    }
    let (twin_id, _) = turn(&client, &server.base, &twin, "and the last one?", 400).await;
    let expected = ended(&client, &server.base, &twin_id).await;
    assert_eq!(
        status["usage"], expected["usage"],
        "the continued turn's prompt differs from an uninterrupted one's"
    );
    assert!(
        expected["usage"]["session_turns"].as_u64().unwrap() < 13,
        "the bound held: {expected}"
    );
}
