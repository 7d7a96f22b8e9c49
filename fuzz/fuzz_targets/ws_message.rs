//! WebSocket text frames (SPEC §4): parsed, and for `generate` and `session.say` their
//! parameters validated as `POST /v1/streams` validates a body; every refusal is a
//! named error whose reply is one JSON object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spool::http::inputs::{Incoming, error, parse, stream_params};
use spool_fuzz::{SETUP, check_body};

const CODES: &[&str] = &[
    "invalid_json",
    "invalid_message",
    "invalid_cursor",
    "unknown_type",
];

fuzz_target!(|data: &[u8]| {
    // The socket only ever sees valid UTF-8 (a text frame that is not is a protocol error).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (config, models) = &*SETUP;
    let config = &config.limits;
    match parse(text) {
        Ok(Incoming::Generate { body, .. }) => {
            check_body(stream_params(body).and_then(|p| p.validate(config, models)));
        }
        Ok(Incoming::SessionSay { body, .. }) => {
            check_body(stream_params(body).and_then(|p| p.validate_turn(config, models, None)));
        }
        Ok(_) => {}
        Err(rejected) => {
            assert!(CODES.contains(&rejected.code.as_str()), "{rejected:?}");
            let reply = error(
                rejected.code.as_str(),
                &rejected.message,
                rejected.reference.as_deref(),
                None,
            );
            let v: serde_json::Value = match serde_json::from_str(&reply) {
                Ok(v) => v,
                Err(e) => panic!("the error reply is not JSON: {e}: {reply}"),
            };
            assert_eq!(v["ref"].as_str(), rejected.reference.as_deref());
        }
    }
});
