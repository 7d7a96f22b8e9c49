//! The mock OpenAI upstream of the relay scenario: a minimal in-memory
//! OpenAI-compatible server on hyper (no store, no router) that answers
//! `POST /v1/chat/completions` with `max_tokens` content chunks as fast as the socket
//! takes them, and `GET /v1/models` with one model, `up`. Run as a child process of the
//! load tool (`load --upstream-server`), so its CPU and memory are read from /proc.
//!
//! A streamed answer is, in order: a chunk with `delta: {"role":"assistant","content":""}`,
//! `max_tokens` chunks with `delta: {"content":" tok{i}"}` (i = 1..), a chunk with
//! `finish_reason: "length"` and an empty delta, the usage chunk when
//! `stream_options.include_usage`, then `data: [DONE]`. Each chunk is its own body
//! frame. With `batch` = 1 (the default) the body yields after every chunk, so hyper
//! flushes each one in its own write as a token-by-token server does; chunks then share
//! a write only while the socket is full (hyper queues at most 16 buffers per write).
//! With `batch` = N, hyper may coalesce up to N ready chunks per write.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpSocket;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The most chunks between two yields (as the baseline and the mock do).
const YIELD_EVERY: u32 = 64;
/// The listen backlog.
const BACKLOG: u32 = 4096;
/// The model the upstream serves.
pub const MODEL: &str = "up";

const CHUNK_HEAD: &str = "data: {\"id\":\"chatcmpl-x\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":";
const ROLE_CHUNK: &str = "data: {\"id\":\"chatcmpl-x\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n";
const FINISH_CHUNK: &str = "data: {\"id\":\"chatcmpl-x\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n";
const DONE: &str = "data: [DONE]\n\n";

/// Chunks per write when the socket keeps up: the body yields (and hyper flushes) after
/// every `batch` chunks; clamped to 1..=64.
pub async fn run(batch: u32) -> anyhow::Result<()> {
    let batch = batch.clamp(1, YIELD_EVERY);
    let socket = TcpSocket::new_v4()?;
    socket.bind("127.0.0.1:0".parse()?)?;
    let listener = socket.listen(BACKLOG)?;
    eprintln!("upstream listening on http://{}", listener.local_addr()?);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("upstream: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| async move {
                Ok::<_, Infallible>(handle(req, batch).await)
            });
            // HTTP/1.1 with keep-alive, and h2c by prior knowledge for clients that
            // speak it.
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({"error": {
        "message": message, "type": "invalid_request_error", "param": null, "code": null,
    }});
    json(status, body.to_string())
}

async fn handle(req: Request<Incoming>, batch: u32) -> Response<Body> {
    let path = req.uri().path();
    if req.method() == Method::GET && (path == "/v1/models" || path == "/models") {
        return json(
            StatusCode::OK,
            format!(
                "{{\"object\":\"list\",\"data\":[{{\"id\":\"{MODEL}\",\"object\":\"model\",\
                 \"created\":0,\"owned_by\":\"mock\"}}]}}"
            ),
        );
    }
    if req.method() != Method::POST
        || !(path == "/v1/chat/completions" || path == "/chat/completions")
    {
        return error(StatusCode::NOT_FOUND, "no such route");
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(StatusCode::BAD_REQUEST, "unreadable body"),
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "the body is not JSON");
    };
    let max_tokens = v
        .get("max_completion_tokens")
        .or_else(|| v.get("max_tokens"))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(256)
        .min(u64::from(u32::MAX)) as u32;
    let stream = v
        .get("stream")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let usage = v
        .pointer("/stream_options/include_usage")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    if !stream {
        let mut text = String::new();
        for i in 1..=max_tokens {
            text.push_str(&format!(" tok{i}"));
        }
        let body = serde_json::json!({
            "id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "length"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": max_tokens,
                      "total_tokens": u64::from(max_tokens) + 1},
        });
        return json(StatusCode::OK, body.to_string());
    }
    let mut r = Response::new(StreamBody::new(chunks(max_tokens, usage, batch)).boxed_unsync());
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    r
}

fn content_chunk(i: u32) -> Bytes {
    use std::fmt::Write;
    let mut out = String::with_capacity(CHUNK_HEAD.len() + 48);
    out.push_str(CHUNK_HEAD);
    let _ = write!(
        out,
        "{{\"content\":\" tok{i}\"}},\"finish_reason\":null}}]}}\n\n"
    );
    Bytes::from(out)
}

fn chunks(
    max_tokens: u32,
    usage: bool,
    batch: u32,
) -> impl Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + 'static {
    async_stream::stream! {
        yield Ok(Frame::data(Bytes::from_static(ROLE_CHUNK.as_bytes())));
        for i in 1..=max_tokens {
            yield Ok(Frame::data(content_chunk(i)));
            if i % batch == 0 {
                tokio::task::yield_now().await;
            }
        }
        yield Ok(Frame::data(Bytes::from_static(FINISH_CHUNK.as_bytes())));
        if usage {
            yield Ok(Frame::data(Bytes::from(format!(
                "data: {{\"id\":\"chatcmpl-x\",\"object\":\"chat.completion.chunk\",\"created\":0,\
                 \"model\":\"up\",\"choices\":[],\"usage\":{{\"prompt_tokens\":1,\
                 \"completion_tokens\":{max_tokens},\"total_tokens\":{}}}}}\n\n",
                u64::from(max_tokens) + 1
            ))));
        }
        yield Ok(Frame::data(Bytes::from_static(DONE.as_bytes())));
    }
}
