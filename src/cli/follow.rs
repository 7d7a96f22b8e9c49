//! Following one stream to its end over SSE, resuming with `Last-Event-ID` whenever the
//! connection drops, printing each event once.
//!
//! The answer's text goes to stdout as it comes. Its other parts are told apart: each
//! tool call on a line of its own on stdout (`[tool call 0: get_weather] {"city":…}`,
//! the arguments as they stream), a refusal on stdout after `[refusal] `, the model's
//! reasoning on stderr (dimmed on a terminal), so that stdout stays the answer.

use std::io::Write;
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// How following ended.
pub enum Ending {
    /// `done`, with its finish reason.
    Done {
        reason: String,
    },
    Failed {
        code: String,
        message: String,
    },
    Unreachable(String),
}

/// Reconnects give up after this long without a single new event.
const GIVE_UP: Duration = Duration::from_secs(60);

pub struct Follower {
    client: reqwest::Client,
    base: String,
    id: String,
    last: u64,
    json: bool,
    /// The kind of part printed last (to open and close runs of one kind).
    part: Part,
    /// Whether stdout's current line has something of the answer on it, and of which
    /// part.
    line_open: bool,
    line_part: Part,
}

/// Which part of the answer is being printed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Text,
    Reasoning,
    Refusal,
    ToolCall(u64),
}

impl Follower {
    pub fn new(client: reqwest::Client, base: String, id: String, after: u64, json: bool) -> Self {
        Follower {
            client,
            base,
            id,
            last: after,
            json,
            part: Part::Text,
            line_open: false,
            line_part: Part::Text,
        }
    }

    pub fn last_id(&self) -> u64 {
        self.last
    }

    pub async fn run(&mut self) -> Ending {
        let mut pause = Duration::from_millis(100);
        let mut stalled_since = tokio::time::Instant::now();
        loop {
            let before = self.last;
            match self.connect_once().await {
                Ok(Some(ending)) => return ending,
                Ok(None) => {}
                Err(Fatal(message)) => return Ending::Unreachable(message),
            }
            if self.last > before {
                stalled_since = tokio::time::Instant::now();
                pause = Duration::from_millis(100);
            }
            if stalled_since.elapsed() > GIVE_UP {
                return Ending::Unreachable(format!(
                    "lost the connection to {} and could not resume for {GIVE_UP:?}",
                    self.base
                ));
            }
            eprintln!(
                "spool: connection lost after event {}; resuming…",
                self.last
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// One connection: `Some` once the stream ended, `None` if the connection dropped.
    async fn connect_once(&mut self) -> Result<Option<Ending>, Fatal> {
        let url = format!("{}/v1/streams/{}/events", self.base, self.id);
        let mut request = self.client.get(&url);
        if self.last > 0 {
            request = request.header("Last-Event-ID", self.last.to_string());
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(_) => return Ok(None),
        };
        let status = response.status();
        if status == reqwest::StatusCode::NO_CONTENT {
            // We are at the terminal event already: ask how it ended.
            return self.ended_as().await.map(Some);
        }
        if !status.is_success() {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let message = body["error"]["message"].as_str().unwrap_or("no details");
            if status.is_client_error() {
                return Err(Fatal(format!("{status}: {message}")));
            }
            return Ok(None);
        }
        // The parser buffers bytes, so a character split between chunks stays whole; any
        // error (the connection broke, bytes that are not an event stream) is a drop.
        let mut events = response.bytes_stream().eventsource();
        while let Some(Ok(event)) = events.next().await {
            if let Some(ending) = self.print(&event) {
                return Ok(Some(ending));
            }
        }
        Ok(None)
    }

    /// Prints one event (once: seqs at or below the last printed are skipped). spool
    /// numbers every event. (An event without `id:` would carry the one before it, the
    /// SSE spec's last event ID, and so be skipped; one whose id is not a number is
    /// printed without one.)
    fn print(&mut self, event: &Event) -> Option<Ending> {
        let id: Option<u64> = event.id.parse().ok();
        if let Some(id) = id {
            if id <= self.last {
                return None;
            }
            self.last = id;
        }
        let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
        let mut out = std::io::stdout().lock();
        if self.json {
            let line = json!({"id": id, "event": event.event, "data": data});
            let _ = writeln!(out, "{line}");
        } else {
            self.print_part(&mut out, &event.event, &data);
        }
        let _ = out.flush();
        match event.event.as_str() {
            "done" => {
                if !self.json {
                    let _ = writeln!(out);
                }
                Some(Ending::Done {
                    reason: data["finish_reason"].as_str().unwrap_or("stop").to_owned(),
                })
            }
            "error" => {
                if !self.json {
                    let _ = writeln!(out);
                }
                Some(Ending::Failed {
                    code: data["code"].as_str().unwrap_or("error").to_owned(),
                    message: data["message"].as_str().unwrap_or_default().to_owned(),
                })
            }
            _ => None,
        }
    }

    /// Prints one part of the answer in the human form (see the module's comment).
    fn print_part(&mut self, out: &mut impl Write, kind: &str, data: &Value) {
        let text = data["text"].as_str().unwrap_or_default();
        let part = match kind {
            "token" => Part::Text,
            "reasoning" => Part::Reasoning,
            "refusal" => Part::Refusal,
            "tool_call" => Part::ToolCall(data["index"].as_u64().unwrap_or(0)),
            // `start`, the terminal events: nothing to print here.
            _ => return,
        };
        let was = std::mem::replace(&mut self.part, part);
        if was == Part::Reasoning && part != Part::Reasoning {
            let _ = writeln!(std::io::stderr().lock(), "{}", dim_end());
        }
        if part == Part::Reasoning {
            let mut err = std::io::stderr().lock();
            if was != Part::Reasoning {
                let _ = write!(err, "{}[reasoning] ", dim_start());
            }
            let _ = write!(err, "{text}");
            let _ = err.flush();
            return;
        }
        // A run of another part than the line's starts a line of its own.
        let after = std::mem::replace(&mut self.line_part, part);
        if self.line_open && after != part {
            let _ = writeln!(out);
        }
        match part {
            Part::Text => {
                let _ = write!(out, "{text}");
            }
            Part::Refusal => {
                if after != Part::Refusal {
                    let _ = write!(out, "[refusal] ");
                }
                let _ = write!(out, "{text}");
            }
            Part::ToolCall(index) => {
                if after != part {
                    let name = data["name"].as_str().unwrap_or("?");
                    let _ = write!(out, "[tool call {index}: {name}] ");
                }
                let _ = write!(out, "{}", data["arguments"].as_str().unwrap_or_default());
            }
            Part::Reasoning => {}
        }
        self.line_open = true;
    }

    /// The ending of a stream whose terminal event was already printed (`204`).
    async fn ended_as(&self) -> Result<Ending, Fatal> {
        let status: Value = self
            .client
            .get(format!("{}/v1/streams/{}", self.base, self.id))
            .send()
            .await
            .map_err(|e| Fatal(e.to_string()))?
            .json()
            .await
            .map_err(|e| Fatal(e.to_string()))?;
        Ok(match status["status"].as_str() {
            Some("completed") | Some("cancelled") => Ending::Done {
                reason: status["finish_reason"]
                    .as_str()
                    .unwrap_or("stop")
                    .to_owned(),
            },
            _ => Ending::Failed {
                code: status["error"]["code"]
                    .as_str()
                    .unwrap_or("failed")
                    .to_owned(),
                message: status["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            },
        })
    }
}

/// A failure that resuming cannot fix (unknown stream, bad cursor).
struct Fatal(String);

/// Dim text on stderr when it is a terminal.
fn dim_start() -> &'static str {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        "\x1b[2m"
    } else {
        ""
    }
}

fn dim_end() -> &'static str {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        "\x1b[0m"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;

    /// What the follower relies on from the parser: events whole wherever a chunk ends,
    /// even inside a UTF-8 character; comments and `retry:` alone are no events.
    #[tokio::test]
    async fn events_split_anywhere_are_whole() {
        let wire = "retry: 1000\n\nid: 1\nevent: start\ndata: {}\n\n: ping\n\nid: 2\nevent: token\ndata: {\"text\":\"é\"}\n\n";
        let bytes = wire.as_bytes();
        for cut in 0..bytes.len() {
            let chunks = [&bytes[..cut], &bytes[cut..]].map(|c| Ok::<_, ()>(c.to_vec()));
            let events: Vec<_> = futures_util::stream::iter(chunks)
                .eventsource()
                .map(|e| e.map_err(|e| format!("{e:?}")))
                .collect()
                .await;
            let events: Result<Vec<_>, _> = events.into_iter().collect();
            let events = events.unwrap();
            assert_eq!(events.len(), 2, "cut at {cut}");
            assert_eq!(
                (events[0].id.as_str(), events[0].event.as_str()),
                ("1", "start")
            );
            assert_eq!(events[1].id, "2");
            assert_eq!(events[1].event, "token");
            assert_eq!(events[1].data, "{\"text\":\"é\"}");
        }
    }
}
