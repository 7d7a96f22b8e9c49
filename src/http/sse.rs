//! The native SSE wire format (SPEC §3), and the response body that carries a feed in
//! any format ([`Render`]).
//!
//! Frames are written by hand rather than through a generic SSE type, because resume is
//! promised byte for byte: `id:`, `event:`, one `data:` line of the stored JSON, a
//! blank line. A live stream's events are written as soon as the feed yields them:
//! whatever the feed has ready (one chunk or several, up to [`WRITE_MAX`] bytes) goes
//! out in one write, and nothing waits for more. A live batch is rendered once per
//! format for all its readers (see [`Render::shared`]); each reader copies the frames
//! it has not sent yet.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use super::render::{Frames, Render, itoa, render_batch};
use crate::event::Event;
use crate::feed::Chunk;
use crate::metrics::Metrics;
use crate::store::StoreError;

/// Sent once, first, on the native stream.
pub const RETRY: &str = "retry: 1000\n\n";
/// The heartbeat comment after a silence.
pub const PING: &str = ": ping\n\n";

/// SPEC §3: `retry:` first, `id:`/`event:`/`data:` per event, `: ping` + blank line.
pub struct Native;

impl Render for Native {
    fn preamble(&self) -> &'static str {
        RETRY
    }

    fn heartbeat(&self) -> &'static str {
        PING
    }

    fn render(&mut self, event: &Event, out: &mut Frames) {
        if let Some(text) = out.frame(Some(event.seq)) {
            write_event(text, event);
        }
    }

    fn shared(&self) -> Option<usize> {
        Some(0)
    }
}

/// The most bytes one write gathers from chunks the feed has ready at once.
pub const WRITE_MAX: usize = 64 * 1024;

/// Appends the frames of a feed's chunk: a live batch's shared frames when the format
/// has them, else rendered here.
fn write_chunk(chunk: &Chunk, render: &mut dyn Render, out: &mut Frames) {
    if let (Chunk::Live(batch, skip), Some(slot), true) = (chunk, render.shared(), out.keeps_all())
        && let Some(frames) = batch.rendered(slot, |events| render_batch(render, events))
    {
        out.push_rendered(frames.from_event(*skip));
        return;
    }
    for event in chunk.events() {
        render.render(event, out);
    }
}

/// Appends one event in the native wire format.
pub fn write_event(out: &mut String, event: &Event) {
    out.reserve(event.data.len() + 40);
    out.push_str("id: ");
    out.push_str(itoa(event.seq).as_str());
    out.push_str("\nevent: ");
    out.push_str(event.kind.as_str());
    out.push_str("\ndata: ");
    out.push_str(&event.data);
    out.push_str("\n\n");
}

/// What the response body needs besides the feed and its format.
pub struct BodyOptions {
    pub heartbeat: Duration,
    /// Ends the response at server shutdown (the client will resume).
    pub shutdown: CancellationToken,
    pub metrics: Arc<Metrics>,
    /// For a format that numbers its own frames ([`Numbering::Frames`]): the last
    /// frame the reader has; the feed then starts at the stream's first event.
    pub resumed_after: Option<u64>,
}

/// The `text/event-stream` response for a feed, in the format of `render`.
pub fn response<F>(feed: F, render: Box<dyn Render>, options: BodyOptions) -> Response
where
    F: Stream<Item = Result<Chunk, StoreError>> + Send + 'static,
{
    let out = Frames::new(options.resumed_after);
    let body = Body::from_stream(frames(feed, render, out, options));
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
    mut render: Box<dyn Render>,
    mut out: Frames,
    options: BodyOptions,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static
where
    F: Stream<Item = Result<Chunk, StoreError>> + Send + 'static,
{
    async_stream::stream! {
        let _reader = ReaderGauge::open(options.metrics.clone());
        let preamble = render.preamble();
        if !preamble.is_empty() {
            yield Ok(Bytes::from_static(preamble.as_bytes()));
        }
        let ping = render.heartbeat();
        let mut feed = std::pin::pin!(feed);
        // Once the server closes, what the feed has ready is still written, for a short
        // while: a stream that ended at shutdown reaches its readers with its end.
        let mut closing: Option<tokio::time::Instant> = None;
        loop {
            let next = match closing {
                Some(deadline) => match tokio::time::timeout_at(deadline, feed.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
                None => tokio::select! {
                    biased;
                    _ = options.shutdown.cancelled() => {
                        closing = Some(tokio::time::Instant::now() + FINAL_WRITE);
                        continue;
                    }
                    next = tokio::time::timeout(options.heartbeat, feed.next()) => match next {
                        Ok(next) => next,
                        Err(_silence) => {
                            yield Ok(Bytes::from_static(ping.as_bytes()));
                            continue;
                        }
                    },
                },
            };
            let mut next = next;
            let mut ended = false;
            // Everything the feed has ready goes into this one write.
            loop {
                match next {
                    None => ended = true,
                    Some(Ok(chunk)) => {
                        write_chunk(&chunk, &mut *render, &mut out);
                        options.metrics.events_delivered(chunk.events().len());
                    }
                    Some(Err(e)) => {
                        // No event can carry this (it would need an id); ending the
                        // response lets the client resume from its last id.
                        tracing::error!(error = %e, "reading a stream failed; ending the response");
                        ended = true;
                    }
                }
                if ended || out.len() >= WRITE_MAX {
                    break;
                }
                match feed.next().now_or_never() {
                    Some(more) => next = more,
                    None => break,
                }
            }
            if !out.is_empty() {
                yield Ok(Bytes::from(out.take()));
            }
            if ended {
                break;
            }
        }
    }
}

/// How long a response goes on writing what its feed has ready after the server closed.
/// By then every stream of this process has ended or been handed on, and committed.
pub const FINAL_WRITE: Duration = Duration::from_millis(500);

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
}
