//! A link to one peer: what the broker hands to it, and what the peer told us it wants.
//!
//! Two queues feed the peer's QUIC stream: an unbounded one for interest and control
//! messages, which are small, rare and must never be lost, and a bounded one for events, so a
//! slow or dead peer cannot make this node buffer without limit or stall anyone else. Events
//! that do not fit are dropped and counted.

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
    },
    /// A copy of a sequenced event for this replica to store.
    Replicate(Arc<Event>),
    /// A topic's whole retained history, for a node that just became one of its replicas.
    SyncTopic {
        topic: Arc<str>,
        epoch: Arc<str>,
        last_seq: u64,
        events: Vec<Arc<Event>>,
    },
    /// A request or reply of the topic protocol, already in wire form.
    Frame(murmur_proto::cluster::v1::peer_frame::Msg),
    /// A publish for the topic's owner, with the share of this node's publish buffer it
    /// holds until it is written to the stream.
    Publish {
        msg: murmur_proto::cluster::v1::peer_frame::Msg,
        permit: Option<crate::cluster::topics::PublishPermit>,
    },
    Leaving {
        generation: u64,
        /// Told once the frame has been handed to QUIC.
        sent: Option<tokio::sync::oneshot::Sender<()>>,
    },
}

#[derive(Debug, Default)]
pub struct LinkStats {
    /// Events queued to this peer.
    pub events_forwarded: AtomicU64,
    /// Events not sent because the peer's queue was full.
    pub events_dropped: AtomicU64,
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
    /// The peer's interests, as it announced them; mirrored in the broker's remote index.
    pub(crate) interests: Mutex<HashSet<Interest>>,
    /// Set once the peer's interest snapshot has arrived: until then this node cannot know
    /// whether the peer's subscribers want an event.
    pub(crate) interest_known: std::sync::atomic::AtomicBool,
    closed: CancellationToken,
    pub stats: LinkStats,
}

/// The receiving ends of a link's queues, drained by its writer task.
#[derive(Debug)]
pub struct LinkQueues {
    pub control: mpsc::UnboundedReceiver<PeerMessage>,
    pub events: mpsc::Receiver<PeerMessage>,
}

impl PeerLink {
    pub fn new(name: &str, generation: u64, event_capacity: usize) -> (Arc<Self>, LinkQueues) {
        let (control, control_rx) = mpsc::unbounded_channel();
        let (events, events_rx) = mpsc::channel(event_capacity.max(1));
        let link = Self {
            name: name.into(),
            generation,
            control,
            events,
            interests: Mutex::new(HashSet::new()),
            interest_known: std::sync::atomic::AtomicBool::new(false),
            closed: CancellationToken::new(),
            stats: LinkStats::default(),
        };
        (
            Arc::new(link),
            LinkQueues {
                control: control_rx,
                events: events_rx,
            },
        )
    }

    pub fn send_control(&self, message: PeerMessage) {
        // A closed link is being torn down; its interest goes with it.
        let _ = self.control.send(message);
    }

    /// Queues an event for the peer without waiting; false if it was dropped.
    pub fn offer_event(&self, message: PeerMessage) -> bool {
        match self.events.try_send(message) {
            Ok(()) => {
                self.stats.events_forwarded.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                let dropped = self.stats.events_dropped.fetch_add(1, Ordering::Relaxed);
                if dropped.is_power_of_two() {
                    tracing::warn!(peer = %self.name, dropped = dropped + 1, "peer queue full: events dropped");
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
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
