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

/// Bytes that were to be a [`Payload::Json`] but are not JSON text.
#[derive(Debug, thiserror::Error)]
pub enum JsonPayloadError {
    #[error("not UTF-8 text: {0}")]
    NotUtf8(#[from] std::str::Utf8Error),
    #[error(transparent)]
    NotJson(#[from] serde_json::Error),
}

impl Payload {
    /// `bytes` as a JSON payload, if they are one JSON value in UTF-8 text.
    ///
    /// The UTF-8 check comes first because `serde_json::from_slice` does not check the
    /// bytes of the strings it skips over: a string holding invalid UTF-8 passed, and a JSON
    /// subscriber then got `null` for the event's `data`.
    pub fn json(bytes: Bytes) -> Result<Self, JsonPayloadError> {
        let text = std::str::from_utf8(&bytes)?;
        serde_json::from_str::<serde::de::IgnoredAny>(text)?;
        Ok(Self::Json(bytes))
    }

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
    /// The publish's idempotency key, when it has one: sent to replicas with the event, so
    /// that they remember it too (see `routing::dedupe`). Never shown to subscribers.
    pub publish_id: Option<crate::routing::dedupe::PublishId>,
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
            publish_id: None,
            json_tail: OnceLock::new(),
            proto_body: OnceLock::new(),
        }
    }

    /// The event with the idempotency key of the publish it came from.
    #[must_use]
    pub fn with_publish_id(mut self, id: Option<crate::routing::dedupe::PublishId>) -> Self {
        self.publish_id = id;
        self
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_payloads_are_one_value_of_utf8_text() {
        assert!(Payload::json(Bytes::from_static(br#" {"a":["\u00e9",1.5]} "#)).is_ok());
        // Found by fuzzing: `serde_json::from_slice` skips over strings without checking
        // their UTF-8, so this passed as JSON and reached JSON subscribers as `null`.
        assert!(matches!(
            Payload::json(Bytes::from_static(b"\"chat \xe0\x88 hi\"")),
            Err(JsonPayloadError::NotUtf8(_))
        ));
        assert!(matches!(
            Payload::json(Bytes::from_static(b"{nope")),
            Err(JsonPayloadError::NotJson(_))
        ));
        assert!(matches!(
            Payload::json(Bytes::from_static(b"1 2")),
            Err(JsonPayloadError::NotJson(_))
        ));
    }
}
