//! Idempotent publishing: the publish ids a topic's owner (and each of its replicas)
//! remembers for `dedupe_window`, so that a publish sent again with the same id gets the
//! position of the first instead of becoming a second event.
//!
//! Plain data without clocks: callers pass the time (the broker's monotonic clock, in ms).
//! One [`DedupeStore`] per broker shard, all sharing one [`DedupeBudget`] (setting
//! `dedupe_max_bytes`). Ids are kept per topic, and in the order they were remembered, per
//! store: expiry pops from the front. Over the budget, the store remembering a new id forgets
//! its own oldest ids early (counted), so the ids of a busy topic cannot crowd out memory;
//! an id still waiting for its replicas is never forgotten early (a publish waits on it).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use foldhash::fast::RandomState;

/// What one remembered id counts against [`DedupeBudget`]: the id and topic name, and a
/// fixed share for the entry, its place in the expiry queue and the maps' slack.
pub fn remembered_bytes(topic: &str, id: &PublishId) -> usize {
    const ENTRY_OVERHEAD: usize = 160;
    topic.len() + id.0.len() + ENTRY_OVERHEAD
}

/// How long ids a node gave the publishes it forwards are remembered at most: they only
/// guard the node's own retries after a lost link (within its publish timeout, across a
/// failover), so they need not take memory for the whole `dedupe_window`.
pub const NODE_ID_WINDOW_MS: i64 = 30_000;

/// Longest id accepted from a peer, tag included: peers check their clients' ids against
/// `max_id_bytes` (at most 4096) already, and a node's own ids are shorter.
pub const MAX_PEER_ID_BYTES: usize = 4096 + 2;

/// A publish's idempotency key: the id a client gave its `pub`, or one a node gave a publish
/// it forwards to the owner (so that sending it again after a lost link cannot number it
/// twice). The two are kept apart by a tag, so no client id can collide with a node's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PublishId(Arc<str>);

impl PublishId {
    /// A client's id (at most `max_id_bytes`, checked by the caller).
    pub fn client(id: &str) -> Self {
        Self(format!("c:{id}").into())
    }

    /// An id this node gives a publish: its name, a number random per process (so a
    /// restarted node never repeats its ids) and a counter.
    pub fn node(name: &str, instance: u64, count: u64) -> Self {
        Self(format!("n:{name}/{instance:x}/{count}").into())
    }

    /// The id as peers send it: the tag, then the id.
    pub fn wire(&self) -> &str {
        &self.0
    }

    /// An id a peer sent; `None` when empty, untagged or too long.
    pub fn from_wire(wire: &str) -> Option<Self> {
        let tagged = wire.starts_with("c:") || wire.starts_with("n:");
        (tagged && wire.len() > 2 && wire.len() <= MAX_PEER_ID_BYTES).then(|| Self(wire.into()))
    }

    /// The client's own id, when a client chose it.
    pub fn client_id(&self) -> Option<&str> {
        self.0.strip_prefix("c:")
    }

    /// 0 for a client's id, 1 for a node's: which window and expiry queue it has.
    fn kind(&self) -> usize {
        usize::from(self.0.starts_with("n:"))
    }
}

/// Where an event with a remembered id was numbered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: Arc<str>,
    pub seq: u64,
}

/// An id as it travels to a replica or a new owner: where its event is, and how long ago it
/// was remembered (clocks differ between nodes; ages do not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RememberedId {
    pub id: PublishId,
    pub position: Position,
    pub age_ms: u64,
}

/// What a publish's id says about it.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// Its event is stored on the replicas: answer with its position.
    Stored(Position),
    /// Its event is numbered and waits for its replicas: wait with it.
    Pending(Position),
}

/// The node-wide bound on remembered ids (setting `dedupe_max_bytes`), shared by every
/// shard's store.
#[derive(Debug)]
pub struct DedupeBudget {
    limit: usize,
    used: AtomicUsize,
    /// Ids forgotten before their window ended, to stay under the bound.
    forgotten_early: AtomicU64,
}

impl DedupeBudget {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
            forgotten_early: AtomicU64::new(0),
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn forgotten_early(&self) -> u64 {
        self.forgotten_early.load(Ordering::Relaxed)
    }

    fn over(&self) -> bool {
        self.used() > self.limit
    }
}

#[derive(Debug)]
struct Entry<W> {
    position: Position,
    remembered_ms: i64,
    /// `Some` while the event waits for its replicas: the publishes of the same id that wait
    /// with it, told when it is stored (or dropped when it fails).
    waiting: Option<Vec<W>>,
}

/// The ids remembered for the topics of one shard. `W` is what a duplicate of a publish
/// still in flight leaves to be told when it is stored.
#[derive(Debug)]
pub struct DedupeStore<W> {
    /// How long clients' ids and nodes' ids are remembered ([`PublishId::kind`]).
    windows: [i64; 2],
    topics: HashMap<Arc<str>, HashMap<PublishId, Entry<W>, RandomState>, RandomState>,
    /// Per kind of id: (remembered at, topic, id), oldest first; an id remembered again or
    /// forgotten leaves a stale entry here, skipped when it comes up (its time no longer
    /// matches).
    orders: [VecDeque<(i64, Arc<str>, PublishId)>; 2],
    budget: Arc<DedupeBudget>,
    count: usize,
}

impl<W> DedupeStore<W> {
    /// A store remembering clients' ids for `window_ms` (0: never) and nodes' for at most
    /// [`NODE_ID_WINDOW_MS`], counted against `budget`.
    pub fn new(window_ms: i64, budget: Arc<DedupeBudget>) -> Self {
        Self {
            windows: [window_ms, window_ms.min(NODE_ID_WINDOW_MS)],
            topics: HashMap::default(),
            orders: [VecDeque::new(), VecDeque::new()],
            budget,
            count: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.windows[0] > 0
    }

    /// Ids remembered here now.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn live(&self, id: &PublishId, remembered_ms: i64, now_ms: i64) -> bool {
        now_ms.saturating_sub(remembered_ms) < self.windows[id.kind()]
    }

    /// What `id` says about a publish on `topic` now, if it is remembered within the window.
    pub fn seen(&self, topic: &str, id: &PublishId, now_ms: i64) -> Option<Seen> {
        let entry = self.topics.get(topic)?.get(id)?;
        if !self.live(id, entry.remembered_ms, now_ms) {
            return None;
        }
        Some(match entry.waiting {
            Some(_) => Seen::Pending(entry.position.clone()),
            None => Seen::Stored(entry.position.clone()),
        })
    }

    /// Leaves `waiter` with the event of `id`, still waiting for its replicas; gives it back
    /// if that event is not pending (any more).
    pub fn wait(&mut self, topic: &str, id: &PublishId, waiter: W) -> Result<(), W> {
        match self
            .topics
            .get_mut(topic)
            .and_then(|t| t.get_mut(id))
            .and_then(|e| e.waiting.as_mut())
        {
            Some(waiting) => {
                waiting.push(waiter);
                Ok(())
            }
            None => Err(waiter),
        }
    }

    /// Remembers `id` for an event just numbered here, which waits for its replicas.
    pub fn remember_pending(
        &mut self,
        topic: &Arc<str>,
        id: PublishId,
        position: Position,
        now_ms: i64,
    ) {
        self.insert(topic, id, position, now_ms, Some(Vec::new()), true);
    }

    /// Remembers `id` for an event stored elsewhere (a replica's copy, a claimed topic's
    /// ids), as of `remembered_ms`; an id already remembered keeps what it has.
    pub fn remember_stored(
        &mut self,
        topic: &Arc<str>,
        id: PublishId,
        position: Position,
        remembered_ms: i64,
    ) {
        self.insert(topic, id, position, remembered_ms, None, false);
    }

    fn insert(
        &mut self,
        topic: &Arc<str>,
        id: PublishId,
        position: Position,
        remembered_ms: i64,
        waiting: Option<Vec<W>>,
        replace: bool,
    ) {
        if !self.enabled() {
            return;
        }
        let window = self.windows[id.kind()];
        let ids = self.topics.entry(topic.clone()).or_default();
        if let Some(old) = ids.get(&id)
            && !replace
            && remembered_ms.saturating_sub(old.remembered_ms) < window
        {
            return;
        }
        let bytes = remembered_bytes(topic, &id);
        let entry = Entry {
            position,
            remembered_ms,
            waiting,
        };
        if ids.insert(id.clone(), entry).is_none() {
            self.count += 1;
            self.budget.used.fetch_add(bytes, Ordering::Relaxed);
        }
        self.orders[id.kind()].push_back((remembered_ms, topic.clone(), id));
        while self.budget.over() && self.forget_oldest() {
            self.budget.forgotten_early.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets this store's oldest id (of either kind), unless it waits for its replicas;
    /// false when there is nothing it may forget.
    fn forget_oldest(&mut self) -> bool {
        loop {
            for kind in 0..2 {
                self.skip_stale(kind);
            }
            let fronts = self
                .orders
                .each_ref()
                .map(|o| o.front().map(|(at, ..)| *at));
            let kind = match fronts {
                [Some(a), Some(b)] => usize::from(b < a),
                [Some(_), None] => 0,
                [None, Some(_)] => 1,
                [None, None] => return false,
            };
            let (_, topic, id) = self.orders[kind].front().expect("front exists");
            if self
                .topics
                .get(topic)
                .and_then(|t| t.get(id))
                .is_some_and(|e| e.waiting.is_some())
            {
                return false;
            }
            let (_, topic, id) = self.orders[kind].pop_front().expect("front exists");
            if self.remove(&topic, &id).is_some() {
                return true;
            }
        }
    }

    /// Drops the front entries of an expiry queue that no longer name a remembered id.
    fn skip_stale(&mut self, kind: usize) {
        while let Some((at, topic, id)) = self.orders[kind].front() {
            let current = self
                .topics
                .get(topic)
                .and_then(|t| t.get(id))
                .is_some_and(|e| e.remembered_ms == *at);
            if current {
                return;
            }
            self.orders[kind].pop_front();
        }
    }

    fn remove(&mut self, topic: &str, id: &PublishId) -> Option<Entry<W>> {
        let ids = self.topics.get_mut(topic)?;
        let entry = ids.remove(id)?;
        if ids.is_empty() {
            self.topics.remove(topic);
        }
        self.count -= 1;
        self.budget
            .used
            .fetch_sub(remembered_bytes(topic, id), Ordering::Relaxed);
        Some(entry)
    }

    /// The event of `id` is stored on its replicas: returns the publishes that waited with it.
    pub fn stored(&mut self, topic: &str, id: &PublishId) -> Vec<W> {
        self.topics
            .get_mut(topic)
            .and_then(|t| t.get_mut(id))
            .and_then(|e| e.waiting.take())
            .unwrap_or_default()
    }

    /// The event of `id` at `position` failed (never stored, never delivered): `id` is
    /// forgotten, so the publish may be sent again; the publishes that waited with it are
    /// returned (dropping them tells them it failed).
    pub fn failed(&mut self, topic: &str, id: &PublishId, position: &Position) -> Vec<W> {
        let matches = self
            .topics
            .get(topic)
            .and_then(|t| t.get(id))
            .is_some_and(|e| e.position == *position);
        if !matches {
            return Vec::new();
        }
        self.remove(topic, id)
            .and_then(|e| e.waiting)
            .unwrap_or_default()
    }

    /// Forgets the ids remembered for longer than the window (those still waiting for their
    /// replicas stay until they are stored or fail).
    pub fn expire(&mut self, now_ms: i64) {
        for kind in 0..2 {
            while let Some((at, topic, id)) = self.orders[kind].front() {
                if now_ms.saturating_sub(*at) < self.windows[kind] {
                    break;
                }
                let current = self
                    .topics
                    .get(topic)
                    .and_then(|t| t.get(id))
                    .filter(|e| e.remembered_ms == *at);
                match current {
                    Some(entry) if entry.waiting.is_some() => break,
                    Some(_) => {
                        let (_, topic, id) = self.orders[kind].pop_front().expect("front exists");
                        self.remove(&topic, &id);
                    }
                    None => {
                        self.orders[kind].pop_front();
                    }
                }
            }
        }
    }

    /// The ids remembered for `topic` within the window, for a replica or a new owner.
    pub fn export(&self, topic: &str, now_ms: i64) -> Vec<RememberedId> {
        let Some(ids) = self.topics.get(topic) else {
            return Vec::new();
        };
        ids.iter()
            .filter(|(id, e)| self.live(id, e.remembered_ms, now_ms))
            .map(|(id, e)| RememberedId {
                id: id.clone(),
                position: e.position.clone(),
                age_ms: u64::try_from(now_ms.saturating_sub(e.remembered_ms)).unwrap_or(0),
            })
            .collect()
    }

    /// Takes ids another node remembered (see [`Self::export`]).
    pub fn import(&mut self, topic: &Arc<str>, ids: Vec<RememberedId>, now_ms: i64) {
        for remembered in ids {
            let age = i64::try_from(remembered.age_ms).unwrap_or(i64::MAX);
            if age >= self.windows[remembered.id.kind()] {
                continue;
            }
            self.remember_stored(
                topic,
                remembered.id,
                remembered.position,
                now_ms.saturating_sub(age),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: i64 = 120_000;

    fn position(seq: u64) -> Position {
        Position {
            epoch: "e".into(),
            seq,
        }
    }

    fn store(limit: usize) -> (DedupeStore<u32>, Arc<DedupeBudget>) {
        let budget = Arc::new(DedupeBudget::new(limit));
        (DedupeStore::new(WINDOW, budget.clone()), budget)
    }

    #[test]
    fn an_id_is_remembered_for_the_window_then_forgotten() {
        let (mut ids, budget) = store(1 << 20);
        let topic: Arc<str> = "t".into();
        let id = PublishId::client("a");
        ids.remember_pending(&topic, id.clone(), position(1), 1_000);
        assert_eq!(ids.seen("t", &id, 1_000), Some(Seen::Pending(position(1))));
        assert_eq!(ids.wait("t", &id, 7), Ok(()));
        assert_eq!(ids.stored("t", &id), vec![7]);
        assert_eq!(ids.seen("t", &id, 1_000), Some(Seen::Stored(position(1))));
        assert_eq!(ids.wait("t", &id, 8), Err(8), "stored: nothing to wait for");
        assert_eq!(ids.seen("u", &id, 1_000), None, "ids are per topic");
        assert_eq!(ids.seen("t", &PublishId::client("b"), 1_000), None);
        assert!(budget.used() > 0);
        let last = 1_000 + WINDOW - 1;
        assert!(ids.seen("t", &id, last).is_some());
        assert_eq!(ids.seen("t", &id, last + 1), None, "past the window");
        ids.expire(last + 1);
        assert!(ids.is_empty());
        assert_eq!(budget.used(), 0, "expired ids give their bytes back");
    }

    #[test]
    fn client_and_node_ids_never_collide() {
        let client = PublishId::client("n:x/1/1");
        let node = PublishId::node("x", 1, 1);
        assert_ne!(client, node);
        assert_eq!(client.client_id(), Some("n:x/1/1"));
        assert_eq!(node.client_id(), None);
        assert_eq!(PublishId::from_wire(client.wire()), Some(client));
        assert_eq!(PublishId::from_wire("x:untagged"), None);
        assert_eq!(PublishId::from_wire("c:"), None);
    }

    #[test]
    fn over_the_budget_the_oldest_ids_are_forgotten_early_and_counted() {
        let topic: Arc<str> = "t".into();
        let one = remembered_bytes("t", &PublishId::client("0000"));
        let (mut ids, budget) = store(10 * one);
        for n in 0..25 {
            let id = PublishId::client(&format!("{n:04}"));
            ids.remember_stored(&topic, id.clone(), position(n), n as i64);
            ids.stored("t", &id);
        }
        assert_eq!(ids.len(), 10, "bounded");
        assert!(budget.used() <= 10 * one);
        assert_eq!(budget.forgotten_early(), 15);
        assert_eq!(ids.seen("t", &PublishId::client("0014"), 30), None);
        assert!(ids.seen("t", &PublishId::client("0015"), 30).is_some());
        assert!(ids.seen("t", &PublishId::client("0024"), 30).is_some());
    }

    #[test]
    fn an_id_waiting_for_its_replicas_is_not_forgotten_early() {
        let topic: Arc<str> = "t".into();
        let one = remembered_bytes("t", &PublishId::client("0000"));
        let (mut ids, budget) = store(2 * one);
        ids.remember_pending(&topic, PublishId::client("0000"), position(1), 0);
        for n in 1..5 {
            ids.remember_stored(
                &topic,
                PublishId::client(&format!("{n:04}")),
                position(n),
                n as i64,
            );
        }
        assert!(
            ids.seen("t", &PublishId::client("0000"), 5).is_some(),
            "a publish waits on it"
        );
        assert_eq!(budget.forgotten_early(), 0);
        assert_eq!(ids.len(), 5, "over the bound until it is stored");
        ids.stored("t", &PublishId::client("0000"));
        ids.remember_stored(&topic, PublishId::client("0005"), position(5), 6);
        assert_eq!(ids.len(), 2);
        assert_eq!(budget.forgotten_early(), 4);
    }

    #[test]
    fn a_failed_event_forgets_its_id_and_drops_its_waiters() {
        let (mut ids, budget) = store(1 << 20);
        let topic: Arc<str> = "t".into();
        let id = PublishId::client("a");
        ids.remember_pending(&topic, id.clone(), position(3), 0);
        ids.wait("t", &id, 1).unwrap();
        assert!(
            ids.failed("t", &id, &position(2)).is_empty(),
            "another position"
        );
        assert_eq!(ids.failed("t", &id, &position(3)), vec![1]);
        assert_eq!(ids.seen("t", &id, 0), None, "may be published again");
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn ids_travel_with_their_age_and_keep_their_window() {
        let topic: Arc<str> = "t".into();
        let (mut owner, _) = store(1 << 20);
        owner.remember_stored(&topic, PublishId::client("old"), position(1), 0);
        owner.remember_stored(&topic, PublishId::client("new"), position(2), 100_000);
        let exported = owner.export("t", 110_000);
        assert_eq!(exported.len(), 2);

        // A node whose clock reads otherwise: the ids keep their age there.
        let (mut replica, _) = store(1 << 20);
        replica.import(&topic, exported, 5_000_000);
        let old = PublishId::client("old");
        assert!(replica.seen("t", &old, 5_000_000 + 9_999).is_some());
        assert_eq!(replica.seen("t", &old, 5_000_000 + 10_000), None);
        assert!(
            replica
                .seen("t", &PublishId::client("new"), 5_000_000 + 100_000)
                .is_some()
        );
        // What the replica knew already stays.
        replica.remember_stored(&topic, PublishId::client("x"), position(9), 5_000_000);
        replica.import(
            &topic,
            vec![RememberedId {
                id: PublishId::client("x"),
                position: position(1),
                age_ms: 0,
            }],
            5_000_001,
        );
        assert_eq!(
            replica.seen("t", &PublishId::client("x"), 5_000_001),
            Some(Seen::Stored(position(9)))
        );
    }

    #[test]
    fn ids_a_node_gave_are_remembered_for_a_shorter_time() {
        let (mut ids, budget) = store(1 << 20);
        let topic: Arc<str> = "t".into();
        let node = PublishId::node("n1", 7, 1);
        ids.remember_stored(&topic, node.clone(), position(1), 0);
        ids.remember_stored(&topic, PublishId::client("a"), position(2), 0);
        assert!(ids.seen("t", &node, NODE_ID_WINDOW_MS - 1).is_some());
        assert_eq!(ids.seen("t", &node, NODE_ID_WINDOW_MS), None);
        ids.expire(NODE_ID_WINDOW_MS);
        assert_eq!(ids.len(), 1, "the client's id stays for its window");
        assert!(
            ids.seen("t", &PublishId::client("a"), NODE_ID_WINDOW_MS)
                .is_some()
        );
        ids.expire(WINDOW);
        assert!(ids.is_empty());
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn over_the_budget_the_oldest_of_either_kind_goes_first() {
        let topic: Arc<str> = "t".into();
        let one = remembered_bytes("t", &PublishId::client("0000"));
        let (mut ids, _) = store(2 * one);
        ids.remember_stored(&topic, PublishId::client("0000"), position(1), 0);
        ids.remember_stored(&topic, PublishId::node("n", 1, 1), position(2), 1);
        ids.remember_stored(&topic, PublishId::client("0002"), position(3), 2);
        assert_eq!(ids.seen("t", &PublishId::client("0000"), 3), None);
        assert!(ids.seen("t", &PublishId::client("0002"), 3).is_some());
    }

    #[test]
    fn a_zero_window_remembers_nothing() {
        let budget = Arc::new(DedupeBudget::new(1 << 20));
        let mut ids: DedupeStore<u32> = DedupeStore::new(0, budget.clone());
        let topic: Arc<str> = "t".into();
        ids.remember_pending(&topic, PublishId::client("a"), position(1), 0);
        assert_eq!(ids.seen("t", &PublishId::client("a"), 0), None);
        assert_eq!(budget.used(), 0);
    }
}
