//! The ws scenario: many WebSocket connections to `/v1/ws`, each asking for one paced
//! stream with a `generate` message and reading `started`, the `token` messages and
//! `done`. There is no WebSocket baseline server: spool's figures stand alone.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use crate::Cli;
use crate::procs::{Kind, Mem, Options, Target};
use crate::report::{Row, Section, Target as Goal};
use crate::scenarios::{
    Errors, Meter, Observed, add_error, error_notes, mb, micros, pct_ms, per_1k, start,
};

/// WebSocket handshakes in flight at once: well under spool's listen backlog, so the
/// kernel's accept queue is not what this measures.
const CONNECTS_IN_FLIGHT: usize = 64;

/// Why a socket did not end with a complete stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// TCP connect or the WebSocket handshake failed.
    Connect,
    /// The server sent an `error` message.
    ErrorMessage,
    /// The socket closed (close frame, EOF or reset) before `done`.
    ClosedEarly,
    /// Anything else: deadline, wrong count, messages out of order, ….
    Other,
}

#[derive(Default)]
struct SocketOutcome {
    connected: bool,
    tokens: u32,
    in_window: u32,
    ttft_us: Option<u32>,
    gaps: Vec<u32>,
    error: Option<(Failure, String)>,
}

/// The members of a server message this client looks at.
#[derive(Deserialize)]
struct Msg<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    stream_id: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, rename = "ref", borrow)]
    reference: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
}

struct Shared {
    addr: SocketAddr,
    generate: String,
    expected: u32,
    window: Duration,
    deadline: Instant,
    connecting: Semaphore,
    /// Sockets whose connect attempt has resolved (either way).
    connects_resolved: AtomicUsize,
    /// Sockets open right now.
    open: AtomicUsize,
    /// Sockets that have finished reading (either way).
    finished: AtomicUsize,
    sockets: usize,
    /// Cancelled once every socket has finished reading: sockets are held open until
    /// then, so "all sockets open" is a real state of the run, and then closed.
    release: CancellationToken,
}

fn ws_error(e: &WsError) -> (Failure, String) {
    match e {
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            (Failure::ClosedEarly, "socket closed before done".into())
        }
        WsError::Io(io) => (
            Failure::ClosedEarly,
            format!("socket failed before done: {:?}", io.kind()),
        ),
        WsError::Protocol(p) => (
            Failure::ClosedEarly,
            format!("protocol error before done: {p}"),
        ),
        other => (Failure::Other, format!("read failed: {other}")),
    }
}

async fn drive_socket(s: Arc<Shared>) -> SocketOutcome {
    let mut o = SocketOutcome::default();
    if let Err(e) = run_socket(&s, &mut o).await {
        o.error = Some(e);
    }
    o
}

impl Shared {
    /// Called once per socket when it has finished reading (or failed to connect);
    /// the last one releases every socket held open.
    fn finished_reading(&self) {
        if self.finished.fetch_add(1, Ordering::AcqRel) + 1 == self.sockets {
            self.release.cancel();
        }
    }
}

async fn run_socket(s: &Shared, o: &mut SocketOutcome) -> Result<(), (Failure, String)> {
    let connected = {
        let Ok(_permit) = s.connecting.acquire().await else {
            s.connects_resolved.fetch_add(1, Ordering::AcqRel);
            s.finished_reading();
            return Err((Failure::Other, "semaphore closed".into()));
        };
        let attempt = async {
            let tcp = TcpStream::connect(s.addr)
                .await
                .map_err(|e| format!("TCP connect failed: {:?}", e.kind()))?;
            tcp.set_nodelay(true)
                .map_err(|e| format!("TCP_NODELAY: {e}"))?;
            let config = WebSocketConfig::default()
                .read_buffer_size(8 * 1024)
                .write_buffer_size(0);
            let (ws, _) = tokio_tungstenite::client_async_with_config(
                format!("ws://{}/v1/ws", s.addr),
                tcp,
                Some(config),
            )
            .await
            .map_err(|e| match e {
                WsError::Http(r) => format!("handshake: HTTP {}", r.status()),
                other => format!("handshake failed: {other}"),
            })?;
            Ok::<_, String>(ws)
        };
        let result = tokio::time::timeout_at(s.deadline, attempt).await;
        s.connects_resolved.fetch_add(1, Ordering::AcqRel);
        if !matches!(result, Ok(Ok(_))) {
            s.finished_reading();
        }
        match result {
            Err(_) => return Err((Failure::Connect, "deadline before the handshake".into())),
            Ok(Err(e)) => return Err((Failure::Connect, e)),
            Ok(Ok(ws)) => ws,
        }
    };
    let mut ws = connected;
    o.connected = true;
    s.open.fetch_add(1, Ordering::AcqRel);
    let result = stream_on(s, &mut ws, o).await;
    s.finished_reading();
    // Hold the socket until every socket has finished reading, then close it.
    if result.is_ok() {
        tokio::select! {
            _ = s.release.cancelled() => {}
            _ = tokio::time::sleep_until(s.deadline) => {}
        }
    }
    let closing = async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;
    s.open.fetch_sub(1, Ordering::AcqRel);
    result
}

type Socket = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn stream_on(
    s: &Shared,
    ws: &mut Socket,
    o: &mut SocketOutcome,
) -> Result<(), (Failure, String)> {
    o.gaps.reserve_exact(s.expected as usize);
    let sent = Instant::now();
    ws.send(Message::text(s.generate.clone()))
        .await
        .map_err(|e| ws_error(&e))?;
    let window_end = sent + s.window;
    let mut stream_id: Option<String> = None;
    let mut next_seq: Option<u64> = None;
    let mut last_token: Option<Instant> = None;
    loop {
        let frame = match tokio::time::timeout_at(s.deadline, ws.next()).await {
            Err(_) => return Err((Failure::Other, "deadline".into())),
            Ok(None) => return Err((Failure::ClosedEarly, "socket closed before done".into())),
            Ok(Some(Err(e))) => return Err(ws_error(&e)),
            Ok(Some(Ok(frame))) => frame,
        };
        let now = Instant::now();
        let text = match &frame {
            Message::Text(t) => t.as_str(),
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(c) => {
                return Err((
                    Failure::ClosedEarly,
                    match c {
                        Some(c) => format!("close frame {} before done", u16::from(c.code)),
                        None => "close frame before done".into(),
                    },
                ));
            }
            Message::Binary(_) | Message::Frame(_) => {
                return Err((Failure::Other, "a non-text frame".into()));
            }
        };
        let msg: Msg<'_> = serde_json::from_str(text)
            .map_err(|e| (Failure::Other, format!("message is not JSON: {e}")))?;
        match msg.kind.as_ref() {
            "started" => {
                if stream_id.is_some() {
                    return Err((Failure::Other, "a second started message".into()));
                }
                if msg.reference.as_deref() != Some("r") {
                    return Err((Failure::Other, "started without our ref".into()));
                }
                let Some(id) = msg.stream_id else {
                    return Err((Failure::Other, "started without a stream_id".into()));
                };
                stream_id = Some(id.into_owned());
            }
            "token" | "done" => {
                if stream_id.is_none() || msg.stream_id.as_deref() != stream_id.as_deref() {
                    return Err((
                        Failure::Other,
                        format!("{} before started, or of another stream", msg.kind),
                    ));
                }
                let Some(seq) = msg.seq else {
                    return Err((Failure::Other, format!("{} without a seq", msg.kind)));
                };
                if next_seq.is_some_and(|n| n != seq) {
                    return Err((Failure::Other, "seqs are not consecutive".into()));
                }
                next_seq = Some(seq + 1);
                if msg.kind == "done" {
                    if o.tokens != s.expected {
                        return Err((Failure::Other, "wrong number of tokens".into()));
                    }
                    return Ok(());
                }
                o.tokens += 1;
                if o.ttft_us.is_none() {
                    o.ttft_us = Some(micros(now - sent));
                }
                if let Some(prev) = last_token {
                    o.gaps.push(micros(now - prev));
                }
                last_token = Some(now);
                if now <= window_end {
                    o.in_window += 1;
                }
            }
            "error" => {
                return Err((
                    Failure::ErrorMessage,
                    format!(
                        "error message ({})",
                        msg.code.as_deref().unwrap_or("no code")
                    ),
                ));
            }
            "pong" | "session" => {}
            other => {
                return Err((Failure::Other, format!("unexpected message type {other:?}")));
            }
        }
    }
}

struct WsRun {
    sockets: usize,
    expected: u64,
    connected: u64,
    complete: u64,
    tokens: u64,
    in_window: u64,
    ttft: Vec<u32>,
    gaps: Vec<u32>,
    wall: f64,
    connect_secs: f64,
    /// Server memory once every connect attempt had resolved.
    mem_open: Option<Mem>,
    /// Sockets open at that moment.
    open_at_sample: usize,
    connect_failures: u64,
    error_messages: u64,
    closed_early: u64,
    other_failures: u64,
    errors: Errors,
    obs: Observed,
}

async fn run_ws(
    cli: &Cli,
    target: &Target,
    sockets: usize,
    tokens: u32,
    rate: f64,
    window: Duration,
) -> anyhow::Result<WsRun> {
    let opts = Options {
        rate,
        baseline_batch: cli.baseline_batch,
        ..Default::default()
    };
    let server = start(Kind::Spool, target, &opts).await?;
    let meter = Meter::start(&server);
    let deadline = Instant::now() + cli.deadline();
    let shared = Arc::new(Shared {
        addr: server.addr,
        generate: format!(r#"{{"type":"generate","ref":"r","prompt":"x","max_tokens":{tokens}}}"#),
        expected: tokens,
        window,
        deadline,
        connecting: Semaphore::new(CONNECTS_IN_FLIGHT),
        connects_resolved: AtomicUsize::new(0),
        open: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
        sockets,
        release: CancellationToken::new(),
    });
    if sockets == 0 {
        shared.release.cancel();
    }
    let t0 = Instant::now();
    let handles: Vec<_> = (0..sockets)
        .map(|_| tokio::spawn(drive_socket(shared.clone())))
        .collect();
    // Every connect attempt resolved: the server's memory with (nearly) all sockets open.
    while shared.connects_resolved.load(Ordering::Acquire) < sockets && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    let mem_open = server.mem();
    let open_at_sample = shared.open.load(Ordering::Acquire);
    // Wall time runs to the last `done` (sockets close after that).
    tokio::select! {
        _ = shared.release.cancelled() => {}
        _ = tokio::time::sleep_until(deadline) => {}
    }
    let wall = t0.elapsed().as_secs_f64();
    let mut run = WsRun {
        sockets,
        expected: sockets as u64 * u64::from(tokens),
        connected: 0,
        complete: 0,
        tokens: 0,
        in_window: 0,
        ttft: Vec::with_capacity(sockets),
        gaps: Vec::with_capacity(sockets * tokens as usize),
        wall,
        connect_secs,
        mem_open,
        open_at_sample,
        connect_failures: 0,
        error_messages: 0,
        closed_early: 0,
        other_failures: 0,
        errors: Errors::new(),
        obs: Observed {
            listen_drops: None,
            server_cpu: None,
            store_cpu: None,
            client_cpu: None,
            mem: None,
            notes: Vec::new(),
        },
    };
    for h in handles {
        match tokio::time::timeout(Duration::from_secs(30), h).await {
            Ok(Ok(o)) => {
                run.connected += u64::from(o.connected);
                run.tokens += u64::from(o.tokens);
                run.in_window += u64::from(o.in_window);
                run.ttft.extend(o.ttft_us);
                run.gaps.extend_from_slice(&o.gaps);
                match o.error {
                    None => run.complete += 1,
                    Some((failure, e)) => {
                        *match failure {
                            Failure::Connect => &mut run.connect_failures,
                            Failure::ErrorMessage => &mut run.error_messages,
                            Failure::ClosedEarly => &mut run.closed_early,
                            Failure::Other => &mut run.other_failures,
                        } += 1;
                        add_error(&mut run.errors, e);
                    }
                }
            }
            Ok(Err(e)) => {
                run.other_failures += 1;
                add_error(&mut run.errors, format!("client task: {e}"));
            }
            Err(_) => {
                run.other_failures += 1;
                add_error(&mut run.errors, "socket task did not stop");
            }
        }
    }
    run.obs = meter.finish(server).await;
    run.ttft.sort_unstable();
    run.gaps.sort_unstable();
    Ok(run)
}

pub async fn ws(cli: &Cli, target: &Target, fd_limit: u64) -> anyhow::Result<Section> {
    let tokens = cli.ws_tokens.max(1);
    let rate = if cli.ws_rate > 0.0 { cli.ws_rate } else { 20.0 };
    let window =
        Duration::from_secs_f64(f64::from(tokens) / rate) + Duration::from_millis(cli.grace_ms);
    let mut notes = vec![
        "no WebSocket baseline server: spool's figures only, without ratios".to_owned(),
        format!(
            "a token counts as delivered if it arrives within {:.2} s (tokens/rate + {} ms) of its socket's generate message",
            window.as_secs_f64(),
            cli.grace_ms
        ),
    ];
    let mut sockets = cli.ws_sockets;
    let need = sockets as u64 + 512;
    if fd_limit < need {
        let reduced = fd_limit.saturating_sub(512) as usize;
        let note = format!(
            "the open-file limit ({fd_limit}) is too low for {sockets} sockets: raise it with \
             `ulimit -n {need}` (hard limit too); ran with {reduced} sockets"
        );
        println!("load: {note}");
        notes.push(note);
        sockets = reduced;
    }
    if matches!(target, Target::External { .. }) {
        notes.push(format!(
            "external spool: its mock rate is its own (this scenario assumes SPOOL_MOCK_RATE={rate})"
        ));
    }
    let r = run_ws(cli, target, sockets, tokens, rate, window).await?;
    let row = |name: &str, unit: &'static str, v: Option<f64>| Row::new(name, unit, v, None);
    let count = |n: u64| Some(n as f64);
    let rows = vec![
        row("sockets connected", "", count(r.connected)),
        row("streams complete", "", count(r.complete)),
        row(
            "demand delivered in window",
            "%",
            Some(100.0 * r.in_window as f64 / r.expected.max(1) as f64),
        )
        .target(Goal::Min(99.0)),
        row("tokens delivered", "", count(r.tokens)),
        row("tokens/s", "", Some(r.tokens as f64 / r.wall.max(1e-9))),
        row("time to connect all sockets", "s", Some(r.connect_secs)),
        row("wall time", "s", Some(r.wall)),
        row(
            "server CPU per 1k tokens",
            "CPU-s",
            per_1k(r.obs.server_cpu, r.tokens),
        ),
        row(
            "server CPU",
            "% of one core",
            r.obs.server_cpu.map(|c| 100.0 * c / r.wall.max(1e-9)),
        ),
        row(
            "client CPU per 1k tokens",
            "CPU-s",
            per_1k(r.obs.client_cpu, r.tokens),
        ),
        row(
            "client CPU",
            "% of one core",
            r.obs.client_cpu.map(|c| 100.0 * c / r.wall.max(1e-9)),
        ),
        row("TTFT p50", "ms", pct_ms(&r.ttft, 0.50)),
        row("TTFT p99", "ms", pct_ms(&r.ttft, 0.99)),
        row(
            "TTFT max",
            "ms",
            r.ttft.last().map(|t| f64::from(*t) / 1000.0),
        ),
        row("inter-token gap p50", "ms", pct_ms(&r.gaps, 0.50)),
        row("inter-token gap p99", "ms", pct_ms(&r.gaps, 0.99)).target(Goal::Max(60.0)),
        row(
            "inter-token gap max",
            "ms",
            r.gaps.last().map(|g| f64::from(*g) / 1000.0),
        ),
        row(
            "server peak RSS (VmHWM)",
            "MB",
            r.obs.mem.map(|m| mb(m.hwm_kb)),
        ),
        row(
            "server RSS with all sockets open (VmRSS)",
            "MB",
            r.mem_open.map(|m| mb(m.rss_kb)),
        ),
        row(
            "listen queue overflows",
            "SYNs dropped",
            r.obs.listen_drops.map(|d| d as f64),
        ),
        row("connect failures", "sockets", count(r.connect_failures)),
        row("error messages", "sockets", count(r.error_messages)),
        row("sockets closed early", "sockets", count(r.closed_early)),
        row(
            "errors",
            "sockets",
            Some(r.errors.values().sum::<u64>() as f64),
        )
        .target(Goal::Max(0.0)),
    ];
    if r.open_at_sample < r.sockets {
        notes.push(format!(
            "{} of {} sockets were open when the all-open RSS was read",
            r.open_at_sample, r.sockets
        ));
    }
    if r.other_failures > 0 {
        notes.push(format!(
            "{} sockets failed otherwise (deadline, protocol, count)",
            r.other_failures
        ));
    }
    if let Some(d) = r.obs.listen_drops.filter(|&d| d > 0) {
        notes.push(format!(
            "the kernel dropped {d} connection attempts on a full listen queue while spool ran"
        ));
    }
    error_notes("spool", &r.errors, &mut notes);
    notes.extend(r.obs.notes.iter().cloned());
    Ok(Section {
        name: "ws",
        columns: crate::report::SPOOL_BASELINE,
        title: format!(
            "{sockets} WebSocket connections × 1 generate of {tokens} tokens at {rate} tokens/s each"
        ),
        rows,
        notes,
    })
}
