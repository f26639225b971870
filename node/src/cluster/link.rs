//! A link to one peer: what the broker hands to it, and what the peer told us it wants.
//!
//! Three queues feed the peer, each drained by a writer task onto the connection:
//! - control (interest, replication, replies, claims): small messages that must never be
//!   lost. Not bounded by count, but by what produces them: `Replicate` copies and their
//!   `Stored` answers hold a share of the owner's publish buffer until stored, replies answer
//!   requests whose senders hold a share of theirs, and interest changes follow
//!   subscriptions (bounded per connection and by connections).
//! - events (`Forward`): bounded; every event from a publish holds its publisher's share of
//!   the publish buffer (`publish_buffer_bytes`) until it is written to the peer, so a peer
//!   that reads slowly slows the publishers feeding it instead of losing events. The count
//!   bound (`peer_queue`) sits above what the buffer lets in; only a queue that still fills
//!   is a stuck peer: further events are dropped and counted, and its plain subscribers see
//!   the hole and resync; a peer that takes nothing for `peer_stall_timeout` has its link
//!   reset, so subscribers everywhere resync.
//! - publishes (`Publish`, on a stream of their own): each holds a share of this node's
//!   publish buffer until written, and the owner reads that stream only as fast as its own
//!   publish buffer has room, so QUIC flow control carries the owner's backpressure back
//!   here, and on to the publishing connections.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::event::Event;

/// A pattern, and optionally a queue group on it, that some node has local subscribers for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Interest {
    pub pattern: Arc<str>,
    pub group: Option<Arc<str>>,
}

/// Events in a peer's queue beyond which one that holds no share of a publish buffer is
/// refused (see [`PeerLink::offer_event`]): the whole queue before `peer_queue` grew to
/// leave the bounding to the publish buffer.
pub const UNHELD_EVENTS_LIMIT: usize = 65_536;

/// What this node sends a peer.
#[derive(Debug)]
pub enum PeerMessage {
    Snapshot(Vec<Interest>),
    Delta {
        added: Vec<Interest>,
        removed: Vec<Interest>,
    },
    Forward {
        event: Arc<Event>,
        /// Deliver to the peer's matching plain subscriptions.
        plain: bool,
        /// Deliver to one of the peer's members of each of these groups; each with this node's
        /// token for it (0: not tracked).
        groups: Vec<(Interest, u64)>,
        /// A queue-group event handed on after its first member did not ack it.
        redelivered: bool,
        /// The event's share of its publisher's publish buffer, given back once every peer
        /// it is forwarded to has been written it.
        hold: Option<Arc<crate::cluster::topics::PublishPermit>>,
    },
    /// A copy of a sequenced event for this replica to store.
    Replicate(Arc<Event>),
    /// A topic's whole retained history, for a node that just became one of its replicas.
    SyncTopic {
        topic: Arc<str>,
        epoch: Arc<str>,
        last_seq: u64,
        events: Vec<Arc<Event>>,
        /// The publish ids the owner remembers for the topic.
        ids: Vec<crate::routing::dedupe::RememberedId>,
    },
    /// A request or reply of the topic protocol, already in wire form.
    Frame(murmur_proto::cluster::v1::peer_frame::Msg),
    /// A publish for the topic's owner, with the share of this node's publish buffer it
    /// holds until it is written to the stream.
    Publish {
        msg: murmur_proto::cluster::v1::peer_frame::Msg,
        permit: Option<crate::cluster::topics::PublishPermit>,
    },
    /// Events for the peer's plain subscribers were dropped (its queue was full); `pending`
    /// is cleared once this notice is written, so that at most one waits at a time.
    DropNotice {
        pending: Arc<std::sync::atomic::AtomicBool>,
    },
    Leaving {
        generation: u64,
        /// Told once the frame has been handed to QUIC.
        sent: Option<tokio::sync::oneshot::Sender<()>>,
    },
}

impl PeerMessage {
    /// False for a forward that holds no share of a publish buffer: a queue-group event
    /// placed again or redelivered (see [`UNHELD_EVENTS_LIMIT`]).
    fn holds_publish_share(&self) -> bool {
        !matches!(self, Self::Forward { hold: None, .. })
    }
}

#[derive(Debug, Default)]
pub struct LinkStats {
    /// Events queued to this peer.
    pub events_forwarded: AtomicU64,
    /// Events not sent because the peer's queue was full.
    pub events_dropped: AtomicU64,
    /// When the writer last handed frames to the connection, in ms on the node's monotonic
    /// clock ([`progress_clock_ms`]): a peer whose queue holds events while this stands still
    /// is stuck.
    pub last_progress_ms: AtomicU64,
    /// Events received from this peer.
    pub events_received: AtomicU64,
    /// The QUIC connection's round-trip estimate, in µs, refreshed every second.
    pub rtt_micros: AtomicU64,
}

#[derive(Debug)]
pub struct PeerLink {
    pub name: Arc<str>,
    pub generation: u64,
    control: mpsc::UnboundedSender<PeerMessage>,
    events: mpsc::Sender<PeerMessage>,
    publishes: mpsc::UnboundedSender<PeerMessage>,
    /// The peer's interests, as it announced them; mirrored in the broker's remote index.
    pub(crate) interests: Mutex<HashSet<Interest>>,
    /// Set once the peer's interest snapshot has arrived: until then this node cannot know
    /// whether the peer's subscribers want an event.
    pub(crate) interest_known: std::sync::atomic::AtomicBool,
    /// Set once this node took over the peer's queue-group progress (it left or was
    /// declared down): queue-group placements it still sends are given back rather than
    /// taken, since this node places what the peer owed itself (control frames such as
    /// `Leaving` overtake the forwards queued before them).
    pub(crate) groups_taken_over: std::sync::atomic::AtomicBool,
    closed: CancellationToken,
    /// A `DropNotice` waits in the control queue (see [`PeerLink::announce_drop`]).
    drop_notice_pending: Arc<std::sync::atomic::AtomicBool>,
    pub stats: LinkStats,
}

/// The receiving ends of a link's queues, drained by its writer task.
#[derive(Debug)]
pub struct LinkQueues {
    pub control: mpsc::UnboundedReceiver<PeerMessage>,
    pub events: mpsc::Receiver<PeerMessage>,
    pub publishes: mpsc::UnboundedReceiver<PeerMessage>,
}

/// Milliseconds since the first call in this process, on a monotonic clock.
pub fn progress_clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl PeerLink {
    pub fn new(name: &str, generation: u64, event_capacity: usize) -> (Arc<Self>, LinkQueues) {
        let (control, control_rx) = mpsc::unbounded_channel();
        let (events, events_rx) = mpsc::channel(event_capacity.max(1));
        let (publishes, publishes_rx) = mpsc::unbounded_channel();
        let link = Self {
            name: name.into(),
            generation,
            control,
            events,
            publishes,
            interests: Mutex::new(HashSet::new()),
            interest_known: std::sync::atomic::AtomicBool::new(false),
            groups_taken_over: std::sync::atomic::AtomicBool::new(false),
            closed: CancellationToken::new(),
            drop_notice_pending: Arc::default(),
            stats: LinkStats::default(),
        };
        link.note_progress();
        (
            Arc::new(link),
            LinkQueues {
                control: control_rx,
                events: events_rx,
                publishes: publishes_rx,
            },
        )
    }

    pub fn send_control(&self, message: PeerMessage) {
        // A closed link is being torn down; its interest goes with it.
        let _ = self.control.send(message);
    }

    /// Queues a publish for the peer (its owner) on the publish stream. Bounded by the
    /// publish buffer share each publish holds while queued (see the module's notes).
    pub fn send_publish(&self, message: PeerMessage) {
        let _ = self.publishes.send(message);
    }

    /// The writer handed frames to the connection.
    pub fn note_progress(&self) {
        self.stats
            .last_progress_ms
            .store(progress_clock_ms(), Ordering::Relaxed);
    }

    /// True when events wait for the peer and the writer has handed nothing to the
    /// connection for `stall`: the peer (or the way to it) is stuck, not merely slow.
    pub fn is_stalled(&self, stall: std::time::Duration) -> bool {
        let last = self.stats.last_progress_ms.load(Ordering::Relaxed);
        let stalled_for = progress_clock_ms().saturating_sub(last);
        self.queue_depth() > 0 && u128::from(stalled_for) >= stall.as_millis()
    }

    /// Queues an event for the peer without waiting; false if it was dropped.
    pub fn offer_event(&self, message: PeerMessage) -> bool {
        if !message.holds_publish_share() && self.queue_depth() >= UNHELD_EVENTS_LIMIT {
            if matches!(message, PeerMessage::Forward { plain: true, .. }) {
                self.announce_drop();
            }
            // Events that hold no share of a publish buffer (queue-group events placed again
            // after a member gave them back, redeliveries) are not bounded by it: they may
            // take only part of the queue, or a group whose members keep giving events back
            // would fill it with a million copies. The caller places them elsewhere or
            // counts them lost, as for a full queue.
            self.stats.events_dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        match self.events.try_send(message) {
            Ok(()) => {
                self.stats.events_forwarded.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Full(message)) => {
                if matches!(message, PeerMessage::Forward { plain: true, .. }) {
                    self.announce_drop();
                }
                let dropped = self.stats.events_dropped.fetch_add(1, Ordering::Relaxed);
                if dropped.is_power_of_two() {
                    tracing::warn!(peer = %self.name, dropped = dropped + 1, "peer queue full (peer_queue): events dropped");
                }
                // A stuck peer: its plain subscribers see the hole at the next event and
                // resync; one that takes nothing at all is reset by `peer_stall_timeout`.
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Tells the peer that events for its plain subscribers were dropped, unless a notice
    /// is already waiting to be written (it covers this drop too: it reaches the peer after
    /// the drop, and the peer's subscribers resume from their cursors then).
    fn announce_drop(&self) {
        if !self.drop_notice_pending.swap(true, Ordering::AcqRel) {
            self.send_control(PeerMessage::DropNotice {
                pending: self.drop_notice_pending.clone(),
            });
        }
    }

    pub fn rtt(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.stats.rtt_micros.load(Ordering::Relaxed))
    }

    /// Events waiting in the queue towards the peer.
    pub fn queue_depth(&self) -> usize {
        self.events.max_capacity() - self.events.capacity()
    }

    pub fn interest_known(&self) -> bool {
        self.interest_known.load(Ordering::Acquire)
    }

    pub fn close(&self) {
        self.closed.cancel();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    pub fn closed(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.closed.cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Payload;

    fn forward(plain: bool) -> PeerMessage {
        PeerMessage::Forward {
            event: Arc::new(Event::new(
                "t".into(),
                "e".into(),
                1,
                0,
                Payload::Json(bytes::Bytes::from_static(b"1")),
            )),
            plain,
            groups: Vec::new(),
            redelivered: false,
            hold: None,
        }
    }

    fn notices(queues: &mut LinkQueues) -> Vec<Arc<std::sync::atomic::AtomicBool>> {
        let mut found = Vec::new();
        while let Ok(message) = queues.control.try_recv() {
            if let PeerMessage::DropNotice { pending } = message {
                found.push(pending);
            }
        }
        found
    }

    #[test]
    fn a_dropped_plain_event_is_announced_once_per_notice_written() {
        let (link, mut queues) = PeerLink::new("peer", 1, 1);
        assert!(link.offer_event(forward(true)));
        assert!(!link.offer_event(forward(true)), "the queue holds one");
        assert!(!link.offer_event(forward(true)));
        let first = notices(&mut queues);
        assert_eq!(first.len(), 1, "one notice waits for both drops");
        // The writer wrote it: the next drop needs a notice of its own.
        first[0].store(false, Ordering::Release);
        assert!(!link.offer_event(forward(true)));
        assert_eq!(notices(&mut queues).len(), 1);
        // A dropped queue-group-only forward is placed elsewhere by the caller: no notice.
        first[0].store(false, Ordering::Release);
        assert!(!link.offer_event(forward(false)));
        assert!(notices(&mut queues).is_empty());
    }
}
