//! The tokenizer of the embedded model: a byte-level BPE built from the GGUF's own
//! vocabulary and merges, the ChatML prompt template, and incremental detokenization.
//!
//! The pre-tokenizer is set by hand (individual digits, then byte-level without a prefix
//! space: what this model's `smollm` pre-tokenizer means). Special tokens are never
//! registered as added tokens, so text that *looks* like `<|im_end|>` is encoded as plain
//! text and cannot open or close a turn; the template's special ids are inserted by hand.

use std::collections::HashMap;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{PreTokenizerWrapper, Tokenizer};

use crate::llm::{Message, Prompt, PromptCost, Role};

pub const END_OF_TEXT: u32 = 0;
pub const IM_START: u32 = 1;
pub const IM_END: u32 = 2;

/// The system prompt used when the client gives none (the model's own template's).
pub const DEFAULT_SYSTEM: &str =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// A prompt's ids, and where the assistant's answer starts in them (after the last
/// `<|im_start|>assistant\n`; text of an open assistant turn counts as answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatPrompt {
    pub ids: Vec<u32>,
    pub answer_start: usize,
}

pub struct ChatTokenizer {
    inner: Tokenizer,
    /// The raw bytes of every token (byte-level symbols mapped back to bytes); empty for
    /// control tokens, which never print.
    bytes: Vec<Vec<u8>>,
}

impl ChatTokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.tokens`, `tokenizer.ggml.merges` and
    /// (optionally) `tokenizer.ggml.token_type` (3 = control).
    pub fn new(
        tokens: Vec<String>,
        merges: Vec<String>,
        token_types: Option<Vec<i32>>,
    ) -> anyhow::Result<Self> {
        if tokens.len() <= IM_END as usize
            || tokens[IM_START as usize] != "<|im_start|>"
            || tokens[IM_END as usize] != "<|im_end|>"
        {
            anyhow::bail!(
                "the model's vocabulary does not use ChatML tokens (<|im_start|>=1, <|im_end|>=2)"
            );
        }
        let unicode_to_byte: HashMap<char, u8> = bytes_to_unicode()
            .into_iter()
            .map(|(b, c)| (c, b))
            .collect();
        let bytes = tokens
            .iter()
            .enumerate()
            .map(|(id, token)| {
                let control = token_types
                    .as_ref()
                    .and_then(|t| t.get(id))
                    .is_some_and(|&t| t == 3)
                    || id <= IM_END as usize;
                if control {
                    Vec::new()
                } else {
                    token
                        .chars()
                        .map(|c| unicode_to_byte.get(&c).copied().unwrap_or(b'?'))
                        .collect()
                }
            })
            .collect();
        let vocab: Vocab = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, i as u32))
            .collect();
        let merges = merges
            .into_iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) => Ok((a.to_owned(), b.to_owned())),
                None => Err(anyhow::anyhow!("malformed merge {m:?} in the model file")),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| anyhow::anyhow!("building the tokenizer: {e}"))?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
        ])));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        Ok(ChatTokenizer { inner, bytes })
    }

    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// Encodes plain text: nothing in it is a special token.
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The token ids of a whole prompt in ChatML, ending with an open assistant turn.
    ///
    /// A client `system` message replaces the default one. If the last message is the
    /// assistant's, its turn is left open, so generation continues that text.
    pub fn chat_prompt(&self, prompt: &Prompt) -> anyhow::Result<ChatPrompt> {
        let messages = match prompt {
            Prompt::Text(text) => vec![Message {
                role: Role::User,
                content: text.clone(),
            }],
            Prompt::Messages(ms) => ms.clone(),
        };
        let mut ids = Vec::new();
        let mut answer_start = 0;
        if messages.first().is_none_or(|m| m.role != Role::System) {
            self.turn(&mut ids, "system", DEFAULT_SYSTEM, true)?;
        }
        let open_last = messages.last().is_some_and(|m| m.role == Role::Assistant);
        for (i, m) in messages.iter().enumerate() {
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            let closed = !(open_last && i + 1 == messages.len());
            answer_start = self.turn(&mut ids, role, &m.content, closed)?;
        }
        if !open_last {
            ids.push(IM_START);
            ids.extend(self.encode("assistant\n")?);
            answer_start = ids.len();
        }
        Ok(ChatPrompt { ids, answer_start })
    }

    /// What `messages` cost in [`ChatTokenizer::chat_prompt`]'s ids, message by message
    /// (for a conversation whose last message is the user's): the sum is exactly the
    /// length of its prompt, since each turn is tokenized on its own.
    pub fn prompt_cost(&self, messages: &[Message]) -> anyhow::Result<PromptCost> {
        let mut fixed = 1 + self.encode("assistant\n")?.len();
        if messages.first().is_none_or(|m| m.role != Role::System) {
            let mut ids = Vec::new();
            self.turn(&mut ids, "system", DEFAULT_SYSTEM, true)?;
            fixed += ids.len();
        }
        let mut costs = Vec::with_capacity(messages.len());
        for m in messages {
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            let mut ids = Vec::new();
            self.turn(&mut ids, role, &m.content, true)?;
            costs.push(ids.len());
        }
        Ok(PromptCost {
            fixed,
            messages: costs,
        })
    }

    fn turn(
        &self,
        ids: &mut Vec<u32>,
        role: &str,
        content: &str,
        closed: bool,
    ) -> anyhow::Result<usize> {
        ids.push(IM_START);
        ids.extend(self.encode(&format!("{role}\n"))?);
        let content_start = ids.len();
        ids.extend(self.encode(content)?);
        if closed {
            ids.push(IM_END);
            ids.extend(self.encode("\n")?);
        }
        Ok(content_start)
    }

    /// The bytes a token prints (nothing for control tokens).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map_or(&[], |b| b.as_slice())
    }

    /// Decodes ids with the library's decoder (for tests and checks).
    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| anyhow::anyhow!("decoding: {e}"))
    }
}

/// Turns token bytes into text as soon as it is valid UTF-8: a character split across
/// tokens is held back until it is complete; invalid bytes become U+FFFD.
#[derive(Debug, Default)]
pub struct Detokenizer {
    pending: Vec<u8>,
}

impl Detokenizer {
    /// The state after `ids` were pushed and their text taken: what a continued stream
    /// starts from (an incomplete character's first bytes stay pending).
    pub fn after(tokenizer: &ChatTokenizer, ids: &[u32]) -> Self {
        let mut d = Detokenizer::default();
        for &id in ids {
            d.push(tokenizer.token_bytes(id));
        }
        d
    }

    /// Adds one token's bytes; returns the text that became complete (maybe empty).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // Incomplete at the end: wait for the next token.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// What is left when generation ends (an incomplete character prints as U+FFFD).
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

/// GPT-2's byte ↔ printable-character table of byte-level BPE.
fn bytes_to_unicode() -> Vec<(u8, char)> {
    let mut printable: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = printable.clone();
    let mut n = 0;
    for b in 0..=255u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    printable
        .into_iter()
        .zip(chars)
        .filter_map(|(b, c)| Some((u8::try_from(b).ok()?, char::from_u32(c)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection() {
        let table = bytes_to_unicode();
        assert_eq!(table.len(), 256);
        let chars: std::collections::HashSet<char> = table.iter().map(|(_, c)| *c).collect();
        assert_eq!(chars.len(), 256);
        assert!(table.contains(&(b' ', 'Ġ')));
        assert!(table.contains(&(b'\n', 'Ċ')));
    }

    #[test]
    fn detokenizer_never_splits_a_character() {
        let text = "Héllo wörld — 日本語 🙂";
        let bytes = text.as_bytes();
        // Feed one byte at a time: every piece is whole characters, and together the text.
        let mut d = Detokenizer::default();
        let mut out = String::new();
        for b in bytes {
            let piece = d.push(std::slice::from_ref(b));
            out.push_str(&piece);
        }
        out.push_str(&d.finish());
        assert_eq!(out, text);
        // The emoji's four bytes: nothing until the last one.
        let mut d = Detokenizer::default();
        let emoji = "🙂".as_bytes();
        assert_eq!(d.push(&emoji[..2]), "");
        assert_eq!(d.push(&emoji[2..3]), "");
        assert_eq!(d.push(&emoji[3..]), "🙂");
    }

    #[test]
    fn detokenizer_replaces_invalid_bytes() {
        let mut d = Detokenizer::default();
        assert_eq!(d.push(&[b'a', 0xFF, b'b']), "a\u{FFFD}b");
        assert_eq!(d.push(&[0xE6, 0x97]), "");
        assert_eq!(d.finish(), "\u{FFFD}");
    }
}
