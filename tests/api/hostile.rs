//! Hostile clients: malformed HTTP, huge headers, endless bodies, slow-loris headers,
//! thousands of idle sockets. Each is refused (`4xx`) or disconnected, never a crash;
//! and in each, a normal client's stream — live over its own connection the whole
//! time — arrives complete and in order, and `/healthz` answers afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::helpers::*;

/// The longest any one test may take.
const TEST_BOUND: Duration = Duration::from_secs(60);

/// A server whose mock model streams at 50 tokens/s, with a short header-read timeout
/// so that slow clients are disconnected within a test's time.
async fn spawn_hostile() -> TestApp {
    spawn_with(|c| {
        c.mock.rate = 50.0;
        c.server.header_read_timeout = Duration::from_secs(1);
    })
    .await
}

/// A client that opens a new connection per request: with the 1 s header timeout the
/// server closes idle keep-alive connections, and a pooled one could be reused just as
/// it closes.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// Starts a stream with `body` over a new connection; returns its id.
async fn create(app: &TestApp, body: serde_json::Value) -> String {
    let r = fresh_client()
        .post(app.url("/v1/streams"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_owned()
}

/// A normal client's stream, read over its own connection while the test abuses the
/// server.
struct Witness {
    id: String,
    tokens: Arc<AtomicUsize>,
    reader: JoinHandle<Vec<SseEvent>>,
}

impl Witness {
    /// Starts a long stream and waits until its first token has arrived.
    async fn start(app: &TestApp) -> Witness {
        let id = create(app, json!({"prompt": "witness", "max_tokens": 30000})).await;
        let tokens = Arc::new(AtomicUsize::new(0));
        let url = app.url(&format!("/v1/streams/{id}/events"));
        let seen = tokens.clone();
        let reader = tokio::spawn(async move {
            let mut reader = SseReader::open(fresh_client().get(url), DEADLINE).await;
            while let Some(event) = reader.next_event().await {
                if event.event == "token" {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            }
            reader.into_events()
        });
        let witness = Witness { id, tokens, reader };
        witness.wait_for_tokens(1).await;
        witness
    }

    async fn wait_for_tokens(&self, n: usize) {
        let until = tokio::time::Instant::now() + DEADLINE;
        while self.tokens.load(Ordering::SeqCst) < n {
            assert!(
                tokio::time::Instant::now() < until,
                "the witness stream stalled at {} tokens",
                self.tokens.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// After the abuse: the stream still flows, ends when cancelled, and every event
    /// arrived once and in order; `/healthz` answers and a new stream runs to its end.
    async fn finish(self, app: &TestApp) {
        let now = self.tokens.load(Ordering::SeqCst);
        self.wait_for_tokens(now + 3).await;
        let r = fresh_client()
            .post(app.url(&format!("/v1/streams/{}/cancel", self.id)))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "cancel: {}", r.status());
        let events = tokio::time::timeout(DEADLINE, self.reader)
            .await
            .expect("the witness stream did not end")
            .unwrap();
        let ids: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
        assert_eq!(ids, (1..=events.len() as u64).collect::<Vec<_>>());
        assert_eq!(events[0].event, "start");
        for (i, e) in events[1..events.len() - 1].iter().enumerate() {
            assert_eq!(e.event, "token");
            assert_eq!(e.json()["text"], format!(" tok{}", i + 1));
        }
        let done = events.last().unwrap();
        assert_eq!(done.event, "done");
        assert_eq!(done.json()["finish_reason"], "cancelled");

        let health = fresh_client()
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
        let id = create(app, json!({"prompt": "after", "max_tokens": 5})).await;
        let body = fresh_client()
            .get(app.url(&format!("/v1/streams/{id}/events")))
            .send_text()
            .await;
        let events = parse_sse(&body);
        assert_eq!(events.len(), 7, "{body}");
        assert_eq!(events[6].event, "done");
    }
}

/// How a raw exchange ended.
#[derive(Debug)]
struct Exchange {
    /// What the server sent before closing (or before `DEADLINE`).
    response: Vec<u8>,
    /// Whether the server closed the connection.
    closed: bool,
}

impl Exchange {
    /// The status of an HTTP/1.1 response, if one came.
    fn status(&self) -> Option<u16> {
        let text = String::from_utf8_lossy(&self.response);
        let rest = text.strip_prefix("HTTP/1.1 ")?;
        rest.get(..3)?.parse().ok()
    }

    /// Refused with one of `statuses` and disconnected, or disconnected at once.
    fn assert_refused(&self, what: &str, statuses: &[u16]) {
        assert!(self.closed, "{what}: the connection was left open");
        if !self.response.is_empty() {
            let status = self.status();
            assert!(
                status.is_some_and(|s| statuses.contains(&s)),
                "{what}: answered {:?}",
                String::from_utf8_lossy(&self.response[..self.response.len().min(200)])
            );
        }
    }
}

/// Sends `request` on a new connection (ignoring a write the server cut short) and
/// reads until the server closes, or `DEADLINE`.
async fn send_raw(app: &TestApp, request: &[u8]) -> Exchange {
    let mut tcp = TcpStream::connect(app.addr).await.unwrap();
    let _ = tcp.write_all(request).await;
    read_to_close(&mut tcp).await
}

async fn read_to_close(tcp: &mut TcpStream) -> Exchange {
    let mut response = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(until, tcp.read(&mut buf)).await {
            Err(_) => {
                return Exchange {
                    response,
                    closed: false,
                };
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Exchange {
                    response,
                    closed: true,
                };
            }
            Ok(Ok(n)) => response.extend_from_slice(&buf[..n]),
        }
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[tokio::test]
async fn malformed_http_is_refused_or_disconnected() {
    tokio::time::timeout(TEST_BOUND, async {
        let app = spawn_hostile().await;
        let witness = Witness::start(&app).await;
        let mut h2_garbage = H2_PREFACE.to_vec();
        // A frame header claiming a 16 MiB frame of an unknown type, then noise.
        h2_garbage.extend_from_slice(b"\xff\xff\xff\x99\x00\x00\x00\x00\x01garbage");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("a garbage request line", b"GARBAGE\r\n\r\n".to_vec()),
            ("binary noise", b"\x00\x01\x02\xff\xfe\r\n\r\n".to_vec()),
            (
                "a request line with extra words",
                b"GET /healthz HTTP/1.1 extra\r\nHost: x\r\n\r\n".to_vec(),
            ),
            ("a bad version", b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n".to_vec()),
            ("HTTP/0.9", b"GET /healthz\r\n\r\n".to_vec()),
            (
                "a header without a colon",
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".to_vec(),
            ),
            (
                "a header with an empty name",
                b"GET /healthz HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n".to_vec(),
            ),
            (
                "a space in a header name",
                b"GET /healthz HTTP/1.1\r\nHo st: x\r\n\r\n".to_vec(),
            ),
            (
                "a folded header",
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n".to_vec(),
            ),
            (
                "a control byte in a header value",
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n".to_vec(),
            ),
            (
                "a negative Content-Length",
                b"POST /v1/streams HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(),
            ),
            (
                "two different Content-Lengths",
                b"POST /v1/streams HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n{}{}{}".to_vec(),
            ),
            (
                "a chunk size that is not hex",
                b"POST /v1/streams HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n".to_vec(),
            ),
            (
                "a chunk size that overflows",
                b"POST /v1/streams HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n".to_vec(),
            ),
            (
                "a chunk longer than its size",
                b"POST /v1/streams HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{\"prompt\":\"x\"}\r\n0\r\n\r\n".to_vec(),
            ),
            (
                "an unknown transfer coding",
                b"POST /v1/streams HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n{}".to_vec(),
            ),
            (
                "a bad HTTP/2 preface",
                b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n".to_vec(),
            ),
            ("an HTTP/2 preface then garbage frames", h2_garbage),
        ];
        for (what, request) in &cases {
            let exchange = send_raw(&app, request).await;
            if *what == "an HTTP/2 preface then garbage frames" {
                // HTTP/2 answers with its own frames (SETTINGS, GOAWAY), then closes.
                assert!(exchange.closed, "{what}: the connection was left open");
            } else {
                exchange.assert_refused(what, &[400]);
            }
        }
        witness.finish(&app).await;
    })
    .await
    .expect("the test overran its bound");
}

#[tokio::test]
async fn huge_headers_are_refused() {
    tokio::time::timeout(TEST_BOUND, async {
        let app = spawn_hostile().await;
        let witness = Witness::start(&app).await;

        let mut one_huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: ".to_vec();
        one_huge.extend(std::iter::repeat_n(b'a', 1024 * 1024));
        one_huge.extend_from_slice(b"\r\n\r\n");
        send_raw(&app, &one_huge)
            .await
            .assert_refused("one 1 MiB header", &[431]);

        let mut thousands = b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..5000 {
            thousands.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        thousands.extend_from_slice(b"\r\n");
        send_raw(&app, &thousands)
            .await
            .assert_refused("5,000 headers", &[431]);

        let mut long_target = b"GET /".to_vec();
        long_target.extend(std::iter::repeat_n(b'a', 1024 * 1024));
        long_target.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
        send_raw(&app, &long_target)
            .await
            .assert_refused("a 1 MiB request target", &[414, 431]);

        witness.finish(&app).await;
    })
    .await
    .expect("the test overran its bound");
}

/// Writes `head` then `chunk` forever, while reading the response; returns the
/// response and how much of the body was written before the server cut the
/// connection (`None` if it never did within `cap` bytes).
async fn endless_body(
    app: &TestApp,
    head: &str,
    chunk: &[u8],
    cap: usize,
) -> (Exchange, Option<usize>) {
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let (mut read, mut write) = tcp.into_split();
    write.write_all(head.as_bytes()).await.unwrap();
    let chunk = chunk.to_vec();
    let writer = tokio::spawn(async move {
        let mut written = 0;
        while written < cap {
            if write.write_all(&chunk).await.is_err() {
                return Some(written);
            }
            written += chunk.len();
        }
        None
    });
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + DEADLINE;
    let closed = loop {
        match tokio::time::timeout_at(until, read.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => response.extend_from_slice(&buf[..n]),
        }
    };
    let written = tokio::time::timeout(DEADLINE, writer)
        .await
        .expect("the writer hung")
        .unwrap();
    (Exchange { response, closed }, written)
}

#[tokio::test]
async fn endless_bodies_get_413_and_are_not_read_to_the_end() {
    tokio::time::timeout(TEST_BOUND, async {
        let app = spawn_hostile().await;
        let witness = Witness::start(&app).await;
        // Far more than the 1 MiB body limit plus what socket buffers hold.
        let cap = 256 * 1024 * 1024;
        let block = vec![b'a'; 64 * 1024];
        let mut chunked = format!("{:x}\r\n", block.len()).into_bytes();
        chunked.extend_from_slice(&block);
        chunked.extend_from_slice(b"\r\n");
        for path in ["/v1/streams", "/v1/chat/completions", "/v1/sessions"] {
            let declared = format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n{{\"prompt\":\""
            );
            let (exchange, written) = endless_body(&app, &declared, &block, cap).await;
            assert_eq!(exchange.status(), Some(413), "{path}, Content-Length: 10 GB");
            assert!(exchange.closed, "{path}, Content-Length: 10 GB: left open");
            assert!(written.is_some(), "{path}, Content-Length: 10 GB: read {cap} bytes");

            let chunked_head = format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            let (exchange, written) = endless_body(&app, &chunked_head, &chunked, cap).await;
            assert_eq!(exchange.status(), Some(413), "{path}, chunked");
            assert!(exchange.closed, "{path}, chunked: left open");
            assert!(written.is_some(), "{path}, chunked: read {cap} bytes");
        }
        // A route that never reads its body: answered, and the rest is not read.
        let ignored = format!(
            "POST /v1/streams/{}/cancel HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n",
            "st_nonexistent"
        );
        let (exchange, written) = endless_body(&app, &ignored, &block, cap).await;
        assert!(exchange.status().is_some_and(|s| (400..500).contains(&s)), "{exchange:?}");
        assert!(exchange.closed && written.is_some(), "an ignored body was read on");
        witness.finish(&app).await;
    })
    .await
    .expect("the test overran its bound");
}

#[tokio::test]
async fn slow_and_silent_clients_are_disconnected_by_the_header_timeout() {
    tokio::time::timeout(TEST_BOUND, async {
        let app = spawn_hostile().await; // header-read timeout: 1 s
        let witness = Witness::start(&app).await;

        // Headers trickled a byte at a time, never finished.
        let mut tcp = TcpStream::connect(app.addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let trickle = async {
            for byte in b"X-Slow: ".iter().cycle() {
                if tcp.write_all(&[*byte]).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        };
        let cut = tokio::time::timeout(DEADLINE, trickle).await;
        assert_eq!(
            cut.ok(),
            Some(true),
            "a trickling client was never disconnected"
        );

        // A connection that sends nothing at all.
        let mut silent = TcpStream::connect(app.addr).await.unwrap();
        let exchange = read_to_close(&mut silent).await;
        assert!(
            exchange.closed && exchange.response.is_empty(),
            "{exchange:?}"
        );

        // Half an HTTP/2 preface, then silence.
        let half_preface = send_raw(&app, &H2_PREFACE[..10]).await;
        assert!(half_preface.closed, "half an HTTP/2 preface: left open");

        // A whole HTTP/2 preface and SETTINGS, but never a request.
        let mut h2_idle = H2_PREFACE.to_vec();
        h2_idle.extend_from_slice(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00");
        let idle = send_raw(&app, &h2_idle).await;
        assert!(
            idle.closed,
            "an HTTP/2 connection without a request: left open"
        );

        // Keep-alive after a request: the next request's headers are timed too.
        let mut tcp = TcpStream::connect(app.addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let exchange = read_to_close(&mut tcp).await;
        assert!(exchange.closed, "an idle keep-alive connection: left open");
        assert_eq!(exchange.status(), Some(200));

        witness.finish(&app).await;
    })
    .await
    .expect("the test overran its bound");
}

#[tokio::test]
async fn thousands_of_half_open_sockets_do_not_keep_out_a_new_client() {
    tokio::time::timeout(TEST_BOUND, async {
        // The default 30 s header timeout: the sockets stay until the test closes them.
        let app = spawn_with(|c| c.mock.rate = 50.0).await;
        let witness = Witness::start(&app).await;
        let before = app.metric("spool_connections").await;

        let mut sockets = Vec::with_capacity(2000);
        for i in 0..2000 {
            let mut tcp = TcpStream::connect(app.addr).await.unwrap();
            if i % 2 == 1 {
                tcp.write_all(b"POST /v1/streams HTTP/1.1\r\nHost: x\r\nContent-Le")
                    .await
                    .unwrap();
            }
            sockets.push(tcp);
        }
        // The server holds them all…
        let until = tokio::time::Instant::now() + DEADLINE;
        while app.metric("spool_connections").await < before + 2000.0 {
            assert!(
                tokio::time::Instant::now() < until,
                "the server never took the sockets"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // …and still serves a new client.
        let fresh = reqwest::Client::new();
        let health = tokio::time::timeout(
            Duration::from_secs(5),
            fresh.get(app.url("/healthz")).send(),
        )
        .await
        .expect("a new client waited behind the idle sockets")
        .unwrap();
        assert_eq!(health.status(), 200);

        drop(sockets);
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            let open = app.metric("spool_connections").await;
            if open <= before + 1.0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "{open} connections stayed open"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        witness.finish(&app).await;
    })
    .await
    .expect("the test overran its bound");
}

#[tokio::test]
async fn silent_sockets_at_the_connection_cap_are_shed_so_a_new_client_gets_in() {
    tokio::time::timeout(TEST_BOUND, async {
        let app = spawn_with(|c| {
            c.mock.rate = 50.0;
            c.server.header_read_timeout = Duration::from_secs(1);
            c.server.max_connections = 32;
        })
        .await;
        let witness = Witness::start(&app).await;
        // Three times the cap: the server holds 31 (the witness has a slot), the rest
        // wait in the kernel's queue, ahead of the new client.
        let mut sockets = Vec::new();
        for _ in 0..96 {
            sockets.push(TcpStream::connect(app.addr).await.unwrap());
        }
        let health = tokio::time::timeout(DEADLINE, fresh_client().get(app.url("/healthz")).send())
            .await
            .expect("the silent sockets kept a new client out")
            .unwrap();
        assert_eq!(health.status(), 200);
        // Every silent socket was closed by the server, none answered.
        for mut tcp in sockets {
            let exchange = read_to_close(&mut tcp).await;
            assert!(
                exchange.closed && exchange.response.is_empty(),
                "{exchange:?}"
            );
        }
        witness.finish(&app).await;
    })
    .await
    .expect("the test overran its bound");
}

#[tokio::test]
async fn websocket_garbage_closes_that_socket_only() {
    tokio::time::timeout(TEST_BOUND, async {
        let app = spawn_hostile().await;
        let witness = Witness::start(&app).await;
        let mask = [1u8, 2, 3, 4];
        let masked = |payload: &[u8]| -> Vec<u8> {
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect()
        };
        let mut invalid_utf8 = vec![0x81, 0x80 | 2];
        invalid_utf8.extend_from_slice(&mask);
        invalid_utf8.extend(masked(&[0xff, 0xfe]));
        let mut unmasked = vec![0x81, 5];
        unmasked.extend_from_slice(b"hello");
        let mut endless = vec![0x81, 0x80 | 127];
        endless.extend_from_slice(&(i64::MAX as u64).to_be_bytes());
        endless.extend_from_slice(&mask);
        let mut reserved_bits = vec![0xf1, 0x80 | 2];
        reserved_bits.extend_from_slice(&mask);
        reserved_bits.extend(masked(b"{}"));
        let mut unknown_opcode = vec![0x83, 0x80 | 2];
        unknown_opcode.extend_from_slice(&mask);
        unknown_opcode.extend(masked(b"{}"));
        let mut close = vec![0x88, 0x80 | 2];
        close.extend_from_slice(&mask);
        close.extend(masked(&1000u16.to_be_bytes()));
        for (what, frame) in [
            ("a close frame", close),
            ("an unmasked frame", unmasked),
            ("text that is not UTF-8", invalid_utf8),
            ("a frame of 2^63 bytes", endless),
            ("reserved bits set", reserved_bits),
            ("an unknown opcode", unknown_opcode),
            ("noise", b"\x00\xff\x13\x37garbage garbage garbage".to_vec()),
        ] {
            let mut tcp = TcpStream::connect(app.addr).await.unwrap();
            tcp.write_all(
                b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            )
            .await
            .unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                tcp.read_exact(&mut byte).await.unwrap();
                head.push(byte[0]);
            }
            assert!(
                head.starts_with(b"HTTP/1.1 101"),
                "{}",
                String::from_utf8_lossy(&head)
            );
            let _ = tcp.write_all(&frame).await;
            let exchange = read_to_close(&mut tcp).await;
            assert!(exchange.closed, "{what}: the socket was left open");
        }
        let until = tokio::time::Instant::now() + DEADLINE;
        while app.metric("spool_ws_sockets").await > 0.0 {
            assert!(
                tokio::time::Instant::now() < until,
                "closed sockets are still counted open"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        witness.finish(&app).await;
    })
    .await
    .expect("the test overran its bound");
}
