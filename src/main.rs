//! The `spool` binary: parse the command line, set up logging, run.

use std::io::IsTerminal;

use clap::Parser;
use spool::config::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The client commands print to the terminal; they log nothing.
    match cli.command {
        Some(Command::Generate(args)) => return spool::cli::generate(args).await,
        Some(Command::Tail(args)) => return spool::cli::tail(args).await,
        None | Some(Command::Serve) => {}
    }
    let filter = cli
        .serve
        .log
        .filter
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info,sqlx=warn".to_owned());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    match cli.serve.log.format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        // Event fields at the top level, next to `message`; spans under `span`/`spans`.
        LogFormat::Json => logs.with_ansi(false).json().flatten_event(true).init(),
    }

    let format = cli.serve.log.format;
    let result = spool::run(cli.serve, spool::shutdown_signal()).await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // A fatal condition says which status a supervisor should see (75: restart me).
            let code = e
                .downcast_ref::<spool::fatal::Fatal>()
                .map_or(1, spool::fatal::Fatal::exit_code);
            match format {
                LogFormat::Text => eprintln!("spool: {e:#}"),
                // A log collector parses every line.
                LogFormat::Json => tracing::error!(error = %format!("{e:#}"), "spool stopped"),
            }
            std::process::ExitCode::from(code)
        }
    }
}
