//! An incremental SSE parser for the client: bytes in (a chunk may end anywhere, even
//! inside a UTF-8 character), whole events out.

/// One event as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<u64>,
    pub event: String,
    pub data: String,
}

#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    /// Adds bytes; returns the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = find_blank_line(&self.buf) {
            let block: Vec<u8> = self.buf.drain(..end.1).collect();
            let block = String::from_utf8_lossy(&block[..end.0]);
            let mut event = SseEvent {
                id: None,
                event: "message".to_owned(),
                data: String::new(),
            };
            let mut has_data = false;
            for line in block.lines() {
                let (field, value) = match line.split_once(':') {
                    Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                    None => (line, ""),
                };
                match field {
                    "id" => event.id = value.parse().ok(),
                    "event" => event.event = value.to_owned(),
                    "data" => {
                        if has_data {
                            event.data.push('\n');
                        }
                        event.data.push_str(value);
                        has_data = true;
                    }
                    _ => {} // comments (": ping"), retry:
                }
            }
            if has_data {
                out.push(event);
            }
        }
        out
    }
}

/// The end of the first block (before the blank line) and where the next starts.
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_are_whole() {
        let wire = "retry: 1000\n\nid: 1\nevent: start\ndata: {}\n\n: ping\n\nid: 2\nevent: token\ndata: {\"text\":\"é\"}\n\n";
        let bytes = wire.as_bytes();
        for cut in 0..bytes.len() {
            let mut p = SseParser::default();
            let mut events = p.push(&bytes[..cut]);
            events.extend(p.push(&bytes[cut..]));
            assert_eq!(events.len(), 2, "cut at {cut}");
            assert_eq!(events[1].id, Some(2));
            assert_eq!(events[1].event, "token");
            assert_eq!(events[1].data, "{\"text\":\"é\"}");
        }
    }
}
