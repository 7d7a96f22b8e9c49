//! Request ids and the request span: the outermost layer of the router.
//!
//! Every request gets an id — the client's `X-Request-Id` if it is sane (1 to
//! [`MAX_LEN`] visible ASCII characters), else a fresh `req_…` — which comes back in the
//! response's `X-Request-Id` whatever the response is (errors, `401`, `429`, SSE, the
//! WebSocket upgrade). The handler, and the response body while it streams, run inside a
//! `request` span carrying the id, the method and the path (never the query: it may hold
//! a read token). Work started by the request inherits it: a generation's `stream` span
//! (see `engine`) is the request span's child, so `grep req_…` finds the request and
//! everything its stream logged afterwards. One `response` line per request, at `info`
//! (`debug` for health checks and metrics scrapes).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::{Instrument, Span};

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-chosen id kept; a longer one is replaced.
pub const MAX_LEN: usize = 128;

/// Middleware: chooses the request's id, runs the rest inside its span, logs the
/// response, and echoes the id.
pub async fn layer(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&HEADER)
        .and_then(|v| sane(v.as_bytes()))
        .unwrap_or_else(fresh);
    let path = request.uri().path();
    let quiet = matches!(path, "/healthz" | "/readyz" | "/metrics");
    // At `error` level so that the span exists under any filter that shows anything: a
    // warning with `SPOOL_LOG=warn` still carries its request id.
    let span = tracing::error_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %path,
    );
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let ms = started.elapsed().as_millis() as u64;
    span.in_scope(|| {
        if quiet {
            tracing::debug!(status, ms, "response");
        } else {
            tracing::info!(status, ms, "response");
        }
    });
    let (mut parts, body) = response.into_parts();
    if let Ok(value) = HeaderValue::from_str(&id) {
        parts.headers.insert(HEADER, value);
    }
    Response::from_parts(parts, Body::new(InSpan { body, span }))
}

/// The client's id if it is one we keep: visible ASCII only (no spaces, no control
/// characters), at most [`MAX_LEN`] bytes.
fn sane(raw: &[u8]) -> Option<String> {
    if raw.is_empty() || raw.len() > MAX_LEN || !raw.iter().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    String::from_utf8(raw.to_vec()).ok()
}

fn fresh() -> String {
    crate::ids::new_request_id().unwrap_or_else(|_| {
        // No OS randomness: still a distinct id per request within this process.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("req_{}_{n}", std::process::id())
    })
}

/// A response body polled inside the request's span, so what an SSE response logs while
/// it streams carries the request id.
struct InSpan {
    body: Body,
    span: Span,
}

impl HttpBody for InSpan {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let _entered = this.span.enter();
        Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_visible_ascii_ids_are_kept() {
        assert_eq!(sane(b"my-req-1").as_deref(), Some("my-req-1"));
        assert_eq!(sane(&[b'a'; MAX_LEN]).map(|s| s.len()), Some(MAX_LEN));
        assert_eq!(sane(&[b'a'; MAX_LEN + 1]), None);
        assert_eq!(sane(b""), None);
        assert_eq!(sane(b"two words"), None);
        assert_eq!(sane(b"tab\there"), None);
        assert_eq!(sane(b"line\nbreak"), None);
        assert_eq!(sane("caf\u{e9}".as_bytes()), None);
        assert!(fresh().starts_with("req_"));
        assert_ne!(fresh(), fresh());
    }
}
