//! The tests' one SSE client (shared by the test binaries): a parser for a whole body
//! and a reader that follows a live response.
//!
//! Both keep **bytes** until a block is complete — a block ends at a blank line, with
//! lines ended by `\n`, `\r\n` or `\r` — and only then decode it as UTF-8, so a network
//! chunk that ends inside a character is harmless, while a complete event that is not
//! valid UTF-8 fails the test. Every block is kept as the exact text it arrived as
//! (comments such as `: ping` and `retry:` blocks included, for tests of the wire
//! bytes); the blocks that carry data are the events.
//!
//! Not the CLI's parser: that one is private to the crate, decodes lossily and keeps no
//! bytes, which the tests of exact bytes and of whole UTF-8 need.
#![allow(dead_code)] // not every test binary uses every helper

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use tokio::time::Instant;

/// One event (a block with a `data:` line), with the exact text it arrived as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<u64>,
    /// The `event:` field; empty when the block has none.
    pub event: String,
    pub data: String,
    /// The block's bytes, up to and including its blank line.
    pub raw: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("the data is not JSON ({e}): {:?}", self.data))
    }
}

/// The events of a whole SSE body. A trailing partial event is ignored, as
/// `EventSource` ignores it; comments and `retry:` blocks are not events.
pub fn parse(body: &(impl AsRef<[u8]> + ?Sized)) -> Vec<SseEvent> {
    let mut blocks = Blocks::default();
    blocks.push(body.as_ref());
    blocks.finish();
    blocks.events
}

/// The concatenated `text` of the `token` events.
pub fn text(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| e.event == "token")
        .map(|e| e.json()["text"].as_str().unwrap().to_owned())
        .collect()
}

/// The events' bytes, in order.
pub fn raw(events: &[SseEvent]) -> String {
    events.iter().map(|e| e.raw.as_str()).collect()
}

/// Bytes in, complete blocks out.
#[derive(Debug, Default)]
struct Blocks {
    /// Every byte received.
    bytes: Vec<u8>,
    /// Where the first incomplete block starts in `bytes`.
    complete: usize,
    /// `bytes[..complete]` as text.
    text: String,
    events: Vec<SseEvent>,
}

impl Blocks {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        self.take(false);
    }

    /// Nothing more comes: a `\r` at the very end ends its line.
    fn finish(&mut self) {
        self.take(true);
    }

    fn take(&mut self, at_end: bool) {
        while let Some(len) = block_len(&self.bytes[self.complete..], at_end) {
            let bytes = &self.bytes[self.complete..self.complete + len];
            let block = std::str::from_utf8(bytes).unwrap_or_else(|e| {
                panic!(
                    "an SSE block is not valid UTF-8 ({e}): {:?}",
                    String::from_utf8_lossy(bytes)
                )
            });
            if let Some(event) = event(block) {
                self.events.push(event);
            }
            self.text.push_str(block);
            self.complete += len;
        }
    }
}

/// The length of the first complete block of `buf` (through its blank line), if there
/// is one. A `\r` at the end of `buf` may be the first half of `\r\n`: it ends a line
/// only `at_end`.
fn block_len(buf: &[u8], at_end: bool) -> Option<usize> {
    let mut line_start = 0;
    let mut i = 0;
    while i < buf.len() {
        let mut next = i + 1;
        match buf[i] {
            b'\n' => {}
            b'\r' if next == buf.len() && !at_end => return None,
            b'\r' => {
                if buf.get(next) == Some(&b'\n') {
                    next += 1;
                }
            }
            _ => {
                i = next;
                continue;
            }
        }
        if i == line_start {
            return Some(next);
        }
        line_start = next;
        i = next;
    }
    None
}

/// The event of one complete block, if it carries data.
fn event(block: &str) -> Option<SseEvent> {
    let lines = block.replace("\r\n", "\n").replace('\r', "\n");
    let (mut id, mut event, mut data) = (None, String::new(), None);
    for line in lines.split('\n') {
        if line.is_empty() || line.starts_with(':') {
            continue; // the blank line, or a comment
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "id" => {
                let n = value
                    .parse()
                    .unwrap_or_else(|e| panic!("the id is not a number ({e}): {block:?}"));
                id = Some(n);
            }
            "event" => event = value.to_owned(),
            "data" => {
                assert!(data.is_none(), "more than one data line: {block:?}");
                data = Some(value.to_owned());
            }
            _ => {} // retry:
        }
    }
    Some(SseEvent {
        id,
        event,
        data: data?,
        raw: block.to_owned(),
    })
}

/// How long [`SseReader::leftovers`] waits for more before it stops.
const QUIET: Duration = Duration::from_secs(2);

/// An open SSE response, read as far as a test asks. Each read fails the test if it
/// takes longer than the reader's timeout, unless it says otherwise.
pub struct SseReader {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    blocks: Blocks,
    timeout: Duration,
    /// How many events [`SseReader::next_event`] has returned.
    taken: usize,
}

/// What one read from the body gave.
enum Read {
    More,
    Ended,
    Failed(reqwest::Error),
    TimedOut,
}

impl SseReader {
    /// Reads `response`, whose head has arrived.
    pub fn new(response: reqwest::Response, timeout: Duration) -> SseReader {
        SseReader {
            body: Box::pin(response.bytes_stream()),
            blocks: Blocks::default(),
            timeout,
            taken: 0,
        }
    }

    /// Sends `request` and expects a `200` SSE response.
    pub async fn open(request: reqwest::RequestBuilder, timeout: Duration) -> SseReader {
        let r = tokio::time::timeout(timeout, request.send())
            .await
            .expect("the events request hung")
            .unwrap();
        assert_eq!(r.status(), 200);
        SseReader::new(r, timeout)
    }

    /// The complete events so far.
    pub fn events(&self) -> &[SseEvent] {
        &self.blocks.events
    }

    /// The exact text of the complete blocks so far (comments and `retry:` included).
    pub fn text(&self) -> &str {
        &self.blocks.text
    }

    /// Every byte received so far, a partial block included.
    pub fn bytes(&self) -> &[u8] {
        &self.blocks.bytes
    }

    /// One chunk of the body, however long it takes.
    async fn read_more(&mut self) -> Read {
        match self.body.next().await {
            Some(Ok(chunk)) => {
                self.blocks.push(&chunk);
                Read::More
            }
            Some(Err(e)) => Read::Failed(e),
            None => {
                self.blocks.finish();
                Read::Ended
            }
        }
    }

    /// One chunk of the body, by `until`.
    async fn read(&mut self, until: Instant) -> Read {
        tokio::time::timeout_at(until, self.read_more())
            .await
            .unwrap_or(Read::TimedOut)
    }

    /// Reads until `done` holds (`true`) or the response ends (`false`).
    pub async fn read_until(&mut self, done: impl Fn(&SseReader) -> bool) -> bool {
        let until = Instant::now() + self.timeout;
        while !done(self) {
            match self.read(until).await {
                Read::More => {}
                Read::Ended => return done(self),
                Read::Failed(e) => panic!("the response failed: {e}; got {:?}", self.text()),
                Read::TimedOut => panic!("timed out reading events; got {:?}", self.text()),
            }
        }
        true
    }

    /// Reads until at least `n` complete events have arrived; returns them all.
    pub async fn until(&mut self, n: usize) -> Vec<SseEvent> {
        let arrived = self.read_until(|r| r.events().len() >= n).await;
        assert!(
            arrived,
            "the response ended early, before event {n}; got {:?}",
            self.text()
        );
        self.events().to_vec()
    }

    /// The next event not returned yet, or `None` once the response has ended.
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        let n = self.taken + 1;
        if !self.read_until(|r| r.events().len() >= n).await {
            return None;
        }
        self.taken = n;
        Some(self.events()[n - 1].clone())
    }

    /// The next event not returned yet, or `None` once the response has ended or
    /// failed (a server that went away): for a client that resumes elsewhere.
    #[allow(dead_code)] // not every test binary resumes across servers
    pub async fn next_or_gone(&mut self) -> Option<SseEvent> {
        let n = self.taken + 1;
        let until = Instant::now() + self.timeout;
        while self.events().len() < n {
            match self.read(until).await {
                Read::More => {}
                Read::Ended | Read::Failed(_) => return None,
                Read::TimedOut => panic!("timed out reading events; got {:?}", self.text()),
            }
        }
        self.taken = n;
        Some(self.events()[n - 1].clone())
    }

    /// Reads until the server ends the response, which must happen before `until`;
    /// returns the whole body.
    pub async fn read_to_end(mut self, until: Instant) -> String {
        loop {
            match self.read(until).await {
                Read::More => {}
                Read::Ended => break,
                Read::Failed(e) => panic!("the response failed: {e}; got {:?}", self.text()),
                Read::TimedOut => panic!("the response did not end in time; got {:?}", self.text()),
            }
        }
        String::from_utf8(self.blocks.bytes).expect("the body is not valid UTF-8")
    }

    /// Reads until the response ends or fails (a server going away), however long that
    /// takes (the caller bounds it); returns the text of its complete blocks.
    pub async fn read_to_close(mut self) -> String {
        while let Read::More = self.read_more().await {}
        self.blocks.text
    }

    /// Reads whatever still arrives from a server that was killed: until the response
    /// fails or ends, or nothing comes for a while. Returns the text of its complete
    /// blocks (only whole events count as seen).
    pub async fn leftovers(mut self) -> String {
        loop {
            let until = Instant::now() + QUIET;
            if !matches!(self.read(until).await, Read::More) {
                return self.blocks.text;
            }
        }
    }

    /// The complete events so far, ending the read.
    pub fn into_events(self) -> Vec<SseEvent> {
        self.blocks.events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two-byte and four-byte characters, CRLF, CR and LF line ends, a comment, a
    /// `retry:` block and a trailing partial event.
    const BODY: &str = "retry: 1000\r\n\r\n\
        id: 1\r\nevent: start\r\ndata: {\"text\":\"café\"}\r\n\r\n\
        : ping\n\n\
        id: 2\revent: token\rdata: {\"text\":\"🦀\"}\r\r\
        id: 3\nevent: token\ndata: {\"text\":\"é🦀é\"}\n\n\
        id: 4\nevent: done\ndata: {\"finish";

    fn expected() -> Vec<SseEvent> {
        let event = |id, event: &str, text: &str, raw: &str| SseEvent {
            id: Some(id),
            event: event.to_owned(),
            data: format!("{{\"text\":\"{text}\"}}"),
            raw: raw.to_owned(),
        };
        vec![
            event(
                1,
                "start",
                "café",
                "id: 1\r\nevent: start\r\ndata: {\"text\":\"café\"}\r\n\r\n",
            ),
            event(
                2,
                "token",
                "🦀",
                "id: 2\revent: token\rdata: {\"text\":\"🦀\"}\r\r",
            ),
            event(
                3,
                "token",
                "é🦀é",
                "id: 3\nevent: token\ndata: {\"text\":\"é🦀é\"}\n\n",
            ),
        ]
    }

    /// Everything before the partial event.
    fn complete_text() -> &'static str {
        &BODY[..BODY.find("id: 4").unwrap()]
    }

    #[test]
    fn a_whole_body_parses_into_its_events() {
        assert_eq!(parse(BODY), expected());
        assert_eq!(text(&parse(BODY)), "🦀é🦀é"); // the token events only
    }

    #[test]
    fn a_body_split_at_every_byte_boundary_gives_the_same_events() {
        let bytes = BODY.as_bytes();
        for cut in 0..=bytes.len() {
            let mut blocks = Blocks::default();
            blocks.push(&bytes[..cut]);
            // Only whole events come out of the first part.
            let early = blocks.events.len();
            assert_eq!(blocks.events[..], expected()[..early], "cut at {cut}");
            blocks.push(&bytes[cut..]);
            blocks.finish();
            assert_eq!(blocks.events, expected(), "cut at {cut}");
            assert_eq!(blocks.text, complete_text(), "cut at {cut}");
        }
    }

    #[test]
    fn a_body_fed_one_byte_at_a_time_gives_the_same_events() {
        let mut blocks = Blocks::default();
        for byte in BODY.as_bytes() {
            blocks.push(std::slice::from_ref(byte));
        }
        blocks.finish();
        assert_eq!(blocks.events, expected());
        assert_eq!(blocks.text, complete_text());
        assert_eq!(blocks.bytes, BODY.as_bytes());
    }

    #[test]
    fn a_carriage_return_at_the_end_of_a_chunk_waits_for_a_line_feed() {
        let mut blocks = Blocks::default();
        blocks.push(b"data: x\r\n\r");
        assert!(blocks.events.is_empty(), "the \\r may be half a \\r\\n");
        blocks.push(b"\ndata: y\n\n");
        let raws: Vec<&str> = blocks.events.iter().map(|e| e.raw.as_str()).collect();
        assert_eq!(raws, ["data: x\r\n\r\n", "data: y\n\n"]);
    }
}
