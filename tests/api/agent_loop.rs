//! An agent loop over one durable session (issue 18): the model's tool calls are kept
//! with its turn, a turn can be the tool results that answer them, and the history the
//! upstream sees holds each answer's calls right before their results — never one
//! without the other, however much of the history is trimmed. Against the controlled
//! upstream of `tools.rs`; the examples in `examples/` (curl and the Python SDK) run
//! here as pasted.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::sdk::{clients_dir, repo};
use crate::tools::{TIME_ARGS, Upstream, WEATHER_ARGS, spool_in_front, tools, upstream};

/// The last request the upstream got.
fn last_body(up: &Upstream) -> Value {
    up.bodies.lock().unwrap().last().cloned().unwrap()
}

/// `(role, tool_call ids, tool_call_id)` of each message the upstream got last.
fn shape(up: &Upstream) -> Vec<(String, Vec<String>, Option<String>)> {
    last_body(up)["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let ids = m["tool_calls"]
                .as_array()
                .map(|c| {
                    c.iter()
                        .map(|c| c["id"].as_str().unwrap().to_owned())
                        .collect()
                })
                .unwrap_or_default();
            (
                m["role"].as_str().unwrap().to_owned(),
                ids,
                m["tool_call_id"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn msg(role: &str, calls: &[&str], answers: Option<&str>) -> (String, Vec<String>, Option<String>) {
    (
        role.to_owned(),
        calls.iter().map(|c| (*c).to_owned()).collect(),
        answers.map(str::to_owned),
    )
}

/// Starts a turn of session `s` and waits for its end; returns its status.
async fn turn(app: &TestApp, s: &str, body: Value) -> Value {
    let r = app
        .client
        .post(app.url(&format!("/v1/sessions/{s}/messages")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.wait_terminal(&id).await
}

async fn session(app: &TestApp, s: &str) -> Value {
    app.client
        .get(app.url(&format!("/v1/sessions/{s}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn new_session(app: &TestApp) -> String {
    let r = app
        .client
        .post(app.url("/v1/sessions"))
        .json(&json!({"model": "agent"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A turn that must be refused: `400 invalid_request` naming `why`, and nothing of the
/// session changes.
async fn refused(app: &TestApp, s: &str, body: Value, why: &str) {
    let before = session(app, s).await["turns"].clone();
    let r = app
        .client
        .post(app.url(&format!("/v1/sessions/{s}/messages")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "{body}");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "invalid_request", "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains(why), "{message}");
    assert_eq!(session(app, s).await["turns"], before);
}

#[tokio::test]
async fn a_session_runs_a_tool_loop_and_the_upstream_sees_calls_before_their_results() {
    let (up, base) = upstream().await;
    let app = spool_in_front(&base).await;
    let s = new_session(&app).await;

    let asked = turn(
        &app,
        &s,
        json!({"content": "Weather and time in Oslo?", "tools": tools()}),
    )
    .await;
    assert_eq!(asked["finish_reason"], "tool_calls", "{asked}");
    let calls = json!([
        {"id": "call_w", "type": "function", "function": {"name": "get_weather", "arguments": WEATHER_ARGS}},
        {"id": "call_t", "type": "function", "function": {"name": "get_time", "arguments": TIME_ARGS}},
    ]);
    let turns = session(&app, &s).await["turns"].clone();
    assert_eq!(turns[1]["tool_calls"], calls, "{turns}");

    // Results that do not answer the calls exactly are refused, and change nothing.
    let w = json!({"role": "tool", "tool_call_id": "call_w", "content": "21°C, sunny"});
    let t = json!({"role": "tool", "tool_call_id": "call_t", "content": "14:05"});
    refused(&app, &s, json!({"messages": [w]}), "missing: call_t").await;
    refused(
        &app,
        &s,
        json!({"messages": [w, {"role": "tool", "tool_call_id": "call_x", "content": "?"}]}),
        "\"call_x\" is not one of the last answer's tool calls",
    )
    .await;
    refused(&app, &s, json!({"messages": [w, w.clone(), t]}), "twice").await;
    refused(
        &app,
        &s,
        json!({"messages": [w, {"role": "user", "content": "and?"}]}),
        "one `user` message or tool results",
    )
    .await;
    refused(
        &app,
        &s,
        json!({"role": "tool", "content": "21°C"}),
        "`tool_call_id`",
    )
    .await;

    // Both results in one turn: the upstream gets the call, then the results.
    let answered = turn(&app, &s, json!({"messages": [w, t], "tools": tools()})).await;
    assert_eq!(answered["text"], "It is 21°C and sunny in Oslo.");
    assert_eq!(
        shape(&up),
        [
            msg("user", &[], None),
            msg("assistant", &["call_w", "call_t"], None),
            msg("tool", &[], Some("call_w")),
            msg("tool", &[], Some("call_t")),
        ]
    );
    let sent = last_body(&up);
    assert_eq!(sent["messages"][1]["tool_calls"], calls);
    assert_eq!(sent["messages"][1]["content"], "Let me check.");
    assert_eq!(sent["messages"][2]["content"], "21°C, sunny");
    assert_eq!(sent["tools"], tools());

    // The turns say what happened; a tool turn lists its results.
    let got = session(&app, &s).await;
    let roles: Vec<&str> = got["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "tool", "assistant"]);
    assert_eq!(
        got["turns"][2]["tool_results"],
        json!([{"tool_call_id": "call_w", "content": "21°C, sunny"},
               {"tool_call_id": "call_t", "content": "14:05"}])
    );
    assert!(got["turns"][3].get("tool_calls").is_none(), "{got}");

    // A later user turn sees the whole loop; one result alone (the short form) after
    // an answer with one call works the same.
    let thanks = turn(&app, &s, json!({"content": "Thanks!", "model": "thinker"})).await;
    assert_eq!(thanks["text"], "4");
    assert_eq!(
        shape(&up),
        [
            msg("user", &[], None),
            msg("assistant", &["call_w", "call_t"], None),
            msg("tool", &[], Some("call_w")),
            msg("tool", &[], Some("call_t")),
            msg("assistant", &[], None),
            msg("user", &[], None),
        ]
    );
    // Tool results after an answer without calls: nothing to answer.
    refused(
        &app,
        &s,
        json!({"role": "tool", "tool_call_id": "call_w", "content": "again"}),
        "made none",
    )
    .await;
}

#[tokio::test]
async fn an_unanswered_call_leaves_the_history_and_trimming_keeps_calls_with_results() {
    let (up, base) = upstream().await;
    let base2 = base.clone();
    // Room for about one agent exchange (the estimate: a quarter token per byte).
    let app = spool_in_front_with(&base2, |c| c.limits.session_max_prompt_tokens = Some(220)).await;
    let s = new_session(&app).await;
    let w = json!({"role": "tool", "tool_call_id": "call_w", "content": "21°C, sunny"});
    let t = json!({"role": "tool", "tool_call_id": "call_t", "content": "14:05"});
    // The model asks for tools; the user asks something else instead.
    turn(&app, &s, json!({"content": "Weather?", "tools": tools()})).await;
    turn(
        &app,
        &s,
        json!({"content": "Never mind. Weather?", "tools": tools()}),
    )
    .await;
    assert_eq!(
        shape(&up),
        [
            msg("user", &[], None),
            // Its text stays; its calls, which nothing answered, do not.
            msg("assistant", &[], None),
            msg("user", &[], None),
        ]
    );
    // Several loops: each prompt starts at a user turn and holds every call it holds
    // with its results.
    for _ in 0..3 {
        turn(&app, &s, json!({"messages": [w, t], "tools": tools()})).await;
        let seen = shape(&up);
        assert_eq!(seen[0].0, "user", "{seen:?}");
        for (i, m) in seen.iter().enumerate() {
            if !m.1.is_empty() {
                let answers: Vec<&str> = seen[i + 1..]
                    .iter()
                    .take_while(|n| n.0 == "tool")
                    .filter_map(|n| n.2.as_deref())
                    .collect();
                assert_eq!(answers, ["call_w", "call_t"], "{seen:?}");
            }
            if m.0 == "tool" {
                assert!(
                    seen[..i]
                        .iter()
                        .rev()
                        .find(|n| n.0 != "tool")
                        .unwrap()
                        .1
                        .len()
                        == 2,
                    "{seen:?}"
                );
            }
        }
        turn(&app, &s, json!({"content": "And again?", "tools": tools()})).await;
    }
    let last = last_body(&up);
    let turns = session(&app, &s).await["turns"].as_array().unwrap().len();
    // The history was trimmed: the upstream saw less than all of it.
    assert!(last["messages"].as_array().unwrap().len() < turns, "{last}");
}

async fn spool_in_front_with(
    base: &str,
    tweak: impl FnOnce(&mut spool::ServeConfig) + Send + 'static,
) -> TestApp {
    let base = base.to_owned();
    spawn_with(move |c| {
        c.backend = spool::config::BackendKind::Openai;
        c.openai.base_url = Some(base);
        c.openai.models = vec![];
        c.openai.ttft_timeout = std::time::Duration::from_secs(5);
        c.openai.idle_timeout = std::time::Duration::from_secs(5);
        tweak(c);
    })
    .await
}

/// The upstream and spool in front of it, for an example client.
async fn agent_example(program: PathBuf, script: PathBuf) -> (String, Arc<Upstream>) {
    crate::sdk::install();
    let (up, base) = upstream().await;
    let app = spool_in_front(&base).await;
    let out = tokio::process::Command::new(&program)
        .arg(&script)
        .arg(&app.base)
        .arg("agent")
        .output();
    let out = tokio::time::timeout(DEADLINE, out).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, up)
}

/// What every example's loop must have sent last: the question, the calls, both
/// results (from the example's own tools).
fn assert_loop_ran(up: &Upstream) {
    assert_eq!(
        shape(up),
        [
            msg("user", &[], None),
            msg("assistant", &["call_w", "call_t"], None),
            msg("tool", &[], Some("call_w")),
            msg("tool", &[], Some("call_t")),
        ]
    );
    let sent = last_body(up);
    assert_eq!(sent["messages"][2]["content"], "21°C and sunny in Oslo");
    assert_eq!(sent["messages"][3]["content"], "12:00 in Europe/Oslo");
}

#[tokio::test]
async fn the_curl_agent_loop_example_runs_as_documented() {
    let script = repo().join("examples/agent_session.sh");
    let (stdout, up) = agent_example(PathBuf::from("bash"), script.clone()).await;
    assert_eq!(
        stdout,
        "It is 21°C and sunny in Oslo.\n[\"user\",\"assistant\",\"tool\",\"assistant\"]\n"
    );
    assert_loop_ran(&up);
    documented(&script);
}

#[tokio::test]
async fn the_python_sdk_agent_loop_example_runs_as_documented() {
    let script = repo().join("examples/agent_session.py");
    let (stdout, up) = agent_example(clients_dir().join("venv/bin/python"), script.clone()).await;
    assert!(
        stdout.ends_with("It is 21°C and sunny in Oslo.\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("get_weather({\"city\":\"Oslo\""),
        "{stdout}"
    );
    assert_loop_ran(&up);
    documented(&script);
}

/// docs/api.md shows the example as it is in `examples/` (after its header comment).
fn documented(script: &std::path::Path) {
    let docs = std::fs::read_to_string(repo().join("docs/api.md")).unwrap();
    let code = std::fs::read_to_string(script).unwrap();
    let body = code
        .split_once("\n\n")
        .map(|(_, body)| body)
        .unwrap_or(&code);
    assert!(
        docs.contains(body),
        "docs/api.md does not show {} as it is",
        script.display()
    );
}
