//! Black-box tests: the real server on a port-0 socket with a temporary SQLite file,
//! driven over HTTP the way clients drive it. One binary, so it links once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;
#[path = "../common/pg.rs"]
mod pg;
#[path = "../common/process.rs"]
mod process;
#[path = "../common/ready.rs"]
mod ready;
#[path = "../common/sse.rs"]
mod sse;

mod abandon;
mod agent_loop;
mod architecture;
mod auth;
mod bad_input;
mod browser;
mod chats;
mod cli;
mod cluster;
mod crash;
mod drain;
mod durable;
mod examples;
mod fairness;
mod faults;
mod holes;
mod hostile;
mod http2;
mod idempotency;
mod lifecycle;
mod logs;
mod openai;
mod ops;
mod responses;
mod resume;
mod sdk;
mod session_admin;
mod session_history;
mod sessions;
mod shutdown;
mod slow_reader;
mod store_suite;
mod subscriptions;
mod tls;
mod tools;
mod upgrade;
mod upstream;
mod wire;
mod ws;
