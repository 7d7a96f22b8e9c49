//! Request bodies: the same bytes as `POST /v1/streams`, a session's turn
//! (`POST /v1/sessions/{id}/messages`), `POST /v1/sessions` and
//! `POST /v1/chat/completions` and `POST /v1/responses` — decoded and validated as the
//! handlers do.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spool::http::inputs::{
    ChatRequest, ResponsesRequest, SessionParams, StreamParams, decode_json,
};
use spool_fuzz::{SETUP, check_body, check_refused};

fuzz_target!(|data: &[u8]| {
    let (config, models) = &*SETUP;
    let config = &config.limits;
    check_body(decode_json::<StreamParams>(data).and_then(|p| p.validate(config, models)));
    check_body(
        decode_json::<StreamParams>(data).and_then(|p| p.validate_turn(config, models, None)),
    );
    check_body(decode_json::<ChatRequest>(data)
            .and_then(|c| c.into_params())
            .and_then(|p| p.validate(config, models)));
    check_body(decode_json::<ResponsesRequest>(data)
            .and_then(|r| r.into_params(Vec::new()))
            .and_then(|p| p.validate(config, models)));
    if let Err(e) = decode_json::<SessionParams>(data) {
        check_refused(&e);
    }
});
