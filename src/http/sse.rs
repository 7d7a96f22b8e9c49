//! The SSE wire format (SPEC §3) and the response body that carries a feed.
//!
//! Frames are written by hand rather than through a generic SSE type, because resume is
//! promised byte for byte: `id:`, `event:`, one `data:` line of the stored JSON, a
//! blank line. A live stream's events are written as soon as the feed yields them.

use std::convert::Infallible;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use futures_util::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use crate::event::Event;
use crate::feed::Chunk;
use crate::http::openai::chunks::{self, ChunkFormat};
use crate::metrics::Metrics;
use crate::store::StoreError;

/// Sent once, first, on the native stream.
pub const RETRY: &str = "retry: 1000\n\n";
/// The heartbeat comment after a silence.
pub const PING: &str = ": ping\n\n";

/// Appends one event in the wire format.
pub fn write_event(out: &mut String, event: &Event) {
    let _ = write!(
        out,
        "id: {}\nevent: {}\ndata: {}\n\n",
        event.seq,
        event.kind.as_str(),
        event.data
    );
}

/// Parses a resume cursor: a non-negative integer, digits only.
pub fn parse_cursor(raw: &str) -> Result<u64, ApiError> {
    let invalid = || {
        ApiError::bad_request(
            "invalid_cursor",
            format!("the resume point {raw:?} is not a non-negative integer"),
        )
    };
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    raw.parse().map_err(|_| invalid())
}

/// How events are written.
pub enum Format {
    /// SPEC §3: `retry:` first, `id:`/`event:`/`data:` per event, `: ping` + blank line.
    Native,
    /// `chat.completion.chunk` data lines with ids (SPEC §5).
    OpenAi(ChunkFormat),
}

/// What the response body needs besides the feed.
pub struct BodyOptions {
    pub format: Format,
    pub heartbeat: Duration,
    /// Ends the response at server shutdown (the client will resume).
    pub shutdown: CancellationToken,
    pub metrics: Arc<Metrics>,
}

/// The `text/event-stream` response for a feed.
pub fn response<F>(feed: F, options: BodyOptions) -> Response
where
    F: Stream<Item = Result<Chunk, StoreError>> + Send + 'static,
{
    let body = Body::from_stream(frames(feed, options));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn frames<F>(
    feed: F,
    options: BodyOptions,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static
where
    F: Stream<Item = Result<Chunk, StoreError>> + Send + 'static,
{
    async_stream::stream! {
        let _reader = ReaderGauge::open(options.metrics.clone());
        let ping = match &options.format {
            Format::Native => {
                yield Ok(Bytes::from_static(RETRY.as_bytes()));
                PING
            }
            Format::OpenAi(_) => chunks::PING,
        };
        let mut feed = std::pin::pin!(feed);
        loop {
            let next = tokio::select! {
                biased;
                _ = options.shutdown.cancelled() => break,
                next = tokio::time::timeout(options.heartbeat, feed.next()) => next,
            };
            match next {
                Err(_silence) => yield Ok(Bytes::from_static(ping.as_bytes())),
                Ok(None) => break,
                Ok(Some(Ok(chunk))) => {
                    let events = chunk.events();
                    let mut out = String::with_capacity(events.len() * 64);
                    match &options.format {
                        Format::Native => {
                            for event in events {
                                write_event(&mut out, event);
                            }
                        }
                        Format::OpenAi(f) => {
                            for event in events {
                                f.write(&mut out, event);
                            }
                        }
                    }
                    options.metrics.events_delivered(events.len());
                    yield Ok(Bytes::from(out));
                }
                Ok(Some(Err(e))) => {
                    // No event can carry this (it would need an id); ending the response
                    // lets the client resume from its last id.
                    tracing::error!(error = %e, "reading a stream failed; ending the response");
                    break;
                }
            }
        }
    }
}

/// Counts open readers for `/metrics`, however the response ends.
struct ReaderGauge(Arc<Metrics>);

impl ReaderGauge {
    fn open(metrics: Arc<Metrics>) -> Self {
        metrics.reader_opened();
        ReaderGauge(metrics)
    }
}

impl Drop for ReaderGauge {
    fn drop(&mut self) {
        self.0.reader_closed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_bytes() {
        let mut out = String::new();
        write_event(&mut out, &Event::token(7, "hi\nthere"));
        assert_eq!(
            out,
            "id: 7\nevent: token\ndata: {\"text\":\"hi\\nthere\"}\n\n"
        );
    }

    #[test]
    fn cursors() {
        assert_eq!(parse_cursor("0").unwrap(), 0);
        assert_eq!(parse_cursor("42").unwrap(), 42);
        for bad in [
            "",
            "-1",
            "+1",
            " 1",
            "1.0",
            "abc",
            "99999999999999999999999",
        ] {
            assert!(parse_cursor(bad).is_err(), "{bad:?}");
        }
    }

    /// What SPEC §3 asks of a resume point, written the slow way: ASCII digits only, at
    /// least one, and a value a `u64` holds.
    fn oracle(raw: &str) -> Option<u64> {
        if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        raw.bytes().try_fold(0u64, |n, b| {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        })
    }

    mod properties {
        use super::*;
        use crate::http::strategies;
        use proptest::prelude::*;

        fn check(raw: &str) -> Result<(), TestCaseError> {
            match (parse_cursor(raw), oracle(raw)) {
                (Ok(n), Some(m)) => prop_assert_eq!(n, m, "{:?}", raw),
                (Err(e), None) => {
                    prop_assert_eq!(e.status, 400);
                    prop_assert_eq!(e.code, "invalid_cursor");
                }
                (got, want) => prop_assert!(false, "{raw:?}: got {got:?}, want {want:?}"),
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(strategies::config(512))]

            #[test]
            fn any_text_is_a_cursor_exactly_when_it_is_digits_that_fit(raw in any::<String>()) {
                check(&raw)?;
            }

            #[test]
            fn near_misses_are_judged_like_the_spec(
                raw in "[-+ \\t0-9.eE_x\u{0660}-\u{0669}\u{ff10}-\u{ff19}]{0,24}",
            ) {
                check(&raw)?;
            }

            #[test]
            fn every_u64_round_trips(n in any::<u64>(), zeros in 0usize..3) {
                let text = format!("{}{n}", "0".repeat(zeros));
                prop_assert_eq!(parse_cursor(&text).ok(), Some(n));
            }

            #[test]
            fn signs_spaces_fractions_and_overflow_are_refused(
                n in any::<u64>(),
                form in 0usize..7,
            ) {
                let text = match form {
                    0 => format!("-{n}"),
                    1 => format!("+{n}"),
                    2 => format!(" {n}"),
                    3 => format!("{n} "),
                    4 => format!("{n}.0"),
                    5 => format!("{}", u128::from(n) + u128::from(u64::MAX) + 1),
                    _ => format!("{n}\n"),
                };
                let e = parse_cursor(&text).err().map(|e| (e.status.as_u16(), e.code));
                prop_assert_eq!(e, Some((400, "invalid_cursor")), "{:?}", text);
            }
        }
    }
}
