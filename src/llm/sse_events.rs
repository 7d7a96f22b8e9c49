//! A reader of `text/event-stream` bodies that hands out each event's data as a slice
//! of its own buffer: no allocation per event (the `openai` backend's upstream chunks).
//!
//! Only `data` matters to its callers, so other fields (`event`, `id`, `retry`) and
//! comments are skipped. Lines end with LF, CRLF or CR; an event is dispatched at a
//! blank line; several `data` lines are joined with LF (into one reused buffer); an
//! event left incomplete when the body ends is dropped, as the HTML standard says.
//! The buffer is bounded: an event longer than [`MAX_EVENT`] is an error.

use bytes::{Buf, BytesMut};

/// The longest event (all its lines) this reader holds.
pub const MAX_EVENT: usize = 1 << 20;

/// What [`SseEvents::next_event`] found in the bytes fed so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<'a> {
    /// The data of the next event (`data` lines joined; may be empty).
    Event(&'a [u8]),
    /// Feed more bytes.
    More,
    /// An event is longer than [`MAX_EVENT`].
    TooLong,
}

#[derive(Default)]
pub struct SseEvents {
    buf: BytesMut,
    /// Bytes of `buf` consumed by the event handed out last, dropped at the next call.
    consumed: usize,
    /// Where the current event's unread lines begin in `buf`.
    pos: usize,
    /// The current event's single `data` line, as a range of `buf`...
    data: Option<(usize, usize)>,
    /// ...or, once it has more than one, its data joined here.
    joined: Vec<u8>,
    multi: bool,
    /// The last line ended with CR at the end of the buffer: an LF that follows belongs
    /// to it.
    skip_lf: bool,
}

impl SseEvents {
    /// Appends bytes of the body.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event, if the bytes fed hold one.
    pub fn next_event(&mut self) -> Next<'_> {
        if self.consumed > 0 {
            self.buf.advance(self.consumed);
            self.pos -= self.consumed;
            self.consumed = 0;
            self.data = None;
            self.joined.clear();
            self.multi = false;
        }
        loop {
            if self.skip_lf && self.pos < self.buf.len() {
                if self.buf[self.pos] == b'\n' {
                    self.pos += 1;
                }
                self.skip_lf = false;
            }
            let rest = &self.buf[self.pos..];
            let Some(eol) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
                return if self.buf.len() > MAX_EVENT {
                    Next::TooLong
                } else {
                    Next::More
                };
            };
            let start = self.pos;
            let end = start + eol;
            let mut next = end + 1;
            if self.buf[end] == b'\r' {
                match self.buf.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
            self.pos = next;
            if start == end {
                // A blank line: the event is complete.
                self.consumed = next;
                let data = if self.multi {
                    &self.joined[..]
                } else {
                    match self.data {
                        Some((a, b)) => &self.buf[a..b],
                        None => {
                            // No data lines (only comments or other fields): nothing
                            // to dispatch. Drop the lines and read on.
                            self.buf.advance(next);
                            self.pos = 0;
                            self.consumed = 0;
                            continue;
                        }
                    }
                };
                return Next::Event(data);
            }
            self.data_line(start, end);
            if self.pos > MAX_EVENT {
                return Next::TooLong;
            }
        }
    }

    /// Takes note of the line `buf[start..end]` if it is a `data` field.
    fn data_line(&mut self, start: usize, end: usize) {
        let line = &self.buf[start..end];
        let (name, value_at) = match line.iter().position(|&b| b == b':') {
            Some(0) => return, // a comment
            Some(colon) => {
                let skip = usize::from(line.get(colon + 1) == Some(&b' '));
                (&line[..colon], start + colon + 1 + skip)
            }
            None => (line, end),
        };
        if name != b"data" {
            return;
        }
        match (self.data, self.multi) {
            (None, _) => self.data = Some((value_at, end)),
            (Some((a, b)), false) => {
                self.multi = true;
                self.joined.extend_from_slice(&self.buf[a..b]);
                self.joined.push(b'\n');
                self.joined.extend_from_slice(&self.buf[value_at..end]);
            }
            (Some(_), true) => {
                self.joined.push(b'\n');
                self.joined.extend_from_slice(&self.buf[value_at..end]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[&[u8]]) -> Vec<String> {
        let mut r = SseEvents::default();
        let mut out = Vec::new();
        for piece in input {
            r.feed(piece);
            while let Next::Event(data) = r.next_event() {
                out.push(String::from_utf8(data.to_vec()).unwrap());
            }
        }
        out
    }

    #[test]
    fn events_in_any_pieces() {
        let body: &[u8] =
            b": hi\n\ndata: {\"a\":1}\n\nevent: x\nid: 3\ndata:b\ndata: c\n\ndata: [DONE]\n\n";
        let whole = all(&[body]);
        assert_eq!(whole, ["{\"a\":1}", "b\nc", "[DONE]"]);
        for cut in 0..body.len() {
            assert_eq!(all(&[&body[..cut], &body[cut..]]), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(all(&bytes), whole);
    }

    #[test]
    fn line_endings() {
        assert_eq!(
            all(&[b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"]),
            ["a", "b", "c"]
        );
        assert_eq!(
            all(&[b"data: a\r", b"\n", b"\r", b"\ndata: b\n\n"]),
            ["a", "b"]
        );
        assert_eq!(all(&[b"data\n\n"]), [""]);
    }

    #[test]
    fn an_unfinished_event_is_not_dispatched() {
        assert_eq!(all(&[b"data: a\n\ndata: b\n"]), ["a"]);
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut r = SseEvents::default();
        r.feed(&vec![b'x'; MAX_EVENT + 1]);
        assert_eq!(r.next_event(), Next::TooLong);
        let mut r = SseEvents::default();
        for _ in 0..(MAX_EVENT / 8 + 1) {
            r.feed(b"data: x\n");
        }
        assert_eq!(r.next_event(), Next::TooLong);
    }
}
