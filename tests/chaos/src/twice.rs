//! The `published twice` class: one publish (one id, sent again with that id after
//! `unavailable` or a lost connection) that became two events. Publishers send every attempt
//! of an event with the same `id`, which the topic's owner and its replicas remember for
//! `dedupe_window`, so all its acknowledgements and deliveries must name one position.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{Kind, Op};

/// One publish that was acknowledged, or delivered, at more than one position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedTwice {
    pub id: String,
    /// The node the publisher was connected to when the second position was acknowledged
    /// (or, if only deliveries show it, the node of the subscriber that saw it).
    pub node: String,
    pub detail: String,
}

#[derive(Default)]
struct Positions<'a> {
    /// (epoch, seq) → how it is known ("acknowledged" or the subscription) and the node.
    seen: BTreeMap<(&'a str, u64), (String, &'a str)>,
}

/// Every id acknowledged at two different positions, or delivered at two different
/// (epoch, seq), in `ops` (any order).
pub fn find(ops: &[&Op]) -> Vec<PublishedTwice> {
    let mut by_id: BTreeMap<&str, Positions<'_>> = BTreeMap::new();
    for op in ops {
        let (id, epoch, seq, how) = match &op.kind {
            Kind::PublishOk { id, epoch, seq, .. } => (id, epoch, *seq, "acknowledged".to_owned()),
            Kind::Deliver {
                id,
                epoch,
                seq,
                sub,
                ..
            } => (id, epoch, *seq, format!("delivered to {sub}")),
            _ => continue,
        };
        by_id
            .entry(id)
            .or_default()
            .seen
            .entry((epoch, seq))
            .or_insert((how, &op.node));
    }
    by_id
        .into_iter()
        .filter(|(_, p)| p.seen.len() > 1)
        .map(|(id, p)| {
            let described: BTreeSet<String> = p
                .seen
                .iter()
                .map(|((epoch, seq), (how, _))| format!("#{seq} of {epoch} ({how})"))
                .collect();
            let node = p
                .seen
                .values()
                .nth(1)
                .map_or("", |(_, node)| *node)
                .to_owned();
            PublishedTwice {
                id: id.to_owned(),
                node,
                detail: format!(
                    "one publish, {} positions: {}",
                    p.seen.len(),
                    described.into_iter().collect::<Vec<_>>().join(", ")
                ),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::checker::{Class, check};
    use crate::history::{Kind, Op};

    fn op(t: u64, client: &str, kind: Kind) -> Op {
        Op {
            t,
            client: client.into(),
            node: format!("node-of-{client}"),
            kind,
        }
    }

    fn invoke(t: u64, id: &str) -> Op {
        op(
            t,
            "p",
            Kind::PublishInvoke {
                id: id.into(),
                topic: "t".into(),
            },
        )
    }

    fn ok(t: u64, id: &str, seq: u64) -> Op {
        op(
            t,
            "p",
            Kind::PublishOk {
                id: id.into(),
                topic: "t".into(),
                epoch: "e".into(),
                seq,
            },
        )
    }

    fn deliver(t: u64, id: &str, seq: u64) -> Op {
        op(
            t,
            "s",
            Kind::Deliver {
                sub: "s".into(),
                topic: "t".into(),
                epoch: "e".into(),
                seq,
                id: id.into(),
                redelivered: false,
            },
        )
    }

    fn subscribe() -> Op {
        op(
            1,
            "s",
            Kind::Subscribe {
                sub: "s".into(),
                pattern: "t".into(),
                group: None,
            },
        )
    }

    #[test]
    fn a_retry_answered_with_the_first_position_is_fine() {
        let fail = op(
            30,
            "p",
            Kind::PublishFail {
                id: "a".into(),
                error: "unavailable".into(),
            },
        );
        let history = vec![
            subscribe(),
            invoke(10, "a"),
            deliver(20, "a", 1),
            fail,
            invoke(40, "a"),
            ok(50, "a", 1),
        ];
        let verdict = check(&history);
        assert!(verdict.is_valid(), "{:?}", verdict.findings);
        assert_eq!(verdict.count(Class::PublishedTwice), 0);
    }

    #[test]
    fn a_retry_that_became_a_second_event_is_published_twice() {
        // Acknowledged at two positions.
        let history = vec![
            subscribe(),
            invoke(10, "a"),
            ok(20, "a", 1),
            invoke(30, "a"),
            ok(40, "a", 2),
            deliver(50, "a", 1),
            deliver(60, "a", 2),
        ];
        let verdict = check(&history);
        assert_eq!(verdict.events["a"], Class::PublishedTwice);
        assert!(!verdict.is_valid());

        // Never acknowledged twice, but delivered at two positions.
        let history = vec![
            subscribe(),
            invoke(10, "b"),
            deliver(20, "b", 1),
            invoke(30, "b"),
            ok(40, "b", 2),
            deliver(50, "b", 2),
        ];
        let verdict = check(&history);
        assert_eq!(verdict.events["b"], Class::PublishedTwice);
        let finding = verdict
            .findings
            .iter()
            .find(|f| f.class == Class::PublishedTwice)
            .unwrap();
        assert!(finding.detail.contains("#1 of e") && finding.detail.contains("#2 of e"));
    }
}
