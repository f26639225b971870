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

//!
//! The parts, one file each: `outbox.rs` (a connection's queue and its subscriptions),
//! `sequencing.rs` (numbering, replica storage, claiming and handing over topics),
//! `fan_out.rs` (queueing completed events to subscriptions and peers), `groups.rs`
//! (queue-group placement and redelivery), `replay.rs` (what a resume gets, page by page)
//! and `retention.rs` (history expiry and forgetting idle topics). This file holds the
//! broker itself and its interest tables: who is subscribed here, and what peers are
//! interested in.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};

use crate::cluster::link::{Interest, PeerLink, PeerMessage};
use crate::routing::SubscriptionIndex;
use crate::routing::dedupe::{DedupeBudget, DedupeStore};
use crate::routing::group_backlog::GroupBacklog;
use crate::routing::group_progress::{GroupProgress, PeerProgress};
use crate::routing::topic::validate_pattern;
use crate::routing::topics::TopicTable;
use crate::storage::{HistoryStore, MemoryHistory, Retention};

mod commits;
mod fan_out;
mod groups;
mod outbox;
mod progress;
#[cfg(feature = "disk")]
mod recovery;
mod replay;
mod retention;
mod sequencing;
mod syncing;
mod waiting;

use groups::PlacedOnPeer;
pub use groups::Redelivery;
pub use outbox::{Outbound, Outbox, Subscription, queued_bytes};
pub use replay::{ReplayPage, ResumeError, TopicReplay};
pub use sequencing::{PublishPermit, Receipt, Sequenced, StoredSignal, TopicSnapshot};
pub use syncing::AfterSync;

/// Sequence shards: enough that publishes of different topics rarely wait on each other.
const SEQUENCE_SHARDS: usize = 64;

#[derive(Debug, Clone)]
struct Subscriber(Arc<Subscription>);

impl PartialEq for Subscriber {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
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
    /// Events (or copies of a topic) this node's history refused to store.
    pub events_not_stored: AtomicU64,
    /// Events forwarded here by peers.
    pub events_from_peers: AtomicU64,
    /// Queue-group events dropped with no group left to tell: kept for a group that stayed
    /// without members past the history's `max_age`, or past every bound on gap records.
    pub group_deliveries_lost: AtomicU64,
    /// Queue-group events no member could take at once: kept until one can.
    pub group_events_kept: AtomicU64,
    /// Kept queue-group events placed on a member later.
    pub group_events_placed_late: AtomicU64,
    /// Kept queue-group events that reached the topic's history bound while waiting: named
    /// to the group as a gap.
    pub group_events_gapped: AtomicU64,
    /// Queue-group events waiting for a member now (as of the last placing pass).
    pub group_events_waiting: AtomicU64,
    /// Queue-group events placed again here because the node that placed them is gone.
    pub group_events_taken_over: AtomicU64,
    /// Subscriptions and peers each event was queued to when fanned out.
    pub fanout: crate::metrics::CountHistogram,
    /// Publishes whose id was remembered: answered with the first one's position, no new
    /// event.
    pub publish_duplicates: AtomicU64,
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
    /// Queue-group events waiting for a member, and groups without one (see `waiting.rs`).
    backlog: Mutex<GroupBacklog>,
    /// Per topic and queue group, what this node placed and no member acknowledged yet.
    progress: Mutex<GroupProgress>,
    /// The same, as other placing nodes last reported it (this node replicates the topics).
    peer_progress: Mutex<PeerProgress>,
    /// Set while the backlog holds anything: the placing pass looks at it only then.
    backlog_in_use: std::sync::atomic::AtomicBool,
    /// Set while the backlog remembers a group without members: fan-out looks for dormant
    /// groups only then (a backlog of busy groups costs it nothing).
    any_dormant: std::sync::atomic::AtomicBool,
    /// The retention policies: the bounds of what waits in the backlog, and how long a topic
    /// must be quiet to be forgotten (see `idle_long_enough`). The shards' stores hold clones.
    retention: Retention,
    /// Limits the log line for queue-group events that no member could take.
    lost_log: crate::limits::LogLimiter,
    /// A topic quiet for this long (and for its history's `max_age`) is forgotten (see
    /// [`Broker::sweep_at`]).
    topic_idle_forget: std::time::Duration,
    /// The clock topics' quiet time is measured on: monotonic, so that a wall clock set
    /// back or forth never makes a node forget a topic out of turn.
    started: std::time::Instant,
    /// While it fences this node (woken from a stall), queue-group events forwarded here
    /// are given back to the node that placed them rather than placed on a member here.
    stall_fence: std::sync::OnceLock<Arc<crate::cluster::fence::StallFence>>,
    /// Bounds the publish ids remembered across every shard (setting `dedupe_max_bytes`).
    dedupe_budget: Arc<DedupeBudget>,
    /// The disk log behind the shards' histories (`storage = "disk"`), reopened after a
    /// failure.
    #[cfg(feature = "disk")]
    disk: Option<recovery::DiskState>,
    /// The thread syncing appends for `fsync = "always"` (see `syncing.rs`), once started.
    syncer: std::sync::OnceLock<syncing::Syncer>,
    pub stats: BrokerStats,
}

/// The topics whose names hash to one shard: their sequence counters and history. A
/// publish holds its shard's lock from sequencing until the event is queued everywhere.
#[derive(Debug)]
struct TopicShard {
    topics: TopicTable<StoredSignal>,
    /// The shard's topic history, behind the storage seam (`crate::storage`): the broker
    /// never depends on which backend holds it.
    history: Box<dyn HistoryStore>,
    /// The publish ids remembered for these topics (setting `dedupe_window`).
    dedupe: DedupeStore<DuplicateWaiter>,
    /// Topics whose committed position moved since it was last announced to their replicas.
    commit_moved: std::collections::HashSet<Arc<str>>,
}

/// A publish sent again with the id of one still waiting for its replicas: told when that
/// one is stored (dropped when it fails), holding its share of the publish buffer until then.
#[derive(Debug)]
struct DuplicateWaiter {
    stored: tokio::sync::oneshot::Sender<()>,
    _permit: Option<PublishPermit>,
}

impl Broker {
    /// A broker that keeps history as `retention` says.
    pub fn new(retention: Retention) -> Self {
        let dedupe_budget = Arc::new(DedupeBudget::new(crate::config::DEFAULT_DEDUPE_MAX_BYTES));
        let dedupe_window = window_ms(crate::config::DEFAULT_DEDUPE_WINDOW);
        Self {
            index: RwLock::new(SubscriptionIndex::new()),
            remote: RwLock::new(SubscriptionIndex::new()),
            interest: Mutex::new(InterestTable::default()),
            backlog: Mutex::new(GroupBacklog::new(
                retention.budget.limit(),
                retention.default.max_age,
            )),
            backlog_in_use: std::sync::atomic::AtomicBool::new(false),
            any_dormant: std::sync::atomic::AtomicBool::new(false),
            progress: Mutex::new(GroupProgress::default()),
            peer_progress: Mutex::new(PeerProgress::default()),
            retention: retention.clone(),
            shards: (0..SEQUENCE_SHARDS)
                .map(|_| {
                    Mutex::new(TopicShard {
                        topics: TopicTable::default(),
                        history: Box::new(MemoryHistory::new(retention.clone())),
                        dedupe: DedupeStore::new(dedupe_window, dedupe_budget.clone()),
                        commit_moved: std::collections::HashSet::new(),
                    })
                })
                .collect(),
            shard_hasher: foldhash::fast::RandomState::default(),
            next_delivery: AtomicU64::new(1),
            group_turn: AtomicUsize::new(0),
            placed_on_peers: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            lost_log: crate::limits::LogLimiter::new(std::time::Duration::from_secs(1)),
            topic_idle_forget: crate::config::DEFAULT_TOPIC_IDLE_FORGET,
            started: std::time::Instant::now(),
            stall_fence: std::sync::OnceLock::new(),
            dedupe_budget,
            #[cfg(feature = "disk")]
            disk: None,
            syncer: std::sync::OnceLock::new(),
            stats: BrokerStats::default(),
        }
    }

    /// Replaces every shard's history with one `make` builds: the tests' way to put a store
    /// that fails in the broker's place.
    #[cfg(test)]
    pub(crate) fn with_history(self, make: impl Fn() -> Box<dyn HistoryStore>) -> Self {
        for shard in self.shards.iter() {
            shard.lock().history = make();
        }
        self
    }

    /// Gives the broker the node's stall fence (see [`crate::cluster::fence`]); once only.
    pub fn set_stall_fence(&self, fence: Arc<crate::cluster::fence::StallFence>) {
        let _ = self.stall_fence.set(fence);
    }

    /// True while the stall fence forbids placing queue-group events here.
    pub(crate) fn is_fenced(&self) -> bool {
        self.stall_fence.get().is_some_and(|f| f.is_fenced())
    }

    /// Remembers publish ids for `window` (0: not at all) within `max_bytes` across the
    /// node (settings `dedupe_window`, `dedupe_max_bytes`).
    #[must_use]
    pub fn with_dedupe(mut self, window: std::time::Duration, max_bytes: usize) -> Self {
        self.dedupe_budget = Arc::new(DedupeBudget::new(max_bytes));
        for shard in self.shards.iter_mut() {
            shard.get_mut().dedupe =
                DedupeStore::new(window_ms(window), self.dedupe_budget.clone());
        }
        self
    }

    /// (ids remembered, their bytes against `dedupe_max_bytes`, ids forgotten before their
    /// window ended to stay under it).
    pub fn dedupe_size(&self) -> (usize, usize, u64) {
        let ids = self.shards.iter().map(|s| s.lock().dedupe.len()).sum();
        (
            ids,
            self.dedupe_budget.used(),
            self.dedupe_budget.forgotten_early(),
        )
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
        let interest = Interest { pattern, group };
        let mut index = self.index.write();
        index.insert(
            &interest.pattern,
            interest.group.as_deref(),
            Subscriber(subscription),
        );
        self.note_member_arrived(&interest);
        drop(index);
        self.interest_changed(interest, true);
    }

    pub fn unsubscribe(&self, subscription: &Arc<Subscription>) -> bool {
        subscription.active.store(false, Ordering::Release);
        let mut index = self.index.write();
        let removed = index.remove(
            &subscription.pattern,
            subscription.group.as_deref(),
            &Subscriber(subscription.clone()),
        );
        if removed {
            let interest = Interest {
                pattern: subscription.pattern.clone(),
                group: subscription.group.clone(),
            };
            if interest.group.is_some() {
                self.note_member_gone(&index, &self.remote.read(), &interest);
            }
            drop(index);
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
        let index = self.index.read();
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
            self.note_member_gone(&index, &remote, &interest);
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
        // The lock order of fan-out: the subscription index, then the remote one.
        let index = self.index.read();
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
                self.note_member_gone(&index, &remote, &interest);
            }
        }
        for interest in added {
            if let Err(err) = validate_pattern(&interest.pattern, MAX_PEER_PATTERN_BYTES) {
                tracing::warn!(peer = %link.name, pattern = %interest.pattern, %err, "ignoring an invalid pattern from a peer");
                continue;
            }
            if known.insert(interest.clone()) {
                self.note_member_arrived(&interest);
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

    fn shard(&self, topic: &str) -> &Mutex<TopicShard> {
        &self.shards[self.shard_index(topic)]
    }

    fn shard_index(&self, topic: &str) -> usize {
        self.shard_hasher.hash_one(topic) as usize % self.shards.len()
    }
}

fn window_ms(window: std::time::Duration) -> i64 {
    i64::try_from(window.as_millis()).unwrap_or(i64::MAX)
}

/// Milliseconds since the Unix epoch, the `ts` of events.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

mod listing;

#[cfg(test)]
mod dedupe_tests;
#[cfg(test)]
mod forget_tests;
#[cfg(test)]
mod storage_failure_tests;
#[cfg(test)]
mod test_support;
