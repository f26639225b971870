//! Small rate limiters used where input could otherwise drive cost without bound: log lines
//! written per event, and publishes per connection.
//!
//! Both take the time as an argument where they can, so they are tested without clocks.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lets a log line through at most once per interval, counting the ones held back, so a
/// condition that repeats for every event (thousands per second) costs one line per interval
/// that says how many it stands for.
#[derive(Debug)]
pub struct LogLimiter {
    interval_ms: i64,
    /// Milliseconds since `origin` of the last line let through; `i64::MIN` for never.
    last: AtomicI64,
    suppressed: AtomicU64,
    origin: Instant,
}

impl LogLimiter {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval_ms: i64::try_from(interval.as_millis()).unwrap_or(i64::MAX),
            last: AtomicI64::new(i64::MIN),
            suppressed: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }

    /// `Some(n)` when a line may be written now, `n` being how many were held back since
    /// the last one; `None` when this one is to be held back.
    pub fn allow(&self) -> Option<u64> {
        let now = i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.allow_at(now)
    }

    fn allow_at(&self, now_ms: i64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        let due = last == i64::MIN || now_ms.saturating_sub(last) >= self.interval_ms;
        if due
            && self
                .last
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// A token bucket: `rate` tokens per second, holding at most `burst`. Owned by one
/// connection's task, so no atomics.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            updated: now,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until one token is there (zero if one is there now).
    pub fn wait_time(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 || self.rate <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_per_interval_counting_what_was_held_back() {
        let limiter = LogLimiter::new(Duration::from_secs(1));
        assert_eq!(limiter.allow_at(0), Some(0));
        for t in 1..=999 {
            assert_eq!(limiter.allow_at(t), None);
        }
        assert_eq!(limiter.allow_at(1000), Some(999));
        assert_eq!(limiter.allow_at(1001), None);
        assert_eq!(limiter.allow_at(5000), Some(1));
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 3, start);
        assert!((0..3).all(|_| bucket.try_take(start)));
        assert!(!bucket.try_take(start), "burst spent");
        assert_eq!(bucket.wait_time(start), Duration::from_millis(100));
        let later = start + Duration::from_millis(100);
        assert!(bucket.try_take(later));
        assert!(!bucket.try_take(later));
        // Refills up to the burst, no further.
        let much_later = start + Duration::from_secs(60);
        assert!((0..3).all(|_| bucket.try_take(much_later)));
        assert!(!bucket.try_take(much_later));
    }
}
