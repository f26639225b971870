//! Letting this node's membership view settle before a claim trusts it.
//!
//! A claim asks the members this node sees alive and takes the newest state they hold. That
//! is only as good as the view: right after a partition heals, a node that was cut off (or
//! that learns it was declared down and rejoins) sees the others come back one by one. In a
//! 5-node split (chaos seed 3997965358849163191) the former minority's n4 saw two of the
//! four others for 190 ms: a majority with itself, so it owned its old topic again, and its
//! claim asked only those two. Neither held the topic (with `replication = 2` the majority
//! side had numbered it on two other nodes), so n4 went on from its own stale copy and gave
//! two positions the majority had acknowledged to other events.
//!
//! So a claim waits until the view has not grown for [`VIEW_SETTLE`]: a member came up, or
//! this node rejoined or regained a majority. One gossip probe period is what a rejoin takes
//! to reach everyone. A member going down does not count: failing over from a dead owner
//! stays as fast as failure detection. The wait is bounded ([`VIEW_SETTLE_PATIENCE`]), so a
//! view that keeps changing delays publishes, never blocks them.
//!
//! The state is one timestamp; the time is an argument (ms since the node started), so the
//! rule is tested without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long the view must stay without growing before a claim settles: one gossip probe
/// period (`gossip::foca_config`).
pub const VIEW_SETTLE: Duration = Duration::from_secs(1);

/// The longest one claim waits for the view to settle before it goes on with the view it
/// has (its own patience with peers that refuse or stay silent comes after this; both
/// together stay within the 5 s a publish may wait).
pub const VIEW_SETTLE_PATIENCE: Duration = Duration::from_secs(2);

const NEVER: u64 = u64::MAX;

/// When this node's membership view last grew.
#[derive(Debug)]
pub struct ViewSettle {
    origin: Instant,
    /// Ms since `origin` of the last growth, or [`NEVER`].
    grew_at_ms: AtomicU64,
}

impl Default for ViewSettle {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            grew_at_ms: AtomicU64::new(NEVER),
        }
    }
}

impl ViewSettle {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(NEVER - 1)
    }

    /// The view grew just now: a member came up, or this node rejoined or regained a
    /// majority.
    pub fn grew(&self) {
        self.grew_at(self.now_ms());
    }

    fn grew_at(&self, now_ms: u64) {
        self.grew_at_ms.store(now_ms, Ordering::Release);
    }

    /// How much longer a claim must wait for the view to settle; `None` once it has.
    pub fn remaining(&self) -> Option<Duration> {
        self.remaining_at(self.now_ms())
    }

    fn remaining_at(&self, now_ms: u64) -> Option<Duration> {
        let grew = self.grew_at_ms.load(Ordering::Acquire);
        if grew == NEVER {
            return None;
        }
        let settle_ms = u64::try_from(VIEW_SETTLE.as_millis()).unwrap_or(NEVER);
        let quiet_ms = now_ms.saturating_sub(grew);
        (quiet_ms < settle_ms).then(|| Duration::from_millis(settle_ms - quiet_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_that_never_grew_is_settled() {
        assert_eq!(ViewSettle::default().remaining_at(0), None);
        assert_eq!(ViewSettle::default().remaining_at(10_000), None);
    }

    #[test]
    fn every_growth_restarts_the_wait() {
        let settle = ViewSettle::default();
        settle.grew_at(5_000);
        assert_eq!(settle.remaining_at(5_000), Some(VIEW_SETTLE));
        assert_eq!(
            settle.remaining_at(5_400),
            Some(VIEW_SETTLE - Duration::from_millis(400))
        );
        // The next member came up before the view had settled: wait a full period again.
        settle.grew_at(5_900);
        assert_eq!(settle.remaining_at(6_500), Some(Duration::from_millis(400)));
        assert_eq!(settle.remaining_at(6_900), None);
        assert_eq!(settle.remaining_at(60_000), None);
    }
}
