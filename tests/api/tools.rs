//! Tool calls, reasoning and refusals end to end, against an OpenAI-compatible upstream
//! the test controls (a real HTTP server on port 0) that streams them the way vLLM,
//! Ollama and OpenAI do: tool-call arguments split across many chunks, two parallel
//! calls, reasoning under both names it goes by, a refusal, `finish_reason:
//! tool_calls` and `content_filter`. What goes up is what the client sent (tools,
//! content parts, tool results); what comes back is every part, persisted, resumable at
//! any event with the same bytes, and assembled by the official SDKs as they assemble
//! the upstream's own stream.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Value, json};
use spool::config::BackendKind;

use crate::helpers::*;
use crate::sdk::{clients_dir, install, repo};

#[derive(Default)]
pub(crate) struct Upstream {
    /// Every request body, in order.
    pub(crate) bodies: Mutex<Vec<Value>>,
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    let c = json!({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1,
                   "model": "agent", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {c}\n\n")
}

/// A tool call's first fragment, then its arguments a few characters at a time.
fn call_chunks(index: u32, id: &str, name: &str, arguments: &str) -> Vec<String> {
    let mut out = vec![chunk(
        json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                               "function": {"name": name, "arguments": ""}}]}),
        None,
    )];
    let chars: Vec<char> = arguments.chars().collect();
    for piece in chars.chunks(3) {
        let piece: String = piece.iter().collect();
        out.push(chunk(
            json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
            None,
        ));
    }
    out
}

pub(crate) const WEATHER_ARGS: &str = r#"{"city":"Oslo","unit":"celsius"}"#;
pub(crate) const TIME_ARGS: &str = r#"{"tz":"Europe/Oslo"}"#;

/// What the upstream streams for a request: by model, and for `agent` by whether the
/// conversation ends with tool results.
fn script(body: &Value) -> Vec<String> {
    let model = body["model"].as_str().unwrap_or_default();
    let last_role = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["role"].as_str())
        .unwrap_or_default()
        .to_owned();
    let mut out = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    let finish = match model {
        "agent" if last_role == "tool" => {
            for piece in ["It is 21°C", " and sunny", " in Oslo."] {
                out.push(chunk(json!({"content": piece}), None));
            }
            "stop"
        }
        "agent" => {
            out.push(chunk(json!({"reasoning_content": "The user wants"}), None));
            out.push(chunk(
                json!({"reasoning_content": " weather and time."}),
                None,
            ));
            out.push(chunk(json!({"content": "Let me check."}), None));
            out.extend(call_chunks(0, "call_w", "get_weather", WEATHER_ARGS));
            out.extend(call_chunks(1, "call_t", "get_time", TIME_ARGS));
            "tool_calls"
        }
        "thinker" => {
            out.push(chunk(json!({"reasoning": "Hmm, "}), None));
            out.push(chunk(json!({"reasoning": "two plus two."}), None));
            out.push(chunk(json!({"content": "4"}), None));
            "stop"
        }
        "refuser" => {
            out.push(chunk(json!({"refusal": "I can't help"}), None));
            out.push(chunk(json!({"refusal": " with that."}), None));
            "stop"
        }
        "filtered" => {
            out.push(chunk(json!({"content": "Once upon"}), None));
            "content_filter"
        }
        "scorer" => {
            for (token, lp) in SCORED {
                let c = json!({"id": "chatcmpl-up", "object": "chat.completion.chunk",
                               "created": 1, "model": "scorer",
                               "choices": [{"index": 0, "delta": {"content": token},
                                            "logprobs": {"content": [logprob(token, lp)], "refusal": null},
                                            "finish_reason": null}]});
                out.push(format!("data: {c}\n\n"));
            }
            "stop"
        }
        _ => {
            out.push(chunk(json!({"content": "plain"}), None));
            "stop"
        }
    };
    out.push(chunk(json!({}), Some(finish)));
    let usage = json!({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1,
                       "model": model, "choices": [],
                       "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}});
    if body["stream_options"]["include_usage"] == true {
        out.push(format!("data: {usage}\n\n"));
    }
    out.push("data: [DONE]\n\n".to_owned());
    out
}

async fn completions(State(up): State<Arc<Upstream>>, Json(body): Json<Value>) -> Response {
    let frames = script(&body);
    up.bodies.lock().unwrap().push(body);
    let stream = async_stream::stream! {
        for frame in frames {
            yield Ok::<_, std::io::Error>(Bytes::from(frame));
        }
    };
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    r
}

async fn models() -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": "agent"}, {"id": "thinker"},
                                           {"id": "refuser"}, {"id": "filtered"},
                                           {"id": "scorer"}]}),
    )
}

/// Starts the upstream; returns its state and its `/v1` base URL.
pub(crate) async fn upstream() -> (Arc<Upstream>, String) {
    let state = Arc::new(Upstream::default());
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(completions))
        .route("/v1/models", get(models))
        .with_state(state.clone());
    (state, format!("http://{}/v1", serve(app).await))
}

pub(crate) async fn spool_in_front(base: &str) -> TestApp {
    let base = base.to_owned();
    spawn_with(move |c| {
        c.backend = BackendKind::Openai;
        c.openai.base_url = Some(base);
        c.openai.models = vec![];
        c.openai.ttft_timeout = Duration::from_secs(5);
        c.openai.idle_timeout = Duration::from_secs(5);
    })
    .await
}

const TOOLS: &str = r#"[
  {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
   "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                  "required": ["city"]}}},
  {"type": "function", "function": {"name": "get_time", "description": "Time in a zone",
   "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}
]"#;

pub(crate) fn tools() -> Value {
    serde_json::from_str(TOOLS).unwrap()
}

#[tokio::test]
async fn every_part_of_an_answer_is_an_event_and_the_status_assembles_them() {
    let (_, base) = upstream().await;
    let app = spool_in_front(&base).await;
    let id = app
        .create(json!({"model": "agent", "tools": tools(),
                       "messages": [{"role": "user", "content": "Weather and time in Oslo?"}]}))
        .await;
    let status = app.wait_terminal(&id).await;
    let (_, body) = app.read_events(&id, None).await;
    let events = parse_sse(&body);
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    let calls = 2 + (WEATHER_ARGS.len().div_ceil(3) + TIME_ARGS.len().div_ceil(3));
    let mut expected = vec!["start", "reasoning", "reasoning", "token"];
    expected.extend(std::iter::repeat_n("tool_call", calls));
    expected.push("done");
    assert_eq!(kinds, expected, "{body}");
    // One seq, no gaps.
    assert_contiguous(&events);
    assert_eq!(
        events[1].json(),
        json!({"text": "The user wants", "field": "reasoning_content"})
    );
    let first_call = &events[4];
    assert_eq!(
        first_call.json(),
        json!({"index": 0, "id": "call_w", "name": "get_weather", "arguments": ""})
    );
    assert_eq!(events[5].json(), json!({"index": 0, "arguments": "{\"c"}));
    let done = events.last().unwrap().json();
    assert_eq!(done["finish_reason"], "tool_calls", "{done}");

    assert_eq!(status["status"], "completed");
    assert_eq!(status["finish_reason"], "tool_calls");
    assert_eq!(status["text"], "Let me check.");
    assert_eq!(status["reasoning"], "The user wants weather and time.");
    assert_eq!(
        status["tool_calls"],
        json!([
            {"id": "call_w", "type": "function", "function": {"name": "get_weather", "arguments": WEATHER_ARGS}},
            {"id": "call_t", "type": "function", "function": {"name": "get_time", "arguments": TIME_ARGS}},
        ])
    );
    assert!(status.get("refusal").is_none(), "{status}");

    // A plain stream's status has none of the new members.
    let plain = app
        .create(json!({"model": "filtered", "prompt": "a story"}))
        .await;
    let plain = app.wait_terminal(&plain).await;
    assert_eq!(plain["finish_reason"], "content_filter");
    for member in ["reasoning", "tool_calls", "refusal"] {
        assert!(plain.get(member).is_none(), "{plain}");
    }
}

#[tokio::test]
async fn the_openai_format_gives_openais_delta_shapes() {
    let (_, base) = upstream().await;
    let app = spool_in_front(&base).await;
    let body = app
        .client
        .post(app.url("/v1/chat/completions"))
        .json(&json!({"model": "agent", "stream": true, "tools": tools(),
                      "messages": [{"role": "user", "content": "Weather?"}]}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let deltas: Vec<Value> = parse_sse(&body)
        .iter()
        .filter(|e| e.data != "[DONE]")
        .map(|e| e.json()["choices"][0].clone())
        .collect();
    assert_eq!(
        deltas[1]["delta"],
        json!({"reasoning_content": "The user wants"})
    );
    assert_eq!(deltas[3]["delta"], json!({"content": "Let me check."}));
    assert_eq!(
        deltas[4]["delta"],
        json!({"tool_calls": [{"index": 0, "id": "call_w", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]})
    );
    assert_eq!(
        deltas[5]["delta"],
        json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"c"}}]})
    );
    assert_eq!(deltas.last().unwrap()["finish_reason"], "tool_calls");

    // Reasoning comes back under the name the upstream used; a refusal as `refusal`.
    for (model, member, expected) in [
        ("thinker", "reasoning", "Hmm, "),
        ("refuser", "refusal", "I can't help"),
    ] {
        let body = app
            .client
            .post(app.url("/v1/chat/completions"))
            .json(&json!({"model": model, "stream": true,
                          "messages": [{"role": "user", "content": "2+2?"}]}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let second = parse_sse(&body)[1].json();
        assert_eq!(
            second["choices"][0]["delta"],
            json!({member: expected}),
            "{body}"
        );
    }

    // Not streamed: one message with every part.
    let done: Value = app
        .client
        .post(app.url("/v1/chat/completions"))
        .json(&json!({"model": "agent", "tools": tools(),
                      "messages": [{"role": "user", "content": "Weather?"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let choice = &done["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{done}");
    assert_eq!(choice["message"]["content"], "Let me check.");
    assert_eq!(
        choice["message"]["reasoning_content"],
        "The user wants weather and time."
    );
    assert_eq!(
        choice["message"]["tool_calls"][1],
        json!({"id": "call_t", "type": "function", "function": {"name": "get_time", "arguments": TIME_ARGS}})
    );
}

#[tokio::test]
async fn what_the_client_sent_reaches_the_upstream_unchanged() {
    let (up, base) = upstream().await;
    let app = spool_in_front(&base).await;
    let image = json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}});
    let messages = json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is this, and the weather?"}, image]},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_w", "type": "function", "function": {"name": "get_weather", "arguments": WEATHER_ARGS}}]},
        {"role": "tool", "tool_call_id": "call_w", "content": "{\"temp\":21}"},
    ]);
    let extra = json!({
        "tools": tools(),
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": false,
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}},
        "frequency_penalty": 0.5,
        "presence_penalty": -0.25,
        "logit_bias": {"50256": -100},
        "user": "user-42",
    });
    for path in ["/v1/streams", "/v1/chat/completions"] {
        let mut body = extra.clone();
        body["model"] = json!("agent");
        body["messages"] = messages.clone();
        let r = app
            .client
            .post(app.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "{path}: {}",
            r.text().await.unwrap()
        );
        let id = r
            .headers()
            .get("x-stream-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_default();
        let id = if id.is_empty() {
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        } else {
            id
        };
        app.wait_terminal(&id).await;
        let sent = up.bodies.lock().unwrap().last().cloned().unwrap();
        assert_eq!(sent["messages"], messages, "{path}");
        for (k, v) in extra.as_object().unwrap() {
            assert_eq!(&sent[k], v, "{path}: {k}");
        }
        assert_eq!(sent["stream"], true);
    }
}

/// The upstream's log-probability entry for `token`.
fn logprob(token: &str, logprob: f64) -> Value {
    json!({"token": token, "logprob": logprob, "bytes": token.as_bytes(),
           "top_logprobs": [{"token": token, "logprob": logprob, "bytes": token.as_bytes()}]})
}

const SCORED: [(&str, f64); 3] = [("Hi", -0.25), (" there", -1.5), ("!", -0.125)];

#[tokio::test]
async fn log_probabilities_go_up_and_come_back_with_the_text_they_score() {
    let (up, base) = upstream().await;
    let app = spool_in_front(&base).await;
    let entries: Vec<Value> = SCORED.iter().map(|(t, l)| logprob(t, *l)).collect();
    let body = json!({"model": "scorer", "messages": [{"role": "user", "content": "hi"}],
                      "logprobs": true, "top_logprobs": 1, "stream": true});
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-stream-id"].to_str().unwrap().to_owned();
    let text = r.text().await.unwrap();
    let sent = up.bodies.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (&sent["logprobs"], &sent["top_logprobs"]),
        (&json!(true), &json!(1))
    );
    // Each chunk of text carries the entries that score it, in OpenAI's shape.
    let mut seen = Vec::new();
    for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(data).unwrap();
        let choice = &chunk["choices"][0];
        if let Some(content) = choice["delta"]["content"]
            .as_str()
            .filter(|c| !c.is_empty())
        {
            assert_eq!(choice["logprobs"]["refusal"], Value::Null, "{chunk}");
            let scored = choice["logprobs"]["content"].as_array().unwrap();
            assert_eq!(scored.len(), 1, "{chunk}");
            assert_eq!(scored[0]["token"], content);
            seen.extend(scored.iter().cloned());
        } else {
            assert_eq!(choice["logprobs"], Value::Null, "{chunk}");
        }
    }
    assert_eq!(seen, entries);
    // The native token events keep them; a resume gives the same bytes.
    let (_, native) = app.read_events(&id, None).await;
    let tokens: Vec<Value> = parse_sse(&native)
        .iter()
        .filter(|e| e.event == "token")
        .map(|e| e.json())
        .collect();
    assert_eq!(
        tokens[1],
        json!({"text": " there", "logprobs": [entries[1]]})
    );
    let resumed = app
        .client
        .get(app.url(&format!("/v1/streams/{id}/events?format=openai")))
        .header("Last-Event-ID", "2")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let cut = text.find("id: 3\n").unwrap();
    assert_eq!(resumed, text[cut..], "{resumed}");

    // Not streaming: the completion's choice has them all.
    let mut body = body;
    body["stream"] = json!(false);
    let c: Value = app
        .client
        .post(app.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(c["choices"][0]["message"]["content"], "Hi there!");
    assert_eq!(
        c["choices"][0]["logprobs"],
        json!({"content": entries, "refusal": null})
    );
    // Without them asked for, there are none.
    let plain: Value = app
        .client
        .post(app.url("/v1/chat/completions"))
        .json(&json!({"model": "thinker", "messages": [{"role": "user", "content": "2+2"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(plain["choices"][0]["logprobs"], Value::Null, "{plain}");
}

#[tokio::test]
async fn text_only_backends_refuse_what_they_cannot_do_naming_it() {
    let app = spawn_app().await; // the mock backend
    let image = json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}});
    for (body, param) in [
        (
            json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, image]}]}),
            "messages[0].content",
        ),
        (json!({"prompt": "hi", "tools": tools()}), "tools"),
        (
            json!({"prompt": "hi", "response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (json!({"prompt": "hi", "logprobs": true}), "logprobs"),
        (
            json!({"messages": [{"role": "user", "content": "hi"},
                                {"role": "tool", "tool_call_id": "c", "content": "42"}]}),
            "messages[1].role",
        ),
    ] {
        for path in ["/v1/streams", "/v1/chat/completions"] {
            let mut body = body.clone();
            if path == "/v1/chat/completions" && body.get("prompt").is_some() {
                let prompt = body.as_object_mut().unwrap().remove("prompt").unwrap();
                body["messages"] = json!([{"role": "user", "content": prompt}]);
            }
            let r = app
                .client
                .post(app.url(path))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{path} {body}");
            let e: Value = r.json().await.unwrap();
            assert_eq!(e["error"]["code"], "unsupported_parameter", "{e}");
            assert_eq!(e["error"]["param"], param, "{e}");
        }
    }
    // Nothing was started, and what changes nothing is accepted.
    let list: Value = app
        .client
        .get(app.url("/v1/streams"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"], json!([]), "{list}");
    let id = app
        .create(
            json!({"prompt": "hi", "max_tokens": 2, "user": "u1", "tool_choice": "none",
                       "response_format": {"type": "text"}, "frequency_penalty": 0}),
        )
        .await;
    assert_eq!(app.wait_terminal(&id).await["status"], "completed");
    // Shapes that cannot mean anything are 400 invalid_request.
    for body in [
        json!({"prompt": "hi", "tools": [{"function": {"name": "x"}}]}),
        json!({"prompt": "hi", "tool_choice": 3}),
        json!({"prompt": "hi", "response_format": {"type": "yaml"}}),
        json!({"prompt": "hi", "frequency_penalty": 3}),
        json!({"messages": [{"role": "tool", "content": "42"}]}),
        json!({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}),
        json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
    ] {
        let r = app
            .client
            .post(app.url("/v1/streams"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "invalid_request", "{body}: {e}");
    }
}

#[tokio::test]
async fn a_resume_inside_a_tool_calls_arguments_gives_the_unbroken_bytes() {
    let (_, base) = upstream().await;
    let app = spool_in_front(&base).await;
    let id = app
        .create(json!({"model": "agent", "tools": tools(),
                       "messages": [{"role": "user", "content": "Weather?"}]}))
        .await;
    app.wait_terminal(&id).await;
    for format in ["", "?format=openai"] {
        let url = app.url(&format!("/v1/streams/{id}/events{format}"));
        let whole = app
            .client
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let events = parse_sse(&whole);
        // Every drop point before the end: after each event, the rest resumed by
        // Last-Event-ID (after the terminal event there is nothing more: `204`).
        let terminal = events.iter().rposition(|e| e.id.is_some()).unwrap();
        for (i, cut) in events[..terminal].iter().enumerate() {
            let Some(seq) = cut.id else { continue };
            let rest = app
                .client
                .get(&url)
                .header("last-event-id", seq.to_string())
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let seen: String = events[..=i].iter().map(|e| e.raw.as_str()).collect();
            let resumed: String = parse_sse(&rest).iter().map(|e| e.raw.as_str()).collect();
            let all: String = events.iter().map(|e| e.raw.as_str()).collect();
            assert_eq!(format!("{seen}{resumed}"), all, "{format} after {seq}");
        }
    }

    // And over a connection that really breaks inside the first call's arguments.
    let proxy = cutting_proxy(app.addr, 900, 1, Cut::EventsOnly).await;
    let url = format!("{proxy}/v1/streams/{id}/events");
    let cut = app.client.get(&url).send().await.unwrap();
    let mut got = Vec::new();
    let mut body = cut.bytes_stream();
    use futures_util::StreamExt;
    while let Some(Ok(b)) = body.next().await {
        got.extend_from_slice(&b);
    }
    let before = parse_sse(&got);
    let last = before.last().and_then(|e| e.id).unwrap();
    assert!(
        before.iter().any(|e| e.event == "tool_call") && before.last().unwrap().event != "done",
        "the cut was not inside the tool calls: {}",
        String::from_utf8_lossy(&got)
    );
    let (_, rest) = app.read_events(&id, Some(last)).await;
    let (_, whole) = app.read_events(&id, None).await;
    let joined: String = before
        .iter()
        .chain(parse_sse(&rest).iter())
        .map(|e| e.raw.clone())
        .collect();
    let whole: String = parse_sse(&whole).iter().map(|e| e.raw.clone()).collect();
    assert_eq!(joined, whole);
}

#[tokio::test]
async fn the_websocket_sends_each_part_as_its_kind() {
    use crate::ws::{connect, next, send};
    let (_, base) = upstream().await;
    let app = spool_in_front(&base).await;
    let mut ws = connect(&app).await;
    let generate = json!({"type": "generate", "ref": "r", "model": "agent", "tools": tools(),
                          "messages": [{"role": "user", "content": "Weather?"}]});
    send(&mut ws, generate).await;
    let mut types = Vec::new();
    let mut arguments = String::new();
    loop {
        let m = next(&mut ws).await;
        let kind = m["type"].as_str().unwrap().to_owned();
        if kind == "tool_call" && m["index"] == 0 {
            arguments.push_str(m["arguments"].as_str().unwrap());
        }
        types.push(kind.clone());
        if kind == "done" {
            assert_eq!(m["finish_reason"], "tool_calls");
            break;
        }
    }
    assert_eq!(&types[..4], ["started", "reasoning", "reasoning", "token"]);
    assert!(types.iter().filter(|t| *t == "tool_call").count() > 4);
    assert_eq!(arguments, WEATHER_ARGS);
}

/// Runs an SDK script with spool's and the upstream's base URLs.
async fn run_client(program: PathBuf, script: PathBuf) {
    let (_, upstream_base) = upstream().await;
    let app = spool_in_front(&upstream_base).await;
    crate::sdk::run_client(program, script, vec![app.base.clone(), upstream_base]).await;
}

#[tokio::test]
async fn the_python_sdk_assembles_the_same_tool_calls_and_runs_a_tool_loop() {
    run_client(
        clients_dir().join("venv/bin/python"),
        repo().join("tests/clients/tools_sdk.py"),
    )
    .await;
}

#[tokio::test]
async fn the_node_sdks_run_tools_completes_a_tool_loop() {
    install();
    let script = clients_dir().join("node/tools_sdk.mjs");
    std::fs::copy(repo().join("tests/clients/tools_sdk.mjs"), &script).unwrap();
    run_client(PathBuf::from("node"), script).await;
}

#[tokio::test]
async fn spool_generate_shows_each_part_and_exits_6_for_tool_calls() {
    let (_, base) = upstream().await;
    let app = spool_in_front(&base).await;
    let run = |model: &'static str| {
        let base = app.base.clone();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_spool"))
                .args(["generate", "--base", &base, "--model", model, "hi"])
                .env_remove("SPOOL_BASE")
                .stdin(std::process::Stdio::null())
                .output();
            let out = tokio::time::timeout(DEADLINE, out).await.unwrap().unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8(out.stdout).unwrap(),
                String::from_utf8(out.stderr).unwrap(),
            )
        }
    };
    let (code, out, err) = run("agent").await;
    assert_eq!(code, 6, "{out}\n{err}");
    assert_eq!(
        out,
        format!(
            "Let me check.\n[tool call 0: get_weather] {WEATHER_ARGS}\n[tool call 1: get_time] {TIME_ARGS}\n"
        )
    );
    assert!(
        err.contains("[reasoning] The user wants weather and time.\n"),
        "{err}"
    );
    let (code, out, err) = run("thinker").await;
    assert_eq!((code, out.as_str()), (0, "4\n"), "{err}");
    assert!(err.contains("[reasoning] Hmm, two plus two.\n"), "{err}");
    let (code, out, _) = run("refuser").await;
    assert_eq!(
        (code, out.as_str()),
        (0, "[refusal] I can't help with that.\n")
    );
}

#[tokio::test]
async fn the_chat_page_shows_reasoning_and_tool_calls_apart_from_the_text() {
    let (_, base) = upstream().await;
    let app = spool_in_front(&base).await;
    let r = crate::browser::run_case("parts", &app.base).await;
    assert_eq!(r["text"], "Let me check.");
    assert_eq!(r["calls"][0][0], "get_weather");
}
