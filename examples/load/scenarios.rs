//! What the scenarios share, and the two streaming ones (throughput, paced). Each
//! scenario runs once against a fresh spool and once against a fresh baseline, then
//! turns both into one table.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::Cli;
use crate::client;
use crate::procs::{self, Kind, Mem, Options, Server, Target};
use crate::report::{Row, Section, Target as Goal};

pub(crate) type Errors = BTreeMap<String, u64>;

pub(crate) fn add_error(errors: &mut Errors, e: impl Into<String>) {
    *errors.entry(e.into()).or_default() += 1;
}

pub(crate) fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

/// The q-quantile of a sorted slice of microseconds, in milliseconds.
pub(crate) fn pct_ms(sorted: &[u32], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(f64::from(sorted[idx]) / 1000.0)
}

pub(crate) fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// What /proc and the server's log said over one measured phase.
pub(crate) struct Observed {
    /// Connections the kernel dropped on a full listen queue (system-wide).
    pub listen_drops: Option<u64>,
    pub server_cpu: Option<f64>,
    /// The part of `server_cpu` spent on the store's connection threads (SQLite).
    pub store_cpu: Option<f64>,
    pub client_cpu: Option<f64>,
    pub mem: Option<Mem>,
    pub notes: Vec<String>,
}

/// Samples CPU at the start of a phase.
pub(crate) struct Meter {
    overflows: Option<u64>,
    server: Option<f64>,
    store: Option<f64>,
    client: Option<f64>,
}

impl Meter {
    pub(crate) fn start(server: &Server) -> Meter {
        Meter {
            overflows: procs::listen_overflows(),
            server: server.cpu_secs(),
            store: server.store_cpu_secs(),
            client: procs::self_cpu_secs(),
        }
    }

    /// The server's CPU since `start`, without stopping it.
    pub(crate) fn server_cpu(&self, server: &Server) -> Option<f64> {
        server.cpu_secs().zip(self.server).map(|(b, a)| b - a)
    }

    /// CPU since `start`, memory now, and the log; then stops the server.
    pub(crate) async fn finish(self, server: Server) -> Observed {
        let server_cpu = server.cpu_secs().zip(self.server).map(|(b, a)| b - a);
        let store_cpu = server.store_cpu_secs().zip(self.store).map(|(b, a)| b - a);
        let client_cpu = procs::self_cpu_secs().zip(self.client).map(|(b, a)| b - a);
        let mem = server.mem();
        let listen_drops = procs::listen_overflows()
            .zip(self.overflows)
            .map(|(b, a)| b.saturating_sub(a));
        let mut notes = Vec::new();
        let name = server.kind.name();
        if let Ok(log) = server.log.lock()
            && log.problems > 0
        {
            notes.push(format!(
                "{name} logged {} warning/error lines; first ones:",
                log.problems
            ));
            notes.extend(log.kept.iter().map(|l| format!("  {name}| {l}")));
        }
        let external = !server.is_child();
        let stopped = server.stop().await;
        if !external {
            match stopped.graceful {
                Some(t) if t > Duration::from_secs(2) => notes.push(format!(
                    "{name} took {:.1} s to exit after SIGTERM",
                    t.as_secs_f64()
                )),
                Some(_) => {}
                None if stopped.status.is_some() => notes.push(format!(
                    "{name} did not exit within 12 s of SIGTERM and was killed"
                )),
                None => {}
            }
            if let Some(status) = stopped.status
                && stopped.graceful.is_some()
                && !status.success()
                && name == "spool"
            {
                notes.push(format!("{name} exited with {status} after SIGTERM"));
            }
        }
        Observed {
            listen_drops,
            server_cpu,
            store_cpu,
            client_cpu,
            mem,
            notes,
        }
    }
}

pub(crate) async fn start(kind: Kind, target: &Target, opts: &Options) -> anyhow::Result<Server> {
    procs::start(kind, target, opts).await
}

pub(crate) fn kinds(cli: &Cli) -> Vec<Kind> {
    if cli.no_baseline {
        vec![Kind::Spool]
    } else {
        vec![Kind::Spool, Kind::Baseline]
    }
}

// ---------------------------------------------------------------------------------
// throughput and paced: N concurrent streams read from the first event to `done`

#[derive(Default)]
pub(crate) struct StreamOutcome {
    pub tokens: u32,
    pub in_window: u32,
    pub ttft_us: Option<u32>,
    pub gaps: Vec<u32>,
    pub error: Option<String>,
}

/// One SSE stream of spool's wire format (`POST /v1/streams` with `Accept:
/// text/event-stream`), read from `start` to `done`.
pub(crate) async fn drive_one(
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    expected: u32,
    deadline: Instant,
    window: Option<Duration>,
) -> StreamOutcome {
    let start = Instant::now();
    let window_end = window.map(|w| start + w);
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
    let mut next_id = 1u64;
    let mut last_token: Option<Instant> = None;
    let mut done = false;
    let mut bad: Option<&'static str> = None;
    let end = r
        .read_events(deadline, None, |ev, now| {
            if ev.id != Some(next_id) {
                bad.get_or_insert("event ids are not 1..=n in order");
            }
            next_id = ev.id.unwrap_or(next_id) + 1;
            match ev.event {
                b"token" => {
                    o.tokens += 1;
                    if o.ttft_us.is_none() {
                        o.ttft_us = Some(micros(now - start));
                    }
                    if let Some(prev) = last_token {
                        o.gaps.push(micros(now - prev));
                    }
                    last_token = Some(now);
                    if window_end.is_none_or(|w| now <= w) {
                        o.in_window += 1;
                    }
                }
                b"start" => {
                    if ev.id != Some(1) {
                        bad.get_or_insert("start is not event 1");
                    }
                }
                b"done" => done = true,
                b"error" => {
                    bad.get_or_insert("error event");
                }
                _ => {
                    bad.get_or_insert("unknown event kind");
                }
            }
            true
        })
        .await;
    o.error = match end {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Some("deadline".into()),
        Err(e) => Some(format!("read failed: {e}")),
        Ok(_) if bad.is_some() => bad.map(str::to_owned),
        Ok(_) if !done => Some("ended before done".into()),
        Ok(_) if o.tokens != expected => Some("wrong number of tokens".into()),
        Ok(_) => None,
    };
    o
}

#[derive(Default)]
pub(crate) struct Load {
    pub expected: u64,
    pub tokens: u64,
    pub in_window: u64,
    pub complete: u64,
    /// Streams that got at least one token.
    pub served: u64,
    pub errors: Errors,
    pub wall: f64,
    pub ttft: Vec<u32>,
    pub gaps: Vec<u32>,
}

pub(crate) async fn drive(
    addr: SocketAddr,
    streams: usize,
    tokens: u32,
    window: Option<Duration>,
    deadline: Instant,
) -> Load {
    let request = Arc::new(client::post_stream(addr, tokens, true));
    drive_with(streams, tokens, || {
        drive_one(addr, request.clone(), tokens, deadline, window)
    })
    .await
}

/// Runs `streams` concurrent streams of `tokens` tokens, each the future `one` makes,
/// and adds up their outcomes.
pub(crate) async fn drive_with<F, Fut>(streams: usize, tokens: u32, one: F) -> Load
where
    F: Fn() -> Fut,
    Fut: Future<Output = StreamOutcome> + Send + 'static,
{
    let t0 = Instant::now();
    let handles: Vec<_> = (0..streams).map(|_| tokio::spawn(one())).collect();
    let mut load = Load {
        expected: streams as u64 * u64::from(tokens),
        gaps: Vec::with_capacity(streams * tokens as usize),
        ..Default::default()
    };
    for h in handles {
        match h.await {
            Ok(o) => {
                load.tokens += u64::from(o.tokens);
                load.in_window += u64::from(o.in_window);
                if o.tokens > 0 {
                    load.served += 1;
                }
                load.ttft.extend(o.ttft_us);
                load.gaps.extend_from_slice(&o.gaps);
                match o.error {
                    Some(e) => add_error(&mut load.errors, e),
                    None => load.complete += 1,
                }
            }
            Err(e) => add_error(&mut load.errors, format!("client task: {e}")),
        }
    }
    load.wall = t0.elapsed().as_secs_f64();
    load.ttft.sort_unstable();
    load.gaps.sort_unstable();
    load
}

struct LoadRun {
    load: Load,
    obs: Observed,
}

async fn run_load(
    kind: Kind,
    cli: &Cli,
    target: &Target,
    opts: &Options,
    tokens: u32,
    window: Option<Duration>,
) -> anyhow::Result<LoadRun> {
    let server = start(kind, target, opts).await?;
    let meter = Meter::start(&server);
    let deadline = Instant::now() + cli.deadline();
    let load = drive(server.addr, cli.streams, tokens, window, deadline).await;
    let obs = meter.finish(server).await;
    Ok(LoadRun { load, obs })
}

pub(crate) fn per_1k(cpu: Option<f64>, tokens: u64) -> Option<f64> {
    cpu.filter(|_| tokens > 0)
        .map(|c| c / (tokens as f64 / 1000.0))
}

pub(crate) fn error_notes(name: &str, errors: &Errors, notes: &mut Vec<String>) {
    for (e, n) in errors {
        notes.push(format!("{name} errors: {n} × {e}"));
    }
}

pub(crate) fn figure<T>(
    runs: &[(Kind, T)],
    kind: Kind,
    f: impl Fn(&T) -> Option<f64>,
) -> Option<f64> {
    runs.iter()
        .find(|(k, _)| *k == kind)
        .and_then(|(_, r)| f(r))
}

/// Issue 16's targets: unlimited rate, CPU per token at most this multiple of the
/// baseline's; paced, this multiple and an inter-token gap p99 of at most this.
const CPU_RATIO_MAX: f64 = 3.0;
const PACED_CPU_RATIO_MAX: f64 = 1.5;
const PACED_GAP_P99_MAX_MS: f64 = 30.0;

/// Common rows of the two streaming scenarios.
fn load_rows(runs: &[(Kind, LoadRun)], paced: bool) -> (Vec<Row>, Vec<String>) {
    let s = |f: &dyn Fn(&LoadRun) -> Option<f64>| figure(runs, Kind::Spool, f);
    let b = |f: &dyn Fn(&LoadRun) -> Option<f64>| figure(runs, Kind::Baseline, f);
    let row = |name: &str, unit: &'static str, f: &dyn Fn(&LoadRun) -> Option<f64>| {
        Row::new(name, unit, s(f), b(f))
    };
    let mut rows = Vec::new();
    let tps = |r: &LoadRun| Some(r.load.tokens as f64 / r.load.wall.max(1e-9));
    let cpu = |r: &LoadRun| per_1k(r.obs.server_cpu, r.load.tokens);
    let ttft50 = |r: &LoadRun| pct_ms(&r.load.ttft, 0.50);
    let ttft99 = |r: &LoadRun| pct_ms(&r.load.ttft, 0.99);
    let gap50 = |r: &LoadRun| pct_ms(&r.load.gaps, 0.50);
    let gap99 = |r: &LoadRun| pct_ms(&r.load.gaps, 0.99);
    if paced {
        rows.push(
            row("demand delivered in window", "%", &|r| {
                Some(100.0 * r.load.in_window as f64 / r.load.expected.max(1) as f64)
            })
            .target(Goal::Min(99.0)),
        );
    }
    rows.push(row("tokens delivered", "", &|r| Some(r.load.tokens as f64)));
    rows.push(row("streams complete", "", &|r| {
        Some(r.load.complete as f64)
    }));
    let tps_row = row("tokens/s", "", &tps);
    rows.push(if paced {
        tps_row
    } else {
        tps_row.target(Goal::RatioMin(0.5))
    });
    rows.push(row("wall time", "s", &|r| Some(r.load.wall)));
    let cpu_row = row("server CPU per 1k tokens", "CPU-s", &cpu);
    rows.push(cpu_row.target(Goal::RatioMax(if paced {
        PACED_CPU_RATIO_MAX
    } else {
        CPU_RATIO_MAX
    })));
    rows.push(Row::new(
        "of which the store's threads (SQLite)",
        "CPU-s",
        s(&|r| per_1k(r.obs.store_cpu, r.load.tokens)),
        None,
    ));
    rows.push(row("server CPU", "% of one core", &|r| {
        r.obs.server_cpu.map(|c| 100.0 * c / r.load.wall.max(1e-9))
    }));
    rows.push(row("client CPU per 1k tokens", "CPU-s", &|r| {
        per_1k(r.obs.client_cpu, r.load.tokens)
    }));
    rows.push(row("TTFT p50", "ms", &ttft50));
    rows.push(row("TTFT max", "ms", &|r| {
        r.load.ttft.last().map(|t| f64::from(*t) / 1000.0)
    }));
    let t99 = row("TTFT p99", "ms", &ttft99);
    rows.push(if paced {
        t99.target(Goal::Max(100.0))
    } else {
        t99
    });
    rows.push(row("inter-token gap p50", "ms", &gap50));
    let g99 = row("inter-token gap p99", "ms", &gap99);
    rows.push(if paced {
        g99.target(Goal::Max(PACED_GAP_P99_MAX_MS))
    } else {
        g99
    });
    rows.push(row("inter-token gap max", "ms", &|r| {
        r.load.gaps.last().map(|g| f64::from(*g) / 1000.0)
    }));
    rows.push(row("peak RSS (VmHWM)", "MB", &|r| {
        r.obs.mem.map(|m| mb(m.hwm_kb))
    }));
    rows.push(row("listen queue overflows", "SYNs dropped", &|r| {
        r.obs.listen_drops.map(|d| d as f64)
    }));
    rows.push(
        row("errors", "streams", &|r| {
            Some(r.load.errors.values().sum::<u64>() as f64)
        })
        .target(Goal::Max(0.0)),
    );
    let mut notes = Vec::new();
    for (kind, r) in runs {
        if let Some(d) = r.obs.listen_drops.filter(|&d| d > 0) {
            notes.push(format!(
                "while {} ran, the kernel dropped {d} connection attempts on a full listen queue; \
                 those clients retried after about 1 s, which shows in TTFT p99/max",
                kind.name()
            ));
        }
        error_notes(kind.name(), &r.load.errors, &mut notes);
        notes.extend(r.obs.notes.iter().cloned());
    }
    (rows, notes)
}

pub async fn throughput(cli: &Cli, target: &Target) -> anyhow::Result<Section> {
    let tokens = cli.tokens.unwrap_or(256);
    let opts = Options {
        baseline_batch: cli.baseline_batch,
        ..Default::default()
    };
    let mut runs = Vec::new();
    for kind in kinds(cli) {
        runs.push((
            kind,
            run_load(kind, cli, target, &opts, tokens, None).await?,
        ));
    }
    let (rows, mut notes) = load_rows(&runs, false);
    if !cli.no_baseline {
        notes.insert(
            0,
            format!(
                "the baseline writes at most {} token event(s) per body frame (--baseline-batch)",
                cli.baseline_batch.max(1)
            ),
        );
    }
    Ok(Section {
        name: "throughput",
        columns: crate::report::SPOOL_BASELINE,
        title: format!(
            "{} concurrent streams × {tokens} tokens, mock rate unlimited",
            cli.streams
        ),
        rows,
        notes,
    })
}

pub async fn paced(cli: &Cli, target: &Target) -> anyhow::Result<Section> {
    let tokens = cli.tokens.unwrap_or(250);
    let rate = if cli.rate > 0.0 { cli.rate } else { 50.0 };
    let opts = Options {
        rate,
        baseline_batch: cli.baseline_batch,
        ..Default::default()
    };
    let window =
        Duration::from_secs_f64(f64::from(tokens) / rate) + Duration::from_millis(cli.grace_ms);
    let mut runs = Vec::new();
    for kind in kinds(cli) {
        runs.push((
            kind,
            run_load(kind, cli, target, &opts, tokens, Some(window)).await?,
        ));
    }
    let (rows, mut notes) = load_rows(&runs, true);
    notes.insert(
        0,
        format!(
            "a token counts as delivered if it arrives within {:.2} s (tokens/rate + {} ms) of its stream's request",
            window.as_secs_f64(),
            cli.grace_ms
        ),
    );
    Ok(Section {
        name: "paced",
        columns: crate::report::SPOOL_BASELINE,
        title: format!(
            "{} concurrent streams × {tokens} tokens at {rate} tokens/s each",
            cli.streams
        ),
        rows,
        notes,
    })
}
