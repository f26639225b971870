//! The broker: the routing core behind locks, connected to client connections' outboxes.
//!
//! Who owns what:
//! - the subscription index (`RwLock`): written by `sub`/`unsub`, read by every publish;
//! - per-topic sequence counters, sharded by topic hash (`Mutex` per shard);
//! - each connection's [`Outbox`]: a bounded queue its own task drains onto the socket.
//!
//! A publish locks its topic's shard, takes the next sequence number, queues the event to
//! every matching subscription with a non-blocking `try_send`, and only then unlocks: two
//! publishes of one topic are therefore queued everywhere in sequence order, and a full queue
//! never blocks the publisher or any other subscriber (its owner is disconnected instead).
//!
//! In a cluster the broker also holds what each peer is interested in (a second index whose
//! entries are peer links) and what this node is interested in (counts per pattern and
//! group, announced to peers on change). A publish then also queues the event to every peer
//! with a matching plain subscriber, and for each matching queue group picks one node —
//! this one or a peer — so exactly one member in the whole cluster receives it.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use crate::cluster::link::{Interest, PeerLink, PeerMessage};
use crate::event::{Delivery, Event, GroupOrigin, Payload};
use crate::protocol::{Cursor, ResumeFrom};
use crate::routing::history::{Gap, HistoryStore, Replay, Retention, reason};
use crate::routing::topic::validate_pattern;
use crate::routing::topic::{is_wildcard, pattern_matches};
use crate::routing::topics::{Completed, HandOverRefused, TopicTable, new_epoch};
use crate::routing::{Match, QueueGroup, SubscriptionIndex};

/// Sequence shards: enough that publishes of different topics rarely wait on each other.
const SEQUENCE_SHARDS: usize = 64;

/// What a connection's task receives through its outbox.
#[derive(Debug)]
pub enum Outbound {
    Event {
        sub: Arc<Subscription>,
        event: Arc<Event>,
        delivery: Option<Delivery>,
    },
    /// A reply that completed after its request was handled (the `ok` of an acknowledged
    /// publish), written in turn with the events.
    Reply(axum::extract::ws::Message),
}

/// The broker's handle on one client connection: a bounded queue its own task drains.
///
/// A plain `VecDeque` behind a lock rather than a channel: it allocates nothing while the
/// connection is idle (most connections, most of the time), and the task takes a whole
/// batch with one lock.
#[derive(Debug)]
pub struct Outbox {
    pub connection: u64,
    capacity: usize,
    queue: Mutex<OutboxQueue>,
    /// Woken when the queue stops being empty or the outbox overflowed.
    ready: Notify,
    /// Set when the queue overflowed: the connection must be closed as a slow consumer.
    overflowed: AtomicBool,
}

#[derive(Debug, Default)]
struct OutboxQueue {
    items: VecDeque<Outbound>,
    closed: bool,
}

/// A queue drained to empty gives back the memory it had grown past this many items (a
/// burst's worth stays, so a busy connection does not regrow it every time).
const OUTBOX_KEEP_CAPACITY: usize = 1024;

impl Outbox {
    /// A new outbox holding at most `capacity` undelivered events.
    pub fn new(connection: u64, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            connection,
            capacity: capacity.max(1),
            queue: Mutex::new(OutboxQueue::default()),
            ready: Notify::new(),
            overflowed: AtomicBool::new(false),
        })
    }

    /// Resolves once something was queued or the outbox overflowed since the queue was last
    /// found empty (possibly at once, with nothing left to take).
    pub fn ready(&self) -> tokio::sync::futures::Notified<'_> {
        self.ready.notified()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.lock().items.is_empty()
    }

    pub fn has_overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    /// Moves up to `max` queued items, oldest first, into `into`. When more are left, the
    /// next [`ready`](Self::ready) resolves at once.
    pub fn take(&self, max: usize, into: &mut Vec<Outbound>) {
        let mut queue = self.queue.lock();
        let n = queue.items.len().min(max);
        into.reserve_exact(n);
        into.extend(queue.items.drain(..n));
        if !queue.items.is_empty() {
            self.ready.notify_one();
        } else if queue.items.capacity() > OUTBOX_KEEP_CAPACITY {
            queue.items.shrink_to(OUTBOX_KEEP_CAPACITY);
        }
    }

    /// Queues a reply; false when the connection is gone.
    pub fn push_reply(&self, message: axum::extract::ws::Message) -> bool {
        let mut queue = self.queue.lock();
        if queue.closed {
            return false;
        }
        queue.items.push_back(Outbound::Reply(message));
        if queue.items.len() == 1 {
            self.ready.notify_one();
        }
        true
    }

    /// Refuses anything further and returns what is still queued.
    pub fn close(&self) -> VecDeque<Outbound> {
        let mut queue = self.queue.lock();
        queue.closed = true;
        std::mem::take(&mut queue.items)
    }

    fn offer(&self, item: Outbound) -> Offer {
        if self.has_overflowed() {
            return Offer::Refused;
        }
        let mut queue = self.queue.lock();
        if queue.closed {
            return Offer::Refused;
        }
        if queue.items.len() >= self.capacity {
            return Offer::Full;
        }
        queue.items.push_back(item);
        if queue.items.len() == 1 {
            self.ready.notify_one();
        }
        Offer::Queued
    }

    fn mark_overflowed(&self) {
        self.overflowed.store(true, Ordering::Release);
        self.ready.notify_one();
    }
}

enum Offer {
    Queued,
    Full,
    /// A queue-group member holding `max_unacked` deliveries: skipped until it acks, never
    /// disconnected for it (it is not behind on reading, only on acknowledging).
    AtLimit,
    /// Closed, or already being disconnected as a slow consumer.
    Refused,
}

/// One subscription as the index holds it. Compared by identity: two `sub`s with equal
/// fields are still two subscriptions.
#[derive(Debug)]
pub struct Subscription {
    pub id: Arc<str>,
    pub pattern: Arc<str>,
    pub group: Option<Arc<str>>,
    pub outbox: Arc<Outbox>,
    /// Cleared by `unsub`: events already queued for it are then not sent.
    active: std::sync::atomic::AtomicBool,
    /// Queue-group deliveries queued or written to this member and not yet acknowledged
    /// (or handed on): at `max_unacked` it is offered no more.
    unacked: AtomicUsize,
    max_unacked: usize,
}

impl Subscription {
    pub fn new(
        id: Arc<str>,
        pattern: Arc<str>,
        group: Option<Arc<str>>,
        outbox: Arc<Outbox>,
    ) -> Self {
        Self {
            id,
            pattern,
            group,
            outbox,
            active: std::sync::atomic::AtomicBool::new(true),
            unacked: AtomicUsize::new(0),
            max_unacked: usize::MAX,
        }
    }

    /// Bounds the queue-group deliveries this member may hold unacknowledged.
    #[must_use]
    pub fn with_max_unacked(mut self, max: usize) -> Self {
        self.max_unacked = max.max(1);
        self
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Queue-group deliveries this member holds unacknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.load(Ordering::Acquire)
    }

    /// One of this member's deliveries was acknowledged or handed on: it may take another.
    pub fn delivery_settled(&self) {
        let _ = self
            .unacked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

#[derive(Debug, Clone)]
struct Subscriber(Arc<Subscription>);

impl PartialEq for Subscriber {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

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
    /// Dropped with the signal: an event waiting for a slow replica keeps its publisher's
    /// share of the buffer, so a stalled replica slows publishers instead of growing the
    /// owner's backlog without bound.
    _permit: Option<PublishPermit>,
}

/// A share of the node's publish buffer (`publish_buffer_bytes`), in bytes: a publish holds
/// it from the moment its connection hands it over until it leaves the node's queues (is
/// written towards its owner, or is stored on its replicas here).
#[derive(Debug)]
pub struct PublishPermit(pub tokio::sync::OwnedSemaphorePermit);

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
}

/// What a node knows of a topic, for a new owner claiming it.
#[derive(Debug, Clone)]
pub struct TopicSnapshot {
    pub epoch: Arc<str>,
    pub last_seq: u64,
    pub events: Vec<Arc<Event>>,
}

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

/// A peer's interest as the remote index holds it.
#[derive(Debug, Clone)]
struct RemoteInterest {
    link: Arc<PeerLink>,
    interest: Interest,
}

impl PartialEq for RemoteInterest {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.link, &other.link) && self.interest == other.interest
    }
}

/// This node's interest, announced to every attached peer.
#[derive(Debug, Default)]
struct InterestTable {
    counts: HashMap<Interest, usize>,
    links: Vec<Arc<PeerLink>>,
}

#[derive(Debug, Default)]
pub struct BrokerStats {
    /// Events published by this node's clients.
    pub events_published: AtomicU64,
    /// Events forwarded here by peers.
    pub events_from_peers: AtomicU64,
    /// Queue-group deliveries that found no member able to take them.
    pub group_deliveries_lost: AtomicU64,
    /// Subscriptions and peers each event was queued to when fanned out.
    pub fanout: crate::metrics::CountHistogram,
}

/// Longest pattern accepted from a peer; peers validate their clients' patterns already.
const MAX_PEER_PATTERN_BYTES: usize = 4096;

#[derive(Debug)]
pub struct Broker {
    index: RwLock<SubscriptionIndex<Subscriber>>,
    remote: RwLock<SubscriptionIndex<RemoteInterest>>,
    interest: Mutex<InterestTable>,
    shards: Box<[Mutex<TopicShard>]>,
    shard_hasher: foldhash::fast::RandomState,
    next_delivery: AtomicU64,
    /// Round-robin over the nodes of a cluster-wide queue group.
    group_turn: AtomicUsize,
    /// Queue-group events this node placed on a peer, by token, until the peer reports a
    /// member acknowledged them; re-placed if the peer cannot take them or goes away.
    placed_on_peers: Mutex<HashMap<u64, PlacedOnPeer>>,
    next_token: AtomicU64,
    /// Limits the log line for queue-group events that no member could take.
    lost_log: crate::limits::LogLimiter,
    full_group_log: crate::limits::LogLimiter,
    /// A topic quiet for this long (and for its history's `max_age`) is forgotten (see
    /// [`Broker::sweep_at`]).
    topic_idle_forget: std::time::Duration,
    /// The clock topics' quiet time is measured on: monotonic, so that a wall clock set
    /// back or forth never makes a node forget a topic out of turn.
    started: std::time::Instant,
    pub stats: BrokerStats,
}

#[derive(Debug)]
struct PlacedOnPeer {
    peer: Arc<str>,
    event: Arc<Event>,
    interest: Interest,
    /// How often peers gave this event back unplaced.
    bounces: u32,
}

/// How often a queue-group event may come back from peers unplaced before it counts as lost:
/// enough for members to drain a full buffer between tries, not so many that an event no
/// member will take circles between nodes for long.
const MAX_GROUP_BOUNCES: u32 = 16;

/// What became of a queue-group event whose member did not acknowledge it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redelivery {
    /// Queued to a member (this node's, or a peer's).
    Placed,
    /// Another node placed it here: that node must place it elsewhere.
    ReturnToOrigin(Arc<GroupOrigin>),
    /// No member anywhere could take it.
    Lost,
}

/// The topics whose names hash to one shard: their sequence counters and history. A
/// publish holds its shard's lock from sequencing until the event is queued everywhere.
#[derive(Debug)]
struct TopicShard {
    topics: TopicTable<StoredSignal>,
    history: HistoryStore,
}

/// A `from` that does not fit the subscription.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ResumeError(pub &'static str);

type Forwards = Vec<(Arc<PeerLink>, bool, Vec<(Interest, u64)>)>;

fn forward_entry<'f>(
    forwards: &'f mut Forwards,
    link: &Arc<PeerLink>,
) -> &'f mut (Arc<PeerLink>, bool, Vec<(Interest, u64)>) {
    let i = match forwards.iter().position(|f| Arc::ptr_eq(&f.0, link)) {
        Some(i) => i,
        None => {
            forwards.push((link.clone(), false, Vec::new()));
            forwards.len() - 1
        }
    };
    &mut forwards[i]
}

impl Broker {
    /// A broker that keeps history as `retention` says.
    pub fn new(retention: Retention) -> Self {
        Self {
            index: RwLock::new(SubscriptionIndex::new()),
            remote: RwLock::new(SubscriptionIndex::new()),
            interest: Mutex::new(InterestTable::default()),
            shards: (0..SEQUENCE_SHARDS)
                .map(|_| {
                    Mutex::new(TopicShard {
                        topics: TopicTable::default(),
                        history: HistoryStore::new(retention.clone()),
                    })
                })
                .collect(),
            shard_hasher: foldhash::fast::RandomState::default(),
            next_delivery: AtomicU64::new(1),
            group_turn: AtomicUsize::new(0),
            placed_on_peers: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            lost_log: crate::limits::LogLimiter::new(std::time::Duration::from_secs(1)),
            full_group_log: crate::limits::LogLimiter::new(std::time::Duration::from_secs(1)),
            topic_idle_forget: crate::config::DEFAULT_TOPIC_IDLE_FORGET,
            started: std::time::Instant::now(),
            stats: BrokerStats::default(),
        }
    }

    /// Forgets topics quiet for `idle` with nothing retained (setting `topic_idle_forget`).
    #[must_use]
    pub fn with_topic_idle_forget(mut self, idle: std::time::Duration) -> Self {
        self.topic_idle_forget = idle;
        self
    }

    /// Subscriptions held, across all connections.
    pub fn subscriptions(&self) -> usize {
        self.index.read().len()
    }

    /// Interests peers have announced (one per peer, pattern and group).
    pub fn peer_interests(&self) -> usize {
        self.remote.read().len()
    }

    /// Adds a subscription; its pattern must already be validated.
    pub fn subscribe(&self, subscription: Arc<Subscription>) {
        let group = subscription.group.clone();
        let pattern = subscription.pattern.clone();
        self.index
            .write()
            .insert(&pattern, group.as_deref(), Subscriber(subscription));
        self.interest_changed(Interest { pattern, group }, true);
    }

    pub fn unsubscribe(&self, subscription: &Arc<Subscription>) -> bool {
        subscription.active.store(false, Ordering::Release);
        let removed = self.index.write().remove(
            &subscription.pattern,
            subscription.group.as_deref(),
            &Subscriber(subscription.clone()),
        );
        if removed {
            let interest = Interest {
                pattern: subscription.pattern.clone(),
                group: subscription.group.clone(),
            };
            self.interest_changed(interest, false);
        }
        removed
    }

    /// Counts local subscriptions per interest and tells peers when one appears or goes.
    fn interest_changed(&self, interest: Interest, added: bool) {
        let mut table = self.interest.lock();
        let count = table.counts.entry(interest.clone()).or_default();
        let announce = if added {
            *count += 1;
            *count == 1
        } else {
            *count = count.saturating_sub(1);
            *count == 0
        };
        if !added && *count == 0 {
            table.counts.remove(&interest);
        }
        if announce {
            for link in &table.links {
                let (added_list, removed_list) = if added {
                    (vec![interest.clone()], Vec::new())
                } else {
                    (Vec::new(), vec![interest.clone()])
                };
                link.send_control(PeerMessage::Delta {
                    added: added_list,
                    removed: removed_list,
                });
            }
        }
    }

    /// Starts telling `link`'s peer this node's interest: a snapshot now, deltas after.
    pub fn attach_peer(&self, link: &Arc<PeerLink>) {
        let mut table = self.interest.lock();
        let mut snapshot: Vec<Interest> = table.counts.keys().cloned().collect();
        snapshot.sort();
        link.send_control(PeerMessage::Snapshot(snapshot));
        table.links.push(link.clone());
    }

    /// Forgets a peer link and everything its peer was interested in.
    pub fn detach_peer(&self, link: &Arc<PeerLink>) {
        link.close();
        self.interest.lock().links.retain(|l| !Arc::ptr_eq(l, link));
        let mut remote = self.remote.write();
        for interest in link.interests.lock().drain() {
            remote.remove(
                &interest.pattern,
                interest.group.as_deref(),
                &RemoteInterest {
                    link: link.clone(),
                    interest: interest.clone(),
                },
            );
        }
    }

    /// Applies a peer's interest: its full set (`snapshot`) or a change.
    pub fn apply_peer_interest(
        &self,
        link: &Arc<PeerLink>,
        snapshot: Option<Vec<Interest>>,
        added: Vec<Interest>,
        removed: Vec<Interest>,
    ) {
        let mut remote = self.remote.write();
        if link.is_closed() {
            return;
        }
        let mut known = link.interests.lock();
        let (added, removed) = match snapshot {
            Some(all) => {
                link.interest_known.store(true, Ordering::Release);
                let all: std::collections::HashSet<Interest> = all.into_iter().collect();
                let gone: Vec<Interest> = known.difference(&all).cloned().collect();
                let new: Vec<Interest> = all.difference(&known).cloned().collect();
                (new, gone)
            }
            None => (added, removed),
        };
        for interest in removed {
            if known.remove(&interest) {
                remote.remove(
                    &interest.pattern,
                    interest.group.as_deref(),
                    &RemoteInterest {
                        link: link.clone(),
                        interest: interest.clone(),
                    },
                );
            }
        }
        for interest in added {
            if let Err(err) = validate_pattern(&interest.pattern, MAX_PEER_PATTERN_BYTES) {
                tracing::warn!(peer = %link.name, pattern = %interest.pattern, %err, "ignoring an invalid pattern from a peer");
                continue;
            }
            if known.insert(interest.clone()) {
                let (pattern, group) = (interest.pattern.clone(), interest.group.clone());
                remote.insert(
                    &pattern,
                    group.as_deref(),
                    RemoteInterest {
                        link: link.clone(),
                        interest,
                    },
                );
            }
        }
    }

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
        self.sequence_holding(topic, payload, replicas, confirm, None)
    }

    /// [`sequence`](Self::sequence), keeping `permit` until the event is stored everywhere
    /// (or fails).
    pub fn sequence_holding(
        &self,
        topic: &str,
        payload: Payload,
        replicas: &[Arc<PeerLink>],
        confirm: bool,
        permit: Option<PublishPermit>,
    ) -> Sequenced {
        let mut shard = self.shard(topic).lock();
        let Some((name, epoch, seq)) = shard.topics.next(topic, self.clock_ms()) else {
            return Sequenced::NotReady;
        };
        let now = now_ms();
        let event = Arc::new(Event::new(name, epoch.clone(), seq, now, payload));
        tracing::trace!(topic, seq, replicas = replicas.len(), "sequenced");
        // A replica new to this topic first gets everything retained so far, so that it can
        // serve resumes and take over with the whole history.
        let ids: Vec<(Arc<str>, u64)> = replicas
            .iter()
            .map(|r| (r.name.clone(), r.generation))
            .collect();
        let fresh = shard.topics.needs_sync(topic, &ids);
        if !fresh.is_empty() {
            let retained = shard.history.earliest(topic).events;
            for replica in replicas
                .iter()
                .filter(|r| fresh.contains(&(r.name.clone(), r.generation)))
            {
                replica.send_control(PeerMessage::SyncTopic {
                    topic: event.topic.clone(),
                    epoch: epoch.clone(),
                    last_seq: seq - 1,
                    events: retained.clone(),
                });
            }
        }
        shard.history.append(event.clone(), now);
        self.stats.events_published.fetch_add(1, Ordering::Relaxed);
        for replica in replicas {
            replica.send_control(PeerMessage::Replicate(event.clone()));
        }
        let receipt = Receipt { epoch, seq };
        let (notify, stored) = if replicas.is_empty() || !confirm {
            (None, None)
        } else {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Some(tx), Some(rx))
        };
        let signal = (notify.is_some() || permit.is_some()).then_some(StoredSignal {
            notify,
            _permit: permit,
        });
        let waiting_for = replicas.iter().map(|r| r.name.clone()).collect();
        let done = shard.topics.hold(event, waiting_for, signal);
        self.complete(done);
        drop(shard);
        match stored {
            None => Sequenced::Done(receipt),
            Some(rx) => Sequenced::Waiting(receipt, rx),
        }
    }

    /// Single-node convenience: claims the topic if needed (a fresh epoch) and sequences
    /// without replicas.
    pub fn publish(&self, topic: &str, payload: Payload) -> Receipt {
        if !self.is_ready(topic) {
            self.install_topic(topic, None);
        }
        match self.sequence(topic, payload, &[], true) {
            Sequenced::Done(receipt) | Sequenced::Waiting(receipt, _) => receipt,
            Sequenced::NotReady => unreachable!("installed just above"),
        }
    }

    /// Fans out events whose replicas have all stored them, in order, and tells their
    /// publishers. Called with the topic's shard locked, which keeps the order.
    fn complete(&self, done: Vec<Completed<StoredSignal>>) {
        for (event, signal) in done {
            tracing::trace!(topic = %event.topic, seq = event.seq, "stored; fanning out");
            let deliveries = self.fan_out(&event);
            self.stats.fanout.observe(deliveries);
            if let Some(tx) = signal.and_then(|s| s.notify) {
                let _ = tx.send(());
            }
        }
    }

    /// A replica reports `topic` stored up to `seq` of `epoch`.
    pub fn on_stored(&self, peer: &str, topic: &str, epoch: &str, seq: u64) {
        let mut shard = self.shard(topic).lock();
        let done = shard.topics.stored(peer, topic, epoch, seq);
        self.complete(done);
    }

    /// A peer is gone: no replica acknowledgement will come from it, and the queue-group
    /// events placed on it and not yet acknowledged go to other members.
    pub fn on_peer_gone(&self, peer: &str) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let gone = shard.topics.peer_gone(peer);
            self.complete(gone.completed);
            // Not stored on enough replicas: never fanned out nor replayed from here, and
            // their publishers learn it (a dropped signal is answered `unavailable`).
            for (event, _signal) in gone.failed {
                tracing::debug!(topic = %event.topic, seq = event.seq, peer, "replica gone before storing; the event fails");
                shard
                    .history
                    .forget_from(&event.topic, &event.epoch, event.seq);
            }
        }
        let orphaned: Vec<PlacedOnPeer> = {
            let mut placed = self.placed_on_peers.lock();
            let tokens: Vec<u64> = placed
                .iter()
                .filter(|(_, p)| &*p.peer == peer)
                .map(|(t, _)| *t)
                .collect();
            tokens.iter().filter_map(|t| placed.remove(t)).collect()
        };
        for placed in orphaned {
            self.place_again(&placed.event, &placed.interest, Some(peer), placed.bounces);
        }
    }

    /// Stores a copy of an event its owner sequenced; returns its position.
    pub fn store_replica(&self, event: Arc<Event>) -> Receipt {
        let mut shard = self.shard(&event.topic).lock();
        let now = now_ms();
        shard.topics.replicated(&event, self.clock_ms());
        let receipt = Receipt {
            epoch: event.epoch.clone(),
            seq: event.seq,
        };
        shard.history.append(event, now);
        receipt
    }

    /// True while some sequenced event still waits for its replicas.
    pub fn has_pending(&self) -> bool {
        self.shards.iter().any(|s| s.lock().topics.has_pending())
    }

    /// Takes a whole copy of a topic from its owner, as one of its replicas.
    pub fn store_copy(&self, topic: &str, snapshot: TopicSnapshot) {
        let mut shard = self.shard(topic).lock();
        let now = now_ms();
        if shard
            .topics
            .install_copy(topic, snapshot.epoch, snapshot.last_seq, self.clock_ms())
        {
            shard.history.replace(topic, snapshot.events, now);
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
                shard
                    .history
                    .forget_from(&event.topic, &event.epoch, event.seq);
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
            Some(snapshot) => {
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
                for event in snapshot.events {
                    shard.history.append(event, now);
                }
                shard
                    .topics
                    .install(topic, snapshot.epoch.clone(), snapshot.last_seq, clock);
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
        }))
    }

    fn shard(&self, topic: &str) -> &Mutex<TopicShard> {
        &self.shards[self.shard_hasher.hash_one(topic) as usize % self.shards.len()]
    }

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
            if state.moved
                && shard
                    .topics
                    .is_idle(topic, self.idle_long_enough(&shard.history, clock))
            {
                // A copy as good as forgotten: the sweep takes it at its next pass. (The
                // sequencing owner's own state answers until then: it may still go on.)
                return;
            }
            let replay = match from {
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
            candidates.push(TopicReplay {
                topic: topic.clone(),
                epoch: state.epoch.clone(),
                last_seq: state.last_seq,
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

    /// Trims every topic's history by age and forgets the topics gone quiet (see
    /// [`Self::sweep_at`]); `claimed` are topics a claim is under way for on this node.
    pub fn expire_history(&self, claimed: &[Arc<str>]) -> usize {
        self.sweep_at(now_ms(), self.clock_ms(), claimed)
    }

    /// Trims every topic's history by age as of `now_ms` (wall clock, the events' `ts`),
    /// then forgets each topic quiet, as of `clock_ms` ([`Self::clock_ms`]), for
    /// `topic_idle_forget` and for its history's `max_age` (so nothing is retained any
    /// more), with no event waiting for replicas, and not in `claimed`. Its epoch, last
    /// `seq`, history record and replica bookkeeping go; returns how many were forgotten.
    ///
    /// This bounds the node's topic bookkeeping to the topics active within that time. The
    /// gap guarantee holds across it: when nobody knows a topic any more, its next owner
    /// starts a new epoch, and a cursor of the old one gets `epoch_changed` (on a resume, or
    /// through the resync of a live subscription that sees the new epoch). Every node applies
    /// the same rule to its own last activity, and stale knowledge of a topic is never more
    /// recent than the newest, so once the newest is forgotten no older position can be
    /// continued: every access that hands on or takes up knowledge a node is not sequencing
    /// with ([`Self::topic_snapshot`], [`Self::install_topic`], replays) forgets a topic that
    /// has been quiet long enough first, without waiting for the sweep. Only the sequencing
    /// owner may go on with a quiet topic until the sweep comes (sequencing, hand-over): its
    /// knowledge is the newest there is.
    pub fn sweep_at(&self, now_ms: i64, clock_ms: i64, claimed: &[Arc<str>]) -> usize {
        let mut forgotten = 0;
        for shard in self.shards.iter() {
            let mut guard = shard.lock();
            let shard = &mut *guard;
            shard.history.expire(now_ms);
            let gone = {
                let idle = self.idle_long_enough(&shard.history, clock_ms);
                shard.topics.forget_idle(|topic, last_active| {
                    idle(topic, last_active) && !claimed.iter().any(|c| &**c == topic)
                })
            };
            shard.history.forget(&gone);
            forgotten += gone.len();
        }
        if forgotten > 0 {
            tracing::debug!(forgotten, "forgot idle topics");
        }
        forgotten
    }

    /// The clock topics' quiet time is measured on: ms since this broker was made.
    pub fn clock_ms(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// Whether a topic last active at a time (on [`Self::clock_ms`]) has been quiet long
    /// enough, as of `clock_ms`, to be forgotten: for `topic_idle_forget` and, when it keeps
    /// events at all, for its retention's `max_age`, so that they have expired too. Time
    /// alone decides (not whether events are left, which hangs on the owners' clocks), so
    /// every node forgets its knowledge of a topic in the order it gained it.
    fn idle_long_enough<'h>(
        &self,
        history: &'h HistoryStore,
        clock_ms: i64,
    ) -> impl Fn(&str, i64) -> bool + 'h {
        let idle = self.topic_idle_forget;
        move |topic, last_active_ms| {
            let policy = history.policy(topic);
            let quiet = if policy.max_events == 0 {
                idle
            } else {
                idle.max(policy.max_age)
            };
            let quiet_ms = i64::try_from(quiet.as_millis()).unwrap_or(i64::MAX);
            clock_ms.saturating_sub(last_active_ms) >= quiet_ms
        }
    }

    /// Forgets `topic` now if it has been quiet long enough (see [`Self::sweep_at`]).
    fn forget_if_idle(&self, shard: &mut TopicShard, topic: &str, clock_ms: i64) -> bool {
        if !shard
            .topics
            .is_idle(topic, self.idle_long_enough(&shard.history, clock_ms))
        {
            return false;
        }
        shard.topics.remove(topic);
        shard.history.forget_one(topic);
        true
    }

    /// Topics this node holds state for (sequenced here, or kept as a replica's copy).
    pub fn topics_known(&self) -> usize {
        self.shards.iter().map(|s| s.lock().topics.len()).sum()
    }

    /// (topics with history, events retained).
    pub fn history_size(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(t, e), shard| {
            let shard = shard.lock();
            (t + shard.history.topics(), e + shard.history.events())
        })
    }

    /// Queues `event` to every matching local subscription and peer; returns how many
    /// subscriptions and peers it was queued to.
    fn fan_out(&self, event: &Arc<Event>) -> usize {
        let index = self.index.read();
        let remote = self.remote.read();
        let mut deliveries = 0;
        let mut local_groups = Vec::new();
        index.for_each_match(&event.topic, |m| match m {
            Match::Subscriber(Subscriber(sub)) => {
                deliveries += usize::from(self.offer_plain(sub, event));
            }
            Match::Group(group) => local_groups.push(group),
        });
        if remote.is_empty() {
            for group in local_groups {
                if self.offer_to_group(group, event, false, None, true, None) {
                    deliveries += 1;
                } else {
                    self.stats
                        .group_deliveries_lost
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            return deliveries;
        }
        let mut forwards = Forwards::new();
        let mut remote_groups = Vec::new();
        remote.for_each_match(&event.topic, |m| match m {
            Match::Subscriber(r) => forward_entry(&mut forwards, &r.link).1 = true,
            Match::Group(group) => remote_groups.push(group),
        });
        for group in local_groups {
            let pattern = group.members().first().map(|m| m.0.pattern.clone());
            let same_remote = remote_groups.iter().position(|r| {
                r.name() == group.name()
                    && r.members().first().map(|m| &m.interest.pattern) == pattern.as_ref()
            });
            let remote_group = same_remote.map(|i| remote_groups.swap_remove(i));
            deliveries += self.place_group_event(event, Some(group), remote_group, &mut forwards);
        }
        for remote_group in remote_groups {
            deliveries += self.place_group_event(event, None, Some(remote_group), &mut forwards);
        }
        let mut refused = Vec::new();
        for (link, plain, groups) in forwards {
            let interests: Vec<Interest> = groups.iter().map(|(i, _)| i.clone()).collect();
            if self.send_forward(&link, event, plain, groups, false, 0) {
                deliveries += 1;
            } else {
                refused.extend(interests.into_iter().map(|i| (i, link.name.clone())));
            }
        }
        drop((index, remote));
        // The queue-group shares of a peer whose queue was full go to another member.
        for (interest, peer) in refused {
            self.place_again(event, &interest, Some(&peer), 0);
        }
        deliveries
    }

    /// Queues a forward; its queue-group entries are tracked until the peer settles them.
    /// When the peer's queue is full nothing is queued, the entries are forgotten again and
    /// false is returned: placing them elsewhere is the caller's business. This never places
    /// anything itself, so no chain of full queues can make it recurse.
    fn send_forward(
        &self,
        link: &Arc<PeerLink>,
        event: &Arc<Event>,
        plain: bool,
        groups: Vec<(Interest, u64)>,
        redelivered: bool,
        bounces: u32,
    ) -> bool {
        {
            let mut placed = self.placed_on_peers.lock();
            for (interest, token) in &groups {
                placed.insert(
                    *token,
                    PlacedOnPeer {
                        peer: link.name.clone(),
                        event: event.clone(),
                        interest: interest.clone(),
                        bounces,
                    },
                );
            }
        }
        let tokens: Vec<u64> = groups.iter().map(|(_, t)| *t).collect();
        let forward = PeerMessage::Forward {
            event: event.clone(),
            plain,
            groups,
            redelivered,
        };
        if link.offer_event(forward) {
            return true;
        }
        let mut placed = self.placed_on_peers.lock();
        for token in tokens {
            placed.remove(&token);
        }
        false
    }

    fn new_token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    /// A peer reports a queue-group event this node placed there: acknowledged by a member,
    /// or not placeable there (then it goes to another member, marked redelivered).
    pub fn settle_on_peer(&self, peer: &str, token: u64, acked: bool) {
        let placed = {
            let mut placed = self.placed_on_peers.lock();
            match placed.get(&token) {
                Some(p) if &*p.peer == peer => placed.remove(&token),
                _ => None,
            }
        };
        if let Some(placed) = placed.filter(|_| !acked) {
            self.place_again(
                &placed.event,
                &placed.interest,
                Some(peer),
                placed.bounces + 1,
            );
        }
    }

    /// Places a queue-group event again, anywhere but on `not_on` unless it is the only node
    /// left with members. `bounces` counts how often peers gave it back: an event that no
    /// member anywhere has room for would otherwise travel between nodes for as long as they
    /// stay full. Tries each candidate once, in a loop: nothing here recurses.
    ///
    /// Must not be called with the index or the remote index locked (it reads both).
    fn place_again(
        &self,
        event: &Arc<Event>,
        interest: &Interest,
        not_on: Option<&str>,
        bounces: u32,
    ) {
        let Some(name) = interest.group.as_deref() else {
            return;
        };
        let index = self.index.read();
        let remote = self.remote.read();
        let local = index.group(&interest.pattern, name);
        if local.is_some_and(|g| self.offer_to_group(g, event, true, None, false, None)) {
            return;
        }
        if bounces <= MAX_GROUP_BOUNCES
            && let Some(group) = remote.group(&interest.pattern, name)
        {
            // Another node first; the node it came back from only when it is the only one
            // left (its member may take it on a later try).
            let mut members: Vec<&RemoteInterest> = group.round_robin().collect();
            members.sort_by_key(|m| not_on == Some(&*m.link.name));
            for member in members {
                let token = self.new_token();
                let groups = vec![(interest.clone(), token)];
                if self.send_forward(&member.link, event, false, groups, true, bounces) {
                    return;
                }
            }
        }
        drop((index, remote));
        self.group_event_lost(event, name);
    }

    /// Counts a queue-group event that no member anywhere could take, with a log line at
    /// most once a second (one per event would flood the log under exactly the load that
    /// causes it).
    fn group_event_lost(&self, event: &Event, group: &str) {
        self.stats
            .group_deliveries_lost
            .fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.lost_log.allow() {
            tracing::warn!(topic = %event.topic, seq = event.seq, group, suppressed, "queue-group event found no member able to take it (`suppressed` more since the last line)");
        }
    }

    fn offer_plain(&self, sub: &Arc<Subscription>, event: &Arc<Event>) -> bool {
        let item = Outbound::Event {
            sub: sub.clone(),
            event: event.clone(),
            delivery: None,
        };
        match sub.outbox.offer(item) {
            Offer::Queued => true,
            Offer::Full => {
                sub.outbox.mark_overflowed();
                false
            }
            Offer::AtLimit | Offer::Refused => false,
        }
    }

    /// Picks the node that delivers `event` to a queue group present here (`local`), on
    /// peers (`remote`), or both: round-robin over the nodes. A peer's share is added to its
    /// forward; returns 1 if a local member took it.
    fn place_group_event(
        &self,
        event: &Arc<Event>,
        local: Option<&QueueGroup<Subscriber>>,
        remote: Option<&QueueGroup<RemoteInterest>>,
        forwards: &mut Forwards,
    ) -> usize {
        let remote_members = remote.map_or(&[][..], QueueGroup::members);
        let here = usize::from(local.is_some());
        let candidates = here + remote_members.len();
        if candidates == 0 {
            return 0;
        }
        let start = self.group_turn.fetch_add(1, Ordering::Relaxed) % candidates;
        for i in 0..candidates {
            let choice = (start + i) % candidates;
            match (local, choice.checked_sub(here)) {
                (Some(group), None) => {
                    if self.offer_to_group(
                        group,
                        event,
                        false,
                        None,
                        remote_members.is_empty(),
                        None,
                    ) {
                        return 1;
                    }
                }
                (_, Some(r)) => {
                    let member = &remote_members[r];
                    let token = self.new_token();
                    forward_entry(forwards, &member.link)
                        .2
                        .push((member.interest.clone(), token));
                    return 0;
                }
                (None, None) => {}
            }
        }
        self.stats
            .group_deliveries_lost
            .fetch_add(1, Ordering::Relaxed);
        0
    }

    /// Delivers an event a peer forwarded: to matching plain subscriptions if `plain`, and to
    /// one local member of each listed queue group. Never forwarded again: the mesh is full.
    pub fn deliver_forwarded(
        &self,
        event: &Arc<Event>,
        plain: bool,
        groups: &[(Interest, u64)],
        from_peer: &Arc<str>,
        redelivered: bool,
    ) -> Vec<u64> {
        self.stats.events_from_peers.fetch_add(1, Ordering::Relaxed);
        let index = self.index.read();
        if plain {
            index.for_each_match(&event.topic, |m| {
                if let Match::Subscriber(Subscriber(sub)) = m {
                    self.offer_plain(sub, event);
                }
            });
        }
        let mut not_placed = Vec::new();
        for (interest, token) in groups {
            let Some(name) = interest.group.as_deref() else {
                continue;
            };
            let origin = (*token != 0).then(|| {
                Arc::new(GroupOrigin {
                    peer: from_peer.clone(),
                    token: *token,
                })
            });
            let placed = index.group(&interest.pattern, name).is_some_and(|group| {
                self.offer_to_group(group, event, redelivered, None, false, origin)
            });
            if !placed {
                tracing::debug!(topic = %event.topic, group = name, "forwarded queue-group event found no member here");
                not_placed.push(*token);
            }
        }
        not_placed
    }

    /// Hands a queue-group event that its member did not acknowledge (timeout, unsub,
    /// disconnect) to another member: another one here, else — for an event this node placed
    /// itself — one on a peer; an event a peer placed here goes back to that peer to place.
    /// Only when nobody else can, the same member gets it again if still subscribed.
    pub fn redeliver(
        &self,
        from: &Arc<Subscription>,
        event: &Arc<Event>,
        origin: Option<Arc<GroupOrigin>>,
    ) -> Redelivery {
        let Some(name) = from.group.as_deref() else {
            return Redelivery::Lost;
        };
        let interest = Interest {
            pattern: from.pattern.clone(),
            group: from.group.clone(),
        };
        let index = self.index.read();
        let remote = self.remote.read();
        let local = index.group(&from.pattern, name);
        let skip = Some(from.outbox.connection);
        if local.is_some_and(|g| self.offer_to_group(g, event, true, skip, false, origin.clone())) {
            return Redelivery::Placed;
        }
        if let Some(origin) = origin {
            return Redelivery::ReturnToOrigin(origin);
        }
        if let Some(group) = remote.group(&from.pattern, name) {
            for member in group.round_robin() {
                let groups = vec![(interest.clone(), self.new_token())];
                if self.send_forward(&member.link, event, false, groups, true, 0) {
                    return Redelivery::Placed;
                }
            }
        }
        // Nobody else: the same member gets another chance, if it is still subscribed.
        if from.is_active() && matches!(self.offer_delivery(from, event, true, None), Offer::Queued)
        {
            return Redelivery::Placed;
        }
        self.stats
            .group_deliveries_lost
            .fetch_add(1, Ordering::Relaxed);
        Redelivery::Lost
    }

    /// Round-robin over the group, skipping members whose queue is full and any member on
    /// `skip_connection`.
    fn offer_to_group(
        &self,
        group: &QueueGroup<Subscriber>,
        event: &Arc<Event>,
        redelivered: bool,
        skip_connection: Option<u64>,
        mark_slow_when_full: bool,
        origin: Option<Arc<GroupOrigin>>,
    ) -> bool {
        let mut first_full = None;
        for Subscriber(member) in group.round_robin() {
            if skip_connection == Some(member.outbox.connection) {
                continue;
            }
            match self.offer_delivery(member, event, redelivered, origin.clone()) {
                Offer::Queued => return true,
                Offer::Full => {
                    first_full.get_or_insert(member);
                }
                Offer::AtLimit | Offer::Refused => {}
            }
        }
        if let Some(member) = first_full.filter(|_| mark_slow_when_full) {
            // Every member is behind and no other node can take the event: the one whose
            // turn it was is the slow consumer.
            member.outbox.mark_overflowed();
            if let Some(suppressed) = self.full_group_log.allow() {
                tracing::warn!(
                    topic = %event.topic,
                    seq = event.seq,
                    group = %group.name(),
                    suppressed,
                    "every queue-group member's buffer is full"
                );
            }
        }
        false
    }

    fn offer_delivery(
        &self,
        member: &Arc<Subscription>,
        event: &Arc<Event>,
        redelivered: bool,
        origin: Option<Arc<GroupOrigin>>,
    ) -> Offer {
        // Counted before it is queued, so that two publishers cannot both take the last slot.
        let reserved = member
            .unacked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < member.max_unacked).then_some(n + 1)
            });
        if reserved.is_err() {
            return Offer::AtLimit;
        }
        let delivery = Delivery {
            id: self.next_delivery.fetch_add(1, Ordering::Relaxed),
            redelivered,
            origin,
        };
        let offer = member.outbox.offer(Outbound::Event {
            sub: member.clone(),
            event: event.clone(),
            delivery: Some(delivery),
        });
        if !matches!(offer, Offer::Queued) {
            member.delivery_settled();
        }
        offer
    }
}

/// Milliseconds since the Unix epoch, the `ts` of events.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
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

mod listing;

#[cfg(test)]
mod forget_tests;

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn subscription(
        broker: &Broker,
        id: &str,
        pattern: &str,
        group: Option<&str>,
        outbox: &Arc<Outbox>,
    ) -> Arc<Subscription> {
        let sub = Arc::new(Subscription::new(
            id.into(),
            pattern.into(),
            group.map(Into::into),
            outbox.clone(),
        ));
        broker.subscribe(sub.clone());
        sub
    }

    fn json(text: &'static str) -> Payload {
        Payload::Json(Bytes::from_static(text.as_bytes()))
    }

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

    fn drain(outbox: &Outbox) -> Vec<(String, u64, Option<Delivery>)> {
        let mut items = Vec::new();
        outbox.take(usize::MAX, &mut items);
        items
            .into_iter()
            .filter_map(|item| match item {
                Outbound::Event {
                    sub,
                    event,
                    delivery,
                } => Some((sub.id.to_string(), event.seq, delivery)),
                Outbound::Reply(_) => None,
            })
            .collect()
    }

    #[test]
    fn an_event_whose_replica_left_before_storing_it_is_never_delivered_nor_renumbered() {
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

    #[test]
    fn publish_reaches_matching_subscriptions_in_order() {
        let broker = Broker::new(Retention::default());
        let outbox = Outbox::new(1, 16);
        subscription(&broker, "exact", "a.b", None, &outbox);
        subscription(&broker, "wild", "a.*", None, &outbox);
        subscription(&broker, "other", "c", None, &outbox);
        assert_eq!(broker.publish("a.b", json("1")).seq, 1);
        let receipt = broker.publish("a.b", json("2"));
        assert_eq!(receipt.seq, 2);
        assert_eq!(broker.publish("a.c", json("3")).seq, 1);
        let got = drain(&outbox);
        let seqs =
            |id: &str| -> Vec<u64> { got.iter().filter(|g| g.0 == id).map(|g| g.1).collect() };
        assert_eq!(seqs("exact"), vec![1, 2]);
        assert_eq!(seqs("wild"), vec![1, 2, 1]);
        assert!(seqs("other").is_empty());
    }

    #[test]
    fn full_queue_marks_only_that_connection() {
        let broker = Broker::new(Retention::default());
        let slow = Outbox::new(1, 2);
        let fast = Outbox::new(2, 100);
        subscription(&broker, "s", "t", None, &slow);
        subscription(&broker, "f", "t", None, &fast);
        for _ in 0..5 {
            broker.publish("t", json("0"));
        }
        assert!(slow.has_overflowed());
        assert!(!fast.has_overflowed());
        assert_eq!(drain(&fast).len(), 5);
    }

    #[test]
    fn queue_group_gets_one_delivery_per_event_and_skips_full_members() {
        let broker = Broker::new(Retention::default());
        let a = Outbox::new(1, 1);
        let b = Outbox::new(2, 100);
        subscription(&broker, "qa", "jobs", Some("w"), &a);
        subscription(&broker, "qb", "jobs", Some("w"), &b);
        for _ in 0..10 {
            broker.publish("jobs", json("0"));
        }
        let (got_a, got_b) = (drain(&a), drain(&b));
        assert_eq!(got_a.len() + got_b.len(), 10, "each event once");
        assert_eq!(got_a.len(), 1, "a full member is skipped, not disconnected");
        assert!(!a.has_overflowed());
        assert!(
            got_b
                .iter()
                .all(|g| g.2.as_ref().is_some_and(|d| !d.redelivered))
        );
    }

    /// The remote crash of issue 12: a queue-group member on a peer whose queue is full made
    /// `send_forward` → `settle_on_peer` → `place_again` → `send_forward` recurse until the
    /// stack overflowed. Now the event is tried on each candidate once and counted as lost.
    #[test]
    fn a_queue_group_event_for_a_peer_with_a_full_queue_is_tried_once_not_recursively() {
        let broker = Broker::new(Retention::default());
        let (peer, _queues) = PeerLink::new("p", 1, 1);
        broker.apply_peer_interest(
            &peer,
            Some(vec![Interest {
                pattern: "jobs".into(),
                group: Some("w".into()),
            }]),
            Vec::new(),
            Vec::new(),
        );
        let filler = Arc::new(Event::new("x".into(), "e".into(), 1, 0, json("0")));
        assert!(peer.offer_event(PeerMessage::Replicate(filler)));
        for _ in 0..1000 {
            broker.publish("jobs", json("1"));
        }
        assert_eq!(
            broker.stats.group_deliveries_lost.load(Ordering::Relaxed),
            1000
        );
        assert!(
            broker.placed_on_peers.lock().is_empty(),
            "nothing left tracked"
        );

        // The ack-timeout path: a local member that never acks hands its event on.
        let outbox = Outbox::new(1, 16);
        let member = subscription(&broker, "q", "jobs", Some("w"), &outbox);
        let event = Arc::new(Event::new("jobs".into(), "e".into(), 9, 0, json("0")));
        assert_eq!(
            broker.redeliver(&member, &event, None),
            Redelivery::Placed,
            "the same member gets it again when nobody else can"
        );
    }

    #[test]
    fn a_queue_group_event_peers_keep_giving_back_stops_circling() {
        let broker = Broker::new(Retention::default());
        let (peer, mut queues) = PeerLink::new("p", 1, 1024);
        broker.apply_peer_interest(
            &peer,
            Some(vec![Interest {
                pattern: "jobs".into(),
                group: Some("w".into()),
            }]),
            Vec::new(),
            Vec::new(),
        );
        broker.publish("jobs", json("1"));
        let mut bounces = 0;
        // The peer's member never has room: it gives every forward back at once.
        while let Ok(PeerMessage::Forward { groups, .. }) = queues.events.try_recv() {
            for (_, token) in groups {
                broker.settle_on_peer("p", token, false);
            }
            bounces += 1;
            assert!(bounces < 100, "the event circles without end");
        }
        assert_eq!(bounces, MAX_GROUP_BOUNCES as usize + 1);
        assert_eq!(
            broker.stats.group_deliveries_lost.load(Ordering::Relaxed),
            1
        );
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

    #[test]
    fn redelivery_prefers_another_member() {
        let broker = Broker::new(Retention::default());
        let a = Outbox::new(1, 100);
        let b = Outbox::new(2, 100);
        let qa = subscription(&broker, "qa", "jobs.*", Some("w"), &a);
        subscription(&broker, "qb", "jobs.*", Some("w"), &b);
        subscription(&broker, "other-pattern", "jobs.>", Some("w"), &a);
        let event = Arc::new(Event::new("jobs.x".into(), "e".into(), 7, 0, json("0")));
        assert_eq!(broker.redeliver(&qa, &event, None), Redelivery::Placed);
        assert!(drain(&a).is_empty());
        let got = drain(&b);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, 7);
        assert!(got[0].2.as_ref().unwrap().redelivered);
    }
}
