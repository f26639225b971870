//! Per-topic history: the recent events of each topic, bounded by count and age, and the
//! replay a resuming subscriber gets from it.
//!
//! Plain data without clocks: callers pass the time. A topic's history always holds a
//! contiguous run of sequence numbers of one epoch (`first_seq..=last_seq`); events older
//! than the retention limits (count, age, bytes per topic, bytes per node) are trimmed from
//! the front. What a subscriber missed and can no longer get is reported as a [`Gap`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use foldhash::fast::RandomState;

use crate::event::Event;

/// Why events cannot be replayed.
pub mod reason {
    /// Older than the topic's retention (count or age).
    pub const RETENTION: &str = "retention";
    /// The cursor's epoch is not the topic's current one: what followed it is unknown.
    pub const EPOCH_CHANGED: &str = "epoch_changed";
}

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

    fn over(&self) -> bool {
        self.used() > self.limit
    }

    fn add(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    fn sub(&self, bytes: usize) {
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

/// Events a subscriber missed and cannot get: `from_seq..=to_seq` of `epoch`. `to_seq` is 0
/// when the end is unknown (the epoch changed after the cursor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub topic: Arc<str>,
    pub epoch: Arc<str>,
    pub from_seq: u64,
    pub to_seq: u64,
    pub reason: &'static str,
}

/// What a resuming subscriber gets for one topic: gaps first, then events in order.
#[derive(Debug, Default, Clone)]
pub struct Replay {
    pub gaps: Vec<Gap>,
    pub events: Vec<Arc<Event>>,
}

impl Replay {
    fn extend(&mut self, other: Self) {
        self.gaps.extend(other.gaps);
        self.events.extend(other.events);
    }
}

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

/// The retained events of many topics.
#[derive(Debug)]
pub struct HistoryStore {
    topics: HashMap<Arc<str>, TopicHistory, RandomState>,
    retention: Retention,
}

impl HistoryStore {
    pub fn new(retention: Retention) -> Self {
        Self {
            topics: HashMap::default(),
            retention,
        }
    }

    /// Appends a freshly sequenced event. An event of another epoch, or one that does not
    /// follow the last retained one, starts the topic's history afresh.
    pub fn append(&mut self, event: Arc<Event>, now_ms: i64) {
        // Even a topic that keeps nothing goes through the store: trimming at once still
        // records what was published, so resumers learn what they missed.
        let policy = self.retention.policy(&event.topic);
        let budget = &*self.retention.budget;
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
        history.push_back(event, budget);
        history.trim(policy, now_ms, budget);
        // Over the node's bound, the topic that grows pays first: its oldest events go
        // (down to the newest one) until the node is back under the bound. Other topics
        // are trimmed by their own count, age and size bounds as usual.
        while budget.over() && history.events.len() > 1 {
            history.trim_front(budget);
        }
        if budget.over() {
            // The topic holds only its newest event: older events of this store's other
            // topics go. (Other shards' stores are behind their own locks; the sweep
            // trims them, see `Broker::trim_history_to_budget`.)
            let excess = budget.used().saturating_sub(budget.limit());
            let topic = history.events.back().map(|newest| newest.topic.clone());
            self.trim_oldest(excess, topic.as_deref());
        }
    }

    /// Forgets the topic's events of `epoch` from `seq` on: they failed on this node (their
    /// replicas did not confirm them) and must not be replayed from here.
    pub fn forget_from(&mut self, topic: &str, epoch: &str, seq: u64) {
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

    /// Replaces a topic's history with `events` (contiguous, oldest first): a replica
    /// taking a whole copy from the owner.
    pub fn replace(&mut self, topic: &str, events: Vec<Arc<Event>>, now_ms: i64) {
        self.forget_one(topic);
        for event in events {
            self.append(event, now_ms);
        }
    }

    /// Trims every topic by age. A topic with nothing left keeps its bookkeeping (where its
    /// sequence had reached, when its last event was trimmed), so a resume still learns
    /// exactly what it missed, until the topic is forgotten ([`Self::forget`]); the room its
    /// events took is given back now.
    pub fn expire(&mut self, now_ms: i64) {
        let retention = &self.retention;
        for (topic, history) in &mut self.topics {
            history.trim(retention.policy(topic), now_ms, &retention.budget);
            if history.events.is_empty() && history.events.capacity() > 0 {
                history.events = VecDeque::new();
            }
        }
    }

    /// Trims the oldest events of this store's topics (oldest `ts` first, across topics,
    /// any topic but `spare`) until `bytes` are freed or nothing is left; returns the bytes
    /// freed. What goes is recorded as trimmed, so resumers get a retention gap for it.
    pub fn trim_oldest(&mut self, bytes: usize, spare: Option<&str>) -> usize {
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
            history.trim_front(budget);
            freed += before - history.bytes;
            if let Some(next) = history.events.front() {
                oldest.push(Reverse((next.ts, topic)));
            }
        }
        freed
    }

    /// How much of `topic` is kept.
    pub fn policy(&self, topic: &str) -> RetentionPolicy {
        self.retention.policy(topic)
    }

    /// True when this store has a record of `topic`, events or not.
    pub fn knows(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    /// Drops every record of `topic` (forgotten by the node).
    pub fn forget_one(&mut self, topic: &str) {
        if let Some(mut history) = self.topics.remove(topic) {
            history.clear(&self.retention.budget);
        }
    }

    /// Drops every record of `topics` (forgotten by the node: see
    /// `TopicTable::forget_idle`).
    pub fn forget(&mut self, topics: &[Arc<str>]) {
        for topic in topics {
            self.forget_one(topic);
        }
        if topics.len() > self.topics.len() {
            self.topics.shrink_to_fit();
        }
    }

    /// Topics with retained events.
    pub fn topics(&self) -> usize {
        self.topics
            .values()
            .filter(|h| !h.events.is_empty())
            .count()
    }

    /// Events retained in all topics.
    pub fn events(&self) -> usize {
        self.topics.values().map(|h| h.events.len()).sum()
    }

    /// The node-wide byte budget this store counts against (shared with its siblings).
    pub fn budget(&self) -> &HistoryBudget {
        &self.retention.budget
    }

    /// [`retained_bytes`] of the events retained in all topics of this store.
    pub fn bytes(&self) -> usize {
        self.topics.values().map(|h| h.bytes).sum()
    }

    /// The retained event `seq` of `epoch` on `topic`, if any.
    pub fn get(&self, topic: &str, epoch: &str, seq: u64) -> Option<&Arc<Event>> {
        let history = self.topics.get(topic)?;
        if &*history.epoch != epoch || seq < history.first_seq {
            return None;
        }
        history.events.get((seq - history.first_seq) as usize)
    }

    /// Everything retained for `topic`.
    pub fn earliest(&self, topic: &str) -> Replay {
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

    /// What follows `seq` of `epoch` on `topic`.
    pub fn after(&self, topic: &str, epoch: &str, seq: u64) -> Replay {
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

    /// For a topic the subscriber has no cursor for: the events published after `since`
    /// (ms), with a retention gap when trimmed events may be among them.
    pub fn since(&self, topic: &str, since_ms: i64) -> Replay {
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
    use bytes::Bytes;

    use super::*;
    use crate::event::Payload;

    fn retention(max_events: usize, max_age_s: u64) -> Retention {
        Retention::new(
            RetentionPolicy {
                max_events,
                max_age: Duration::from_secs(max_age_s),
                max_bytes: RetentionPolicy::DEFAULT_MAX_BYTES,
            },
            Retention::DEFAULT_MAX_TOTAL_BYTES,
        )
    }

    fn event(topic: &str, epoch: &str, seq: u64, ts: i64) -> Arc<Event> {
        Arc::new(Event::new(
            topic.into(),
            epoch.into(),
            seq,
            ts,
            Payload::Json(Bytes::from_static(b"0")),
        ))
    }

    fn seqs(replay: &Replay) -> Vec<u64> {
        replay.events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn replays_what_follows_a_cursor() {
        let mut store = HistoryStore::new(retention(100, 3600));
        for seq in 1..=5 {
            store.append(event("t", "e1", seq, 1000 + seq as i64), 2000);
        }
        assert_eq!(seqs(&store.after("t", "e1", 2)), vec![3, 4, 5]);
        assert!(store.after("t", "e1", 2).gaps.is_empty());
        assert!(store.after("t", "e1", 5).events.is_empty(), "up to date");
        assert!(
            store.after("t", "e1", 9).events.is_empty(),
            "ahead: nothing to send"
        );
        assert_eq!(seqs(&store.earliest("t")), vec![1, 2, 3, 4, 5]);
        assert!(store.after("never", "e1", 0).events.is_empty());
    }

    #[test]
    fn count_retention_yields_a_gap_naming_exactly_what_was_lost() {
        let mut store = HistoryStore::new(retention(3, 3600));
        for seq in 1..=10 {
            store.append(event("t", "e1", seq, seq as i64), 10);
        }
        let replay = store.after("t", "e1", 4);
        assert_eq!(
            replay.gaps,
            vec![Gap {
                topic: "t".into(),
                epoch: "e1".into(),
                from_seq: 5,
                to_seq: 7,
                reason: reason::RETENTION
            }]
        );
        assert_eq!(seqs(&replay), vec![8, 9, 10]);
        assert!(
            store.earliest("t").gaps.is_empty(),
            "earliest claims nothing seen"
        );
        assert_eq!(seqs(&store.earliest("t")), vec![8, 9, 10]);
    }

    #[test]
    fn age_retention_trims_and_expires_topics() {
        let mut store = HistoryStore::new(retention(100, 10));
        store.append(event("old", "e", 1, 1_000), 1_000);
        store.append(event("old", "e", 2, 5_000), 5_000);
        store.append(event("new", "e", 1, 14_000), 14_000);
        store.expire(12_000);
        assert_eq!(seqs(&store.earliest("old")), vec![2]);
        store.expire(30_000);
        assert_eq!(store.topics(), 0);
        assert_eq!(store.events(), 0);
        // What was trimmed is still known.
        let replay = store.after("old", "e", 0);
        assert_eq!(replay.gaps.len(), 1);
        assert_eq!((replay.gaps[0].from_seq, replay.gaps[0].to_seq), (1, 2));
        assert_eq!(
            store.since("old", 2_000).gaps.len(),
            1,
            "trimmed events were newer"
        );
        assert!(store.since("old", 9_000).gaps.is_empty());
    }

    #[test]
    fn a_new_epoch_is_a_gap_then_the_new_epoch_from_its_start() {
        let mut store = HistoryStore::new(retention(100, 3600));
        store.append(event("t", "e1", 1, 1), 1);
        store.append(event("t", "e1", 2, 2), 2);
        store.append(event("t", "e2", 1, 3), 3);
        store.append(event("t", "e2", 2, 4), 4);
        let replay = store.after("t", "e1", 1);
        assert_eq!(replay.gaps.len(), 1);
        assert_eq!(replay.gaps[0].reason, reason::EPOCH_CHANGED);
        assert_eq!((replay.gaps[0].from_seq, replay.gaps[0].to_seq), (2, 0));
        assert_eq!(&*replay.gaps[0].epoch, "e1");
        assert_eq!(seqs(&replay), vec![1, 2]);
        assert!(replay.events.iter().all(|e| &*e.epoch == "e2"));
    }

    #[test]
    fn since_replays_topics_new_to_the_subscriber() {
        let mut store = HistoryStore::new(retention(2, 3600));
        for seq in 1..=4 {
            store.append(event("t", "e", seq, seq as i64 * 100), 500);
        }
        // Retained: 3 (ts 300) and 4 (ts 400); trimmed up to ts 200.
        let recent = store.since("t", 250);
        assert!(recent.gaps.is_empty());
        assert_eq!(seqs(&recent), vec![3, 4]);
        let long_ago = store.since("t", 50);
        assert_eq!(
            long_ago.gaps.len(),
            1,
            "trimmed events were published after `since`"
        );
        assert_eq!((long_ago.gaps[0].from_seq, long_ago.gaps[0].to_seq), (1, 2));
        assert_eq!(seqs(&long_ago), vec![3, 4]);
    }

    #[test]
    fn prefix_overrides_pick_the_longest_match() {
        let mut r = retention(10, 60);
        let small = RetentionPolicy {
            max_events: 1,
            ..r.default
        };
        let none = RetentionPolicy {
            max_events: 0,
            ..r.default
        };
        r.overrides = vec![("chat.".into(), small), ("chat.ephemeral.".into(), none)];
        assert_eq!(r.policy("chat.lobby"), small);
        assert_eq!(r.policy("chat.ephemeral.typing"), none);
        assert_eq!(r.policy("orders"), r.default);
        let mut store = HistoryStore::new(r);
        store.append(event("chat.ephemeral.typing", "e", 1, 1), 1);
        assert_eq!(store.topics(), 0, "max_events 0 keeps nothing");
        assert_eq!(store.events(), 0);
        let missed = store.since("chat.ephemeral.typing", 0);
        assert!(missed.events.is_empty());
        assert_eq!(missed.gaps.len(), 1, "but says what was published");
        store.append(event("chat.lobby", "e", 1, 1), 1);
        store.append(event("chat.lobby", "e", 2, 1), 1);
        assert_eq!(seqs(&store.earliest("chat.lobby")), vec![2]);
    }
}

#[cfg(test)]
mod byte_bound_tests {
    use bytes::Bytes;

    use super::*;
    use crate::event::Payload;

    fn sized(topic: &str, seq: u64, payload_bytes: usize) -> Arc<Event> {
        let text = format!("\"{}\"", "x".repeat(payload_bytes - 2));
        Arc::new(Event::new(
            topic.into(),
            "e".into(),
            seq,
            seq as i64,
            Payload::Json(Bytes::from(text)),
        ))
    }

    fn policy(max_bytes: usize) -> RetentionPolicy {
        RetentionPolicy {
            max_events: 1000,
            max_age: Duration::from_secs(3600),
            max_bytes,
        }
    }

    #[test]
    fn a_topic_keeps_at_most_its_bytes_and_reports_the_rest_as_a_retention_gap() {
        let one = retained_bytes(&sized("t", 1, 10_000));
        let mut store = HistoryStore::new(Retention::new(policy(3 * one), usize::MAX));
        for seq in 1..=10 {
            store.append(sized("t", seq, 10_000), 10);
        }
        assert_eq!(store.events(), 3);
        assert_eq!(store.bytes(), 3 * one);
        let replay = store.after("t", "e", 0);
        assert_eq!(replay.gaps.len(), 1);
        assert_eq!(replay.gaps[0].reason, reason::RETENTION);
        assert_eq!((replay.gaps[0].from_seq, replay.gaps[0].to_seq), (1, 7));
        assert_eq!(replay.events.len(), 3);
    }

    #[test]
    fn one_event_over_the_topic_bound_is_kept_until_the_next() {
        let mut store = HistoryStore::new(Retention::new(policy(100), usize::MAX));
        store.append(sized("t", 1, 10_000), 10);
        assert_eq!(store.events(), 1, "the newest event stays");
        store.append(sized("t", 2, 10_000), 10);
        assert_eq!(store.events(), 1);
        assert_eq!(store.earliest("t").events[0].seq, 2);
    }

    #[test]
    fn the_node_bound_holds_across_stores_and_the_growing_topic_pays() {
        let one = retained_bytes(&sized("a", 1, 1_000));
        let retention = Retention::new(policy(usize::MAX), 10 * one);
        let budget = retention.budget.clone();
        // Two stores (two shards of one broker) share the node's budget.
        let mut first = HistoryStore::new(retention.clone());
        let mut second = HistoryStore::new(retention);
        for seq in 1..=6 {
            first.append(sized("a", seq, 1_000), 10);
        }
        for seq in 1..=20 {
            second.append(sized("b", seq, 1_000), 10);
        }
        assert!(budget.used() <= budget.limit(), "{}", budget.used());
        assert_eq!(budget.used(), first.bytes() + second.bytes());
        assert_eq!(first.events(), 6, "a quiet topic keeps what it had");
        assert_eq!(second.events(), 4, "the growing topic gave up its oldest");
        let replay = second.after("b", "e", 0);
        assert_eq!((replay.gaps[0].from_seq, replay.gaps[0].to_seq), (1, 16));
    }

    #[test]
    fn trimming_for_room_takes_the_oldest_events_across_topics_first() {
        let mut store = HistoryStore::new(Retention::new(policy(usize::MAX), usize::MAX));
        // ts = seq: a's events are older than b's.
        for seq in 1..=3 {
            store.append(sized("a", seq, 100), 10);
        }
        for seq in 4..=6 {
            store.append(sized("b", seq, 100), 10);
        }
        let one = retained_bytes(&sized("a", 1, 100));
        assert_eq!(store.trim_oldest(4 * one, Some("x")), 4 * one);
        assert!(store.earliest("a").events.is_empty());
        assert_eq!(store.earliest("b").events[0].seq, 5);
        assert_eq!(store.trim_oldest(10 * one, Some("b")), 0, "b is spared");
        assert_eq!(store.after("b", "e", 4).events.len(), 2);
    }

    #[test]
    fn every_way_out_of_the_store_gives_its_bytes_back() {
        let retention = Retention::new(policy(usize::MAX), usize::MAX);
        let budget = retention.budget.clone();
        let mut store = HistoryStore::new(retention);
        for seq in 1..=5 {
            store.append(sized("a", seq, 100), 10);
            store.append(sized("b", seq, 100), 10);
            store.append(sized("c", seq, 100), 10);
        }
        store.forget_from("a", "e", 3);
        assert_eq!(budget.used(), store.bytes());
        store.forget_one("b");
        assert_eq!(budget.used(), store.bytes());
        store.replace("c", vec![sized("c", 9, 100)], 10);
        assert_eq!(budget.used(), store.bytes());
        // A new epoch starts the history afresh.
        store.append(
            Arc::new(Event::new(
                "c".into(),
                "e2".into(),
                1,
                11,
                Payload::Json(Bytes::from_static(b"1")),
            )),
            11,
        );
        assert_eq!(budget.used(), store.bytes());
        store.expire(i64::MAX);
        assert_eq!(budget.used(), 0);
        assert_eq!(store.bytes(), 0);
    }
}

#[cfg(test)]
mod restart_tests {
    use bytes::Bytes;

    use super::*;
    use crate::event::Payload;

    #[test]
    fn a_history_that_starts_mid_sequence_reports_what_came_before() {
        let mut store = HistoryStore::new(Retention::default());
        let event = Arc::new(Event::new(
            "t".into(),
            "e".into(),
            3,
            5_000,
            Payload::Json(Bytes::from_static(b"0")),
        ));
        store.append(event, 5_000);
        let replay = store.since("t", 1_000);
        assert_eq!(replay.gaps.len(), 1);
        assert_eq!((replay.gaps[0].from_seq, replay.gaps[0].to_seq), (1, 2));
        assert!(store.since("t", 6_000).gaps.is_empty());
    }
}
