//! The llama forward pass over candle ops, written for continuous batching.
//!
//! One call of [`Model::forward`] advances any number of sequences at once: the rows of
//! every sequence (a whole prompt chunk for one that is prefilling, one token for one that
//! is decoding) are stacked into one `[rows, width]` activation, so every weight matrix
//! (projections, FFN, LM head) is read once per step whatever the batch. Rotary
//! embeddings are applied per row at its own position and attention runs per sequence
//! over its own KV cache, so a sequence's numbers do not depend on what runs beside it.
//!
//! Weights come from a llama-architecture GGUF. Q4_1/Q5_x weights, which candle has no
//! fast CPU kernel for, are requantized to Q8_0 at load.

use std::fs::File;
use std::path::Path;

use anyhow::Context;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use rayon::prelude::*;

use super::tokenizer::ChatTokenizer;

/// The context we serve, at most (the file may declare more).
pub const MAX_CONTEXT: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub layers: usize,
    pub width: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub rope_base: f32,
    pub eps: f32,
    pub vocab: usize,
    pub context: usize,
}

struct Layer {
    attn_norm: Tensor,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// A quantized weight matrix `[out, in]`, whose `in` may be padded with zero columns.
///
/// candle's x86 Q8_0 kernel for CPUs with VNNI (repacked tiles; 4× faster for one row
/// and reusing the weights across rows, so batching pays) needs `in` to be a multiple
/// of 256. This model's width is 576, so those matrices get zero columns up to 768 and
/// their inputs zeros to match: the products are unchanged (zero blocks add exactly 0).
struct Linear {
    w: QMatMul,
    /// Columns the weights have (`in` rounded up, or `in`).
    k: usize,
}

impl Linear {
    /// `x` is `[rows, in]`, or already padded to `[rows, k]`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.w.forward(&pad_to(x, self.k)?)
    }
}

/// `x` (`[rows, cols]`) with zero columns up to `k`.
fn pad_to(x: &Tensor, k: usize) -> candle_core::Result<Tensor> {
    let cols = x.dim(1)?;
    if cols < k {
        x.pad_with_zeros(1, 0, k - cols)
    } else {
        Ok(x.clone())
    }
}

/// The block size of candle's fast repacked Q8_0 path, if this CPU takes it.
fn repack_block() -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        let vnni = (std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vnni"))
            || std::arch::is_x86_feature_detected!("avxvnni");
        if vnni {
            return Some(256);
        }
    }
    None
}

/// Makes a weight matrix fast on this CPU: Q4_1/Q5_x (no SIMD kernel in candle) become
/// Q8_0, and Q8_0 gets zero columns when that unlocks the repacked kernel.
fn linear(t: QTensor, device: &Device) -> anyhow::Result<Linear> {
    let (_, k) = t.shape().dims2()?;
    let requant = matches!(
        t.dtype(),
        GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q8_0
    );
    let pad = match repack_block() {
        Some(block) if requant && !k.is_multiple_of(block) => k.div_ceil(block) * block - k,
        _ => 0,
    };
    if !requant || (t.dtype() == GgmlDType::Q8_0 && pad == 0) {
        return Ok(Linear {
            w: QMatMul::from_qtensor(t)?,
            k,
        });
    }
    let mut w = t.dequantize(device)?;
    if pad > 0 {
        w = w.pad_with_zeros(1, 0, pad)?;
    }
    Ok(Linear {
        w: QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0)?)?,
        k: k + pad,
    })
}

pub struct Model {
    pub config: Config,
    /// The token embeddings; `None` when tied to the LM head (rows are read from it).
    embed: Option<QTensor>,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    /// `cos`/`sin` of every (position, frequency), `[context][head_dim / 2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    device: Device,
}

/// The keys and values of one sequence: per layer, `[position][kv_heads * head_dim]`.
#[derive(Debug, Default)]
pub struct KvCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    len: usize,
}

impl KvCache {
    /// Positions already in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.keys
            .iter()
            .chain(&self.values)
            .map(|v| v.capacity() * 4)
            .sum()
    }
}

/// One sequence's part of a forward step: `tokens` are appended at the end of `cache`.
pub struct Segment<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
}

/// The model file, loaded.
pub struct Loaded {
    pub model: Model,
    pub tokenizer: ChatTokenizer,
}

fn metadata<'a>(content: &'a Content, key: &str) -> anyhow::Result<&'a Value> {
    content
        .metadata
        .get(key)
        .with_context(|| format!("the model file has no `{key}`"))
}

fn strings(value: &Value) -> anyhow::Result<Vec<String>> {
    value
        .to_vec()?
        .iter()
        .map(|v| Ok(v.to_string()?.clone()))
        .collect()
}

impl Model {
    /// Loads a llama-architecture GGUF and its tokenizer.
    pub fn load(path: &Path) -> anyhow::Result<Loaded> {
        let device = Device::Cpu;
        let mut file =
            File::open(path).with_context(|| format!("opening the model {}", path.display()))?;
        let content = Content::read(&mut file)
            .map_err(|e| anyhow::anyhow!("{} is not a GGUF file: {e}", path.display()))?;
        let arch = metadata(&content, "general.architecture")?.to_string()?;
        if arch != "llama" {
            anyhow::bail!("the model's architecture is {arch:?}; only llama is supported");
        }
        let u = |key: &str| -> anyhow::Result<usize> {
            Ok(metadata(&content, &format!("llama.{key}"))?.to_u32()? as usize)
        };
        let f = |key: &str, default: f32| -> f32 {
            content
                .metadata
                .get(&format!("llama.{key}"))
                .and_then(|v| v.to_f32().ok())
                .unwrap_or(default)
        };
        let width = u("embedding_length")?;
        let heads = u("attention.head_count")?;
        let tokens = strings(metadata(&content, "tokenizer.ggml.tokens")?)?;
        let merges = strings(metadata(&content, "tokenizer.ggml.merges")?)?;
        let token_types = content
            .metadata
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.to_vec().ok())
            .map(|v| v.iter().map(|t| t.to_i32().unwrap_or(1)).collect());
        let config = Config {
            layers: u("block_count")?,
            width,
            heads,
            kv_heads: u("attention.head_count_kv").unwrap_or(heads),
            head_dim: width.checked_div(heads).unwrap_or(0),
            ffn: u("feed_forward_length")?,
            rope_base: f("rope.freq_base", 10_000.0),
            eps: f("attention.layer_norm_rms_epsilon", 1e-5),
            vocab: tokens.len(),
            context: u("context_length").unwrap_or(MAX_CONTEXT).min(MAX_CONTEXT),
        };
        if config.kv_heads == 0
            || !config.heads.is_multiple_of(config.kv_heads)
            || config.head_dim == 0
            || !config.head_dim.is_multiple_of(2)
        {
            anyhow::bail!("unsupported attention shape {config:?}");
        }
        let tokenizer = ChatTokenizer::new(tokens, merges, token_types)?;

        let mut tensor = |name: &str| -> anyhow::Result<QTensor> {
            content
                .tensor(&mut file, name, &device)
                .with_context(|| format!("reading tensor {name}"))
        };
        let mut matmul = |name: &str| -> anyhow::Result<Linear> { linear(tensor(name)?, &device) };
        let mut layers = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let p = format!("blk.{i}");
            layers.push(Layer {
                wq: matmul(&format!("{p}.attn_q.weight"))?,
                wk: matmul(&format!("{p}.attn_k.weight"))?,
                wv: matmul(&format!("{p}.attn_v.weight"))?,
                wo: matmul(&format!("{p}.attn_output.weight"))?,
                gate: matmul(&format!("{p}.ffn_gate.weight"))?,
                up: matmul(&format!("{p}.ffn_up.weight"))?,
                down: matmul(&format!("{p}.ffn_down.weight"))?,
                attn_norm: Tensor::new(&[0f32], &device)?, // replaced below
                ffn_norm: Tensor::new(&[0f32], &device)?,
            });
        }
        let mut vector = |name: &str| -> anyhow::Result<Tensor> {
            Ok(content
                .tensor(&mut file, name, &device)
                .with_context(|| format!("reading tensor {name}"))?
                .dequantize(&device)?
                .to_dtype(DType::F32)?)
        };
        for (i, layer) in layers.iter_mut().enumerate() {
            layer.attn_norm = vector(&format!("blk.{i}.attn_norm.weight"))?;
            layer.ffn_norm = vector(&format!("blk.{i}.ffn_norm.weight"))?;
        }
        let norm = vector("output_norm.weight")?;
        let mut read = |name: &str| -> anyhow::Result<QTensor> {
            content
                .tensor(&mut file, name, &device)
                .with_context(|| format!("reading tensor {name}"))
        };
        // Tied embeddings when the file has no separate output matrix: one copy serves
        // both (embedding rows are dequantized from the LM head's).
        let (embed, lm_head) = match content.tensor_infos.contains_key("output.weight") {
            true => (
                Some(read("token_embd.weight")?),
                linear(read("output.weight")?, &device)?,
            ),
            false => (None, linear(read("token_embd.weight")?, &device)?),
        };
        let half = config.head_dim / 2;
        let mut cos = Vec::with_capacity(config.context * half);
        let mut sin = Vec::with_capacity(config.context * half);
        for pos in 0..config.context {
            for i in 0..half {
                let freq =
                    1.0 / f64::from(config.rope_base).powf(2.0 * i as f64 / config.head_dim as f64);
                let angle = pos as f64 * freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok(Loaded {
            model: Model {
                config,
                embed,
                layers,
                norm,
                lm_head,
                cos,
                sin,
                device,
            },
            tokenizer,
        })
    }

    /// Advances every segment by its tokens; returns the logits after each segment's last
    /// token (segments with no tokens are skipped and get an empty vector).
    pub fn forward(&self, segments: &mut [Segment<'_>]) -> anyhow::Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let rows: usize = segments.iter().map(|s| s.tokens.len()).sum();
        if rows == 0 {
            return Ok(vec![Vec::new(); segments.len()]);
        }
        for s in segments.iter() {
            if s.cache.len + s.tokens.len() > c.context {
                anyhow::bail!("the context of {} tokens is full", c.context);
            }
        }
        let ids: Vec<u32> = segments
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        let ids = Tensor::from_vec(ids, rows, &self.device)?;
        let mut x = match &self.embed {
            Some(embed) => embed.embedding(&ids)?,
            None => self
                .lm_head
                .w
                .embedding(&ids)?
                .narrow(1, 0, c.width)?
                .contiguous()?,
        };
        let q_width = c.heads * c.head_dim;
        let kv_width = c.kv_heads * c.head_dim;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = pad_to(
                &candle_nn::ops::rms_norm(&x, &layer.attn_norm, c.eps)?,
                layer.wq.k,
            )?;
            let mut q = layer.wq.forward(&h)?.flatten_all()?.to_vec1::<f32>()?;
            let mut k = layer.wk.forward(&h)?.flatten_all()?.to_vec1::<f32>()?;
            let v = layer.wv.forward(&h)?.flatten_all()?.to_vec1::<f32>()?;
            // First the new keys and values go into each cache (rotated at their
            // positions), then every row attends over its own sequence's cache.
            let mut row = 0;
            for s in segments.iter_mut() {
                let t = s.tokens.len();
                let start = s.cache.len;
                for i in 0..t {
                    let pos = start + i;
                    let r = row + i;
                    self.rope(&mut q[r * q_width..(r + 1) * q_width], pos);
                    self.rope(&mut k[r * kv_width..(r + 1) * kv_width], pos);
                }
                if s.cache.keys.len() < c.layers {
                    s.cache.keys.resize_with(c.layers, Vec::new);
                    s.cache.values.resize_with(c.layers, Vec::new);
                }
                s.cache.keys[l].extend_from_slice(&k[row * kv_width..(row + t) * kv_width]);
                s.cache.values[l].extend_from_slice(&v[row * kv_width..(row + t) * kv_width]);
                row += t;
            }
            // Which cache, and how many of its positions, each row sees.
            let mut sees: Vec<(&[f32], &[f32], usize)> = Vec::with_capacity(rows);
            for s in segments.iter() {
                let (keys, values) = (&s.cache.keys[l], &s.cache.values[l]);
                let start = s.cache.len;
                sees.extend((0..s.tokens.len()).map(|i| (&keys[..], &values[..], start + i + 1)));
            }
            // Row by row, prompt chunks too: a token's numbers are then the same whether
            // it was decoded or re-fed in a prompt (crash continuation), since Q8
            // activation rounding turns any last-bit difference into a different text a
            // few tokens later. (Matmul attention for prompt chunks was ~30% faster on a
            // 1,000-token prompt, but not bit-identical.) Rows are independent, so they
            // run in parallel without changing a bit.
            let mut out = vec![0f32; rows * q_width];
            out.par_chunks_mut(q_width)
                .zip(q.par_chunks(q_width))
                .zip(sees.par_iter())
                .with_min_len(4)
                .for_each(|((out, q), &(keys, values, len))| attend(c, q, keys, values, len, out));
            let attn = Tensor::from_vec(out, (rows, q_width), &self.device)?;
            x = (x + layer.wo.forward(&attn)?)?;
            let h = pad_to(
                &candle_nn::ops::rms_norm(&x, &layer.ffn_norm, c.eps)?,
                layer.gate.k,
            )?;
            let gated =
                (candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?;
            x = (x + layer.down.forward(&gated)?)?;
        }
        // Only each segment's last row goes through the LM head.
        let mut last = Vec::new();
        let mut row = 0;
        for s in segments.iter_mut() {
            let t = s.tokens.len();
            s.cache.len += t;
            row += t;
            if t > 0 {
                last.push((row - 1) as u32);
            }
        }
        let picked = x.index_select(&Tensor::new(last.as_slice(), &self.device)?, 0)?;
        let h = candle_nn::ops::rms_norm(&picked, &self.norm, c.eps)?;
        let logits = self
            .lm_head
            .forward(&h)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        let mut logits = logits.into_iter();
        Ok(segments
            .iter()
            .map(|s| match s.tokens.is_empty() {
                true => Vec::new(),
                false => logits.next().unwrap_or_default(),
            })
            .collect())
    }

    /// Rotates each head of `x` in place at `pos` (interleaved pairs: GGUF llama weights
    /// are permuted for this form).
    fn rope(&self, x: &mut [f32], pos: usize) {
        let half = self.config.head_dim / 2;
        let cos = &self.cos[pos * half..(pos + 1) * half];
        let sin = &self.sin[pos * half..(pos + 1) * half];
        for head in x.chunks_exact_mut(self.config.head_dim) {
            for (pair, (&c, &s)) in head.chunks_exact_mut(2).zip(cos.iter().zip(sin)) {
                let (a, b) = (pair[0], pair[1]);
                pair[0] = a * c - b * s;
                pair[1] = a * s + b * c;
            }
        }
    }
}

/// Attention of one query row over the first `len` positions of a cache.
fn attend(c: &Config, q: &[f32], keys: &[f32], values: &[f32], len: usize, out: &mut [f32]) {
    let d = c.head_dim;
    let kv_width = c.kv_heads * d;
    let group = c.heads / c.kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let mut scores = vec![0f32; len];
    for (h, (qh, oh)) in q.chunks_exact(d).zip(out.chunks_exact_mut(d)).enumerate() {
        let kv = (h / group) * d;
        let mut max = f32::NEG_INFINITY;
        for (p, score) in scores.iter_mut().enumerate() {
            let k = &keys[p * kv_width + kv..p * kv_width + kv + d];
            *score = dot(qh, k) * scale;
            max = max.max(*score);
        }
        let mut sum = 0.0;
        for score in scores.iter_mut() {
            *score = (*score - max).exp();
            sum += *score;
        }
        let inv = 1.0 / sum;
        oh.fill(0.0);
        for (p, &w) in scores.iter().enumerate() {
            let v = &values[p * kv_width + kv..p * kv_width + kv + d];
            let w = w * inv;
            for (o, &vi) in oh.iter_mut().zip(v) {
                *o += w * vi;
            }
        }
    }
}

/// A dot product in eight lanes (vectorizes; the order is fixed, so results are too).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    let tail: f32 = a
        .chunks_exact(8)
        .remainder()
        .iter()
        .zip(b.chunks_exact(8).remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}
