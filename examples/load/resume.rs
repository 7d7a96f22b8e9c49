//! The resume scenario: drop connections mid-stream (mid-event too), resume with
//! `Last-Event-ID`, and compare byte for byte with an unbroken reader.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::Cli;
use crate::client::{self, End};
use crate::procs::{Kind, Options, Target};
use crate::report::{Row, Section, Target as Goal};
use crate::scenarios::{
    Errors, Meter, Observed, add_error, error_notes, figure, kinds, mb, micros, pct_ms, start,
};

/// xorshift64: deterministic drop points without another crate.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Default)]
struct ResumeTotals {
    cycles: u64,
    exact: u64,
    mismatched: u64,
    failed: u64,
    streams: u64,
    streams_exact: u64,
    replays: u64,
    replay_exact: u64,
    reconnect_us: Vec<u32>,
    examples: Vec<String>,
    errors: Errors,
}

impl ResumeTotals {
    fn merge(&mut self, o: ResumeTotals) {
        self.cycles += o.cycles;
        self.exact += o.exact;
        self.mismatched += o.mismatched;
        self.failed += o.failed;
        self.streams += o.streams;
        self.streams_exact += o.streams_exact;
        self.replays += o.replays;
        self.replay_exact += o.replay_exact;
        self.reconnect_us.extend(o.reconnect_us);
        for e in o.examples {
            if self.examples.len() < 5 {
                self.examples.push(e);
            }
        }
        for (e, n) in o.errors {
            *self.errors.entry(e).or_default() += n;
        }
    }
}

struct Shared {
    addr: SocketAddr,
    claimed: AtomicU64,
    committed: AtomicU64,
    target: u64,
    tokens: u32,
    max_drop: u64,
    deadline: Instant,
}

impl Shared {
    fn claim(&self) -> bool {
        self.claimed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.target).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        self.claimed.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every event of a response, raw, until its body ends.
async fn collect_all(mut r: client::Response, deadline: Instant) -> Result<Vec<Vec<u8>>, String> {
    let mut events = Vec::new();
    r.read_events(deadline, None, |ev, _| {
        events.push(ev.raw.to_vec());
        true
    })
    .await
    .map_err(|e| format!("{e}"))?;
    Ok(events)
}

fn is_terminal(raw: &[u8]) -> bool {
    raw.windows(12).any(|w| w == b"\nevent: done")
        || raw.windows(13).any(|w| w == b"\nevent: error")
}

fn show(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).replace('\n', "\\n")
}

struct Segment {
    from: u64,
    after_drop: bool,
    events: Vec<Vec<u8>>,
}

async fn resume_stream(s: &Shared, rng: &mut Rng, t: &mut ResumeTotals) -> Result<(), String> {
    let request = client::post_stream(s.addr, s.tokens, true);
    let post = tokio::time::timeout_at(s.deadline, client::open(s.addr, &request, 4096))
        .await
        .map_err(|_| "deadline".to_owned())?
        .map_err(|e| format!("POST failed: {:?}", e.kind()))?;
    if post.status != 200 {
        return Err(format!("POST: HTTP {}", post.status));
    }
    let id = post
        .stream_id
        .clone()
        .ok_or_else(|| "POST: no X-Stream-Id header".to_owned())?;
    let deadline = s.deadline;
    let reference = tokio::spawn(collect_all(post, deadline));

    let mut segments: Vec<Segment> = Vec::new();
    let mut last: Option<u64> = None;
    let mut terminal = false;
    let mut drops = 0u64;
    let mut after_drop = false;
    let mut failure: Option<String> = None;
    for _attempt in 0..10_000 {
        if terminal {
            break;
        }
        let limit = s.claim().then(|| 1 + rng.below(s.max_drop));
        let release = |s: &Shared| {
            if limit.is_some() {
                s.release();
            }
        };
        let t0 = Instant::now();
        let request = client::get_events(s.addr, &id, last);
        let mut r =
            match tokio::time::timeout_at(deadline, client::open(s.addr, &request, 2048)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    release(s);
                    failure = Some(format!("GET failed: {:?}", e.kind()));
                    break;
                }
                Err(_) => {
                    release(s);
                    failure = Some("deadline".into());
                    break;
                }
            };
        if r.status != 200 {
            release(s);
            failure = Some(format!(
                "GET with Last-Event-ID {last:?}: HTTP {}",
                r.status
            ));
            break;
        }
        let from = last.unwrap_or(0);
        let mut events = Vec::new();
        let mut first_at = None;
        let end = r
            .read_events(deadline, limit.map(|l| l as usize), |ev, now| {
                first_at.get_or_insert(now);
                events.push(ev.raw.to_vec());
                if let Some(id) = ev.id {
                    last = Some(id);
                }
                if ev.event == b"done" || ev.event == b"error" {
                    terminal = true;
                }
                true
            })
            .await;
        if after_drop && let Some(at) = first_at {
            t.reconnect_us.push(micros(at - t0));
        }
        segments.push(Segment {
            from,
            after_drop,
            events,
        });
        // Every reconnect sends Last-Event-ID (0 if no event was complete yet).
        last = Some(last.unwrap_or(0));
        after_drop = false;
        match end {
            Ok(End::Limit) if !terminal => {
                drops += 1;
                after_drop = true;
                s.committed.fetch_add(1, Ordering::Relaxed);
                drop(r);
                let pause = rng.below(21);
                if pause > 0 {
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
            Ok(_) => {
                release(s);
                if !terminal {
                    add_error(&mut t.errors, "connection ended before the terminal event");
                }
            }
            Err(e) => {
                release(s);
                failure = Some(if e.kind() == std::io::ErrorKind::TimedOut {
                    "deadline".into()
                } else {
                    format!("read failed: {e}")
                });
                break;
            }
        }
    }
    let reference = match reference.await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(format!("unbroken reader: {e}")),
        Err(e) => return Err(format!("unbroken reader task: {e}")),
    };
    t.streams += 1;
    t.cycles += drops;
    let mut stream_ok = failure.is_none() && terminal;
    let reference_ok = reference.last().is_some_and(|e| is_terminal(e));
    if !reference_ok {
        add_error(
            &mut t.errors,
            "unbroken reader did not reach the terminal event",
        );
        stream_ok = false;
    }
    let mut resumed = 0;
    for seg in &segments {
        let from = seg.from as usize;
        let expected = reference.get(from..from + seg.events.len());
        let ok = expected == Some(&seg.events[..]);
        if !ok {
            stream_ok = false;
            if t.examples.len() < 5 {
                let k = (0..seg.events.len())
                    .find(|&k| reference.get(from + k) != Some(&seg.events[k]))
                    .unwrap_or(0);
                t.examples.push(format!(
                    "stream {id}, resumed after {from}: got `{}`, the unbroken reader had `{}`",
                    seg.events.get(k).map_or("nothing".into(), |e| show(e)),
                    reference
                        .get(from + k)
                        .map_or("nothing".into(), |e| show(e)),
                ));
            }
        }
        if seg.after_drop {
            resumed += 1;
            if ok && reference_ok {
                t.exact += 1;
            } else {
                t.mismatched += 1;
            }
        }
    }
    t.failed += drops.saturating_sub(resumed);
    if stream_ok
        && segments
            .last()
            .is_some_and(|g| g.from as usize + g.events.len() == reference.len())
    {
        t.streams_exact += 1;
    }
    if let Some(f) = failure {
        return Err(f);
    }
    // And a reader that comes after the end reads the same bytes from the store.
    let request = client::get_events(s.addr, &id, None);
    let replay = async {
        let r = tokio::time::timeout_at(deadline, client::open(s.addr, &request, 4096))
            .await
            .map_err(|_| "deadline".to_owned())?
            .map_err(|e| format!("replay GET failed: {:?}", e.kind()))?;
        if r.status != 200 {
            return Err(format!("replay GET: HTTP {}", r.status));
        }
        collect_all(r, deadline).await
    }
    .await?;
    t.replays += 1;
    if replay == reference {
        t.replay_exact += 1;
    } else if t.examples.len() < 5 {
        t.examples.push(format!(
            "stream {id}: the replay after the end differs from the unbroken reader"
        ));
    }
    Ok(())
}

async fn resume_worker(s: Arc<Shared>, mut rng: Rng) -> ResumeTotals {
    let mut t = ResumeTotals::default();
    let mut consecutive_errors = 0;
    while s.committed.load(Ordering::Relaxed) < s.target
        && Instant::now() < s.deadline
        && consecutive_errors < 20
    {
        match resume_stream(&s, &mut rng, &mut t).await {
            Ok(()) => consecutive_errors = 0,
            Err(e) => {
                consecutive_errors += 1;
                add_error(&mut t.errors, e);
            }
        }
    }
    t
}

struct ResumeRun {
    totals: ResumeTotals,
    wall: f64,
    obs: Observed,
}

async fn run_resume(kind: Kind, cli: &Cli, target: &Target) -> anyhow::Result<ResumeRun> {
    let opts = Options {
        rate: cli.resume_rate,
        baseline_batch: cli.baseline_batch,
        ..Default::default()
    };
    let server = start(kind, target, &opts).await?;
    let meter = Meter::start(&server);
    let shared = Arc::new(Shared {
        addr: server.addr,
        claimed: AtomicU64::new(0),
        committed: AtomicU64::new(0),
        target: cli.cycles,
        tokens: cli.resume_tokens.max(1),
        max_drop: cli.max_drop_bytes.max(1),
        deadline: Instant::now() + cli.deadline(),
    });
    let t0 = Instant::now();
    let handles: Vec<_> = (0..cli.resume_concurrency.max(1))
        .map(|w| {
            let rng = Rng::new(cli.seed ^ ((w as u64 + 1) << 20));
            tokio::spawn(resume_worker(shared.clone(), rng))
        })
        .collect();
    let mut totals = ResumeTotals::default();
    for h in handles {
        match h.await {
            Ok(t) => totals.merge(t),
            Err(e) => add_error(&mut totals.errors, format!("client task: {e}")),
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    totals.reconnect_us.sort_unstable();
    let obs = meter.finish(server).await;
    Ok(ResumeRun { totals, wall, obs })
}

pub async fn resume(cli: &Cli, target: &Target) -> anyhow::Result<Section> {
    let mut runs = Vec::new();
    for kind in kinds(cli) {
        runs.push((kind, run_resume(kind, cli, target).await?));
    }
    let row = |name: &str, unit: &'static str, f: &dyn Fn(&ResumeRun) -> Option<f64>| {
        Row::new(
            name,
            unit,
            figure(&runs, Kind::Spool, f),
            figure(&runs, Kind::Baseline, f),
        )
    };
    let cycles = cli.cycles as f64;
    let rows = vec![
        row("drop-and-resume cycles", "", &|r| {
            Some(r.totals.cycles as f64)
        })
        .target(Goal::Min(cycles)),
        row("exact cycles", "", &|r| Some(r.totals.exact as f64)).target(Goal::Min(cycles)),
        row("mismatched cycles", "", &|r| {
            Some(r.totals.mismatched as f64)
        })
        .target(Goal::Max(0.0)),
        row("cycles whose reconnect failed", "", &|r| {
            Some(r.totals.failed as f64)
        })
        .target(Goal::Max(0.0)),
        row("streams", "", &|r| Some(r.totals.streams as f64)),
        row("streams exact end to end", "", &|r| {
            Some(r.totals.streams_exact as f64)
        }),
        row("replays after the end exact", "", &|r| {
            Some(r.totals.replay_exact as f64)
        }),
        row("resume: first event p50", "ms", &|r| {
            pct_ms(&r.totals.reconnect_us, 0.5)
        }),
        row("resume: first event p99", "ms", &|r| {
            pct_ms(&r.totals.reconnect_us, 0.99)
        }),
        row("wall time", "s", &|r| Some(r.wall)),
        row("server CPU", "CPU-s", &|r| r.obs.server_cpu),
        row("peak RSS (VmHWM)", "MB", &|r| {
            r.obs.mem.map(|m| mb(m.hwm_kb))
        }),
        row("listen queue overflows", "SYNs dropped", &|r| {
            r.obs.listen_drops.map(|d| d as f64)
        }),
        row("errors", "", &|r| {
            Some(r.totals.errors.values().sum::<u64>() as f64)
        })
        .target(Goal::Max(0.0)),
    ];
    let mut notes = vec![format!(
        "each cycle drops the connection after 1..={} body bytes (mid-event too), waits 0-20 ms and \
         reconnects with Last-Event-ID; its events are compared byte for byte with an unbroken reader of \
         the same stream (the POST response)",
        cli.max_drop_bytes
    )];
    if !cli.no_baseline {
        notes.push(
            "the baseline regenerates any suffix from the stream id (no store), so its exactness is by construction; \
             it is there for the CPU and latency comparison"
                .into(),
        );
    }
    for (kind, r) in &runs {
        error_notes(kind.name(), &r.totals.errors, &mut notes);
        for e in &r.totals.examples {
            notes.push(format!("{} mismatch: {e}", kind.name()));
        }
        notes.extend(r.obs.notes.iter().cloned());
    }
    Ok(Section {
        name: "resume",
        columns: crate::report::SPOOL_BASELINE,
        title: format!(
            "{} drop-and-resume cycles, {} streams in flight, {} tokens at {} tokens/s",
            cli.cycles, cli.resume_concurrency, cli.resume_tokens, cli.resume_rate
        ),
        rows,
        notes,
    })
}
