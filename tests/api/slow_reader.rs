//! A reader that never reads slows neither the generation nor other readers, and
//! catches up exactly from the store once it reads again.

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// Decodes an HTTP/1.1 response with a chunked body into (head, body).
fn decode_chunked(raw: &[u8]) -> (String, String) {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut rest = &raw[split + 4..];
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap().trim(), 16)
                .unwrap();
        rest = &rest[line_end + 2..];
        if size == 0 {
            break;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
    (head, String::from_utf8(body).unwrap())
}

#[tokio::test]
async fn a_reader_that_never_reads_blocks_nothing_and_catches_up_exactly() {
    let app = spawn_with(|c| {
        // The readers are following live before the first token comes.
        c.mock.ttft_ms = 300;
        c.limits.reader_buffer = 4;
        c.limits.max_tokens_limit = 200_000;
    })
    .await;
    // Long enough to overflow the socket buffers of a reader that does not read.
    let tokens = 120_000;
    let id = app
        .create(json!({"prompt": "x", "max_tokens": tokens}))
        .await;

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(app.addr).await.unwrap();
    let request =
        format!("GET /v1/streams/{id}/events HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stalled.write_all(request.as_bytes()).await.unwrap();
    // It reads the head and the start event, then stops reading.
    let mut raw = Vec::new();
    let mut buf = [0u8; 512];
    while !String::from_utf8_lossy(&raw).contains("event: start") {
        let n = tokio::time::timeout(DEADLINE, stalled.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        raw.extend_from_slice(&buf[..n]);
    }

    // Another reader reads everything while the stalled one holds its connection open.
    let (code, body) = app.read_events(&id, None).await;
    assert_eq!(code, 200);
    let events = parse_sse(&body);
    assert_eq!(events.len(), tokens as usize + 2);
    let s = app.wait_terminal(&id).await;
    assert_eq!(s["status"], "completed");

    // The stream ended while the stalled reader was far behind.
    let delivered = app.metric("spool_events_delivered_total").await;
    assert!(
        delivered < 2.0 * events.len() as f64,
        "delivered {delivered}"
    );

    // Now it reads: the same bytes, caught up from the store.
    tokio::time::timeout(DEADLINE, stalled.read_to_end(&mut raw))
        .await
        .expect("stalled reader hung")
        .unwrap();
    let (head, stalled_body) = decode_chunked(&raw);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(stalled_body, body);
    // It had fallen further behind than its live buffer holds: proof it was stalled
    // while the stream ran, and that it caught up from the store.
    assert!(
        app.metric("spool_reader_lags_total").await >= 1.0,
        "the stalled reader never fell behind"
    );
}
