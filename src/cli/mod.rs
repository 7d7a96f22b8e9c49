//! The command-line client (SPEC §10): `spool generate` starts a stream and prints it,
//! `spool tail` follows one. Both resume by themselves after a dropped connection
//! (`Last-Event-ID`), telling stderr, never repeating text on stdout.

mod follow;

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use serde_json::{Value, json};

use crate::config::{GenerateArgs, OnInterrupt, TailArgs};
use follow::{Ending, Follower};

/// Exit codes that say what happened.
pub mod exit {
    pub const DONE: u8 = 0;
    pub const CANCELLED: u8 = 3;
    pub const FAILED: u8 = 4;
    pub const UNREACHABLE: u8 = 5;
    /// The answer ends with tool calls for the caller to run.
    pub const TOOL_CALLS: u8 = 6;
    pub const INTERRUPTED: u8 = 130;
}

pub async fn generate(args: GenerateArgs) -> ExitCode {
    let prompt = if args.prompt == "-" {
        let mut text = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut text) {
            eprintln!("spool: cannot read the prompt from stdin: {e}");
            return ExitCode::from(exit::UNREACHABLE);
        }
        text
    } else {
        args.prompt.clone()
    };
    let base = args.client.base.trim_end_matches('/').to_owned();
    let client = reqwest::Client::new();
    let mut body = json!({ "prompt": prompt });
    if let Some(m) = &args.model {
        body["model"] = json!(m);
    }
    if let Some(n) = args.max_tokens {
        body["max_tokens"] = json!(n);
    }
    let response = match client
        .post(format!("{base}/v1/streams"))
        .json(&body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("spool: cannot reach the server at {base}: {}", root(&e));
            return ExitCode::from(exit::UNREACHABLE);
        }
    };
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let message = answer["error"]["message"].as_str().unwrap_or("no details");
        eprintln!("spool: the server refused the request ({status}): {message}");
        return ExitCode::from(exit::UNREACHABLE);
    }
    let Some(id) = answer["id"].as_str().map(str::to_owned) else {
        eprintln!("spool: the server's answer has no stream id");
        return ExitCode::from(exit::UNREACHABLE);
    };
    let mut follower = Follower::new(
        client.clone(),
        base.clone(),
        id.clone(),
        0,
        args.client.json,
    );
    let ending = tokio::select! {
        ending = follower.run() => ending,
        _ = tokio::signal::ctrl_c() => {
            let cancel = match args.on_interrupt {
                OnInterrupt::Cancel => true,
                OnInterrupt::Leave => false,
                OnInterrupt::Ask => ask_cancel(&id).await,
            };
            if cancel {
                let _ = client.post(format!("{base}/v1/streams/{id}/cancel")).send().await;
                eprintln!("spool: cancelling {id}");
                // Print the rest up to the cancelled end.
                follower.run().await
            } else {
                let after = follower.last_id();
                eprintln!("spool: {id} is still running; follow it with: spool tail {id} --after {after}");
                return ExitCode::from(exit::INTERRUPTED);
            }
        }
    };
    finish(ending)
}

pub async fn tail(args: TailArgs) -> ExitCode {
    let base = args.client.base.trim_end_matches('/').to_owned();
    let mut follower = Follower::new(
        reqwest::Client::new(),
        base,
        args.id,
        args.after,
        args.client.json,
    );
    finish(follower.run().await)
}

fn finish(ending: Ending) -> ExitCode {
    let _ = std::io::stdout().flush();
    match ending {
        Ending::Done { reason } => ExitCode::from(match reason.as_str() {
            "cancelled" => exit::CANCELLED,
            "tool_calls" => exit::TOOL_CALLS,
            _ => exit::DONE,
        }),
        Ending::Failed { code, message } => {
            eprintln!("spool: the stream failed: {code}: {message}");
            ExitCode::from(exit::FAILED)
        }
        Ending::Unreachable(message) => {
            eprintln!("spool: {message}");
            ExitCode::from(exit::UNREACHABLE)
        }
    }
}

/// Asks on the terminal whether to cancel; without a terminal, leaves it running.
async fn ask_cancel(id: &str) -> bool {
    if !std::io::stdin().is_terminal() {
        return false;
    }
    eprint!("\nspool: cancel {id} on the server? [y/N] ");
    let _ = std::io::stderr().flush();
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).ok();
        matches!(line.trim(), "y" | "Y" | "yes")
    })
    .await
    .unwrap_or(false)
}

/// The innermost cause of a transport error (no URL noise).
fn root(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
