//! Replay for a resuming subscription: what this node can replay of the topics a pattern
//! matches, after a cursor or since a time, cut into pages.

use std::sync::Arc;

use crate::protocol::{Cursor, ResumeFrom};
use crate::routing::topic::{is_wildcard, pattern_matches};
use crate::storage::{Gap, Replay, reason};

use super::{Broker, TopicShard};

/// What one node can replay of one topic, with what it knows of the topic so that the
/// newest knowledge can be chosen among nodes.
#[derive(Debug, Clone)]
pub struct TopicReplay {
    pub topic: Arc<str>,
    pub epoch: Arc<str>,
    pub last_seq: u64,
    pub replay: Replay,
    /// The page ended before this topic's replay did (see [`ReplayPage`]).
    pub more: bool,
}

/// The bounds of one page of a replay: a resume is served page by page, so that no answer
/// between nodes and no write to a client grows with the history it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayPage {
    /// Events per page; 0 is unbounded.
    pub max_events: usize,
    /// Bytes of event data per page, beyond its first event; 0 is unbounded.
    pub max_bytes: usize,
}

impl ReplayPage {
    pub const UNBOUNDED: Self = Self {
        max_events: 0,
        max_bytes: 0,
    };

    /// Cuts `candidates` to one page: topics in name order, each with its gaps and as many
    /// of its events as still fit. A topic reached with no room left keeps its knowledge but
    /// no gaps nor events; both it and a topic cut short are marked `more`. Every page holds
    /// at least one event when there is one, so paging always advances.
    pub fn fit(self, candidates: &mut [TopicReplay]) {
        if self == Self::UNBOUNDED {
            return;
        }
        let max_events = if self.max_events == 0 {
            usize::MAX
        } else {
            self.max_events
        };
        let max_bytes = if self.max_bytes == 0 {
            usize::MAX
        } else {
            self.max_bytes
        };
        candidates.sort_by(|a, b| a.topic.cmp(&b.topic));
        let (mut events, mut bytes) = (0usize, 0usize);
        for candidate in candidates {
            let room = |events: usize, bytes: usize, next: usize| {
                events == 0 || (events < max_events && bytes.saturating_add(next) <= max_bytes)
            };
            let first = candidate
                .replay
                .events
                .first()
                .map_or(0, |e| e.payload.len());
            if !candidate.replay.events.is_empty() && !room(events, bytes, first) {
                candidate.replay = Replay::default();
                candidate.more = true;
                continue;
            }
            let mut keep = 0;
            for event in &candidate.replay.events {
                if !room(events, bytes, event.payload.len()) {
                    break;
                }
                events += 1;
                bytes = bytes.saturating_add(event.payload.len());
                keep += 1;
            }
            if keep < candidate.replay.events.len() {
                candidate.replay.events.truncate(keep);
                candidate.more = true;
            }
        }
    }
}

/// A `from` that does not fit the subscription.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ResumeError(pub &'static str);

impl Broker {
    /// What this node can replay for a subscription on `pattern` resuming `from`: per topic
    /// it knows, gaps then events, with its knowledge of the topic. Across a cluster the
    /// caller keeps, per topic, the candidate with the newest knowledge.
    ///
    /// Call it after the subscription is registered: an event published in between is then
    /// both replayed and queued live, and the caller drops the live copy by its sequence
    /// number — nothing falls between the two.
    pub fn replay_candidates(
        &self,
        pattern: &str,
        from: &ResumeFrom,
        page: ReplayPage,
    ) -> Result<Vec<TopicReplay>, ResumeError> {
        let wildcard = is_wildcard(pattern);
        if wildcard && matches!(from, ResumeFrom::Cursor(_)) {
            return Err(ResumeError(
                "a wildcard subscription resumes with {\"topics\": {...}, \"since\": ts}, not one cursor",
            ));
        }
        if matches!(from, ResumeFrom::Latest) {
            return Ok(Vec::new());
        }
        let mut candidates = Vec::new();
        let clock = self.clock_ms();
        let mut visit = |shard: &TopicShard, topic: &Arc<str>| {
            let Some(state) = shard.topics.get(topic) else {
                return;
            };
            if state.moved && shard.topics.is_idle(topic, self.idle_long_enough(clock)) {
                // A copy as good as forgotten: the sweep takes it at its next pass. (The
                // sequencing owner's own state answers until then: it may still go on.)
                return;
            }
            let mut replay = match from {
                ResumeFrom::Latest => return,
                ResumeFrom::Earliest => shard.history.earliest(topic),
                ResumeFrom::Cursor(cursor) => Self::after_in(shard, topic, cursor),
                ResumeFrom::Topics { topics, since } => match topics.get(&**topic) {
                    Some(cursor) => Self::after_in(shard, topic, cursor),
                    None if *since == crate::protocol::SINCE_EARLIEST => {
                        shard.history.earliest(topic)
                    }
                    None => shard.history.since(topic, *since),
                },
            };
            // Only what is committed is served: an event beyond may still fail at its owner,
            // which would then number another event in its place.
            let committed = state.committed();
            replay
                .events
                .retain(|e| *e.epoch != *state.epoch || e.seq <= committed);
            candidates.push(TopicReplay {
                topic: topic.clone(),
                epoch: state.epoch.clone(),
                last_seq: committed,
                replay,
                more: false,
            });
        };
        if wildcard {
            for shard in self.shards.iter() {
                let shard = shard.lock();
                let names: Vec<Arc<str>> = shard
                    .topics
                    .names()
                    .filter(|t| pattern_matches(pattern, t))
                    .cloned()
                    .collect();
                for name in &names {
                    visit(&shard, name);
                }
            }
        } else {
            let shard = self.shard(pattern).lock();
            let name: Arc<str> = pattern.into();
            visit(&shard, &name);
        }
        page.fit(&mut candidates);
        Ok(candidates)
    }

    /// Replay after a cursor; when no history is left, the topic's state still tells
    /// whether events were missed.
    fn after_in(shard: &TopicShard, topic: &str, cursor: &Cursor) -> Replay {
        let Some(state) = shard.topics.get(topic) else {
            return Replay::default();
        };
        if started_later(&cursor.epoch, &state.epoch) {
            // The cursor is from an epoch newer than this node knows (the topic moved on
            // while this node was cut off): nothing here follows it, and replaying the older
            // epoch would hand the subscriber again what it had before that epoch began.
            return Replay::default();
        }
        let replay = shard.history.after(topic, &cursor.epoch, cursor.seq);
        let has_history = shard.history.knows(topic);
        if has_history && (*state.epoch == *cursor.epoch || !replay.gaps.is_empty()) {
            return replay;
        }
        let mut replay = Replay::default();
        if *cursor.epoch == *state.epoch {
            if state.last_seq > cursor.seq {
                replay.gaps.push(Gap {
                    topic: topic.into(),
                    epoch: state.epoch.clone(),
                    from_seq: cursor.seq + 1,
                    to_seq: state.last_seq,
                    reason: reason::RETENTION,
                });
            }
        } else {
            replay.gaps.push(Gap {
                topic: topic.into(),
                epoch: cursor.epoch.as_str().into(),
                from_seq: cursor.seq + 1,
                to_seq: 0,
                reason: reason::EPOCH_CHANGED,
            });
            if state.last_seq > 0 {
                replay.gaps.push(Gap {
                    topic: topic.into(),
                    epoch: state.epoch.clone(),
                    from_seq: 1,
                    to_seq: state.last_seq,
                    reason: reason::RETENTION,
                });
            }
        }
        replay
    }
}

/// True when both are epochs as nodes make them (`<ms since the epoch, hex>-<random>`) and
/// `a` was started later than `b`. A cursor's epoch in any other form proves nothing.
fn started_later(a: &str, b: &str) -> bool {
    let started = |e: &str| {
        e.split_once('-')
            .and_then(|(t, _)| i64::from_str_radix(t, 16).ok())
    };
    matches!((started(a), started(b)), (Some(x), Some(y)) if x > y)
}

#[cfg(test)]
mod tests {
    use crate::broker::test_support::json;
    use crate::broker::{Broker, ReplayPage};
    use crate::protocol::{Cursor, ResumeFrom};
    use crate::storage::{Retention, reason};

    #[test]
    fn a_cursor_from_a_newer_epoch_gets_nothing_from_an_older_one() {
        let broker = Broker::new(Retention::default());
        let epoch = broker.publish("t", json("1")).epoch;
        broker.publish("t", json("2"));
        let millis = epoch
            .split_once('-')
            .and_then(|(t, _)| i64::from_str_radix(t, 16).ok())
            .unwrap();
        let cursor_in = |millis: i64| {
            ResumeFrom::Cursor(Cursor {
                epoch: format!("{millis:x}-0badcafe"),
                seq: 5,
            })
        };
        // A majority started a newer epoch while this node was cut off: nothing to send.
        let ahead = broker
            .replay_candidates("t", &cursor_in(millis + 1000), ReplayPage::UNBOUNDED)
            .unwrap();
        assert!(ahead[0].replay.events.is_empty() && ahead[0].replay.gaps.is_empty());
        // A cursor from an older epoch learns that it changed and gets this epoch's events.
        let behind = broker
            .replay_candidates("t", &cursor_in(millis - 1000), ReplayPage::UNBOUNDED)
            .unwrap();
        assert_eq!(behind[0].replay.gaps[0].reason, reason::EPOCH_CHANGED);
        assert_eq!(behind[0].replay.events.len(), 2);
    }

    #[test]
    fn a_replay_page_holds_its_bound_and_marks_what_is_left() {
        let broker = Broker::new(Retention::default());
        for topic in ["p.c", "p.a", "p.b"] {
            for _ in 0..5 {
                broker.publish(topic, json("1"));
            }
        }
        let page = ReplayPage {
            max_events: 7,
            max_bytes: 0,
        };
        let got = broker
            .replay_candidates("p.*", &ResumeFrom::Earliest, page)
            .unwrap();
        let summary: Vec<(&str, usize, bool)> = got
            .iter()
            .map(|c| (&*c.topic, c.replay.events.len(), c.more))
            .collect();
        assert_eq!(
            summary,
            vec![("p.a", 5, false), ("p.b", 2, true), ("p.c", 0, true)]
        );
        // A page always advances: one event even when it alone is over the byte bound.
        let tiny = ReplayPage {
            max_events: 0,
            max_bytes: 1,
        };
        let got = broker
            .replay_candidates("p.a", &ResumeFrom::Earliest, tiny)
            .unwrap();
        assert_eq!((got[0].replay.events.len(), got[0].more), (1, true));
    }
}
