//! Trimming without deletes: a compaction filter drops the events that are no longer
//! retained while fjall compacts its tables anyway.
//!
//! Why a filter and not deletes. fjall 3.1 has no range delete, so trimming by deletes
//! means a tombstone per event: as many writes again as the appends (0.6 µs each in
//! docs/storage.md), tombstones that stay until they reach the last level, and scans that
//! step over them (the age trim measured 7 µs per trimmed event that way). Trimming here
//! writes only the topic record (its `low_seq` raised, in the same kind of batch as an
//! append); reads never look below `low_seq`; and a compaction drops what lies below, at no
//! cost on the write path and with nothing left behind. Forgetting a topic and replacing a
//! history work the same way: the record goes (or gets a new generation), and the old
//! generation's keys are dropped by compactions.
//!
//! Dropping an item without a tombstone (`Verdict::Destroy`) is only safe when its key is
//! never written again: an older version of a key in a lower level would come back. Murmur
//! does write positions again (a topic forgotten and re-created numbers from 1; a replica's
//! copy is replaced; failed events are sent again), which is why every key carries the
//! generation of its topic's history: a generation is given out once and its positions only
//! ever move up (`low_seq` never goes down within one), so a version of a key the filter
//! lets resurface lies below `low_seq` or in a dead generation, where it is never read and
//! the next compaction drops it too.
//!
//! Each compaction works from a snapshot of the rules taken when it starts, possibly long
//! before it reaches a key. The rules are therefore changed only after the write they
//! describe is committed, and in a direction that is safe for older snapshots: a snapshot
//! keeps everything of a generation at or above its `next_gen` (so a generation given out
//! after the snapshot is never dropped by it), keeps a live generation from the `low_seq`
//! it knew (lower than or equal to today's), and drops only generations that were already
//! dead when it was taken (a generation never comes back). Until the log has loaded its
//! topic records at open, the rules keep everything (compactions may start while fjall
//! recovers).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use fjall::compaction::filter::{
    CompactionFilter, CompactionFilterResult, Context, Factory, ItemAccessor, Verdict,
};
use foldhash::fast::RandomState;

use super::layout::split_event_key;

/// What compactions may drop. Shared by the log (which changes it) and the filters. (A
/// `std` lock: fjall wants its filter factories `RefUnwindSafe`, which `parking_lot`'s
/// locks are not. Nothing panics while holding it, so poisoning is ignored.)
#[derive(Debug, Default)]
pub(super) struct TrimRules {
    current: RwLock<Arc<RuleSet>>,
}

/// One version of the rules; compactions hold the one they started with.
#[derive(Debug, Clone, Default)]
pub(super) struct RuleSet {
    /// False until the log has loaded its records: keep everything.
    ready: bool,
    /// Generations below it that are not `live` are dead; at or above it, unknown (kept).
    next_gen: u64,
    /// Live generation -> its `low_seq`.
    live: HashMap<u64, u64, RandomState>,
}

impl RuleSet {
    /// Whether a compaction may drop the event stored under `key`.
    pub(super) fn drops(&self, key: &[u8]) -> bool {
        if !self.ready {
            return false;
        }
        let Some((generation, seq)) = split_event_key(key) else {
            return false;
        };
        match self.live.get(&generation) {
            Some(&low_seq) => seq < low_seq,
            None => generation < self.next_gen,
        }
    }
}

impl TrimRules {
    pub(super) fn snapshot(&self) -> Arc<RuleSet> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The rules from the records loaded at open: `live` (generation, `low_seq`) pairs.
    pub(super) fn load(&self, live: impl IntoIterator<Item = (u64, u64)>, next_gen: u64) {
        let mut rules = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let rules = Arc::make_mut(&mut rules);
        rules.live = live.into_iter().collect();
        rules.next_gen = next_gen;
        rules.ready = true;
    }

    /// After a committed write: what it did to the generations of the topics it touched.
    pub(super) fn update(&self, changes: &[Change], next_gen: u64) {
        if changes.is_empty() {
            return;
        }
        let mut rules = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let rules = Arc::make_mut(&mut rules);
        for change in changes {
            if let Some(old) = change.old
                && change.new.is_none_or(|(generation, _)| generation != old)
            {
                rules.live.remove(&old);
            }
            if let Some((generation, low_seq)) = change.new {
                rules.live.insert(generation, low_seq);
            }
        }
        rules.next_gen = rules.next_gen.max(next_gen);
    }
}

/// A committed write's effect on one topic: its generation before, and its (generation,
/// `low_seq`) after (`None`: forgotten). An old generation that is not the new one is dead.
#[derive(Debug, Clone, Copy)]
pub(super) struct Change {
    pub old: Option<u64>,
    pub new: Option<(u64, u64)>,
}

/// Installs [`TrimFilter`]s on the `events` keyspace.
pub(super) struct TrimFactory(pub Arc<TrimRules>);

impl Factory for TrimFactory {
    fn name(&self) -> &'static str {
        "murmur-history-trim"
    }

    fn make_filter(&self, _ctx: &Context) -> Box<dyn CompactionFilter> {
        Box::new(TrimFilter(self.0.snapshot()))
    }
}

struct TrimFilter(Arc<RuleSet>);

impl CompactionFilter for TrimFilter {
    fn filter_item(&mut self, item: ItemAccessor<'_>, _ctx: &Context) -> CompactionFilterResult {
        Ok(if self.0.drops(item.key()) {
            Verdict::Destroy
        } else {
            Verdict::Keep
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::layout::event_key;
    use super::*;

    fn change(old: Option<u64>, new: Option<(u64, u64)>) -> Change {
        Change { old, new }
    }

    #[test]
    fn rules_keep_everything_until_loaded_then_drop_only_what_is_dead_or_trimmed() {
        let rules = TrimRules::default();
        assert!(!rules.snapshot().drops(&event_key("t", 1, 1)));
        rules.load([(1, 5)], 3);
        let old = rules.snapshot();
        assert!(old.drops(&event_key("t", 1, 4)));
        assert!(!old.drops(&event_key("t", 1, 5)));
        // Generation 2 is below next_gen and not live: dead.
        assert!(old.drops(&event_key("t", 2, 9)));
        // Generations given out after the snapshot are kept by it.
        assert!(!old.drops(&event_key("t", 3, 1)));
        assert!(!old.drops(b"not an event key"));

        // The topic starts afresh in generation 3 (committed), generation 1 dies.
        rules.update(&[change(Some(1), Some((3, 1)))], 4);
        let new = rules.snapshot();
        assert!(new.drops(&event_key("t", 1, 9)));
        assert!(!new.drops(&event_key("t", 3, 1)));
        // The snapshot taken before still keeps what it kept.
        assert!(!old.drops(&event_key("t", 1, 5)));
        assert!(!old.drops(&event_key("t", 3, 1)));

        // Trimmed to 10, then forgotten.
        rules.update(&[change(Some(3), Some((3, 10)))], 4);
        assert!(rules.snapshot().drops(&event_key("t", 3, 9)));
        rules.update(&[change(Some(3), None)], 4);
        assert!(rules.snapshot().drops(&event_key("t", 3, 100)));
    }
}
