//! What a run on disk storage owes beyond the delivery contract (`docs/guarantees.md`,
//! "Under which failures": every node killed at once and started again): every acknowledged
//! event can still be replayed, at the position its `ok` gave it, and no subscriber was told
//! of a gap. The checker counts a `gap` as settling what it names — right for memory storage,
//! where a topic whose every holder died starts a new epoch — so on disk these rules are
//! checked on top of it.
//!
//! The replay is a subscription made after the load with `from: "earliest"`; the run keeps
//! below the history retention (`history_max_events`, 1000 per topic), so every event of the
//! run is still retained when it is made.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::history::{Kind, Op};

/// Violations of the disk rules in `history` (the run's clients) and `replay` (the replay
/// subscription's record): an empty list when the run kept them.
pub fn check(history: &[Op], replay: &[Op]) -> Vec<String> {
    let mut problems = Vec::new();

    // The first `ok` of each publish, as the checker counts it.
    let mut ops: Vec<&Op> = history.iter().collect();
    ops.sort_by_key(|op| op.t);
    let mut acked: BTreeMap<&str, (&str, &str, u64)> = BTreeMap::new();
    for op in &ops {
        match &op.kind {
            Kind::PublishOk {
                id,
                topic,
                epoch,
                seq,
            } => {
                acked.entry(id).or_insert((topic, epoch, *seq));
            }
            Kind::Gap {
                sub,
                topic,
                epoch,
                from_seq,
                to_seq,
                reason,
            } => problems.push(format!(
                "gap: {sub} (on {}) was told {topic} #{from_seq}..#{to_seq} of {epoch} is gone ({reason})",
                op.node
            )),
            _ => {}
        }
    }

    // Same epochs: a topic's acknowledged events are all in one epoch.
    let mut epochs: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (topic, epoch, _) in acked.values() {
        epochs.entry(topic).or_default().insert(epoch);
    }
    for (topic, set) in &epochs {
        if set.len() > 1 {
            problems.push(format!(
                "epoch changed: {topic} acknowledged in {} epochs ({})",
                set.len(),
                set.iter().copied().collect::<Vec<_>>().join(", ")
            ));
        }
    }

    // Every acknowledged event replayed where its `ok` put it.
    if !replay
        .iter()
        .any(|op| matches!(op.kind, Kind::Subscribe { .. }))
    {
        problems.push("the replay subscription was never made: nothing checked".into());
        return problems;
    }
    let mut replayed: HashMap<&str, Vec<(&str, &str, u64)>> = HashMap::new();
    let mut positions: BTreeMap<(&str, &str, u64), usize> = BTreeMap::new();
    for op in replay {
        match &op.kind {
            Kind::Deliver {
                topic,
                epoch,
                seq,
                id,
                ..
            } => {
                replayed
                    .entry(id)
                    .or_default()
                    .push((topic.as_str(), epoch.as_str(), *seq));
                *positions.entry((topic, epoch, *seq)).or_default() += 1;
            }
            Kind::Gap {
                topic,
                epoch,
                from_seq,
                to_seq,
                reason,
                ..
            } => problems.push(format!(
                "replay gap: {topic} #{from_seq}..#{to_seq} of {epoch} is gone ({reason})"
            )),
            _ => {}
        }
    }
    for ((topic, epoch, seq), times) in positions {
        if times > 1 {
            problems.push(format!("replayed {times} times: {topic} #{seq} of {epoch}"));
        }
    }
    let mut missing = 0;
    for (id, &(topic, epoch, seq)) in &acked {
        match replayed.get(id) {
            None => {
                missing += 1;
                if missing <= 20 {
                    problems.push(format!(
                        "lost: {id}, acknowledged at {topic} #{seq} of {epoch}, is not replayed"
                    ));
                }
            }
            Some(at) if !at.contains(&(topic, epoch, seq)) => problems.push(format!(
                "moved: {id}, acknowledged at {topic} #{seq} of {epoch}, is replayed at {}",
                at.iter()
                    .map(|(t, e, s)| format!("{t} #{s} of {e}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Some(at) if at.len() > 1 => {
                problems.push(format!("replayed at {} positions: {id}", at.len()))
            }
            Some(_) => {}
        }
    }
    if missing > 20 {
        problems.push(format!(
            "… {missing} acknowledged events not replayed in all"
        ));
    }
    problems
}

/// How many acknowledged events `history` holds and how many events `replay` replayed, for
/// the report.
pub fn counts(history: &[Op], replay: &[Op]) -> (usize, usize) {
    let acked: BTreeSet<&str> = history
        .iter()
        .filter_map(|op| match &op.kind {
            Kind::PublishOk { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    let replayed = replay
        .iter()
        .filter(|op| matches!(op.kind, Kind::Deliver { .. }))
        .count();
    (acked.len(), replayed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(t: u64, client: &str, kind: Kind) -> Op {
        Op {
            t,
            client: client.into(),
            node: "10.77.0.1:7400".into(),
            kind,
        }
    }

    fn ok(t: u64, id: &str, epoch: &str, seq: u64) -> Op {
        op(
            t,
            "p1",
            Kind::PublishOk {
                id: id.into(),
                topic: "chaos.t0".into(),
                epoch: epoch.into(),
                seq,
            },
        )
    }

    fn replayed(id: &str, epoch: &str, seq: u64) -> Op {
        op(
            100,
            "replay",
            Kind::Deliver {
                sub: "replay".into(),
                topic: "chaos.t0".into(),
                epoch: epoch.into(),
                seq,
                id: id.into(),
                redelivered: false,
            },
        )
    }

    fn subscribed() -> Op {
        op(
            99,
            "replay",
            Kind::Subscribe {
                sub: "replay".into(),
                pattern: "chaos.>".into(),
                group: None,
            },
        )
    }

    #[test]
    fn everything_replayed_in_place_is_kept() {
        let history = [ok(1, "p1-1", "e1", 1), ok(2, "p1-2", "e1", 2)];
        let replay = [
            subscribed(),
            replayed("p1-1", "e1", 1),
            replayed("p1-2", "e1", 2),
        ];
        assert_eq!(check(&history, &replay), Vec::<String>::new());
    }

    #[test]
    fn a_missing_moved_or_repeated_event_an_epoch_change_and_gaps_are_found() {
        let history = [
            ok(1, "p1-1", "e1", 1),
            ok(2, "p1-2", "e1", 2),
            ok(3, "p1-3", "e2", 1),
            op(
                4,
                "s1",
                Kind::Gap {
                    sub: "s1".into(),
                    topic: "chaos.t0".into(),
                    epoch: "e1".into(),
                    from_seq: 3,
                    to_seq: 0,
                    reason: "epoch_changed".into(),
                },
            ),
        ];
        let replay = [
            subscribed(),
            replayed("p1-2", "e1", 3),
            replayed("p1-3", "e2", 1),
            replayed("p1-3", "e2", 1),
        ];
        let problems = check(&history, &replay);
        let has = |prefix: &str| problems.iter().any(|p| p.starts_with(prefix));
        assert!(has("gap: s1"), "{problems:?}");
        assert!(has("epoch changed: chaos.t0"), "{problems:?}");
        assert!(has("lost: p1-1"), "{problems:?}");
        assert!(has("moved: p1-2"), "{problems:?}");
        assert!(has("replayed 2 times"), "{problems:?}");
        assert!(has("replayed at 2 positions: p1-3"), "{problems:?}");
    }

    #[test]
    fn no_replay_is_a_problem() {
        assert_eq!(
            check(&[ok(1, "p1-1", "e1", 1)], &[]),
            vec!["the replay subscription was never made: nothing checked".to_owned()]
        );
    }
}
