//! Configuration: clap structs whose every field is also an environment variable.
//!
//! `spool serve` reads a [`ServeConfig`], made of one part per part of the server
//! ([`parts`]): each part is handed only to the code it configures. The names of SPEC
//! §10 are fixed (outside tools rely on them); the rest follow the same `SPOOL_` pattern.
//! `.env.example` lists every one with its default (a test holds the two together).

mod client;
mod parts;

use clap::{Parser, Subcommand};

pub use client::{ClientArgs, GenerateArgs, OnInterrupt, TailArgs};
pub use parts::{
    AuthConfig, BackendKind, ClusterConfig, LimitsConfig, LocalConfig, LogConfig, LogFormat,
    MockConfig, OpenAiConfig, ServerConfig, StoreConfig, Synchronous, TlsConfig, WsConfig,
};

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
    #[command(after_help = client::GENERATE_EXAMPLES)]
    Generate(GenerateArgs),
    /// Follow an existing stream to its end.
    #[command(after_help = client::TAIL_EXAMPLES)]
    Tail(TailArgs),
}

/// Everything `spool serve` reads, part by part.
#[derive(Debug, Clone, Parser)]
pub struct ServeConfig {
    #[command(flatten)]
    pub server: ServerConfig,
    #[command(flatten)]
    pub store: StoreConfig,
    #[command(flatten)]
    pub cluster: ClusterConfig,
    /// Which backend generates tokens.
    #[arg(
        long = "backend",
        env = "SPOOL_BACKEND",
        value_enum,
        default_value = "local",
        global = true,
        help_heading = "Backend"
    )]
    pub backend: BackendKind,
    #[command(flatten)]
    pub local: LocalConfig,
    #[command(flatten)]
    pub mock: MockConfig,
    #[command(flatten)]
    pub openai: OpenAiConfig,
    #[command(flatten)]
    pub limits: LimitsConfig,
    #[command(flatten)]
    pub ws: WsConfig,
    #[command(flatten)]
    pub tls: TlsConfig,
    #[command(flatten)]
    pub auth: AuthConfig,
    #[command(flatten)]
    pub log: LogConfig,
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
}

impl StoreConfig {
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
}

/// The per-key caps in effect: `None` is no cap of the key's own (the global limits
/// still apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerKey {
    /// Most generations of one key running at once.
    pub active: Option<usize>,
    /// Most generations of one key waiting for a run slot.
    pub queued: Option<usize>,
}

impl LimitsConfig {
    /// The per-key caps for a server with `keys` API keys: what is set (`0`: none), or
    /// by default half of the global limit (rounded up) with two or more keys — so one
    /// key can never hold every slot while another is configured — and none otherwise.
    pub fn per_key(&self, keys: usize) -> PerKey {
        let cap = |set: Option<usize>, global: usize| match set {
            Some(0) => None,
            Some(n) => Some(n),
            None if keys >= 2 => Some(global.div_ceil(2)),
            None => None,
        };
        PerKey {
            active: cap(self.max_active_per_key, self.max_active.max(1)),
            queued: cap(self.max_queued_per_key, self.max_queued),
        }
    }
}

impl AuthConfig {
    /// How many distinct API keys are configured.
    pub fn key_count(&self) -> usize {
        self.api_keys
            .iter()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    }
}

impl ClusterConfig {
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
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;

    #[test]
    fn defaults_match_spec() {
        let c = ServeConfig::defaults();
        assert_eq!(c.server.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.store.database_url, "sqlite://spool.db");
        assert_eq!(c.backend, BackendKind::Local);
        assert_eq!(c.server.heartbeat, Duration::from_secs(15));
        assert!(c.limits.max_active + c.limits.max_queued >= 1000);
        assert_eq!(c.log.format, LogFormat::Text);
    }

    #[test]
    fn per_key_caps_default_to_half_with_several_keys() {
        let mut c = ServeConfig::defaults();
        c.limits.max_active = 5;
        c.limits.max_queued = 8;
        let none = PerKey {
            active: None,
            queued: None,
        };
        assert_eq!(c.limits.per_key(0), none);
        assert_eq!(c.limits.per_key(1), none);
        let half = PerKey {
            active: Some(3),
            queued: Some(4),
        };
        assert_eq!(c.limits.per_key(2), half);
        assert_eq!(c.limits.per_key(7), half);
        c.limits.max_active_per_key = Some(0);
        c.limits.max_queued_per_key = Some(2);
        let set = PerKey {
            active: None,
            queued: Some(2),
        };
        assert_eq!(c.limits.per_key(2), set);
        assert_eq!(c.limits.per_key(0), set);
        c.auth.api_keys = vec!["a".into(), " a ".into(), "".into(), "b".into()];
        assert_eq!(c.auth.key_count(), 2);
    }

    #[test]
    fn sqlite_paths() {
        let mut c = ServeConfig::defaults().store;
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

    /// Every setting is in `.env.example` and every name there is a setting; each flag
    /// is its variable's name in kebab case without the `SPOOL_` prefix.
    #[test]
    fn every_setting_is_in_env_example_under_its_contract_name() {
        use clap::CommandFactory;
        let command = Cli::command();
        let mut settings = BTreeSet::new();
        let mut defaults = std::collections::BTreeMap::new();
        let args = command
            .get_arguments()
            .chain(command.get_subcommands().flat_map(|c| c.get_arguments()));
        for arg in args {
            let Some(env) = arg.get_env() else { continue };
            let env = env.to_string_lossy().into_owned();
            let default: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            defaults.insert(env.clone(), default.join(","));
            let long = arg.get_long().unwrap_or_default().to_owned();
            let expected = env
                .strip_prefix("SPOOL_")
                .unwrap_or(&env)
                .to_lowercase()
                .replace('_', "-");
            assert_eq!(long, expected, "the flag of {env}");
            settings.insert(env);
        }
        let example = include_str!("../../.env.example");
        let listed: BTreeSet<String> = example
            .lines()
            .map(|l| l.trim_start_matches('#').trim())
            .filter_map(|l| l.split_once('=').map(|(name, _)| name.trim()))
            .filter(|name| {
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            })
            .map(str::to_owned)
            .collect();
        // A setting given a value there (not commented out) shows its default.
        for line in example.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let Some((name, value)) = line.split_once('=') else {
                continue;
            };
            if let Some(default) = defaults.get(name.trim()) {
                assert_eq!(
                    value.trim(),
                    default,
                    ".env.example's value of {name} is not its default"
                );
            }
        }
        // Read by libraries, not by spool's flags.
        let outside = ["CANDLE_NUM_THREADS", "RUST_LOG"];
        let listed: BTreeSet<String> = listed
            .into_iter()
            .filter(|n| !outside.contains(&n.as_str()))
            .collect();
        assert_eq!(
            settings.difference(&listed).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "settings missing from .env.example"
        );
        assert_eq!(
            listed.difference(&settings).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "names in .env.example that are no setting"
        );
    }
}
