//! How much history a node keeps: the per-topic policy (count, age, bytes, with per-prefix
//! overrides) and the node-wide byte budget every shard's store counts against.
//!
//! Configuration and accounting, not storage: every backend applies the same bounds, so a
//! resumer is told the same gaps whichever backend holds the events.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::event::Event;

/// How much of a topic is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub max_events: usize,
    pub max_age: Duration,
    /// Bytes of retained events (see [`retained_bytes`]) per topic.
    pub max_bytes: usize,
}

impl RetentionPolicy {
    /// The default per-topic byte bound (setting `history_max_bytes`).
    pub const DEFAULT_MAX_BYTES: usize = 16 * 1024 * 1024;
}

/// What one retained event counts against the byte bounds: its payload and topic name, and
/// a fixed share for the event's own structure and its place in the history. The encodings
/// a node caches on an event for its subscribers (see `crate::event::Event`) are not
/// counted: they live only while the event is in flight to a subscriber or retained, and at
/// most double it.
pub fn retained_bytes(event: &Event) -> usize {
    const EVENT_OVERHEAD: usize = 160;
    event.payload.len() + event.topic.len() + event.epoch.len() + EVENT_OVERHEAD
}

/// The bytes retained across every topic of a node, against one bound (setting
/// `history_max_total_bytes`): shared by the history stores of all of a broker's shards.
#[derive(Debug)]
pub struct HistoryBudget {
    limit: usize,
    used: AtomicUsize,
}

impl HistoryBudget {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// Bytes retained now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub(super) fn over(&self) -> bool {
        self.used() > self.limit
    }

    pub(super) fn add(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(super) fn sub(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// The default policy, per-topic-prefix overrides (the longest matching prefix wins) and the
/// node-wide byte budget. Clones share the budget: every store made from one `Retention`
/// counts against the same bound.
#[derive(Debug, Clone)]
pub struct Retention {
    pub default: RetentionPolicy,
    pub overrides: Vec<(String, RetentionPolicy)>,
    pub budget: Arc<HistoryBudget>,
}

impl PartialEq for Retention {
    fn eq(&self, other: &Self) -> bool {
        self.default == other.default
            && self.overrides == other.overrides
            && self.budget.limit == other.budget.limit
    }
}

impl Eq for Retention {}

impl Default for Retention {
    /// 1,000 events, 10 minutes or 16 MiB per topic, whichever is reached first; 1 GiB on
    /// the node.
    fn default() -> Self {
        Self::new(
            RetentionPolicy {
                max_events: 1000,
                max_age: Duration::from_secs(600),
                max_bytes: RetentionPolicy::DEFAULT_MAX_BYTES,
            },
            Self::DEFAULT_MAX_TOTAL_BYTES,
        )
    }
}

impl Retention {
    /// The default node-wide byte bound (setting `history_max_total_bytes`).
    pub const DEFAULT_MAX_TOTAL_BYTES: usize = 1024 * 1024 * 1024;

    /// `default` for every topic, no overrides, at most `max_total_bytes` on the node.
    pub fn new(default: RetentionPolicy, max_total_bytes: usize) -> Self {
        Self {
            default,
            overrides: Vec::new(),
            budget: Arc::new(HistoryBudget::new(max_total_bytes)),
        }
    }

    pub fn policy(&self, topic: &str) -> RetentionPolicy {
        self.overrides
            .iter()
            .filter(|(prefix, _)| topic.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(self.default, |(_, policy)| *policy)
    }
}
