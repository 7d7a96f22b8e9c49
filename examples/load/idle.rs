//! The idle scenario: many open SSE readers on stalled streams; the server's memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Cli;
use crate::client::{self, End};
use crate::procs::{self, Kind, Mem, Options, Target};
use crate::report::{Row, Section, Target as Goal};
use crate::scenarios::{Errors, Meter, Observed, add_error, error_notes, figure, kinds, mb, start};

struct IdleRun {
    readers: usize,
    /// With the streams created, before any reader.
    mem_before: Option<Mem>,
    ready: usize,
    open_secs: f64,
    mem_open: Option<Mem>,
    idle_cpu: Option<f64>,
    client_rss_kb: Option<u64>,
    errors: Errors,
    obs: Observed,
}

async fn create_stream(addr: SocketAddr, deadline: Instant) -> Result<String, String> {
    let request = client::post_stream(addr, 16, false);
    let mut r = tokio::time::timeout_at(deadline, client::open(addr, &request, 4096))
        .await
        .map_err(|_| "deadline".to_owned())?
        .map_err(|e| format!("POST failed: {e}"))?;
    let body = r
        .body(deadline)
        .await
        .map_err(|e| format!("POST body: {e}"))?;
    if r.status != 201 {
        return Err(format!("POST: HTTP {}", r.status));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("POST body is not JSON: {e}"))?;
    v.get("id")
        .and_then(|i| i.as_str())
        .map(str::to_owned)
        .ok_or_else(|| "POST body has no id".to_owned())
}

async fn run_idle(
    kind: Kind,
    cli: &Cli,
    target: &Target,
    readers: usize,
) -> anyhow::Result<IdleRun> {
    let opts = Options {
        rate: 0.0,
        stall_after: Some(1),
        heartbeat: Some("1h"),
        baseline_batch: cli.baseline_batch,
        ..Default::default()
    };
    let server = start(kind, target, &opts).await?;
    let addr = server.addr;
    let meter = Meter::start(&server);
    let deadline = Instant::now() + cli.deadline();
    let mut errors = Errors::new();
    let mut ids = Vec::new();
    for _ in 0..cli.idle_streams.max(1) {
        match create_stream(addr, deadline).await {
            Ok(id) => ids.push(Arc::<str>::from(id)),
            Err(e) => add_error(&mut errors, e),
        }
    }
    if ids.is_empty() {
        let obs = meter.finish(server).await;
        return Ok(IdleRun {
            readers,
            mem_before: None,
            ready: 0,
            open_secs: 0.0,
            mem_open: None,
            idle_cpu: None,
            client_rss_kb: None,
            errors,
            obs,
        });
    }
    let mem_before = server.mem();
    let ready = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    // Connections are opened at most this many at a time (the accept backlog).
    let opening = Arc::new(Semaphore::new(256));
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(readers);
    for i in 0..readers {
        let id = ids[i % ids.len()].clone();
        let (ready, failed, stop, opening) =
            (ready.clone(), failed.clone(), stop.clone(), opening.clone());
        handles.push(tokio::spawn(async move {
            let Ok(permit) = opening.acquire_owned().await else {
                return Some("semaphore closed".to_owned());
            };
            let request = client::get_events(addr, &id, None);
            let opened = async {
                let mut r = tokio::time::timeout_at(deadline, client::open(addr, &request, 512))
                    .await
                    .map_err(|_| "deadline before the response head".to_owned())?
                    .map_err(|e| format!("request failed: {:?}", e.kind()))?;
                if r.status != 200 {
                    return Err(format!("HTTP {}", r.status));
                }
                let end = r
                    .read_events(deadline, None, |ev, _| ev.event != b"start")
                    .await
                    .map_err(|e| format!("before start: {e}"))?;
                if end != End::Stopped {
                    return Err("closed before the start event".to_owned());
                }
                Ok(r)
            }
            .await;
            drop(permit);
            let mut r = match opened {
                Ok(r) => r,
                Err(e) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return Some(e);
                }
            };
            ready.fetch_add(1, Ordering::Relaxed);
            let far = Instant::now() + Duration::from_secs(24 * 3600);
            tokio::select! {
                _ = stop.cancelled() => None,
                end = r.read_events(far, None, |_, _| true) => Some(match end {
                    Ok(_) => "closed while idle".to_owned(),
                    Err(e) => format!("failed while idle: {:?}", e.kind()),
                }),
            }
        }));
    }
    while ready.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < readers
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open_secs = t0.elapsed().as_secs_f64();
    let ready_n = ready.load(Ordering::Relaxed);
    // Let the server settle, then read its memory and its CPU over a quiet spell.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mem_open = server.mem();
    let cpu_a = server.cpu_secs();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_cpu = server.cpu_secs().zip(cpu_a).map(|(b, a)| b - a);
    let client_rss_kb = procs::mem(std::process::id()).map(|m| m.rss_kb);
    stop.cancel();
    for h in handles {
        match tokio::time::timeout(Duration::from_secs(30), h).await {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(e))) => add_error(&mut errors, e),
            Ok(Err(e)) => add_error(&mut errors, format!("client task: {e}")),
            Err(_) => add_error(&mut errors, "reader did not stop"),
        }
    }
    let obs = meter.finish(server).await;
    Ok(IdleRun {
        readers,
        mem_before,
        ready: ready_n,
        open_secs,
        mem_open,
        idle_cpu,
        client_rss_kb,
        errors,
        obs,
    })
}

pub async fn idle(cli: &Cli, target: &Target, fd_limit: u64) -> anyhow::Result<Section> {
    let mut notes = Vec::new();
    let mut readers = cli.readers;
    let need = readers as u64 + 512;
    if fd_limit < need {
        let reduced = fd_limit.saturating_sub(512) as usize;
        notes.push(format!(
            "the open-file limit ({fd_limit}) is too low for {readers} readers (each reader is one \
             socket here and one in the server): raise it with `ulimit -n {need}` (hard limit too); \
             ran with {reduced} readers"
        ));
        println!("load: {}", notes[0]);
        readers = reduced;
    }
    if let Some(ports) = procs::ephemeral_ports()
        && (ports as usize) < readers + 1000
    {
        notes.push(format!(
            "only {ports} ephemeral ports (net.ipv4.ip_local_port_range) for {readers} connections"
        ));
    }
    if matches!(target, Target::External { .. }) {
        notes.push(
            "external spool: its streams stall only if it runs with SPOOL_MOCK_STALL_AFTER=1 \
             (and a long SPOOL_HEARTBEAT)"
                .into(),
        );
    }
    let mut runs = Vec::new();
    for kind in kinds(cli) {
        runs.push((kind, run_idle(kind, cli, target, readers).await?));
    }
    let row = |name: &str, unit: &'static str, f: &dyn Fn(&IdleRun) -> Option<f64>| {
        Row::new(
            name,
            unit,
            figure(&runs, Kind::Spool, f),
            figure(&runs, Kind::Baseline, f),
        )
    };
    let rows = vec![
        row("readers holding the stream open", "", &|r| {
            Some(r.ready as f64)
        })
        .target(Goal::Min(readers as f64)),
        row("time to open all readers", "s", &|r| Some(r.open_secs)),
        row("server RSS with readers open (VmRSS)", "MB", &|r| {
            r.mem_open.map(|m| mb(m.rss_kb))
        })
        .target(Goal::Max(300.0)),
        row("server peak RSS (VmHWM)", "MB", &|r| {
            r.mem_open.map(|m| mb(m.hwm_kb))
        })
        .target(Goal::Max(300.0)),
        row("server RSS added per reader", "KB", &|r| {
            r.mem_open
                .zip(r.mem_before)
                .filter(|_| r.ready > 0)
                .map(|(open, before)| (open.rss_kb as f64 - before.rss_kb as f64) / r.ready as f64)
        }),
        row("server CPU over 3 s of idle", "CPU-s", &|r| r.idle_cpu),
        row("server CPU, whole scenario", "CPU-s", &|r| r.obs.server_cpu),
        row("client RSS", "MB", &|r| r.client_rss_kb.map(mb)),
        row("listen queue overflows", "SYNs dropped", &|r| {
            r.obs.listen_drops.map(|d| d as f64)
        }),
        row("errors", "readers", &|r| {
            Some(r.errors.values().sum::<u64>() as f64)
        })
        .target(Goal::Max(0.0)),
    ];
    for (kind, r) in &runs {
        error_notes(kind.name(), &r.errors, &mut notes);
        notes.extend(r.obs.notes.iter().cloned());
        if r.readers != readers {
            notes.push(format!("{}: {} readers", kind.name(), r.readers));
        }
    }
    Ok(Section {
        name: "idle",
        columns: crate::report::SPOOL_BASELINE,
        title: format!(
            "{readers} idle SSE readers over {} stalled streams",
            cli.idle_streams.max(1)
        ),
        rows,
        notes,
    })
}
