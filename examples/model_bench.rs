//! Measures the local backend end to end (model thread, batching, sampling), without
//! HTTP: load time, time to first token for a ~30-token prompt, decode tokens/s of one
//! stream, aggregate tokens/s at 1/2/4/8 concurrent streams, and RSS.
//!
//! `cargo run --release --example model_bench` (the model is fetched once if needed;
//! `SPOOL_MODEL_PATH` overrides). `BENCH_TOKENS` sets tokens per stream (default 128).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use spool::llm::local::LocalBackend;
use spool::llm::{Backend, GenerateRequest, Output, Prompt};
use tokio_util::sync::CancellationToken;

fn rss_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_owned()))
        })
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn request(prompt: &str, max_tokens: u32, seed: u64) -> GenerateRequest {
    GenerateRequest {
        model: "smollm2-135m".into(),
        prompt: Prompt::Text(prompt.into()),
        max_tokens,
        temperature: None,
        top_p: None,
        seed: Some(seed),
        stop: vec![],
        metadata: None,
        session_id: None,
        session_turn: None,
        include_usage: false,
        options: Default::default(),
        unattended: false,
        response: None,
        continuation: None,
    }
}

struct Timing {
    ttft: Duration,
    total: Duration,
    tokens: u32,
}

async fn one(backend: &LocalBackend, prompt: &str, max_tokens: u32, seed: u64) -> Timing {
    let started = Instant::now();
    let mut stream = backend.generate(request(prompt, max_tokens, seed), CancellationToken::new());
    let mut ttft = None;
    let mut tokens = 0;
    while let Some(item) = stream.next().await {
        match item {
            Ok(Output::Token { .. }) => {
                ttft.get_or_insert_with(|| started.elapsed());
                tokens += 1;
            }
            Ok(Output::Done { .. }) => break,
            Ok(Output::Prompt { .. }) => {}
            // The local model writes text only.
            Ok(
                Output::Reasoning { .. }
                | Output::ToolCall { .. }
                | Output::Refusal { .. }
                | Output::Logprobs { .. },
            ) => {}
            Err(e) => {
                eprintln!("error: {e}");
                break;
            }
        }
    }
    Timing {
        ttft: ttft.unwrap_or_default(),
        total: started.elapsed(),
        tokens,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tokens: u32 = std::env::var("BENCH_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let path = std::env::var_os("SPOOL_MODEL_PATH").map(Into::into);
    let started = Instant::now();
    let (backend, handle) = LocalBackend::start(path, None)?;
    while !backend.ready() {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("the model did not load");
        }
    }
    println!(
        "load: {:.2} s (RSS {:.0} MB)",
        started.elapsed().as_secs_f64(),
        rss_mb("VmRSS:")
    );
    // ~30 prompt tokens with the template's system prompt.
    let prompt = "Explain why the sky is blue.";
    // Warm up.
    one(&backend, prompt, 8, 1).await;
    let mut ttfts = Vec::new();
    for seed in 0..5 {
        ttfts.push(one(&backend, prompt, 1, seed).await.ttft);
    }
    ttfts.sort();
    println!(
        "ttft (~30-token prompt, median of 5): {:.0} ms",
        ttfts[2].as_secs_f64() * 1e3
    );
    // Throughput: a prompt that makes long answers (a stream ending early counts less).
    let prompt = "Write a long, detailed story about a dragon who learns to cook.";
    let solo = one(&backend, prompt, tokens, 42).await;
    let decode = (solo.tokens.saturating_sub(1)) as f64 / (solo.total - solo.ttft).as_secs_f64();
    println!(
        "single stream decode: {decode:.1} tok/s ({} tokens)",
        solo.tokens
    );
    for n in [1usize, 2, 4, 8] {
        let t0 = Instant::now();
        let runs = futures_util::future::join_all(
            (0..n).map(|i| one(&backend, prompt, tokens, 100 + i as u64)),
        )
        .await;
        let total: u32 = runs.iter().map(|r| r.tokens).sum();
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "{n} streams: {:.1} tok/s aggregate ({total} tokens in {secs:.2} s)",
            total as f64 / secs
        );
    }
    // A long prompt: prefill cost and decode speed deep in the context.
    let long = "The history of the river is long and full of change. ".repeat(80);
    let long_run = one(&backend, &format!("{long}Summarize this."), tokens, 7).await;
    let long_decode =
        (long_run.tokens.saturating_sub(1)) as f64 / (long_run.total - long_run.ttft).as_secs_f64();
    println!(
        "~1000-token prompt: ttft {:.0} ms, then {long_decode:.1} tok/s",
        long_run.ttft.as_secs_f64() * 1e3
    );
    println!(
        "RSS now {:.0} MB, peak {:.0} MB",
        rss_mb("VmRSS:"),
        rss_mb("VmHWM:")
    );
    handle.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
