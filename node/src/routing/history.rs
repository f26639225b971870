//! Per-topic history: the recent events of each topic, bounded by count and age, and the
//! replay a resuming subscriber gets from it.
//!
//! Plain data without clocks: callers pass the time. A topic's history always holds a
//! contiguous run of sequence numbers of one epoch (`first_seq..=last_seq`); events older
//! than the retention limits are trimmed from the front. What a subscriber missed and can no
//! longer get is reported as a [`Gap`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
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
}

/// The default policy and per-topic-prefix overrides (the longest matching prefix wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    pub default: RetentionPolicy,
    pub overrides: Vec<(String, RetentionPolicy)>,
}

impl Default for Retention {
    /// 1,000 events or 10 minutes per topic, whichever is reached first.
    fn default() -> Self {
        Self {
            default: RetentionPolicy {
                max_events: 1000,
                max_age: Duration::from_secs(600),
            },
            overrides: Vec::new(),
        }
    }
}

impl Retention {
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
}

impl TopicHistory {
    fn last_seq(&self) -> u64 {
        (self.first_seq + self.events.len() as u64).saturating_sub(1)
    }

    fn trim(&mut self, policy: RetentionPolicy, now_ms: i64) {
        let max_age_ms = i64::try_from(policy.max_age.as_millis()).unwrap_or(i64::MAX);
        while let Some(oldest) = self.events.front() {
            let too_many = self.events.len() > policy.max_events;
            let too_old = now_ms.saturating_sub(oldest.ts) > max_age_ms;
            if !(too_many || too_old) {
                break;
            }
            self.trimmed_until_ts = self.trimmed_until_ts.max(oldest.ts);
            self.events.pop_front();
            self.first_seq += 1;
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
            });
        let follows = history.epoch == event.epoch
            && (history.events.is_empty() && event.seq >= history.first_seq
                || !history.events.is_empty() && event.seq == history.last_seq() + 1);
        if !follows {
            history.epoch = event.epoch.clone();
            history.events.clear();
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
        history.events.push_back(event);
        history.trim(policy, now_ms);
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
            history.events.pop_back();
        }
    }

    /// Replaces a topic's history with `events` (contiguous, oldest first): a replica
    /// taking a whole copy from the owner.
    pub fn replace(&mut self, topic: &str, events: Vec<Arc<Event>>, now_ms: i64) {
        self.topics.remove(topic);
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
            history.trim(retention.policy(topic), now_ms);
            if history.events.is_empty() && history.events.capacity() > 0 {
                history.events = VecDeque::new();
            }
        }
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
        self.topics.remove(topic);
    }

    /// Drops every record of `topics` (forgotten by the node: see
    /// `TopicTable::forget_idle`).
    pub fn forget(&mut self, topics: &[Arc<str>]) {
        for topic in topics {
            self.topics.remove(topic);
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
        Retention {
            default: RetentionPolicy {
                max_events,
                max_age: Duration::from_secs(max_age_s),
            },
            overrides: Vec::new(),
        }
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
            max_age: Duration::from_secs(60),
        };
        let none = RetentionPolicy {
            max_events: 0,
            max_age: Duration::from_secs(60),
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
