//! Which node owns a topic: rendezvous (highest-random-weight) hashing over the live members.
//!
//! Every node ranks the members for a topic the same way from the same member list, without
//! talking to anyone: the first is the owner (it sequences and stores the topic's events),
//! the next ones hold replicas. When a member joins or leaves, only the topics whose top
//! ranks involve it move — about 1/n of them.

/// A fixed hasher: every node must compute the same weights. std's hashers are not
/// promised stable across Rust releases, and nodes of different builds must agree: FNV-1a
/// over the topic, a 0xff separator and the member's name, then a mixer.
///
/// The topic's part of the hash is the same for every member, so it is computed once per
/// ranking ([`topic_prefix`]) and each member only continues it ([`weight_after`]): placement
/// runs for every publish and every sequenced event.
#[cfg(test)]
fn weight(topic: &str, member: &str) -> u64 {
    weight_after(topic_prefix(topic), member)
}

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a's state after `topic` and the separator.
fn topic_prefix(topic: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in topic.as_bytes() {
        h ^= u64::from(byte);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h ^= 0xff;
    h.wrapping_mul(FNV_PRIME)
}

/// `member`'s weight for the topic whose [`topic_prefix`] is `prefix`.
fn weight_after(prefix: u64, member: &str) -> u64 {
    let mut h = prefix;
    for &byte in member.as_bytes() {
        h ^= u64::from(byte);
        h = h.wrapping_mul(FNV_PRIME);
    }
    // splitmix64 finaliser: spreads FNV's weak low bits.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Members ranked for `topic`, best first; ties (practically impossible) broken by name.
pub fn rank<'a>(topic: &str, members: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let prefix = topic_prefix(topic);
    let mut ranked: Vec<(u64, &str)> = members
        .into_iter()
        .map(|m| (weight_after(prefix, m), m))
        .collect();
    ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    ranked.dedup_by(|a, b| a.1 == b.1);
    ranked.into_iter().map(|(_, m)| m).collect()
}

/// The first `k` members of [`rank`]'s order for `topic`, leaving out `skip`: what
/// `rank(..).filter(|m| m != skip).take(k)` gives, without ranking (and allocating for)
/// every member. Runs for every sequenced event (its replicas), where `k` is 1 or 2.
pub fn best_ranked<'a>(
    topic: &str,
    members: impl IntoIterator<Item = &'a str>,
    skip: &str,
    k: usize,
) -> Vec<&'a str> {
    let prefix = topic_prefix(topic);
    let mut best: Vec<(u64, &'a str)> = Vec::with_capacity(k + 1);
    for member in members {
        if member == skip || best.iter().any(|(_, m)| *m == member) {
            continue;
        }
        let candidate = (weight_after(prefix, member), member);
        // Rank's order: higher weight first, then the smaller name.
        let position = best
            .iter()
            .position(|b| candidate.0 > b.0 || (candidate.0 == b.0 && candidate.1 < b.1))
            .unwrap_or(best.len());
        if position < k {
            best.insert(position, candidate);
            best.truncate(k);
        }
    }
    best.into_iter().map(|(_, m)| m).collect()
}

/// The owner of `topic` among `members`.
pub fn owner<'a>(topic: &str, members: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    // Each member's weight once (comparing by recomputed weights hashed the topic again
    // for every comparison); ties go to the smaller name, as in `rank`.
    let prefix = topic_prefix(topic);
    members
        .into_iter()
        .map(|m| (weight_after(prefix, m), m))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, m)| m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_the_first_of_the_ranking_and_stable() {
        let members = ["n1", "n2", "n3"];
        for i in 0..100 {
            let topic = format!("topic.{i}");
            let ranked = rank(&topic, members);
            assert_eq!(ranked.len(), 3);
            assert_eq!(owner(&topic, members), Some(ranked[0]));
            // Order of the member list does not matter.
            assert_eq!(rank(&topic, ["n3", "n1", "n2"]), ranked);
        }
        assert_eq!(owner("t", std::iter::empty()), None);
    }

    #[test]
    fn best_ranked_is_the_ranking_without_the_skipped_member() {
        let members = ["n1", "n2", "n3", "n4", "n5", "n2"];
        for i in 0..500 {
            let topic = format!("topic.{i}");
            for skip in ["n1", "n3", "none"] {
                for k in 0..=6 {
                    let expected: Vec<&str> = rank(&topic, members)
                        .into_iter()
                        .filter(|m| *m != skip)
                        .take(k)
                        .collect();
                    assert_eq!(
                        best_ranked(&topic, members, skip, k),
                        expected,
                        "{topic} {skip} {k}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_new_member_takes_about_its_share_and_moves_nothing_else() {
        let three = ["n1", "n2", "n3"];
        let four = ["n1", "n2", "n3", "n4"];
        let topics: Vec<String> = (0..4000).map(|i| format!("t.{i}")).collect();
        let mut moved = 0;
        for t in &topics {
            let before = owner(t, three).unwrap();
            let after = owner(t, four).unwrap();
            if before != after {
                assert_eq!(after, "n4", "topics only move to the newcomer");
                moved += 1;
            }
        }
        // Expect about a quarter.
        assert!((800..1200).contains(&moved), "moved {moved} of 4000");
    }

    #[test]
    fn weights_are_pinned_across_builds() {
        // The hash itself, not only the order it gives: FNV-1a over topic, 0xff, member.
        assert_eq!(weight("bench.fanout", "n1"), 0xc8b5_8ac3_b967_431d);
        assert_eq!(weight("", ""), 0x4f2d_b50f_1240_40cd);
    }

    #[test]
    fn the_ranking_is_pinned_across_builds() {
        // Nodes of different builds must agree; bench/scale_model.py computes the same
        // ranking to tell which node owned the bench's topic.
        let members = ["n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8", "n9"];
        assert_eq!(
            rank("bench.fanout", members),
            ["n1", "n6", "n4", "n9", "n7", "n2", "n8", "n3", "n5"]
        );
    }

    #[test]
    fn losing_the_owner_promotes_the_first_replica() {
        let all = ["a", "b", "c", "d"];
        for i in 0..200 {
            let topic = format!("x{i}");
            let ranked = rank(&topic, all);
            let survivors: Vec<&str> = all.iter().copied().filter(|m| *m != ranked[0]).collect();
            assert_eq!(owner(&topic, survivors), Some(ranked[1]));
        }
    }
}
