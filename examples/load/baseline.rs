//! The baseline: a minimal in-memory SSE server on hyper (no store, no engine, no
//! router) that writes spool's wire format. Run as a child process of the load tool
//! (`load --baseline-server`), so its CPU and memory are read from /proc like spool's.
//!
//! A stream id encodes its `max_tokens` (`st_b{n}x{max}`), so `GET …/events` with
//! `Last-Event-ID` can regenerate any suffix: resume works without any state.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;
use tokio::time::Instant;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The mock backend yields to the scheduler every 64 tokens; so does the baseline.
const YIELD_EVERY: u64 = 64;
/// The listen backlog (see the note on spool's in the report).
const BACKLOG: u32 = 4096;

pub struct Config {
    /// Tokens per second per stream; 0 = as fast as possible.
    pub rate: f64,
    /// Produce this many tokens, then idle until the client goes away.
    pub stall_after: Option<u32>,
    /// Unpaced: most token events per body frame (1 = one write per token).
    pub batch: u64,
}

struct Shared {
    config: Config,
    next_id: AtomicU64,
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.bind("127.0.0.1:0".parse()?)?;
    let listener = socket.listen(BACKLOG)?;
    eprintln!("baseline listening on http://{}", listener.local_addr()?);
    let shared = Arc::new(Shared {
        config,
        next_id: AtomicU64::new(1),
    });
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("baseline: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(req, shared).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn plain(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn sse(id: &str, max_tokens: u32, after: u64, config: &Config) -> Response<Body> {
    let stream = events(Arc::from(id), max_tokens, after, config);
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert("x-stream-id", v);
    }
    r
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if req.method() == Method::POST && path == "/v1/streams" {
        let wants_sse = req
            .headers()
            .get_all(hyper::header::ACCEPT)
            .iter()
            .any(|v| v.as_bytes().windows(17).any(|w| w == b"text/event-stream"))
            || req.uri().query().is_some_and(|q| q.contains("stream=true"));
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return plain(StatusCode::BAD_REQUEST, "{}".into()),
        };
        let max_tokens = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("max_tokens")?.as_u64())
            .unwrap_or(256) as u32;
        let n = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("st_b{n}x{max_tokens}");
        if wants_sse {
            return sse(&id, max_tokens, 0, &shared.config);
        }
        let body = format!(
            "{{\"id\":\"{id}\",\"status\":\"queued\",\"model\":\"mock\",\
             \"created_at\":\"2025-01-01T00:00:00.000Z\",\"events_url\":\"/v1/streams/{id}/events\"}}"
        );
        let mut r = plain(StatusCode::CREATED, body);
        if let Ok(v) = HeaderValue::from_str(&format!("/v1/streams/{id}")) {
            r.headers_mut().insert(hyper::header::LOCATION, v);
        }
        return r;
    }
    if req.method() == Method::GET
        && let Some(id) = path
            .strip_prefix("/v1/streams/")
            .and_then(|r| r.strip_suffix("/events"))
    {
        let Some(max_tokens) = id.rsplit_once('x').and_then(|(_, m)| m.parse::<u32>().ok()) else {
            return plain(StatusCode::NOT_FOUND, "{}".into());
        };
        let after = req
            .headers()
            .get("last-event-id")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .unwrap_or(0);
        let last = u64::from(max_tokens) + 2;
        if after == last {
            return plain(StatusCode::NO_CONTENT, String::new());
        }
        if after > last {
            return plain(StatusCode::BAD_REQUEST, "{}".into());
        }
        return sse(id, max_tokens, after, &shared.config);
    }
    plain(StatusCode::NOT_FOUND, "{}".into())
}

fn push_token(out: &mut String, seq: u64) {
    use std::fmt::Write;
    let _ = write!(
        out,
        "id: {seq}\nevent: token\ndata: {{\"text\":\" tok{}\"}}\n\n",
        seq - 1
    );
}

/// Events `after+1 ..= max_tokens+2` in spool's wire format: start = 1, token *i* =
/// i + 1, done = max_tokens + 2.
fn events(
    id: Arc<str>,
    max_tokens: u32,
    after: u64,
    config: &Config,
) -> impl Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + 'static {
    let (rate, stall_after, batch) = (config.rate, config.stall_after, config.batch.max(1));
    async_stream::stream! {
        yield Ok(Frame::data(Bytes::from_static(b"retry: 1000\n\n")));
        let done = u64::from(max_tokens) + 2;
        let mut seq = after + 1;
        if seq == 1 {
            yield Ok(Frame::data(Bytes::from(format!(
                "id: 1\nevent: start\ndata: {{\"stream_id\":\"{id}\",\"model\":\"mock\",\"created_at\":\"2025-01-01T00:00:00.000Z\"}}\n\n"
            ))));
            seq = 2;
        }
        let stall_seq = stall_after.map(|n| u64::from(n) + 2);
        let start = Instant::now();
        let first = seq;
        let every = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
        while seq < done {
            if stall_seq == Some(seq) {
                std::future::pending::<()>().await;
            }
            let from = seq;
            let mut out = String::with_capacity(64);
            match every {
                Some(every) => {
                    tokio::time::sleep_until(start + every * (seq - first) as u32).await;
                    push_token(&mut out, seq);
                    seq += 1;
                }
                None => {
                    let end = (seq + batch).min(done);
                    let end = stall_seq.filter(|&s| s < end).unwrap_or(end);
                    out.reserve(((end - seq) * 48) as usize);
                    while seq < end {
                        push_token(&mut out, seq);
                        seq += 1;
                    }
                }
            }
            yield Ok(Frame::data(Bytes::from(out)));
            if every.is_none() && (seq - first) / YIELD_EVERY != (from - first) / YIELD_EVERY {
                tokio::task::yield_now().await;
            }
        }
        yield Ok(Frame::data(Bytes::from(format!(
            "id: {done}\nevent: done\ndata: {{\"finish_reason\":\"length\",\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":{max_tokens}}}}}\n\n"
        ))));
    }
}
