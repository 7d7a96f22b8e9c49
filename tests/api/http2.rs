//! HTTP/2 without TLS (h2c, prior knowledge) on the same port as HTTP/1.1: many SSE
//! streams multiplexed over one connection, each complete and in order; a WebSocket
//! over HTTP/2 (RFC 8441 extended CONNECT) next to SSE on one connection. The HTTP/2
//! client helpers here serve the TLS tests too.

use axum::body::Body;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::{Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::helpers::*;

#[tokio::test]
async fn a_hundred_sse_streams_over_one_http2_connection() {
    let app = spawn_with(|c| c.mock.rate = 200.0).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..100 {
        let r = h2
            .post(app.url("/v1/streams"))
            .json(&json!({"prompt": "x", "max_tokens": 20}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 201);
        let body: serde_json::Value = r.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let reads = ids.iter().map(|id| {
        let h2 = h2.clone();
        let url = app.url(&format!("/v1/streams/{id}/events"));
        async move {
            let r = h2.get(url).send().await.unwrap();
            assert_eq!(r.version(), reqwest::Version::HTTP_2);
            r.text().await.unwrap()
        }
    });
    let bodies = tokio::time::timeout(DEADLINE, futures_util::future::join_all(reads))
        .await
        .expect("the streams did not finish");
    for body in bodies {
        let events = parse_sse(&body);
        let seqs: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
        assert_eq!(seqs, (1..=22).collect::<Vec<_>>());
        assert_eq!(events.last().unwrap().event, "done");
    }
}

/// An HTTP/2 connection made by hand (hyper's client) over `io`, which may be TLS:
/// one connection, so everything sent on it is multiplexed by construction.
pub async fn h2_connect<I>(io: I) -> H2
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(connection);
    send
}

pub type H2 = hyper::client::conn::http2::SendRequest<Body>;

/// Sends `request` on `h2` and reads the whole body; returns (status, body).
pub async fn h2_text(h2: &H2, request: Request<Body>) -> (StatusCode, String) {
    let mut h2 = h2.clone();
    let response = tokio::time::timeout(DEADLINE, async {
        h2.ready().await.unwrap();
        h2.send_request(request).await.unwrap()
    })
    .await
    .expect("no response before the deadline");
    assert_eq!(response.version(), Version::HTTP_2);
    let status = response.status();
    let body = tokio::time::timeout(DEADLINE, response.into_body().collect())
        .await
        .expect("the body did not end before the deadline")
        .unwrap()
        .to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

pub fn get(url: String) -> Request<Body> {
    Request::get(url).body(Body::empty()).unwrap()
}

pub fn post_json(url: String, body: Value) -> Request<Body> {
    Request::post(url)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// Opens `/v1/ws` on `h2` with an extended CONNECT (RFC 8441) and speaks WebSocket on
/// the stream it opens.
pub async fn h2_websocket(
    h2: &H2,
    base: &str,
) -> WebSocketStream<TokioIo<hyper::upgrade::Upgraded>> {
    // Any answer first: it means the server's SETTINGS, which must allow extended
    // CONNECT, have arrived (the client refuses to send one before they allow it).
    let (status, _) = h2_text(h2, get(format!("{base}/healthz"))).await;
    assert_eq!(status, 200);
    let request = Request::connect(format!("{base}/v1/ws"))
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .header("sec-websocket-version", "13")
        .body(Body::empty())
        .unwrap();
    let mut h2 = h2.clone();
    h2.ready().await.unwrap();
    let mut response = tokio::time::timeout(DEADLINE, h2.send_request(request))
        .await
        .expect("no answer to the CONNECT")
        .expect("the CONNECT was refused (extended CONNECT not enabled?)");
    assert_eq!(response.status(), 200, "{response:?}");
    let upgraded = hyper::upgrade::on(&mut response).await.unwrap();
    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await
}

/// Over one HTTP/2 connection: a WebSocket `generate` gets `started`, the tokens and
/// `done`, while the same stream is read as SSE on the same connection.
pub async fn websocket_and_sse_share_a_connection(h2: &H2, base: &str) {
    let mut ws = h2_websocket(h2, base).await;
    let generate = json!({"type": "generate", "ref": "h2", "prompt": "hi", "max_tokens": 5});
    ws.send(Message::text(generate.to_string())).await.unwrap();
    let mut messages = Vec::new();
    loop {
        let frame = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("no message before the deadline")
            .expect("the socket closed")
            .unwrap();
        let Message::Text(text) = frame else {
            continue; // pings
        };
        let m: Value = serde_json::from_str(text.as_str()).unwrap();
        let done = m["type"] == "done";
        messages.push(m);
        if done {
            break;
        }
    }
    assert_eq!(messages[0]["type"], "started", "{messages:?}");
    assert_eq!(messages[0]["ref"], "h2");
    let id = messages[0]["stream_id"].as_str().unwrap().to_owned();
    let tokens: Vec<(u64, &str)> = messages[1..messages.len() - 1]
        .iter()
        .map(|m| {
            assert_eq!(m["type"], "token", "{m}");
            assert_eq!(m["stream_id"], id.as_str());
            (m["seq"].as_u64().unwrap(), m["text"].as_str().unwrap())
        })
        .collect();
    let expected: Vec<(u64, String)> = (1..=5).map(|i| (i + 1, format!(" tok{i}"))).collect();
    let expected: Vec<(u64, &str)> = expected.iter().map(|(s, t)| (*s, t.as_str())).collect();
    assert_eq!(tokens, expected);
    let done = messages.last().unwrap();
    assert_eq!(done["seq"], 7);
    assert_eq!(done["finish_reason"], "length");

    // The socket is still open; the same stream as SSE, next to it on the connection.
    let (status, body) = h2_text(h2, get(format!("{base}/v1/streams/{id}/events"))).await;
    assert_eq!(status, 200);
    let events = parse_sse(&body);
    let seqs: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    assert_eq!(events.last().unwrap().event, "done");

    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn a_websocket_over_h2c_by_extended_connect() {
    let app = spawn_app().await;
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let h2 = h2_connect(tcp).await;
    websocket_and_sse_share_a_connection(&h2, &app.base).await;
}

#[tokio::test]
async fn connect_without_the_websocket_protocol_is_refused() {
    let app = spawn_app().await;
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let h2 = h2_connect(tcp).await;
    // A plain GET over HTTP/2 is no WebSocket handshake: a JSON error, not a hang.
    let (status, body) = h2_text(&h2, get(format!("{}/v1/ws", app.base))).await;
    assert_eq!(status, 405, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "websocket_required");
}
