//! The client protocol, v1: requests, replies and error codes, independent of wire format.
//!
//! `json` reads and writes WebSocket text frames, `protobuf` binary frames (the types in the
//! `murmur-proto` crate). Both decode into the same [`Request`] and encode the same
//! [`Reply`], so JSON and protobuf clients are interchangeable. See `docs/protocol.md`.

pub mod json;
pub mod protobuf;
pub mod runs;

use std::collections::BTreeMap;

use crate::event::Payload;

/// Which encoding a connection's node → client frames use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Protobuf,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Hello {
        client: Option<String>,
        token: Option<String>,
        /// Set when the client accepts several events per frame.
        batch: Option<BatchRequest>,
    },
    Subscribe(Subscribe),
    Unsubscribe {
        id: String,
    },
    Publish {
        topic: String,
        payload: Payload,
        reference: Option<String>,
        /// Idempotency key: the same `id` on the same topic within the owner's
        /// `dedupe_window` gets the first publish's position, not a second event.
        id: Option<String>,
    },
    Ack {
        delivery: String,
    },
    Ping {
        reference: Option<String>,
    },
    /// A new token for the connection, before the current one expires.
    Refresh {
        token: String,
        reference: Option<String>,
    },
}

impl Request {
    /// The longest client-chosen name in the request (subscription id, `ref`, publish id,
    /// delivery id, group, client name), in bytes: every one of them is kept or echoed by the node.
    pub fn longest_id(&self) -> usize {
        match self {
            Self::Hello { client, .. } => client.as_deref().map_or(0, str::len),
            Self::Subscribe(s) => s.id.len().max(s.group.as_deref().map_or(0, str::len)),
            Self::Unsubscribe { id } => id.len(),
            Self::Publish { reference, id, .. } => reference
                .as_deref()
                .map_or(0, str::len)
                .max(id.as_deref().map_or(0, str::len)),
            Self::Ping { reference } => reference.as_deref().map_or(0, str::len),
            Self::Ack { delivery } => delivery.len(),
            Self::Refresh { reference, .. } => reference.as_deref().map_or(0, str::len),
        }
    }

    /// The value that replies to this request carry as `ref`.
    pub fn reference(&self) -> Option<&str> {
        match self {
            Self::Hello { .. } => None,
            Self::Subscribe(s) => Some(&s.id),
            Self::Unsubscribe { id } => Some(id),
            Self::Publish { reference, .. }
            | Self::Ping { reference }
            | Self::Refresh { reference, .. } => reference.as_deref(),
            Self::Ack { delivery } => Some(delivery),
        }
    }
}

/// A `pub`'s `id`, if any: an empty one is refused (with the `pub`'s `ref`), like an empty
/// subscription id.
pub(crate) fn publish_id(
    id: Option<String>,
    reference: Option<&str>,
) -> Result<Option<String>, RequestError> {
    match id {
        Some(id) if id.is_empty() => Err(RequestError::new(
            reference,
            ErrorCode::InvalidRequest,
            "`pub` field `id` must not be empty",
        )),
        other => Ok(other),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    pub id: String,
    pub topic: String,
    pub group: Option<String>,
    pub from: ResumeFrom,
}

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ResumeFrom {
    /// Only events published from now on.
    #[default]
    Latest,
    /// Everything still retained, then live.
    Earliest,
    /// An exact topic: events after `seq` of `epoch`.
    Cursor(Cursor),
    /// A wildcard subscription: one cursor per topic seen, and the `ts` of the last event
    /// received, so topics first published while the client was away are replayed too.
    Topics {
        topics: BTreeMap<String, Cursor>,
        since: i64,
    },
}

/// A `since` for [`ResumeFrom::Topics`] that means "everything retained" for the topics it
/// has no cursor for (a wildcard `earliest` continued page by page). Never sent by clients:
/// their `since` is a timestamp.
pub const SINCE_EARLIEST: i64 = i64::MIN;

impl ResumeFrom {
    /// The cursors this resume carries for topics a subscription on `pattern` covers: the
    /// exact topic's cursor, or each of `topics` that the pattern matches.
    pub fn cursors<'a>(&'a self, pattern: &'a str) -> Vec<(&'a str, &'a Cursor)> {
        use crate::routing::topic::{is_wildcard, pattern_matches};
        match self {
            Self::Cursor(cursor) if !is_wildcard(pattern) => vec![(pattern, cursor)],
            Self::Topics { topics, .. } => topics
                .iter()
                .filter(|(t, _)| {
                    if is_wildcard(pattern) {
                        pattern_matches(pattern, t)
                    } else {
                        t.as_str() == pattern
                    }
                })
                .map(|(t, c)| (t.as_str(), c))
                .collect(),
            _ => Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: String,
    pub seq: u64,
}

impl Cursor {
    /// The largest `seq` a cursor may carry: far beyond any topic's sequence, and low enough
    /// that the position after it (`seq + 1`, where a replay or a gap starts) exists.
    pub const MAX_SEQ: u64 = i64::MAX as u64;
}

/// What a client asked for in `hello` to get batch frames; `None` is the node's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchRequest {
    pub max_events: Option<u32>,
    pub max_bytes: Option<u32>,
    /// The compact layout: runs of events of one subscription and topic, the shared fields
    /// once per run (see `runs`).
    pub compact: bool,
}

/// The bounds of one batch frame in effect for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_events: u32,
    pub max_bytes: u32,
    /// Batch frames in the compact layout (`runs`) instead of whole event objects.
    pub compact: bool,
}

impl BatchLimits {
    /// Events per batch frame when the client does not say.
    pub const DEFAULT_EVENTS: u32 = 256;
    /// Bytes per batch frame when the client does not say.
    pub const DEFAULT_BYTES: u32 = 64 * 1024;
    /// The most events per batch frame a client may ask for.
    pub const MAX_EVENTS: u32 = 4096;
    /// The most bytes per batch frame a client may ask for.
    pub const MAX_BYTES: u32 = 16 * 1024 * 1024;
    /// The least bytes per batch frame a client may ask for.
    pub const MIN_BYTES: u32 = 1024;

    /// The bounds a request gets: defaults for what it leaves out, clamped to what the node
    /// allows.
    pub fn granted(request: BatchRequest) -> Self {
        Self {
            max_events: request
                .max_events
                .filter(|&n| n > 0)
                .unwrap_or(Self::DEFAULT_EVENTS)
                .min(Self::MAX_EVENTS),
            max_bytes: request
                .max_bytes
                .filter(|&n| n > 0)
                .unwrap_or(Self::DEFAULT_BYTES)
                .clamp(Self::MIN_BYTES, Self::MAX_BYTES),
            compact: request.compact,
        }
    }
}

/// The limits a node announces in `welcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_frame_bytes: u64,
    pub max_subscriptions: u32,
    pub outbound_queue: u32,
    pub ping_interval_ms: u64,
    pub idle_timeout_ms: u64,
    pub max_topic_bytes: u32,
}

/// Every node → client frame except `event`, which has its own encoders because it is the
/// one sent at volume.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply<'a> {
    Welcome {
        node: &'a str,
        session: &'a str,
        limits: &'a Limits,
        /// In the answer to a `hello` that asked for batches.
        batch: Option<BatchLimits>,
        /// The token's `sub`, once the connection has a token.
        user: Option<&'a str>,
        /// When the connection's token stops being accepted (ms since the Unix epoch).
        expires_at_ms: Option<u64>,
    },
    /// The answer to a `refresh`: the new token's expiry.
    Refreshed {
        reference: Option<&'a str>,
        expires_at_ms: Option<u64>,
    },
    /// The connection's token expires in `in_ms`.
    Expiring {
        in_ms: u64,
    },
    Ok {
        reference: Option<&'a str>,
        /// Set for an acknowledged publish.
        position: Option<(&'a str, u64)>,
    },
    Gap {
        sub: &'a str,
        topic: &'a str,
        epoch: &'a str,
        from_seq: u64,
        to_seq: u64,
        reason: &'a str,
    },
    Error {
        reference: Option<&'a str>,
        code: ErrorCode,
        message: &'a str,
    },
    Pong {
        reference: Option<&'a str>,
    },
}

/// A request that could not be served, answered with an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub reference: Option<String>,
    pub code: ErrorCode,
    pub message: String,
}

impl RequestError {
    pub fn new(reference: Option<&str>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            reference: reference.map(str::to_owned),
            code,
            message: message.into(),
        }
    }

    pub fn reply(&self) -> Reply<'_> {
        Reply::Error {
            reference: self.reference.as_deref(),
            code: self.code,
            message: &self.message,
        }
    }
}

/// Stable error codes; clients match on these strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A text frame that is not valid JSON.
    InvalidJson,
    /// A binary frame that is not a valid `ClientFrame`.
    InvalidProtobuf,
    /// `op` names no operation of this protocol version.
    UnknownOp,
    /// A field is missing, has the wrong type or an invalid value.
    InvalidRequest,
    /// A topic or pattern breaks the topic rules.
    InvalidTopic,
    /// A frame over the node's `max_frame_bytes`.
    FrameTooLarge,
    /// The connection already holds `max_subscriptions`.
    TooManySubscriptions,
    /// A `sub` reused an `id` that is still subscribed on this connection.
    DuplicateSubscription,
    /// An `unsub` for an `id` this connection does not hold.
    UnknownSubscription,
    /// An `ack` for a delivery that is not outstanding on this connection.
    UnknownDelivery,
    /// The connection's outgoing buffer filled up; the node disconnects it.
    SlowConsumer,
    /// Nothing arrived from the client within `idle_timeout`.
    IdleTimeout,
    /// The node is shutting down; reconnect (to another node).
    ShuttingDown,
    /// The node may have missed events for this client (it lost a peer); reconnect and resume.
    Resync,
    /// The connection has no valid token (none, malformed, bad signature, wrong audience…).
    Unauthorized,
    /// The token is valid but does not allow this operation on this topic.
    Forbidden,
    /// The connection's token expired; refresh it or reconnect with a new one.
    TokenExpired,
    /// The connection publishes faster than `publish_rate` allows.
    RateLimited,
    /// The event could not be sequenced and stored (owner or replicas unreachable); the
    /// publish may be retried.
    Unavailable,
}

impl ErrorCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidProtobuf => "invalid_protobuf",
            Self::UnknownOp => "unknown_op",
            Self::InvalidRequest => "invalid_request",
            Self::InvalidTopic => "invalid_topic",
            Self::FrameTooLarge => "frame_too_large",
            Self::TooManySubscriptions => "too_many_subscriptions",
            Self::DuplicateSubscription => "duplicate_subscription",
            Self::UnknownSubscription => "unknown_subscription",
            Self::UnknownDelivery => "unknown_delivery",
            Self::SlowConsumer => "slow_consumer",
            Self::IdleTimeout => "idle_timeout",
            Self::ShuttingDown => "shutting_down",
            Self::Resync => "resync",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::TokenExpired => "token_expired",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
