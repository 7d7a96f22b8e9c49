//! Smaller holes closed: idle connections are shut down (HTTP/2 with a GOAWAY, after
//! `SPOOL_HTTP2_IDLE_TIMEOUT`) and HTTP/2 peers are pinged; a read token stops working
//! once its key is removed from `SPOOL_API_KEYS`; `stop` is bounded; a WebSocket peer
//! that sends but never reads cannot hold its socket open.

use std::time::Duration;

use axum::body::Body;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;
use crate::http2::{get, h2_text};

/// An h2c connection by hand, with its connection task: it ends when the server closes.
async fn h2c(
    app: &TestApp,
) -> (
    hyper::client::conn::http2::SendRequest<Body>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (send, task)
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_and_a_busy_one_is_not() {
    let app = spawn_with(|c| {
        c.server.http2_idle_timeout = Duration::from_millis(400);
        c.mock.rate = 20.0;
    })
    .await;
    // One `/healthz`, then nothing: the server closes the connection.
    let (h2, idle) = h2c(&app).await;
    let (status, _) = h2_text(&h2, get(app.url("/healthz"))).await;
    assert_eq!(status, 200);
    let began = tokio::time::Instant::now();
    tokio::time::timeout(DEADLINE, idle)
        .await
        .expect("the idle connection was never closed")
        .unwrap();
    assert!(began.elapsed() >= Duration::from_millis(300));

    // A response being written keeps its connection open past the timeout: 30 tokens
    // at 20/s is 1.5 s, all of it arrives; then the connection is idle and closed.
    let id = app.create(json!({"prompt": "x", "max_tokens": 30})).await;
    let (h2, busy) = h2c(&app).await;
    let (status, body) = h2_text(&h2, get(app.url(&format!("/v1/streams/{id}/events")))).await;
    assert_eq!(status, 200);
    let events = parse_sse(&body);
    assert_contiguous(&events);
    assert_eq!(events.len(), 32);
    tokio::time::timeout(DEADLINE, busy)
        .await
        .expect("the connection was not closed once idle")
        .unwrap();
}

#[tokio::test]
async fn an_idle_http1_connection_is_closed_between_requests() {
    let app = spawn_with(|c| c.server.http2_idle_timeout = Duration::from_millis(300)).await;
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: spool\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 1024];
        loop {
            let n = tcp.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            seen.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(DEADLINE, read_all)
        .await
        .expect("the idle keep-alive connection stayed open");
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
}

/// Raw HTTP/2 frames: the server pings a peer that has no stream open; a peer that
/// never answers is closed.
#[tokio::test]
async fn an_http2_peer_that_does_not_answer_pings_is_closed() {
    let app = spawn_with(|c| c.server.http2_ping_interval = Duration::from_millis(200)).await;
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // An empty SETTINGS frame.
    tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let began = tokio::time::Instant::now();
    let mut pinged = false;
    let frames = async {
        loop {
            let mut header = [0u8; 9];
            if tcp.read_exact(&mut header).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0u8; len];
            if tcp.read_exact(&mut payload).await.is_err() {
                return;
            }
            match (header[3], header[4] & 1) {
                // The server's SETTINGS: acknowledge them, as a live peer does.
                (4, 0) => {
                    let _ = tcp.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await;
                }
                // A PING: never answered.
                (6, 0) => pinged = true,
                _ => {}
            }
        }
    };
    tokio::time::timeout(DEADLINE, frames)
        .await
        .expect("the silent peer was never closed");
    assert!(pinged, "the server sent no PING");
    // Well before the first-request timeout (30 s) would have closed it.
    assert!(began.elapsed() < Duration::from_secs(10));
}

/// A read token works for its stream while its key is configured; restarted with that
/// key removed, the token is refused (`401`), as is the key, while the other key's
/// tokens still work.
#[tokio::test]
async fn a_read_token_dies_with_the_key_that_made_it() {
    let keys = |c: &mut spool::ServeConfig, keys: &[&str]| {
        c.auth.api_keys = keys.iter().map(|k| k.to_string()).collect();
    };
    let mut app = spawn_with(|c| keys(c, &["alpha-key", "beta-key"])).await;
    let mut tokens = Vec::new();
    for key in ["alpha-key", "beta-key"] {
        let r: Value = app
            .client
            .post(app.url("/v1/streams"))
            .bearer_auth(key)
            .json(&json!({"prompt": "x", "max_tokens": 2}))
            .send_json()
            .await;
        let id = r["id"].as_str().unwrap().to_owned();
        let token = r["read_token"].as_str().unwrap().to_owned();
        tokens.push((id, token));
    }
    let read = async |app: &TestApp, (id, token): &(String, String)| {
        let r = app
            .client
            .get(app.url(&format!("/v1/streams/{id}/events?token={token}")))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    };
    for t in &tokens {
        let (status, body) = read(&app, t).await;
        assert_eq!(status, 200, "{body}");
    }
    // The token names a key, and is bound to it: it does not open another key's stream.
    let swapped = (tokens[1].0.clone(), tokens[0].1.clone());
    assert_eq!(read(&app, &swapped).await.0, 401);

    app.shutdown().await;
    let dir = app.take_dir();
    let app = spawn_on(&app.db, |c| keys(c, &["beta-key"])).await;
    let (status, body) = read(&app, &tokens[0]).await;
    assert_eq!(status, 401, "{body}");
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["error"]["code"], "unauthorized");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("key"),
        "{e}"
    );
    let (status, body) = read(&app, &tokens[1]).await;
    assert_eq!(status, 200, "{body}");
    drop(dir);
}

/// `stop` takes at most four sequences of at most 256 bytes each; beyond is a clear
/// `400`, on the native API and the OpenAI facade, and nothing starts.
#[tokio::test]
async fn stop_is_bounded() {
    let app = spawn_app().await;
    let long = "x".repeat(257);
    for body in [
        json!({"prompt": "x", "stop": long}),
        json!({"prompt": "x", "stop": ["a", long]}),
        json!({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}),
    ] {
        let r = app
            .client
            .post(app.url("/v1/streams"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "invalid_request", "{e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains("stop"),
            "{e}"
        );
    }
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .json(&json!({"model": "mock", "messages": [{"role": "user", "content": "hi"}], "stop": long}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let listed: Value = app.client.get(app.url("/v1/streams")).send_json().await;
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(0), "{listed}");
    // At the bound it is fine.
    let ok = "y".repeat(256);
    app.create(json!({"prompt": "x", "max_tokens": 2, "stop": [ok, "a", "b", "c"]}))
        .await;
}

/// A peer that sends but never reads: the server's replies back up, and instead of its
/// read loop waiting on them forever, the socket is closed within about the pong
/// timeout — though the peer keeps sending. Other sockets are unaffected.
#[tokio::test]
async fn a_websocket_peer_that_sends_but_never_reads_is_closed() {
    let app = spawn_with(|c| {
        c.ws.queue = 4;
        c.ws.ping_interval = Duration::from_millis(100);
        c.ws.pong_timeout = Duration::from_millis(600);
        c.limits.max_tokens_limit = 200_000;
    })
    .await;
    // A small receive buffer, so the server's writes back up soon.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(app.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/v1/ws", app.addr), tcp)
        .await
        .unwrap();
    let generate = json!({"type": "generate", "prompt": "x", "max_tokens": 200_000});
    ws.send(Message::text(generate.to_string())).await.unwrap();
    // Now only send: pings (each asks for a pong the server cannot deliver).
    let ping = Message::text(json!({"type": "ping"}).to_string());
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        if app.metric("spool_ws_sockets").await == 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the socket of a peer that never reads stayed open"
        );
        if tokio::time::timeout(Duration::from_millis(50), ws.send(ping.clone()))
            .await
            .is_ok_and(|sent| sent.is_err())
        {
            // The server closed it: the send fails once the close is seen.
            break;
        }
    }
    let until = tokio::time::Instant::now() + DEADLINE;
    while app.metric("spool_ws_sockets").await != 0.0 {
        assert!(
            tokio::time::Instant::now() < until,
            "the socket was not freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(app.metric("spool_ws_pong_timeouts_total").await >= 1.0);
    drop(ws);
    // The server is fine: a new socket works.
    let (mut other, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", app.addr))
        .await
        .unwrap();
    other
        .send(Message::text(json!({"type": "ping"}).to_string()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(DEADLINE, other.next()).await.unwrap();
    assert!(matches!(pong, Some(Ok(_))));
}
