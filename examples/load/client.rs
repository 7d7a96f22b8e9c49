//! A deliberately small HTTP/1.1 + SSE client on a raw `TcpStream`.
//!
//! It shares two cores with the server it measures, so it does the least it can: one
//! request per connection (`Connection: close`), a fixed read buffer, chunked decoding
//! straight into one pending buffer, and events handed out as borrowed slices. Raw
//! sockets also let the resume scenario cut a connection after an exact number of body
//! bytes, mid-event included.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// `POST /v1/streams` with `{"prompt":"bench","max_tokens":T}`; SSE when `sse`.
pub fn post_stream(addr: SocketAddr, max_tokens: u32, sse: bool) -> Vec<u8> {
    let body = format!("{{\"prompt\":\"bench\",\"max_tokens\":{max_tokens}}}");
    post_json(addr, "/v1/streams", &body, sse)
}

/// `POST path` with a JSON body; `Accept: text/event-stream` when `sse`.
pub fn post_json(addr: SocketAddr, path: &str, body: &str, sse: bool) -> Vec<u8> {
    let accept = if sse {
        "text/event-stream"
    } else {
        "application/json"
    };
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A plain `GET path` (e.g. `/metrics`).
pub fn get(addr: SocketAddr, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// `GET /v1/streams/{id}/events`, with `Last-Event-ID` when resuming.
pub fn get_events(addr: SocketAddr, id: &str, last_event_id: Option<u64>) -> Vec<u8> {
    let cursor = match last_event_id {
        Some(n) => format!("Last-Event-ID: {n}\r\n"),
        None => String::new(),
    };
    format!(
        "GET /v1/streams/{id}/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\
         {cursor}Connection: close\r\n\r\n"
    )
    .into_bytes()
}

/// One SSE event, borrowed from the pending buffer.
pub struct Ev<'a> {
    pub id: Option<u64>,
    pub event: &'a [u8],
    pub data: &'a [u8],
    /// The whole block as received, blank line included.
    pub raw: &'a [u8],
}

/// Why `read_events` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The response body ended (or the peer closed).
    Eof,
    /// The caller's byte budget was reached: drop the connection now.
    Limit,
    /// The callback asked to stop.
    Stopped,
}

enum Framing {
    Chunked(Chunk),
    Length(usize),
    UntilEof,
}

#[derive(Clone, Copy)]
enum Chunk {
    Size {
        value: usize,
        ext: bool,
        digits: bool,
    },
    Data(usize),
    DataEnd,
    Trailer {
        empty_line: bool,
    },
    Done,
}

pub struct Response {
    pub status: u16,
    pub stream_id: Option<String>,
    sock: TcpStream,
    rbuf: Box<[u8]>,
    framing: Framing,
    /// Decoded body bytes not yet parsed into events.
    pending: Vec<u8>,
    /// Decoded body bytes so far (for the drop budget).
    pub body_seen: usize,
}

fn bad(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Connects, sends `request` and reads the response head.
pub async fn open(addr: SocketAddr, request: &[u8], rbuf_size: usize) -> io::Result<Response> {
    let mut sock = TcpStream::connect(addr).await?;
    sock.set_nodelay(true)?;
    sock.write_all(request).await?;
    let mut rbuf = vec![0u8; rbuf_size.max(512)].into_boxed_slice();
    let mut head: Vec<u8> = Vec::with_capacity(512);
    let end = loop {
        let n = sock.read(&mut rbuf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the response head",
            ));
        }
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&rbuf[..n]);
        if let Some(p) = find(&head[from..], b"\r\n\r\n") {
            break from + p;
        }
        if head.len() > 64 * 1024 {
            return Err(bad("response head too large"));
        }
    };
    let text = std::str::from_utf8(&head[..end]).map_err(|_| bad("response head not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut framing = Framing::UntilEof;
    let mut stream_id = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            framing = Framing::Chunked(Chunk::Size {
                value: 0,
                ext: false,
                digits: false,
            });
        } else if name.eq_ignore_ascii_case("content-length")
            && !matches!(framing, Framing::Chunked(_))
        {
            framing = Framing::Length(value.parse().map_err(|_| bad("bad content-length"))?);
        } else if name.eq_ignore_ascii_case("x-stream-id") {
            stream_id = Some(value.to_owned());
        }
    }
    if status == 204 || status == 304 {
        framing = Framing::Length(0);
    }
    let mut response = Response {
        status,
        stream_id,
        sock,
        rbuf,
        framing,
        pending: Vec::with_capacity(1024),
        body_seen: 0,
    };
    let rest = &head[end + 4..];
    response.body_seen += decode(&mut response.framing, rest, &mut response.pending)?;
    Ok(response)
}

/// Appends the body bytes in `input` to `out`; returns how many were appended.
fn decode(framing: &mut Framing, input: &[u8], out: &mut Vec<u8>) -> io::Result<usize> {
    let before = out.len();
    match framing {
        Framing::UntilEof => out.extend_from_slice(input),
        Framing::Length(left) => {
            let n = input.len().min(*left);
            out.extend_from_slice(&input[..n]);
            *left -= n;
        }
        Framing::Chunked(state) => {
            let mut i = 0;
            while i < input.len() {
                match state {
                    Chunk::Size { value, ext, digits } => {
                        let b = input[i];
                        i += 1;
                        match b {
                            b'\n' => {
                                if !*digits {
                                    return Err(bad("empty chunk size"));
                                }
                                *state = if *value == 0 {
                                    Chunk::Trailer { empty_line: true }
                                } else {
                                    Chunk::Data(*value)
                                };
                            }
                            b'\r' => {}
                            b';' => *ext = true,
                            _ if *ext => {}
                            _ => {
                                let d = (b as char)
                                    .to_digit(16)
                                    .ok_or_else(|| bad("bad chunk size"))?;
                                *value = value
                                    .checked_mul(16)
                                    .and_then(|v| v.checked_add(d as usize))
                                    .ok_or_else(|| bad("chunk size overflow"))?;
                                *digits = true;
                            }
                        }
                    }
                    Chunk::Data(left) => {
                        let n = (input.len() - i).min(*left);
                        out.extend_from_slice(&input[i..i + n]);
                        i += n;
                        *left -= n;
                        if *left == 0 {
                            *state = Chunk::DataEnd;
                        }
                    }
                    Chunk::DataEnd => {
                        let b = input[i];
                        i += 1;
                        if b == b'\n' {
                            *state = Chunk::Size {
                                value: 0,
                                ext: false,
                                digits: false,
                            };
                        } else if b != b'\r' {
                            return Err(bad("chunk not followed by CRLF"));
                        }
                    }
                    Chunk::Trailer { empty_line } => {
                        let b = input[i];
                        i += 1;
                        match b {
                            b'\n' if *empty_line => *state = Chunk::Done,
                            b'\n' => *empty_line = true,
                            b'\r' => {}
                            _ => *empty_line = false,
                        }
                    }
                    Chunk::Done => break,
                }
            }
        }
    }
    Ok(out.len() - before)
}

/// Parses the complete events at the front of `buf`; returns the bytes consumed and
/// whether the callback asked to stop.
fn parse_events<F>(buf: &[u8], now: Instant, f: &mut F) -> io::Result<(usize, bool)>
where
    F: FnMut(Ev<'_>, Instant) -> bool,
{
    let mut pos = 0;
    loop {
        // An event ends at the first "\n\n" (spool writes bare LF).
        let mut scan = pos;
        let end = loop {
            match buf[scan..].iter().position(|&b| b == b'\n') {
                None => return Ok((pos, false)),
                Some(p) => {
                    let nl = scan + p;
                    if buf.get(nl + 1) == Some(&b'\n') {
                        break nl;
                    }
                    scan = nl + 1;
                }
            }
        };
        let block = &buf[pos..end];
        let raw = &buf[pos..end + 2];
        pos = end + 2;
        let mut ev = Ev {
            id: None,
            event: b"message",
            data: b"",
            raw,
        };
        let mut any = false;
        for line in block.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.first() == Some(&b':') {
                continue;
            }
            let (name, value) = match line.iter().position(|&b| b == b':') {
                Some(c) => {
                    let v = &line[c + 1..];
                    (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (line, &b""[..]),
            };
            match name {
                b"id" => {
                    let s = std::str::from_utf8(value).map_err(|_| bad("id not UTF-8"))?;
                    ev.id = Some(s.parse().map_err(|_| bad("id not an integer"))?);
                    any = true;
                }
                b"event" => {
                    ev.event = value;
                    any = true;
                }
                b"data" => {
                    ev.data = value;
                    any = true;
                }
                _ => {}
            }
        }
        if any && !f(ev, now) {
            return Ok((pos, true));
        }
    }
}

impl Response {
    fn body_complete(&self) -> bool {
        matches!(
            self.framing,
            Framing::Chunked(Chunk::Done) | Framing::Length(0)
        )
    }

    /// Reads and parses events until the body ends, `limit` body bytes have been seen
    /// (events cut by the limit are not delivered), the callback returns `false`, or
    /// `deadline` passes (a `TimedOut` error).
    pub async fn read_events<F>(
        &mut self,
        deadline: Instant,
        limit: Option<usize>,
        mut f: F,
    ) -> io::Result<End>
    where
        F: FnMut(Ev<'_>, Instant) -> bool,
    {
        let mut fresh = self.pending.len();
        let mut eof = false;
        loop {
            let mut hit_limit = false;
            if let Some(limit) = limit
                && self.body_seen >= limit
            {
                let excess = (self.body_seen - limit).min(fresh);
                let keep = self.pending.len() - excess;
                self.pending.truncate(keep);
                hit_limit = true;
            }
            let now = Instant::now();
            let (used, stop) = parse_events(&self.pending, now, &mut f)?;
            self.pending.drain(..used);
            if stop {
                return Ok(End::Stopped);
            }
            if hit_limit {
                return Ok(End::Limit);
            }
            if eof || self.body_complete() {
                return Ok(End::Eof);
            }
            if self.pending.len() > 1 << 20 {
                return Err(bad("an event larger than 1 MiB"));
            }
            let n = tokio::time::timeout_at(deadline, self.sock.read(&mut self.rbuf))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "deadline"))??;
            if n == 0 {
                eof = true;
                fresh = 0;
                continue;
            }
            fresh = decode(&mut self.framing, &self.rbuf[..n], &mut self.pending)?;
            self.body_seen += fresh;
        }
    }

    /// Reads the whole (small) body as bytes.
    pub async fn body(&mut self, deadline: Instant) -> io::Result<Vec<u8>> {
        loop {
            if self.body_complete() {
                return Ok(std::mem::take(&mut self.pending));
            }
            let n = tokio::time::timeout_at(deadline, self.sock.read(&mut self.rbuf))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "deadline"))??;
            if n == 0 {
                return Ok(std::mem::take(&mut self.pending));
            }
            self.body_seen += decode(&mut self.framing, &self.rbuf[..n], &mut self.pending)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_and_events() {
        let mut framing = Framing::Chunked(Chunk::Size {
            value: 0,
            ext: false,
            digits: false,
        });
        let wire = b"d\r\nretry: 1000\n\n\r\n1d\r\nid: 1\nevent: start\ndata: {}\n\n\r\n0\r\n\r\n";
        let mut out = Vec::new();
        for b in wire.chunks(3) {
            decode(&mut framing, b, &mut out).unwrap();
        }
        assert!(matches!(framing, Framing::Chunked(Chunk::Done)));
        let mut seen = Vec::new();
        let (used, _) = parse_events(&out, Instant::now(), &mut |e: Ev<'_>, _| {
            seen.push((e.id, e.event.to_vec(), e.data.to_vec()));
            true
        })
        .unwrap();
        assert_eq!(used, out.len());
        assert_eq!(seen, vec![(Some(1), b"start".to_vec(), b"{}".to_vec())]);
    }
}
