//! Judges a history against the delivery contract (`docs/guarantees.md`).
//!
//! Each published event is classed, per subscription that should have received it and then
//! overall (the worst class wins):
//! - `ok`: delivered once, in order, or named by a `gap` the subscriber received;
//! - `lost`: acknowledged, covered by a subscription, and neither delivered nor named by a gap;
//! - `recovered`: never acknowledged (no answer) yet delivered — allowed;
//! - `reprocessed`: acknowledged by two members of a queue group, all but one of them on a
//!   delivery marked `redelivered` — allowed: the protocol's at-least-once exception when the
//!   first member's copy or its `ack` is cut off from the node that placed the event (its
//!   link dropped, its node paused), which then places it again. Without a failure a second
//!   member gets an event only once the first one's delivery is void, and its late `ack` is
//!   refused, so two taken acks do mean a failure;
//! - `duplicated`: the same event (topic, epoch, seq) delivered twice to one subscription,
//!   not as a marked queue redelivery; delivered unmarked to two members of one queue group;
//!   acknowledged by more than one member of a group without a marked redelivery; or two
//!   acknowledged publishes given the same position (topic, epoch, seq) — a split brain;
//! - `published twice`: one publish (one `id`, sent again with it after `unavailable` or a
//!   lost connection) acknowledged at two positions, or delivered at two (epoch, seq): the
//!   owner and its replicas remember ids for `dedupe_window`, so a retry must get the first
//!   position (see `twice.rs`);
//! - `reordered`: delivered after a later event of its topic and epoch;
//! - `unexpected`: delivered but never published, published with an error, delivered to a
//!   subscription whose pattern does not match its topic, or delivered after its
//!   subscription ended.
//!
//! A subscription covers an acknowledged event when it began before the publish was sent, had
//! not ended when the `ok` arrived, and its pattern (exact or wildcard) matches the topic. A
//! queue group (pattern and name) covers it when one of its members does; it then owes
//! exactly one acknowledging member. An `ack` whose confirmation was cut off by the end of
//! the connection may or may not have counted: with no confirmed `ack`, one such `ack`
//! settles the event; it never makes a second one.

use std::collections::{BTreeMap, HashMap, HashSet};

use murmur::routing::topic::pattern_matches;
use serde::Serialize;

use crate::history::{Kind, Op};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Ok,
    Recovered,
    Reprocessed,
    Reordered,
    Duplicated,
    PublishedTwice,
    Lost,
    Unexpected,
}

impl Class {
    pub fn is_violation(self) -> bool {
        !matches!(self, Self::Ok | Self::Recovered | Self::Reprocessed)
    }
}

/// One finding, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub class: Class,
    pub id: String,
    pub sub: String,
    pub node: String,
    pub detail: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Verdict {
    /// Each published event's class (the worst over its subscriptions).
    pub events: BTreeMap<String, Class>,
    /// How many events fall in each class.
    pub counts: BTreeMap<Class, usize>,
    /// Per subscriber node: findings by class.
    pub per_node: BTreeMap<String, BTreeMap<Class, usize>>,
    /// Every violation, with where and why.
    pub findings: Vec<Finding>,
    pub acknowledged: usize,
    pub deliveries: usize,
}

impl Verdict {
    pub fn is_valid(&self) -> bool {
        self.findings.iter().all(|f| !f.class.is_violation())
    }

    pub fn count(&self, class: Class) -> usize {
        self.counts.get(&class).copied().unwrap_or(0)
    }
}

#[derive(Debug, Default)]
struct Publish {
    topic: String,
    /// When it was first sent: a publisher sends it again (with the same id) after
    /// `unavailable` or a lost connection, and a subscription that began before the first
    /// send is owed it.
    invoked_at: u64,
    invoked: bool,
    acked: Option<(String, u64, u64)>,
    /// The node the publisher was connected to when its `ok` came.
    acked_on: String,
    failed: bool,
}

#[derive(Debug)]
struct Subscription {
    node: String,
    pattern: String,
    group: Option<String>,
    began: u64,
    ended: Option<u64>,
}

#[derive(Debug)]
struct Delivery<'a> {
    t: u64,
    topic: &'a str,
    epoch: &'a str,
    seq: u64,
    id: &'a str,
    redelivered: bool,
}

pub fn check(history: &[Op]) -> Verdict {
    let mut ops: Vec<&Op> = history.iter().collect();
    ops.sort_by_key(|op| op.t);

    let mut publishes: HashMap<&str, Publish> = HashMap::new();
    let mut subs: BTreeMap<&str, Subscription> = BTreeMap::new();
    let mut deliveries: BTreeMap<&str, Vec<Delivery<'_>>> = BTreeMap::new();
    let mut gaps: HashMap<&str, Vec<(&str, &str, u64, u64)>> = HashMap::new();
    let mut acks: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut unconfirmed_acks: HashMap<&str, Vec<&str>> = HashMap::new();
    for op in &ops {
        match &op.kind {
            Kind::PublishInvoke { id, topic } => {
                let p = publishes.entry(id).or_default();
                if !p.invoked {
                    p.invoked = true;
                    p.topic.clone_from(topic);
                    p.invoked_at = op.t;
                }
            }
            // The first `ok` counts; a later one at another position is `published twice`.
            Kind::PublishOk { id, epoch, seq, .. } => {
                let p = publishes.entry(id).or_default();
                if p.acked.is_none() {
                    p.acked = Some((epoch.clone(), *seq, op.t));
                    p.acked_on.clone_from(&op.node);
                }
            }
            // `unavailable` (timed out waiting for the owner or replicas) is indeterminate: the
            // event may exist anyway. Any other error means it was never published.
            Kind::PublishFail { id, error } if error != "unavailable" => {
                publishes.entry(id).or_default().failed = true;
            }
            Kind::PublishFail { .. } => {}
            Kind::Subscribe {
                sub,
                pattern,
                group,
            } => {
                subs.entry(sub).or_insert(Subscription {
                    node: op.node.clone(),
                    pattern: pattern.clone(),
                    group: group.clone(),
                    began: op.t,
                    ended: None,
                });
            }
            Kind::Unsubscribe { sub } => {
                if let Some(s) = subs.get_mut(sub.as_str()) {
                    s.ended = Some(op.t);
                }
            }
            Kind::Deliver {
                sub,
                topic,
                epoch,
                seq,
                id,
                redelivered,
            } => deliveries.entry(sub).or_default().push(Delivery {
                t: op.t,
                topic,
                epoch,
                seq: *seq,
                id,
                redelivered: *redelivered,
            }),
            Kind::Gap {
                sub,
                topic,
                epoch,
                from_seq,
                to_seq,
                ..
            } => gaps
                .entry(sub)
                .or_default()
                .push((topic, epoch, *from_seq, *to_seq)),
            Kind::Ack { sub, id } => acks.entry(id).or_default().push(sub),
            Kind::AckUnconfirmed { sub, id } => unconfirmed_acks.entry(id).or_default().push(sub),
            // A refused ack did not count; the event went on to another delivery.
            Kind::AckRefused { .. } => {}
        }
    }

    let mut verdict = Verdict::default();
    let mut worst: HashMap<String, Class> = HashMap::new();
    let mut note =
        |verdict: &mut Verdict, class: Class, id: &str, sub: &str, node: &str, detail: String| {
            let entry = worst.entry(id.to_owned()).or_insert(Class::Ok);
            *entry = (*entry).max(class);
            if class != Class::Ok {
                *verdict
                    .per_node
                    .entry(node.to_owned())
                    .or_default()
                    .entry(class)
                    .or_default() += 1;
                verdict.findings.push(Finding {
                    class,
                    id: id.to_owned(),
                    sub: sub.to_owned(),
                    node: node.to_owned(),
                    detail,
                });
            }
        };

    // What each subscription received: duplicates, order, unexpected events.
    for (sub_name, list) in &deliveries {
        let Some(sub) = subs.get(sub_name) else {
            for d in list {
                note(
                    &mut verdict,
                    Class::Unexpected,
                    d.id,
                    sub_name,
                    "",
                    "delivered to a subscription never made".into(),
                );
            }
            continue;
        };
        // A position (topic, epoch, seq) delivered twice is a duplicate. One publish sequenced
        // twice (a retry after a lost answer: the contract allows it) is two positions.
        let mut seen: HashSet<(&str, &str, u64)> = HashSet::new();
        let mut last: HashMap<(&str, &str), u64> = HashMap::new();
        for d in list {
            verdict.deliveries += 1;
            if sub.ended.is_some_and(|end| d.t > end) {
                note(
                    &mut verdict,
                    Class::Unexpected,
                    d.id,
                    sub_name,
                    &sub.node,
                    "delivered after its subscription ended".into(),
                );
                continue;
            }
            match publishes.get(d.id) {
                None => {
                    note(
                        &mut verdict,
                        Class::Unexpected,
                        d.id,
                        sub_name,
                        &sub.node,
                        "never published".into(),
                    );
                    continue;
                }
                Some(p) if p.failed => {
                    note(
                        &mut verdict,
                        Class::Unexpected,
                        d.id,
                        sub_name,
                        &sub.node,
                        "its publish was refused".into(),
                    );
                    continue;
                }
                Some(p) if p.acked.is_none() => {
                    note(
                        &mut verdict,
                        Class::Recovered,
                        d.id,
                        sub_name,
                        &sub.node,
                        "delivered, never acknowledged".into(),
                    );
                }
                Some(_) => {}
            }
            if !pattern_matches(&sub.pattern, d.topic) {
                note(
                    &mut verdict,
                    Class::Unexpected,
                    d.id,
                    sub_name,
                    &sub.node,
                    format!("{} does not match {}", d.topic, sub.pattern),
                );
                continue;
            }
            let queue_redelivery = sub.group.is_some() && d.redelivered;
            if !seen.insert((d.topic, d.epoch, d.seq)) && !queue_redelivery {
                note(
                    &mut verdict,
                    Class::Duplicated,
                    d.id,
                    sub_name,
                    &sub.node,
                    format!("{} #{} again", d.topic, d.seq),
                );
                continue;
            }
            if queue_redelivery {
                continue;
            }
            let key = (d.topic, d.epoch);
            match last.get(&key) {
                Some(&previous) if d.seq <= previous => note(
                    &mut verdict,
                    Class::Reordered,
                    d.id,
                    sub_name,
                    &sub.node,
                    format!("{} #{} after #{previous}", d.topic, d.seq),
                ),
                _ => {
                    last.insert(key, d.seq);
                }
            }
        }
    }

    // One publish, one position: a retry with the same id never makes a second event.
    for twice in crate::twice::find(&ops) {
        note(
            &mut verdict,
            Class::PublishedTwice,
            &twice.id,
            "",
            &twice.node,
            twice.detail,
        );
    }

    // One position, one event: two acknowledged publishes at the same (topic, epoch, seq)
    // mean two nodes numbered the same epoch at once.
    let mut positions: BTreeMap<(&str, &str, u64), Vec<&str>> = BTreeMap::new();
    for (id, p) in &publishes {
        if let Some((epoch, seq, _)) = &p.acked {
            positions
                .entry((p.topic.as_str(), epoch.as_str(), *seq))
                .or_default()
                .push(id);
        }
    }
    for ((topic, epoch, seq), mut ids) in positions {
        ids.sort_unstable();
        for id in ids.iter().skip(1) {
            note(
                &mut verdict,
                Class::Duplicated,
                id,
                "",
                &publishes[id].acked_on,
                format!(
                    "acknowledged at {topic} #{seq} of {epoch}, the position of {}: one \
                     position given to two publishes",
                    ids[0]
                ),
            );
        }
    }

    // Every acknowledged event reached every plain subscription that covered it.
    let delivered: HashMap<&str, HashSet<&str>> = deliveries
        .iter()
        .map(|(sub, list)| (*sub, list.iter().map(|d| d.id).collect()))
        .collect();
    let mut ids: Vec<&&str> = publishes.keys().collect();
    ids.sort();
    for id in ids {
        let p = &publishes[*id];
        let Some((epoch, seq, acked_at)) = &p.acked else {
            // Not acknowledged: nothing is owed; it is recovered if delivered (noted above).
            note(&mut verdict, Class::Ok, id, "", "", String::new());
            continue;
        };
        verdict.acknowledged += 1;
        note(&mut verdict, Class::Ok, id, "", "", String::new());
        let mut group_members: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
        for (sub_name, sub) in &subs {
            let covers = sub.began < p.invoked_at
                && sub.ended.is_none_or(|end| end > *acked_at)
                && pattern_matches(&sub.pattern, &p.topic);
            if !covers {
                continue;
            }
            if let Some(group) = &sub.group {
                group_members
                    .entry((&sub.pattern, group))
                    .or_default()
                    .push(sub_name);
                continue;
            }
            let got = delivered.get(sub_name).is_some_and(|ids| ids.contains(*id));
            let named = gaps.get(sub_name).is_some_and(|list| {
                list.iter().any(|(topic, gap_epoch, from, to)| {
                    *topic == p.topic
                        && gap_epoch == epoch
                        && *from <= *seq
                        && (*to == 0 || *seq <= *to)
                })
            });
            if got || named {
                note(
                    &mut verdict,
                    Class::Ok,
                    id,
                    sub_name,
                    &sub.node,
                    String::new(),
                );
            } else {
                note(
                    &mut verdict,
                    Class::Lost,
                    id,
                    sub_name,
                    &sub.node,
                    format!("{} #{seq} of {epoch} never arrived", p.topic),
                );
            }
        }
        for ((pattern, group), members) in group_members {
            let acked_by = acked_by_members(&acks, id, &members);
            let maybe_acked_by = acked_by_members(&unconfirmed_acks, id, &members);
            let redelivered_to = |member: &str| {
                deliveries
                    .get(member)
                    .is_some_and(|list| list.iter().any(|d| d.id == *id && d.redelivered))
            };
            let node = members
                .first()
                .and_then(|m| subs.get(m))
                .map(|s| s.node.as_str())
                .unwrap_or("");
            // Unmarked deliveries of this event to the group's members: the first placement
            // is the only one that may come without `redelivered`.
            let unmarked: Vec<&str> = members
                .iter()
                .copied()
                .filter(|m| {
                    deliveries
                        .get(m)
                        .is_some_and(|list| list.iter().any(|d| d.id == *id && !d.redelivered))
                })
                .collect();
            if unmarked.len() > 1 {
                note(
                    &mut verdict,
                    Class::Duplicated,
                    id,
                    group,
                    node,
                    format!(
                        "delivered unmarked to {} members of {group}: {}",
                        unmarked.len(),
                        unmarked.join(", ")
                    ),
                );
            }
            let handed_to = members
                .iter()
                .filter(|m| delivered.get(*m).is_some_and(|ids| ids.contains(*id)))
                .count();
            match acked_by.len() {
                1 => {}
                0 if !maybe_acked_by.is_empty() => {}
                0 if handed_to == 0 => note(
                    &mut verdict,
                    Class::Lost,
                    id,
                    group,
                    node,
                    format!("never delivered to a member of {group} on {pattern}"),
                ),
                0 => note(
                    &mut verdict,
                    Class::Lost,
                    id,
                    group,
                    node,
                    format!(
                        "delivered to {handed_to} member(s) of {group} on {pattern}, \
                         acknowledged by none"
                    ),
                ),
                n if acked_by.iter().filter(|m| !redelivered_to(m)).count() <= 1 => note(
                    &mut verdict,
                    Class::Reprocessed,
                    id,
                    group,
                    node,
                    format!(
                        "{n} members of {group} acknowledged it ({}), all but one on marked \
                         redeliveries",
                        acked_by.join(", ")
                    ),
                ),
                n => note(
                    &mut verdict,
                    Class::Duplicated,
                    id,
                    group,
                    node,
                    format!(
                        "{n} members of {group} acknowledged it ({}), more than one without a \
                         marked redelivery",
                        acked_by.join(", ")
                    ),
                ),
            }
        }
    }

    for (id, class) in worst {
        *verdict.counts.entry(class).or_default() += 1;
        verdict.events.insert(id, class);
    }
    verdict
}

/// The members among `members` that acknowledged event `id`, per `table` (event → subs in
/// the order of their acks), each once, in the order of their first ack.
fn acked_by_members<'a>(
    table: &HashMap<&str, Vec<&'a str>>,
    id: &str,
    members: &[&str],
) -> Vec<&'a str> {
    let mut ackers: Vec<&'a str> = Vec::new();
    for sub in table.get(id).into_iter().flatten() {
        if members.contains(sub) && !ackers.contains(sub) {
            ackers.push(sub);
        }
    }
    ackers
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Builder {
        ops: Vec<Op>,
        t: u64,
    }

    impl Builder {
        fn new() -> Self {
            Self {
                ops: Vec::new(),
                t: 0,
            }
        }

        fn op(&mut self, client: &str, kind: Kind) -> &mut Self {
            self.t += 10;
            self.ops.push(Op {
                t: self.t,
                client: client.into(),
                node: format!("node-of-{client}"),
                kind,
            });
            self
        }

        fn sub(&mut self, sub: &str, pattern: &str, group: Option<&str>) -> &mut Self {
            self.op(
                sub,
                Kind::Subscribe {
                    sub: sub.into(),
                    pattern: pattern.into(),
                    group: group.map(Into::into),
                },
            )
        }

        fn publish(&mut self, id: &str, topic: &str, seq: u64) -> &mut Self {
            self.op(
                "p",
                Kind::PublishInvoke {
                    id: id.into(),
                    topic: topic.into(),
                },
            );
            self.op(
                "p",
                Kind::PublishOk {
                    id: id.into(),
                    topic: topic.into(),
                    epoch: "e".into(),
                    seq,
                },
            )
        }

        fn deliver(
            &mut self,
            sub: &str,
            id: &str,
            topic: &str,
            seq: u64,
            redelivered: bool,
        ) -> &mut Self {
            self.op(
                sub,
                Kind::Deliver {
                    sub: sub.into(),
                    topic: topic.into(),
                    epoch: "e".into(),
                    seq,
                    id: id.into(),
                    redelivered,
                },
            )
        }
    }

    #[test]
    fn a_clean_history_is_valid() {
        let mut h = Builder::new();
        h.sub("s", "t.>", None)
            .publish("a", "t.x", 1)
            .publish("b", "t.x", 2);
        h.deliver("s", "a", "t.x", 1, false)
            .deliver("s", "b", "t.x", 2, false);
        let v = check(&h.ops);
        assert!(v.is_valid(), "{:?}", v.findings);
        assert_eq!(v.count(Class::Ok), 2);
        assert_eq!(v.acknowledged, 2);
    }

    #[test]
    fn flags_a_lost_a_duplicated_and_a_reordered_event() {
        let mut h = Builder::new();
        h.sub("s", "t", None);
        for (id, seq) in [("a", 1), ("b", 2), ("c", 3), ("d", 4)] {
            h.publish(id, "t", seq);
        }
        // a twice, c then b (b arrives after a later one), d never.
        h.deliver("s", "a", "t", 1, false)
            .deliver("s", "a", "t", 1, false)
            .deliver("s", "c", "t", 3, false)
            .deliver("s", "b", "t", 2, false);
        let v = check(&h.ops);
        assert!(!v.is_valid());
        assert_eq!(v.events["a"], Class::Duplicated);
        assert_eq!(v.events["b"], Class::Reordered);
        assert_eq!(v.events["c"], Class::Ok);
        assert_eq!(v.events["d"], Class::Lost);
        assert_eq!(v.per_node["node-of-s"][&Class::Lost], 1);
    }

    #[test]
    fn a_gap_that_names_the_event_is_not_a_loss() {
        let mut h = Builder::new();
        h.sub("s", "t", None)
            .publish("a", "t", 1)
            .publish("b", "t", 2);
        h.op(
            "s",
            Kind::Gap {
                sub: "s".into(),
                topic: "t".into(),
                epoch: "e".into(),
                from_seq: 1,
                to_seq: 1,
                reason: "retention".into(),
            },
        );
        h.deliver("s", "b", "t", 2, false);
        assert!(check(&h.ops).is_valid());
        // A gap for another range names nothing.
        let mut h = Builder::new();
        h.sub("s", "t", None).publish("a", "t", 1);
        h.op(
            "s",
            Kind::Gap {
                sub: "s".into(),
                topic: "t".into(),
                epoch: "e".into(),
                from_seq: 5,
                to_seq: 9,
                reason: "retention".into(),
            },
        );
        assert_eq!(check(&h.ops).events["a"], Class::Lost);
    }

    #[test]
    fn unexpected_and_recovered_events_and_deliveries_after_unsub() {
        let mut h = Builder::new();
        h.sub("s", "t", None);
        h.deliver("s", "ghost", "t", 1, false);
        h.op(
            "p",
            Kind::PublishInvoke {
                id: "refused".into(),
                topic: "t".into(),
            },
        );
        h.op(
            "p",
            Kind::PublishFail {
                id: "refused".into(),
                error: "invalid_topic".into(),
            },
        );
        h.deliver("s", "refused", "t", 2, false);
        h.op(
            "p",
            Kind::PublishInvoke {
                id: "unknown".into(),
                topic: "t".into(),
            },
        );
        h.deliver("s", "unknown", "t", 3, false);
        h.op(
            "p",
            Kind::PublishInvoke {
                id: "timed-out".into(),
                topic: "t".into(),
            },
        );
        h.op(
            "p",
            Kind::PublishFail {
                id: "timed-out".into(),
                error: "unavailable".into(),
            },
        );
        h.deliver("s", "timed-out", "t", 4, false);
        h.op("s", Kind::Unsubscribe { sub: "s".into() });
        h.publish("late", "t", 5);
        h.deliver("s", "late", "t", 5, false);
        let v = check(&h.ops);
        assert_eq!(v.events["ghost"], Class::Unexpected);
        assert_eq!(v.events["refused"], Class::Unexpected);
        assert_eq!(v.events["unknown"], Class::Recovered);
        assert_eq!(
            v.events["timed-out"],
            Class::Recovered,
            "unavailable is indeterminate"
        );
        assert_eq!(v.events["late"], Class::Unexpected, "after unsub");
    }

    #[test]
    fn subscriptions_cover_only_what_was_published_while_they_lived() {
        let mut h = Builder::new();
        h.publish("before", "t", 1);
        h.sub("s", "t", None);
        h.publish("during", "t", 2)
            .deliver("s", "during", "t", 2, false);
        h.op("s", Kind::Unsubscribe { sub: "s".into() });
        h.publish("after", "t", 3);
        h.sub("other", "u.*", None);
        h.publish("elsewhere", "t", 4);
        let v = check(&h.ops);
        assert!(v.is_valid(), "{:?}", v.findings);
    }

    #[test]
    fn queue_groups_need_exactly_one_acknowledging_member() {
        let mut h = Builder::new();
        h.sub("m1", "jobs", Some("g")).sub("m2", "jobs", Some("g"));
        h.publish("once", "jobs", 1)
            .publish("twice", "jobs", 2)
            .publish("never", "jobs", 3);
        h.publish("moved", "jobs", 4);
        h.deliver("m1", "once", "jobs", 1, false).op(
            "m1",
            Kind::Ack {
                sub: "m1".into(),
                id: "once".into(),
            },
        );
        h.deliver("m1", "twice", "jobs", 2, false).op(
            "m1",
            Kind::Ack {
                sub: "m1".into(),
                id: "twice".into(),
            },
        );
        h.deliver("m2", "twice", "jobs", 2, false).op(
            "m2",
            Kind::Ack {
                sub: "m2".into(),
                id: "twice".into(),
            },
        );
        h.deliver("m1", "never", "jobs", 3, false);
        // Delivered to m1, not acked, redelivered to m2 (marked) who acks: fine.
        h.deliver("m1", "moved", "jobs", 4, false);
        h.deliver("m2", "moved", "jobs", 4, true).op(
            "m2",
            Kind::Ack {
                sub: "m2".into(),
                id: "moved".into(),
            },
        );
        let v = check(&h.ops);
        assert_eq!(v.events["once"], Class::Ok);
        assert_eq!(v.events["twice"], Class::Duplicated);
        assert_eq!(v.events["never"], Class::Lost);
        assert_eq!(v.events["moved"], Class::Ok);
    }

    fn gap(h: &mut Builder, sub: &str, topic: &str, from_seq: u64, to_seq: u64) {
        h.op(
            sub,
            Kind::Gap {
                sub: sub.into(),
                topic: topic.into(),
                epoch: "e".into(),
                from_seq,
                to_seq,
                reason: "epoch_changed".into(),
            },
        );
    }

    fn ack(h: &mut Builder, sub: &str, id: &str) {
        h.op(
            sub,
            Kind::Ack {
                sub: sub.into(),
                id: id.into(),
            },
        );
    }

    #[test]
    fn wildcards_are_owed_exactly_the_topics_they_match() {
        let mut h = Builder::new();
        h.sub("one", "chaos.*", None)
            .sub("all", "chaos.>", None)
            .sub("deep", "chaos.deep.*", None);
        h.publish("a", "chaos.t0", 1)
            .publish("b", "chaos.t1", 1)
            .publish("c", "chaos.deep.d0", 1)
            .publish("d", "other.t0", 1);
        // `one` misses b; `all` gets everything under chaos.; `deep` misses c but a gap
        // names it.
        h.deliver("one", "a", "chaos.t0", 1, false);
        h.deliver("all", "a", "chaos.t0", 1, false)
            .deliver("all", "b", "chaos.t1", 1, false)
            .deliver("all", "c", "chaos.deep.d0", 1, false);
        gap(&mut h, "deep", "chaos.deep.d0", 1, 0);
        let v = check(&h.ops);
        assert_eq!(v.events["a"], Class::Ok);
        assert_eq!(v.events["b"], Class::Lost, "{:?}", v.findings);
        assert_eq!(v.events["c"], Class::Ok, "named by an epoch_changed gap");
        assert_eq!(v.events["d"], Class::Ok, "covered by no subscription");
        let lost: Vec<&str> = v
            .findings
            .iter()
            .filter(|f| f.class == Class::Lost)
            .map(|f| f.sub.as_str())
            .collect();
        assert_eq!(lost, ["one"]);
    }

    #[test]
    fn a_delivery_outside_the_pattern_is_unexpected() {
        let mut h = Builder::new();
        h.sub("one", "chaos.*", None)
            .publish("deep", "chaos.deep.d0", 1)
            .deliver("one", "deep", "chaos.deep.d0", 1, false);
        let v = check(&h.ops);
        assert_eq!(v.events["deep"], Class::Unexpected);
        assert!(!v.is_valid());
    }

    #[test]
    fn a_queue_event_acknowledged_by_two_members_is_a_duplicate_unless_redelivered() {
        let mut h = Builder::new();
        h.sub("m1", "chaos.>", Some("g"))
            .sub("m2", "chaos.>", Some("g"))
            .sub("m3", "chaos.>", Some("g"))
            .publish("x", "chaos.t0", 1)
            .publish("y", "chaos.t1", 1);
        // x: m1 acks, yet m2 gets it unmarked and acks too.
        h.deliver("m1", "x", "chaos.t0", 1, false);
        ack(&mut h, "m1", "x");
        h.deliver("m2", "x", "chaos.t0", 1, false);
        ack(&mut h, "m2", "x");
        // y: m1's ack is taken but never reaches the placing node, which redelivers (marked)
        // to m3, who acks: the at-least-once exception, allowed.
        h.deliver("m1", "y", "chaos.t1", 1, false);
        ack(&mut h, "m1", "y");
        h.deliver("m3", "y", "chaos.t1", 1, true);
        ack(&mut h, "m3", "y");
        // z: placed on m1's paused node, redelivered (marked) to m2 who acks; then m1's node
        // resumes and writes its stale copy, which m1 acks: still the one original copy.
        h.publish("z", "chaos.t2", 1)
            .deliver("m2", "z", "chaos.t2", 1, true);
        ack(&mut h, "m2", "z");
        h.deliver("m1", "z", "chaos.t2", 1, false);
        ack(&mut h, "m1", "z");
        let v = check(&h.ops);
        assert_eq!(v.events["x"], Class::Duplicated);
        assert!(
            v.findings.iter().any(
                |f| f.id == "x" && f.detail.contains("2 members of g acknowledged it (m1, m2)")
            ),
            "{:?}",
            v.findings
        );
        assert_eq!(v.events["y"], Class::Reprocessed);
        assert_eq!(v.events["z"], Class::Reprocessed, "{:?}", v.findings);
        assert!(!Class::Reprocessed.is_violation());
    }

    #[test]
    fn one_position_given_to_two_publishes_is_a_duplicate() {
        let mut h = Builder::new();
        h.sub("s", "chaos.>", None);
        // Two sides of a partition both number chaos.t0 #7 in epoch e.
        h.publish("left", "chaos.t0", 7)
            .publish("right", "chaos.t0", 7);
        h.deliver("s", "left", "chaos.t0", 7, false);
        let v = check(&h.ops);
        assert_eq!(v.events["left"], Class::Ok);
        // `right` is also lost to `s`, which cannot get two events at one position; the
        // worse class wins.
        assert_eq!(v.events["right"], Class::Lost, "{:?}", v.findings);
        let finding = v
            .findings
            .iter()
            .find(|f| f.id == "right" && f.class == Class::Duplicated)
            .unwrap();
        assert!(
            finding.detail.contains("the position of left"),
            "{}",
            finding.detail
        );
    }

    #[test]
    fn a_queue_event_never_acknowledged_is_lost_unless_an_ack_was_cut_off() {
        let mut h = Builder::new();
        h.sub("m1", "chaos.>", Some("g"))
            .sub("m2", "chaos.>", Some("g"));
        h.publish("unacked", "chaos.t0", 1)
            .publish("undelivered", "chaos.t1", 1)
            .publish("refused", "chaos.t2", 1)
            .publish("cut-off", "chaos.t3", 1);
        h.deliver("m1", "unacked", "chaos.t0", 1, false);
        h.deliver("m1", "refused", "chaos.t2", 1, false).op(
            "m1",
            Kind::AckRefused {
                sub: "m1".into(),
                id: "refused".into(),
            },
        );
        h.deliver("m2", "cut-off", "chaos.t3", 1, false).op(
            "m2",
            Kind::AckUnconfirmed {
                sub: "m2".into(),
                id: "cut-off".into(),
            },
        );
        let v = check(&h.ops);
        assert_eq!(v.events["unacked"], Class::Lost);
        assert_eq!(v.events["undelivered"], Class::Lost);
        assert_eq!(
            v.events["refused"],
            Class::Lost,
            "a refused ack does not count"
        );
        assert_eq!(v.events["cut-off"], Class::Ok, "the ack may have counted");
        let details: Vec<&str> = v.findings.iter().map(|f| f.detail.as_str()).collect();
        assert!(
            details.iter().any(|d| d.starts_with("never delivered")),
            "{details:?}"
        );
        assert!(
            details.iter().any(|d| d.contains("acknowledged by none")),
            "{details:?}"
        );
        // A cut-off ack never makes a second acknowledgement.
        let mut h = Builder::new();
        h.sub("m1", "chaos.>", Some("g"))
            .sub("m2", "chaos.>", Some("g"));
        h.publish("x", "chaos.t0", 1)
            .deliver("m1", "x", "chaos.t0", 1, false)
            .op(
                "m1",
                Kind::AckUnconfirmed {
                    sub: "m1".into(),
                    id: "x".into(),
                },
            )
            .deliver("m2", "x", "chaos.t0", 1, true);
        ack(&mut h, "m2", "x");
        assert_eq!(check(&h.ops).events["x"], Class::Ok);
    }

    #[test]
    fn an_unmarked_queue_delivery_to_a_second_member_is_a_duplicate() {
        let mut h = Builder::new();
        h.sub("m1", "chaos.>", Some("g"))
            .sub("m2", "chaos.>", Some("g"))
            .publish("x", "chaos.t0", 1);
        h.deliver("m1", "x", "chaos.t0", 1, false);
        h.deliver("m2", "x", "chaos.t0", 1, false);
        ack(&mut h, "m2", "x");
        let v = check(&h.ops);
        assert_eq!(v.events["x"], Class::Duplicated);
        assert!(
            v.findings[0].detail.contains("unmarked to 2 members"),
            "{:?}",
            v.findings
        );
        // The same to one member twice, the second unmarked, is a duplicate too.
        let mut h = Builder::new();
        h.sub("m1", "chaos.>", Some("g"))
            .publish("y", "chaos.t0", 1)
            .deliver("m1", "y", "chaos.t0", 1, false)
            .deliver("m1", "y", "chaos.t0", 1, false);
        ack(&mut h, "m1", "y");
        assert_eq!(check(&h.ops).events["y"], Class::Duplicated);
    }
}
