//! The Durable Streams protocol over HTTP at `{SPOOL_DS_PREFIX}/v1/stream/{name}`
//! (default `/ds`): `PUT` creates, `POST` appends and closes, `GET` reads (catch-up,
//! `live=long-poll`, `live=sse`), `HEAD` tells the tail, `DELETE` deletes — headers and
//! statuses as the protocol gives them (see `crate::ds` for its rules and
//! `engine::ds` for how a stream lives on the store).
//!
//! Every response carries `X-Content-Type-Options: nosniff` and
//! `Cross-Origin-Resource-Policy: cross-origin`; errors are spool's JSON errors with the
//! protocol's statuses. Forks are `PUT`s with `Stream-Forked-From`. The reserved
//! `{stream root}/__ds/…` routes (subscriptions) are `http::ds_subs`.

use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine as _;

use super::auth::{Owner, ReadGrant};
use super::error::{ApiError, ErrorCode};
use super::state::HttpState;
use crate::ds::{self, Offset, Producer};
use crate::engine::{Append, Appended, Created, DsConfig, DsError, DsFork as Fork, DsKind, DsLive};
use crate::event::now_ms;
use crate::subscription;

/// The longest stream name, in bytes.
const MAX_NAME: usize = 1024;
/// The largest integer a producer's epoch or seq may be (JavaScript's safe integers).
const MAX_SAFE: u64 = (1 << 53) - 1;

pub fn router(prefix: &str, body_limit: usize) -> Router<HttpState> {
    let prefix = prefix.trim_end_matches('/');
    Router::new()
        .route(&format!("{prefix}/v1/stream/{{*name}}"), any(handle))
        // Its own limit (`SPOOL_DS_BODY_LIMIT`), over the API's.
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::map_response(security_headers))
}

/// The browser-safety headers of every Durable Streams response.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    response
}

fn conflict(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Conflict, message)
}

fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such stream")
}

fn gone() -> ApiError {
    ApiError::new(
        ErrorCode::Gone,
        "the stream is deleted (its forks still read it)",
    )
}

impl From<DsError> for ApiError {
    fn from(e: DsError) -> Self {
        match e {
            DsError::NotFound => not_found(),
            DsError::ConfigConflict => conflict("the stream exists with another configuration"),
            DsError::InvalidJson => ApiError::new(ErrorCode::InvalidJson, e.to_string()),
            DsError::EmptyArray => ApiError::invalid(e.to_string()),
            DsError::ContentType => conflict("the content type differs from the stream's"),
            DsError::StreamSeq => conflict("Stream-Seq must be greater than the last one"),
            DsError::NotSpoolEvent(why) => ApiError::invalid(why),
            DsError::Gone => gone(),
            DsError::SourceNotFound => ApiError::new(ErrorCode::NotFound, e.to_string()),
            DsError::SourceGone => conflict(&e.to_string()),
            DsError::BadFork(why) => ApiError::invalid(why),
            DsError::ReadOnly => ApiError::new(
                ErrorCode::MethodNotAllowed,
                "a stream spool generated is read-only as a Durable Stream",
            ),
            DsError::Store(e) => e.into(),
        }
    }
}

/// One header's value as text (`None`: absent or not text).
fn text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn set(response: &mut Response, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(name), v);
    }
}

/// `Stream-Closed: true`, compared without case; any other value is no header.
fn closed_header(headers: &HeaderMap) -> bool {
    text(headers, "stream-closed").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

#[allow(clippy::too_many_arguments)] // an axum handler's extractors
async fn handle(
    State(state): State<HttpState>,
    Owner(owner): Owner,
    grant: Option<axum::Extension<ReadGrant>>,
    method: Method,
    uri: axum::http::Uri,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    // The reserved control routes come before any stream.
    let prefix = state.server().ds_prefix.trim_end_matches('/').to_owned();
    let below_root = uri
        .path()
        .strip_prefix(&format!("{prefix}/v1/stream/"))
        .unwrap_or_default();
    if below_root == subscription::RESERVED || name == subscription::RESERVED {
        return Err(ApiError::new(
            ErrorCode::SubscriptionNotFound,
            "no such Durable Streams control route",
        ));
    }
    if let Some(rest) = below_root.strip_prefix("__ds/") {
        let root = stream_root(&state, &uri, &headers);
        return super::ds_subs::handle(
            &state,
            owner.as_deref(),
            method,
            rest,
            &root,
            &headers,
            body,
        )
        .await;
    }
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(ApiError::invalid(format!(
            "a stream name is 1 to {MAX_NAME} bytes"
        )));
    }
    // A read token of this stream's opens its GETs, as its owner.
    let granted = match grant {
        Some(axum::Extension(ReadGrant(scope))) if method == Method::GET => {
            if scope != format!("ds:{name}") {
                return Err(ApiError::new(
                    ErrorCode::Unauthorized,
                    "the token is not valid for this stream",
                ));
            }
            Some(
                state
                    .engine()
                    .ds_owner(&name)
                    .await?
                    .ok_or_else(not_found)?,
            )
        }
        _ => None,
    };
    let owner = match &granted {
        Some(o) => o.as_deref(),
        None => owner.as_deref(),
    };
    match method {
        Method::PUT => create(&state, &name, owner, &uri, &headers, &body).await,
        Method::POST => append(&state, &name, owner, &headers, body).await,
        Method::HEAD => head(&state, &name, owner).await,
        Method::GET => read(&state, &name, owner, query.as_deref(), &headers).await,
        Method::DELETE => {
            if state.engine().ds_delete(&name, owner).await? {
                Ok(StatusCode::NO_CONTENT.into_response())
            } else {
                Err(not_found())
            }
        }
        _ => Err(ApiError::new(
            ErrorCode::MethodNotAllowed,
            "a stream takes PUT, POST, GET, HEAD and DELETE",
        )),
    }
}

/// The stream root, `{scheme}://{host}{prefix}/v1/stream`, as the request reached this
/// server (a `Location`, a subscription's callback and key URLs start with it).
fn stream_root(state: &HttpState, uri: &axum::http::Uri, headers: &HeaderMap) -> String {
    let prefix = state.server().ds_prefix.trim_end_matches('/').to_owned();
    let host = text(headers, "host")
        .or(uri.authority().map(|a| a.as_str()))
        .unwrap_or("localhost");
    // HTTP/2 names its scheme; behind a proxy, X-Forwarded-Proto does.
    let scheme = uri
        .scheme_str()
        .or(text(headers, "x-forwarded-proto"))
        .unwrap_or("http");
    format!("{scheme}://{host}{prefix}/v1/stream")
}

/// The headers every answer about a stream's state has.
fn describe(response: &mut Response, s: &DsLive) {
    set(response, "stream-next-offset", &s.tail());
    if s.writers.closed {
        set(response, "stream-closed", "true");
    }
}

async fn create(
    state: &HttpState,
    name: &str,
    owner: Option<&str>,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let fork = fork(state, headers)?;
    let content_type = text(headers, "content-type")
        .filter(|c| ds::valid_content_type(c))
        .map(str::to_owned);
    let ttl = text(headers, "stream-ttl");
    let expires = text(headers, "stream-expires-at");
    if ttl.is_some() && expires.is_some() {
        return Err(ApiError::invalid(
            "give Stream-TTL or Stream-Expires-At, not both",
        ));
    }
    let ttl_seconds = match ttl {
        None => None,
        Some(v) if ds::valid_ttl(v) => Some(
            v.parse::<i64>()
                .map_err(|_| ApiError::invalid("Stream-TTL is too large"))?,
        ),
        Some(_) => {
            return Err(ApiError::invalid(
                "Stream-TTL is a whole number of seconds (like 3600)",
            ));
        }
    };
    let expires_at = match expires {
        None => None,
        Some(v) => {
            let at = humantime::parse_rfc3339_weak(v.trim())
                .map_err(|_| ApiError::invalid("Stream-Expires-At is an RFC 3339 time"))?;
            let ms = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            Some(ms)
        }
    };
    let config = DsConfig {
        content_type,
        ttl_seconds,
        expires_at,
        closed: closed_header(headers),
        spool_events: text(headers, "spool-events")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
        fork,
    };
    let (status, s) = match state.engine().ds_create(name, owner, config, body).await? {
        Created::New(s) => (StatusCode::CREATED, s),
        Created::Existing(s) => (StatusCode::OK, s),
    };
    let mut response = status.into_response();
    if status == StatusCode::CREATED {
        let root = stream_root(state, uri, headers);
        set(
            &mut response,
            "location",
            &format!("{root}/{}", ds::encode_path(name)),
        );
    }
    set(&mut response, "content-type", &s.content_type);
    if s.kind == DsKind::Spool {
        set(&mut response, "spool-stream-id", &s.stream_id);
    }
    read_token(state, &mut response, name, owner);
    describe(&mut response, &s);
    Ok(response)
}

/// With keys: a read token for a browser's `GET`s of this stream (`?token=`), which
/// cannot send a header from `EventSource`.
fn read_token(state: &HttpState, response: &mut Response, name: &str, owner: Option<&str>) {
    if let Some(token) = state.keys().read_token(&format!("ds:{name}"), owner) {
        set(response, "stream-read-token", &token);
    }
}

/// A fork's headers: `Stream-Forked-From` (the source's path, as a URL of this
/// server's or its path), `Stream-Fork-Offset`, `Stream-Fork-Sub-Offset`.
fn fork(state: &HttpState, headers: &HeaderMap) -> Result<Option<Fork>, ApiError> {
    let sub = match text(headers, "stream-fork-sub-offset") {
        None => None,
        Some(v) if ds::valid_ttl(v.trim()) => Some(
            v.trim()
                .parse::<u64>()
                .map_err(|_| ApiError::invalid("Stream-Fork-Sub-Offset is too large"))?,
        ),
        Some(_) => {
            return Err(ApiError::invalid(
                "Stream-Fork-Sub-Offset is a non-negative integer",
            ));
        }
    };
    let Some(from) = text(headers, "stream-forked-from") else {
        if sub.is_some() {
            return Err(ApiError::invalid(
                "Stream-Fork-Sub-Offset needs Stream-Forked-From",
            ));
        }
        return Ok(None);
    };
    let at = match text(headers, "stream-fork-offset") {
        None => None,
        Some(o) => match ds::parse_offset(o.trim()) {
            Some(Offset::After(seq)) => Some(seq),
            _ => {
                return Err(ApiError::invalid(
                    "Stream-Fork-Offset is not an offset of the source",
                ));
            }
        },
    };
    // The path after `{prefix}/v1/stream/`, from a URL or a path.
    let path = match from.find("://") {
        Some(i) => from[i + 3..].find('/').map_or("", |j| &from[i + 3 + j..]),
        None => from,
    };
    let prefix = state.server().ds_prefix.trim_end_matches('/');
    let path = path.strip_prefix(prefix).unwrap_or(path);
    let name = path
        .strip_prefix("/v1/stream/")
        .or_else(|| path.strip_prefix("v1/stream/"))
        .unwrap_or(path.trim_start_matches('/'));
    let source = ds::decode_path(name).unwrap_or_default();
    if source.is_empty() {
        return Err(ApiError::invalid("Stream-Forked-From names no stream"));
    }
    Ok(Some(Fork {
        source,
        at,
        sub: sub.unwrap_or(0),
    }))
}

/// The producer headers: all three or none.
fn producer(headers: &HeaderMap) -> Result<Option<(String, u64, u64)>, ApiError> {
    let id = text(headers, "producer-id");
    let epoch = text(headers, "producer-epoch");
    let seq = text(headers, "producer-seq");
    match (id, epoch, seq) {
        (None, None, None) => Ok(None),
        (Some(id), Some(epoch), Some(seq)) => {
            if id.is_empty() {
                return Err(ApiError::invalid("Producer-Id must not be empty"));
            }
            let number = |v: &str, what: &str| {
                v.parse::<u64>()
                    .ok()
                    .filter(|n| *n <= MAX_SAFE && v.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| {
                        ApiError::invalid(format!("{what} must be a non-negative integer"))
                    })
            };
            Ok(Some((
                id.to_owned(),
                number(epoch, "Producer-Epoch")?,
                number(seq, "Producer-Seq")?,
            )))
        }
        _ => Err(ApiError::invalid(
            "Producer-Id, Producer-Epoch and Producer-Seq go together",
        )),
    }
}

async fn append(
    state: &HttpState,
    name: &str,
    owner: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let producer = producer(headers)?;
    let close = closed_header(headers);
    if body.is_empty() && !close {
        return Err(ApiError::invalid(
            "an append needs a body (only a close, Stream-Closed: true, may be empty)",
        ));
    }
    let content_type = text(headers, "content-type").map(str::to_owned);
    if !body.is_empty() && content_type.is_none() {
        return Err(ApiError::invalid("an append needs its Content-Type"));
    }
    let append = Append {
        content_type,
        body: body.to_vec(),
        close,
        producer: producer.clone(),
        stream_seq: text(headers, "stream-seq").map(str::to_owned),
    };
    let echo = |response: &mut Response, seq: u64| {
        if let Some((_, epoch, _)) = &producer {
            set(response, "producer-epoch", &epoch.to_string());
            set(response, "producer-seq", &seq.to_string());
        }
    };
    Ok(match state.engine().ds_append(name, owner, append).await? {
        Appended::Done(s) => {
            // New data from a producer is 200; everything else 204.
            let status = if producer.is_some() && !body.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::NO_CONTENT
            };
            let mut r = status.into_response();
            describe(&mut r, &s);
            if let Some((_, _, seq)) = &producer {
                echo(&mut r, *seq);
            }
            r
        }
        Appended::Closed(s) => {
            let mut r = conflict("the stream is closed").into_response();
            describe(&mut r, &s);
            r
        }
        Appended::Producer(verdict, s) => match verdict {
            Producer::Duplicate { last } => {
                let mut r = StatusCode::NO_CONTENT.into_response();
                echo(&mut r, last);
                if s.writers.closed {
                    describe(&mut r, &s);
                }
                r
            }
            Producer::StaleEpoch { current } => {
                let mut r = ApiError::new(
                    ErrorCode::StaleProducerEpoch,
                    "a newer epoch of this producer exists",
                )
                .into_response();
                set(&mut r, "producer-epoch", &current.to_string());
                r
            }
            Producer::NewEpochNotAtZero => {
                ApiError::invalid("a new producer epoch starts at Producer-Seq 0").into_response()
            }
            Producer::Gap { expected, received } => {
                let mut r = conflict("a producer sequence gap").into_response();
                set(&mut r, "producer-expected-seq", &expected.to_string());
                set(&mut r, "producer-received-seq", &received.to_string());
                r
            }
            Producer::Accept => StatusCode::NO_CONTENT.into_response(),
        },
    })
}

async fn head(state: &HttpState, name: &str, owner: Option<&str>) -> Result<Response, ApiError> {
    let Some(s) = state.engine().ds_get(name, owner, false).await? else {
        return Ok(StatusCode::NOT_FOUND.into_response());
    };
    if s.soft_deleted {
        return Ok(StatusCode::GONE.into_response());
    }
    let mut r = StatusCode::OK.into_response();
    set(&mut r, "content-type", &s.content_type);
    set(&mut r, "cache-control", "no-store");
    describe(&mut r, &s);
    if let Some(ttl) = s.ttl_seconds {
        set(&mut r, "stream-ttl", &ttl.to_string());
    }
    if let Some(at) = s.expires_at {
        set(&mut r, "stream-expires-at", &crate::event::rfc3339(at));
    }
    set(
        &mut r,
        "etag",
        &etag(name, "-1", &s.tail(), s.writers.closed),
    );
    if s.kind == DsKind::Spool {
        set(&mut r, "spool-stream-id", &s.stream_id);
    }
    read_token(state, &mut r, name, owner);
    Ok(r)
}

fn etag(name: &str, start: &str, end: &str, closed: bool) -> String {
    let id = base64::engine::general_purpose::STANDARD.encode(name.as_bytes());
    let suffix = if closed { ":c" } else { "" };
    format!("\"{id}:{start}:{end}{suffix}\"")
}

/// A read's query: `offset`, `live`, `cursor`; other parameters are ignored.
struct ReadQuery {
    offset: Option<String>,
    live: Option<String>,
    cursor: Option<String>,
}

fn read_query(query: Option<&str>) -> Result<ReadQuery, ApiError> {
    let mut q = ReadQuery {
        offset: None,
        live: None,
        cursor: None,
    };
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "offset" => {
                if q.offset.is_some() {
                    return Err(ApiError::invalid("give one `offset`"));
                }
                q.offset = Some(v.into_owned());
            }
            "live" => q.live = Some(v.into_owned()),
            "cursor" => q.cursor = Some(v.into_owned()),
            _ => {}
        }
    }
    Ok(q)
}

async fn read(
    state: &HttpState,
    name: &str,
    owner: Option<&str>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let q = read_query(query)?;
    let from = match q.offset.as_deref() {
        None => Offset::Start,
        Some("") => return Err(ApiError::invalid("`offset` is empty")),
        Some(o) => ds::parse_offset(o).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidCursor,
                "`offset` is not an offset of this stream",
            )
        })?,
    };
    let live = match q.live.as_deref() {
        Some(mode @ ("long-poll" | "sse")) => Some(mode),
        _ => None,
    };
    if live.is_some() && q.offset.is_none() {
        return Err(ApiError::invalid("a live read needs an `offset`"));
    }
    let engine = state.engine();
    let Some(s) = engine.ds_get(name, owner, true).await? else {
        return Err(not_found());
    };
    if s.soft_deleted {
        return Err(gone());
    }
    if live == Some("sse") {
        let after = match from {
            Offset::Start => 0,
            Offset::Now => s.tail_seq(),
            Offset::After(seq) => seq,
        };
        return Ok(sse(state, name, owner, s, after, q.cursor));
    }
    if from == Offset::Now && live.is_none() {
        let mut r = Response::new(Body::from(if ds::is_json(&s.content_type) {
            "[]"
        } else {
            ""
        }));
        set(&mut r, "content-type", &s.content_type);
        set(&mut r, "stream-up-to-date", "true");
        set(&mut r, "cache-control", "no-store");
        describe(&mut r, &s);
        return Ok(r);
    }
    let Some(mut got) = engine.ds_read(name, owner, from).await? else {
        return Err(not_found());
    };
    let cursor = |client: Option<&str>| ds::cursor(now_ms(), client, rand_jitter());
    if live == Some("long-poll") && got.messages.is_empty() {
        if got.stream.writers.closed {
            let mut r = StatusCode::NO_CONTENT.into_response();
            set(&mut r, "stream-up-to-date", "true");
            describe(&mut r, &got.stream);
            return Ok(r);
        }
        let timeout = state.server().ds_long_poll_timeout;
        let woke = engine.ds_wait(&got.stream, got.next, timeout).await;
        let again = if woke {
            engine.ds_read(name, owner, Offset::After(got.next)).await?
        } else {
            None
        };
        match again {
            Some(a) if !a.messages.is_empty() => got = a,
            other => {
                let s = other.map_or(got.stream, |a| a.stream);
                let mut r = StatusCode::NO_CONTENT.into_response();
                set(&mut r, "stream-up-to-date", "true");
                set(&mut r, "stream-next-offset", &ds::offset(got.next));
                if s.writers.closed {
                    set(&mut r, "stream-closed", "true");
                } else {
                    set(&mut r, "stream-cursor", &cursor(q.cursor.as_deref()));
                }
                return Ok(r);
            }
        }
    }
    let next = ds::offset(got.next);
    let at_end = got.up_to_date && got.stream.writers.closed;
    let start = q.offset.clone().unwrap_or_else(|| "-1".to_owned());
    let tag = etag(name, &start, &next, at_end);
    if text(headers, "if-none-match") == Some(tag.as_str()) {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        set(&mut r, "etag", &tag);
        return Ok(r);
    }
    let mut r = Response::new(Body::from(ds::body(
        &got.stream.content_type,
        got.messages.iter().map(|(_, m)| m),
    )));
    set(&mut r, "content-type", &got.stream.content_type);
    set(&mut r, "stream-next-offset", &next);
    set(&mut r, "etag", &tag);
    if live.is_some() {
        set(&mut r, "stream-cursor", &cursor(q.cursor.as_deref()));
    }
    if got.up_to_date {
        set(&mut r, "stream-up-to-date", "true");
    }
    if at_end {
        set(&mut r, "stream-closed", "true");
    }
    let scope = if owner.is_some() { "private" } else { "public" };
    set(
        &mut r,
        "cache-control",
        &format!("{scope}, max-age=60, stale-while-revalidate=300"),
    );
    Ok(r)
}

/// A little randomness for cursors (see `ds::cursor`).
fn rand_jitter() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_or(17, |_| u64::from_le_bytes(b))
}

/// `data:` lines of one SSE event's payload, split at every line end an SSE parser
/// knows (`\r\n`, `\r`, `\n`), so no payload can end its event or start another.
fn data_lines(out: &mut String, payload: &str) {
    let unified = payload.replace("\r\n", "\n").replace('\r', "\n");
    for line in unified.split('\n') {
        out.push_str("data:");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
}

/// `live=sse`: each append as a `data` event (text, or base64 for a binary stream),
/// each followed by a `control` event; then live, until the stream closes or
/// `SPOOL_DS_SSE_RECONNECT` passes.
fn sse(
    state: &HttpState,
    name: &str,
    owner: Option<&str>,
    first: DsLive,
    after: u64,
    client_cursor: Option<String>,
) -> Response {
    let engine = state.engine().clone();
    let name = name.to_owned();
    let owner = owner.map(str::to_owned);
    let base64 = !ds::is_text(&first.content_type);
    let json = ds::is_json(&first.content_type);
    let reconnect = state.server().ds_sse_reconnect;
    let wait = state
        .server()
        .ds_long_poll_timeout
        .min(Duration::from_secs(15));
    let shutdown = state.shutdown_token();
    let body = async_stream::stream! {
        let ends = tokio::time::Instant::now() + reconnect;
        let mut after = after;
        loop {
            let read = match engine.ds_read(&name, owner.as_deref(), Offset::After(after)).await {
                Ok(Some(r)) => r,
                _ => break,
            };
            let mut out = String::new();
            let tail = read.stream.tail_seq();
            let closed = read.stream.writers.closed;
            let count = read.messages.len();
            for (i, (seq, m)) in read.messages.iter().enumerate() {
                let payload = if base64 {
                    base64::engine::general_purpose::STANDARD.encode(m.bytes())
                } else if json {
                    String::from_utf8(ds::body(&read.stream.content_type, [m])).unwrap_or_default()
                } else {
                    String::from_utf8_lossy(&m.bytes()).into_owned()
                };
                out.push_str("event: data\n");
                data_lines(&mut out, &payload);
                let last = i + 1 == count;
                let mut control = serde_json::json!({"streamNextOffset": ds::offset(*seq)});
                if last && closed && *seq >= tail {
                    control["streamClosed"] = true.into();
                } else {
                    control["streamCursor"] = ds::cursor(now_ms(), client_cursor.as_deref(), rand_jitter()).into();
                    if last && read.up_to_date {
                        control["upToDate"] = true.into();
                    }
                }
                out.push_str("event: control\n");
                data_lines(&mut out, &control.to_string());
            }
            after = read.next;
            if count == 0 {
                let mut control = serde_json::json!({"streamNextOffset": ds::offset(after)});
                if closed {
                    control["streamClosed"] = true.into();
                    control["upToDate"] = true.into();
                } else {
                    control["streamCursor"] = ds::cursor(now_ms(), client_cursor.as_deref(), rand_jitter()).into();
                    control["upToDate"] = true.into();
                }
                out.push_str("event: control\n");
                data_lines(&mut out, &control.to_string());
            }
            yield Ok::<_, std::io::Error>(Bytes::from(out));
            if closed && after >= tail {
                break;
            }
            if !read.up_to_date {
                continue;
            }
            let now = tokio::time::Instant::now();
            if now >= ends {
                break;
            }
            let woke = tokio::select! {
                w = engine.ds_wait(&read.stream, after, wait.min(ends - now)) => w,
                _ = shutdown.cancelled() => break,
            };
            if !woke && tokio::time::Instant::now() >= ends {
                break;
            }
            if !woke {
                // A keep-alive control event.
                let control = serde_json::json!({"streamNextOffset": ds::offset(after),
                    "streamCursor": ds::cursor(now_ms(), client_cursor.as_deref(), rand_jitter()),
                    "upToDate": true});
                let mut out = String::from("event: control\n");
                data_lines(&mut out, &control.to_string());
                yield Ok(Bytes::from(out));
            }
        }
    };
    let mut r = Response::new(Body::from_stream(body));
    set(&mut r, "content-type", "text/event-stream");
    set(&mut r, "cache-control", "no-cache");
    if base64 {
        set(&mut r, "stream-sse-data-encoding", "base64");
    }
    r
}
