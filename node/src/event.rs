//! An event as a node holds it: sequenced, immutable, shared by every delivery.
//!
//! Fan-out clones an `Arc<Event>` per subscriber. Each wire format's encoding of the parts
//! that are the same for every subscriber is computed at most once, by whichever connection
//! needs it first, so a thousand JSON subscribers cost one JSON encoding of the payload.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

/// The published data, kept in the form it arrived in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// UTF-8 JSON text, already validated.
    Json(Bytes),
    /// Opaque bytes from a protobuf client.
    Binary(Bytes),
}

impl Payload {
    pub fn len(&self) -> usize {
        match self {
            Self::Json(b) | Self::Binary(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug)]
pub struct Event {
    pub topic: Arc<str>,
    pub epoch: Arc<str>,
    pub seq: u64,
    /// Node wall-clock time when the event was sequenced, in ms since the Unix epoch.
    pub ts: i64,
    pub payload: Payload,
    /// The JSON encoding of every field after `sub` (see `protocol::json`).
    pub(crate) json_tail: OnceLock<Box<str>>,
    /// The protobuf encoding of the `Event` message without `sub` and delivery fields.
    pub(crate) proto_body: OnceLock<Bytes>,
}

impl Event {
    pub fn new(topic: Arc<str>, epoch: Arc<str>, seq: u64, ts: i64, payload: Payload) -> Self {
        Self {
            topic,
            epoch,
            seq,
            ts,
            payload,
            json_tail: OnceLock::new(),
            proto_body: OnceLock::new(),
        }
    }
}

/// Marks a queue-group delivery, which the receiving member acknowledges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: u64,
    pub redelivered: bool,
    /// Set when another node placed the event here and waits to hear it was acknowledged.
    pub origin: Option<Arc<GroupOrigin>>,
}

/// The node that placed a queue-group event on this node, and its token for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOrigin {
    pub peer: Arc<str>,
    pub token: u64,
}
