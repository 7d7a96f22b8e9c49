//! Property-test inputs for the request parsers (test builds only): JSON-ish values
//! biased towards the field names the parsers look for, and the shared setup they
//! validate against. The longer, coverage-guided runs are the `cargo fuzz` targets in
//! `fuzz/`.

use std::sync::{Arc, LazyLock};

use proptest::prelude::*;
use serde_json::{Map, Value};

use crate::config::{LimitsConfig, ServeConfig};
use crate::http::error::ApiError;
use crate::llm::mock::MockBackend;
use crate::llm::{GenerateRequest, Models, Prompt};

/// The default configuration and one mock model, built once.
pub static SETUP: LazyLock<(LimitsConfig, Models)> = LazyLock::new(|| {
    let mut models = Models::default();
    models.add(Arc::new(MockBackend::default()));
    (ServeConfig::defaults().limits, models)
});

/// Bounded runs: a few hundred cases per property keeps `cargo test` quick. Failures
/// are not written to disk: a case found becomes a named regression test.
pub fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Strings a parser might treat specially, besides arbitrary text.
const INTERESTING: &[&str] = &[
    "",
    " ",
    "user",
    "system",
    "assistant",
    "developer",
    "text",
    "image_url",
    "mock",
    "generate",
    "subscribe",
    "cancel",
    "unsubscribe",
    "session.say",
    "ping",
    "st_0123456789abcdef",
    "\u{0}",
    "\u{feff}",
    "é",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(INTERESTING).prop_map(str::to_owned),
        2 => any::<String>(),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-3i64..300).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1.0f64..3.0).prop_map(Value::from),
        any::<f64>().prop_map(Value::from), // NaN and infinities become null
        Just(Value::from(u64::MAX)),
        Just(Value::from(u32::MAX as u64 + 1)),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        text().prop_map(Value::from),
    ]
}

/// A key: one of `fields` most of the time, else any text.
fn key(fields: &'static [&'static str]) -> BoxedStrategy<String> {
    if fields.is_empty() {
        return text().boxed();
    }
    prop_oneof![
        4 => prop::sample::select(fields).prop_map(str::to_owned),
        1 => text(),
    ]
    .boxed()
}

/// Any JSON value, nested a few levels, whose objects mostly use `fields` as keys.
pub fn json(fields: &'static [&'static str]) -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(fields), inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A JSON object with members from `fields` (and a few others): what a client that
/// knows the API roughly, but not exactly, would send.
pub fn object(fields: &'static [&'static str]) -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec((key(fields), json(fields)), 0..8)
        .prop_map(|members| members.into_iter().collect())
}

/// Bytes a hostile client might send as a body: arbitrary, or JSON text cut or
/// corrupted at one place.
pub fn body(fields: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        object(fields).prop_map(|o| Value::Object(o).to_string().into_bytes()),
        (object(fields), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(o, at, byte)| {
            let mut bytes = Value::Object(o).to_string().into_bytes();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            bytes
        }),
        (object(fields), any::<prop::sample::Index>()).prop_map(|(o, at)| {
            let mut bytes = Value::Object(o).to_string().into_bytes();
            bytes.truncate(at.index(bytes.len()));
            bytes
        }),
    ]
}

/// One member of a [`shaped`] object: its name and its plausible values.
pub type Field = (&'static str, BoxedStrategy<Value>);

/// An object a client that knows the API would send, give or take: each `required`
/// member nearly always present, each `optional` one now and then, with a plausible
/// value (once in a while any JSON at all), and now and then a member the parser does
/// not know.
pub fn shaped(required: Vec<Field>, optional: Vec<Field>) -> BoxedStrategy<Map<String, Value>> {
    let member = |(name, values): Field, presence: f64| {
        prop::option::weighted(
            presence,
            prop_oneof![19 => values, 1 => json(&[])].prop_map(move |v| (name.to_owned(), v)),
        )
    };
    let members: Vec<_> = required
        .into_iter()
        .map(|f| member(f, 0.95))
        .chain(optional.into_iter().map(|f| member(f, 0.3)))
        .collect();
    (members, prop::collection::vec((text(), leaf()), 0..2))
        .prop_map(|(known, unknown)| known.into_iter().flatten().chain(unknown).collect())
        .boxed()
}

/// Plausible values: a string (often an interesting one).
pub fn a_string() -> BoxedStrategy<Value> {
    text().prop_map(Value::from).boxed()
}

/// Plausible values: integers around and across `edges` (limits of the field), and
/// a few that are not integers.
pub fn an_integer(edges: &'static [i64]) -> BoxedStrategy<Value> {
    prop_oneof![
        12 => prop::sample::select(edges)
            .prop_flat_map(|e| e.saturating_sub(1)..=e.saturating_add(1))
            .prop_map(Value::from),
        1 => number(),
        1 => Just(Value::from(1.5)),
        1 => Just(Value::from("5")),
    ]
    .boxed()
}

/// Plausible values: numbers in and just out of `low..=high`, and the extremes.
pub fn a_float(low: f64, high: f64) -> BoxedStrategy<Value> {
    prop_oneof![
        4 => (low..=high).prop_map(Value::from),
        1 => prop::sample::select(vec![low, high, -0.0, low - 1e-6, high + 1e-6, 1e39, -1e39, f64::MAX, f64::MIN_POSITIVE])
            .prop_map(Value::from),
        1 => number(),
    ]
    .boxed()
}

/// Plausible values: a list of `item`s.
pub fn a_list(item: BoxedStrategy<Value>, len: std::ops::Range<usize>) -> BoxedStrategy<Value> {
    prop::collection::vec(item, len)
        .prop_map(Value::Array)
        .boxed()
}

/// Plausible values: one of `values`.
pub fn one_of(values: &'static [&'static str]) -> BoxedStrategy<Value> {
    prop_oneof![
        4 => prop::sample::select(values).prop_map(Value::from),
        1 => text().prop_map(Value::from),
    ]
    .boxed()
}

/// Plausible values: an object with `fields`.
pub fn an_object(required: Vec<Field>, optional: Vec<Field>) -> BoxedStrategy<Value> {
    shaped(required, optional).prop_map(Value::Object).boxed()
}

/// What every accepted request keeps, and that it survives being stored (the
/// engine stores it as JSON and reads it back to continue a stream).
pub fn check_accepted(r: &GenerateRequest) -> Result<(), TestCaseError> {
    let config = &SETUP.0;
    prop_assert!((1..=config.max_tokens_limit).contains(&r.max_tokens));
    prop_assert!(r.temperature.is_none_or(|t| (0.0..=2.0).contains(&t)));
    prop_assert!(r.top_p.is_none_or(|p| p > 0.0 && p <= 1.0));
    prop_assert!(r.stop.len() <= 4 && r.stop.iter().all(|s| !s.is_empty()));
    prop_assert!(!r.model.trim().is_empty());
    match &r.prompt {
        Prompt::Text(t) => prop_assert!(!t.trim().is_empty()),
        Prompt::Messages(ms) => {
            prop_assert!(ms.iter().any(|m| !m.is_empty()))
        }
    }
    prop_assert!(r.prompt.flat_text().len() <= config.max_prompt_bytes + 4096);
    let stored = serde_json::to_value(r).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: GenerateRequest =
        serde_json::from_value(stored.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(serde_json::to_value(&back).ok(), Some(stored));
    Ok(())
}

/// A rejection is a `400` with one of the body codes and a message.
pub fn check_rejected(e: &ApiError) -> Result<(), TestCaseError> {
    prop_assert_eq!(e.status, 400, "{:?}", e);
    prop_assert!(
        ["invalid_json", "invalid_request", "prompt_too_long"].contains(&e.code.as_str()),
        "{:?}",
        e
    );
    prop_assert!(!e.message.is_empty());
    Ok(())
}

pub fn check(result: Result<GenerateRequest, ApiError>) -> Result<(), TestCaseError> {
    match result {
        Ok(r) => check_accepted(&r),
        Err(e) => check_rejected(&e),
    }
}

/// Runs `check` on `cases` shaped bodies; fails unless at least `min_accepted`
/// were accepted (else the property would only ever see rejections).
pub fn run_shaped(
    (required, optional): (Vec<Field>, Vec<Field>),
    cases: u32,
    min_accepted: u32,
    accept: impl Fn(&[u8]) -> Vec<Result<GenerateRequest, ApiError>>,
) {
    let accepted = std::cell::Cell::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(config(cases));
    let result = runner.run(&shaped(required, optional), |o| {
        let bytes = Value::Object(o).to_string().into_bytes();
        for result in accept(&bytes) {
            if result.is_ok() {
                accepted.set(accepted.get() + 1);
            }
            check(result)?;
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(
        accepted.get() >= min_accepted,
        "only {} results of {cases} cases were acceptances",
        accepted.get()
    );
}
