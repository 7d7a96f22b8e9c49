//! Durable Streams benchmark: spool (`target/release/spool`, SQLite) against the
//! protocol's Node reference server (`@durable-streams/server`, file store) in the same
//! run, with the same client, on the same machine. Figures (issue 21):
//!
//! - appends/s from N concurrent producers, each appending small JSON messages to a
//!   stream of its own, one request at a time (each answered once durable);
//! - server CPU per 1,000 such appends (from `/proc`);
//! - catch-up read MB/s of one stream of many small messages, read from the start by
//!   following `Stream-Next-Offset`;
//! - live fan-out lag to R SSE readers of one stream: from a message's append to its
//!   arrival at each reader (p50, p99).
//!
//! ```text
//! cargo build --release && bash tests/clients/install.sh
//! cargo run --release --example ds_bench -- [--producers 16] [--seconds 5] [--readers 500]
//! ```
//! Prints one table with spool/reference ratios (the machine is shared: compare ratios).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;

#[derive(Debug, Parser)]
struct Cli {
    /// The spool binary.
    #[arg(long, default_value = "target/release/spool")]
    spool_bin: PathBuf,
    /// Where `tests/clients/install.sh` put the Node packages.
    #[arg(long, default_value = "target/tmp/clients/node")]
    node_dir: PathBuf,
    /// Concurrent producers.
    #[arg(long, default_value_t = 16)]
    producers: usize,
    /// How long the producers append.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Messages of the catch-up stream.
    #[arg(long, default_value_t = 20_000)]
    catchup_messages: usize,
    /// Live SSE readers of one stream.
    #[arg(long, default_value_t = 500)]
    readers: usize,
    /// Messages appended while they read.
    #[arg(long, default_value_t = 100)]
    live_messages: usize,
}

struct Server {
    name: &'static str,
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` and waits for its `listening on URL` line (stdout or stderr).
fn start(name: &'static str, mut cmd: Command, dir: tempfile::TempDir, suffix: &str) -> Server {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{name}: {e}"));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(i) = line.find("listening on http://") {
                    let url = line[i + "listening on ".len()..]
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send(url);
                }
            }
        });
    }
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{name} did not start"));
    Server {
        name,
        child,
        base: format!("{}{suffix}", url.trim_end_matches('/')),
        _dir: dir,
    }
}

fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    appends_per_s: f64,
    cpu_ms_per_1k: f64,
    catchup_mb_s: f64,
    lag_p50_ms: f64,
    lag_p99_ms: f64,
}

async fn put(client: &reqwest::Client, url: &str, body: &str) {
    let r = client
        .put(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "PUT {url}: {}", r.status());
}

async fn post(client: &reqwest::Client, url: &str, body: String) -> bool {
    client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

async fn measure(cli: &Cli, server: &Server) -> Figures {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(cli.producers * 2)
        .build()
        .unwrap();
    let base = &server.base;
    let pid = server.child.id();
    let run = now_micros();
    let mut figures = Figures::default();

    // 1. Appends from N producers, and the server's CPU for them.
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for p in 0..cli.producers {
        let url = format!("{base}/v1/stream/bench-{run}-p{p}");
        put(&client, &url, "[]").await;
        let (client, count) = (client.clone(), count.clone());
        let seconds = cli.seconds;
        tasks.push(tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(seconds);
            let mut i = 0u64;
            while Instant::now() < until {
                if post(
                    &client,
                    &url,
                    format!("{{\"p\":{p},\"i\":{i},\"msg\":\"hello\"}}"),
                )
                .await
                {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    let cpu0 = cpu_secs(pid);
    let t0 = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs(pid) - cpu0;
    let n = count.load(Ordering::Relaxed) as f64;
    figures.appends_per_s = n / secs;
    figures.cpu_ms_per_1k = cpu * 1000.0 / n * 1000.0;

    // 2. Catch-up reads of one stream of small messages.
    let url = format!("{base}/v1/stream/bench-{run}-catchup");
    put(&client, &url, "[]").await;
    for batch in (0..cli.catchup_messages).collect::<Vec<_>>().chunks(500) {
        let body: Vec<String> = batch
            .iter()
            .map(|i| format!("{{\"i\":{i},\"text\":\"a small message of a stream\"}}"))
            .collect();
        assert!(post(&client, &url, format!("[{}]", body.join(","))).await);
    }
    let mut bytes = 0usize;
    let t0 = Instant::now();
    for _ in 0..5 {
        let mut offset = "-1".to_owned();
        loop {
            let r = client
                .get(format!("{url}?offset={offset}"))
                .send()
                .await
                .unwrap();
            let next = r.headers()["stream-next-offset"]
                .to_str()
                .unwrap()
                .to_owned();
            let done = r.headers().contains_key("stream-up-to-date");
            bytes += r.bytes().await.unwrap().len();
            if done || next == offset {
                break;
            }
            offset = next;
        }
    }
    figures.catchup_mb_s = bytes as f64 / 1e6 / t0.elapsed().as_secs_f64();

    // 3. Live fan-out: R SSE readers, one producer stamping each message.
    let url = format!("{base}/v1/stream/bench-{run}-live");
    put(&client, &url, "[]").await;
    let lags = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ready = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    let reader_client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for _ in 0..cli.readers {
        let (client, url, lags, ready) = (
            reader_client.clone(),
            url.clone(),
            lags.clone(),
            ready.clone(),
        );
        let want = cli.live_messages;
        readers.push(tokio::spawn(async move {
            let r = client
                .get(format!("{url}?offset=now&live=sse"))
                .send()
                .await
                .unwrap();
            ready.fetch_add(1, Ordering::Relaxed);
            let mut body = r.bytes_stream();
            let mut pending = String::new();
            let mut got = 0;
            let mut mine = Vec::with_capacity(want);
            while got < want {
                let Some(Ok(chunk)) = body.next().await else {
                    break;
                };
                pending.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(i) = pending.find("\n\n") {
                    let block: String = pending.drain(..i + 2).collect();
                    if !block.starts_with("event: data") && !block.starts_with("event:data") {
                        continue;
                    }
                    let at = now_micros();
                    for t in block.split("\"t\":").skip(1) {
                        let digits: String = t.chars().take_while(char::is_ascii_digit).collect();
                        if let Ok(sent) = digits.parse::<u64>() {
                            mine.push(at.saturating_sub(sent) as f64 / 1000.0);
                            got += 1;
                        }
                    }
                }
            }
            lags.lock().unwrap().extend(mine);
        }));
    }
    let until = Instant::now() + Duration::from_secs(30);
    while ready.load(Ordering::Relaxed) < cli.readers as u64 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..cli.live_messages {
        assert!(
            post(
                &client,
                &url,
                format!("{{\"i\":{i},\"t\":{}}}", now_micros())
            )
            .await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for r in readers {
        let _ = tokio::time::timeout(Duration::from_secs(30), r).await;
    }
    let mut lags = lags.lock().unwrap().clone();
    lags.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lags.get(((lags.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    figures.lag_p50_ms = pct(0.5);
    figures.lag_p99_ms = pct(0.99);
    eprintln!(
        "{}: {} lag samples of {} expected",
        server.name,
        lags.len(),
        cli.readers * cli.live_messages
    );
    figures
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let dir = tempfile::tempdir().unwrap();
    let mut spool_cmd = Command::new(&cli.spool_bin);
    spool_cmd
        .arg("serve")
        .env("SPOOL_BACKEND", "mock")
        .env("SPOOL_ADDR", "127.0.0.1:0")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("bench.db").display()),
        )
        .env("SPOOL_MAX_CONNECTIONS", "16384");
    let spool = start("spool", spool_cmd, dir, "/ds");
    let spool_figures = measure(&cli, &spool).await;
    drop(spool);

    let dir = tempfile::tempdir().unwrap();
    let script = cli.node_dir.join("ds_reference_server.mjs");
    std::fs::copy("tests/clients/ds_reference_server.mjs", &script).unwrap();
    let mut node_cmd = Command::new("node");
    node_cmd.arg(&script).arg(dir.path());
    let reference = start("reference", node_cmd, dir, "");
    let reference_figures = measure(&cli, &reference).await;
    drop(reference);

    let (s, r) = (spool_figures, reference_figures);
    println!(
        "Durable Streams, {} producers for {} s, {} catch-up messages, {} live readers x {} messages",
        cli.producers, cli.seconds, cli.catchup_messages, cli.readers, cli.live_messages
    );
    println!(
        "{:<34} {:>12} {:>12} {:>8}  ahead?",
        "figure", "spool", "reference", "ratio"
    );
    let row = |name: &str, a: f64, b: f64, higher_is_better: bool| {
        let ratio = a / b;
        let ahead = if higher_is_better { a > b } else { a < b };
        println!(
            "{name:<34} {a:>12.1} {b:>12.1} {ratio:>7.2}x  {}",
            if ahead { "yes" } else { "no" }
        );
    };
    row("appends/s", s.appends_per_s, r.appends_per_s, true);
    row(
        "server CPU ms per 1k appends",
        s.cpu_ms_per_1k,
        r.cpu_ms_per_1k,
        false,
    );
    row("catch-up read MB/s", s.catchup_mb_s, r.catchup_mb_s, true);
    row(
        "live fan-out lag p50 (ms)",
        s.lag_p50_ms,
        r.lag_p50_ms,
        false,
    );
    row(
        "live fan-out lag p99 (ms)",
        s.lag_p99_ms,
        r.lag_p99_ms,
        false,
    );
}
