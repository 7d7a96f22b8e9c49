//! Load tool: drives concurrent SSE streams against spool and, in the same invocation,
//! against a minimal in-memory SSE server (the baseline), and prints every figure with
//! its ratio to the baseline and the targets. The ws scenario drives WebSocket
//! connections to `/v1/ws`; it has no baseline, so it prints spool's figures alone.
//! The relay scenario puts spool (`SPOOL_BACKEND=openai`) in front of a mock OpenAI
//! upstream (this tool, `--upstream-server`) and compares it with the same load sent
//! straight to the upstream. The cluster scenario runs three spool nodes on one fresh
//! PostgreSQL database (`--pg-admin-url`) against one spool on SQLite; it is not part
//! of `all`, since it needs a PostgreSQL server. The storage scenario measures bytes on
//! disk per token of this release's event log against the previous layout.
//!
//! ```text
//! cargo build --release --example load --bin spool
//! cargo run --release --example load -- [--scenario all|throughput|paced|ws|idle|resume|relay|storage|cluster]
//! ```
//!
//! Each scenario starts a fresh spool (mock backend, SQLite in a temporary directory)
//! and a fresh baseline process, so /proc figures (CPU, VmHWM) belong to that scenario
//! alone. The exit code is 0 whether or not targets are met; it is non-zero only when
//! the tool itself fails (a server did not start, …).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(unsafe_code)]

mod baseline;
mod client;
mod cluster;
mod idle;
mod procs;
mod relay;
mod report;
mod resume;
mod scenarios;
mod storage;
mod upstream;
mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};

use procs::Target;
use report::Section;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    All,
    Throughput,
    Paced,
    Ws,
    Idle,
    Resume,
    Relay,
    /// Bytes on disk per token: this release's layout against the previous one.
    Storage,
    /// Not in `all`: it needs PostgreSQL.
    Cluster,
}

/// The cluster scenario's phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClusterPhase {
    Both,
    Throughput,
    Lag,
}

/// Drives N concurrent SSE streams against spool and against a minimal in-memory SSE
/// server (the baseline), and reports tokens/s, CPU per token, latency and memory.
#[derive(Debug, Parser)]
#[command(name = "load")]
pub struct Cli {
    /// Which scenario to run.
    #[arg(long, value_enum, default_value = "all")]
    scenario: Scenario,
    /// The spool binary to spawn (a fresh process per scenario) [default:
    /// target/release/spool, else the `spool` next to this tool's own directory].
    #[arg(long)]
    spool_bin: Option<PathBuf>,
    /// Target an already-running spool instead (e.g. http://127.0.0.1:8080); its mock
    /// settings are whatever it was started with, and it is never restarted.
    #[arg(long)]
    url: Option<String>,
    /// The pid of the spool behind --url, for its CPU and memory figures.
    #[arg(long, requires = "url")]
    pid: Option<u32>,
    /// Skip the baseline server (no ratios).
    #[arg(long)]
    no_baseline: bool,

    /// Concurrent streams (throughput and paced).
    #[arg(long, default_value_t = 500)]
    streams: usize,
    /// Tokens per stream [default: 256 for throughput, 250 for paced].
    #[arg(long)]
    tokens: Option<u32>,
    /// Tokens per second per stream in the paced scenario.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Paced and ws: a token counts as delivered if it arrives within tokens/rate +
    /// this many milliseconds of its stream's request (ws: its generate message).
    #[arg(long, default_value_t = 500)]
    grace_ms: u64,

    /// Ws scenario: WebSocket connections, each sending one generate message.
    #[arg(long, default_value_t = 1000)]
    ws_sockets: usize,
    /// Ws scenario: max_tokens of each generate message.
    #[arg(long, default_value_t = 100)]
    ws_tokens: u32,
    /// Ws scenario: mock tokens per second per stream (SPOOL_MOCK_RATE).
    #[arg(long, default_value_t = 20.0)]
    ws_rate: f64,

    /// Idle scenario: open SSE readers.
    #[arg(long, default_value_t = 10_000)]
    readers: usize,
    /// Idle scenario: stalled streams the readers are spread over.
    #[arg(long, default_value_t = 100)]
    idle_streams: usize,

    /// Resume scenario: drop-and-resume cycles.
    #[arg(long, default_value_t = 1000)]
    cycles: u64,
    /// Resume scenario: tokens per stream.
    #[arg(long, default_value_t = 64)]
    resume_tokens: u32,
    /// Resume scenario: mock tokens per second (streams are live while resumed).
    #[arg(long, default_value_t = 200.0)]
    resume_rate: f64,
    /// Resume scenario: streams in flight at once.
    #[arg(long, default_value_t = 50)]
    resume_concurrency: usize,
    /// Resume scenario: a connection is dropped after 1..=N body bytes.
    #[arg(long, default_value_t = 600)]
    max_drop_bytes: u64,
    /// Seed of the drop points (xorshift).
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Relay scenario: concurrent streams, through spool and straight to the upstream.
    #[arg(long, default_value_t = 500)]
    relay_streams: usize,
    /// Relay scenario: tokens per stream.
    #[arg(long, default_value_t = 256)]
    relay_tokens: u32,
    /// Relay scenario: the mock upstream's most chunks per write while the socket keeps
    /// up (1..=64). 1 (the default) flushes every chunk on its own, as a token-by-token
    /// server does; larger lets hyper coalesce ready chunks (at most 16 buffers a write).
    #[arg(long, default_value_t = 1)]
    upstream_batch: u32,

    /// Storage scenario: also measure PostgreSQL (a fresh database per layout, through
    /// --pg-admin-url).
    #[arg(long)]
    storage_pg: bool,

    /// Cluster scenario: spool nodes sharing the PostgreSQL database.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Cluster scenario: a PostgreSQL database to connect to in order to create (and
    /// drop) a fresh database per phase.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pg_admin_url: String,
    /// Cluster scenario: which phases to run.
    #[arg(long, value_enum, default_value = "both")]
    cluster_phase: ClusterPhase,
    /// Cluster scenario, lag phase: streams, each generated on one node and read on
    /// another.
    #[arg(long, default_value_t = 200)]
    lag_streams: usize,
    /// Cluster scenario, lag phase: mock tokens per second per stream.
    #[arg(long, default_value_t = 50.0)]
    lag_rate: f64,
    /// Cluster scenario, lag phase: tokens per stream.
    #[arg(long, default_value_t = 250)]
    lag_tokens: u32,

    /// Deadline of each measured phase, in seconds.
    #[arg(long, default_value_t = 120)]
    deadline_secs: u64,
    /// Worker threads of the load client's runtime (it shares the cores).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Also write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,

    /// Internal: run the baseline server.
    #[arg(long, hide = true)]
    baseline_server: bool,
    #[arg(long, hide = true, default_value_t = 0.0)]
    baseline_rate: f64,
    #[arg(long, hide = true)]
    baseline_stall_after: Option<u32>,
    /// Internal: run the mock OpenAI upstream of the relay scenario.
    #[arg(long, hide = true)]
    upstream_server: bool,
    /// Baseline, unlimited rate: most token events per write. 1 (the default) writes
    /// each token as it is produced, as a plain token-by-token SSE server does.
    #[arg(long, default_value_t = 1)]
    baseline_batch: u64,
}

impl Cli {
    fn deadline(&self) -> Duration {
        Duration::from_secs(self.deadline_secs.max(1))
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let fd_limit = procs::raise_fd_limit();
    if cli.baseline_server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build();
        let result = rt.map_err(anyhow::Error::from).and_then(|rt| {
            rt.block_on(baseline::run(baseline::Config {
                rate: cli.baseline_rate,
                stall_after: cli.baseline_stall_after,
                batch: cli.baseline_batch.max(1),
            }))
        });
        if let Err(e) = result {
            eprintln!("baseline: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
        return std::process::ExitCode::SUCCESS;
    }
    if cli.upstream_server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build();
        let result = rt
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(upstream::run(cli.upstream_batch)));
        if let Err(e) = result {
            eprintln!("upstream: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
        return std::process::ExitCode::SUCCESS;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.client_threads.max(1))
        .enable_all()
        .build();
    let result = rt
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(cli, fd_limit)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `--spool-bin`, else `target/release/spool`, else `<this tool's dir>/../spool`
/// (where cargo puts it when CARGO_TARGET_DIR is elsewhere).
fn spool_bin(given: Option<&std::path::Path>) -> PathBuf {
    if let Some(path) = given {
        return path.to_owned();
    }
    let default = PathBuf::from("target/release/spool");
    if default.exists() {
        return default;
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("spool")))
        .filter(|p| p.exists())
        .unwrap_or(default)
}

async fn run(cli: Cli, fd_limit: u64) -> anyhow::Result<()> {
    let target = match &cli.url {
        Some(url) => {
            let hostport = url
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned();
            let addr: SocketAddr = hostport
                .parse()
                .with_context(|| format!("--url {url}: expected http://IP:PORT"))?;
            Target::External { addr, pid: cli.pid }
        }
        None => Target::Spawn(spool_bin(cli.spool_bin.as_deref())),
    };
    if let Target::Spawn(bin) = &target
        && !bin.exists()
    {
        anyhow::bail!(
            "the spool binary {} does not exist: run `cargo build --release` first \
             (or pass --spool-bin PATH, or --url/--pid for a running server)",
            bin.display()
        );
    }
    println!(
        "load: client threads {}, open-file limit {fd_limit}, deadline {} s per phase{}",
        cli.client_threads.max(1),
        cli.deadline_secs,
        match &target {
            Target::Spawn(bin) => format!(", spool {}", bin.display()),
            Target::External { addr, pid } =>
                format!(", external spool {addr} (pid {pid:?}; mock settings are its own)"),
        }
    );
    let which: &[Scenario] = match cli.scenario {
        Scenario::All => &[
            Scenario::Throughput,
            Scenario::Paced,
            Scenario::Ws,
            Scenario::Idle,
            Scenario::Resume,
            Scenario::Relay,
            Scenario::Storage,
        ],
        Scenario::Throughput => &[Scenario::Throughput],
        Scenario::Paced => &[Scenario::Paced],
        Scenario::Ws => &[Scenario::Ws],
        Scenario::Idle => &[Scenario::Idle],
        Scenario::Resume => &[Scenario::Resume],
        Scenario::Relay => &[Scenario::Relay],
        Scenario::Storage => &[Scenario::Storage],
        Scenario::Cluster => &[Scenario::Cluster],
    };
    let mut sections: Vec<Section> = Vec::new();
    for scenario in which {
        let new = match scenario {
            Scenario::Throughput => vec![scenarios::throughput(&cli, &target).await?],
            Scenario::Paced => vec![scenarios::paced(&cli, &target).await?],
            Scenario::Ws => vec![ws::ws(&cli, &target, fd_limit).await?],
            Scenario::Idle => vec![idle::idle(&cli, &target, fd_limit).await?],
            Scenario::Resume => vec![resume::resume(&cli, &target).await?],
            Scenario::Relay => vec![relay::relay(&cli, &target).await?],
            Scenario::Storage => vec![storage::storage(&cli, &target).await?],
            Scenario::Cluster => cluster::cluster(&cli, &target).await?,
            Scenario::All => continue,
        };
        for section in new {
            section.print();
            sections.push(section);
        }
    }
    report::summary(&sections);
    if let Some(path) = &cli.json {
        let json = report::to_json(&sections);
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("figures written to {}", path.display());
    }
    Ok(())
}
