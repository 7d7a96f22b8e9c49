//! The formats `GET /v1/streams/{id}/events?format=` offers: a name, and its renderer
//! for a stored stream. Adding a format to `?format=` is a variant here.

use super::openai::chunks::ChunkFormat;
use super::render::Render;
use super::sse::Native;
use crate::store::{StoreError, StreamRow};

/// The formats `GET /v1/streams/{id}/events?format=` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// SPEC §3 (no `format`, or `sse`/`native`).
    Native,
    /// OpenAI's `chat.completion.chunk` lines (`openai`).
    OpenAi,
}

impl Format {
    /// The format of a `?format=` value (`None` when it names none).
    pub fn parse(name: Option<&str>) -> Option<Format> {
        match name {
            None | Some("sse" | "native") => Some(Format::Native),
            Some("openai") => Some(Format::OpenAi),
            Some(_) => None,
        }
    }

    /// This format's renderer for a stored stream.
    pub fn renderer(self, row: &StreamRow) -> Result<Box<dyn Render>, StoreError> {
        Ok(match self {
            Format::Native => Box::new(Native),
            Format::OpenAi => Box::new(ChunkFormat::of(row)?),
        })
    }
}
