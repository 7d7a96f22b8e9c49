//! The OpenAI Responses API (`/v1/responses`), black-box: the event sequence the SDKs
//! parse, numbered by `sequence_number` with an equal SSE id, resumed exactly after
//! every frame by `starting_after` and `Last-Event-ID`; background responses that run
//! unread and are polled to their end; cancel, delete, input items; function calls
//! from a controlled upstream; errors in OpenAI's shape; read tokens. Then the official
//! Python and Node SDKs, unchanged but for the base URL, one script run each.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::sdk::{clients_dir, install, repo};
use crate::tools::{spool_in_front, upstream};

/// `POST /v1/responses`; returns the status and the body as text.
async fn post(app: &TestApp, body: Value) -> (u16, String, reqwest::header::HeaderMap) {
    let r = tokio::time::timeout(
        DEADLINE,
        app.client.post(app.url("/v1/responses")).json(&body).send(),
    )
    .await
    .expect("create hung")
    .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = tokio::time::timeout(DEADLINE, r.text())
        .await
        .expect("body hung")
        .unwrap();
    (status, text, headers)
}

async fn get(app: &TestApp, path: &str) -> (u16, String) {
    let r = app.client.get(app.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    (
        status,
        tokio::time::timeout(DEADLINE, r.text())
            .await
            .unwrap()
            .unwrap(),
    )
}

/// The frames of a Responses event stream: (sequence number, type, data).
fn frames(body: &str) -> Vec<(u64, String, Value)> {
    parse_sse(body)
        .iter()
        .map(|e| {
            let data = e.json();
            assert_eq!(
                Some(data["sequence_number"].as_u64().unwrap()),
                e.id,
                "{}",
                e.raw
            );
            assert_eq!(data["type"], e.event.as_str());
            (e.id.unwrap(), e.event.clone(), data)
        })
        .collect()
}

fn kinds(frames: &[(u64, String, Value)]) -> Vec<&str> {
    frames.iter().map(|(_, k, _)| k.as_str()).collect()
}

/// Polls the response object until `done` holds (with a deadline).
async fn wait_object(app: &TestApp, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (status, body) = get(app, &format!("/v1/responses/{id}")).await;
        assert_eq!(status, 200, "{body}");
        let object: Value = serde_json::from_str(&body).unwrap();
        if done(&object) {
            return object;
        }
        assert!(tokio::time::Instant::now() < until, "timed out: {object}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ended(o: &Value) -> bool {
    !matches!(o["status"].as_str(), Some("queued" | "in_progress"))
}

#[tokio::test]
async fn a_streamed_response_is_the_sdks_event_sequence_and_resumes_after_every_frame() {
    let app = spawn_app().await;
    let (status, body, headers) = post(
        &app,
        json!({"model": "mock", "input": "hi", "max_output_tokens": 5, "stream": true,
               "instructions": "Be brief.", "metadata": {"k": "v"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = headers["x-stream-id"].to_str().unwrap().to_owned();
    let whole = frames(&body);
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(["response.output_text.delta"; 5]);
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]);
    assert_eq!(kinds(&whole), expected, "{body}");
    let ids: Vec<u64> = whole.iter().map(|f| f.0).collect();
    assert_eq!(ids, (0..whole.len() as u64).collect::<Vec<_>>());
    let created = &whole[0].2["response"];
    assert_eq!(created["id"], id.as_str());
    assert_eq!(created["object"], "response");
    assert_eq!(created["status"], "in_progress");
    assert_eq!(created["instructions"], "Be brief.");
    assert_eq!(created["metadata"], json!({"k": "v"}));
    assert_eq!(created["output"], json!([]));
    let text: String = whole
        .iter()
        .filter(|f| f.1 == "response.output_text.delta")
        .map(|f| f.2["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, mock_text(5));
    let end = &whole.last().unwrap().2["response"];
    assert_eq!(end["status"], "incomplete");
    assert_eq!(
        end["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    assert_eq!(end["output"][0]["content"][0]["text"], mock_text(5));
    assert_eq!(end["usage"]["output_tokens"], 5);
    assert_eq!(
        end["usage"]["total_tokens"],
        end["usage"]["input_tokens"].as_u64().unwrap() + 5
    );

    // The object says the same, and the SDKs' `output_text`.
    let (_, object) = get(&app, &format!("/v1/responses/{id}")).await;
    let object: Value = serde_json::from_str(&object).unwrap();
    assert_eq!(object["output"], end["output"]);
    assert_eq!(object["status"], "incomplete");
    assert_eq!(object["output_text"], mock_text(5));

    // A replay is the same bytes; a resume after every frame is exactly the rest, by
    // `starting_after` and by `Last-Event-ID`.
    let url = format!("/v1/responses/{id}?stream=true");
    let (_, replay) = get(&app, &url).await;
    assert_eq!(replay, body);
    let raw: Vec<String> = parse_sse(&body).into_iter().map(|e| e.raw).collect();
    for cut in 0..raw.len() - 1 {
        let (status, rest) = get(&app, &format!("{url}&starting_after={cut}")).await;
        assert_eq!(status, 200);
        assert_eq!(rest, raw[cut + 1..].concat(), "after frame {cut}");
    }
    let rest = app
        .client
        .get(app.url(&url))
        .header("last-event-id", "3")
        .send_text()
        .await;
    assert_eq!(rest, raw[4..].concat());
    // At the last frame it ends at once; past it is an error in OpenAI's shape.
    let last = raw.len() - 1;
    let (status, rest) = get(&app, &format!("{url}&starting_after={last}")).await;
    assert_eq!((status, rest.as_str()), (200, ""));
    let (status, e) = get(&app, &format!("{url}&starting_after={}", last + 1)).await;
    assert_eq!(status, 400, "{e}");
    let e: Value = serde_json::from_str(&e).unwrap();
    assert_eq!(e["error"]["code"], "cursor_out_of_range");
    assert_eq!(e["error"]["type"], "invalid_request_error");

    // A response is a stream: the native surface lists it, has its text, and reads it
    // in the other formats.
    assert_eq!(app.status(&id).await["text"], mock_text(5));
    let list = app.client.get(app.url("/v1/streams")).send_json().await;
    assert_eq!(list["data"][0]["id"], id.as_str());
    let (_, native) = app.read_events(&id, Some(2)).await;
    assert_eq!(parse_sse(&native)[0].id, Some(3));
    let chunks = app
        .client
        .get(app.url(&format!("/v1/streams/{id}/events?format=openai")))
        .send_text()
        .await;
    let deltas: String = parse_sse(&chunks)
        .iter()
        .filter(|e| e.data != "[DONE]")
        .filter_map(|e| {
            e.json()["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(deltas, mock_text(5));
}

#[tokio::test]
async fn a_background_response_runs_unread_is_polled_to_its_end_and_is_deleted() {
    let app = spawn_with(|c| c.mock.rate = 200.0).await;
    let (status, body, _) = post(
        &app,
        json!({"model": "mock", "input": [{"role": "user", "content": "count"}],
               "max_output_tokens": 12, "background": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let first: Value = serde_json::from_str(&body).unwrap();
    assert!(
        matches!(first["status"].as_str(), Some("queued" | "in_progress")),
        "{first}"
    );
    assert_eq!(first["background"], true);
    let id = first["id"].as_str().unwrap().to_owned();
    let done = wait_object(&app, &id, ended).await;
    assert_eq!(done["status"], "incomplete");
    assert_eq!(done["output_text"], mock_text(12));
    assert_eq!(done["usage"]["output_tokens"], 12);

    // A stream read by id from the start is the whole event sequence.
    let (_, replay) = get(&app, &format!("/v1/responses/{id}?stream=true")).await;
    let replay = frames(&replay);
    assert_eq!(replay[0].1, "response.created");
    assert_eq!(replay[0].2["response"]["status"], "queued");
    assert_eq!(replay.last().unwrap().1, "response.incomplete");

    let (status, items) = get(&app, &format!("/v1/responses/{id}/input_items?order=asc")).await;
    assert_eq!(status, 200, "{items}");
    let items: Value = serde_json::from_str(&items).unwrap();
    assert_eq!(items["object"], "list");
    assert_eq!(items["data"][0]["type"], "message");
    assert_eq!(items["data"][0]["role"], "user");
    assert_eq!(
        items["data"][0]["content"],
        json!([{"type": "input_text", "text": "count"}])
    );
    assert_eq!(items["has_more"], false);
    assert_eq!(items["first_id"], items["data"][0]["id"]);

    let r = app
        .client
        .delete(app.url(&format!("/v1/responses/{id}")))
        .send_json()
        .await;
    assert_eq!(r, json!({"id": id, "object": "response", "deleted": true}));
    let (status, e) = get(&app, &format!("/v1/responses/{id}")).await;
    assert_eq!(status, 404);
    let e: Value = serde_json::from_str(&e).unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn a_cancelled_response_says_cancelled_and_ends_its_stream() {
    let app = spawn_with(|c| c.mock.rate = 50.0).await;
    let (_, body, _) = post(
        &app,
        json!({"model": "mock", "input": "long", "max_output_tokens": 2000, "background": true}),
    )
    .await;
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_object(&app, &id, |o| {
        o["output_text"].as_str().is_some_and(|t| !t.is_empty())
    })
    .await;
    let cancelled = app
        .client
        .post(app.url(&format!("/v1/responses/{id}/cancel")))
        .send_json()
        .await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["output"][0]["status"], "incomplete");
    // Again: the same answer. The stream ends with the cancelled object.
    let again = app
        .client
        .post(app.url(&format!("/v1/responses/{id}/cancel")))
        .send_json()
        .await;
    assert_eq!(again["status"], "cancelled");
    let (_, replay) = get(&app, &format!("/v1/responses/{id}?stream=true")).await;
    let last = frames(&replay).pop().unwrap();
    assert_eq!(last.1, "response.incomplete");
    assert_eq!(last.2["response"]["status"], "cancelled");

    // A response that ended otherwise cannot be cancelled; an unknown one is 404.
    let (_, body, _) = post(
        &app,
        json!({"model": "mock", "input": "x", "max_output_tokens": 1}),
    )
    .await;
    let done: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(done["status"], "incomplete", "{done}");
    let r = app
        .client
        .post(app.url(&format!(
            "/v1/responses/{}/cancel",
            done["id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = app
        .client
        .post(app.url("/v1/responses/st_0123456789abcdef01234567/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn bad_requests_are_openai_errors_that_start_nothing() {
    let app = spawn_app().await;
    for (body, status, code) in [
        (json!({"model": "mock"}), 400, "invalid_request"),
        (json!({"model": "mock", "input": 7}), 400, "invalid_request"),
        (
            json!({"model": "mock", "input": [{"type": "mystery"}]}),
            400,
            "unsupported_parameter",
        ),
        (
            json!({"model": "mock", "input": "hi",
                   "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}]}),
            400,
            "unsupported_parameter",
        ),
        (
            json!({"model": "mock", "input": "hi", "text": {"format": {"type": "json_object"}}}),
            400,
            "unsupported_parameter",
        ),
        (
            json!({"model": "mock", "input": "hi", "max_output_tokens": 0}),
            400,
            "invalid_request",
        ),
        (
            json!({"model": "nope", "input": "hi"}),
            404,
            "model_not_found",
        ),
    ] {
        let (got, text, _) = post(&app, body.clone()).await;
        assert_eq!(got, status, "{body}: {text}");
        let e: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(e["error"]["code"], code, "{body}: {e}");
        assert!(e["error"]["type"].is_string(), "{e}");
        assert!(e["error"].get("param").is_some(), "{e}");
    }
    let r = app
        .client
        .post(app.url("/v1/responses"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let list = app.client.get(app.url("/v1/streams")).send_json().await;
    assert_eq!(list["data"], json!([]), "{list}");
    for path in [
        "/v1/responses/st_nope",
        "/v1/responses/st_nope/input_items",
        "/v1/responses/st_nope?stream=true",
    ] {
        assert_eq!(get(&app, path).await.0, 404, "{path}");
    }
}

#[tokio::test]
async fn function_calls_and_reasoning_from_an_upstream_are_output_items() {
    let (up, base) = upstream().await;
    let app = spool_in_front(&base).await;
    let tools = json!([
        {"type": "function", "name": "get_weather", "description": "Weather in a city",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"type": "function", "name": "get_time",
         "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}},
    ]);
    let (status, body, _) = post(
        &app,
        json!({"model": "agent", "input": "Weather and time in Oslo?", "tools": tools,
               "tool_choice": "auto", "stream": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent = up.bodies.lock().unwrap().last().cloned().unwrap();
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(sent["tool_choice"], "auto");
    let whole = frames(&body);
    let k = kinds(&whole);
    assert_eq!(
        &k[2..5],
        [
            "response.output_item.added",
            "response.content_part.added",
            "response.reasoning_text.delta"
        ]
    );
    assert!(
        k.contains(&"response.function_call_arguments.delta"),
        "{k:?}"
    );
    assert_eq!(
        k.iter()
            .filter(|k| **k == "response.function_call_arguments.done")
            .count(),
        2
    );
    let end = &whole.last().unwrap().2["response"];
    assert_eq!(whole.last().unwrap().1, "response.completed");
    let output = end["output"].as_array().unwrap();
    let types: Vec<&str> = output.iter().map(|o| o["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["reasoning", "message", "function_call", "function_call"]
    );
    assert_eq!(
        output[0]["content"][0]["text"],
        "The user wants weather and time."
    );
    assert_eq!(output[1]["content"][0]["text"], "Let me check.");
    assert_eq!(output[2]["call_id"], "call_w");
    assert_eq!(output[2]["name"], "get_weather");
    assert_eq!(
        output[2]["arguments"],
        r#"{"city":"Oslo","unit":"celsius"}"#
    );
    assert_eq!(output[3]["arguments"], r#"{"tz":"Europe/Oslo"}"#);
    assert_eq!(end["tools"], tools);
    assert_eq!(end["usage"]["input_tokens"], 11);

    // Every resume point inside the arguments gives exactly the rest.
    let id = end["id"].as_str().unwrap();
    let raw: Vec<String> = parse_sse(&body).into_iter().map(|e| e.raw).collect();
    for cut in [5, 12, 20, raw.len() - 3] {
        let (_, rest) = get(
            &app,
            &format!("/v1/responses/{id}?stream=true&starting_after={cut}"),
        )
        .await;
        assert_eq!(rest, raw[cut + 1..].concat(), "after {cut}");
    }

    // The tool loop: the calls and their outputs go back as input items.
    let mut input = vec![json!({"role": "user", "content": "Weather and time in Oslo?"})];
    input.push(output[2].clone());
    input.push(output[3].clone());
    input.push(
        json!({"type": "function_call_output", "call_id": "call_w", "output": "{\"temp\":21}"}),
    );
    input.push(json!({"type": "function_call_output", "call_id": "call_t", "output": "{\"time\":\"14:05\"}"}));
    let (status, body, _) = post(
        &app,
        json!({"model": "agent", "input": input, "tools": tools}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["status"], "completed", "{answer}");
    assert_eq!(answer["output_text"], "It is 21°C and sunny in Oslo.");
    let sent = up.bodies.lock().unwrap().last().cloned().unwrap();
    let roles: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "tool", "tool"], "{sent}");
    assert_eq!(sent["messages"][1]["tool_calls"][1]["id"], "call_t");
    assert_eq!(sent["messages"][2]["tool_call_id"], "call_w");
}

#[tokio::test]
async fn with_keys_a_read_token_opens_one_responses_stream_and_nothing_else() {
    let app = spawn_with(|c| c.auth.api_keys = vec!["alpha-key".into()]).await;
    let r = app
        .client
        .post(app.url("/v1/responses"))
        .bearer_auth("alpha-key")
        .json(&json!({"model": "mock", "input": "hi", "max_output_tokens": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = r.headers()["x-read-token"].to_str().unwrap().to_owned();
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = get(
        &app,
        &format!("/v1/responses/{id}?stream=true&token={token}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(frames(&body).last().unwrap().1, "response.incomplete");
    for r in [
        app.client
            .delete(app.url(&format!("/v1/responses/{id}?token={token}"))),
        app.client
            .get(app.url(&format!("/v1/responses/{id}/input_items?token={token}"))),
        app.client.get(app.url(&format!("/v1/responses/{id}"))),
    ] {
        assert_eq!(r.send().await.unwrap().status(), 401);
    }
}

#[tokio::test]
async fn a_response_resumes_by_sequence_number_across_a_restart() {
    // No drain: the shutdown interrupts the running response at once.
    let mut app = spawn_with(|c| {
        c.mock.rate = 100.0;
        c.server.drain_timeout = Duration::ZERO;
    })
    .await;
    let (_, body, _) = post(
        &app,
        json!({"model": "mock", "input": "x", "max_output_tokens": 3, "background": true}),
    )
    .await;
    let done_id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_object(&app, &done_id, ended).await;
    let (_, before) = get(&app, &format!("/v1/responses/{done_id}?stream=true")).await;
    let (_, body, _) = post(
        &app,
        json!({"model": "mock", "input": "x", "max_output_tokens": 2000, "background": true}),
    )
    .await;
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = format!("/v1/responses/{id}?stream=true");
    let mut reader = SseReader::open(app.client.get(app.url(&url)), DEADLINE).await;
    let first = reader.until(8).await;
    drop(reader);
    app.shutdown().await;
    let _dir = app.take_dir();
    let app = spawn_on(&app.db, |_| {}).await;

    // A finished response is the same bytes after the restart.
    let (_, after) = get(&app, &format!("/v1/responses/{done_id}?stream=true")).await;
    assert_eq!(after, before);
    // One the shutdown interrupted resumes after the last frame seen and says how it ended.
    let last_seen = first.last().unwrap().id.unwrap();
    let (status, rest) = get(&app, &format!("{url}&starting_after={last_seen}")).await;
    assert_eq!(status, 200, "{rest}");
    let rest = parse_sse(&rest);
    assert_eq!(rest[0].id, Some(last_seen + 1));
    assert_eq!(rest.last().unwrap().event, "response.failed");
    let (_, whole) = get(&app, &url).await;
    let joined: String = first
        .iter()
        .chain(rest.iter())
        .map(|e| e.raw.as_str())
        .collect();
    assert_eq!(joined, whole);
    let object = wait_object(&app, &id, ended).await;
    assert_eq!(object["status"], "failed");
    assert!(
        object["error"]["message"]
            .as_str()
            .unwrap()
            .contains("interrupted"),
        "{object}"
    );
}

#[tokio::test]
async fn previous_response_id_continues_a_conversation_and_its_tool_loop() {
    let (up, base) = upstream().await;
    let app = spool_in_front(&base).await;
    let tools = json!([{"type": "function", "name": "get_weather",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let (status, body, _) = post(
        &app,
        json!({"model": "agent", "input": "Weather and time in Oslo?", "tools": tools,
               "instructions": "Be brief."}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let first: Value = serde_json::from_str(&body).unwrap();
    let first_id = first["id"].as_str().unwrap().to_owned();
    let calls: Vec<Value> = first["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["type"] == "function_call")
        .cloned()
        .collect();
    assert_eq!(calls.len(), 2, "{first}");
    // Only the tool outputs go up: the conversation is the server's.
    let outputs: Vec<Value> = calls
        .iter()
        .map(|c| json!({"type": "function_call_output", "call_id": c["call_id"], "output": "{\"temp\":21}"}))
        .collect();
    for _branch in 0..2 {
        let (status, body, _) = post(
            &app,
            json!({"model": "agent", "previous_response_id": first_id, "input": outputs, "tools": tools}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            answer["output_text"], "It is 21°C and sunny in Oslo.",
            "{answer}"
        );
        assert_eq!(answer["previous_response_id"], first_id.as_str());
        let sent = up.bodies.lock().unwrap().last().cloned().unwrap();
        let messages = sent["messages"].as_array().unwrap();
        let roles: Vec<&str> = messages
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        // The first response's instructions are not carried over; its answer is.
        assert_eq!(roles, ["user", "assistant", "tool", "tool"], "{sent}");
        assert_eq!(messages[1]["content"], "Let me check.");
        assert_eq!(messages[1]["tool_calls"][0]["id"], "call_w");
        assert_eq!(messages[1]["tool_calls"][1]["function"]["name"], "get_time");
        let id = answer["id"].as_str().unwrap();
        let items = app
            .client
            .get(app.url(&format!("/v1/responses/{id}/input_items?order=asc")))
            .send_json()
            .await;
        let kinds: Vec<&str> = items["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["function_call_output", "function_call_output"],
            "{items}"
        );
    }

    for (body, status) in [
        (
            json!({"model": "agent", "input": "x", "previous_response_id": "st_0123456789abcdef01234567"}),
            400,
        ),
        (
            json!({"model": "agent", "input": "x", "background": true, "store": false}),
            400,
        ),
    ] {
        let (got, text, _) = post(&app, body.clone()).await;
        assert_eq!(got, status, "{body}: {text}");
        let e: Value = serde_json::from_str(&text).unwrap();
        assert!(e["error"]["param"].is_string(), "{e}");
        assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
    }
}

#[tokio::test]
async fn a_response_with_store_false_is_gone_once_it_has_ended() {
    let app = spawn_app().await;
    let (status, body, _) = post(
        &app,
        json!({"model": "mock", "input": "hi", "max_output_tokens": 3, "store": false}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let object: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(object["store"], false);
    assert_eq!(object["output_text"], mock_text(3));
    let id = object["id"].as_str().unwrap().to_owned();
    let until = tokio::time::Instant::now() + DEADLINE;
    while get(&app, &format!("/v1/responses/{id}")).await.0 != 404 {
        assert!(
            tokio::time::Instant::now() < until,
            "a store: false response was kept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _, _) = post(
        &app,
        json!({"model": "mock", "input": "more", "previous_response_id": id}),
    )
    .await;
    assert_eq!(status, 400);
    // Streamed, it is read whole live, then gone too.
    let (status, body, headers) = post(
        &app,
        json!({"model": "mock", "input": "hi", "max_output_tokens": 3, "store": false, "stream": true}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(frames(&body).last().unwrap().1, "response.incomplete");
    let id = headers["x-stream-id"].to_str().unwrap().to_owned();
    while get(&app, &format!("/v1/responses/{id}")).await.0 != 404 {
        assert!(
            tokio::time::Instant::now() < until,
            "a store: false response was kept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a Responses SDK script with a mock spool's base URL and one in front of the
/// test's upstream.
async fn run_responses_client(program: PathBuf, script: PathBuf) {
    let (_, upstream_base) = upstream().await;
    let agent = spool_in_front(&upstream_base).await;
    let mock = spawn_with(|c| c.mock.rate = 100.0).await;
    crate::sdk::run_client(program, script, vec![mock.base.clone(), agent.base.clone()]).await;
}

#[tokio::test]
async fn the_python_sdk_streams_resumes_polls_cancels_and_runs_a_tool_loop() {
    run_responses_client(
        clients_dir().join("venv/bin/python"),
        repo().join("tests/clients/responses_sdk.py"),
    )
    .await;
}

#[tokio::test]
async fn the_node_sdk_streams_resumes_polls_cancels_and_runs_a_tool_loop() {
    install();
    let script = clients_dir().join("node/responses_sdk.mjs");
    std::fs::copy(repo().join("tests/clients/responses_sdk.mjs"), &script).unwrap();
    run_responses_client(PathBuf::from("node"), script).await;
}
