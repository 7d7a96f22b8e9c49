//! Server processes (spool, the baseline, or an external spool) and what /proc says
//! about them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long a server may take to print its address.
const STARTUP: Duration = Duration::from_secs(20);
/// How long a server may take to exit after SIGTERM before it is killed.
const STOP: Duration = Duration::from_secs(12);
/// The name prefix of sqlx's SQLite connection threads (`sqlx-sqlite-worker-N`).
const STORE_THREADS: &str = "sqlx-sqlite";
/// Warning/error log lines kept per server for the report.
const KEEP_LINES: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Spool,
    Baseline,
    /// The relay scenario's mock OpenAI upstream.
    Upstream,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Spool => "spool",
            Kind::Baseline => "baseline",
            Kind::Upstream => "upstream",
        }
    }
}

/// How to start a server for one scenario.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Mock tokens per second per stream (0 = unlimited).
    pub rate: f64,
    pub stall_after: Option<u32>,
    /// `SPOOL_HEARTBEAT` (spool only).
    pub heartbeat: Option<&'static str>,
    /// Baseline only: most events per write when unpaced.
    pub baseline_batch: u64,
    /// Spool only: relay this OpenAI-compatible upstream (`SPOOL_BACKEND=openai`, model
    /// `up`) instead of running the mock backend.
    pub upstream: Option<SocketAddr>,
    /// Spool only: `SPOOL_MAX_ACTIVE` and `SPOOL_MAX_QUEUED` (else spool's defaults).
    pub limits: Option<(usize, usize)>,
    /// Upstream only: most chunks per write while the socket keeps up.
    pub upstream_batch: u32,
    /// Spool only: this `DATABASE_URL` (e.g. a shared PostgreSQL database) instead of
    /// SQLite in a temporary directory.
    pub database_url: Option<String>,
    /// Spool only: `SPOOL_NODE_ID`.
    pub node_id: Option<String>,
}

/// Where the servers come from.
#[derive(Debug, Clone)]
pub enum Target {
    Spawn(PathBuf),
    External { addr: SocketAddr, pid: Option<u32> },
}

#[derive(Default)]
pub struct LogLines {
    pub total: usize,
    pub problems: usize,
    pub kept: Vec<String>,
}

pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
    pub log: Arc<Mutex<LogLines>>,
}

/// Spawns a server and waits for its `listening on http://ADDR` line.
pub async fn start(kind: Kind, target: &Target, opts: &Options) -> anyhow::Result<Server> {
    let mut cmd;
    let mut dir = None;
    match (kind, target) {
        (Kind::Spool, Target::External { addr, pid }) => {
            return Ok(Server {
                kind,
                addr: *addr,
                pid: *pid,
                child: None,
                _dir: None,
                log: Arc::default(),
            });
        }
        (Kind::Spool, Target::Spawn(bin)) => {
            if !bin.exists() {
                bail!(
                    "the spool binary {} does not exist: run `cargo build --release` first, \
                     or pass --spool-bin PATH (or --url/--pid for a running server)",
                    bin.display()
                );
            }
            let tmp = tempfile::Builder::new().prefix("spool-bench").tempdir()?;
            cmd = Command::new(bin);
            for (k, _) in std::env::vars_os() {
                let k = k.to_string_lossy().into_owned();
                if k.starts_with("SPOOL_") || k == "DATABASE_URL" || k == "RUST_LOG" {
                    cmd.env_remove(k);
                }
            }
            match opts.upstream {
                None => {
                    cmd.env("SPOOL_BACKEND", "mock")
                        .env("SPOOL_MOCK_RATE", format!("{}", opts.rate))
                        .env("SPOOL_MOCK_TTFT_MS", "0");
                }
                Some(up) => {
                    cmd.env("SPOOL_BACKEND", "openai")
                        .env("SPOOL_OPENAI_BASE_URL", format!("http://{up}/v1"))
                        .env("SPOOL_OPENAI_MODELS", crate::upstream::MODEL);
                }
            }
            if let Some((active, queued)) = opts.limits {
                cmd.env("SPOOL_MAX_ACTIVE", active.to_string())
                    .env("SPOOL_MAX_QUEUED", queued.to_string());
            }
            let database_url = match &opts.database_url {
                Some(url) => url.clone(),
                None => format!("sqlite://{}", tmp.path().join("bench.db").display()),
            };
            cmd.env("SPOOL_ADDR", "127.0.0.1:0")
                .env("DATABASE_URL", database_url)
                .env("SPOOL_LOG", "warn,spool::app=info")
                .env("NO_COLOR", "1");
            if let Some(n) = opts.stall_after {
                cmd.env("SPOOL_MOCK_STALL_AFTER", n.to_string());
            }
            if let Some(h) = opts.heartbeat {
                cmd.env("SPOOL_HEARTBEAT", h);
            }
            if let Some(id) = &opts.node_id {
                cmd.env("SPOOL_NODE_ID", id);
            }
            dir = Some(tmp);
        }
        (Kind::Upstream, _) => {
            cmd = Command::new(std::env::current_exe().context("the load tool's own path")?);
            cmd.arg("--upstream-server")
                .arg("--upstream-batch")
                .arg(opts.upstream_batch.max(1).to_string());
        }
        (Kind::Baseline, _) => {
            cmd = Command::new(std::env::current_exe().context("the load tool's own path")?);
            cmd.arg("--baseline-server")
                .arg("--baseline-rate")
                .arg(format!("{}", opts.rate))
                .arg("--baseline-batch")
                .arg(opts.baseline_batch.max(1).to_string());
            if let Some(n) = opts.stall_after {
                cmd.arg("--baseline-stall-after").arg(n.to_string());
            }
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and only calls prctl,
    // which is async-signal-safe. The server dies with the load tool (even on Ctrl-C).
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start the {} server", kind.name()))?;
    let pid = child.id();
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + STARTUP;
    let mut seen = Vec::new();
    let addr = loop {
        let line = match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Err(_) => bail!(
                "the {} server did not print its address within {STARTUP:?}; its stderr:\n{}",
                kind.name(),
                seen.join("\n")
            ),
            Ok(Err(e)) => bail!("reading the {} server's stderr: {e}", kind.name()),
            Ok(Ok(None)) => {
                let status = match child.wait().await {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                };
                bail!(
                    "the {} server exited ({status}) before listening; its stderr:\n{}",
                    kind.name(),
                    seen.join("\n")
                )
            }
            Ok(Ok(Some(line))) => line,
        };
        if let Some(addr) = listening_addr(&line) {
            break addr;
        }
        seen.push(line);
    };
    let log = Arc::new(Mutex::new(LogLines::default()));
    let sink = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(mut log) = sink.lock() else { break };
            log.total += 1;
            if line.contains("WARN") || line.contains("ERROR") || line.contains("panicked") {
                log.problems += 1;
                if log.kept.len() < KEEP_LINES {
                    log.kept.push(line);
                }
            }
        }
    });
    Ok(Server {
        kind,
        addr,
        pid,
        child: Some(child),
        _dir: dir,
        log,
    })
}

fn listening_addr(line: &str) -> Option<SocketAddr> {
    let at = line.find("listening on http://")? + "listening on http://".len();
    let rest = &line[at..];
    let end = rest
        .find(|c: char| {
            !(c.is_ascii_alphanumeric() || c == '.' || c == ':' || c == '[' || c == ']')
        })
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// What became of a server at the end of a scenario.
pub struct Stopped {
    /// Time from SIGTERM to exit; `None` if it had to be killed (or was not ours).
    pub graceful: Option<Duration>,
    pub status: Option<std::process::ExitStatus>,
}

impl Server {
    /// Whether this tool spawned the process (and so stops it).
    pub fn is_child(&self) -> bool {
        self.child.is_some()
    }

    pub fn cpu_secs(&self) -> Option<f64> {
        self.pid.and_then(cpu_secs)
    }

    /// CPU of the store's connection threads (SQLite through sqlx: one thread per
    /// connection), in seconds; 0 for a process that has none.
    pub fn store_cpu_secs(&self) -> Option<f64> {
        self.pid
            .and_then(|pid| threads_cpu_secs(pid, STORE_THREADS))
    }

    pub fn mem(&self) -> Option<Mem> {
        self.pid.and_then(mem)
    }

    /// SIGTERM, wait, then SIGKILL; nothing for an external server.
    pub async fn stop(mut self) -> Stopped {
        let Some(mut child) = self.child.take() else {
            return Stopped {
                graceful: None,
                status: None,
            };
        };
        let begun = Instant::now();
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(STOP, child.wait()).await {
            Ok(Ok(status)) => Stopped {
                graceful: Some(begun.elapsed()),
                status: Some(status),
            },
            _ => {
                let _ = child.kill().await;
                Stopped {
                    graceful: None,
                    status: child.try_wait().ok().flatten(),
                }
            }
        }
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of a process, in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    stat_cpu(&Path::new("/proc").join(pid.to_string()).join("stat"))
}

/// utime + stime of the threads of `pid` whose name starts with `prefix` (Linux keeps
/// 15 bytes of a thread's name), in seconds: e.g. `sqlx-sqlite` for the store's
/// connection threads (the writer's, the checkpointer's and the readers').
pub fn threads_cpu_secs(pid: u32, prefix: &str) -> Option<f64> {
    let dir = Path::new("/proc").join(pid.to_string()).join("task");
    let mut total = 0.0;
    for task in std::fs::read_dir(dir).ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with(prefix) {
            total += stat_cpu(&task.path().join("stat")).unwrap_or(0.0);
        }
    }
    Some(total)
}

/// This process's own utime + stime, in seconds.
pub fn self_cpu_secs() -> Option<f64> {
    stat_cpu(Path::new("/proc/self/stat"))
}

fn stat_cpu(path: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

#[derive(Debug, Clone, Copy)]
pub struct Mem {
    pub rss_kb: u64,
    pub hwm_kb: u64,
}

pub fn mem(pid: u32) -> Option<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line[name.len()..]
            .split_ascii_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some(Mem {
        rss_kb: field("VmRSS:")?,
        hwm_kb: field("VmHWM:")?,
    })
}

/// Lifts RLIMIT_NOFILE's soft limit to the hard one; returns the soft limit after.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
    let soft = limit.rlim_cur as u64;
    soft
}

/// The kernel's count of connections dropped because a listen queue was full
/// (`TcpExt: ListenOverflows`, system-wide).
pub fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?;
    let values = lines.next()?;
    let at = names
        .split_ascii_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_ascii_whitespace().nth(at)?.parse().ok()
}

/// The local ephemeral port range, for the idle scenario's sanity check.
pub fn ephemeral_ports() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_ascii_whitespace().map(|s| s.parse::<u64>().ok());
    let lo = it.next()??;
    let hi = it.next()??;
    Some(hi.saturating_sub(lo) + 1)
}
