//! A deadline for every suspicion this node holds, whoever raised it.
//!
//! foca arms its suspect-to-down timer only on the node whose own probe failed. A node that
//! learns of a suspicion from gossip keeps the member `suspect` with no deadline of its own:
//! the member leaves that state only by refuting (it must hear that it is suspected) or by
//! a `down` from the node that raised it. After a partition or heavy gossip loss both can
//! miss: the suspicion's broadcasts were spent while the member was unreachable, so it never
//! hears of it and never refutes, and the raiser's timer found the member refuted at an
//! older incarnation, or the raiser's `down` was lost. The chaos runs saw members stay
//! `suspect` for good that way (`partition-short`, `gossip-loss`), while the member saw
//! everyone alive.
//!
//! memberlist (Lifeguard) starts a suspicion timer on every node that learns of a
//! suspicion; this does the same on top of foca: a member still suspect at the same
//! incarnation a little after `suspect_to_down_after` — long enough for the raiser's own
//! timer to act first — is declared down here, which foca gossips (and tells the member, so
//! it rejoins under a new generation at once). Plain data: the gossip task feeds it the
//! current suspects and the time.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use foca::Incarnation;

#[derive(Debug)]
pub struct SuspicionDeadlines<K> {
    /// Each suspect member, the incarnation it is suspected at and when this node first
    /// saw it so.
    since: HashMap<K, (Incarnation, Instant)>,
    deadline: Duration,
}

impl<K: Eq + Hash + Clone> SuspicionDeadlines<K> {
    pub fn new(deadline: Duration) -> Self {
        Self {
            since: HashMap::new(),
            deadline,
        }
    }

    /// Given every member suspect now (with its incarnation), returns those suspected at
    /// that incarnation for longer than the deadline; they are forgotten here (declared
    /// down, they leave the suspect list).
    pub fn overdue(
        &mut self,
        suspects: impl Iterator<Item = (K, Incarnation)>,
        now: Instant,
    ) -> Vec<(K, Incarnation)> {
        let mut current: HashMap<K, (Incarnation, Instant)> = HashMap::new();
        for (member, incarnation) in suspects {
            let first_seen = match self.since.get(&member) {
                // A refutation followed by a new suspicion starts a new deadline.
                Some(&(seen_at, at)) if seen_at == incarnation => at,
                _ => now,
            };
            current.insert(member, (incarnation, first_seen));
        }
        let mut overdue = Vec::new();
        current.retain(|member, (incarnation, at)| {
            let late = now.duration_since(*at) > self.deadline;
            if late {
                overdue.push((member.clone(), *incarnation));
            }
            !late
        });
        self.since = current;
        overdue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suspicion_that_lasts_past_the_deadline_is_overdue_once() {
        let start = Instant::now();
        let mut deadlines = SuspicionDeadlines::new(Duration::from_secs(4));
        let at = |s: u64| start + Duration::from_secs(s);
        assert!(deadlines.overdue([("n2", 3)].into_iter(), at(0)).is_empty());
        assert!(deadlines.overdue([("n2", 3)].into_iter(), at(4)).is_empty());
        assert_eq!(
            deadlines.overdue([("n2", 3)].into_iter(), at(5)),
            vec![("n2", 3)]
        );
        // Forgotten once reported: a member still listed gets a new deadline.
        assert!(deadlines.overdue([("n2", 3)].into_iter(), at(6)).is_empty());
    }

    #[test]
    fn a_refutation_or_a_new_incarnation_restarts_the_deadline() {
        let start = Instant::now();
        let mut deadlines = SuspicionDeadlines::new(Duration::from_secs(4));
        let at = |s: u64| start + Duration::from_secs(s);
        deadlines.overdue([("n2", 3), ("n3", 1)].into_iter(), at(0));
        // n3 refuted (no longer suspect); n2 is suspect again at a higher incarnation.
        deadlines.overdue([("n2", 4)].into_iter(), at(2));
        assert!(deadlines.overdue([("n2", 4)].into_iter(), at(5)).is_empty());
        // n3 suspect again later: a fresh deadline, not the old one.
        assert!(
            deadlines
                .overdue([("n2", 4), ("n3", 1)].into_iter(), at(7))
                .contains(&("n2", 4))
        );
        assert!(deadlines.overdue([("n3", 1)].into_iter(), at(9)).is_empty());
        assert_eq!(
            deadlines.overdue([("n3", 1)].into_iter(), at(12)),
            vec![("n3", 1)]
        );
    }
}
