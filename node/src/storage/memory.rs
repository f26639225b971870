//! The memory backend: each topic's retained events in a ring in RAM, as long as the node
//! runs. Trimming pops from the front; the node-wide budget is an atomic shared by every
//! shard's store.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use foldhash::fast::RandomState;

use super::{
    Gap, HistoryBudget, HistoryStore, Replay, Retention, RetentionPolicy, StorageError, reason,
    retained_bytes,
};
use crate::event::Event;

/// One topic's retained events, and what was trimmed before them (so resumers get exact
/// gaps).
#[derive(Debug)]
struct TopicHistory {
    epoch: Arc<str>,
    /// Contiguous: `events[i].seq == first_seq + i`.
    events: VecDeque<Arc<Event>>,
    /// The sequence number the next retained event would have, were none trimmed: events
    /// before it that are not in `events` were trimmed.
    first_seq: u64,
    /// `ts` of the newest trimmed event (0 if none), to tell whether a wildcard resumer
    /// that was away since some time may have missed trimmed events.
    trimmed_until_ts: i64,
    /// [`retained_bytes`] of `events`.
    bytes: usize,
}

impl TopicHistory {
    fn last_seq(&self) -> u64 {
        (self.first_seq + self.events.len() as u64).saturating_sub(1)
    }

    fn push_back(&mut self, event: Arc<Event>, budget: &HistoryBudget) {
        let bytes = retained_bytes(&event);
        self.bytes += bytes;
        budget.add(bytes);
        self.events.push_back(event);
    }

    /// Trims the oldest event, recording it as trimmed (a retention gap for resumers).
    fn trim_front(&mut self, budget: &HistoryBudget) -> bool {
        let Some(oldest) = self.events.pop_front() else {
            return false;
        };
        let bytes = retained_bytes(&oldest);
        self.bytes -= bytes;
        budget.sub(bytes);
        self.trimmed_until_ts = self.trimmed_until_ts.max(oldest.ts);
        self.first_seq += 1;
        true
    }

    /// Drops the newest event without recording it as trimmed (it failed; see
    /// [`HistoryStore::forget_from`]).
    fn drop_back(&mut self, budget: &HistoryBudget) {
        if let Some(newest) = self.events.pop_back() {
            let bytes = retained_bytes(&newest);
            self.bytes -= bytes;
            budget.sub(bytes);
        }
    }

    fn clear(&mut self, budget: &HistoryBudget) {
        budget.sub(self.bytes);
        self.bytes = 0;
        self.events.clear();
    }

    fn trim(&mut self, policy: RetentionPolicy, now_ms: i64, budget: &HistoryBudget) {
        let max_age_ms = i64::try_from(policy.max_age.as_millis()).unwrap_or(i64::MAX);
        while let Some(oldest) = self.events.front() {
            let too_many = self.events.len() > policy.max_events;
            let too_old = now_ms.saturating_sub(oldest.ts) > max_age_ms;
            // The newest event stays even when it alone is over the byte bound: a publish
            // the node accepted is retained at least until the next one.
            let too_big = self.bytes > policy.max_bytes && self.events.len() > 1;
            if !(too_many || too_old || too_big) {
                break;
            }
            self.trim_front(budget);
        }
    }

    /// Events after `seq` of this epoch, with a retention gap if some were trimmed.
    fn after(&self, topic: &Arc<str>, seq: u64) -> Replay {
        let mut replay = Replay::default();
        let wanted = seq + 1;
        if wanted < self.first_seq {
            replay.gaps.push(Gap {
                topic: topic.clone(),
                epoch: self.epoch.clone(),
                from_seq: wanted,
                to_seq: self.first_seq - 1,
                reason: reason::RETENTION,
            });
        }
        let skip = wanted.saturating_sub(self.first_seq) as usize;
        replay.events.extend(self.events.iter().skip(skip).cloned());
        replay
    }
}

/// The retained events of a shard's topics, in memory.
#[derive(Debug)]
pub struct MemoryHistory {
    topics: HashMap<Arc<str>, TopicHistory, RandomState>,
    retention: Retention,
    /// When set (a cache in front of a durable store), every topic trimmed from the front,
    /// with the first seq it keeps, so the store can be trimmed to match.
    trims: Option<Vec<Trimmed>>,
}

/// A topic trimmed from the front: everything of `epoch` before `first_seq` is gone, the
/// newest of it published at `trimmed_until_ts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Trimmed {
    pub topic: Arc<str>,
    pub epoch: Arc<str>,
    pub first_seq: u64,
    pub trimmed_until_ts: i64,
}

/// What a store holds of a topic: its epoch, the first seq retained (or the next, when
/// none is), how many events, and when the newest trimmed one was published.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "disk"), allow(dead_code))]
pub(crate) struct Held {
    pub topic: Arc<str>,
    pub epoch: Arc<str>,
    pub first_seq: u64,
    pub len: usize,
    pub trimmed_until_ts: i64,
}

impl MemoryHistory {
    pub fn new(retention: Retention) -> Self {
        Self {
            topics: HashMap::default(),
            retention,
            trims: None,
        }
    }

    /// A store that records what its trimming removes ([`Self::take_trims`]): the serving
    /// copy of a durable backend, which trims its own copy to match.
    #[cfg_attr(not(feature = "disk"), allow(dead_code))]
    pub(crate) fn recording_trims(retention: Retention) -> Self {
        Self {
            trims: Some(Vec::new()),
            ..Self::new(retention)
        }
    }

    /// The topics trimmed from the front since the last call (the last trim of a topic
    /// says how far), when recording.
    #[cfg_attr(not(feature = "disk"), allow(dead_code))]
    pub(crate) fn take_trims(&mut self) -> Vec<Trimmed> {
        self.trims.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Every topic held, as [`Held`].
    #[cfg_attr(not(feature = "disk"), allow(dead_code))]
    pub(crate) fn held(&self) -> Vec<Held> {
        self.topics
            .iter()
            .map(|(topic, h)| Held {
                topic: topic.clone(),
                epoch: h.epoch.clone(),
                first_seq: h.first_seq,
                len: h.events.len(),
                trimmed_until_ts: h.trimmed_until_ts,
            })
            .collect()
    }

    /// How many trims [`Self::take_trims`] would return.
    #[cfg_attr(not(feature = "disk"), allow(dead_code))]
    pub(crate) fn trims_pending(&self) -> usize {
        self.trims.as_ref().map_or(0, Vec::len)
    }

    fn note_trim(
        trims: &mut Option<Vec<Trimmed>>,
        topic: &Arc<str>,
        history: &TopicHistory,
        before: u64,
    ) {
        if let Some(trims) = trims
            && history.first_seq > before
        {
            trims.push(Trimmed {
                topic: topic.clone(),
                epoch: history.epoch.clone(),
                first_seq: history.first_seq,
                trimmed_until_ts: history.trimmed_until_ts,
            });
        }
    }

    /// Puts back a topic's history as a durable store kept it: `events` (contiguous, of
    /// `epoch`, from `first_seq` on; none when everything was trimmed) and when its newest
    /// trimmed event was published. Then trims it by today's retention, which may be
    /// tighter than the one it was kept under.
    #[cfg_attr(not(feature = "disk"), allow(dead_code))]
    pub(crate) fn restore(
        &mut self,
        topic: Arc<str>,
        epoch: Arc<str>,
        first_seq: u64,
        trimmed_until_ts: i64,
        events: Vec<Arc<Event>>,
        now_ms: i64,
    ) {
        self.forget_one(&topic);
        let budget = &*self.retention.budget;
        let mut history = TopicHistory {
            epoch,
            events: VecDeque::with_capacity(events.len()),
            first_seq,
            trimmed_until_ts,
            bytes: 0,
        };
        for event in events {
            history.push_back(event, budget);
        }
        history.trim(self.retention.policy(&topic), now_ms, budget);
        Self::note_trim(&mut self.trims, &topic, &history, first_seq);
        self.topics.insert(topic, history);
    }
}

impl HistoryStore for MemoryHistory {
    fn append(&mut self, event: Arc<Event>, now_ms: i64) -> Result<(), StorageError> {
        // Even a topic that keeps nothing goes through the store: trimming at once still
        // records what was published, so resumers learn what they missed.
        let policy = self.retention.policy(&event.topic);
        let budget = &*self.retention.budget;
        let topic = event.topic.clone();
        let history = self
            .topics
            .entry(event.topic.clone())
            .or_insert_with(|| TopicHistory {
                epoch: event.epoch.clone(),
                events: VecDeque::new(),
                first_seq: event.seq,
                // Joining mid-sequence (a replica, a new owner): the earlier events are not
                // here and may be as recent as this one.
                trimmed_until_ts: if event.seq > 1 { event.ts } else { 0 },
                bytes: 0,
            });
        let follows = history.epoch == event.epoch
            && (history.events.is_empty() && event.seq >= history.first_seq
                || !history.events.is_empty() && event.seq == history.last_seq() + 1);
        if !follows {
            history.epoch = event.epoch.clone();
            history.clear(budget);
            history.trimmed_until_ts = 0;
        }
        if history.events.is_empty() {
            // Events skipped before this one are not here, and were published before it:
            // as far as anyone can tell, as late as it.
            let skipped = !follows || event.seq > history.first_seq;
            if skipped && event.seq > 1 {
                history.trimmed_until_ts = history.trimmed_until_ts.max(event.ts);
            }
            history.first_seq = event.seq;
        }
        let first_seq = history.first_seq;
        history.push_back(event, budget);
        history.trim(policy, now_ms, budget);
        // Over the node's bound, the topic that grows pays first: its oldest events go
        // (down to the newest one) until the node is back under the bound. Other topics
        // are trimmed by their own count, age and size bounds as usual.
        while budget.over() && history.events.len() > 1 {
            history.trim_front(budget);
        }
        Self::note_trim(&mut self.trims, &topic, history, first_seq);
        if budget.over() {
            // The topic holds only its newest event: older events of this store's other
            // topics go. (Other shards' stores are behind their own locks; the sweep
            // trims them, see `Broker::trim_history_to_budget`.)
            let excess = budget.used().saturating_sub(budget.limit());
            let topic = history.events.back().map(|newest| newest.topic.clone());
            self.trim_oldest(excess, topic.as_deref());
        }
        // RAM does not fail a write: over its bounds it trims.
        Ok(())
    }

    fn forget_from(&mut self, topic: &str, epoch: &str, seq: u64) {
        let Some(history) = self.topics.get_mut(topic) else {
            return;
        };
        if *history.epoch != *epoch {
            return;
        }
        while history.events.back().is_some_and(|e| e.seq >= seq) {
            history.drop_back(&self.retention.budget);
        }
    }

    fn replace(
        &mut self,
        topic: &str,
        events: Vec<Arc<Event>>,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        self.forget_one(topic);
        for event in events {
            self.append(event, now_ms)?;
        }
        Ok(())
    }

    fn expire(&mut self, now_ms: i64) {
        let retention = &self.retention;
        for (topic, history) in &mut self.topics {
            let first_seq = history.first_seq;
            history.trim(retention.policy(topic), now_ms, &retention.budget);
            Self::note_trim(&mut self.trims, topic, history, first_seq);
            if history.events.is_empty() && history.events.capacity() > 0 {
                history.events = VecDeque::new();
            }
        }
    }

    fn trim_oldest(&mut self, bytes: usize, spare: Option<&str>) -> usize {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let budget = &*self.retention.budget;
        let mut oldest: BinaryHeap<Reverse<(i64, Arc<str>)>> = self
            .topics
            .iter()
            .filter(|(topic, _)| spare != Some(&***topic))
            .filter_map(|(topic, h)| h.events.front().map(|e| Reverse((e.ts, topic.clone()))))
            .collect();
        let mut freed = 0;
        while freed < bytes {
            let Some(Reverse((_, topic))) = oldest.pop() else {
                break;
            };
            let Some(history) = self.topics.get_mut(&topic) else {
                continue;
            };
            let before = history.bytes;
            let first_seq = history.first_seq;
            history.trim_front(budget);
            freed += before - history.bytes;
            Self::note_trim(&mut self.trims, &topic, history, first_seq);
            if let Some(next) = history.events.front() {
                oldest.push(Reverse((next.ts, topic)));
            }
        }
        freed
    }

    fn knows(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    fn forget_one(&mut self, topic: &str) {
        if let Some(mut history) = self.topics.remove(topic) {
            history.clear(&self.retention.budget);
        }
    }

    fn forget(&mut self, topics: &[Arc<str>]) {
        for topic in topics {
            self.forget_one(topic);
        }
        // After a mass forget (a burst of topics gone quiet) the map gives its room back.
        if topics.len() > self.topics.len() {
            self.topics.shrink_to_fit();
        }
    }

    fn topics(&self) -> usize {
        self.topics
            .values()
            .filter(|h| !h.events.is_empty())
            .count()
    }

    fn events(&self) -> usize {
        self.topics.values().map(|h| h.events.len()).sum()
    }

    fn budget(&self) -> &HistoryBudget {
        &self.retention.budget
    }

    fn bytes(&self) -> usize {
        self.topics.values().map(|h| h.bytes).sum()
    }

    fn get(&self, topic: &str, epoch: &str, seq: u64) -> Option<Arc<Event>> {
        let history = self.topics.get(topic)?;
        if &*history.epoch != epoch || seq < history.first_seq {
            return None;
        }
        history
            .events
            .get((seq - history.first_seq) as usize)
            .cloned()
    }

    fn earliest(&self, topic: &str) -> Replay {
        self.topics
            .get_key_value(topic)
            .map(|(name, h)| h.after(name, h.first_seq.saturating_sub(1)))
            .map(|mut r| {
                // Nothing was claimed seen: what was trimmed before is not a gap.
                r.gaps.clear();
                r
            })
            .unwrap_or_default()
    }

    fn after(&self, topic: &str, epoch: &str, seq: u64) -> Replay {
        let Some((name, history)) = self.topics.get_key_value(topic) else {
            return Replay::default();
        };
        if &*history.epoch == epoch {
            if seq > history.last_seq() {
                return Replay::default();
            }
            return history.after(name, seq);
        }
        let mut replay = Replay {
            gaps: vec![Gap {
                topic: name.clone(),
                epoch: epoch.into(),
                from_seq: seq + 1,
                to_seq: 0,
                reason: reason::EPOCH_CHANGED,
            }],
            events: Vec::new(),
        };
        // Of the new epoch, events 1.. up to what is retained were missed too.
        replay.extend(history.after(name, 0));
        replay
    }

    fn since(&self, topic: &str, since_ms: i64) -> Replay {
        let Some((name, history)) = self.topics.get_key_value(topic) else {
            return Replay::default();
        };
        let mut replay = Replay::default();
        if history.trimmed_until_ts > since_ms && history.first_seq > 1 {
            replay.gaps.push(Gap {
                topic: name.clone(),
                epoch: history.epoch.clone(),
                from_seq: 1,
                to_seq: history.first_seq - 1,
                reason: reason::RETENTION,
            });
        }
        replay
            .events
            .extend(history.events.iter().filter(|e| e.ts > since_ms).cloned());
        replay
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryHistory;
    use crate::storage::{HistoryStore, Retention};

    fn memory(retention: Retention) -> Box<dyn HistoryStore> {
        Box::new(MemoryHistory::new(retention))
    }

    crate::storage::contract::contract_tests!(memory);
}
