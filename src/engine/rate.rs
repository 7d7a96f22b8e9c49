//! The per-key rate limit (`SPOOL_RATE_LIMIT`), on `governor`'s keyed GCRA limiter. One
//! limiter serves every way in: each `/v1` HTTP request takes a token (the key check),
//! and so does each stream started without an HTTP request of its own (a WebSocket
//! `generate` or `session.say`, on the start path).
//!
//! Each owner may make `per_minute` requests at once, then one more every
//! `60 / per_minute` seconds: a token bucket of capacity `per_minute` refilled evenly over
//! a minute. Keys are bounded (one per configured API key), so the limiter's map, which
//! keeps a state per key it has seen, stays small.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

type Limiter<C> =
    RateLimiter<String, DefaultKeyedStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Requests per minute per owner; 0 = unlimited.
pub struct RateLimit<C: Clock = DefaultClock> {
    per_minute: u32,
    limiter: Option<Limiter<C>>,
}

/// Unlimited.
impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new(0)
    }
}

impl<C: Clock> std::fmt::Debug for RateLimit<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("per_minute", &self.per_minute)
            .finish_non_exhaustive()
    }
}

impl RateLimit {
    /// `per_minute` requests per minute per owner; 0 = no limit.
    pub fn new(per_minute: u32) -> Self {
        RateLimit::with_clock(per_minute, DefaultClock::default())
    }
}

impl<C: Clock> RateLimit<C> {
    fn with_clock(per_minute: u32, clock: C) -> Self {
        let limiter = NonZeroU32::new(per_minute).map(|n| {
            RateLimiter::new(
                Quota::per_minute(n),
                DefaultKeyedStateStore::default(),
                clock,
            )
        });
        RateLimit {
            per_minute,
            limiter,
        }
    }

    /// Takes one request from `owner`'s allowance; `Err(seconds)` to wait (at least 1,
    /// for `Retry-After`) when it is spent.
    pub fn take(&self, owner: &str) -> Result<(), u64> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(&owner.to_owned()).map_err(|not_until| {
            let wait = not_until.wait_time_from(limiter.clock().now());
            let whole = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            whole.max(1)
        })
    }

    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }
}

#[cfg(test)]
mod rate_tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn a_bucket_allows_its_capacity_then_refuses_with_a_wait() {
        let limit = RateLimit::new(3);
        assert_eq!(limit.per_minute(), 3);
        assert!(limit.take("a").is_ok());
        assert!(limit.take("a").is_ok());
        assert!(limit.take("a").is_ok());
        let wait = limit.take("a").unwrap_err();
        assert!((1..=20).contains(&wait), "{wait}");
        assert!(limit.take("b").is_ok(), "buckets are per key");
        let open = RateLimit::new(0);
        assert!((0..1000).all(|_| open.take("a").is_ok()), "0 is unlimited");
    }

    #[test]
    fn the_bucket_refills_evenly_over_a_minute() {
        let clock = FakeRelativeClock::default();
        let limit = RateLimit::with_clock(6, clock.clone());
        for _ in 0..6 {
            assert!(limit.take("a").is_ok());
        }
        assert_eq!(limit.take("a"), Err(10), "one every 60/6 s");
        clock.advance(Duration::from_millis(9_500));
        assert_eq!(limit.take("a"), Err(1), "a part of a second rounds up");
        clock.advance(Duration::from_millis(500));
        assert!(limit.take("a").is_ok());
        assert_eq!(limit.take("a"), Err(10));
        // A long pause refills the bucket to its capacity, no more.
        clock.advance(Duration::from_secs(600));
        for _ in 0..6 {
            assert!(limit.take("a").is_ok());
        }
        assert!(limit.take("a").is_err());
    }
}
