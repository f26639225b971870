//! `publish_rate` for the HTTP API: one token bucket per token user, or per client address
//! for requests without a user (`auth = none`, anonymous access), shared by all of its
//! requests and connections — HTTP clients open and close connections at will, so the
//! WebSocket's per-connection bucket would limit nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::limits::TokenBucket;

/// At most this many publishers are tracked at once; beyond it the one idle longest is
/// forgotten (and starts again with a full bucket), so the table stays bounded whatever the
/// number of clients.
const MAX_TRACKED: usize = 10_000;

/// Whose allowance a publish spends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// The token's `sub`.
    User(String),
    /// The client's IPv4 address or IPv6 /64.
    Address(IpAddr),
}

#[derive(Debug)]
struct Tracked {
    bucket: TokenBucket,
    last_used: Instant,
}

#[derive(Debug)]
pub struct PublishLimiter {
    rate: u32,
    burst: u32,
    /// How long an unused bucket takes to fill up again: after that it is as good as new
    /// and need not be kept.
    refill: Duration,
    buckets: Mutex<HashMap<RateKey, Tracked>>,
}

impl PublishLimiter {
    pub fn new(rate: u32, burst: u32) -> Self {
        let refill = Duration::from_secs_f64(f64::from(burst.max(1)) / f64::from(rate.max(1)));
        Self {
            rate,
            burst,
            refill,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Takes one token from `key`'s bucket for each of `wanted` events, in order, until it
    /// is empty; returns how many were granted (the first ones).
    pub fn take(&self, key: &RateKey, wanted: usize, now: Instant) -> usize {
        let mut buckets = self.buckets.lock();
        if !buckets.contains_key(key) && buckets.len() >= MAX_TRACKED {
            let refill = self.refill;
            buckets.retain(|_, t| now.saturating_duration_since(t.last_used) < refill);
            if buckets.len() >= MAX_TRACKED
                && let Some(oldest) = buckets
                    .iter()
                    .min_by_key(|(_, t)| t.last_used)
                    .map(|(k, _)| k.clone())
            {
                buckets.remove(&oldest);
            }
        }
        let tracked = buckets.entry(key.clone()).or_insert_with(|| Tracked {
            bucket: TokenBucket::new(self.rate, self.burst, now),
            last_used: now,
        });
        tracked.last_used = now;
        (0..wanted)
            .take_while(|_| tracked.bucket.try_take(now))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_publisher_has_its_own_bucket_and_the_table_stays_bounded() {
        let limiter = PublishLimiter::new(10, 3);
        let now = Instant::now();
        let alice = RateKey::User("alice".into());
        let bob = RateKey::Address("10.0.0.1".parse().unwrap());
        assert_eq!(limiter.take(&alice, 5, now), 3, "the burst, then nothing");
        assert_eq!(limiter.take(&alice, 1, now), 0);
        assert_eq!(
            limiter.take(&bob, 2, now),
            2,
            "another publisher is not affected"
        );
        let later = now + Duration::from_millis(100);
        assert_eq!(limiter.take(&alice, 2, later), 1, "one more at 10/s");
        for i in 0..(MAX_TRACKED + 10) {
            limiter.take(&RateKey::User(format!("u{i}")), 1, later);
        }
        assert!(limiter.buckets.lock().len() <= MAX_TRACKED);
    }
}
