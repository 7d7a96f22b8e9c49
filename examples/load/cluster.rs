//! The cluster scenario: `--nodes` spool processes (mock backend) sharing one fresh
//! PostgreSQL database, against one spool on SQLite, in the same run. Two phases, each
//! with fresh processes (and a fresh database, dropped after):
//!
//! - **throughput**: `--streams` × `--tokens` at unlimited rate, spread round-robin over
//!   the nodes, each read on the node that generates it. Tokens/s, the spool processes'
//!   CPU per token, PostgreSQL's (its backends for this database, and its background
//!   writers, from /proc), PostgreSQL's commits per second (`pg_stat_database`) and the
//!   nodes' group commits and events per commit (their `/metrics`).
//! - **lag**: `--lag-streams` at `--lag-rate` tokens/s, each generated on one node (read
//!   there by the POST's own response) and read on the next node by
//!   `GET /v1/streams/{id}/events`. A token's lag is the time the remote reader got it
//!   minus the time the generating node's reader got it, both on this process's clock.
//!   The remote reader's events must equal the generating node's, byte for byte. On the
//!   SQLite side "the next node" is the same node: a second reader there.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tokio::time::Instant;

use crate::client;
use crate::procs::{self, Kind, Options, Server, Target};
use crate::report::{Row, Section, Target as Goal};
use crate::scenarios::{
    Errors, Load, Meter, add_error, drive_one, drive_with, error_notes, mb, micros, pct_ms, per_1k,
    start,
};
use crate::{Cli, ClusterPhase};

/// The target for the cross-node delivery lag, p99.
const LAG_P99_MS: f64 = 50.0;
/// How long the nodes' PostgreSQL backends may take to go away after the nodes stop (a
/// backend flushes its statistics when it exits).
const BACKENDS_GONE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// `--nodes` spool processes on one PostgreSQL database.
    Cluster,
    /// One spool process on SQLite.
    Single,
}

pub async fn cluster(cli: &Cli, target: &Target) -> anyhow::Result<Vec<Section>> {
    let Target::Spawn(_) = target else {
        bail!("the cluster scenario starts its own nodes: --url cannot be used with it");
    };
    let mut sections = Vec::new();
    if cli.cluster_phase != ClusterPhase::Lag {
        let load_avg = load_average();
        let cluster = throughput_side(Side::Cluster, cli, target).await?;
        let single = throughput_side(Side::Single, cli, target).await?;
        sections.push(throughput_section(cli, &cluster, &single, &load_avg));
    }
    if cli.cluster_phase != ClusterPhase::Throughput {
        let load_avg = load_average();
        let cluster = lag_side(Side::Cluster, cli, target).await?;
        let single = lag_side(Side::Single, cli, target).await?;
        sections.push(lag_section(cli, &cluster, &single, &load_avg));
    }
    Ok(sections)
}

/// The two columns: the nodes on PostgreSQL (their count is in the title), the one on
/// SQLite.
const COLUMNS: [&str; 2] = ["PG nodes", "SQLite node"];

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| {
            s.split_ascii_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unknown".into())
}

// ---------------------------------------------------------------------------------
// a fresh PostgreSQL database, and what PostgreSQL says about it

pub(crate) struct Database {
    admin: PgConnection,
    name: String,
    /// The `DATABASE_URL` of the nodes.
    pub(crate) url: String,
}

/// `url` with its database replaced by `name` (query parameters kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let path = base[host_start..].find('/').map(|i| host_start + i);
    let root = path.map_or(base, |p| &base[..p]);
    match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    }
}

/// PostgreSQL's counters at one moment.
struct PgSample {
    xact_commit: i64,
    /// The server's WAL position, in bytes.
    wal: i64,
    /// CPU seconds by pid; `true` for a background process (WAL writer, …).
    cpu: HashMap<u32, (bool, f64)>,
}

impl Database {
    pub(crate) async fn create(admin_url: &str) -> anyhow::Result<Database> {
        let mut admin = PgConnection::connect(admin_url).await.with_context(|| {
            format!("cannot connect to PostgreSQL at {admin_url} (--pg-admin-url)")
        })?;
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let name = format!("spool_bench_{}_{millis}", std::process::id());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .with_context(|| format!("creating the database {name}"))?;
        let url = with_database(admin_url, &name);
        Ok(Database { admin, name, url })
    }

    /// Commits in this database, and the CPU of its backends and of the server's
    /// background processes.
    async fn sample(&mut self) -> anyhow::Result<PgSample> {
        let (xact_commit, wal): (i64, i64) = sqlx::query_as(
            "SELECT xact_commit, (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint \
             FROM pg_stat_database WHERE datname = $1",
        )
        .bind(&self.name)
        .fetch_one(&mut self.admin)
        .await?;
        let procs: Vec<(i32, Option<String>)> = sqlx::query_as(
            "SELECT pid, datname::text FROM pg_stat_activity WHERE datname = $1 \
             OR backend_type IN ('walwriter', 'checkpointer', 'background writer', \
             'autovacuum launcher', 'autovacuum worker')",
        )
        .bind(&self.name)
        .fetch_all(&mut self.admin)
        .await?;
        let cpu = procs
            .into_iter()
            .filter_map(|(pid, db)| {
                let pid = u32::try_from(pid).ok()?;
                Some((
                    pid,
                    (db.as_deref() != Some(&self.name), procs::cpu_secs(pid)?),
                ))
            })
            .collect();
        Ok(PgSample {
            xact_commit,
            wal,
            cpu,
        })
    }

    /// Waits until no backend is connected to this database (so all have flushed their
    /// statistics), then reads its commit count.
    async fn commits_after_disconnect(&mut self) -> anyhow::Result<i64> {
        let deadline = Instant::now() + BACKENDS_GONE;
        loop {
            let (n,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
                    .bind(&self.name)
                    .fetch_one(&mut self.admin)
                    .await?;
            if n == 0 || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (xact_commit,): (i64,) =
            sqlx::query_as("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
                .bind(&self.name)
                .fetch_one(&mut self.admin)
                .await?;
        Ok(xact_commit)
    }

    pub(crate) async fn drop_it(mut self) -> Option<String> {
        let r = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut self.admin)
        .await;
        let _ = self.admin.close().await;
        r.err()
            .map(|e| format!("dropping the database {} failed: {e}", self.name))
    }
}

/// CPU of PostgreSQL's processes between two samples: (this database's backends, the
/// background processes). A backend that appeared in between counts from zero.
fn pg_cpu(before: &PgSample, after: &PgSample) -> (f64, f64) {
    let mut backends = 0.0;
    let mut background = 0.0;
    for (pid, (bg, cpu)) in &after.cpu {
        let was = before.cpu.get(pid).map_or(0.0, |(_, c)| *c);
        let used = (cpu - was).max(0.0);
        if *bg {
            background += used;
        } else {
            backends += used;
        }
    }
    (backends, background)
}

// ---------------------------------------------------------------------------------
// the nodes of one side, and what they did over a phase

/// Counters from a node's `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    commits: f64,
    events: f64,
    commit_secs: f64,
}

async fn scrape(addr: SocketAddr) -> Option<Counters> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let request = client::get(addr, "/metrics");
    let mut r = tokio::time::timeout_at(deadline, client::open(addr, &request, 16 * 1024))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8(r.body(deadline).await.ok()?).ok()?;
    let value = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    Some(Counters {
        commits: value("spool_store_batch_events_count")?,
        events: value("spool_events_committed_total")?,
        commit_secs: value("spool_store_commit_seconds_sum")?,
    })
}

struct Nodes {
    servers: Vec<Server>,
    db: Option<Database>,
}

struct Started {
    meters: Vec<Meter>,
    counters: Vec<Option<Counters>>,
    pg: Option<PgSample>,
}

/// What the nodes (and PostgreSQL) did over a phase. A figure is `None` when any node's
/// part of it could not be read.
#[derive(Default)]
struct Totals {
    spool_cpu: Option<f64>,
    client_cpu: Option<f64>,
    /// This database's backends, and PostgreSQL's background processes.
    pg_cpu: Option<(f64, f64)>,
    /// `pg_stat_database.xact_commit` (read-only transactions included).
    pg_commits: Option<f64>,
    /// WAL the server wrote (all of it, not only this database's).
    wal_bytes: Option<f64>,
    /// The nodes' group commits, the events in them, and the time they took.
    counters: Option<Counters>,
    /// The nodes' peak RSS, added up.
    hwm_mb: Option<f64>,
    notes: Vec<String>,
}

impl Totals {
    fn spool_and_pg_cpu(&self) -> Option<f64> {
        let pg = self.pg_cpu.map_or(0.0, |(b, g)| b + g);
        self.spool_cpu.map(|s| s + pg)
    }
}

impl Nodes {
    async fn start(side: Side, cli: &Cli, target: &Target, rate: f64) -> anyhow::Result<Nodes> {
        let (db, count) = match side {
            Side::Cluster => (
                Some(Database::create(&cli.pg_admin_url).await?),
                cli.nodes.max(1),
            ),
            Side::Single => (None, 1),
        };
        let mut nodes = Nodes {
            servers: Vec::new(),
            db,
        };
        for i in 0..count {
            let opts = Options {
                rate,
                database_url: nodes.db.as_ref().map(|d| d.url.clone()),
                node_id: nodes.db.as_ref().map(|_| format!("bench-{}", i + 1)),
                ..Default::default()
            };
            match start(Kind::Spool, target, &opts).await {
                Ok(server) => nodes.servers.push(server),
                Err(e) => {
                    nodes.abandon().await;
                    return Err(e.context(format!("starting node {} of {count}", i + 1)));
                }
            }
        }
        Ok(nodes)
    }

    async fn abandon(mut self) {
        for server in self.servers.drain(..) {
            server.stop().await;
        }
        if let Some(db) = self.db.take()
            && let Some(e) = db.drop_it().await
        {
            eprintln!("load: {e}");
        }
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.servers.iter().map(|s| s.addr).collect()
    }

    async fn begin(&mut self) -> Started {
        let mut counters = Vec::new();
        for s in &self.servers {
            counters.push(scrape(s.addr).await);
        }
        let pg = match self.db.as_mut() {
            Some(db) => db.sample().await.ok(),
            None => None,
        };
        Started {
            meters: self.servers.iter().map(Meter::start).collect(),
            counters,
            pg,
        }
    }

    /// Reads every figure, then stops the nodes and drops the database.
    async fn finish(mut self, started: Started) -> Totals {
        // Every process's CPU first, before any node is stopped.
        let spool_cpu = self
            .servers
            .iter()
            .zip(&started.meters)
            .map(|(s, m)| m.server_cpu(s))
            .sum();
        let hwm_mb = self
            .servers
            .iter()
            .map(|s| s.mem().map(|m| mb(m.hwm_kb)))
            .sum();
        let pg_end = match self.db.as_mut() {
            Some(db) => db.sample().await.ok(),
            None => None,
        };
        let pg_cpu = started
            .pg
            .as_ref()
            .zip(pg_end.as_ref())
            .map(|(a, b)| pg_cpu(a, b));
        let wal_bytes = started
            .pg
            .as_ref()
            .zip(pg_end.as_ref())
            .map(|(a, b)| (b.wal - a.wal) as f64);
        let mut counters = Some(Counters::default());
        for (s, before) in self.servers.iter().zip(&started.counters) {
            let after = scrape(s.addr).await;
            counters = match (counters, before, after) {
                (Some(acc), Some(a), Some(b)) => Some(Counters {
                    commits: acc.commits + b.commits - a.commits,
                    events: acc.events + b.events - a.events,
                    commit_secs: acc.commit_secs + b.commit_secs - a.commit_secs,
                }),
                _ => None,
            };
        }
        let mut client_cpu = None;
        let mut notes = Vec::new();
        for (i, (server, meter)) in self.servers.drain(..).zip(started.meters).enumerate() {
            let obs = meter.finish(server).await;
            if i == 0 {
                client_cpu = obs.client_cpu;
            }
            notes.extend(obs.notes);
        }
        let mut pg_commits = None;
        if let Some(mut db) = self.db.take() {
            match (db.commits_after_disconnect().await, &started.pg) {
                (Ok(end), Some(a)) => pg_commits = Some((end - a.xact_commit) as f64),
                (Err(e), _) => notes.push(format!("reading pg_stat_database failed: {e}")),
                _ => {}
            }
            notes.extend(db.drop_it().await);
        }
        Totals {
            spool_cpu,
            client_cpu,
            pg_cpu,
            pg_commits,
            wal_bytes,
            counters,
            hwm_mb,
            notes,
        }
    }
}

/// Rows every phase shows about the servers' work.
fn server_rows<R>(
    cluster: &R,
    single: &R,
    totals: impl Fn(&R) -> &Totals,
    wall: impl Fn(&R) -> f64,
    tokens: impl Fn(&R) -> u64,
) -> Vec<Row> {
    let row = |name: &str, unit: &'static str, f: &dyn Fn(&R) -> Option<f64>| {
        Row::new(name, unit, f(cluster), f(single))
    };
    let rate = |r: &R, v: Option<f64>| v.map(|v| v / wall(r).max(1e-9));
    vec![
        row("spool CPU per 1k tokens, all nodes", "CPU-s", &|r| {
            per_1k(totals(r).spool_cpu, tokens(r))
        }),
        row("spool CPU, all nodes", "% of one core", &|r| {
            rate(r, totals(r).spool_cpu).map(|c| 100.0 * c)
        }),
        row(
            "PostgreSQL CPU per 1k tokens, its backends",
            "CPU-s",
            &|r| per_1k(totals(r).pg_cpu.map(|c| c.0), tokens(r)),
        ),
        row("PostgreSQL CPU per 1k tokens, background", "CPU-s", &|r| {
            per_1k(totals(r).pg_cpu.map(|c| c.1), tokens(r))
        }),
        row("spool + PostgreSQL CPU per 1k tokens", "CPU-s", &|r| {
            per_1k(totals(r).spool_and_pg_cpu(), tokens(r))
        }),
        row("client CPU per 1k tokens", "CPU-s", &|r| {
            per_1k(totals(r).client_cpu, tokens(r))
        }),
        row("PostgreSQL commits (pg_stat_database)", "/s", &|r| {
            rate(r, totals(r).pg_commits)
        }),
        row("group commits, all nodes", "/s", &|r| {
            rate(r, totals(r).counters.map(|c| c.commits))
        }),
        row("events per group commit", "", &|r| {
            totals(r)
                .counters
                .filter(|c| c.commits > 0.0)
                .map(|c| c.events / c.commits)
        }),
        row("PostgreSQL WAL per event (server-wide)", "bytes", &|r| {
            let t = totals(r);
            t.wal_bytes
                .zip(t.counters.filter(|c| c.events > 0.0))
                .map(|(w, c)| w / c.events)
        }),
        row("group commit time, mean", "ms", &|r| {
            totals(r)
                .counters
                .filter(|c| c.commits > 0.0)
                .map(|c| 1000.0 * c.commit_secs / c.commits)
        }),
        row("peak RSS (VmHWM), all nodes", "MB", &|r| totals(r).hwm_mb),
    ]
}

fn common_notes(cli: &Cli, load_avg: &str, notes: &mut Vec<String>) {
    notes.push(format!(
        "{} spool nodes on one fresh PostgreSQL database vs one spool on SQLite; load \
         average when the phase began: {load_avg}",
        cli.nodes.max(1)
    ));
    notes.push(
        "PostgreSQL CPU is from /proc: 'its backends' are this database's connections; \
         'background' is the WAL writer, checkpointer, background writer and autovacuum, \
         which serve the whole server (anything else using it counts too)"
            .into(),
    );
    notes.push(
        "PostgreSQL commits count every transaction in the database: the nodes' group \
         commits (their /metrics), their reads, and one in each node's LISTEN backend \
         whenever it is signalled to read the notification queue; WAL is the server's"
            .into(),
    );
}

// ---------------------------------------------------------------------------------
// throughput

struct ThroughputRun {
    load: Load,
    totals: Totals,
}

async fn throughput_side(side: Side, cli: &Cli, target: &Target) -> anyhow::Result<ThroughputRun> {
    let tokens = cli.tokens.unwrap_or(256);
    let mut nodes = Nodes::start(side, cli, target, 0.0).await?;
    let started = nodes.begin().await;
    let deadline = Instant::now() + cli.deadline();
    let requests: Vec<(SocketAddr, Arc<Vec<u8>>)> = nodes
        .addrs()
        .into_iter()
        .map(|a| (a, Arc::new(client::post_stream(a, tokens, true))))
        .collect();
    let next = Cell::new(0usize);
    let load = drive_with(cli.streams, tokens, || {
        let i = next.get();
        next.set(i + 1);
        let (addr, request) = &requests[i % requests.len()];
        drive_one(*addr, request.clone(), tokens, deadline, None)
    })
    .await;
    let totals = nodes.finish(started).await;
    Ok(ThroughputRun { load, totals })
}

fn throughput_section(
    cli: &Cli,
    cluster: &ThroughputRun,
    single: &ThroughputRun,
    load_avg: &str,
) -> Section {
    let row = |name: &str, unit: &'static str, f: &dyn Fn(&ThroughputRun) -> Option<f64>| {
        Row::new(name, unit, f(cluster), f(single))
    };
    let mut rows = vec![
        row("tokens delivered", "", &|r| Some(r.load.tokens as f64)),
        row("streams complete", "", &|r| Some(r.load.complete as f64)),
        row("tokens/s", "", &|r| {
            Some(r.load.tokens as f64 / r.load.wall.max(1e-9))
        }),
        row("wall time", "s", &|r| Some(r.load.wall)),
    ];
    rows.extend(server_rows(
        cluster,
        single,
        |r| &r.totals,
        |r| r.load.wall,
        |r| r.load.tokens,
    ));
    rows.extend([
        row("TTFT p50", "ms", &|r| pct_ms(&r.load.ttft, 0.50)),
        row("TTFT p99", "ms", &|r| pct_ms(&r.load.ttft, 0.99)),
        row("inter-token gap p99", "ms", &|r| pct_ms(&r.load.gaps, 0.99)),
        row("errors", "streams", &|r| {
            Some(r.load.errors.values().sum::<u64>() as f64)
        })
        .target(Goal::Max(0.0)),
    ]);
    let mut notes = Vec::new();
    common_notes(cli, load_avg, &mut notes);
    for (name, r) in [("PG nodes", cluster), ("SQLite node", single)] {
        error_notes(name, &r.load.errors, &mut notes);
        notes.extend(r.totals.notes.iter().map(|n| format!("{name}: {n}")));
    }
    Section {
        name: "cluster-throughput",
        title: format!(
            "{} nodes on PostgreSQL vs 1 on SQLite: {} streams × {} tokens round-robin, \
             mock rate unlimited",
            cli.nodes.max(1),
            cli.streams,
            cli.tokens.unwrap_or(256)
        ),
        columns: COLUMNS,
        rows,
        notes,
    }
}

// ---------------------------------------------------------------------------------
// cross-node lag

struct Received {
    id: Option<u64>,
    at: Instant,
    token: bool,
    raw: Vec<u8>,
}

async fn record(mut r: client::Response, deadline: Instant) -> Result<Vec<Received>, String> {
    let mut out = Vec::new();
    r.read_events(deadline, None, |ev, now| {
        out.push(Received {
            id: ev.id,
            at: now,
            token: ev.event == b"token",
            raw: ev.raw.to_vec(),
        });
        true
    })
    .await
    .map_err(|e| format!("read failed: {e}"))?;
    Ok(out)
}

async fn open_sse(
    addr: SocketAddr,
    request: &[u8],
    deadline: Instant,
    what: &str,
) -> Result<client::Response, String> {
    let r = tokio::time::timeout_at(deadline, client::open(addr, request, 16 * 1024))
        .await
        .map_err(|_| format!("{what}: deadline before the response head"))?
        .map_err(|e| format!("{what}: request failed: {:?}", e.kind()))?;
    if r.status != 200 {
        return Err(format!("{what}: HTTP {}", r.status));
    }
    Ok(r)
}

#[derive(Default)]
struct LagOutcome {
    exact: bool,
    remote_tokens: u32,
    /// Remote minus local receive time of each token the remote reader could have
    /// received live, in µs (negative: the remote reader got it first).
    lags: Vec<i64>,
    /// Tokens the generating node's reader had before the remote reader's response head.
    before_live: u32,
    ttft_local: Option<u32>,
    ttft_remote: Option<u32>,
    remote_gaps: Vec<u32>,
    error: Option<String>,
}

/// The generating node's events must be `start`, `expected` tokens, `done`, with ids
/// 1..=n in order.
fn check_local(events: &[Received], expected: u32) -> Result<(), &'static str> {
    if events
        .iter()
        .enumerate()
        .any(|(i, e)| e.id != Some(i as u64 + 1))
    {
        return Err("event ids are not 1..=n in order");
    }
    let tokens = events.iter().filter(|e| e.token).count();
    match events.last() {
        Some(e) if e.raw.windows(11).any(|w| w == b"event: done") => {}
        _ => return Err("ended before done"),
    }
    if tokens != expected as usize {
        return Err("wrong number of tokens");
    }
    Ok(())
}

async fn lag_one(
    generate: SocketAddr,
    read: SocketAddr,
    tokens: u32,
    deadline: Instant,
) -> LagOutcome {
    let mut o = LagOutcome::default();
    let t0 = Instant::now();
    let post = client::post_stream(generate, tokens, true);
    let r = match open_sse(generate, &post, deadline, "POST").await {
        Ok(r) => r,
        Err(e) => {
            o.error = Some(e);
            return o;
        }
    };
    let Some(id) = r.stream_id.clone() else {
        o.error = Some("POST: no X-Stream-Id header".into());
        return o;
    };
    let get = client::get_events(read, &id, None);
    let remote = async {
        let r = open_sse(read, &get, deadline, "GET on the other node").await?;
        let live_at = Instant::now();
        Ok::<_, String>((live_at, record(r, deadline).await?))
    };
    let (local, remote) = tokio::join!(record(r, deadline), remote);
    let (local, (live_at, remote)) = match (local, remote) {
        (Ok(l), Ok(r)) => (l, r),
        (Err(e), _) => {
            o.error = Some(format!("generating node's reader: {e}"));
            return o;
        }
        (_, Err(e)) => {
            o.error = Some(e);
            return o;
        }
    };
    if let Err(e) = check_local(&local, tokens) {
        o.error = Some(format!("generating node's reader: {e}"));
        return o;
    }
    let first_token =
        |events: &[Received]| events.iter().find(|e| e.token).map(|e| micros(e.at - t0));
    o.ttft_local = first_token(&local);
    o.ttft_remote = first_token(&remote);
    let mut last: Option<Instant> = None;
    for e in remote.iter().filter(|e| e.token) {
        o.remote_tokens += 1;
        if let Some(prev) = last {
            o.remote_gaps
                .push(micros(e.at.saturating_duration_since(prev)));
        }
        last = Some(e.at);
        // Ids are 1..=n in order on the generating side (checked above).
        let Some(mine) = e.id.and_then(|id| local.get((id as usize).checked_sub(1)?)) else {
            continue;
        };
        if mine.at < live_at {
            o.before_live += 1;
        } else if e.at >= mine.at {
            o.lags.push(micros(e.at - mine.at) as i64);
        } else {
            o.lags.push(-(micros(mine.at - e.at) as i64));
        }
    }
    o.exact = remote.len() == local.len()
        && remote
            .iter()
            .zip(&local)
            .all(|(a, b)| a.id == b.id && a.raw == b.raw);
    if !o.exact {
        o.error = Some("the other node's reader got different events".into());
    }
    o
}

#[derive(Default)]
struct LagRun {
    streams: u64,
    exact: u64,
    remote_tokens: u64,
    /// Sorted, µs, negative ones as 0.
    lags: Vec<u32>,
    remote_first: u64,
    before_live: u64,
    ttft_local: Vec<u32>,
    ttft_remote: Vec<u32>,
    gaps: Vec<u32>,
    errors: Errors,
    wall: f64,
    totals: Totals,
}

async fn lag_side(side: Side, cli: &Cli, target: &Target) -> anyhow::Result<LagRun> {
    let tokens = cli.lag_tokens.max(1);
    let mut nodes = Nodes::start(side, cli, target, cli.lag_rate).await?;
    let addrs = nodes.addrs();
    let started = nodes.begin().await;
    let deadline = Instant::now() + cli.deadline();
    let t0 = Instant::now();
    let handles: Vec<_> = (0..cli.lag_streams)
        .map(|i| {
            let generate = addrs[i % addrs.len()];
            let read = addrs[(i + 1) % addrs.len()];
            tokio::spawn(lag_one(generate, read, tokens, deadline))
        })
        .collect();
    let mut run = LagRun::default();
    for h in handles {
        run.streams += 1;
        match h.await {
            Ok(o) => {
                run.exact += u64::from(o.exact);
                run.remote_tokens += u64::from(o.remote_tokens);
                run.before_live += u64::from(o.before_live);
                for lag in o.lags {
                    if lag < 0 {
                        run.remote_first += 1;
                    }
                    run.lags.push(lag.clamp(0, i64::from(u32::MAX)) as u32);
                }
                run.ttft_local.extend(o.ttft_local);
                run.ttft_remote.extend(o.ttft_remote);
                run.gaps.extend(o.remote_gaps);
                if let Some(e) = o.error {
                    add_error(&mut run.errors, e);
                }
            }
            Err(e) => add_error(&mut run.errors, format!("client task: {e}")),
        }
    }
    run.wall = t0.elapsed().as_secs_f64();
    for v in [
        &mut run.lags,
        &mut run.ttft_local,
        &mut run.ttft_remote,
        &mut run.gaps,
    ] {
        v.sort_unstable();
    }
    run.totals = nodes.finish(started).await;
    Ok(run)
}

fn lag_section(cli: &Cli, cluster: &LagRun, single: &LagRun, load_avg: &str) -> Section {
    let row = |name: &str, unit: &'static str, f: &dyn Fn(&LagRun) -> Option<f64>| {
        Row::new(name, unit, f(cluster), f(single))
    };
    let tokens = cli.lag_tokens.max(1);
    let mut rows = vec![
        row("streams exact on the other reader", "", &|r| {
            Some(r.exact as f64)
        })
        .target(Goal::Min(cli.lag_streams as f64)),
        row("tokens delivered to the other reader", "", &|r| {
            Some(r.remote_tokens as f64)
        }),
        row("delivery lag p50", "ms", &|r| pct_ms(&r.lags, 0.50)),
        row("delivery lag p99", "ms", &|r| pct_ms(&r.lags, 0.99)).target(Goal::Max(LAG_P99_MS)),
        row("delivery lag max", "ms", &|r| pct_ms(&r.lags, 1.0)),
        row("tokens the other reader got first", "", &|r| {
            Some(r.remote_first as f64)
        }),
        row("tokens before the other reader was live", "", &|r| {
            Some(r.before_live as f64)
        }),
        row("TTFT p50, generating node's reader", "ms", &|r| {
            pct_ms(&r.ttft_local, 0.50)
        }),
        row("TTFT p99, generating node's reader", "ms", &|r| {
            pct_ms(&r.ttft_local, 0.99)
        }),
        row("TTFT p50, other reader (from the POST)", "ms", &|r| {
            pct_ms(&r.ttft_remote, 0.50)
        }),
        row("TTFT p99, other reader (from the POST)", "ms", &|r| {
            pct_ms(&r.ttft_remote, 0.99)
        }),
        row("inter-token gap p99, other reader", "ms", &|r| {
            pct_ms(&r.gaps, 0.99)
        }),
    ];
    rows.extend(server_rows(
        cluster,
        single,
        |r| &r.totals,
        |r| r.wall,
        |r| r.streams * u64::from(tokens),
    ));
    rows.push(
        row("errors", "streams", &|r| {
            Some(r.errors.values().sum::<u64>() as f64)
        })
        .target(Goal::Max(0.0)),
    );
    let mut notes = vec![
        "lag: the time the other reader got a token minus the time the generating node's \
         reader (the POST's response) got it; tokens the generating node's reader had before \
         the other reader's response head are left out (counted above)"
            .to_owned(),
        "the other reader is on the next node (PG) or is a second reader on the same node \
         (SQLite); CPU per 1k tokens counts tokens generated, each read twice"
            .to_owned(),
    ];
    common_notes(cli, load_avg, &mut notes);
    for (name, r) in [("PG nodes", cluster), ("SQLite node", single)] {
        error_notes(name, &r.errors, &mut notes);
        notes.extend(r.totals.notes.iter().map(|n| format!("{name}: {n}")));
    }
    Section {
        name: "cluster-lag",
        title: format!(
            "{} streams × {tokens} tokens at {} tokens/s, generated on one node, read on \
             another",
            cli.lag_streams, cli.lag_rate
        ),
        columns: COLUMNS,
        rows,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "b"),
            "postgres://postgres@127.0.0.1:5432/b"
        );
        assert_eq!(
            with_database("postgres://u@h/d?sslmode=disable", "b"),
            "postgres://u@h/b?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "b"),
            "postgres://h:5432/b"
        );
    }
}
