//! Queue-group events that no member could take yet, kept per group until one can.
//!
//! A work queue must not drop a job because every worker is busy, or because the only
//! worker is reconnecting. The node that places a topic's events (its owner) keeps such an
//! event here instead, and places it once a member has room or comes back. What is kept is
//! bounded as the topic's history is: per group and topic at most the topic's `max_events`,
//! for at most its `max_age`, and across the node at most `max_bytes` (the history's node
//! budget). An event pushed out by a bound becomes a gap the group is told about, never a
//! silent loss.
//!
//! A group whose last member anywhere left is remembered as *dormant* for the default
//! `max_age`: events for it are kept meanwhile, and a member that joins again gets them.
//!
//! No I/O and no clock of its own: the broker passes the time in and places what this
//! hands out.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::link::Interest;
use crate::event::Event;
use crate::routing::topic::pattern_matches;
use crate::storage::{RetentionPolicy, retained_bytes};

/// Gap records kept per group while no member here can be told; more are merged or dropped
/// (and counted).
const MAX_GAPS_PER_GROUP: usize = 256;

/// Dormant groups remembered at once; the longest-dormant one is forgotten beyond.
const MAX_DORMANT_GROUPS: usize = 4096;

/// An event waiting for a member.
#[derive(Debug, Clone)]
pub struct Kept {
    pub event: Arc<Event>,
    /// Whether a member had it before (its delivery is then marked `redelivered`).
    pub redelivered: bool,
    kept_at: Instant,
}

/// Events of one topic and epoch a group will never get: named to one of its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupGap {
    pub topic: Arc<str>,
    pub epoch: Arc<str>,
    pub from_seq: u64,
    pub to_seq: u64,
}

#[derive(Debug, Default)]
struct WaitingGroup {
    /// Per topic, in the order they were kept.
    topics: HashMap<Arc<str>, VecDeque<Kept>>,
    gaps: Vec<GroupGap>,
    /// Set while no node has a member of the group: since when.
    dormant_since: Option<Instant>,
}

impl WaitingGroup {
    fn is_idle(&self) -> bool {
        self.topics.is_empty() && self.gaps.is_empty() && self.dormant_since.is_none()
    }
}

/// What [`GroupBacklog::expire`] and the bounds let go of.
#[derive(Debug, Default, Clone)]
pub struct Dropped {
    /// Events turned into gaps for their group.
    pub gapped: u64,
    /// Events or gap records dropped with no group left to tell (a dormant group forgotten,
    /// or more gaps than a group keeps).
    pub forgotten: u64,
    /// The events that left without reaching a member (gapped or forgotten), with their
    /// group: nothing is owed for them any more.
    pub left: Vec<(Interest, Arc<Event>)>,
}

#[derive(Debug)]
pub struct GroupBacklog {
    groups: HashMap<Interest, WaitingGroup>,
    events: usize,
    bytes: usize,
    max_bytes: usize,
    dormant: usize,
    /// How long a dormant group is remembered (the default history `max_age`).
    dormant_for: Duration,
}

impl GroupBacklog {
    pub fn new(max_bytes: usize, dormant_for: Duration) -> Self {
        Self {
            groups: HashMap::new(),
            events: 0,
            bytes: 0,
            max_bytes,
            dormant: 0,
            dormant_for,
        }
    }

    /// Nothing kept and no group dormant.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Events waiting, across groups.
    pub fn events(&self) -> usize {
        self.events
    }

    /// Groups remembered without a member.
    pub fn dormant_groups(&self) -> usize {
        self.dormant
    }

    /// Keeps `event` for `group` until a member can take it, within the topic's `policy`.
    pub fn keep(
        &mut self,
        group: &Interest,
        event: Arc<Event>,
        redelivered: bool,
        now: Instant,
        policy: RetentionPolicy,
    ) -> Dropped {
        let mut dropped = Dropped::default();
        let size = retained_bytes(&event);
        let waiting = self.groups.entry(group.clone()).or_default();
        if self.bytes + size > self.max_bytes {
            // The node's budget is spent: this one is named as missed rather than kept.
            record_gap(waiting, &event, &mut dropped);
            dropped.gapped += 1;
            dropped.left.push((group.clone(), event));
            return dropped;
        }
        let WaitingGroup { topics, gaps, .. } = waiting;
        let queue = topics.entry(event.topic.clone()).or_default();
        queue.push_back(Kept {
            event,
            redelivered,
            kept_at: now,
        });
        self.events += 1;
        self.bytes += size;
        while queue.len() > policy.max_events.max(1) {
            let Some(oldest) = queue.pop_front() else {
                break;
            };
            self.events -= 1;
            self.bytes -= retained_bytes(&oldest.event);
            push_gap(gaps, &oldest.event, &mut dropped);
            dropped.gapped += 1;
            dropped.left.push((group.clone(), oldest.event));
        }
        dropped
    }

    /// The last member of `group` anywhere is gone: keep its events, and new ones, for when a
    /// member comes back.
    pub fn set_dormant(&mut self, group: &Interest, now: Instant) -> Dropped {
        let waiting = self.groups.entry(group.clone()).or_default();
        if waiting.dormant_since.is_none() {
            waiting.dormant_since = Some(now);
            self.dormant += 1;
        }
        let mut dropped = Dropped::default();
        if self.dormant > MAX_DORMANT_GROUPS {
            let longest = self
                .groups
                .iter()
                .filter_map(|(g, w)| w.dormant_since.map(|since| (since, g.clone())))
                .min_by_key(|(since, _)| *since);
            if let Some((_, g)) = longest {
                self.forget(&g, &mut dropped);
            }
        }
        dropped
    }

    /// A member of `group` is back (here or on a peer): it is placed normally again.
    pub fn wake(&mut self, group: &Interest) {
        let Some(waiting) = self.groups.get_mut(group) else {
            return;
        };
        if waiting.dormant_since.take().is_some() {
            self.dormant -= 1;
        }
        if waiting.is_idle() {
            self.groups.remove(group);
        }
    }

    /// Names events `group` will never get (a failed-over placer could not find them in its
    /// history), to be told to one of its members.
    pub fn add_gap(&mut self, group: &Interest, gap: GroupGap) -> Dropped {
        let mut dropped = Dropped::default();
        let waiting = self.groups.entry(group.clone()).or_default();
        if waiting.gaps.len() >= MAX_GAPS_PER_GROUP {
            dropped.forgotten += 1;
        } else {
            waiting.gaps.push(gap);
        }
        dropped
    }

    /// The dormant groups whose pattern matches `topic`.
    pub fn dormant_matching(&self, topic: &str) -> Vec<Interest> {
        if self.dormant == 0 {
            return Vec::new();
        }
        self.groups
            .iter()
            .filter(|(g, w)| w.dormant_since.is_some() && pattern_matches(&g.pattern, topic))
            .map(|(g, _)| g.clone())
            .collect()
    }

    /// Groups with events or gaps waiting and at least one member (not dormant).
    pub fn placeable(&self) -> Vec<Interest> {
        self.groups
            .iter()
            .filter(|(_, w)| w.dormant_since.is_none())
            .map(|(g, _)| g.clone())
            .collect()
    }

    /// Offers `group`'s gaps to `deliver`, oldest first, until it declines one (which
    /// stays).
    pub fn deliver_gaps(&mut self, group: &Interest, mut deliver: impl FnMut(&GroupGap) -> bool) {
        let Some(waiting) = self.groups.get_mut(group) else {
            return;
        };
        let delivered = waiting.gaps.iter().take_while(|gap| deliver(gap)).count();
        waiting.gaps.drain(..delivered);
        if waiting.is_idle() {
            self.groups.remove(group);
        }
    }

    /// Offers `group`'s waiting events to `place`, oldest first within each topic, until it
    /// declines one (which stays first) or `budget` were placed. Returns how many were.
    pub fn place(
        &mut self,
        group: &Interest,
        budget: usize,
        mut place: impl FnMut(&Kept) -> bool,
    ) -> usize {
        let Some(waiting) = self.groups.get_mut(group) else {
            return 0;
        };
        let mut placed = 0;
        'topics: for queue in waiting.topics.values_mut() {
            while let Some(front) = queue.front() {
                if placed >= budget || !place(front) {
                    break 'topics;
                }
                let gone = queue.pop_front().map(|k| retained_bytes(&k.event));
                self.bytes -= gone.unwrap_or(0);
                self.events -= 1;
                placed += 1;
            }
        }
        waiting.topics.retain(|_, q| !q.is_empty());
        if waiting.is_idle() {
            self.groups.remove(group);
        }
        placed
    }

    /// Turns events kept past their topic's `max_age` into gaps, and forgets groups dormant
    /// for longer than `dormant_for` (what they still held is counted as forgotten).
    pub fn expire(&mut self, now: Instant, policy: impl Fn(&str) -> RetentionPolicy) -> Dropped {
        let mut dropped = Dropped::default();
        let mut gone_bytes = 0;
        let mut gone_events = 0;
        for (group, waiting) in self.groups.iter_mut() {
            let WaitingGroup { topics, gaps, .. } = waiting;
            for (topic, queue) in topics.iter_mut() {
                let max_age = policy(topic).max_age;
                while queue
                    .front()
                    .is_some_and(|k| now.saturating_duration_since(k.kept_at) > max_age)
                {
                    let Some(old) = queue.pop_front() else {
                        break;
                    };
                    gone_bytes += retained_bytes(&old.event);
                    gone_events += 1;
                    push_gap(gaps, &old.event, &mut dropped);
                    dropped.gapped += 1;
                    dropped.left.push((group.clone(), old.event));
                }
            }
            topics.retain(|_, q| !q.is_empty());
        }
        self.bytes -= gone_bytes;
        self.events -= gone_events;
        let forgotten: Vec<Interest> = self
            .groups
            .iter()
            .filter(|(_, w)| {
                w.dormant_since
                    .is_some_and(|since| now.saturating_duration_since(since) > self.dormant_for)
            })
            .map(|(g, _)| g.clone())
            .collect();
        for group in forgotten {
            self.forget(&group, &mut dropped);
        }
        self.groups.retain(|_, w| !w.is_idle());
        dropped
    }

    /// Forgets `group` and all it held (counted in `dropped` as forgotten).
    fn forget(&mut self, group: &Interest, dropped: &mut Dropped) {
        let Some(waiting) = self.groups.remove(group) else {
            return;
        };
        if waiting.dormant_since.is_some() {
            self.dormant -= 1;
        }
        dropped.forgotten += waiting.gaps.len() as u64;
        for queue in waiting.topics.into_values() {
            for kept in queue {
                self.events -= 1;
                self.bytes -= retained_bytes(&kept.event);
                dropped.forgotten += 1;
                dropped.left.push((group.clone(), kept.event));
            }
        }
    }
}

fn record_gap(waiting: &mut WaitingGroup, event: &Event, dropped: &mut Dropped) {
    push_gap(&mut waiting.gaps, event, dropped);
}

/// Adds `event` to the group's gaps: extends the last one when it is the next of its topic
/// and epoch; beyond [`MAX_GAPS_PER_GROUP`] the record itself is dropped and counted.
fn push_gap(gaps: &mut Vec<GroupGap>, event: &Event, dropped: &mut Dropped) {
    if let Some(last) = gaps
        .iter_mut()
        .rev()
        .find(|g| g.topic == event.topic && g.epoch == event.epoch && g.to_seq + 1 >= event.seq)
        && event.seq >= last.from_seq
    {
        last.to_seq = last.to_seq.max(event.seq);
        return;
    }
    if gaps.len() >= MAX_GAPS_PER_GROUP {
        dropped.forgotten += 1;
        return;
    }
    gaps.push(GroupGap {
        topic: event.topic.clone(),
        epoch: event.epoch.clone(),
        from_seq: event.seq,
        to_seq: event.seq,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Payload;

    fn group(pattern: &str) -> Interest {
        Interest {
            pattern: pattern.into(),
            group: Some("workers".into()),
        }
    }

    fn event(topic: &str, seq: u64) -> Arc<Event> {
        Arc::new(Event::new(
            topic.into(),
            "e1".into(),
            seq,
            0,
            Payload::Json(bytes::Bytes::from_static(b"1")),
        ))
    }

    fn policy(max_events: usize) -> RetentionPolicy {
        RetentionPolicy {
            max_events,
            max_age: Duration::from_secs(60),
            max_bytes: usize::MAX,
        }
    }

    fn take_gaps(backlog: &mut GroupBacklog, g: &Interest) -> Vec<GroupGap> {
        let mut got = Vec::new();
        backlog.deliver_gaps(g, |gap| {
            got.push(gap.clone());
            true
        });
        got
    }

    fn seqs_placed(backlog: &mut GroupBacklog, g: &Interest, budget: usize) -> Vec<u64> {
        let mut got = Vec::new();
        backlog.place(g, budget, |k| {
            got.push(k.event.seq);
            true
        });
        got
    }

    #[test]
    fn kept_events_are_placed_in_order_and_a_declined_one_stays_first() {
        let mut backlog = GroupBacklog::new(usize::MAX, Duration::from_secs(600));
        let g = group("jobs");
        let now = Instant::now();
        for seq in 1..=5 {
            backlog.keep(&g, event("jobs", seq), false, now, policy(100));
        }
        assert_eq!(backlog.events(), 5);
        let mut offered = Vec::new();
        let placed = backlog.place(&g, 100, |k| {
            offered.push(k.event.seq);
            k.event.seq < 3
        });
        assert_eq!(placed, 2);
        assert_eq!(offered, vec![1, 2, 3], "stops at the first one declined");
        assert_eq!(
            seqs_placed(&mut backlog, &g, 2),
            vec![3, 4],
            "budget respected"
        );
        assert_eq!(seqs_placed(&mut backlog, &g, 100), vec![5]);
        assert!(backlog.is_empty(), "nothing left once all are placed");
        assert_eq!(backlog.bytes, 0);
    }

    #[test]
    fn beyond_the_topics_bound_the_oldest_become_one_merged_gap() {
        let mut backlog = GroupBacklog::new(usize::MAX, Duration::from_secs(600));
        let g = group("jobs.>");
        let now = Instant::now();
        let mut dropped = Dropped::default();
        for seq in 1..=10 {
            dropped.gapped += backlog
                .keep(&g, event("jobs.a", seq), false, now, policy(3))
                .gapped;
        }
        backlog.keep(&g, event("jobs.b", 1), false, now, policy(3));
        assert_eq!(dropped.gapped, 7);
        assert_eq!(
            take_gaps(&mut backlog, &g),
            vec![GroupGap {
                topic: "jobs.a".into(),
                epoch: "e1".into(),
                from_seq: 1,
                to_seq: 7
            }]
        );
        let mut placed = seqs_placed(&mut backlog, &g, 100);
        placed.sort_unstable();
        assert_eq!(placed, vec![1, 8, 9, 10]);
    }

    #[test]
    fn the_node_budget_names_what_does_not_fit() {
        let one = retained_bytes(&event("jobs", 1));
        let mut backlog = GroupBacklog::new(one * 2, Duration::from_secs(600));
        let g = group("jobs");
        let now = Instant::now();
        for seq in 1..=3 {
            backlog.keep(&g, event("jobs", seq), false, now, policy(100));
        }
        assert_eq!(backlog.events(), 2);
        assert_eq!(take_gaps(&mut backlog, &g).len(), 1);
    }

    #[test]
    fn old_events_expire_into_gaps_and_dormant_groups_are_forgotten_in_time() {
        let mut backlog = GroupBacklog::new(usize::MAX, Duration::from_secs(100));
        let g = group("jobs");
        let start = Instant::now();
        backlog.set_dormant(&g, start);
        assert_eq!(backlog.dormant_matching("jobs"), vec![g.clone()]);
        assert!(backlog.dormant_matching("other").is_empty());
        backlog.keep(&g, event("jobs", 1), false, start, policy(100));
        backlog.keep(
            &g,
            event("jobs", 2),
            true,
            start + Duration::from_secs(50),
            policy(100),
        );
        let dropped = backlog.expire(start + Duration::from_secs(61), |_| policy(100));
        assert_eq!(dropped.gapped, 1, "kept past max_age: a gap");
        assert_eq!(backlog.events(), 1);
        let dropped = backlog.expire(start + Duration::from_secs(101), |_| policy(100));
        assert_eq!(
            dropped.forgotten, 2,
            "a group dormant past its time is forgotten with its event and gap"
        );
        assert!(backlog.is_empty());
        assert_eq!(
            (backlog.events(), backlog.bytes, backlog.dormant),
            (0, 0, 0)
        );
    }

    #[test]
    fn a_woken_group_is_placeable_again() {
        let mut backlog = GroupBacklog::new(usize::MAX, Duration::from_secs(600));
        let g = group("jobs");
        let now = Instant::now();
        backlog.set_dormant(&g, now);
        backlog.keep(&g, event("jobs", 1), false, now, policy(100));
        assert!(backlog.placeable().is_empty());
        backlog.wake(&g);
        assert_eq!(backlog.placeable(), vec![g.clone()]);
        assert_eq!(backlog.dormant_groups(), 0);
        assert_eq!(seqs_placed(&mut backlog, &g, 10), vec![1]);
        assert!(backlog.is_empty());
        // Waking a group never seen is harmless, and a dormant group with nothing kept
        // disappears when woken.
        backlog.wake(&group("other"));
        backlog.set_dormant(&g, now);
        backlog.wake(&g);
        assert!(backlog.is_empty());
    }
}
