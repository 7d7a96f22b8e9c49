//! `/v1/chats`, the AI SDK's chat protocol (issue 20): the UI message stream and its
//! resume, stop, the history as UIMessages, chats scoped to their caller, chat tokens,
//! and bad input — over raw HTTP; then the `ai` package's own chat client in Node
//! (`tests/clients/chat_sdk.mjs`) through a proxy that cuts it mid-answer, and a React
//! `useChat({ resume: true })` page in Chromium (`tests/browser/usechat.mjs`) reloaded
//! mid-answer.

use std::process::Command;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::sdk::{clients_dir, install, repo};

fn ask(chat: &str, text: &str, max_tokens: u32) -> Value {
    json!({"id": chat, "trigger": "submit-message", "max_tokens": max_tokens,
           "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": text}]}]})
}

/// `(frame id, chunk)` of a UI message stream body (`[DONE]` as a string).
fn frames(body: &str) -> Vec<(u64, Value)> {
    parse_sse(body)
        .iter()
        .map(|e| {
            let id = e.id.unwrap();
            let v = serde_json::from_str(&e.data).unwrap_or(Value::String(e.data.clone()));
            (id, v)
        })
        .collect()
}

fn text_of(frames: &[(u64, Value)]) -> String {
    frames
        .iter()
        .filter(|(_, v)| v["type"] == "text-delta")
        .map(|(_, v)| v["delta"].as_str().unwrap().to_owned())
        .collect()
}

async fn post(app: &TestApp, body: &Value, auth: Option<&str>) -> reqwest::Response {
    let mut r = app.client.post(app.url("/v1/chats")).json(body);
    if let Some(auth) = auth {
        r = r.bearer_auth(auth);
    }
    r.send().await.unwrap()
}

async fn get(app: &TestApp, path: &str, auth: Option<&str>) -> reqwest::Response {
    let mut r = app.client.get(app.url(path));
    if let Some(auth) = auth {
        r = r.bearer_auth(auth);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn a_turn_is_the_ui_message_stream_and_resumes_from_its_start_or_after_any_frame() {
    let app = spawn_with(|c| c.mock.rate = 100.0).await;
    let r = post(&app, &ask("chat-1", "hi", 40), None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-vercel-ai-ui-message-stream"], "v1");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let stream_id = r.headers()["x-stream-id"].to_str().unwrap().to_owned();
    // A reader that drops after a few frames …
    let mut first = SseReader::new(r, DEADLINE);
    let mut got = Vec::new();
    while got.len() < 6 {
        got.push(first.next_event().await.unwrap());
    }
    drop(first);
    let cut: u64 = got.last().unwrap().id.unwrap();
    // … resumes after the last frame it has: exactly the rest.
    let rest = app
        .client
        .get(app.url("/v1/chats/chat-1/stream"))
        .header("Last-Event-ID", cut.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), 200);
    let rest = frames(&rest.text().await.unwrap());
    assert_eq!(rest[0].0, cut + 1);
    // And with no cursor (what useChat sends) a running answer replays from `start`.
    let mut seen: Vec<(u64, Value)> = got
        .iter()
        .map(|e| (e.id.unwrap(), serde_json::from_str(&e.data).unwrap()))
        .collect();
    seen.extend(rest);
    let ids: Vec<u64> = seen.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, (0..seen.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        seen[0].1,
        json!({"type": "start", "messageId": stream_id.clone()})
    );
    assert_eq!(text_of(&seen), mock_text(40));
    let tail: Vec<&Value> = seen.iter().rev().take(4).map(|(_, v)| v).collect();
    assert_eq!(
        tail,
        [
            &json!("[DONE]"),
            &json!({"type": "finish", "finishReason": "length"}),
            &json!({"type": "finish-step"}),
            &json!({"type": "text-end", "id": "text-2"}),
        ]
    );
    // Nothing runs now: 204, as useChat expects.
    let idle = get(&app, "/v1/chats/chat-1/stream", None).await;
    assert_eq!(idle.status(), StatusCode::NO_CONTENT);
    let unknown = get(&app, "/v1/chats/never-used/stream", None).await;
    assert_eq!(unknown.status(), StatusCode::NO_CONTENT);

    // The history, as UIMessages: the answer's id is its stream's.
    let history: Value = get(&app, "/v1/chats/chat-1", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(history["id"], "chat-1");
    let messages = history["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["role"], "user");
    assert_eq!(
        messages[0]["parts"],
        json!([{"type": "text", "text": "hi"}])
    );
    assert_eq!(messages[1]["id"], stream_id.as_str());
    assert_eq!(
        messages[1]["parts"],
        json!([{"type": "step-start"}, {"type": "text", "text": mock_text(40), "state": "done"}])
    );
}

#[tokio::test]
async fn a_running_answer_replays_whole_while_it_runs_and_stop_cancels_it() {
    let app = spawn_with(|c| c.mock.rate = 50.0).await;
    let r = post(&app, &ask("chat-2", "long", 500), None).await;
    let mut live = SseReader::new(r, DEADLINE);
    for _ in 0..4 {
        live.next_event().await.unwrap();
    }
    // A second reader, no cursor: from frame 0, then live.
    let replay = get(&app, "/v1/chats/chat-2/stream", None).await;
    assert_eq!(replay.status(), 200);
    let mut replay = SseReader::new(replay, DEADLINE);
    let first = replay.next_event().await.unwrap();
    assert_eq!(first.id, Some(0));
    // A client going away does not stop it (useChat's abort is a disconnect) …
    drop(live);
    let busy = post(&app, &ask("chat-2", "again", 5), None).await;
    assert_eq!(busy.status(), StatusCode::CONFLICT);
    // … the stop route does: 202, and the readers see it end.
    let stop = app
        .client
        .post(app.url("/v1/chats/chat-2/stop"))
        .send()
        .await
        .unwrap();
    assert_eq!(stop.status(), StatusCode::ACCEPTED);
    let mut rest = Vec::new();
    while let Some(e) = replay.next_event().await {
        rest.push(serde_json::from_str::<Value>(&e.data).unwrap_or(Value::String(e.data)));
    }
    let n = rest.len();
    assert_eq!(
        rest[n - 3..],
        [
            json!({"type": "abort", "reason": "cancelled"}),
            json!({"type": "finish"}),
            json!("[DONE]")
        ]
    );
    let again = app
        .client
        .post(app.url("/v1/chats/chat-2/stop"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let missing = app
        .client
        .post(app.url("/v1/chats/nope/stop"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_server_keeps_the_history_and_regenerate_replaces_the_last_answer() {
    let (up, base) = crate::tools::upstream().await;
    let app = crate::tools::spool_in_front(&base).await;
    let say = |text: &str| {
        json!({"id": "chat-3", "model": "thinker", "trigger": "submit-message", "messages": [
            {"id": "a", "role": "user", "parts": [{"type": "text", "text": "first"}]},
            {"id": "b", "role": "assistant", "parts": [{"type": "text", "text": "whatever the client holds"}]},
            {"id": "c", "role": "user", "parts": [{"type": "text", "text": text}]}]})
    };
    let prompts = || -> Vec<Value> {
        up.bodies
            .lock()
            .unwrap()
            .iter()
            .map(|b| b["messages"].clone())
            .collect()
    };
    post(&app, &say("one"), None).await.text().await.unwrap();
    // All messages or the last only: the same prompt, the history the server kept.
    post(&app, &say("two"), None).await.text().await.unwrap();
    let only = json!({"id": "chat-3", "messages": [
        {"id": "c", "role": "user", "parts": [{"type": "text", "text": "two"}]}]});
    let history: Value = get(&app, "/v1/chats/chat-3", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(history["messages"].as_array().unwrap().len(), 4);
    let seen = prompts();
    assert_eq!(
        seen[1],
        json!([{"role": "user", "content": "one"}, {"role": "assistant", "content": "4"},
               {"role": "user", "content": "two"}])
    );
    // Regenerate: the last answer goes, the same question is asked again.
    let regen = json!({"id": "chat-3", "trigger": "regenerate-message", "messageId": "x",
                       "messages": []});
    let r = post(&app, &regen, None).await;
    assert_eq!(r.status(), 200);
    let new_id = r.headers()["x-stream-id"].to_str().unwrap().to_owned();
    r.text().await.unwrap();
    assert_eq!(prompts()[2], seen[1]);
    let after: Value = get(&app, "/v1/chats/chat-3", None)
        .await
        .json()
        .await
        .unwrap();
    let messages = after["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4);
    assert_eq!(messages[3]["id"], new_id.as_str());
    // The replaced answer's stream is gone.
    let old = history["messages"][3]["id"].as_str().unwrap();
    let gone = get(&app, &format!("/v1/streams/{old}"), None).await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    // Reasoning is a part of the answer, as the SDK names it.
    assert_eq!(
        messages[3]["parts"][1],
        json!({"type": "reasoning", "text": "Hmm, two plus two.", "state": "done"})
    );
    // The same turn sent again with the last message only: same prompt again.
    post(&app, &only, None).await.text().await.unwrap();
    let last = prompts().last().cloned().unwrap();
    assert_eq!(last.as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn tool_calls_are_tool_parts_and_their_outputs_the_next_turn() {
    let (up, base) = crate::tools::upstream().await;
    let app = crate::tools::spool_in_front(&base).await;
    let r = post(
        &app,
        &json!({"id": "chat-4", "model": "agent", "tools": crate::tools::tools(), "messages": [
            {"role": "user", "parts": [{"type": "text", "text": "Weather and time?"}]}]}),
        None,
    )
    .await;
    let seen = frames(&r.text().await.unwrap());
    let types: Vec<&str> = seen
        .iter()
        .filter_map(|(_, v)| v["type"].as_str())
        .collect();
    for t in [
        "reasoning-start",
        "reasoning-delta",
        "reasoning-end",
        "text-start",
        "tool-input-start",
        "tool-input-delta",
        "tool-input-available",
    ] {
        assert!(types.contains(&t), "{t}: {types:?}");
    }
    let available: Vec<&Value> = seen
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v["type"] == "tool-input-available")
        .collect();
    assert_eq!(
        available[0],
        &json!({"type": "tool-input-available", "toolCallId": "call_w", "toolName": "get_weather",
                "input": {"city": "Oslo", "unit": "celsius"}})
    );
    assert_eq!(
        seen.iter().rev().nth(1).unwrap().1,
        json!({"type": "finish", "finishReason": "tool-calls"})
    );
    // The client runs the tools and sends the assistant message with their outputs.
    let history: Value = get(&app, "/v1/chats/chat-4", None)
        .await
        .json()
        .await
        .unwrap();
    let mut assistant = history["messages"][1].clone();
    for part in assistant["parts"].as_array_mut().unwrap() {
        if part["type"] == "tool-get_weather" {
            part["state"] = json!("output-available");
            part["output"] = json!({"temp": 21});
        }
        if part["type"] == "tool-get_time" {
            part["state"] = json!("output-available");
            part["output"] = json!("14:05");
        }
    }
    let r = post(
        &app,
        &json!({"id": "chat-4", "model": "agent", "tools": crate::tools::tools(),
                "messages": [history["messages"][0], assistant]}),
        None,
    )
    .await;
    assert_eq!(
        text_of(&frames(&r.text().await.unwrap())),
        "It is 21°C and sunny in Oslo."
    );
    let sent = up.bodies.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        sent["messages"][2],
        json!({"role": "tool", "content": "{\"temp\":21}", "tool_call_id": "call_w"})
    );
    assert_eq!(sent["messages"][3]["content"], "14:05");
    // The history gives the outputs back on the tool parts.
    let history: Value = get(&app, "/v1/chats/chat-4", None)
        .await
        .json()
        .await
        .unwrap();
    let parts = history["messages"][1]["parts"].as_array().unwrap();
    let weather = parts
        .iter()
        .find(|p| p["type"] == "tool-get_weather")
        .unwrap();
    assert_eq!(weather["state"], "output-available");
    assert_eq!(weather["output"], json!({"temp": 21}));
    assert_eq!(history["messages"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn bad_requests_are_clear_4xx_and_change_nothing() {
    let app = spawn_with(|c| c.mock.rate = 500.0).await;
    let cases = [
        ask("a/b", "hi", 3),
        ask("", "hi", 3),
        ask(&"k".repeat(129), "hi", 3),
        json!({"id": "ok-1", "messages": []}),
        json!({"id": "ok-1", "messages": [{"role": "user", "parts": []}]}),
        json!({"id": "ok-1", "trigger": "resume", "messages": [{"role": "user", "parts": [{"type": "text", "text": "x"}]}]}),
        json!({"id": "ok-1", "messages": [{"role": "assistant", "parts": [{"type": "text", "text": "x"}]}]}),
        json!({"messages": []}),
        json!({"id": "ok-1", "trigger": "regenerate-message", "messages": []}),
    ];
    for body in cases {
        let r = post(&app, &body, None).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        let e: Value = r.json().await.unwrap();
        assert!(e["error"]["message"].as_str().unwrap().len() > 10, "{e}");
    }
    let r = app
        .client
        .post(app.url("/v1/chats"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Nothing was stored: no turns in the chat a refused regenerate created.
    let history: Value = get(&app, "/v1/chats/ok-1", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(history["messages"], json!([]));
    // A chat not started yet has no messages, and nothing to stop.
    let never: Value = get(&app, "/v1/chats/never", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(never, json!({"id": "never", "messages": []}));
    assert_eq!(
        get(&app, "/v1/chats/not%2Fok", None).await.status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn chats_are_scoped_to_their_key_and_a_chat_token_opens_one_chat_only() {
    let app = spawn_with(|c| {
        c.mock.rate = 500.0;
        c.auth.api_keys = vec!["alpha-key".into(), "beta-key".into()];
    })
    .await;
    let r = post(&app, &ask("shared", "alpha's", 3), Some("alpha-key")).await;
    assert_eq!(r.status(), 200);
    let token = r.headers()["x-chat-token"].to_str().unwrap().to_owned();
    r.text().await.unwrap();
    // The same chat id under another key is another chat.
    let empty: Value = get(&app, "/v1/chats/shared", Some("beta-key"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(empty["messages"], json!([]));
    post(&app, &ask("shared", "beta's", 3), Some("beta-key"))
        .await
        .text()
        .await
        .unwrap();
    let beta: Value = get(&app, "/v1/chats/shared", Some("beta-key"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(beta["messages"][0]["parts"][0]["text"], "beta's");

    // The chat token stands for alpha on this chat: read, resume, stop, and a new turn.
    let alpha: Value = get(&app, "/v1/chats/shared", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(alpha["messages"][0]["parts"][0]["text"], "alpha's");
    assert_eq!(
        get(&app, "/v1/chats/shared/stream", Some(&token))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let stop = app
        .client
        .post(app.url("/v1/chats/shared/stop"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(stop.status(), StatusCode::OK);
    let r = post(&app, &ask("shared", "more", 3), Some(&token)).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    // Nowhere else: another chat, the streams API, minting another token.
    for (method, path) in [
        ("GET", "/v1/chats/other"),
        ("GET", "/v1/streams"),
        ("POST", "/v1/chats/shared/token"),
    ] {
        let r = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    let r = post(&app, &ask("other", "x", 3), Some(&token)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // An app's backend mints one for its page with the key.
    let minted: Value = app
        .client
        .post(app.url("/v1/chats/page-chat/token"))
        .bearer_auth("alpha-key")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let page_token = minted["token"].as_str().unwrap();
    assert!(page_token.starts_with("chat."), "{minted}");
    let r = post(&app, &ask("page-chat", "hello", 3), Some(page_token)).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    assert_eq!(
        get(&app, "/v1/chats/page-chat", Some("alpha-key"))
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_ai_sdks_chat_client_resumes_regenerates_and_stops() {
    install();
    let app = spawn_with(|c| c.mock.rate = 150.0).await;
    // The first connection is cut after its first ~1.5 KB: mid-answer.
    let proxy = cutting_proxy(app.addr, 1500, 1, Cut::Any).await;
    let script = clients_dir().join("node/chat_sdk.mjs");
    std::fs::copy(repo().join("tests/clients/chat_sdk.mjs"), &script).unwrap();
    let base = app.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(proxy)
            .arg(base)
            .output()
    })
    .await
    .unwrap()
    .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(seen["stopped"].as_u64().unwrap() >= 1, "{seen}");
}

#[tokio::test]
async fn a_use_chat_page_reloaded_mid_answer_continues_to_its_end() {
    install();
    let app = spawn_with(|c| {
        c.mock.rate = 40.0;
        c.auth.api_keys = vec!["app-backend-key".into()];
        c.server.cors_origins = vec!["*".into()];
    })
    .await;
    // The app's backend mints the page's chat token; the page never sees the key.
    let minted: Value = app
        .client
        .post(app.url("/v1/chats/page-1/token"))
        .bearer_auth("app-backend-key")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = minted["token"].as_str().unwrap().to_owned();
    let script = clients_dir().join("node/usechat.mjs");
    std::fs::copy(repo().join("tests/browser/usechat.mjs"), &script).unwrap();
    let shot = crate::browser::screenshots().join("usechat-reload.png");
    let args = [
        script.display().to_string(),
        repo().join("tests/browser/usechat").display().to_string(),
        app.url("/v1/chats"),
        "page-1".to_owned(),
        token,
        shot.display().to_string(),
        mock_text(80),
    ];
    let out = tokio::task::spawn_blocking(move || Command::new("node").args(args).output())
        .await
        .unwrap()
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // The server's history agrees: one question, one whole answer.
    let history: Value = get(&app, "/v1/chats/page-1", Some("app-backend-key"))
        .await
        .json()
        .await
        .unwrap();
    let messages = history["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1]["parts"][1]["text"], mock_text(80));
    // The docs show the page's component as it is.
    let docs = std::fs::read_to_string(repo().join("docs/api.md")).unwrap();
    let component = std::fs::read_to_string(repo().join("tests/browser/usechat/Chat.jsx")).unwrap();
    let body = component.split_once("\n\n").unwrap().1;
    assert!(
        docs.contains(body),
        "docs/api.md does not show Chat.jsx as it is"
    );
}
