//! The relay scenario: spool with `SPOOL_BACKEND=openai` in front of a mock OpenAI
//! upstream (this tool, `--upstream-server`), N concurrent streams read as spool's
//! native SSE; then, in the same run, the same load sent straight to a fresh upstream
//! (`POST /v1/chat/completions`, `stream: true`). The relay's CPU per token is that of
//! spool and the upstream together; the direct path's is the upstream's alone.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::Instant;

use crate::Cli;
use crate::client;
use crate::procs::{Kind, Mem, Options, Target};
use crate::report::{Row, Section, Target as Goal};
use crate::scenarios::{
    Load, Meter, StreamOutcome, drive_one, drive_with, error_notes, mb, micros, pct_ms, per_1k,
    start,
};
use crate::upstream::MODEL;

/// LiteLLM relaying the same kind of upstream, measured on this machine (the issue's
/// figures): tokens/s, CPU-s per 1k tokens, streams of 500 left without a token.
const LITELLM_TPS: f64 = 1_500.0;
const LITELLM_CPU_PER_1K: f64 = 0.65;
const LITELLM_STARVED: u32 = 335;
/// Issue 16's targets against the direct path: tokens/s at least this multiple, CPU per
/// token (spool + upstream) at most this multiple, TTFT p50 at most this multiple (many
/// streams) or at most `TTFT_ONE_RATIO` × direct + `TTFT_ONE_PLUS_MS` (one stream).
const TPS_RATIO_MIN: f64 = 0.8;
const CPU_RATIO_MAX: f64 = 2.0;
const TTFT_RATIO_MAX: f64 = 2.0;
const TTFT_ONE_RATIO: f64 = 1.5;
const TTFT_ONE_PLUS_MS: f64 = 2.0;

/// One path's figures (the relay: spool + upstream; direct: the upstream alone).
struct Run {
    load: Load,
    /// spool's CPU over the measured phase (relay only).
    spool_cpu: Option<f64>,
    /// The part of it on the store's threads (SQLite).
    store_cpu: Option<f64>,
    upstream_cpu: Option<f64>,
    client_cpu: Option<f64>,
    spool_mem: Option<Mem>,
    upstream_mem: Option<Mem>,
    listen_drops: Option<u64>,
    notes: Vec<String>,
}

impl Run {
    /// Nothing ran: every stream is an error, and `why` is the note.
    fn failed(streams: usize, tokens: u32, error: &str, why: String) -> Run {
        let mut load = Load {
            expected: streams as u64 * u64::from(tokens),
            ..Default::default()
        };
        *load.errors.entry(error.to_owned()).or_default() += streams as u64;
        Run {
            load,
            spool_cpu: None,
            store_cpu: None,
            upstream_cpu: None,
            client_cpu: None,
            spool_mem: None,
            upstream_mem: None,
            listen_drops: None,
            notes: vec![why],
        }
    }

    /// CPU of every server process of the path.
    fn servers_cpu(&self, relay: bool) -> Option<f64> {
        if relay {
            self.spool_cpu.zip(self.upstream_cpu).map(|(s, u)| s + u)
        } else {
            self.upstream_cpu
        }
    }

    fn tps(&self) -> Option<f64> {
        Some(self.load.tokens as f64 / self.load.wall.max(1e-9)).filter(|_| self.load.wall > 0.0)
    }
}

fn upstream_opts(cli: &Cli) -> Options {
    Options {
        upstream_batch: cli.upstream_batch,
        ..Default::default()
    }
}

async fn run_relay(cli: &Cli, target: &Target, streams: usize, tokens: u32) -> anyhow::Result<Run> {
    if let Target::External { .. } = target {
        return Ok(Run::failed(
            streams,
            tokens,
            "spool not started",
            "relay: spool must be spawned by this tool with the upstream's URL; --url cannot be \
             used for this scenario"
                .into(),
        ));
    }
    let upstream = start(Kind::Upstream, target, &upstream_opts(cli)).await?;
    let opts = Options {
        upstream: Some(upstream.addr),
        limits: Some((streams.max(1024), streams.max(4096))),
        ..Default::default()
    };
    let spool = match start(Kind::Spool, target, &opts).await {
        Ok(s) => s,
        Err(e) => {
            upstream.stop().await;
            return Ok(Run::failed(
                streams,
                tokens,
                "spool (SPOOL_BACKEND=openai) did not start",
                format!("relay: spool did not start with SPOOL_BACKEND=openai: {e:#}"),
            ));
        }
    };
    let up_meter = Meter::start(&upstream);
    let meter = Meter::start(&spool);
    let deadline = Instant::now() + cli.deadline();
    let body = format!("{{\"model\":\"{MODEL}\",\"prompt\":\"x\",\"max_tokens\":{tokens}}}");
    let addr = spool.addr;
    let request = Arc::new(client::post_json(addr, "/v1/streams", &body, true));
    let load = drive_with(streams, tokens, || {
        drive_one(addr, request.clone(), tokens, deadline, None)
    })
    .await;
    // Both processes' CPU is read before either is stopped.
    let upstream_cpu = up_meter.server_cpu(&upstream);
    let upstream_mem = upstream.mem();
    let obs = meter.finish(spool).await;
    let up_obs = up_meter.finish(upstream).await;
    let mut notes = obs.notes;
    notes.extend(up_obs.notes);
    Ok(Run {
        load,
        spool_cpu: obs.server_cpu,
        store_cpu: obs.store_cpu,
        upstream_cpu,
        client_cpu: obs.client_cpu,
        spool_mem: obs.mem,
        upstream_mem,
        listen_drops: obs.listen_drops,
        notes,
    })
}

async fn run_direct(
    cli: &Cli,
    target: &Target,
    streams: usize,
    tokens: u32,
) -> anyhow::Result<Run> {
    let upstream = start(Kind::Upstream, target, &upstream_opts(cli)).await?;
    let meter = Meter::start(&upstream);
    let deadline = Instant::now() + cli.deadline();
    let body = format!(
        "{{\"model\":\"{MODEL}\",\"messages\":[{{\"role\":\"user\",\"content\":\"x\"}}],\
         \"max_tokens\":{tokens},\"stream\":true,\"stream_options\":{{\"include_usage\":true}}}}"
    );
    let addr = upstream.addr;
    let request = Arc::new(client::post_json(addr, "/v1/chat/completions", &body, true));
    let load = drive_with(streams, tokens, || {
        direct_one(addr, request.clone(), tokens, deadline)
    })
    .await;
    let obs = meter.finish(upstream).await;
    Ok(Run {
        load,
        spool_cpu: None,
        store_cpu: None,
        upstream_cpu: obs.server_cpu,
        client_cpu: obs.client_cpu,
        spool_mem: None,
        upstream_mem: obs.mem,
        listen_drops: obs.listen_drops,
        notes: obs.notes,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether a chunk carries a non-empty `delta.content` (a token).
fn has_content(data: &[u8]) -> bool {
    const KEY: &[u8] = b"\"content\":\"";
    find(data, KEY).is_some_and(|at| data.get(at + KEY.len()) != Some(&b'"'))
}

/// One OpenAI chunk stream, straight from the upstream: content deltas are tokens; it
/// must end with a `finish_reason` (on a chunk without content, as the mock upstream
/// sends it) and then `data: [DONE]`.
async fn direct_one(
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    expected: u32,
    deadline: Instant,
) -> StreamOutcome {
    let start = Instant::now();
    let mut o = StreamOutcome {
        gaps: Vec::with_capacity(expected as usize),
        ..Default::default()
    };
    let mut r =
        match tokio::time::timeout_at(deadline, client::open(addr, &request, 16 * 1024)).await {
            Err(_) => {
                o.error = Some("deadline before the response head".into());
                return o;
            }
            Ok(Err(e)) => {
                o.error = Some(format!("request failed: {:?}", e.kind()));
                return o;
            }
            Ok(Ok(r)) => r,
        };
    if r.status != 200 {
        o.error = Some(format!("HTTP {}", r.status));
        return o;
    }
    let mut last_token: Option<Instant> = None;
    let mut finished = false;
    let mut done = false;
    let mut bad: Option<&'static str> = None;
    let end = r
        .read_events(deadline, None, |ev, now| {
            if done {
                bad.get_or_insert("data after [DONE]");
            }
            if ev.data == b"[DONE]" {
                done = true;
                return true;
            }
            if ev.event != b"message" {
                bad.get_or_insert("an event with an event: line");
            }
            if has_content(ev.data) {
                o.tokens += 1;
                if o.ttft_us.is_none() {
                    o.ttft_us = Some(micros(now - start));
                }
                if let Some(prev) = last_token {
                    o.gaps.push(micros(now - prev));
                }
                last_token = Some(now);
            } else if find(ev.data, b"\"finish_reason\":\"").is_some() {
                finished = true;
            }
            true
        })
        .await;
    o.error = match end {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Some("deadline".into()),
        Err(e) => Some(format!("read failed: {e}")),
        Ok(_) if bad.is_some() => bad.map(str::to_owned),
        Ok(_) if !done => Some("ended before [DONE]".into()),
        Ok(_) if !finished => Some("no finish_reason".into()),
        Ok(_) if o.tokens != expected => Some("wrong number of tokens".into()),
        Ok(_) => None,
    };
    o
}

pub async fn relay(cli: &Cli, target: &Target) -> anyhow::Result<Section> {
    let streams = cli.relay_streams.max(1);
    let tokens = cli.relay_tokens.max(1);
    let relay = run_relay(cli, target, streams, tokens).await?;
    let direct = if cli.no_baseline {
        None
    } else {
        Some(run_direct(cli, target, streams, tokens).await?)
    };
    let row = |name: &str, unit: &'static str, f: &dyn Fn(&Run, bool) -> Option<f64>| -> Row {
        Row::new(
            name,
            unit,
            f(&relay, true),
            direct.as_ref().and_then(|d| f(d, false)),
        )
    };
    let spool_only = |name: &str, unit: &'static str, v: Option<f64>| Row::new(name, unit, v, None);
    let rows = vec![
        row("tokens delivered", "", &|r, _| Some(r.load.tokens as f64)),
        row("streams complete", "", &|r, _| Some(r.load.complete as f64)),
        row("streams served (>= 1 token)", "", &|r, _| {
            Some(r.load.served as f64)
        })
        .target(Goal::Min(streams as f64)),
        row("streams without a token", "", &|r, _| {
            Some((streams as u64).saturating_sub(r.load.served) as f64)
        }),
        row("tokens/s", "", &|r, _| r.tps()).target(Goal::RatioMin(TPS_RATIO_MIN)),
        row("wall time", "s", &|r, _| Some(r.load.wall)),
        row(
            "CPU per 1k tokens: relay total (spool + upstream) / direct (upstream)",
            "CPU-s",
            &|r, relay| per_1k(r.servers_cpu(relay), r.load.tokens),
        )
        .target(Goal::RatioMax(CPU_RATIO_MAX)),
        spool_only(
            "spool CPU per 1k tokens",
            "CPU-s",
            per_1k(relay.spool_cpu, relay.load.tokens),
        ),
        spool_only(
            "of which the store's threads (SQLite)",
            "CPU-s",
            per_1k(relay.store_cpu, relay.load.tokens),
        ),
        row("upstream CPU per 1k tokens", "CPU-s", &|r, _| {
            per_1k(r.upstream_cpu, r.load.tokens)
        }),
        row("server CPU, all processes", "% of one core", &|r, relay| {
            r.servers_cpu(relay)
                .filter(|_| r.load.wall > 0.0)
                .map(|c| 100.0 * c / r.load.wall)
        }),
        row("client CPU per 1k tokens", "CPU-s", &|r, _| {
            per_1k(r.client_cpu, r.load.tokens)
        }),
        row("TTFT p50", "ms", &|r, _| pct_ms(&r.load.ttft, 0.50)).target(if streams == 1 {
            Goal::Within {
                ratio: TTFT_ONE_RATIO,
                plus: TTFT_ONE_PLUS_MS,
            }
        } else {
            Goal::RatioMax(TTFT_RATIO_MAX)
        }),
        row("TTFT p99", "ms", &|r, _| pct_ms(&r.load.ttft, 0.99)),
        row("TTFT max", "ms", &|r, _| {
            r.load.ttft.last().map(|t| f64::from(*t) / 1000.0)
        }),
        row("inter-token gap p50", "ms", &|r, _| {
            pct_ms(&r.load.gaps, 0.50)
        }),
        row("inter-token gap p99", "ms", &|r, _| {
            pct_ms(&r.load.gaps, 0.99)
        }),
        spool_only(
            "spool peak RSS (VmHWM)",
            "MB",
            relay.spool_mem.map(|m| mb(m.hwm_kb)),
        ),
        row("upstream peak RSS (VmHWM)", "MB", &|r, _| {
            r.upstream_mem.map(|m| mb(m.hwm_kb))
        }),
        row("listen queue overflows", "SYNs dropped", &|r, _| {
            r.listen_drops.map(|d| d as f64)
        }),
        row("errors", "streams", &|r, _| {
            Some(r.load.errors.values().sum::<u64>() as f64)
        })
        .target(Goal::Max(0.0)),
    ];
    let mut notes = vec![
        format!(
            "spool (relay): spool with SPOOL_BACKEND=openai in front of the mock upstream; clients POST \
             /v1/streams {{\"model\":\"{MODEL}\",\"max_tokens\":{tokens}}} and read spool's native SSE. \
             direct: the same load straight to a fresh upstream process (POST /v1/chat/completions, \
             stream=true, include_usage), content deltas counted as tokens"
        ),
        match cli.upstream_batch.clamp(1, 64) {
            1 => "the mock upstream is unpaced and flushes every chunk in its own write while the socket \
                  keeps up (--upstream-batch 1), as a token-by-token server does"
                .to_owned(),
            n => format!(
                "the mock upstream is unpaced and lets hyper coalesce up to {n} ready chunks per write \
                 (--upstream-batch {n}; hyper queues at most 16 buffers per write)"
            ),
        },
        format!(
            "targets (issue 16): tokens/s >= {TPS_RATIO_MIN}x direct; CPU per 1k tokens relay total / \
             direct <= {CPU_RATIO_MAX}x; TTFT p50 <= {TTFT_RATIO_MAX}x direct (one stream: \
             <= {TTFT_ONE_RATIO}x direct + {TTFT_ONE_PLUS_MS} ms); every stream served"
        ),
    ];
    let relay_cpu = per_1k(relay.servers_cpu(true), relay.load.tokens);
    notes.push(format!(
        "for scale, LiteLLM measured here: {} tokens/s, {LITELLM_CPU_PER_1K} CPU-s per 1k tokens, \
         {LITELLM_STARVED} of 500 streams without a token; spool (relay) here: {} tokens/s ({}x \
         LiteLLM's), {} CPU-s per 1k tokens (spool + upstream), {} of {streams} streams without a token",
        LITELLM_TPS,
        relay.tps().map(crate::report::num).unwrap_or_else(|| "-".into()),
        relay
            .tps()
            .map(|t| crate::report::num(t / LITELLM_TPS))
            .unwrap_or_else(|| "-".into()),
        relay_cpu.map(crate::report::num).unwrap_or_else(|| "-".into()),
        (streams as u64).saturating_sub(relay.load.served),
    ));
    for (name, r) in std::iter::once(("relay", &relay)).chain(direct.iter().map(|d| ("direct", d)))
    {
        if let Some(d) = r.listen_drops.filter(|&d| d > 0) {
            notes.push(format!(
                "while the {name} path ran, the kernel dropped {d} connection attempts on a full \
                 listen queue; those clients retried after about 1 s, which shows in TTFT p99/max"
            ));
        }
        error_notes(name, &r.load.errors, &mut notes);
        notes.extend(r.notes.iter().cloned());
    }
    Ok(Section {
        name: "relay",
        columns: ["spool (relay)", "direct"],
        title: format!(
            "{streams} concurrent streams × {tokens} tokens through spool's openai backend vs straight \
             to the mock upstream"
        ),
        rows,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_deltas() {
        assert!(has_content(
            br#"{"choices":[{"index":0,"delta":{"content":" tok1"}}]}"#
        ));
        assert!(!has_content(
            br#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#
        ));
        assert!(!has_content(br#"{"choices":[],"usage":{}}"#));
    }
}
