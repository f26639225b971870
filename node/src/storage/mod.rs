//! Topic history behind one interface: the events each topic retains, trimmed by the
//! retention bounds, and what a resuming subscriber gets from them.
//!
//! The broker holds one [`HistoryStore`] per topic shard, behind the shard's `Mutex`, and
//! calls it for exactly what it does with history: append a sequenced (or replicated) event,
//! replace a topic's history with a copy from its owner, drop events that failed at the
//! end, trim by age and for the node-wide byte budget, forget topics, read everything
//! retained / what follows a cursor / what came since a time, and report sizes for metrics.
//! Fan-out, queue groups and the cluster code never see a store, so a backend can change
//! without touching them. Backends: [`memory::MemoryHistory`] (events in RAM, today's only
//! one); a disk backend is the next step of issue 17 (docs/storage.md), and its durable
//! layer, [`disk::DiskLog`], is here, not wired in yet.
//!
//! Choices, and why:
//! - **Synchronous.** Every call is made under the shard lock, which is what keeps a
//!   topic's appends, fan-out and replays in sequence order. An async store would have to
//!   be awaited with the lock held or split that order; a disk backend batches its writes
//!   in memory (fjall's journal buffer) and syncs from a flusher of its own instead.
//! - **A trait object** (`Box<dyn HistoryStore>` per shard), not a type parameter. A
//!   generic would make `Broker<H>` and every type that holds a broker (the cluster, the
//!   front door, metrics, tests) generic too, for a saving of one indirect call per
//!   operation (a few ns, next to a call that already hashes a topic name, takes a lock,
//!   touches `Arc`s and often allocates; not measured separately: `make bench` before and
//!   after would show it). Should it ever show, only the shard's field type and the one
//!   place the shards are made change. The trait is `Send` so a shard's `Mutex` stays
//!   `Sync`.
//! - **Writes can fail** ([`StorageError`]); reads of the memory backend cannot, and the
//!   disk backend's read path is the next step. What a caller does when a write fails is
//!   not a local decision, so each write site in the broker says it: the owner gives the
//!   position back, remembers no publish id, sends no copy to a replica and answers the
//!   publisher `unavailable` (`Sequenced::Failed`); a replica refuses the event
//!   (`ReplicaRefusal::StorageFailed`, so its owner fails it too and nothing is
//!   acknowledged); a replica's whole copy that cannot be stored is dropped rather than kept
//!   in part; a claim that cannot store the history it took over starts a new epoch. The
//!   memory backend never fails; the tests provoke each path with a store that does.
//! - **Reads are `&self`** and return whole [`Replay`]s, as the broker pages them today
//!   (`ReplayPage::fit` after the read). A disk backend keeps its cache behind interior
//!   mutability, and will want the page bound passed down so that a resume from far back
//!   does not load a topic's whole history (issue 17 item 7).
//! - **Events are shared** (`Arc<Event>`): the memory backend hands out the retained
//!   events themselves, a disk backend decodes fresh ones. [`HistoryStore::get`] returns an
//!   owned `Arc` for that reason.
//!
//! The contract every backend must keep is written once, as tests over `&mut dyn
//! HistoryStore` (`contract.rs`), and run against each backend.

use std::fmt;
use std::sync::Arc;

use crate::event::Event;

#[cfg(feature = "disk")]
pub mod disk;
#[cfg(feature = "disk")]
pub mod disk_history;
mod error;
pub mod memory;
pub mod retention;

#[cfg(test)]
pub(crate) mod contract;

#[cfg(feature = "disk")]
pub use disk_history::DiskHistory;
pub use error::StorageError;
pub use memory::MemoryHistory;
pub use retention::{HistoryBudget, Retention, RetentionPolicy, retained_bytes};

/// The retained events of the topics of one shard.
///
/// Plain data without clocks: callers pass the time (`now_ms`, wall clock, on the events'
/// `ts` scale). A topic's history holds a contiguous run of sequence numbers of one epoch;
/// events older than the retention bounds (count, age, bytes per topic, bytes per node) are
/// trimmed from the front, and what a subscriber missed and can no longer get is reported
/// as a [`Gap`]. A topic whose events were all trimmed keeps its record (where its sequence
/// reached, when its last event was trimmed) until it is forgotten, so resumes still learn
/// exactly what they missed.
pub trait HistoryStore: Send + fmt::Debug {
    /// Appends a freshly sequenced (or replicated) event, then trims the topic by its
    /// retention and the node's budget. An event of another epoch, or one that does not
    /// follow the last retained one, starts the topic's history afresh. On an error nothing
    /// of the event is retained.
    fn append(&mut self, event: Arc<Event>, now_ms: i64) -> Result<(), StorageError>;

    /// What every write so far still needs before it may be acknowledged: with `fsync =
    /// "always"` a durable backend hands appends to the OS and leaves the sync to the
    /// caller, so that many share one (group commit). `None`: nothing to wait for.
    fn sync_ticket(&self) -> Option<SyncTicket> {
        None
    }

    /// Whether writes can be tried now: a durable backend whose store failed refuses every
    /// write until it is reopened, and says so here, before the owner numbers an event it
    /// could not keep. The memory backend always can.
    fn writable(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Replaces a topic's history with `events` (contiguous, oldest first): a replica
    /// taking a whole copy from the owner. On an error the topic's history may be left
    /// partial: the caller forgets it.
    fn replace(
        &mut self,
        topic: &str,
        events: Vec<Arc<Event>>,
        now_ms: i64,
    ) -> Result<(), StorageError>;

    /// Forgets the topic's events of `epoch` from `seq` on: they failed on this node (their
    /// replicas did not confirm them) and must not be replayed from here. Not recorded as
    /// trimmed.
    fn forget_from(&mut self, topic: &str, epoch: &str, seq: u64);

    /// Trims every topic by its retention as of `now_ms` (age, and count and bytes should a
    /// bound have changed). Topics left empty keep their record; the room their events took
    /// is given back.
    fn expire(&mut self, now_ms: i64);

    /// Trims the oldest events of this store's topics (oldest `ts` first, across topics,
    /// any topic but `spare`) until `bytes` are freed or nothing is left; returns the bytes
    /// freed (as [`retained_bytes`] counts them). What goes is recorded as trimmed.
    fn trim_oldest(&mut self, bytes: usize, spare: Option<&str>) -> usize;

    /// The topic's owner says `topic` is committed up to `seq` of `epoch` (stored on every
    /// replica): a durable backend records it, so that after a restart the node serves what
    /// is committed and nothing past it before the topic is claimed again. Memory forgets
    /// it with everything else.
    fn note_committed(&mut self, _topic: &str, _epoch: &str, _seq: u64) {}

    /// A durable backend whose store was reopened after a failure writes over it what it
    /// holds in memory (what it serves), so that failed writes leave nothing behind; returns
    /// the topics it holds. Nothing to do, and no topics, for a backend that keeps nothing
    /// outside memory.
    fn rewrite_durable(&mut self) -> Result<Vec<Arc<str>>, StorageError> {
        Ok(Vec::new())
    }

    /// Drops every record of `topic` (forgotten by the node).
    fn forget_one(&mut self, topic: &str);

    /// Drops every record of `topics` (forgotten by the node: see
    /// `TopicTable::forget_idle`).
    fn forget(&mut self, topics: &[Arc<str>]) {
        for topic in topics {
            self.forget_one(topic);
        }
    }

    /// True when this store has a record of `topic`, events or not.
    fn knows(&self, topic: &str) -> bool;

    /// The retained event `seq` of `epoch` on `topic`, if any.
    fn get(&self, topic: &str, epoch: &str, seq: u64) -> Option<Arc<Event>>;

    /// Everything retained for `topic`, oldest first, without gaps (nothing was claimed
    /// seen, so what was trimmed before is not a gap).
    fn earliest(&self, topic: &str) -> Replay;

    /// What follows `seq` of `epoch` on `topic`: a retention gap for what was trimmed after
    /// it, or, for another epoch, an `epoch_changed` gap then the current epoch from its
    /// start. Nothing when the cursor is at or past the end.
    fn after(&self, topic: &str, epoch: &str, seq: u64) -> Replay;

    /// For a topic the subscriber has no cursor for: the events published after `since_ms`,
    /// with a retention gap when trimmed events may be among them.
    fn since(&self, topic: &str, since_ms: i64) -> Replay;

    /// Topics with retained events (metrics).
    fn topics(&self) -> usize;

    /// Events retained in all topics (metrics).
    fn events(&self) -> usize;

    /// [`retained_bytes`] of the events retained in all topics of this store.
    fn bytes(&self) -> usize;

    /// The node-wide byte budget this store counts against (shared with its siblings).
    fn budget(&self) -> &HistoryBudget;
}

/// A sync still owed to appends (see [`HistoryStore::sync_ticket`]): [`Self::wait`] blocks
/// until the disk holds them. Waiting for a ticket a later sync already covered returns at
/// once, so a caller holding many waits for each in turn and pays for one sync.
pub struct SyncTicket(Box<dyn FnOnce() -> Result<(), StorageError> + Send>);

impl SyncTicket {
    pub fn new(wait: impl FnOnce() -> Result<(), StorageError> + Send + 'static) -> Self {
        Self(Box::new(wait))
    }

    pub fn wait(self) -> Result<(), StorageError> {
        (self.0)()
    }
}

impl fmt::Debug for SyncTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SyncTicket")
    }
}

/// Why events cannot be replayed.
pub mod reason {
    /// Older than the topic's retention (count or age).
    pub const RETENTION: &str = "retention";
    /// The cursor's epoch is not the topic's current one: what followed it is unknown.
    pub const EPOCH_CHANGED: &str = "epoch_changed";
}

/// Events a subscriber missed and cannot get: `from_seq..=to_seq` of `epoch`. `to_seq` is 0
/// when the end is unknown (the epoch changed after the cursor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub topic: Arc<str>,
    pub epoch: Arc<str>,
    pub from_seq: u64,
    pub to_seq: u64,
    pub reason: &'static str,
}

/// What a resuming subscriber gets for one topic: gaps first, then events in order.
#[derive(Debug, Default, Clone)]
pub struct Replay {
    pub gaps: Vec<Gap>,
    pub events: Vec<Arc<Event>>,
}

impl Replay {
    fn extend(&mut self, other: Self) {
        self.gaps.extend(other.gaps);
        self.events.extend(other.events);
    }
}
