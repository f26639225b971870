//! Sequencing on a topic's owner: numbering publishes, holding them until their replicas
//! have stored them, completing them (fan-out, the publisher told), and taking, handing over
//! and copying topics between nodes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::cluster::link::{PeerLink, PeerMessage};
use crate::event::{Event, Payload};
use crate::routing::dedupe::{Position, PublishId, RememberedId, Seen};
use crate::routing::topics::{Completed, HandOverRefused, new_epoch, newer_epoch};

use super::{Broker, DuplicateWaiter, PlacedOnPeer, TopicShard, now_ms};
use crate::storage::{StorageError, SyncTicket};

/// Where an accepted publish landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub epoch: Arc<str>,
    pub seq: u64,
}

/// Kept with a sequenced event until it is stored on its replicas (and fanned out), or fails:
/// who to tell, and the share of the publish buffer it holds meanwhile.
#[derive(Debug)]
pub struct StoredSignal {
    notify: Option<tokio::sync::oneshot::Sender<()>>,
    /// Kept while the event waits for its replicas, then while it waits in the queues
    /// towards the peers it is forwarded to: a stalled replica or a slow peer slows
    /// publishers instead of growing this node's backlog without bound (or losing events).
    permit: Option<PublishPermit>,
}

/// A share of the node's publish buffer (`publish_buffer_bytes`), in bytes: a publish holds
/// it from the moment its connection hands it over until it leaves the node's queues (is
/// written towards its owner, or, here as its owner, is stored on its replicas and written
/// to every peer it is forwarded to).
#[derive(Debug)]
pub struct PublishPermit(pub tokio::sync::OwnedSemaphorePermit);

/// Why a replica did not store an event its sender sequenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaRefusal {
    #[error("this node holds a newer epoch of the topic")]
    NewerEpoch,
    #[error("this node sequences the topic itself")]
    SequencesItself,
    #[error("this node holds another event committed at that position")]
    CommittedOtherwise,
    /// Its history could not take the event (the cause is logged where it happened).
    #[error("this node could not store the event")]
    StorageFailed,
}

/// The outcome of sequencing an event on its owner.
#[derive(Debug)]
pub enum Sequenced {
    /// Nothing to wait for: stored everywhere it needs to be and fanned out, or sequenced
    /// for a publisher that asked not to know when it is stored.
    Done(Receipt),
    /// Sequenced; the receiver resolves once the replicas have stored it.
    Waiting(Receipt, tokio::sync::oneshot::Receiver<()>),
    /// This node does not hold the topic's state (never claimed, or handed on).
    NotReady,
    /// The event could not be stored here: its position was given back, nothing was sent
    /// to a replica or fanned out, and no publish id was remembered. The publisher is
    /// answered `unavailable` and may publish it again.
    Failed(StorageError),
}

/// What a node knows of a topic, for a new owner claiming it.
#[derive(Debug, Clone)]
pub struct TopicSnapshot {
    pub epoch: Arc<str>,
    pub last_seq: u64,
    pub events: Vec<Arc<Event>>,
    /// The publish ids remembered for the topic (idempotent publishing).
    pub ids: Vec<RememberedId>,
}

impl Broker {
    /// Sequences `payload` on `topic` (a validated publish topic, owned by this node), sends
    /// copies to `replicas`, and once they have stored it — at once without replicas — queues
    /// it to every matching subscription, peer, and one member of every matching queue group.
    /// With `confirm`, the outcome says when the replicas have stored it; without, nobody
    /// waits for that (a publish without an answer) and the outcome is `Done` at once.
    pub fn sequence(
        &self,
        topic: &str,
        payload: Payload,
        replicas: &[Arc<PeerLink>],
        confirm: bool,
    ) -> Sequenced {
        self.sequence_holding(topic, payload, None, replicas, confirm, None)
    }

    /// [`sequence`](Self::sequence) for a publish with idempotency key `id`, keeping
    /// `permit` until the event is stored everywhere (or fails). A publish whose `id` is
    /// remembered for the topic creates no event: it gets the first one's position, at once
    /// when that one is stored, else once it is (it fails with it).
    pub fn sequence_holding(
        &self,
        topic: &str,
        payload: Payload,
        id: Option<PublishId>,
        replicas: &[Arc<PeerLink>],
        confirm: bool,
        permit: Option<PublishPermit>,
    ) -> Sequenced {
        let mut shard = self.shard(topic).lock();
        let clock = self.clock_ms();
        if let Some(id) = &id
            && shard.topics.is_ready(topic)
            && let Some(seen) = shard.dedupe.seen(topic, id, clock)
        {
            self.stats
                .publish_duplicates
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                topic,
                id = id.wire(),
                ?seen,
                "publish sent again; no new event"
            );
            return match seen {
                Seen::Stored(position) => Sequenced::Done(receipt(position)),
                Seen::Pending(position) if !confirm => Sequenced::Done(receipt(position)),
                Seen::Pending(position) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let waiter = DuplicateWaiter {
                        stored: tx,
                        _permit: permit,
                    };
                    match shard.dedupe.wait(topic, id, waiter) {
                        Ok(()) => Sequenced::Waiting(receipt(position), rx),
                        Err(_) => Sequenced::Done(receipt(position)),
                    }
                }
            };
        }
        if !shard.topics.is_ready(topic) {
            return Sequenced::NotReady;
        }
        if let Err(error) = shard.history.writable() {
            // The store refuses writes until it is reopened: no position is taken for an
            // event that could not be kept.
            self.stats.events_not_stored.fetch_add(1, Ordering::Relaxed);
            return Sequenced::Failed(error);
        }
        let Some((name, epoch, seq)) = shard.topics.next(topic, clock) else {
            return Sequenced::NotReady;
        };
        let now = now_ms();
        let event =
            Arc::new(Event::new(name, epoch.clone(), seq, now, payload).with_publish_id(id));
        // What a new replica gets is what was retained before this event (it gets this one
        // as a `Replicate` after), so it is read before the append.
        let ids: Vec<(Arc<str>, u64)> = replicas
            .iter()
            .map(|r| (r.name.clone(), r.generation))
            .collect();
        let needs_history = shard.topics.has_unsynced(topic, &ids);
        let retained = needs_history.then(|| shard.history.earliest(topic).events);
        // Stored here first: an event this node cannot keep is never sent, fanned out or
        // acknowledged.
        if let Err(error) = shard.history.append(event.clone(), now) {
            // Nothing of the event left this node: its position goes back, and the events
            // before it (stored) go on. A write that reached the disk in part is no danger:
            // a durable store that failed refuses writes (`writable`) until it is reopened
            // and rewritten from memory, which does not hold this event.
            self.stats.events_not_stored.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic, seq, %error, "could not store a sequenced event; the publish is refused");
            Self::forget_failed(&mut shard, &event);
            shard.topics.give_back(topic, seq);
            return Sequenced::Failed(error);
        }
        if let Some(id) = &event.publish_id {
            let position = Position {
                epoch: epoch.clone(),
                seq,
            };
            shard
                .dedupe
                .remember_pending(&event.topic, id.clone(), position, clock);
        }
        tracing::trace!(topic, seq, replicas = replicas.len(), "sequenced");
        // A replica new to this topic first gets everything retained so far, so that it can
        // serve resumes and take over with the whole history.
        if let Some(retained) = retained {
            let fresh = shard.topics.needs_sync(topic, &ids);
            for replica in replicas
                .iter()
                .filter(|r| fresh.contains(&(r.name.clone(), r.generation)))
            {
                replica.send_control(PeerMessage::SyncTopic {
                    topic: event.topic.clone(),
                    epoch: epoch.clone(),
                    last_seq: seq - 1,
                    events: retained.clone(),
                    ids: shard.dedupe.export(topic, clock),
                });
            }
        }
        self.stats.events_published.fetch_add(1, Ordering::Relaxed);
        for replica in replicas {
            replica.send_control(PeerMessage::Replicate(event.clone()));
        }
        // With `fsync = "always"` the event also waits for this node's disk (group commit,
        // see `syncing.rs`).
        let sync = shard.history.sync_ticket();
        let receipt = Receipt { epoch, seq };
        let (notify, stored) = if (replicas.is_empty() && sync.is_none()) || !confirm {
            (None, None)
        } else {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Some(tx), Some(rx))
        };
        let signal =
            (notify.is_some() || permit.is_some()).then_some(StoredSignal { notify, permit });
        let waiting_for = replicas.iter().map(|r| r.name.clone()).collect();
        let synced_topic = event.topic.clone();
        let done = shard
            .topics
            .hold_unsynced(event, waiting_for, signal, sync.is_some());
        self.complete(&mut shard, done);
        drop(shard);
        if let Some(ticket) = sync {
            let after = super::AfterSync::Owner {
                topic: synced_topic,
                epoch: receipt.epoch.clone(),
                seq,
            };
            self.after_sync(ticket, after);
        }
        match stored {
            None => Sequenced::Done(receipt),
            Some(rx) => Sequenced::Waiting(receipt, rx),
        }
    }

    /// Single-node convenience for tests: claims the topic if needed (a fresh epoch) and
    /// sequences without replicas.
    #[cfg(test)]
    pub fn publish(&self, topic: &str, payload: Payload) -> Receipt {
        if !self.is_ready(topic) {
            self.install_topic(topic, None);
        }
        match self.sequence(topic, payload, &[], true) {
            Sequenced::Done(receipt) | Sequenced::Waiting(receipt, _) => receipt,
            Sequenced::NotReady => unreachable!("installed just above"),
            Sequenced::Failed(error) => panic!("the test's history refused the event: {error}"),
        }
    }

    /// Fans out events whose replicas have all stored them, in order, and tells their
    /// publishers (and those that sent the same publish again meanwhile). Called with the
    /// topic's shard locked, which keeps the order.
    pub(super) fn complete(&self, shard: &mut TopicShard, done: Vec<Completed<StoredSignal>>) {
        for (event, signal) in done {
            if !shard.commit_moved.contains(&event.topic) {
                shard.commit_moved.insert(event.topic.clone());
            }
            tracing::trace!(topic = %event.topic, seq = event.seq, "stored; fanning out");
            let (notify, hold) = signal.map_or((None, None), |s| (s.notify, s.permit));
            let deliveries = self.fan_out(&event, hold);
            self.stats.fanout.observe(deliveries);
            if let Some(tx) = notify {
                let _ = tx.send(());
            }
            if let Some(id) = &event.publish_id {
                for waiter in shard.dedupe.stored(&event.topic, id) {
                    let _ = waiter.stored.send(());
                }
            }
        }
    }

    /// An event that failed (never stored on its replicas): its id is forgotten, so that
    /// the publish may be sent again, and the publishes of the same id waiting with it fail.
    pub(super) fn forget_failed(shard: &mut TopicShard, event: &Event) {
        shard
            .history
            .forget_from(&event.topic, &event.epoch, event.seq);
        if let Some(id) = &event.publish_id {
            let position = Position {
                epoch: event.epoch.clone(),
                seq: event.seq,
            };
            drop(shard.dedupe.failed(&event.topic, id, &position));
        }
    }

    /// Remembers publish ids another node knew for `topic` (a claim's answers).
    pub fn remember_ids(&self, topic: &str, ids: Vec<RememberedId>) {
        if ids.is_empty() {
            return;
        }
        let mut shard = self.shard(topic).lock();
        let clock = self.clock_ms();
        shard.dedupe.import(&Arc::from(topic), ids, clock);
    }

    /// A replica reports `topic` stored up to `seq` of `epoch`.
    pub fn on_stored(&self, peer: &str, topic: &str, epoch: &str, seq: u64) {
        let mut shard = self.shard(topic).lock();
        let done = shard.topics.stored(peer, topic, epoch, seq);
        self.complete(&mut shard, done);
    }

    /// A peer is gone: no replica acknowledgement will come from it, and the queue-group
    /// events placed on it and not yet acknowledged go to other members. Returns the topics
    /// with events it had not confirmed: they wait, keeping their positions, until the
    /// replicas of the placement as it is now are asked to store them
    /// ([`Self::ask_replicas_again`]), or fail ([`Self::fail_orphans`]).
    pub fn on_peer_gone(&self, peer: &str) -> Vec<Arc<str>> {
        let mut orphaned = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let gone = shard.topics.peer_gone(peer);
            self.complete(&mut shard, gone.completed);
            orphaned.extend(gone.orphaned);
        }
        let placed_there: Vec<PlacedOnPeer> = {
            let mut placed = self.placed_on_peers.lock();
            let tokens: Vec<u64> = placed
                .iter()
                .filter(|(_, p)| &*p.peer == peer)
                .map(|(t, _)| *t)
                .collect();
            tokens.iter().filter_map(|t| placed.remove(t)).collect()
        };
        for placed in placed_there {
            self.place_again(&placed.event, &placed.interest, Some(peer), placed.bounces);
        }
        orphaned
    }

    /// Asks `replicas` — the replicas of `topic`'s placement now, one of which took the
    /// place of a replica that went away — to store the topic's events that replica had not
    /// confirmed, as for a new event: a replica new to the topic first gets its whole
    /// history. The events complete once these replicas have stored them.
    pub fn ask_replicas_again(&self, topic: &str, replicas: &[Arc<PeerLink>]) {
        let mut shard = self.shard(topic).lock();
        let names: Vec<Arc<str>> = replicas.iter().map(|r| r.name.clone()).collect();
        let again = shard.topics.ask_again(topic, &names);
        let ids: Vec<(Arc<str>, u64)> = replicas
            .iter()
            .map(|r| (r.name.clone(), r.generation))
            .collect();
        let fresh = if again.send.is_empty() {
            Vec::new()
        } else {
            shard.topics.needs_sync(topic, &ids)
        };
        if let Some(state) = shard.topics.get(topic).filter(|_| !fresh.is_empty()) {
            let (name, epoch, last_seq) = (state.name.clone(), state.epoch.clone(), state.last_seq);
            // Everything sequenced so far, the orphaned events included (a replica that
            // already holds a position answers its `Replicate` without storing it twice).
            let retained = shard.history.earliest(topic).events;
            for replica in replicas
                .iter()
                .filter(|r| fresh.contains(&(r.name.clone(), r.generation)))
            {
                replica.send_control(PeerMessage::SyncTopic {
                    topic: name.clone(),
                    epoch: epoch.clone(),
                    last_seq,
                    events: retained.clone(),
                    ids: shard.dedupe.export(topic, self.clock_ms()),
                });
            }
        }
        for (event, to) in &again.send {
            tracing::debug!(topic, seq = event.seq, replicas = ?to, "asking the placement's replicas again");
            for replica in replicas.iter().filter(|r| to.contains(&r.name)) {
                replica.send_control(PeerMessage::Replicate(event.clone()));
            }
        }
        self.complete(&mut shard, again.completed);
    }

    /// True when events of `topic` wait for the placement's replicas to be asked again.
    pub fn has_orphans(&self, topic: &str) -> bool {
        self.shard(topic).lock().topics.has_orphans(topic)
    }

    /// Gives up on the events of `topic` whose replica went away, when no replica could be
    /// asked in its place in time: they fail (never fanned out nor replayed from here, their
    /// publishers answered `unavailable`) and the topic is claimed again, in a new epoch
    /// unless another node knows it further.
    pub fn fail_orphans(&self, topic: &str) {
        let mut shard = self.shard(topic).lock();
        for (event, _signal) in shard.topics.fail_orphans(topic) {
            tracing::debug!(topic = %event.topic, seq = event.seq, "no replica could store it in time; the event fails");
            Self::forget_failed(&mut shard, &event);
        }
    }

    /// Stores a copy of an event its owner sequenced; returns its position. A position this
    /// node already holds in that epoch (an owner asking again after another replica went
    /// away, when the whole history it sent first had it) is confirmed without storing it
    /// twice: appended again, it would restart the topic's history at that event.
    ///
    /// Refused when this node no longer recognises the sender as the topic's owner: it
    /// holds a newer epoch of the topic, or sequences the topic itself (the others declared
    /// the sender down meanwhile, and the topic moved). Stored, such an event would sit in
    /// this node's history at a position another owner numbers with another event.
    pub fn store_replica(&self, event: Arc<Event>) -> Result<Receipt, ReplicaRefusal> {
        let (receipt, sync) = self.store_replica_unsynced(event)?;
        match sync.map(SyncTicket::wait) {
            Some(Err(_)) => Err(ReplicaRefusal::StorageFailed),
            _ => Ok(receipt),
        }
    }

    /// [`Self::store_replica`], leaving the sync `fsync = "always"` wants to the caller:
    /// the copy may be confirmed once the ticket's sync is done (see `syncing.rs`).
    pub fn store_replica_unsynced(
        &self,
        event: Arc<Event>,
    ) -> Result<(Receipt, Option<SyncTicket>), ReplicaRefusal> {
        let mut shard = self.shard(&event.topic).lock();
        let now = now_ms();
        let receipt = Receipt {
            epoch: event.epoch.clone(),
            seq: event.seq,
        };
        if let Some(state) = shard.topics.get(&event.topic) {
            if state.epoch != event.epoch && newer_epoch(&state.epoch, &event.epoch) {
                return Err(ReplicaRefusal::NewerEpoch);
            }
            if !state.moved {
                return Err(ReplicaRefusal::SequencesItself);
            }
        }
        let held = shard
            .topics
            .get(&event.topic)
            .is_some_and(|t| t.epoch == event.epoch && t.last_seq >= event.seq);
        if held && Self::committed_otherwise(&shard, &event) {
            return Err(ReplicaRefusal::CommittedOtherwise);
        }
        let remember = |shard: &mut TopicShard| {
            if let Some(id) = &event.publish_id {
                let position = Position {
                    epoch: event.epoch.clone(),
                    seq: event.seq,
                };
                shard
                    .dedupe
                    .remember_stored(&event.topic, id.clone(), position, self.clock_ms());
            }
        };
        if held && !Self::replace_stale_copy(&mut shard, &event) {
            remember(&mut shard);
            // Held already, and maybe not synced yet: confirmed after the next sync too.
            return Ok((receipt, shard.history.sync_ticket()));
        }
        // Stored first: a copy this node cannot keep is refused (its owner fails the event
        // and acknowledges nothing), and neither its position nor its id is recorded here.
        if let Err(error) = shard.history.append(event.clone(), now) {
            self.stats.events_not_stored.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic = %event.topic, seq = event.seq, %error, "could not store a replica's copy; refused");
            return Err(ReplicaRefusal::StorageFailed);
        }
        remember(&mut shard);
        shard.topics.replicated(&event, self.clock_ms());
        Ok((receipt, shard.history.sync_ticket()))
    }

    /// A replica refused an event of `topic` (see [`Self::store_replica`]): this node is no
    /// longer the owner the others recognise. Every event of the topic still waiting for
    /// replicas fails (never fanned out nor replayed, the publishers told `unavailable`) and
    /// the topic is claimed again before anything more is sequenced.
    pub fn replica_refused(&self, topic: &str) {
        let mut shard = self.shard(topic).lock();
        for (event, _signal) in shard.topics.fail_pending(topic) {
            tracing::debug!(topic = %event.topic, seq = event.seq, "a replica refused it; the event fails");
            Self::forget_failed(&mut shard, &event);
        }
    }

    /// True while some sequenced event still waits for its replicas.
    pub fn has_pending(&self) -> bool {
        self.shards.iter().any(|s| s.lock().topics.has_pending())
    }

    /// Takes a whole copy of a topic from its owner, as one of its replicas.
    pub fn store_copy(&self, topic: &str, snapshot: TopicSnapshot) {
        let mut shard = self.shard(topic).lock();
        let now = now_ms();
        let clock = self.clock_ms();
        shard.dedupe.import(&Arc::from(topic), snapshot.ids, clock);
        if shard
            .topics
            .install_copy(topic, snapshot.epoch, snapshot.last_seq, clock)
            && let Err(error) = shard.history.replace(topic, snapshot.events, now)
        {
            // Kept in part, the copy would serve resumes with a hole: it goes, and this
            // node knows nothing of the topic (the owner's next events start it afresh).
            self.stats.events_not_stored.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic, %error, "could not store a topic's copy from its owner; dropped");
            shard.topics.remove(topic);
            shard.history.forget_one(topic);
        }
    }

    /// Stops sequencing every topic until it is claimed again (this node was cut off: what
    /// it holds may be stale). Events still waiting for their replicas fail, as when a
    /// replica is gone: never fanned out nor replayed from here, their publishers answered
    /// `unavailable`.
    pub fn relinquish_all(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            for (event, _signal) in shard.topics.relinquish_all() {
                tracing::debug!(topic = %event.topic, seq = event.seq, "relinquished before stored; the event fails");
                Self::forget_failed(&mut shard, &event);
            }
        }
    }

    /// True when this node holds `topic`'s state and may sequence it. An owner may go on
    /// with a quiet topic the sweep has not forgotten yet: what the sequencing owner holds
    /// is the newest knowledge of the topic there is.
    pub fn is_ready(&self, topic: &str) -> bool {
        self.shard(topic).lock().topics.is_ready(topic)
    }

    /// Takes ownership of `topic`: continues from `known` (the newest state found in the
    /// cluster), or starts a new epoch when nothing is known. Returns the epoch.
    pub fn install_topic(&self, topic: &str, known: Option<TopicSnapshot>) -> Arc<str> {
        let mut shard = self.shard(topic).lock();
        let now = now_ms();
        let clock = self.clock_ms();
        self.forget_if_idle(&mut shard, topic, clock);
        match known {
            Some(mut snapshot) => {
                let ids = std::mem::take(&mut snapshot.ids);
                shard.dedupe.import(&Arc::from(topic), ids, clock);
                let ours = shard
                    .topics
                    .get(topic)
                    .map(|t| (t.epoch.clone(), t.last_seq));
                // Never go back from what this node itself knows.
                let newer_here = ours.as_ref().is_some_and(|(e, s)| {
                    crate::routing::topics::newer_epoch(e, &snapshot.epoch)
                        || (*e == snapshot.epoch && *s > snapshot.last_seq)
                });
                let known_further = ours.as_ref().is_none_or(|(e, s)| {
                    crate::routing::topics::newer_epoch(&snapshot.epoch, e)
                        || (*e == snapshot.epoch && snapshot.last_seq > *s)
                });
                if shard.topics.must_renew_epoch(topic) && !known_further {
                    // Events failed here at the end of this epoch, and a replica's copy may
                    // hold them or others may have numbered their positions: never reuse them.
                    let epoch = new_epoch(now, rand::random());
                    shard.topics.install(topic, epoch.clone(), 0, clock);
                    return epoch;
                }
                if newer_here {
                    let (epoch, last) = ours.unwrap_or_else(|| (snapshot.epoch.clone(), 0));
                    shard.topics.install(topic, epoch.clone(), last, clock);
                    return epoch;
                }
                // What this node's history holds of it already (the same events) is not written again (a
                // node restarted from disk claims mostly what it holds itself).
                let history = &mut shard.history;
                let mut events = snapshot.events.into_iter().peekable();
                while events
                    .next_if(|e| {
                        let held = history.get(topic, &e.epoch, e.seq);
                        held.is_some_and(|held| super::commits::same_event(&held, e))
                    })
                    .is_some()
                {}
                let stored = events.try_for_each(|event| history.append(event, now));
                if let Err(error) = stored {
                    // Without the history it took over, this node cannot serve what the
                    // epoch's positions stand for: a new epoch, so resumers are told.
                    self.stats.events_not_stored.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(topic, %error, "could not store the history of a claimed topic; starting a new epoch");
                    shard.history.forget_one(topic);
                    let epoch = new_epoch(now, rand::random());
                    shard.topics.install(topic, epoch.clone(), 0, clock);
                    return epoch;
                }
                shard
                    .topics
                    .install(topic, snapshot.epoch.clone(), snapshot.last_seq, clock);
                if snapshot.last_seq > 0 {
                    // Everything taken over is committed: replicas that hold it serve it.
                    shard.commit_moved.insert(Arc::from(topic));
                }
                snapshot.epoch
            }
            None => {
                let epoch = new_epoch(now, rand::random());
                shard.topics.install(topic, epoch.clone(), 0, clock);
                epoch
            }
        }
    }

    /// What this node knows of `topic`, for a node claiming it: nothing once the topic is
    /// quiet enough to be forgotten, so that no claim continues stale knowledge after the
    /// newest was forgotten elsewhere.
    pub fn topic_snapshot(&self, topic: &str) -> Option<TopicSnapshot> {
        let mut shard = self.shard(topic).lock();
        self.forget_if_idle(&mut shard, topic, self.clock_ms());
        let state = shard.topics.get(topic)?;
        let events = shard.history.earliest(topic).events;
        Some(TopicSnapshot {
            epoch: state.epoch.clone(),
            last_seq: state.last_seq,
            events,
            ids: shard.dedupe.export(topic, self.clock_ms()),
        })
    }

    /// Hands `topic` to a new owner: stops sequencing it and returns what this node knows.
    pub fn hand_over(&self, topic: &str) -> Result<Option<TopicSnapshot>, HandOverRefused> {
        // What the sequencing owner holds is the newest knowledge of the topic, quiet or not.
        let mut shard = self.shard(topic).lock();
        let Some((epoch, last_seq)) = shard.topics.hand_over(topic)? else {
            return Ok(None);
        };
        let events = shard.history.earliest(topic).events;
        Ok(Some(TopicSnapshot {
            epoch,
            last_seq,
            events,
            ids: shard.dedupe.export(topic, self.clock_ms()),
        }))
    }
}

fn receipt(position: Position) -> Receipt {
    Receipt {
        epoch: position.epoch,
        seq: position.seq,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::broker::test_support::{drain, json, subscription};
    use crate::broker::{Broker, Outbox, Sequenced, TopicSnapshot};
    use crate::cluster::link::{PeerLink, PeerMessage};
    use crate::event::Event;
    use crate::storage::Retention;

    #[test]
    fn a_replica_refuses_events_from_an_owner_it_no_longer_recognises() {
        use crate::broker::sequencing::ReplicaRefusal;
        // The stale owner sequenced #1 and #2 of its epoch while the others moved on.
        let stale = Broker::new(Retention::default());
        let old_epoch = stale.install_topic("t", None);
        let (replica_link, _queues) = PeerLink::new("r", 1, 16);
        let Sequenced::Waiting(_, mut stored) =
            stale.sequence("t", json("1"), std::slice::from_ref(&replica_link), true)
        else {
            panic!("a replica to wait for");
        };
        let event = stale.topic_snapshot("t").unwrap().events[0].clone();

        // A node that sequences the topic itself (it took the epoch over) refuses the copy.
        // (Same epoch: a new one could be newer, which is the next case.)
        let owner_now = Broker::new(Retention::default());
        owner_now.install_topic(
            "t",
            Some(TopicSnapshot {
                epoch: old_epoch.clone(),
                last_seq: 0,
                events: Vec::new(),
                ids: Vec::new(),
            }),
        );
        assert_eq!(
            owner_now.store_replica(event.clone()),
            Err(ReplicaRefusal::SequencesItself)
        );
        // A replica that holds a newer epoch of the topic refuses it too.
        let replica = Broker::new(Retention::default());
        let newer = Arc::new(Event::new(
            event.topic.clone(),
            format!("{:x}-00000000", i64::MAX / 2).into(),
            1,
            event.ts,
            event.payload.clone(),
        ));
        replica.store_replica(newer).unwrap();
        assert_eq!(
            replica.store_replica(event.clone()),
            Err(ReplicaRefusal::NewerEpoch)
        );
        // A replica of the stale owner's epoch stores it.
        let plain = Broker::new(Retention::default());
        assert!(plain.store_replica(event).is_ok());

        // Told of the refusal, the stale owner fails the event and must claim again.
        stale.replica_refused("t");
        assert!(matches!(
            stored.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed)
        ));
        assert!(
            !stale.is_ready("t"),
            "claimed again before it sequences more"
        );
        assert!(
            stale
                .topic_snapshot("t")
                .is_none_or(|s| s.events.is_empty() || *s.epoch != *old_epoch),
            "the failed event is not kept"
        );
    }

    #[test]
    fn an_event_whose_replica_left_is_stored_on_the_next_replica_in_the_same_epoch() {
        let broker = Broker::new(Retention::default());
        let epoch = broker.install_topic("t", None);
        let outbox = Outbox::new(1, 16);
        subscription(&broker, "s", "t", None, &outbox);
        let (replica, _queues) = PeerLink::new("r", 1, 16);
        let Sequenced::Waiting(receipt, mut stored) =
            broker.sequence("t", json("1"), &[replica], true)
        else {
            panic!("a replica to wait for");
        };
        assert_eq!((&*receipt.epoch, receipt.seq), (&*epoch, 1));
        assert_eq!(broker.on_peer_gone("r"), vec![Arc::<str>::from("t")]);
        assert!(drain(&outbox).is_empty(), "not stored on a replica yet");
        assert!(broker.is_ready("t"), "still sequenced here");

        // The next node of the placement takes the replica's place: it gets the topic's
        // history, then the event to confirm.
        let (next, mut queues) = PeerLink::new("n", 1, 16);
        broker.ask_replicas_again("t", std::slice::from_ref(&next));
        let Ok(PeerMessage::SyncTopic { last_seq, .. }) = queues.control.try_recv() else {
            panic!("the history first");
        };
        assert_eq!(last_seq, 1);
        let Ok(PeerMessage::Replicate(event)) = queues.control.try_recv() else {
            panic!("then the event to confirm");
        };
        assert_eq!((&*event.epoch, event.seq), (&*epoch, 1));
        assert!(stored.try_recv().is_err() && drain(&outbox).is_empty());
        broker.on_stored("n", "t", &epoch, 1);
        assert_eq!(
            stored.try_recv(),
            Ok(()),
            "the publisher is told it is stored"
        );
        assert_eq!(drain(&outbox).len(), 1);
        let next_event = broker.publish("t", json("2"));
        assert_eq!((&*next_event.epoch, next_event.seq), (&*epoch, 2));
    }

    #[test]
    fn an_event_no_replica_could_store_in_time_is_never_delivered_nor_renumbered() {
        let broker = Broker::new(Retention::default());
        let epoch = broker.install_topic("t", None);
        let outbox = Outbox::new(1, 16);
        subscription(&broker, "s", "t", None, &outbox);
        let (replica, _queues) = PeerLink::new("r", 1, 16);
        let Sequenced::Waiting(receipt, mut stored) =
            broker.sequence("t", json("1"), &[replica], true)
        else {
            panic!("a replica to wait for");
        };
        assert_eq!((&*receipt.epoch, receipt.seq), (&*epoch, 1));
        broker.on_peer_gone("r");
        broker.fail_orphans("t");
        assert_eq!(
            stored.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed),
            "the publisher is told it failed"
        );
        assert!(drain(&outbox).is_empty(), "never fanned out");
        assert!(!broker.is_ready("t"), "claimed again before numbering more");
        let snapshot = broker.topic_snapshot("t").unwrap();
        assert!(snapshot.events.is_empty(), "never replayed from here");
        // Claimed again with nothing newer known: position 1 of this epoch is not reused.
        let renewed = broker.install_topic("t", Some(snapshot));
        assert_ne!(renewed, epoch);
        let next = broker.publish("t", json("2"));
        assert_eq!((&*next.epoch, next.seq), (&*renewed, 1));
        assert_eq!(drain(&outbox).len(), 1);
    }

    /// The chaos `flap` run that gave one position to two publishes: an owner cut off from
    /// its replica kept #2 pending, was declared down, rejoined and claimed the topic again
    /// from the node that had numbered #2–#3 meanwhile; a `Stored` for #4 then completed its
    /// own stale #2, fanned out and acknowledged at a position another event had.
    #[test]
    fn events_pending_when_the_node_relinquishes_its_topics_fail_and_stay_failed() {
        let broker = Broker::new(Retention::default());
        let epoch = broker.install_topic("t", None);
        let outbox = Outbox::new(1, 16);
        subscription(&broker, "s", "t", None, &outbox);
        let (replica, _queues) = PeerLink::new("r", 1, 16);
        assert!(matches!(
            broker.sequence("t", json("1"), std::slice::from_ref(&replica), true),
            Sequenced::Waiting(..)
        ));
        broker.on_stored("r", "t", &epoch, 1);
        let Sequenced::Waiting(_, mut stored) =
            broker.sequence("t", json("stale"), std::slice::from_ref(&replica), true)
        else {
            panic!("a replica to wait for");
        };
        broker.relinquish_all();
        assert_eq!(
            stored.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed),
            "the publisher is told it failed"
        );
        let snapshot = broker.topic_snapshot("t").unwrap();
        assert_eq!(
            snapshot.events.len(),
            1,
            "the failed event is not replayed from here"
        );

        // Another node numbered #2 and #3 meanwhile and hands the topic back.
        let theirs = |seq: u64| {
            Arc::new(Event::new(
                "t".into(),
                epoch.clone(),
                seq,
                0,
                json("theirs"),
            ))
        };
        let installed = broker.install_topic(
            "t",
            Some(TopicSnapshot {
                epoch: epoch.clone(),
                last_seq: 3,
                events: vec![theirs(2), theirs(3)],
                ids: Vec::new(),
            }),
        );
        assert_eq!(installed, epoch, "the newer knowledge continues the epoch");
        let Sequenced::Waiting(next, _) = broker.sequence("t", json("4"), &[replica], true) else {
            panic!("a replica to wait for");
        };
        assert_eq!(next.seq, 4);
        broker.on_stored("r", "t", &epoch, 4);
        let delivered = drain(&outbox);
        assert_eq!(
            delivered.iter().map(|d| d.1).collect::<Vec<_>>(),
            vec![1, 4],
            "the stale #2 is never fanned out"
        );
    }
}
