//! The one cursor rule. Every surface that resumes a stream — `Last-Event-ID`,
//! `?after=`, a WebSocket `subscribe`'s `after`, and formats with cursors of their own
//! (a frame count) — turns the client's text into a number with [`parse`] and asks
//! [`resolve`] what it means: replay after it, nothing follows (the stream ended
//! there), or it is beyond the end. A surface says the outcome in its own words (SSE:
//! `204` / `400`; WebSocket: `stream_ended` / `cursor_out_of_range`).
//!
//! A cursor is never silently treated as "from the start".

use crate::store::StoreError;

/// A cursor the client sent that is not a non-negative integer (digits only, fits u64).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the resume point {0:?} is not a non-negative integer")]
pub struct InvalidCursor(pub String);

/// Parses a resume point: ASCII digits only, at least one, a value a `u64` holds.
pub fn parse(raw: &str) -> Result<u64, InvalidCursor> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(InvalidCursor(raw.to_owned()));
    }
    raw.parse().map_err(|_| InvalidCursor(raw.to_owned()))
}

/// What a cursor means for a stream whose last stored position is `last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Replay what follows `after`, then follow live.
    After(u64),
    /// `after` is the stream's terminal position: nothing follows it.
    Ended,
}

/// Why a stream cannot be followed.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// No such stream, or not the caller's.
    #[error("no such stream")]
    NotFound,
    /// The cursor is past the stream's last position.
    #[error("the resume point {after} is beyond the stream's last event ({last})")]
    BeyondEnd { after: u64, last: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The rule, in the units of the format asking (seqs, or a format's own frame count):
/// `after` past `last` is an error; `after` at `last` of an ended stream ends at once;
/// anything else replays after `after`.
pub fn resolve(after: u64, last: u64, ended: bool) -> Result<Resume, FollowError> {
    if after > last {
        return Err(FollowError::BeyondEnd { after, last });
    }
    if after == last && ended {
        return Ok(Resume::Ended);
    }
    Ok(Resume::After(after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors() {
        assert_eq!(parse("0").unwrap(), 0);
        assert_eq!(parse("42").unwrap(), 42);
        for bad in [
            "",
            "-1",
            "+1",
            " 1",
            "1.0",
            "abc",
            "99999999999999999999999",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_rule() {
        assert_eq!(resolve(0, 5, false).unwrap(), Resume::After(0));
        assert_eq!(resolve(5, 5, false).unwrap(), Resume::After(5));
        assert_eq!(resolve(5, 5, true).unwrap(), Resume::Ended);
        assert_eq!(resolve(4, 5, true).unwrap(), Resume::After(4));
        assert!(matches!(
            resolve(6, 5, true),
            Err(FollowError::BeyondEnd { after: 6, last: 5 })
        ));
    }

    /// What SPEC §3 asks of a resume point, written the slow way: ASCII digits only, at
    /// least one, and a value a `u64` holds.
    fn oracle(raw: &str) -> Option<u64> {
        if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        raw.bytes().try_fold(0u64, |n, b| {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        })
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn check(raw: &str) -> Result<(), TestCaseError> {
            match (parse(raw), oracle(raw)) {
                (Ok(n), Some(m)) => prop_assert_eq!(n, m, "{:?}", raw),
                (Err(_), None) => {}
                (got, want) => prop_assert!(false, "{raw:?}: got {got:?}, want {want:?}"),
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn any_text_is_a_cursor_exactly_when_it_is_digits_that_fit(raw in any::<String>()) {
                check(&raw)?;
            }

            #[test]
            fn near_misses_are_judged_like_the_spec(
                raw in "[-+ \\t0-9.eE_x\u{0660}-\u{0669}\u{ff10}-\u{ff19}]{0,24}",
            ) {
                check(&raw)?;
            }

            #[test]
            fn every_u64_round_trips(n in any::<u64>(), zeros in 0usize..3) {
                let text = format!("{}{n}", "0".repeat(zeros));
                prop_assert_eq!(parse(&text).ok(), Some(n));
            }

            #[test]
            fn signs_spaces_fractions_and_overflow_are_refused(
                n in any::<u64>(),
                form in 0usize..7,
            ) {
                let text = match form {
                    0 => format!("-{n}"),
                    1 => format!("+{n}"),
                    2 => format!(" {n}"),
                    3 => format!("{n} "),
                    4 => format!("{n}.0"),
                    5 => format!("{}", u128::from(n) + u128::from(u64::MAX) + 1),
                    _ => format!("{n}\n"),
                };
                prop_assert!(parse(&text).is_err(), "{:?}", text);
            }
        }
    }
}
