//! Commit positions: how far each topic is committed (stored on every replica, so possibly
//! acknowledged and delivered). The owner announces it to the topic's replicas (see
//! `cluster/topics/commits.rs`); a replica serves replays only up to there, and follows the
//! owner when an event it holds beyond turns out to have failed there.

use std::sync::Arc;

use crate::event::Event;

use super::{Broker, TopicShard};

impl Broker {
    /// The owner of `topic` says it is committed up to `seq` of `epoch` (on a replica).
    pub fn on_commit(&self, topic: &str, epoch: &str, seq: u64) {
        let mut shard = self.shard(topic).lock();
        shard.topics.committed_to(topic, epoch, seq);
        shard.history.note_committed(topic, epoch, seq);
    }

    /// The copies this node holds of topics it owns now (`is_owned_here`; its owner went
    /// away and this node sees a majority): served as committed from now on, as they will be
    /// once the topic is claimed.
    pub fn promote_copies(&self, is_owned_here: impl Fn(&str) -> bool) {
        for shard in self.shards.iter() {
            let copies: Vec<Arc<str>> = shard.lock().topics.copies().cloned().collect();
            let mine: Vec<Arc<str>> = copies.into_iter().filter(|t| is_owned_here(t)).collect();
            if mine.is_empty() {
                continue;
            }
            let mut shard = shard.lock();
            for topic in &mine {
                shard.topics.promote_copy(topic);
            }
        }
    }

    /// The topics this node sequences whose committed position moved since the last call:
    /// (topic, epoch, committed seq), for their replicas.
    pub fn take_commit_announcements(&self) -> Vec<(Arc<str>, Arc<str>, u64)> {
        let mut moved = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            if shard.commit_moved.is_empty() {
                continue;
            }
            let topics = std::mem::take(&mut shard.commit_moved);
            let shard = &mut *shard;
            for topic in topics {
                if let Some(state) = shard.topics.get(&topic).filter(|t| !t.moved) {
                    let (epoch, committed) = (state.epoch.clone(), state.committed());
                    // Recorded with the history too: after a restart this node serves up
                    // to here before it claims the topic again.
                    shard.history.note_committed(&topic, &epoch, committed);
                    moved.push((topic, epoch, committed));
                }
            }
        }
        moved
    }

    /// Whether this replica holds another event, committed, at `event`'s position. Its
    /// sender numbers from a stale copy (another node went on with the topic meanwhile): it
    /// is refused, so that it fails the event instead of acknowledging it, and claims the
    /// topic again. A committed position is never rewritten.
    pub(super) fn committed_otherwise(shard: &TopicShard, event: &Event) -> bool {
        let committed = shard.topics.get(&event.topic).map_or(0, |t| t.committed());
        event.seq <= committed
            && shard
                .history
                .get(&event.topic, &event.epoch, event.seq)
                .is_some_and(|kept| !same_event(&kept, event))
    }

    /// A replica is sent `event` for a position it already holds, not committed there
    /// (see [`Self::committed_otherwise`]). Returns true when what it holds there is another
    /// event (it failed at its owner, which then numbered `event` in its place): that one
    /// and everything after it are dropped, and the caller stores `event`.
    pub(super) fn replace_stale_copy(shard: &mut TopicShard, event: &Arc<Event>) -> bool {
        let Some(stale) = shard
            .history
            .get(&event.topic, &event.epoch, event.seq)
            .filter(|kept| !same_event(kept, event))
        else {
            return false;
        };
        tracing::debug!(topic = %event.topic, seq = event.seq, "replaced an uncommitted copy that failed at its owner");
        // It and what follows go, with their ids; the new event's id was remembered by the
        // caller.
        let last = shard.topics.get(&event.topic).map_or(0, |t| t.last_seq);
        let dropped: Vec<Arc<Event>> = (stale.seq..=last)
            .filter_map(|seq| shard.history.get(&event.topic, &event.epoch, seq))
            .collect();
        for gone in dropped.iter().rev() {
            Self::forget_failed(shard, gone);
        }
        shard.topics.truncate_copy(&event.topic, event.seq);
        true
    }
}

/// Whether a copy and an event sent for the same position are the same publish: the same
/// id, or the same payload and time.
pub(super) fn same_event(kept: &Event, sent: &Event) -> bool {
    match (&kept.publish_id, &sent.publish_id) {
        (Some(a), Some(b)) => a == b,
        (None, None) => kept.ts == sent.ts && kept.payload == sent.payload,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::broker::sequencing::ReplicaRefusal;
    use crate::broker::test_support::json;
    use crate::broker::{Broker, ReplayPage, Sequenced, now_ms};
    use crate::cluster::link::PeerLink;
    use crate::event::Event;
    use crate::protocol::ResumeFrom;
    use crate::routing::dedupe::PublishId;
    use crate::storage::Retention;

    fn event(seq: u64, id: &str) -> Arc<Event> {
        Arc::new(
            Event::new("t".into(), "e1".into(), seq, now_ms(), json("1"))
                .with_publish_id(Some(PublishId::client(id))),
        )
    }

    /// (seq, publish id) of what `broker` serves a resume from the earliest event.
    fn served(broker: &Broker) -> Vec<(u64, String)> {
        broker
            .replay_candidates("t", &ResumeFrom::Earliest, ReplayPage::UNBOUNDED)
            .unwrap()
            .iter()
            .flat_map(|c| c.replay.events.iter())
            .map(|e| {
                let id = e.publish_id.as_ref().and_then(PublishId::client_id);
                (e.seq, id.unwrap_or("").to_owned())
            })
            .collect()
    }

    #[test]
    fn a_replica_serves_only_what_its_owner_said_is_committed() {
        let replica = Broker::new(Retention::default());
        for seq in 1..=3 {
            replica
                .store_replica(event(seq, &format!("p{seq}")))
                .unwrap();
        }
        assert!(served(&replica).is_empty(), "nothing announced yet");
        replica.on_commit("t", "e1", 2);
        assert_eq!(served(&replica), vec![(1, "p1".into()), (2, "p2".into())]);
        replica.on_commit("t", "e0", 3);
        assert_eq!(
            served(&replica).len(),
            2,
            "another epoch's commit says nothing"
        );
        // Its owner went away and this node owns the topic now: all it holds is served.
        replica.promote_copies(|_| true);
        assert_eq!(served(&replica).len(), 3);
    }

    #[test]
    fn an_uncommitted_copy_that_failed_at_its_owner_gives_way_to_the_owners_event() {
        let replica = Broker::new(Retention::default());
        replica.store_replica(event(1, "a")).unwrap();
        replica.store_replica(event(2, "b")).unwrap();
        replica.store_replica(event(3, "b2")).unwrap();
        replica.on_commit("t", "e1", 1);
        // "b" failed at the owner (its replicas were cut off), which numbered "c" at 2.
        replica.store_replica(event(2, "c")).unwrap();
        replica.on_commit("t", "e1", 2);
        assert_eq!(served(&replica), vec![(1, "a".into()), (2, "c".into())]);
        assert!(
            replica
                .replay_candidates("t", &ResumeFrom::Earliest, ReplayPage::UNBOUNDED)
                .unwrap()[0]
                .last_seq
                == 2,
            "what followed the failed event went with it"
        );
        // The same event sent again changes nothing; a committed position sent with another
        // event is refused (its sender numbers from a stale copy), and changes nothing.
        replica.store_replica(event(2, "c")).unwrap();
        assert_eq!(
            replica.store_replica(event(1, "z")).unwrap_err(),
            ReplicaRefusal::CommittedOtherwise
        );
        assert_eq!(served(&replica), vec![(1, "a".into()), (2, "c".into())]);
    }

    #[test]
    fn the_owner_serves_only_what_its_replicas_stored() {
        let owner = Broker::new(Retention::default());
        let epoch = owner.install_topic("t", None);
        let (replica, _queues) = PeerLink::new("r", 1, 16);
        let Sequenced::Waiting(..) = owner.sequence("t", json("1"), &[replica], true) else {
            panic!("a replica to wait for");
        };
        assert!(served(&owner).is_empty(), "not stored on its replica yet");
        assert!(owner.take_commit_announcements().is_empty());
        owner.on_stored("r", "t", &epoch, 1);
        assert_eq!(served(&owner).len(), 1);
        let announced = owner.take_commit_announcements();
        assert_eq!(announced.len(), 1);
        assert_eq!((&*announced[0].1, announced[0].2), (&*epoch, 1));
        assert!(
            owner.take_commit_announcements().is_empty(),
            "once per move"
        );
    }
}
