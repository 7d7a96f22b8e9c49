//! The per-key rate limit (`SPOOL_RATE_LIMIT`): one token bucket per owner, shared by
//! every way in — each `/v1` HTTP request takes a token (the key middleware), and so
//! does each stream started without an HTTP request of its own (a WebSocket `generate`
//! or `session.say`, on the start path).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Requests per minute per owner; 0 = unlimited.
#[derive(Debug, Default)]
pub struct RateLimit {
    per_minute: u32,
    /// Bounded: one bucket per configured key.
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    pub fn new(per_minute: u32) -> Self {
        RateLimit {
            per_minute,
            buckets: Mutex::default(),
        }
    }

    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }

    /// Takes one token from `owner`'s bucket; `Err(seconds)` to wait when it is empty.
    pub fn take(&self, owner: &str) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(self.per_minute);
        let per_second = capacity / 60.0;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(owner.to_owned()).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * per_second)
            .min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / per_second).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_capacity_then_refuses_with_a_wait() {
        let limit = RateLimit::new(3);
        assert!(limit.take("a").is_ok());
        assert!(limit.take("a").is_ok());
        assert!(limit.take("a").is_ok());
        let wait = limit.take("a").unwrap_err();
        assert!((1..=20).contains(&wait), "{wait}");
        assert!(limit.take("b").is_ok(), "buckets are per key");
        assert!(RateLimit::new(0).take("a").is_ok());
    }
}
