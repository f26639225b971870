//! A connection's side of the broker: the bounded outbox its task drains onto the socket,
//! and the subscriptions that queue events into it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::event::{Delivery, Event};

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
    /// Events a queue group will never get (they waited for a member past the topic's
    /// history bound), named to one member as a `gap`.
    Gap {
        sub: Arc<Subscription>,
        gap: crate::routing::group_backlog::GroupGap,
    },
}

/// The broker's handle on one client connection: a bounded queue its own task drains.
///
/// A plain `VecDeque` behind a lock rather than a channel: it allocates nothing while the
/// connection is idle (most connections, most of the time), and the task takes a whole
/// batch with one lock.
///
/// Bounded in bytes (`slow_consumer_bytes`, see [`queued_bytes`]), not in events: a burst
/// of small events that a reader works through in a second must not cut it off, while a
/// reader that truly cannot keep up still cannot make the node hold more than the bound for
/// it. An optional count bound (`outbound_queue`, deprecated) applies as well when set.
#[derive(Debug)]
pub struct Outbox {
    pub connection: u64,
    /// Most bytes queued (by [`queued_bytes`]); an event that finds the queue empty is
    /// always taken, whatever its size.
    max_bytes: usize,
    /// Most events queued; `usize::MAX` when only bytes bound the queue.
    max_events: usize,
    queue: Mutex<OutboxQueue>,
    /// Woken when the queue stops being empty or the outbox overflowed.
    ready: Notify,
    /// Set when the queue overflowed: the connection must be closed as a slow consumer.
    overflowed: AtomicBool,
}

#[derive(Debug, Default)]
struct OutboxQueue {
    items: VecDeque<Outbound>,
    /// The sum of [`queued_bytes`] over the events in `items`.
    bytes: usize,
    closed: bool,
}

/// What one queued event costs its connection, in bytes: its slot in the queue and the
/// event it keeps alive (payload and topic; shared with other subscribers, but this
/// connection alone can keep it in memory). About what the socket will be sent for it.
pub fn queued_bytes(event: &Event) -> usize {
    std::mem::size_of::<Outbound>() + event.payload.len() + event.topic.len()
}

/// An item's cost in the queue: events by [`queued_bytes`]; replies are not counted (one
/// per request the client made, which it is not reading answers to).
fn item_bytes(item: &Outbound) -> usize {
    match item {
        Outbound::Event { event, .. } => queued_bytes(event),
        Outbound::Reply(_) | Outbound::Gap { .. } => 0,
    }
}

/// A queue drained to empty gives back the memory it had grown past this many items (a
/// burst's worth stays, so a busy connection does not regrow it every time).
const OUTBOX_KEEP_CAPACITY: usize = 1024;

impl Outbox {
    /// A new outbox holding at most `capacity` undelivered events (no byte bound; tests).
    pub fn new(connection: u64, capacity: usize) -> Arc<Self> {
        Self::bounded(connection, usize::MAX, capacity)
    }

    /// A new outbox holding at most `max_bytes` of undelivered events (by [`queued_bytes`])
    /// and at most `max_events` of them (0: no count bound).
    pub fn bounded(connection: u64, max_bytes: usize, max_events: usize) -> Arc<Self> {
        Arc::new(Self {
            connection,
            max_bytes: max_bytes.max(1),
            max_events: if max_events == 0 {
                usize::MAX
            } else {
                max_events
            },
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

    /// Bytes of events queued now (by [`queued_bytes`]).
    pub fn queued(&self) -> usize {
        self.queue.lock().bytes
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
        let start = into.len();
        into.extend(queue.items.drain(..n));
        let taken: usize = into[start..].iter().map(item_bytes).sum();
        queue.bytes -= taken;
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
        queue.bytes = 0;
        std::mem::take(&mut queue.items)
    }

    pub(super) fn offer(&self, item: Outbound) -> Offer {
        if self.has_overflowed() {
            return Offer::Refused;
        }
        let mut queue = self.queue.lock();
        if queue.closed {
            return Offer::Refused;
        }
        let bytes = item_bytes(&item);
        if !queue.items.is_empty()
            && (queue.items.len() >= self.max_events
                || queue.bytes.saturating_add(bytes) > self.max_bytes)
        {
            return Offer::Full;
        }
        queue.bytes += bytes;
        queue.items.push_back(item);
        if queue.items.len() == 1 {
            self.ready.notify_one();
        }
        Offer::Queued
    }

    pub(super) fn mark_overflowed(&self) {
        self.overflowed.store(true, Ordering::Release);
        self.ready.notify_one();
    }
}

pub(super) enum Offer {
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
    pub(super) active: std::sync::atomic::AtomicBool,
    /// Queue-group deliveries queued or written to this member and not yet acknowledged
    /// (or handed on): at `max_unacked` it is offered no more.
    pub(super) unacked: AtomicUsize,
    pub(super) max_unacked: usize,
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
