//! The resume point (`Last-Event-ID` or `?after=`, SPEC §3): taken exactly when it is
//! ASCII digits that fit a `u64`, else `400 invalid_cursor`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spool::http::ApiError;
use spool::http::inputs::parse_cursor;

fuzz_target!(|data: &[u8]| {
    // As a header value: what `http` accepts, then the handler's `to_str`.
    if let Ok(value) = http::HeaderValue::from_bytes(data)
        && let Ok(text) = value.to_str()
    {
        check(text);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
});

fn check(raw: &str) {
    let digits = !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit());
    // The number without leading zeros, and whether a u64 holds it (20 digits at most,
    // and as text no greater than u64::MAX).
    let canonical = match raw.trim_start_matches('0') {
        "" => "0",
        rest => rest,
    };
    let max = u64::MAX.to_string();
    let fits = canonical.len() < max.len() || (canonical.len() == max.len() && *canonical <= *max);
    match parse_cursor(raw) {
        Ok(n) => {
            assert!(digits && fits, "took {raw:?}");
            assert_eq!(n.to_string(), canonical, "{raw:?}");
        }
        Err(e) => {
            assert!(!(digits && fits), "refused {raw:?}");
            let e = ApiError::from(e);
            assert_eq!((e.status.as_u16(), e.code.as_str()), (400, "invalid_cursor"));
        }
    }
}
