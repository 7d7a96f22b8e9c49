//! What the fuzz targets share: the server's default configuration with the mock
//! model, and the checks every parser's answer must pass. A failed check panics,
//! which libFuzzer reports as a crash (and saves the input under `artifacts/`).

use std::sync::{Arc, LazyLock};

use spool::ServeConfig;
use spool::http::ApiError;
use spool::llm::mock::MockBackend;
use spool::llm::{GenerateRequest, Models, Prompt};

/// The default configuration and the mock model, as a fresh server has them.
pub static SETUP: LazyLock<(ServeConfig, Models)> = LazyLock::new(|| {
    let mut models = Models::default();
    models.add(Arc::new(MockBackend::default()));
    (ServeConfig::defaults(), models)
});

/// An answer to a request body: accepted within the limits, or refused with a `400`.
pub fn check_body(result: Result<GenerateRequest, ApiError>) {
    match result {
        Ok(request) => check_accepted(&request),
        Err(e) => check_refused(&e),
    }
}

/// A refusal is a `4xx` with a code and a message: never a `5xx`.
pub fn check_refused(e: &ApiError) {
    assert!(e.status.is_client_error(), "not a 4xx: {e:?}");
    assert!(!e.code.as_str().is_empty() && !e.message.is_empty(), "{e:?}");
}

/// An accepted request keeps the limits, and survives being stored and read back.
pub fn check_accepted(r: &GenerateRequest) {
    let config = &SETUP.0;
    assert!(
        (1..=config.limits.max_tokens_limit).contains(&r.max_tokens),
        "{r:?}"
    );
    assert!(
        r.temperature.is_none_or(|t| (0.0..=2.0).contains(&t)),
        "{r:?}"
    );
    assert!(r.top_p.is_none_or(|p| p > 0.0 && p <= 1.0), "{r:?}");
    assert!(
        r.stop.len() <= 4 && r.stop.iter().all(|s| !s.is_empty()),
        "{r:?}"
    );
    assert!(!r.model.trim().is_empty(), "{r:?}");
    let blank = match &r.prompt {
        Prompt::Text(t) => t.trim().is_empty(),
        Prompt::Messages(ms) => ms.iter().all(|m| m.content.trim().is_empty()),
    };
    assert!(!blank, "{r:?}");
    let stored = serde_json::to_string(r).unwrap_or_default();
    let back: GenerateRequest = match serde_json::from_str(&stored) {
        Ok(back) => back,
        Err(e) => panic!("a stored request does not read back: {e}: {stored}"),
    };
    assert_eq!(serde_json::to_string(&back).ok(), Some(stored));
}
