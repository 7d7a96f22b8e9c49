//! Choosing the next token from logits: repeat penalty, temperature, top-p.
//!
//! The randomness of a step depends only on `(seed, position)`: the uniform number for
//! the token at sequence position `p` is a hash of both. So a seeded stream is
//! reproducible, whatever else runs beside it, and a stream continued from its prompt
//! plus generated prefix picks exactly what the uninterrupted run would have.

/// Sampling settings of one stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// 0 (or below) = greedy.
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 = no cut.
    pub top_p: f32,
    /// Divides positive logits (multiplies negative ones) of recently seen tokens.
    pub repeat_penalty: f32,
    /// How many of the most recent answer tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

pub const DEFAULT_TEMPERATURE: f32 = 0.7;
pub const DEFAULT_TOP_P: f32 = 0.9;
pub const DEFAULT_REPEAT_PENALTY: f32 = 1.1;
pub const DEFAULT_REPEAT_LAST_N: usize = 64;

impl SamplerConfig {
    pub fn new(temperature: Option<f32>, top_p: Option<f32>, seed: u64) -> Self {
        SamplerConfig {
            temperature: temperature.unwrap_or(DEFAULT_TEMPERATURE),
            top_p: top_p.unwrap_or(DEFAULT_TOP_P),
            repeat_penalty: DEFAULT_REPEAT_PENALTY,
            repeat_last_n: DEFAULT_REPEAT_LAST_N,
            seed,
        }
    }
}

/// splitmix64: a small, well-mixed counter-based generator.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The uniform number in [0, 1) for the token at `position` of a stream seeded `seed`.
pub fn uniform(seed: u64, position: u64) -> f64 {
    let bits = splitmix64(splitmix64(seed) ^ position.wrapping_mul(0xD1B5_4A32_D192_ED03));
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Picks the token at `position` given `logits` (modified in place) and the answer so
/// far (`context`, which the repeat penalty looks at).
pub fn sample(config: &SamplerConfig, logits: &mut [f32], context: &[u32], position: u64) -> u32 {
    if config.repeat_penalty != 1.0 && config.repeat_last_n > 0 {
        let from = context.len().saturating_sub(config.repeat_last_n);
        let mut seen = context[from..].to_vec();
        seen.sort_unstable();
        seen.dedup();
        for id in seen {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = if *l >= 0.0 {
                    *l / config.repeat_penalty
                } else {
                    *l * config.repeat_penalty
                };
            }
        }
    }
    if config.temperature.is_nan() || config.temperature <= 0.0 {
        return argmax(logits);
    }
    // Softmax at the temperature, in f64 for a stable sum, over the tokens within
    // `CUTOFF` of the best: each one left out weighs less than e^-CUTOFF (1e-13) of it,
    // so the choice is the same as over the whole vocabulary but much cheaper.
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let inv_t = 1.0 / f64::from(config.temperature);
    let floor = f64::from(max) - CUTOFF / inv_t;
    let candidates: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| f64::from(**l) >= floor)
        .map(|(i, &l)| (i as u32, ((f64::from(l) - f64::from(max)) * inv_t).exp()))
        .collect();
    let total: f64 = candidates.iter().map(|(_, p)| p).sum();
    let top_p = f64::from(config.top_p.clamp(f32::MIN_POSITIVE, 1.0)) * total;
    let nucleus = nucleus(candidates, top_p);
    let mass: f64 = nucleus.iter().map(|(_, p)| p).sum();
    let target = uniform(config.seed, position) * mass;
    let mut cumulative = 0.0;
    for &(id, p) in &nucleus {
        cumulative += p;
        if target < cumulative {
            return id;
        }
    }
    nucleus.last().map_or(0, |(id, _)| *id)
}

/// How far below the best logit (in units of temperature) a token still counts.
const CUTOFF: f64 = 30.0;

/// The highest logit; the lowest id wins a tie.
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The smallest set of most likely tokens whose mass reaches `mass`, most likely first
/// (ties by lower id). Sorts only as much as it needs.
fn nucleus(mut tokens: Vec<(u32, f64)>, mass: f64) -> Vec<(u32, f64)> {
    let order = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut k = 64.min(tokens.len());
    loop {
        if k < tokens.len() {
            tokens.select_nth_unstable_by(k - 1, order);
        }
        tokens[..k].sort_unstable_by(order);
        let mut cumulative = 0.0;
        for (n, &(_, p)) in tokens[..k].iter().enumerate() {
            cumulative += p;
            if cumulative >= mass {
                tokens.truncate(n + 1);
                return tokens;
            }
        }
        if k == tokens.len() {
            return tokens;
        }
        k = (k * 8).min(tokens.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(temperature: f32, top_p: f32, seed: u64) -> SamplerConfig {
        SamplerConfig {
            temperature,
            top_p,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed,
        }
    }

    #[test]
    fn greedy_takes_the_maximum() {
        let mut logits = vec![0.1, 2.0, 2.0, -1.0];
        assert_eq!(sample(&config(0.0, 0.9, 1), &mut logits, &[], 0), 1);
    }

    #[test]
    fn same_seed_and_position_same_token() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 / 20.0).collect();
        let c = config(1.0, 1.0, 42);
        for position in 0..50 {
            let a = sample(&c, &mut logits.clone(), &[], position);
            let b = sample(&c, &mut logits.clone(), &[], position);
            assert_eq!(a, b);
        }
        // Different positions do not all pick the same token.
        let picks: std::collections::HashSet<u32> = (0..50)
            .map(|p| sample(&c, &mut logits.clone(), &[], p))
            .collect();
        assert!(picks.len() > 5, "{picks:?}");
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // Token 0 holds almost all the mass: top_p 0.5 always takes it.
        let mut logits = vec![10.0, 0.0, 0.0, 0.0];
        for position in 0..100 {
            assert_eq!(
                sample(&config(1.0, 0.5, 7), &mut logits.clone(), &[], position),
                0
            );
        }
        // With a flat distribution and no cut, every token shows up.
        logits = vec![0.0; 4];
        let picks: std::collections::HashSet<u32> = (0..200)
            .map(|p| sample(&config(1.0, 1.0, 7), &mut logits.clone(), &[], p))
            .collect();
        assert_eq!(picks.len(), 4);
    }

    #[test]
    fn nucleus_grows_past_the_first_guess() {
        let tokens: Vec<(u32, f64)> = (0..5000).map(|i| (i, 1.0)).collect();
        let n = nucleus(tokens, 0.9 * 5000.0);
        assert_eq!(n.len(), 4500);
        assert_eq!(n[..3].iter().map(|t| t.0).collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn repeat_penalty_discourages_seen_tokens() {
        let mut c = config(0.0, 1.0, 0);
        c.repeat_penalty = 2.0;
        let mut logits = vec![1.0, 0.8, -1.0];
        assert_eq!(sample(&c, &mut logits, &[0], 0), 1);
        assert_eq!(logits, vec![0.5, 0.8, -1.0]);
    }

    #[test]
    fn uniform_is_in_range_and_spread() {
        let xs: Vec<f64> = (0..10_000).map(|p| uniform(3, p)).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }
}
