//! History retention on the broker: trimming history by age and forgetting topics gone
//! quiet, with the clock their quiet time is measured on.

use std::sync::Arc;

use super::{Broker, TopicShard, now_ms};

impl Broker {
    /// Trims every topic's history by age and forgets the topics gone quiet (see
    /// [`Self::sweep_at`]); `claimed` are topics a claim is under way for on this node.
    pub fn expire_history(&self, claimed: &[Arc<str>]) -> usize {
        self.sweep_at(now_ms(), self.clock_ms(), claimed)
    }

    /// Trims every topic's history by age as of `now_ms` (wall clock, the events' `ts`) and
    /// forgets the publish ids remembered for longer than `dedupe_window` (as of `clock_ms`),
    /// then forgets each topic quiet, as of `clock_ms` ([`Self::clock_ms`]), for
    /// `topic_idle_forget` and for its history's `max_age` (so nothing is retained any
    /// more), with no event waiting for replicas, and not in `claimed`. Its epoch, last
    /// `seq`, history record and replica bookkeeping go; returns how many were forgotten.
    ///
    /// This bounds the node's topic bookkeeping to the topics active within that time. The
    /// gap guarantee holds across it: when nobody knows a topic any more, its next owner
    /// starts a new epoch, and a cursor of the old one gets `epoch_changed` (on a resume, or
    /// through the resync of a live subscription that sees the new epoch). Every node applies
    /// the same rule to its own last activity, and stale knowledge of a topic is never more
    /// recent than the newest, so once the newest is forgotten no older position can be
    /// continued: every access that hands on or takes up knowledge a node is not sequencing
    /// with ([`Self::topic_snapshot`], [`Self::install_topic`], replays) forgets a topic that
    /// has been quiet long enough first, without waiting for the sweep. Only the sequencing
    /// owner may go on with a quiet topic until the sweep comes (sequencing, hand-over): its
    /// knowledge is the newest there is.
    pub fn sweep_at(&self, now_ms: i64, clock_ms: i64, claimed: &[Arc<str>]) -> usize {
        let mut forgotten = 0;
        for shard in self.shards.iter() {
            let mut guard = shard.lock();
            let shard = &mut *guard;
            shard.history.expire(now_ms);
            shard.dedupe.expire(clock_ms);
            let gone = {
                let idle = self.idle_long_enough(clock_ms);
                shard.topics.forget_idle(|topic, last_active| {
                    idle(topic, last_active) && !claimed.iter().any(|c| &**c == topic)
                })
            };
            shard.history.forget(&gone);
            forgotten += gone.len();
        }
        if forgotten > 0 {
            tracing::debug!(forgotten, "forgot idle topics");
        }
        self.trim_history_to_budget();
        forgotten
    }

    /// Brings the node's history back under `history_max_total_bytes`. An append over the
    /// bound trims its own shard at once; what is left over (topics in other shards that
    /// each hold one event, say) is trimmed here, the oldest events of each shard first, a
    /// share of the excess per shard, until the node is under the bound.
    fn trim_history_to_budget(&self) {
        loop {
            let (used, limit) = {
                let shard = self.shards[0].lock();
                let budget = shard.history.budget();
                (budget.used(), budget.limit())
            };
            if used <= limit {
                return;
            }
            let share = (used - limit).div_ceil(self.shards.len());
            let freed: usize = self
                .shards
                .iter()
                .map(|shard| shard.lock().history.trim_oldest(share, None))
                .sum();
            if freed == 0 {
                return;
            }
        }
    }

    /// The clock topics' quiet time is measured on: ms since this broker was made.
    pub fn clock_ms(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// Whether a topic last active at a time (on [`Self::clock_ms`]) has been quiet long
    /// enough, as of `clock_ms`, to be forgotten: for `topic_idle_forget` and, when it keeps
    /// events at all, for its retention's `max_age`, so that they have expired too. Time
    /// alone decides (not whether events are left, which hangs on the owners' clocks), so
    /// every node forgets its knowledge of a topic in the order it gained it.
    pub(super) fn idle_long_enough(&self, clock_ms: i64) -> impl Fn(&str, i64) -> bool + '_ {
        let idle = self.topic_idle_forget;
        move |topic, last_active_ms| {
            let policy = self.retention.policy(topic);
            let quiet = if policy.max_events == 0 {
                idle
            } else {
                idle.max(policy.max_age)
            };
            let quiet_ms = i64::try_from(quiet.as_millis()).unwrap_or(i64::MAX);
            clock_ms.saturating_sub(last_active_ms) >= quiet_ms
        }
    }

    /// Forgets `topic` now if it has been quiet long enough (see [`Self::sweep_at`]).
    pub(super) fn forget_if_idle(
        &self,
        shard: &mut TopicShard,
        topic: &str,
        clock_ms: i64,
    ) -> bool {
        if !shard.topics.is_idle(topic, self.idle_long_enough(clock_ms)) {
            return false;
        }
        shard.topics.remove(topic);
        shard.history.forget_one(topic);
        true
    }

    /// Topics this node holds state for (sequenced here, or kept as a replica's copy).
    pub fn topics_known(&self) -> usize {
        self.shards.iter().map(|s| s.lock().topics.len()).sum()
    }

    /// (topics with history, events retained).
    pub fn history_size(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(t, e), shard| {
            let shard = shard.lock();
            (t + shard.history.topics(), e + shard.history.events())
        })
    }

    /// Bytes of history retained on this node, against `history_max_total_bytes` (every
    /// shard's store shares one budget).
    pub fn history_bytes(&self) -> usize {
        self.shards[0].lock().history.budget().used()
    }
}
