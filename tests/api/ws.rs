//! `/v1/ws` with a real WebSocket client (tokio-tungstenite): generate, follow many
//! streams at once, cancel, subscribe after a seq, keepalive, bad frames, limits,
//! backpressure, and interactive sessions.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::helpers::*;

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(crate) async fn connect(app: &TestApp) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", app.addr))
        .await
        .unwrap();
    ws
}

pub(crate) async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next JSON message (pings are answered by the client library as it reads).
pub(crate) async fn next(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("no message before the deadline")
            .expect("the socket closed")
            .unwrap();
        match frame {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Reads messages until every stream in `ids` has ended; returns them by stream.
async fn read_until_done(ws: &mut Ws, ids: &[String]) -> BTreeMap<String, Vec<Value>> {
    let mut by_stream: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut open = ids.len();
    while open > 0 {
        let m = next(ws).await;
        let id = m["stream_id"].as_str().unwrap_or_default().to_owned();
        let terminal = m["type"] == "done" || (m["type"] == "error" && m["seq"].is_u64());
        by_stream.entry(id).or_default().push(m);
        if terminal {
            open -= 1;
        }
    }
    by_stream
}

async fn generate(ws: &mut Ws, reference: &str, body: Value) -> String {
    let mut msg = body;
    msg["type"] = json!("generate");
    msg["ref"] = json!(reference);
    send(ws, msg).await;
    // Streams already running on this socket may send tokens before `started`.
    let started = loop {
        let m = next(ws).await;
        if m["type"] != "token" {
            break m;
        }
    };
    assert_eq!(started["type"], "started", "{started}");
    assert_eq!(started["ref"], reference);
    started["stream_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn generate_streams_tokens_whose_seq_is_the_sse_id() {
    let app = spawn_app().await;
    let mut ws = connect(&app).await;
    let id = generate(&mut ws, "c1", json!({"prompt": "hi", "max_tokens": 5})).await;
    let messages = read_until_done(&mut ws, std::slice::from_ref(&id)).await;
    let messages = &messages[&id];
    let seqs: Vec<u64> = messages
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![2, 3, 4, 5, 6, 7]);
    let done = messages.last().unwrap();
    assert_eq!(done["type"], "done");
    assert_eq!(done["finish_reason"], "length");
    assert_eq!(done["usage"]["completion_tokens"], 5);

    // The same stream over SSE: each WS seq is the SSE id of the same event.
    let (_, body) = app.read_events(&id, None).await;
    let sse = parse_sse(&body);
    for m in messages.iter().filter(|m| m["type"] == "token") {
        let e = sse.iter().find(|e| e.id == m["seq"].as_u64()).unwrap();
        assert_eq!(e.event, "token");
        assert_eq!(e.json()["text"], m["text"]);
    }
    assert_eq!(sse.last().unwrap().id, done["seq"].as_u64());
}

#[tokio::test]
async fn many_streams_share_one_socket() {
    let app = spawn_with(|c| c.mock.rate = 200.0).await;
    let mut ws = connect(&app).await;
    for i in 0..20 {
        send(
            &mut ws,
            json!({"type": "generate", "ref": format!("r{i}"), "prompt": "x", "max_tokens": 10}),
        )
        .await;
    }
    // Messages of all streams interleave; sort them by stream.
    let mut ids = Vec::new();
    let mut messages: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut done = 0;
    while done < 20 {
        let m = next(&mut ws).await;
        let id = m["stream_id"].as_str().unwrap().to_owned();
        match m["type"].as_str().unwrap() {
            "started" => ids.push(id),
            "done" => {
                done += 1;
                messages.entry(id).or_default().push(m);
            }
            "token" => messages.entry(id).or_default().push(m),
            other => panic!("unexpected {other}: {m}"),
        }
    }
    assert_eq!(ids.len(), 20);
    for id in &ids {
        let m = &messages[id];
        let texts: String = m.iter().filter_map(|m| m["text"].as_str()).collect();
        let expected: String = (1..=10).map(|i| format!(" tok{i}")).collect();
        assert_eq!(texts, expected, "{id}");
        assert_eq!(m.last().unwrap()["type"], "done");
    }
}

#[tokio::test]
async fn cancel_ends_a_stream_with_done_cancelled() {
    let app = spawn_with(|c| c.mock.rate = 50.0).await;
    let mut ws = connect(&app).await;
    let id = generate(&mut ws, "c", json!({"prompt": "x", "max_tokens": 10_000})).await;
    // A few tokens, then cancel.
    for _ in 0..3 {
        assert_eq!(next(&mut ws).await["type"], "token");
    }
    send(&mut ws, json!({"type": "cancel", "stream_id": id})).await;
    let messages = read_until_done(&mut ws, std::slice::from_ref(&id)).await;
    let done = messages[&id].last().unwrap().clone();
    assert_eq!(done["type"], "done");
    assert_eq!(done["finish_reason"], "cancelled");
    assert_eq!(app.wait_terminal(&id).await["status"], "cancelled");
}

#[tokio::test]
async fn subscribe_after_a_seq_replays_exactly_the_rest() {
    let app = spawn_app().await;
    let id = app.create(json!({"prompt": "x", "max_tokens": 30})).await;
    app.wait_terminal(&id).await;
    let mut ws = connect(&app).await;
    send(
        &mut ws,
        json!({"type": "subscribe", "stream_id": id, "after": 20}),
    )
    .await;
    let messages = read_until_done(&mut ws, std::slice::from_ref(&id)).await;
    let seqs: Vec<u64> = messages[&id]
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (21..=32).collect::<Vec<_>>());
    assert_eq!(messages[&id][0]["text"], " tok20");

    // Past the end, at the end, unknown: clear errors on the same socket.
    send(
        &mut ws,
        json!({"type": "subscribe", "stream_id": id, "after": 99}),
    )
    .await;
    assert_eq!(next(&mut ws).await["code"], "cursor_out_of_range");
    send(
        &mut ws,
        json!({"type": "subscribe", "stream_id": id, "after": 32}),
    )
    .await;
    assert_eq!(next(&mut ws).await["code"], "stream_ended");
    send(
        &mut ws,
        json!({"type": "subscribe", "stream_id": "st_aaaaaaaaaaaaaaaaaaaaa"}),
    )
    .await;
    let e = next(&mut ws).await;
    assert_eq!(e["code"], "stream_not_found");
    assert_eq!(e["stream_id"], "st_aaaaaaaaaaaaaaaaaaaaa");
}

#[tokio::test]
async fn ping_gets_pong() {
    let app = spawn_app().await;
    let mut ws = connect(&app).await;
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next(&mut ws).await, json!({"type": "pong"}));
}

#[tokio::test]
async fn bad_frames_get_errors_and_spare_the_other_streams() {
    let app = spawn_with(|c| c.mock.rate = 100.0).await;
    let mut ws = connect(&app).await;
    let id = generate(&mut ws, "keep", json!({"prompt": "x", "max_tokens": 40})).await;

    ws.send(Message::text("{not json")).await.unwrap();
    ws.send(Message::text(r#"{"type":"dance","ref":"d1"}"#))
        .await
        .unwrap();
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    ws.send(Message::text(
        r#"{"type":"generate","ref":"g","prompt":"x","max_tokens":0}"#,
    ))
    .await
    .unwrap();
    ws.send(Message::text(
        r#"{"type":"generate","ref":"m","prompt":"x","model":"nope"}"#,
    ))
    .await
    .unwrap();

    let mut errors = Vec::new();
    let mut tokens = Vec::new();
    let mut done = None;
    while errors.len() < 5 || done.is_none() {
        let m = next(&mut ws).await;
        match m["type"].as_str().unwrap() {
            "error" => errors.push(m),
            "token" => tokens.push(m),
            "done" => done = Some(m),
            other => panic!("unexpected {other}: {m}"),
        }
    }
    let codes: Vec<&str> = errors.iter().map(|e| e["code"].as_str().unwrap()).collect();
    assert_eq!(
        codes,
        [
            "invalid_json",
            "unknown_type",
            "unsupported_frame",
            "invalid_request",
            "model_not_found"
        ]
    );
    assert_eq!(errors[1]["ref"], "d1");
    assert_eq!(errors[3]["ref"], "g");
    assert_eq!(
        tokens.len(),
        40,
        "the stream on the same socket lost tokens"
    );
    assert_eq!(done.unwrap()["stream_id"], id.as_str());
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009() {
    let app = spawn_with(|c| c.ws.max_message = 1024).await;
    let mut ws = connect(&app).await;
    let big = json!({"type": "generate", "prompt": "x".repeat(4096)}).to_string();
    ws.send(Message::text(big)).await.unwrap();
    loop {
        match tokio::time::timeout(DEADLINE, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(frame.code, CloseCode::Size);
                break;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected close 1009, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_peer_that_misses_pongs_is_closed_and_freed() {
    let app = spawn_with(|c| {
        c.ws.ping_interval = Duration::from_millis(50);
        c.ws.pong_timeout = Duration::from_millis(300);
    })
    .await;
    let mut ws = connect(&app).await;
    // A client that answers pings stays: read (and so pong) for a while.
    let until = tokio::time::Instant::now() + Duration::from_millis(600);
    while tokio::time::Instant::now() < until {
        if let Ok(frame) = tokio::time::timeout(Duration::from_millis(20), ws.next()).await {
            assert!(matches!(frame, Some(Ok(Message::Ping(_)))), "{frame:?}");
        }
    }
    assert_eq!(app.metric("spool_ws_sockets").await, 1.0);
    // Keep answering pings while the other peer is judged (a client only pongs while
    // it reads); otherwise both may be closed and the count never shows 1 again.
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });

    // One that never reads never pongs: it is closed, and the socket count drops.
    let _silent = connect(&app).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if app.metric("spool_ws_pong_timeouts_total").await >= 1.0
            && app.metric("spool_ws_sockets").await == 1.0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the silent peer was not closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!reader.is_finished(), "the answering peer was closed");
    reader.abort();
}

#[tokio::test]
async fn limits_on_streams_per_socket_and_sockets_per_server() {
    let app = spawn_with(|c| {
        c.mock.rate = 10.0;
        c.ws.max_streams = 2;
        c.ws.max_sockets = 1;
    })
    .await;
    let mut ws = connect(&app).await;
    generate(&mut ws, "a", json!({"prompt": "x", "max_tokens": 1000})).await;
    generate(&mut ws, "b", json!({"prompt": "x", "max_tokens": 1000})).await;
    send(
        &mut ws,
        json!({"type": "generate", "ref": "c", "prompt": "x"}),
    )
    .await;
    let e = loop {
        let m = next(&mut ws).await;
        if m["type"] == "error" {
            break m;
        }
    };
    assert_eq!(e["code"], "too_many_streams");
    assert_eq!(e["ref"], "c");

    let second = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", app.addr)).await;
    match second {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "too_many_sockets");
        }
        other => panic!("a second socket was let in: {:?}", other.map(|_| ())),
    }

    // Plain HTTP on the endpoint is a clear 4xx, not a hang.
    let r = app.client.get(app.url("/v1/ws")).send().await.unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "websocket_required");
}

#[tokio::test]
async fn disconnect_cancels_only_streams_that_asked() {
    let app = spawn_with(|c| c.mock.rate = 20.0).await;
    let mut ws = connect(&app).await;
    let keep = generate(&mut ws, "k", json!({"prompt": "x", "max_tokens": 10_000})).await;
    let stop = generate(
        &mut ws,
        "s",
        json!({"prompt": "x", "max_tokens": 10_000, "cancel_on_disconnect": true}),
    )
    .await;
    next(&mut ws).await;
    drop(ws);
    let s = app.wait_terminal(&stop).await;
    assert_eq!(s["status"], "cancelled");
    let k = app.status(&keep).await;
    assert_eq!(k["status"], "running", "{k}");
    let r = app
        .client
        .post(app.url(&format!("/v1/streams/{keep}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn a_socket_that_never_reads_slows_nobody() {
    let app = spawn_with(|c| c.ws.queue = 8).await;
    let mut stuck = connect(&app).await;
    let id = generate(
        &mut stuck,
        "big",
        json!({"prompt": "x", "max_tokens": 20_000}),
    )
    .await;
    // `stuck` reads nothing more. Another socket follows the same stream to its end.
    let mut other = connect(&app).await;
    send(&mut other, json!({"type": "subscribe", "stream_id": id})).await;
    let messages = read_until_done(&mut other, std::slice::from_ref(&id)).await;
    let tokens = messages[&id]
        .iter()
        .filter(|m| m["type"] == "token")
        .count();
    assert_eq!(tokens, 20_000);
    assert_eq!(app.wait_terminal(&id).await["status"], "completed");
    drop(stuck);
}

#[tokio::test]
async fn a_session_of_three_turns_over_the_socket() {
    let app = spawn_app().await;
    let mut ws = connect(&app).await;
    send(
        &mut ws,
        json!({"type": "session.say", "ref": "t1", "content": "first", "max_tokens": 3}),
    )
    .await;
    let announced = next(&mut ws).await;
    assert_eq!(announced["type"], "session");
    let session = announced["session_id"].as_str().unwrap().to_owned();
    let started = next(&mut ws).await;
    assert_eq!(started["type"], "started");
    assert_eq!(started["session_id"], session.as_str());
    let mut streams = vec![started["stream_id"].as_str().unwrap().to_owned()];
    read_until_done(&mut ws, &streams[0..1]).await;

    for (i, text) in ["second", "third"].iter().enumerate() {
        send(
            &mut ws,
            json!({"type": "session.say", "session_id": session, "content": text, "max_tokens": 3}),
        )
        .await;
        let started = next(&mut ws).await;
        assert_eq!(started["type"], "started", "{started}");
        streams.push(started["stream_id"].as_str().unwrap().to_owned());
        read_until_done(&mut ws, &streams[i + 1..i + 2]).await;
    }

    // The history over HTTP: six turns, each assistant turn with its stream's text.
    let history: Value = app
        .client
        .get(app.url(&format!("/v1/sessions/{session}")))
        .send_json()
        .await;
    let turns = history["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 6, "{history}");
    for (i, turn) in turns.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(turn["role"], "user");
            assert_eq!(turn["content"], ["first", "second", "third"][i / 2]);
        } else {
            assert_eq!(turn["role"], "assistant");
            assert_eq!(turn["content"], " tok1 tok2 tok3");
            assert_eq!(turn["stream_id"], streams[i / 2].as_str());
            assert_eq!(turn["status"], "completed");
        }
    }
    // Each turn's prompt was the whole history so far: the mock counts its words
    // ("first", " tok1 tok2 tok3", "second", " tok1 tok2 tok3", "third").
    let third = app.status(&streams[2]).await;
    assert_eq!(third["usage"]["prompt_tokens"], 9, "{third}");
    assert_eq!(third["session_id"], session.as_str());
    // And a turn's stream resumes over SSE like any other.
    let (code, body) = app.read_events(&streams[1], Some(2)).await;
    assert_eq!(code, 200);
    let ids: Vec<u64> = parse_sse(&body).iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, vec![3, 4, 5]);
}

#[tokio::test]
async fn a_new_turn_while_one_runs_is_refused() {
    let app = spawn_with(|c| c.mock.rate = 20.0).await;
    let mut ws = connect(&app).await;
    send(
        &mut ws,
        json!({"type": "session.say", "content": "a", "max_tokens": 10_000}),
    )
    .await;
    let session = next(&mut ws).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(next(&mut ws).await["type"], "started");
    send(
        &mut ws,
        json!({"type": "session.say", "ref": "again", "session_id": session, "content": "b"}),
    )
    .await;
    let e = loop {
        let m = next(&mut ws).await;
        if m["type"] == "error" {
            break m;
        }
    };
    assert_eq!(e["code"], "turn_in_progress");
    assert_eq!(e["ref"], "again");
}

/// `SPOOL_RATE_LIMIT` counts every stream a socket starts, as it counts a `POST`: the
/// upgrade request takes one token, each `generate` and `session.say` one more, and
/// past the limit the start is refused (`rate_limited`) while the socket stays open.
#[tokio::test]
async fn generates_over_a_socket_count_against_the_key_rate_limit() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let app = spawn_with(|c| {
        c.auth.api_keys = vec!["alpha-key".into(), "beta-key".into()];
        c.auth.rate_limit = 4;
    })
    .await;
    let mut request = format!("ws://{}/v1/ws", app.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", "Bearer alpha-key".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    // The upgrade took 1 of 4: three generates start, the fourth is refused, and so
    // is a session's turn.
    async fn answer(ws: &mut Ws, reference: &str, mut msg: Value) -> Value {
        msg["ref"] = json!(reference);
        send(ws, msg).await;
        loop {
            let m = next(ws).await;
            if m["ref"] == reference {
                return m;
            }
        }
    }
    let generate = json!({"type": "generate", "prompt": "hi", "max_tokens": 2});
    for i in 0..3 {
        let m = answer(&mut ws, &format!("g{i}"), generate.clone()).await;
        assert_eq!(m["type"], "started", "{m}");
    }
    let refused = answer(&mut ws, "g3", generate.clone()).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    let say = json!({"type": "session.say", "content": "hi"});
    let refused = answer(&mut ws, "s1", say).await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    // The socket still answers, and the key's HTTP requests are over the limit too.
    send(&mut ws, json!({"type": "ping"})).await;
    loop {
        if next(&mut ws).await["type"] == "pong" {
            break;
        }
    }
    let r = app
        .client
        .get(app.url("/v1/models"))
        .bearer_auth("alpha-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let r = app
        .client
        .get(app.url("/v1/models"))
        .bearer_auth("beta-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "buckets are per key");
}

/// A `POST` that starts a stream is counted once (by the key check), not twice.
#[tokio::test]
async fn a_post_is_counted_once() {
    let app = spawn_with(|c| {
        c.auth.api_keys = vec!["alpha-key".into()];
        c.auth.rate_limit = 3;
    })
    .await;
    let mut codes = Vec::new();
    for _ in 0..4 {
        let r = app
            .client
            .post(app.url("/v1/streams"))
            .bearer_auth("alpha-key")
            .json(&json!({"prompt": "hi", "max_tokens": 1}))
            .send()
            .await
            .unwrap();
        codes.push(r.status().as_u16());
    }
    assert_eq!(codes, [201, 201, 201, 429]);
}

/// An unknown model is `model_not_found` with the list of models, on every surface.
#[tokio::test]
async fn an_unknown_model_is_named_with_the_models_there_are() {
    let app = spawn_app().await;
    let mut ws = connect(&app).await;
    for (reference, msg) in [
        (
            "g",
            json!({"type": "generate", "prompt": "hi", "model": "nope"}),
        ),
        (
            "s",
            json!({"type": "session.say", "content": "hi", "model": "nope"}),
        ),
    ] {
        let mut msg = msg;
        msg["ref"] = json!(reference);
        send(&mut ws, msg).await;
        let m = next(&mut ws).await;
        assert_eq!(m["type"], "error", "{m}");
        assert_eq!(m["ref"], reference, "{m}");
        assert_eq!(m["code"], "model_not_found", "{m}");
        assert_eq!(m["models"], json!(["mock"]), "{m}");
    }
    for (path, body) in [
        ("/v1/streams", json!({"prompt": "hi", "model": "nope"})),
        ("/v1/sessions", json!({"model": "nope"})),
        (
            "/v1/chat/completions",
            json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
        ),
    ] {
        let r = app
            .client
            .post(app.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "model_not_found", "{path}: {e}");
        assert_eq!(e["error"]["models"], json!(["mock"]), "{path}: {e}");
    }
}

#[tokio::test]
async fn a_generate_retried_with_its_idempotency_key_gets_the_same_stream() {
    let app = spawn_app().await;
    let body = json!({"prompt": "hi", "max_tokens": 3, "idempotency_key": "w-1"});
    let mut ws = connect(&app).await;
    let first = generate(&mut ws, "a", body.clone()).await;
    read_until_done(&mut ws, std::slice::from_ref(&first)).await;
    drop(ws);

    // A new socket (the first one's answer was lost): the same key, the same stream.
    let mut ws = connect(&app).await;
    let again = generate(&mut ws, "b", body.clone()).await;
    assert_eq!(again, first);
    let replayed = read_until_done(&mut ws, std::slice::from_ref(&again)).await;
    assert_eq!(
        replayed[&again].last().map(|m| m["type"].clone()),
        Some(json!("done"))
    );
    // An HTTP retry under that key and body finds it too: keys are one namespace per owner.
    let http = app
        .client
        .post(app.url("/v1/streams"))
        .header("idempotency-key", "w-1")
        .json(&json!({"prompt": "hi", "max_tokens": 3}))
        .send()
        .await
        .unwrap();
    assert!(http.status().is_success(), "{}", http.status());
    let http: Value = http.json().await.unwrap();
    assert_eq!(http["id"], first.as_str());

    // A different body under the key: refused, nothing started.
    let mut other = body;
    other["prompt"] = json!("something else");
    other["type"] = json!("generate");
    other["ref"] = json!("c");
    send(&mut ws, other).await;
    let refused = next(&mut ws).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "idempotency_conflict", "{refused}");
    assert_eq!(refused["ref"], "c", "{refused}");
    let list: Value = app
        .client
        .get(app.url("/v1/streams"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1), "{list}");
}
