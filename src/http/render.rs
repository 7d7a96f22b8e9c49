//! How stored events become bytes on the wire: one [`Render`] per SSE format, and the
//! frames they are written into (`super::formats` lists the formats a stream's events
//! can be read in by `?format=`).
//!
//! A renderer is a pure function of the stored events it is fed, in order: the same
//! events give the same bytes, live or replayed, on any node. That is the whole of the
//! "byte-identical resume" promise, so every format has exactly one renderer.
//!
//! Frames and their ids. A format may write several frames for one stored event, or
//! frames of its own (a preamble item, a closing `[DONE]`). Each frame is opened with
//! [`Frames::frame`], naming its SSE `id:` — or `None` for a frame that belongs with the
//! one before it (it is resumed, or skipped, with that one). Two numberings exist
//! ([`Numbering`]):
//!
//! - [`Numbering::Seq`]: frame ids are event seqs (native SSE, OpenAI chunks). A cursor
//!   is a seq; a resume reads the store after it and renders from there.
//! - [`Numbering::Frames`]: the format numbers its own frames (a `sequence_number`
//!   counting every frame from 0). Its ids are still a pure function of the stored
//!   events, so a resume renders from the stream's first event and [`Frames`] drops
//!   every frame whose id is at or before the cursor. The cursor rule is applied to the
//!   format's own count of frames (`engine::cursor::resolve` works in any unit).
//!
//! Adding a format: one file with a type that implements [`Render`] (in its surface's
//! module), and a variant of `formats::Format` if `GET /v1/streams/{id}/events?format=` should
//! offer it.

use crate::event::Event;

/// How a format numbers its frames (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Numbering {
    /// Frame ids are the stored events' seqs.
    Seq,
    /// The format counts its own frames (the Responses API's `sequence_number`).
    Frames,
}

/// One SSE wire format.
pub trait Render: Send + 'static {
    /// Written once, before the first frame (the native stream's `retry:` line).
    fn preamble(&self) -> &'static str {
        ""
    }

    /// Written after a silence of the heartbeat interval.
    fn heartbeat(&self) -> &'static str;

    fn numbering(&self) -> Numbering {
        Numbering::Seq
    }

    /// Appends the frames of the next stored event.
    fn render(&mut self, event: &Event, out: &mut Frames);

    /// For a format whose frames of an event depend on nothing but the event and its
    /// stream (no state of the reader's own): its slot among a live batch's rendered
    /// frames ([`crate::hub::LiveBatch`], below [`crate::hub::SHARED_FORMATS`]). A live
    /// batch is then rendered once for all the stream's readers in this format.
    fn shared(&self) -> Option<usize> {
        None
    }
}

/// The frames of `events` in `render`'s format, with where each event's begin.
pub fn render_batch(render: &mut dyn Render, events: &[Event]) -> crate::hub::Rendered {
    let mut out = Frames::new(None);
    let mut starts = Vec::with_capacity(events.len());
    for event in events {
        starts.push(out.text.len());
        render.render(event, &mut out);
    }
    crate::hub::Rendered {
        text: out.take(),
        starts,
    }
}

/// What a renderer writes into: the bytes of one write to the socket, and the resume
/// point of a format that numbers its own frames.
#[derive(Debug, Default)]
pub struct Frames {
    text: String,
    /// Frames with ids up to this one were sent before the reader resumed.
    resumed_after: Option<u64>,
    /// Whether the frame being written is one of those.
    dropping: bool,
}

impl Frames {
    /// Frames for a reader that has every frame up to `resumed_after` (a format with
    /// [`Numbering::Frames`]); `None` keeps every frame.
    pub fn new(resumed_after: Option<u64>) -> Self {
        Frames {
            text: String::new(),
            resumed_after,
            dropping: false,
        }
    }

    /// Opens a frame with SSE id `id` (`None`: it goes with the frame before it), and
    /// returns where to write it — or `None` when the reader already has it.
    pub fn frame(&mut self, id: Option<u64>) -> Option<&mut String> {
        if let Some(after) = self.resumed_after {
            if let Some(id) = id {
                self.dropping = id <= after;
            }
            if self.dropping {
                return None;
            }
        }
        Some(&mut self.text)
    }

    /// The bytes written so far, leaving the buffer empty for the next write.
    pub fn take(&mut self) -> String {
        std::mem::take(&mut self.text)
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// Whether every frame is kept (no reader's resume point drops any).
    pub fn keeps_all(&self) -> bool {
        self.resumed_after.is_none()
    }

    /// Appends frames rendered elsewhere (a live batch's shared frames).
    pub fn push_rendered(&mut self, text: &str) {
        self.text.push_str(text);
    }
}

/// Writes an `id:` line (if any), one `data:` line and the blank line.
pub fn data_frame(out: &mut String, id: Option<u64>, data: &str) {
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(itoa(id).as_str());
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(data);
    out.push_str("\n\n");
}

/// A decimal number without an allocation of its own.
pub(crate) fn itoa(n: u64) -> ItoaBuf {
    let mut buf = ItoaBuf {
        bytes: [0; 20],
        start: 20,
    };
    let mut n = n;
    loop {
        buf.start -= 1;
        buf.bytes[buf.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf
}

pub(crate) struct ItoaBuf {
    bytes: [u8; 20],
    start: usize,
}

impl ItoaBuf {
    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII digits were written.
        std::str::from_utf8(&self.bytes[self.start..]).unwrap_or("0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{FinishReason, Usage};

    /// A format of the second kind: two frames per token and one of its own at the
    /// end, numbered from 0.
    struct Counted {
        next: u64,
    }

    impl Render for Counted {
        fn heartbeat(&self) -> &'static str {
            ":\n\n"
        }
        fn numbering(&self) -> Numbering {
            Numbering::Frames
        }
        fn render(&mut self, event: &Event, out: &mut Frames) {
            let frames = if event.kind.is_terminal() { 1 } else { 2 };
            for part in 0..frames {
                let id = self.next;
                self.next += 1;
                if let Some(text) = out.frame(Some(id)) {
                    data_frame(text, Some(id), &format!("{}.{part}", event.seq));
                }
            }
            if event.kind.is_terminal()
                && let Some(text) = out.frame(None)
            {
                text.push_str("data: [DONE]\n\n");
            }
        }
    }

    fn events() -> Vec<Event> {
        vec![
            Event::start(1, "st_x", "mock", "t"),
            Event::token(2, " a"),
            Event::token(3, " b"),
            Event::done(4, FinishReason::Stop, Usage::default()),
        ]
    }

    fn render_all(resumed_after: Option<u64>) -> String {
        let mut format = Counted { next: 0 };
        let mut out = Frames::new(resumed_after);
        for event in events() {
            format.render(&event, &mut out);
        }
        out.take()
    }

    #[test]
    fn a_resume_at_any_frame_is_exactly_the_rest() {
        let whole = render_all(None);
        // Frames by id: a frame without one ([DONE]) goes with the frame before it.
        let mut groups: Vec<(u64, String)> = Vec::new();
        for frame in whole.split_inclusive("\n\n") {
            match frame.strip_prefix("id: ") {
                Some(rest) => {
                    let id = rest.split('\n').next().unwrap().parse().unwrap();
                    groups.push((id, frame.to_owned()));
                }
                None => groups.last_mut().unwrap().1.push_str(frame),
            }
        }
        // 3 events × 2 frames, then the done frame (with [DONE]).
        assert_eq!(groups.len(), 7);
        assert!(groups[6].1.ends_with("data: [DONE]\n\n"));
        for cursor in 0..=6u64 {
            let expected: String = groups
                .iter()
                .filter(|(id, _)| *id > cursor)
                .map(|(_, text)| text.as_str())
                .collect();
            assert_eq!(render_all(Some(cursor)), expected, "after frame {cursor}");
        }
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0, 7, 10, 4096, u64::MAX] {
            assert_eq!(itoa(n).as_str(), n.to_string());
        }
    }
}
