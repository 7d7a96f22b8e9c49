//! Tests with the real embedded model (SmolLM2-135M-Instruct), black-box over HTTP
//! where possible. The model is fetched once per machine into the cache directory (or
//! taken from `SPOOL_MODEL_PATH`); all tests share one server, so they also exercise
//! continuous batching against each other.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod crash;
mod forward;
#[path = "../common/process.rs"]
mod process;
#[path = "../common/ready.rs"]
mod ready;
mod responses;
mod server;
mod sessions;
#[path = "../common/sse.rs"]
mod sse;
mod streams;
mod tokenizer;
