//! The forward pass directly: known completions, and the invariants batching relies on.

use std::sync::OnceLock;

use spool::llm::Prompt;
use spool::llm::local::model::{KvCache, Loaded, Model, Segment};
use spool::llm::local::sampler::{SamplerConfig, sample};

use crate::server::model_path;

fn loaded() -> &'static Loaded {
    static L: OnceLock<Loaded> = OnceLock::new();
    L.get_or_init(|| Model::load(&model_path()).unwrap())
}

fn argmax(l: &[f32]) -> u32 {
    (0..l.len()).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap() as u32
}

/// Greedy continuation of raw text (no chat template), `n` tokens.
fn complete(text: &str, n: usize) -> String {
    let Loaded { model, tokenizer } = loaded();
    let mut cache = KvCache::default();
    let mut input = tokenizer.encode(text).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let logits = model
            .forward(&mut [Segment {
                cache: &mut cache,
                tokens: &input,
            }])
            .unwrap();
        let next = argmax(&logits[0]);
        out.extend_from_slice(tokenizer.token_bytes(next));
        input = vec![next];
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn completes_well_known_text() {
    assert!(complete("The quick brown fox jumps over the lazy", 2).starts_with(" dog"));
    assert!(complete("1, 2, 3, 4, 5,", 6).starts_with(" 6, 7"));
    assert!(complete("The capital of France is", 2).starts_with(" Paris"));
}

#[test]
fn batched_rows_equal_solo_rows_exactly() {
    let Loaded { model, tokenizer } = loaded();
    let a = tokenizer
        .chat_prompt(&Prompt::Text("What is the capital of France?".into()))
        .unwrap()
        .ids;
    let b = tokenizer
        .chat_prompt(&Prompt::Text("Name a color.".into()))
        .unwrap()
        .ids;
    let solo = |ids: &[u32]| {
        let mut cache = KvCache::default();
        let first = model
            .forward(&mut [Segment {
                cache: &mut cache,
                tokens: ids,
            }])
            .unwrap();
        let next = [argmax(&first[0])];
        let second = model
            .forward(&mut [Segment {
                cache: &mut cache,
                tokens: &next,
            }])
            .unwrap();
        (first[0].clone(), second[0].clone())
    };
    let (a1, a2) = solo(&a);
    let (b1, b2) = solo(&b);
    // Together: a prefill next to a prefill, then a decode next to a decode.
    let (mut ca, mut cb) = (KvCache::default(), KvCache::default());
    let first = model
        .forward(&mut [
            Segment {
                cache: &mut ca,
                tokens: &a,
            },
            Segment {
                cache: &mut cb,
                tokens: &b,
            },
        ])
        .unwrap();
    assert!(first[0] == a1 && first[1] == b1, "prefill differs batched");
    let (na, nb) = ([argmax(&a1)], [argmax(&b1)]);
    let second = model
        .forward(&mut [
            Segment {
                cache: &mut ca,
                tokens: &na,
            },
            Segment {
                cache: &mut cb,
                tokens: &nb,
            },
        ])
        .unwrap();
    assert!(second[0] == a2 && second[1] == b2, "decode differs batched");
}

#[test]
fn prefill_in_chunks_matches_prefill_at_once() {
    let Loaded { model, tokenizer } = loaded();
    let ids = tokenizer
        .encode("One two three four five six seven eight")
        .unwrap();
    let mut whole = KvCache::default();
    let at_once = model
        .forward(&mut [Segment {
            cache: &mut whole,
            tokens: &ids,
        }])
        .unwrap();
    let mut parts = KvCache::default();
    let mut last = Vec::new();
    for chunk in ids.chunks(3) {
        last = model
            .forward(&mut [Segment {
                cache: &mut parts,
                tokens: chunk,
            }])
            .unwrap();
    }
    assert_eq!(whole.len(), parts.len());
    assert!(at_once[0] == last[0], "logits differ with chunking");
}

/// Generates `n` tokens after `context` the way the model thread does (sampling with
/// `seed` at each absolute position, repeat penalty over the answer from `answer_start`).
fn generate(context: &[u32], answer_start: usize, seed: u64, n: usize) -> Vec<u32> {
    let Loaded { model, .. } = loaded();
    let config = SamplerConfig::new(None, None, seed);
    let mut cache = KvCache::default();
    let mut context = context.to_vec();
    let mut input = context.clone();
    let mut out = Vec::new();
    for _ in 0..n {
        let mut logits = model
            .forward(&mut [Segment {
                cache: &mut cache,
                tokens: &input,
            }])
            .unwrap()
            .remove(0);
        let position = context.len() as u64;
        let id = sample(&config, &mut logits, &context[answer_start..], position);
        context.push(id);
        out.push(id);
        input = vec![id];
    }
    out
}

#[test]
fn continuing_from_prompt_plus_prefix_ids_gives_the_same_tokens() {
    // What crash continuation relies on: with a seed, re-feeding the prompt plus the
    // generated prefix (ids, in one prefill) samples exactly what the uninterrupted run
    // did next.
    let Loaded { tokenizer, .. } = loaded();
    let prompt = tokenizer
        .chat_prompt(&Prompt::Text(
            "Write a short story about a lighthouse keeper.".into(),
        ))
        .unwrap();
    let full = generate(&prompt.ids, prompt.answer_start, 2026, 30);
    for cut in [1, 12, 25] {
        let mut resumed = prompt.ids.clone();
        resumed.extend_from_slice(&full[..cut]);
        let rest = generate(&resumed, prompt.answer_start, 2026, 30 - cut);
        assert_eq!(
            rest,
            full[cut..],
            "the continuation after {cut} tokens differs"
        );
    }
}
