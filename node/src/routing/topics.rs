//! Per-topic sequencing state on the node that owns (or holds a copy of) a topic.
//!
//! Each topic has an epoch and the last sequence number assigned in it. On the owner, an
//! event is *pending* from the moment it is sequenced until every replica has reported it
//! stored; pending events complete strictly in sequence order, which is when the owner fans
//! them out and answers the publisher. Plain data: the broker holds it under its shard locks
//! and passes in the peers to wait for.
//!
//! A replica that goes away before reporting an event stored never counts as having stored
//! it. The event keeps its position and waits until the replicas of the topic's placement as
//! it is now (the next node in the ranking takes the gone one's place) have stored it: a
//! single node going away (a crash, a graceful leave) never changes the topic's epoch, and a
//! position is never given to another event. Only if that cannot be done in time does the
//! event fail (never acknowledged, never fanned out) and the topic must be claimed again, in
//! a new epoch unless the cluster knows more of it, because the positions of the failed
//! events may meanwhile be numbered by others from a replica's copy.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use foldhash::fast::RandomState;

use crate::event::Event;

/// A new epoch name: creation time (hex ms) then a random part, so that "newer" can be told
/// by any node (see [`newer_epoch`]).
pub fn new_epoch(now_ms: i64, random: u32) -> Arc<str> {
    format!("{now_ms:x}-{random:08x}").into()
}

/// True when epoch `a` was created after epoch `b`. Epochs that do not carry a time compare
/// as text.
pub fn newer_epoch(a: &str, b: &str) -> bool {
    let time = |e: &str| {
        e.split_once('-')
            .and_then(|(t, _)| i64::from_str_radix(t, 16).ok())
    };
    match (time(a), time(b)) {
        (Some(x), Some(y)) if x != y => x > y,
        _ => a > b,
    }
}

/// An event waiting for replicas, and whoever waits for it.
#[derive(Debug)]
struct Pending<W> {
    event: Arc<Event>,
    /// Replicas asked to store it, over links still up (a replica that went away is taken
    /// out): whom a new placement's replicas are compared against.
    asked: Vec<Arc<str>>,
    /// Replicas asked that have not confirmed it yet.
    missing: Vec<Arc<str>>,
    /// Not yet synced to this node's own disk (`fsync = "always"`): it completes only once
    /// it is ([`TopicTable::synced_locally`]), as if this node were one more replica.
    unsynced: bool,
    /// A replica went away before confirming it: it completes only once the replicas of the
    /// placement as it is now have been asked too (see [`TopicTable::ask_again`]), never on
    /// fewer copies than a new event would get.
    orphaned: bool,
    waiter: Option<W>,
}

#[derive(Debug)]
pub struct TopicState<W> {
    pub name: Arc<str>,
    pub epoch: Arc<str>,
    pub last_seq: u64,
    /// Handed to a new owner: this node must not sequence it until it claims it again.
    pub moved: bool,
    /// On a copy (`moved`): how far the owner said the topic is committed (stored on every
    /// replica, so possibly acknowledged and fanned out) in `epoch`. What a copy holds
    /// beyond may be an event that failed at its owner: it is not served.
    announced_committed: u64,
    /// Events of this epoch failed here (a replica went away and no replica of the
    /// placement could be asked in their place, or this node gave its topics up): whether
    /// they are stored elsewhere is unknown, so this node must not number after them in this
    /// epoch unless another node knows the epoch further.
    renew_epoch: bool,
    pending: VecDeque<Pending<W>>,
    /// Replicas (name, generation) that have been sent the topic's whole history.
    synced: Vec<(Arc<str>, u64)>,
    /// When this node last sequenced or stored a new position of the topic, or took its
    /// state (ms on the caller's clock, monotonic on a node): a topic quiet for long enough
    /// is forgotten.
    last_active_ms: i64,
}

impl<W> TopicState<W> {
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The last `seq` of `epoch` known committed here: on the sequencing owner, every event
    /// before the first still waiting for replicas; on a copy, what the owner announced.
    pub fn committed(&self) -> u64 {
        if self.moved {
            return self.announced_committed.min(self.last_seq);
        }
        self.pending
            .front()
            .map_or(self.last_seq, |p| p.event.seq.saturating_sub(1))
    }
}

/// A completed event (stored on every replica asked), with its waiter.
pub type Completed<W> = (Arc<Event>, Option<W>);

/// What a peer's departure settled: events every other replica had stored complete; events
/// that waited for the departed peer are *orphaned*: they keep their positions and wait (with
/// every event sequenced after them, which must not overtake them) until the replicas of the
/// placement as it is now are asked to store them ([`TopicTable::ask_again`]), or fail
/// ([`TopicTable::fail_orphans`]) when that cannot be done.
#[derive(Debug)]
pub struct PeerGone<W> {
    pub completed: Vec<Completed<W>>,
    /// Topics with orphaned events.
    pub orphaned: Vec<Arc<str>>,
}

/// Orphaned events of a topic asked of the placement's replicas again: what to send to whom,
/// and what completed because the replicas asked had stored it already.
#[derive(Debug)]
pub struct AskedAgain<W> {
    pub send: Vec<(Arc<Event>, Vec<Arc<str>>)>,
    pub completed: Vec<Completed<W>>,
}

#[derive(Debug)]
pub struct TopicTable<W> {
    topics: HashMap<Arc<str>, TopicState<W>, RandomState>,
}

impl<W> Default for TopicTable<W> {
    fn default() -> Self {
        Self {
            topics: HashMap::default(),
        }
    }
}

impl<W> TopicTable<W> {
    pub fn get(&self, topic: &str) -> Option<&TopicState<W>> {
        self.topics.get(topic)
    }

    /// True when this node may sequence `topic` now (it has its state and has not handed it on).
    pub fn is_ready(&self, topic: &str) -> bool {
        self.topics.get(topic).is_some_and(|t| !t.moved)
    }

    /// Sets what is known of a topic: from a claim (owner) or from replication (copy).
    pub fn install(&mut self, topic: &str, epoch: Arc<str>, last_seq: u64, now_ms: i64) {
        match self.topics.get_mut(topic) {
            Some(state) => {
                state.epoch = epoch;
                state.last_seq = last_seq;
                state.moved = false;
                state.announced_committed = 0;
                state.renew_epoch = false;
                state.last_active_ms = state.last_active_ms.max(now_ms);
            }
            None => {
                let name: Arc<str> = topic.into();
                self.topics.insert(
                    name.clone(),
                    TopicState {
                        name,
                        epoch,
                        last_seq,
                        moved: false,
                        announced_committed: 0,
                        renew_epoch: false,
                        pending: VecDeque::new(),
                        synced: Vec::new(),
                        last_active_ms: now_ms,
                    },
                );
            }
        }
    }

    /// Assigns the next sequence number; `None` if the topic is not ready here.
    pub fn next(&mut self, topic: &str, now_ms: i64) -> Option<(Arc<str>, Arc<str>, u64)> {
        let state = self.topics.get_mut(topic).filter(|t| !t.moved)?;
        state.last_seq += 1;
        state.last_active_ms = state.last_active_ms.max(now_ms);
        Some((state.name.clone(), state.epoch.clone(), state.last_seq))
    }

    /// Of `replicas`, those that have not been sent the topic's history yet; they are
    /// counted as synced from now on.
    pub fn needs_sync(
        &mut self,
        topic: &str,
        replicas: &[(Arc<str>, u64)],
    ) -> Vec<(Arc<str>, u64)> {
        let Some(state) = self.topics.get_mut(topic) else {
            return Vec::new();
        };
        let fresh: Vec<(Arc<str>, u64)> = replicas
            .iter()
            .filter(|r| !state.synced.contains(r))
            .cloned()
            .collect();
        state.synced.extend(fresh.iter().cloned());
        fresh
    }

    /// Holds a sequenced event until `replicas` have stored it. With no replicas to wait
    /// for it completes at once — after any earlier pending event of the topic.
    pub fn hold(
        &mut self,
        event: Arc<Event>,
        replicas: Vec<Arc<str>>,
        waiter: Option<W>,
    ) -> Vec<Completed<W>> {
        self.hold_unsynced(event, replicas, waiter, false)
    }

    /// [`Self::hold`], for an event that also waits for this node's own disk when
    /// `unsynced` (see [`Self::synced_locally`]).
    pub fn hold_unsynced(
        &mut self,
        event: Arc<Event>,
        replicas: Vec<Arc<str>>,
        waiter: Option<W>,
        unsynced: bool,
    ) -> Vec<Completed<W>> {
        let Some(state) = self.topics.get_mut(&*event.topic) else {
            return vec![(event, waiter)];
        };
        state.pending.push_back(Pending {
            event,
            asked: replicas.clone(),
            missing: replicas,
            unsynced,
            orphaned: false,
            waiter,
        });
        Self::complete_front(state)
    }

    /// This node's disk holds `topic` up to `seq` of `epoch`: the events up to there no
    /// longer wait for it.
    pub fn synced_locally(&mut self, topic: &str, epoch: &str, seq: u64) -> Vec<Completed<W>> {
        let Some(state) = self.topics.get_mut(topic) else {
            return Vec::new();
        };
        for pending in Self::covered(state, epoch, seq) {
            pending.unsynced = false;
        }
        Self::complete_front(state)
    }

    /// A replica reports `topic` stored up to `seq` of `epoch`.
    pub fn stored(&mut self, peer: &str, topic: &str, epoch: &str, seq: u64) -> Vec<Completed<W>> {
        let Some(state) = self.topics.get_mut(topic) else {
            return Vec::new();
        };
        for pending in Self::covered(state, epoch, seq) {
            pending.missing.retain(|p| &**p != peer);
        }
        Self::complete_front(state)
    }

    /// The pending events of `epoch` up to `seq`. Pending events are in sequencing order and
    /// epochs only move forward, so the walk ends at the first event of this epoch past
    /// `seq`: a busy topic's backlog is not scanned whole for every acknowledgement.
    fn covered<'a>(
        state: &'a mut TopicState<W>,
        epoch: &'a str,
        seq: u64,
    ) -> impl Iterator<Item = &'a mut Pending<W>> {
        state
            .pending
            .iter_mut()
            .take_while(move |p| &*p.event.epoch != epoch || p.event.seq <= seq)
            .filter(move |p| &*p.event.epoch == epoch)
    }

    /// A replica is gone: nothing more will come from it, and what it did not confirm is
    /// not stored as far as this node knows. Events that waited for it are orphaned (see
    /// [`PeerGone`]): they stay pending, in order, until the placement's replicas are asked
    /// again. It is no longer counted as synced: if it comes back it gets the whole history
    /// again.
    ///
    /// Failing them instead, as this once did, made any replica's crash or graceful leave
    /// with an event in flight restart the topic in a new epoch (an `epoch_changed` gap for
    /// every subscriber), although nobody else could number those positions: the owner is
    /// still the owner, and the events keep their positions wherever they are stored.
    pub fn peer_gone(&mut self, peer: &str) -> PeerGone<W> {
        let mut gone = PeerGone {
            completed: Vec::new(),
            orphaned: Vec::new(),
        };
        for state in self.topics.values_mut() {
            state.synced.retain(|(name, _)| &**name != peer);
            let mut orphaned = false;
            for pending in &mut state.pending {
                pending.asked.retain(|a| &**a != peer);
                if let Some(at) = pending.missing.iter().position(|m| &**m == peer) {
                    pending.missing.swap_remove(at);
                    pending.orphaned = true;
                    orphaned = true;
                }
            }
            if orphaned {
                gone.orphaned.push(state.name.clone());
            }
            gone.completed.extend(Self::complete_front(state));
        }
        gone
    }

    /// Asks `replicas` (the replicas of `topic`'s placement now) to store its orphaned events:
    /// each one not asked yet is added to what the event waits for. Returns what to send to
    /// whom and what completed (the replicas asked had all stored it); nothing when no event
    /// of the topic is orphaned (any more: they failed meanwhile, say).
    pub fn ask_again(&mut self, topic: &str, replicas: &[Arc<str>]) -> AskedAgain<W> {
        let Some(state) = self.topics.get_mut(topic) else {
            return AskedAgain {
                send: Vec::new(),
                completed: Vec::new(),
            };
        };
        let mut send = Vec::new();
        for pending in state.pending.iter_mut().filter(|p| p.orphaned) {
            let fresh: Vec<Arc<str>> = replicas
                .iter()
                .filter(|r| !pending.asked.contains(r))
                .cloned()
                .collect();
            pending.asked.extend(fresh.iter().cloned());
            pending.missing.extend(fresh.iter().cloned());
            pending.orphaned = false;
            if !fresh.is_empty() {
                send.push((pending.event.clone(), fresh));
            }
        }
        AskedAgain {
            send,
            completed: Self::complete_front(state),
        }
    }

    /// True when an event of `topic` waits for the placement's replicas to be asked again.
    pub fn has_orphans(&self, topic: &str) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|t| t.pending.iter().any(|p| p.orphaned))
    }

    /// True when events of the topic's epoch failed here: a claim may continue the epoch only
    /// from a node that knows it further than this one; otherwise it starts a new epoch.
    pub fn must_renew_epoch(&self, topic: &str) -> bool {
        self.topics.get(topic).is_some_and(|t| t.renew_epoch)
    }

    /// Gives up on `topic`'s orphaned events (no replica of the placement could be asked in
    /// time): they fail, with every later pending event of the topic, and the topic must be
    /// claimed again (see [`Self::must_renew_epoch`]). Returns the failed events.
    pub fn fail_orphans(&mut self, topic: &str) -> Vec<Completed<W>> {
        let Some(state) = self.topics.get_mut(topic) else {
            return Vec::new();
        };
        let Some(first) = state.pending.iter().position(|p| p.orphaned) else {
            return Vec::new();
        };
        state.announced_committed = state.committed();
        state.moved = true;
        state.renew_epoch = true;
        state
            .pending
            .drain(first..)
            .map(|p| (p.event, p.waiter))
            .collect()
    }

    /// This node could not store the event it just numbered `seq` for `topic`: the position
    /// goes back, to be numbered again by the next publish. (It never left this node, and
    /// a durable store that failed is rewritten from memory before it takes writes again.)
    pub fn give_back(&mut self, topic: &str, seq: u64) {
        if let Some(state) = self.topics.get_mut(topic)
            && !state.moved
            && state.last_seq == seq
        {
            state.last_seq -= 1;
        }
    }

    /// True when some of `replicas` have not been sent the topic's history yet (see
    /// [`Self::needs_sync`], which also counts them as sent).
    pub fn has_unsynced(&self, topic: &str, replicas: &[(Arc<str>, u64)]) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|state| replicas.iter().any(|r| !state.synced.contains(r)))
    }

    /// Fails every event of `topic` waiting for replicas (a replica no longer recognises
    /// this node as the owner): the topic must be claimed again, in a new epoch unless
    /// another node knows it further. Returns the failed events.
    pub fn fail_pending(&mut self, topic: &str) -> Vec<Completed<W>> {
        let Some(state) = self.topics.get_mut(topic) else {
            return Vec::new();
        };
        if !state.moved {
            state.announced_committed = state.committed();
        }
        state.moved = true;
        if state.pending.is_empty() {
            return Vec::new();
        }
        state.renew_epoch = true;
        state
            .pending
            .drain(..)
            .map(|p| (p.event, p.waiter))
            .collect()
    }

    fn complete_front(state: &mut TopicState<W>) -> Vec<Completed<W>> {
        let mut done = Vec::new();
        while state
            .pending
            .front()
            .is_some_and(|p| p.missing.is_empty() && !p.unsynced && !p.orphaned)
        {
            if let Some(p) = state.pending.pop_front() {
                done.push((p.event, p.waiter));
            }
        }
        done
    }

    /// Hands the topic on: this node stops sequencing it. Refused while events are pending,
    /// so the new owner's first event cannot overtake them.
    pub fn hand_over(&mut self, topic: &str) -> Result<Option<(Arc<str>, u64)>, HandOverRefused> {
        let Some(state) = self.topics.get_mut(topic) else {
            return Ok(None);
        };
        if state.has_pending() {
            return Err(HandOverRefused);
        }
        // Nothing is pending: everything it sequenced is committed.
        state.announced_committed = state.last_seq;
        state.moved = true;
        Ok(Some((state.epoch.clone(), state.last_seq)))
    }

    /// Takes a whole copy of a topic from its owner (on a replica), unless this node is
    /// sequencing the topic itself.
    pub fn install_copy(
        &mut self,
        topic: &str,
        epoch: Arc<str>,
        last_seq: u64,
        now_ms: i64,
    ) -> bool {
        if self.is_ready(topic) {
            return false;
        }
        self.install(topic, epoch, last_seq, now_ms);
        if let Some(state) = self.topics.get_mut(topic) {
            state.moved = true;
        }
        true
    }

    /// Takes up a topic as a durable store kept it across a restart: a copy (claimed before
    /// it is sequenced), committed as far as the store recorded, last active at
    /// `last_active_ms` (on the caller's clock; may be before it started). `cut`: the store
    /// lost events at the end of it, which others may have seen (see
    /// [`Self::must_renew_epoch`]).
    pub fn restore_copy(
        &mut self,
        topic: &str,
        epoch: Arc<str>,
        last_seq: u64,
        committed: u64,
        last_active_ms: i64,
        cut: bool,
    ) {
        self.install(topic, epoch, last_seq, last_active_ms);
        if let Some(state) = self.topics.get_mut(topic) {
            state.moved = true;
            state.announced_committed = committed;
            state.last_active_ms = last_active_ms;
            state.renew_epoch = cut;
        }
    }

    /// The owner announced `topic` committed up to `seq` of `epoch` (on a copy).
    pub fn committed_to(&mut self, topic: &str, epoch: &str, seq: u64) {
        if let Some(state) = self.topics.get_mut(topic)
            && state.moved
            && *state.epoch == *epoch
        {
            state.announced_committed = state.announced_committed.max(seq);
        }
    }

    /// The copies (`moved`) this table holds.
    pub fn copies(&self) -> impl Iterator<Item = &Arc<str>> {
        self.topics
            .iter()
            .filter(|(_, t)| t.moved)
            .map(|(name, _)| name)
    }

    /// This node is `topic`'s owner now (its owner went away, and this node sees a majority):
    /// whatever its copy holds is what it will sequence after once it claims the topic, so
    /// it is served as committed already.
    pub fn promote_copy(&mut self, topic: &str) {
        if let Some(state) = self.topics.get_mut(topic)
            && state.moved
        {
            state.announced_committed = state.last_seq;
        }
    }

    /// Drops a copy's positions from `seq` on (an uncommitted event there turned out to
    /// have failed at its owner); they are taken again from the owner.
    pub fn truncate_copy(&mut self, topic: &str, seq: u64) {
        if let Some(state) = self.topics.get_mut(topic)
            && state.moved
        {
            state.last_seq = state.last_seq.min(seq.saturating_sub(1));
        }
    }

    /// Records a replicated event's position (on a replica).
    pub fn replicated(&mut self, event: &Event, now_ms: i64) {
        match self.topics.get_mut(&*event.topic) {
            // An old copy teaches nothing, and must not keep stale knowledge alive longer
            // than the newer knowledge elsewhere (see `forget_idle`).
            Some(state) if *state.epoch == *event.epoch && event.seq <= state.last_seq => {}
            Some(state)
                if *state.epoch == *event.epoch || newer_epoch(&event.epoch, &state.epoch) =>
            {
                if *state.epoch != *event.epoch {
                    state.announced_committed = 0;
                }
                state.epoch = event.epoch.clone();
                state.last_seq = event.seq;
                state.last_active_ms = state.last_active_ms.max(now_ms);
            }
            Some(_) => {}
            None => {
                self.install(&event.topic, event.epoch.clone(), event.seq, now_ms);
                if let Some(state) = self.topics.get_mut(&*event.topic) {
                    // A copy: the owner sequences; this node only keeps it.
                    state.moved = true;
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// Marks every topic as handed on: it must be claimed again before it is sequenced.
    /// Events still waiting for replicas fail: the others may already have numbered their
    /// positions with other events, and a `Stored` arriving later (from a replica this node
    /// re-synced after claiming the topic again) must not complete them. A topic that lost
    /// some must start a new epoch unless another node knows it further (see
    /// [`Self::must_renew_epoch`]).
    pub fn relinquish_all(&mut self) -> Vec<Completed<W>> {
        let mut failed = Vec::new();
        for state in self.topics.values_mut() {
            if !state.moved {
                state.announced_committed = state.committed();
            }
            state.moved = true;
            if state.has_pending() {
                failed.extend(state.pending.drain(..).map(|p| (p.event, p.waiter)));
                state.renew_epoch = true;
            }
        }
        failed
    }

    /// True when an event of any topic waits for replicas.
    pub fn has_pending(&self) -> bool {
        self.topics.values().any(TopicState::has_pending)
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.topics.keys()
    }

    /// Forgets every topic with no event waiting for replicas for which `idle_long_enough`,
    /// given its name and when it was last active, says so; returns their names.
    ///
    /// A forgotten topic's next owner finds nothing here, so unless another node still knows
    /// it, it starts a new epoch: a cursor of the old one then gets `epoch_changed`, never a
    /// silent restart. A topic whose events failed here goes too: a node keeps no stale
    /// state that a claim could continue after the newer state elsewhere was forgotten (its
    /// last activity is older than theirs, so it is forgotten no later).
    pub fn forget_idle(
        &mut self,
        mut idle_long_enough: impl FnMut(&str, i64) -> bool,
    ) -> Vec<Arc<str>> {
        let mut forgotten = Vec::new();
        self.topics.retain(|name, state| {
            let forget = !state.has_pending() && idle_long_enough(name, state.last_active_ms);
            if forget {
                forgotten.push(name.clone());
            }
            !forget
        });
        if forgotten.len() > self.topics.len() {
            // A table that shrank a lot gives its memory back; one that holds steady keeps
            // its room for the next topics.
            self.topics.shrink_to_fit();
        }
        forgotten
    }

    /// True when `topic` is known, has no event waiting for replicas, and
    /// `idle_long_enough` says it has been quiet long enough to be forgotten.
    pub fn is_idle(&self, topic: &str, idle_long_enough: impl FnOnce(&str, i64) -> bool) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|t| !t.has_pending() && idle_long_enough(topic, t.last_active_ms))
    }

    /// Forgets `topic` (see [`Self::forget_idle`]).
    pub fn remove(&mut self, topic: &str) -> bool {
        self.topics.remove(topic).is_some()
    }
}

/// Events are still waiting for replicas: ask again shortly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandOverRefused;

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::event::Payload;

    fn sequence(table: &mut TopicTable<u64>, topic: &str) -> Arc<Event> {
        let (name, epoch, seq) = table.next(topic, 0).unwrap();
        Arc::new(Event::new(
            name,
            epoch,
            seq,
            0,
            Payload::Json(Bytes::from_static(b"0")),
        ))
    }

    fn seqs(done: &[Completed<u64>]) -> Vec<u64> {
        done.iter().map(|(e, _)| e.seq).collect()
    }

    #[test]
    fn epochs_order_by_creation_time() {
        let old = new_epoch(1000, 7);
        let new = new_epoch(2000, 1);
        assert!(newer_epoch(&new, &old));
        assert!(!newer_epoch(&old, &new));
        assert!(!newer_epoch(&old, &old));
    }

    #[test]
    fn topics_are_sequenced_only_once_installed() {
        let mut table = TopicTable::<u64>::default();
        assert!(table.next("t", 0).is_none());
        table.install("t", "e".into(), 41, 0);
        assert_eq!(table.next("t", 0).map(|(_, _, s)| s), Some(42));
    }

    #[test]
    fn an_acknowledgement_covers_only_the_events_up_to_its_sequence_number() {
        let mut table = TopicTable::<u64>::default();
        table.install("t", "e".into(), 0, 0);
        let r: Arc<str> = "replica".into();
        for waiter in 1..=5 {
            let event = sequence(&mut table, "t");
            assert!(table.hold(event, vec![r.clone()], Some(waiter)).is_empty());
        }
        assert_eq!(seqs(&table.stored("replica", "t", "e", 3)), vec![1, 2, 3]);
        assert!(table.stored("replica", "t", "other-epoch", 5).is_empty());
        assert_eq!(seqs(&table.stored("replica", "t", "e", 5)), vec![4, 5]);
    }

    #[test]
    fn an_event_waiting_for_its_own_disk_completes_once_synced_and_stored() {
        let mut table = TopicTable::<u64>::default();
        table.install("t", "e".into(), 0, 0);
        let r: Arc<str> = "replica".into();
        let e1 = sequence(&mut table, "t");
        assert!(
            table
                .hold_unsynced(e1, vec![r.clone()], Some(1), true)
                .is_empty()
        );
        let e2 = sequence(&mut table, "t");
        assert!(
            table
                .hold_unsynced(e2, Vec::new(), Some(2), true)
                .is_empty()
        );
        assert!(
            table.stored("replica", "t", "e", 1).is_empty(),
            "stored on the replica, not synced here"
        );
        assert!(
            table.synced_locally("t", "other", 2).is_empty(),
            "another epoch's sync says nothing"
        );
        assert_eq!(seqs(&table.synced_locally("t", "e", 1)), vec![1]);
        assert_eq!(seqs(&table.synced_locally("t", "e", 2)), vec![2]);
    }

    #[test]
    fn pending_events_complete_in_order_when_every_replica_stored_them() {
        let mut table = TopicTable::<u64>::default();
        table.install("t", "e".into(), 0, 0);
        let r: Arc<str> = "replica".into();
        let e1 = sequence(&mut table, "t");
        assert!(table.hold(e1, vec![r.clone()], Some(1)).is_empty());
        let e2 = sequence(&mut table, "t");
        assert!(table.hold(e2, vec![r.clone()], Some(2)).is_empty());
        // An ack for 2 alone completes nothing: acks are cumulative and 1 comes first...
        let done = table.stored("replica", "t", "e", 2);
        assert_eq!(
            seqs(&done),
            vec![1, 2],
            "cumulative: stored up to 2 covers 1"
        );
        let e3 = sequence(&mut table, "t");
        assert!(
            table
                .hold(e3, vec![r.clone(), "other".into()], Some(3))
                .is_empty()
        );
        assert!(
            table.stored("replica", "t", "e", 3).is_empty(),
            "still missing `other`"
        );
        assert_eq!(seqs(&table.stored("other", "t", "e", 3)), vec![3]);
        let e4 = sequence(&mut table, "t");
        assert_eq!(seqs(&table.hold(e4, Vec::new(), None)), vec![4]);
    }

    #[test]
    fn a_pending_event_whose_replica_is_gone_waits_for_the_replica_that_takes_its_place() {
        let mut table = TopicTable::<u64>::default();
        table.install("t", "e".into(), 0, 0);
        let e1 = sequence(&mut table, "t");
        assert!(table.hold(e1, vec!["replica".into()], Some(1)).is_empty());
        let e2 = sequence(&mut table, "t");
        assert!(table.hold(e2, vec!["replica".into()], Some(2)).is_empty());
        let gone = table.peer_gone("replica");
        assert!(
            gone.completed.is_empty(),
            "stored nowhere else: neither acknowledged nor fanned out"
        );
        assert_eq!(gone.orphaned, vec![Arc::<str>::from("t")]);
        assert!(table.has_orphans("t") && table.has_pending());
        assert!(
            table.stored("replica", "t", "e", 2).is_empty(),
            "a late confirmation from the gone replica changes nothing"
        );
        // The topic goes on in its epoch: the next event follows, behind the orphans.
        let e3 = sequence(&mut table, "t");
        assert_eq!(e3.seq, 3);
        assert!(table.hold(e3, vec!["next".into()], Some(3)).is_empty());
        assert!(!table.must_renew_epoch("t"));

        // The placement's replica now is asked for the orphans; they complete, in order,
        // once it has stored them.
        let again = table.ask_again("t", &["next".into()]);
        assert!(again.completed.is_empty());
        assert_eq!(
            again
                .send
                .iter()
                .map(|(e, to)| (e.seq, to.clone()))
                .collect::<Vec<_>>(),
            vec![(1, vec!["next".into()]), (2, vec!["next".into()])]
        );
        assert!(!table.has_orphans("t"));
        assert!(table.stored("next", "t", "e", 1).len() == 1);
        let done = table.stored("next", "t", "e", 3);
        assert_eq!(seqs(&done), vec![2, 3]);
        assert_eq!(
            done.iter().map(|(_, w)| *w).collect::<Vec<_>>(),
            vec![Some(2), Some(3)]
        );
        assert!(!table.has_pending() && table.is_ready("t"));
    }

    #[test]
    fn orphans_asked_of_replicas_that_stored_them_complete_at_once() {
        let mut table = TopicTable::<u64>::default();
        table.install("t", "e".into(), 0, 0);
        let e1 = sequence(&mut table, "t");
        assert!(
            table
                .hold(e1, vec!["a".into(), "b".into()], Some(1))
                .is_empty()
        );
        assert!(table.stored("a", "t", "e", 1).is_empty());
        let gone = table.peer_gone("b");
        assert!(
            gone.completed.is_empty(),
            "not until the placement is asked"
        );
        let again = table.ask_again("t", &["a".into()]);
        assert!(again.send.is_empty(), "`a` was asked already");
        assert_eq!(seqs(&again.completed), vec![1]);
    }

    #[test]
    fn orphans_no_replica_could_store_fail_with_the_events_after_them() {
        let mut table = TopicTable::<u64>::default();
        table.install("t", "e".into(), 0, 0);
        table.install("u", "e".into(), 0, 0);
        let t1 = sequence(&mut table, "t");
        assert!(table.hold(t1, vec!["a".into()], Some(1)).is_empty());
        let t2 = sequence(&mut table, "t");
        assert!(
            table
                .hold(t2, vec!["a".into(), "b".into()], Some(2))
                .is_empty()
        );
        let t3 = sequence(&mut table, "t");
        assert!(table.hold(t3, vec!["a".into()], Some(3)).is_empty());
        let u1 = sequence(&mut table, "u");
        assert!(table.hold(u1, vec!["a".into()], None).is_empty());
        let gone = table.peer_gone("b");
        assert!(gone.completed.is_empty());
        assert_eq!(
            gone.orphaned,
            vec![Arc::<str>::from("t")],
            "1 did not wait for `b`"
        );
        let failed = table.fail_orphans("t");
        assert_eq!(seqs(&failed), vec![2, 3]);
        assert_eq!(
            failed.iter().map(|(_, w)| *w).collect::<Vec<_>>(),
            vec![Some(2), Some(3)],
            "the waiters are handed back to be told"
        );
        assert!(
            table.next("t", 0).is_none(),
            "another node may number positions 2 and 3 of this epoch meanwhile"
        );
        assert!(table.must_renew_epoch("t") && !table.must_renew_epoch("u"));
        assert!(table.is_ready("u"));
        assert_eq!(seqs(&table.stored("a", "t", "e", 3)), vec![1]);
        assert_eq!(seqs(&table.stored("a", "u", "e", 1)), vec![1]);
        table.install("t", "e2".into(), 0, 0);
        assert!(table.is_ready("t") && !table.must_renew_epoch("t"));
    }

    #[test]
    fn hand_over_waits_for_pending_events_then_stops_sequencing() {
        let mut table = TopicTable::<u64>::default();
        table.install("t", "e".into(), 5, 0);
        let e = sequence(&mut table, "t");
        table.hold(e, vec!["r".into()], None);
        assert_eq!(table.hand_over("t"), Err(HandOverRefused));
        table.stored("r", "t", "e", 6);
        assert_eq!(table.hand_over("t"), Ok(Some(("e".into(), 6))));
        assert!(
            table.next("t", 0).is_none(),
            "moved: no longer sequenced here"
        );
        table.install("t", "e".into(), 9, 0);
        assert!(table.is_ready("t"), "claimed back");
    }

    #[test]
    fn only_quiet_topics_with_nothing_pending_are_forgotten() {
        let mut table = TopicTable::<u64>::default();
        table.install("quiet", "e".into(), 3, 1_000);
        table.install("busy", "e".into(), 0, 1_000);
        table.next("busy", 5_000);
        table.install("pending", "e".into(), 0, 1_000);
        let event = sequence(&mut table, "pending");
        assert!(table.hold(event, vec!["r".into()], None).is_empty());
        table.install("failed", "e".into(), 0, 1_000);
        let event = sequence(&mut table, "failed");
        assert!(table.hold(event, vec!["gone".into()], None).is_empty());
        let _ = table.peer_gone("gone");
        let _ = table.fail_orphans("failed");
        table.install("kept", "e".into(), 0, 1_000);
        let idle = |name: &str, last_active: i64| name != "kept" && last_active <= 2_000;

        assert!(table.is_idle("quiet", idle) && !table.is_idle("pending", idle));
        let mut forgotten = table.forget_idle(idle);
        forgotten.sort();
        assert_eq!(forgotten, vec![Arc::<str>::from("failed"), "quiet".into()]);
        assert!(table.get("quiet").is_none() && table.next("quiet", 9_000).is_none());
        assert!(
            !table.must_renew_epoch("failed"),
            "no stale position is kept for a claim to continue"
        );
        assert!(table.get("busy").is_some(), "active after the idle mark");
        assert!(
            table.get("pending").is_some(),
            "an event still waits for its replica"
        );
        assert!(table.get("kept").is_some(), "the caller keeps it");

        // Once stored, the pending topic goes too.
        table.stored("r", "pending", "e", 1);
        assert_eq!(table.forget_idle(idle), vec![Arc::<str>::from("pending")]);
        assert!(table.remove("kept") && !table.remove("kept"));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_stored_copy_counts_as_activity() {
        let mut table = TopicTable::<u64>::default();
        let event = Event::new(
            "t".into(),
            "e".into(),
            1,
            0,
            Payload::Json(Bytes::from_static(b"0")),
        );
        table.replicated(&event, 1_000);
        let next = Event::new(
            "t".into(),
            "e".into(),
            2,
            0,
            Payload::Json(Bytes::from_static(b"0")),
        );
        table.replicated(&next, 5_000);
        assert!(table.forget_idle(|_, last| last <= 2_000).is_empty());
        assert_eq!(table.forget_idle(|_, last| last <= 5_000).len(), 1);
        assert!(table.is_empty());
    }

    #[test]
    fn replicas_track_the_newest_position() {
        let mut table = TopicTable::<u64>::default();
        let event = |epoch: &str, seq| {
            Event::new(
                "t".into(),
                epoch.into(),
                seq,
                0,
                Payload::Json(Bytes::from_static(b"0")),
            )
        };
        let old = new_epoch(1, 1);
        let new = new_epoch(2, 1);
        table.replicated(&event(&old, 3), 0);
        assert!(!table.is_ready("t"), "a copy is not sequenced here");
        table.replicated(&event(&old, 4), 0);
        table.replicated(&event(&old, 2), 0);
        assert_eq!(table.get("t").unwrap().last_seq, 4);
        table.replicated(&event(&new, 1), 0);
        assert_eq!(
            (
                &*table.get("t").unwrap().epoch,
                table.get("t").unwrap().last_seq
            ),
            (&*new, 1)
        );
        table.replicated(&event(&old, 9), 0);
        assert_eq!(
            &*table.get("t").unwrap().epoch,
            &*new,
            "an older epoch does not win"
        );
    }
}
