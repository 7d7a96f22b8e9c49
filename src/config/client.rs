//! The client commands' arguments: `spool generate` and `spool tail`.

use clap::ValueEnum;

pub(super) const GENERATE_EXAMPLES: &str = "\
Examples:
  spool generate \"Tell me about rivers\"
  spool generate --max-tokens 50 --model mock \"hi\"
  spool generate --json \"hi\" | jq .
  echo \"a long prompt\" | spool generate -

A dropped connection is resumed by itself (Last-Event-ID); a notice goes to stderr and
the text on stdout is never repeated. Reasoning goes to stderr; tool calls and refusals
get lines of their own on stdout ([tool call 0: name] {arguments}). Exit codes: 0 done,
3 cancelled, 4 the stream failed, 5 the server could not be reached or refused the
request, 6 the answer ends with tool calls, 130 interrupted (stream left running).";

pub(super) const TAIL_EXAMPLES: &str = "\
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
