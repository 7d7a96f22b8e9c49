//! A session on the real model whose history grows to several times the model's
//! context: every turn is still answered — its prompt holds the newest turns that fit
//! the context less `max_tokens`, counted by the model's own tokenizer — and the `done`
//! event says how many turns it held. The server here serves a context of 128 tokens
//! (`SPOOL_MODEL_CONTEXT`): a context-sized prompt costs seconds, not minutes, in a
//! debug build, and the history still outgrows it several times over, with short
//! questions and answers of two tokens.

use std::time::Instant;

use serde_json::{Value, json};
use spool::ServeConfig;
use spool::config::BackendKind;

use crate::server::{DEADLINE, client, model_path};
use crate::sse::{SseReader, parse};

/// The context the server serves, in tokens.
const CONTEXT: u64 = 128;

/// A question of about 25 tokens; `i` makes each one different.
fn question(i: usize) -> String {
    format!(
        "Question {i}: the river runs past the old mill near the hill. What runs past the mill?"
    )
}

/// A server on the local model with a context of [`CONTEXT`] tokens.
async fn small_context_server() -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::defaults();
    config.store.database_url = format!("sqlite://{}", dir.path().join("spool.db").display());
    config.backend = BackendKind::Local;
    config.local.model_path = Some(model_path());
    config.local.context = Some(CONTEXT as u32);
    config.server.addr = "127.0.0.1:0".parse().unwrap();
    let listener = tokio::net::TcpListener::bind(config.server.addr)
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let spool = spool::Spool::start(config).await.unwrap();
    // Serves until the test ends (its runtime is dropped).
    tokio::spawn(spool.serve(listener, std::future::pending()));
    let ready = base.clone();
    tokio::task::spawn_blocking(move || crate::ready::wait_ready(&ready, DEADLINE))
        .await
        .unwrap();
    (base, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_several_times_the_context_answers_every_turn() {
    let (base, _dir) = small_context_server().await;
    let client = client();
    let r = client
        .post(format!("{base}/v1/sessions"))
        .json(&json!({"system": "Answer in one word."}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let session: Value = r.json().await.unwrap();
    let session = session["id"].as_str().unwrap().to_owned();
    let max_tokens = 2u64;
    let turns = 12;
    let mut used = Vec::new();
    let mut prompts = Vec::new();
    let started = Instant::now();
    for i in 0..turns {
        let r = client
            .post(format!("{base}/v1/sessions/{session}/messages?stream=true"))
            .json(&json!({"content": question(i), "max_tokens": max_tokens, "seed": 7}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "turn {i}: {}", r.text().await.unwrap());
        let body = SseReader::new(r, DEADLINE)
            .read_to_end(tokio::time::Instant::now() + DEADLINE)
            .await;
        let events = parse(&body);
        let last = events.last().unwrap();
        assert_eq!(last.event, "done", "turn {i} failed: {body}");
        let usage = last.json()["usage"].clone();
        let prompt = usage["prompt_tokens"].as_u64().unwrap();
        assert!(
            prompt + max_tokens <= CONTEXT,
            "turn {i}: the prompt does not fit: {usage}"
        );
        used.push(usage["session_turns"].as_u64().unwrap());
        prompts.push(prompt);
    }
    eprintln!(
        "{turns} turns in {:?}: prompts {prompts:?}, turns held {used:?}",
        started.elapsed()
    );
    // The history: every question and answer, several times the context.
    let h: Value = client
        .get(format!("{base}/v1/sessions/{session}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["turns"].as_array().unwrap().len(), 2 * turns);
    let first_alone = prompts[0];
    assert!(
        first_alone * turns as u64 > 3 * CONTEXT,
        "the history is not several times the context: {prompts:?}"
    );
    // All of it while it fits, then only the newest turns.
    assert_eq!(used[0], 1, "{used:?}");
    assert!(used[1] == 3, "{used:?}");
    let last = used[turns - 1];
    assert!((1..2 * turns as u64 - 1).contains(&last), "{used:?}");
    assert!(used.iter().all(|&u| u < 2 * turns as u64));
}
