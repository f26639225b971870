//! One client connection: its own task reads frames, answers requests, and drains the
//! connection's outbox onto the socket.
//!
//! The task owns the connection's state (its subscriptions and its unacknowledged queue-group
//! deliveries), so none of it needs a lock. Replies are written by the task itself, right after
//! the request; events come through the bounded outbox, several per socket flush.
//!
//! Here: the connection's task and its loop, and how a connection ends. `ops.rs` serves the
//! requests, `replay.rs` writes a resume's replay page by page, `writer.rs` drains the outbox
//! onto the socket, and `auth.rs` keeps the connection's identity.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::time::{Instant, sleep_until};
use tracing::Instrument;

use crate::broker::Redelivery;
use crate::broker::{Outbound, Outbox, Subscription};
use crate::event::{Event, GroupOrigin};
use crate::node::NodeState;
use crate::protocol::{BatchLimits, ErrorCode, Format, Reply, RequestError, json, protobuf};

mod auth;
mod ops;
mod positions;
mod replay;
mod writer;

use replay::ReplayInProgress;

/// Close codes the node sends (documented in `docs/protocol.md`).
pub mod close_code {
    /// The node is shutting down: reconnect, to another node if there is one.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame far over `max_frame_bytes`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The outbound buffer overflowed or a write stalled.
    pub const SLOW_CONSUMER: u16 = 4001;
    /// Nothing received within `idle_timeout`.
    pub const IDLE_TIMEOUT: u16 = 4002;
    /// This node lost contact with a peer and may have missed events for the client:
    /// reconnect (to any node) and resume from the cursor.
    pub const RESYNC: u16 = 4003;
    /// 4000–4499: reconnect (with backoff). 4500–4999: do not reconnect without a new token.
    pub const FIRST_TERMINAL: u16 = 4500;
    /// No valid token: missing, malformed, badly signed, for another audience…, or no valid
    /// `hello` within `hello_timeout`.
    pub const UNAUTHORIZED: u16 = 4500;
    /// The token expired without a `refresh`.
    pub const TOKEN_EXPIRED: u16 = 4501;
}

/// How long a closing connection may take to deliver its last error and close frames.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// Frames up to this size are read whole (and refused with an error if over the limit);
/// anything larger breaks the connection.
pub fn hard_frame_cap(max_frame_bytes: usize) -> usize {
    max_frame_bytes
        .saturating_mul(2)
        .max(max_frame_bytes + 64 * 1024)
}

pub(crate) async fn serve(
    socket: WebSocket,
    node: Arc<NodeState>,
    format: Format,
    peer: SocketAddr,
    identity: Option<crate::auth::Identity>,
) {
    let connection = node.next_connection_id();
    let session_id = format!("{:016x}", rand::random::<u64>());
    // One client's story across nodes: its `client` name (from `hello`) stays the same when
    // it reconnects elsewhere; `session` is what the node told it in `welcome`.
    let span = tracing::info_span!(
        "conn",
        id = connection,
        %peer,
        session = %session_id,
        client = tracing::field::Empty,
    );
    async move {
        tracing::debug!(?format, "connected");
        let outbox = Outbox::bounded(
            connection,
            node.settings.slow_consumer_bytes,
            node.settings.outbound_queue,
        );
        let node_settings = node.settings.clone();
        // Without a token from the upgrade: unrestricted with `auth = none`, the anonymous
        // permissions if there are any, else nothing until a `hello` brings a valid token.
        let identity = match identity {
            Some(identity) => Some(identity),
            None => node.auth.authenticate(None).await.ok(),
        };
        let (sink, stream) = socket.split();
        let mut session = Session {
            session_id,
            node,
            format,
            outbox,
            sink,
            subscriptions: HashMap::new(),
            unacked: HashMap::new(),
            ack_deadlines: VecDeque::new(),
            replayed_up_to: HashMap::new(),
            last_sent: LastSent::default(),
            hole: false,
            batch: None,
            replay_in_progress: None,
            replaying: None,
            replaying_bytes: 0,
            auth: auth::ConnectionAuth::new(identity),
            publish_bucket: (node_settings.publish_rate > 0).then(|| {
                crate::limits::TokenBucket::new(
                    node_settings.publish_rate,
                    node_settings.publish_burst,
                    std::time::Instant::now(),
                )
            }),
        };
        session.node.metrics.connections.inc();
        let ending = session.run(stream).await;
        session.node.metrics.connections.dec();
        tracing::debug!(?ending, "disconnected");
    }
    .instrument(span)
    .await
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    ClientClosed,
    SocketError,
    SlowConsumer,
    IdleTimeout,
    FrameTooLarge,
    ShuttingDown,
    Resync,
    /// No valid token (a refused `hello`, or none within `hello_timeout`).
    Unauthorized,
    /// The token expired without a `refresh`.
    TokenExpired,
}

/// A queue-group event written to this client and not yet acknowledged.
struct Unacked {
    subscription: Arc<Subscription>,
    event: Arc<Event>,
    /// The node that placed it here, to be told once it is acknowledged.
    origin: Option<Arc<GroupOrigin>>,
}

struct Session {
    node: Arc<NodeState>,
    session_id: String,
    format: Format,
    outbox: Arc<Outbox>,
    sink: SplitSink<WebSocket, Message>,
    /// By the client's subscription id.
    subscriptions: HashMap<String, Arc<Subscription>>,
    unacked: HashMap<u64, Unacked>,
    /// Delivery ids in the order they were written; acked ones are skipped lazily.
    ack_deadlines: VecDeque<(Instant, u64)>,
    /// For resumed subscriptions: per topic, the last event replayed. A live copy of an
    /// event already replayed is dropped; the entry goes once the live stream passes it.
    replayed_up_to: HashMap<Arc<str>, ReplayedUpTo>,
    /// Per (subscription, topic), the epoch and seq of the last event sent: a later event
    /// that skips a number means this node missed some, and the client must resync.
    last_sent: LastSent,
    /// Set when a hole was seen: the connection ends with `resync`.
    hole: bool,
    /// Set once the client asked (in `hello`) for several events per frame.
    batch: Option<BatchLimits>,
    /// The connection's publish allowance, when `publish_rate` is set.
    publish_bucket: Option<crate::limits::TokenBucket>,
    /// A `sub`'s replay with pages still to write (after its `ok` and first page).
    replay_in_progress: Option<ReplayInProgress>,
    /// While a replay's later pages are written, the subscription replayed and its live
    /// events, held back so they follow the replay (other subscriptions' events are written
    /// between pages). At most `slow_consumer_bytes` of them are held (and `outbound_queue`
    /// events, when set); more end the connection as a slow consumer, as the outbox itself
    /// would.
    replaying: Option<(Arc<Subscription>, VecDeque<Outbound>)>,
    /// Bytes of the events in `replaying` (by `broker::queued_bytes`).
    replaying_bytes: usize,
    /// Who the client is, what it may do, until when.
    auth: auth::ConnectionAuth,
}

/// Per subscription id, then per topic, the position of the last event sent. Looked up by
/// `&str` for every event, so no key is built or cloned on the hot path.
type LastSent = HashMap<Arc<str>, positions::TopicPositions, FastHash>;

type FastHash = foldhash::fast::RandomState;

/// An event's epoch and sequence number.
type Position = (Arc<str>, u64);

/// Per topic: the position of the last event replayed.
type ReplayedUpTo = HashMap<Arc<str>, Position>;

impl Session {
    async fn run(&mut self, mut stream: SplitStream<WebSocket>) -> Ending {
        let settings = self.node.settings.clone();
        let shutdown = self.node.shutdown.clone();
        let outbox = self.outbox.clone();
        let mut resync = self.node.cluster.resync_signal();
        resync.mark_unchanged();
        let mut last_heard = Instant::now();
        let mut next_ping = last_heard + settings.ping_interval;
        let rotation = positions::rotation_period(settings.topic_idle_forget);
        let mut next_rotation = last_heard + rotation;

        let welcome = self.welcome();
        let mut ending = self.write(welcome).await.err();
        let hello_deadline = self
            .node
            .auth
            .requires_token()
            .then(|| Instant::now() + self.node.auth.hello_timeout());
        while ending.is_none() {
            let idle_deadline = last_heard + settings.idle_timeout;
            let auth_deadline = self.auth.next_deadline(hello_deadline);
            let wake = self
                .ack_deadlines
                .front()
                .map_or(next_ping, |(deadline, _)| (*deadline).min(next_ping))
                .min(idle_deadline)
                .min(next_rotation)
                .min(auth_deadline.unwrap_or(idle_deadline));
            ending = tokio::select! {
                biased;
                () = shutdown.cancelled() => Some(Ending::ShuttingDown),
                // Only connections that could have missed something: plain subscriptions (queue
                // groups get their events redelivered instead).
                _ = resync.changed(), if self.subscriptions.values().any(|s| s.group.is_none()) => {
                    Some(Ending::Resync)
                }
                // Timers before traffic, so a busy connection still gets its redeliveries,
                // pings and idle check.
                () = sleep_until(wake) => {
                    let now = Instant::now();
                    self.redeliver_expired(now);
                    if now >= next_rotation {
                        next_rotation = now + rotation;
                        self.last_sent.values_mut().for_each(positions::TopicPositions::rotate);
                    }
                    if now >= idle_deadline {
                        Some(Ending::IdleTimeout)
                    } else if auth_deadline.is_some_and(|d| now >= d) {
                        self.on_auth_deadline(hello_deadline).await.err()
                    } else if now >= next_ping {
                        next_ping = now + settings.ping_interval;
                        self.write(Message::Ping(bytes::Bytes::new())).await.err()
                    } else {
                        None
                    }
                }
                frame = stream.next() => {
                    last_heard = Instant::now();
                    match frame {
                        None => Some(Ending::ClientClosed),
                        // Boxed: serving a request (a `sub` with a replay awaits the
                        // cluster) takes far more state than waiting does, and an idle
                        // connection should not carry that room for its whole life.
                        Some(Ok(message)) => Box::pin(self.on_message(message)).await.err(),
                        Some(Err(err)) => Some(read_error_ending(&err)),
                    }
                }
                () = outbox.ready() => {
                    if outbox.has_overflowed() {
                        Some(Ending::SlowConsumer)
                    } else {
                        self.write_queued().await.err()
                    }
                }
            };
        }
        let ending = ending.unwrap_or(Ending::SocketError);
        Box::pin(self.say_goodbye(ending, &mut stream)).await;
        self.release();
        ending
    }

    fn welcome(&self) -> Message {
        self.encode(&Reply::Welcome {
            node: &self.node.settings.name,
            session: &self.session_id,
            limits: &self.node.limits,
            batch: self.batch,
            user: self.auth.user(),
            expires_at_ms: self.auth.expires_at_ms(),
        })
    }

    fn encode(&self, reply: &Reply<'_>) -> Message {
        encode_reply(self.format, reply)
    }

    async fn on_message(&mut self, message: Message) -> Result<(), Ending> {
        let max = self.node.settings.max_frame_bytes;
        let size = match &message {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            _ => 0,
        };
        self.node.metrics.bytes_received.inc_by(size as u64);
        let request = match message {
            Message::Text(text) if text.len() > max => Err(too_large(text.len(), max)),
            Message::Binary(bytes) if bytes.len() > max => Err(too_large(bytes.len(), max)),
            Message::Text(text) => json::decode(text.as_str()),
            Message::Binary(bytes) => protobuf::decode(bytes),
            Message::Ping(_) | Message::Pong(_) => return Ok(()),
            Message::Close(_) => return Err(Ending::ClientClosed),
        };
        let reply = match request.and_then(|r| self.admit_request(r)) {
            Ok(request) => self.handle(request).await,
            Err(err) => Err(err),
        };
        match reply {
            Ok(messages) => {
                self.write_all(messages).await?;
                match self.replay_in_progress.take() {
                    Some(replay) => self.continue_replay(replay).await,
                    None => Ok(()),
                }
            }
            Err(err) => {
                tracing::debug!(code = %err.code, message = %err.message, "request refused");
                let message = self.encode(&err.reply());
                self.write(message).await?;
                // A refused token ends the connection once the client has been told why.
                match self.auth.take_closing() {
                    Some(ending) => Err(ending),
                    None => Ok(()),
                }
            }
        }
    }

    /// Hands an unacknowledged queue-group event on (see `Broker::redeliver`); one that a
    /// peer placed here goes back to it when no member here can take it.
    fn redeliver(
        &self,
        subscription: &Arc<Subscription>,
        event: &Arc<Event>,
        origin: Option<Arc<GroupOrigin>>,
    ) {
        // It leaves this member, which may take another.
        subscription.delivery_settled();
        self.node.metrics.queue_redeliveries.inc();
        if let Redelivery::ReturnToOrigin(origin) =
            self.node.broker.redeliver(subscription, event, origin)
        {
            self.node.cluster.settle_group(&origin, false);
        }
    }

    /// Queue-group deliveries not acked in time go to another member of their group.
    fn redeliver_expired(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.ack_deadlines.front() {
            if deadline > now {
                break;
            }
            self.ack_deadlines.pop_front();
            if let Some(u) = self.unacked.remove(&id) {
                tracing::debug!(delivery = id, topic = %u.event.topic, "ack timeout; redelivering");
                self.redeliver(&u.subscription, &u.event, u.origin);
            }
        }
    }

    /// Tells the client why the connection ends, when there is something to tell.
    async fn say_goodbye(&mut self, ending: Ending, stream: &mut SplitStream<WebSocket>) {
        if ending == Ending::SlowConsumer {
            self.node.metrics.slow_consumer_disconnects.inc();
        }
        let (code, close, message) = match ending {
            Ending::ClientClosed | Ending::SocketError => return,
            Ending::SlowConsumer => (
                ErrorCode::SlowConsumer,
                close_code::SLOW_CONSUMER,
                "the connection fell behind: its outbound buffer (slow_consumer_bytes) is full; \
                 reconnect and resume",
            ),
            Ending::IdleTimeout => (
                ErrorCode::IdleTimeout,
                close_code::IDLE_TIMEOUT,
                "nothing received within the idle timeout",
            ),
            Ending::FrameTooLarge => (
                ErrorCode::FrameTooLarge,
                close_code::MESSAGE_TOO_BIG,
                "frame far over max_frame_bytes",
            ),
            Ending::ShuttingDown => (
                ErrorCode::ShuttingDown,
                close_code::GOING_AWAY,
                "node is shutting down; reconnect",
            ),
            Ending::Resync => (
                ErrorCode::Resync,
                close_code::RESYNC,
                "this node may have missed events for you (it lost contact with a peer, or a \
                 peer could not send it everything); reconnect and resume from your cursor",
            ),
            // The error frame saying why was written already (see `auth`).
            Ending::Unauthorized => (ErrorCode::Unauthorized, close_code::UNAUTHORIZED, ""),
            Ending::TokenExpired => (ErrorCode::TokenExpired, close_code::TOKEN_EXPIRED, ""),
        };
        let error = (!message.is_empty()).then(|| {
            self.encode(&Reply::Error {
                reference: None,
                code,
                message,
            })
        });
        let close = Message::Close(Some(CloseFrame {
            code: close,
            reason: Utf8Bytes::from_static(code.as_str()),
        }));
        // A stalled client must not hold the task: one short, bounded attempt. Waiting for the
        // client's own close frame (the closing handshake) before dropping the socket keeps
        // the kernel from resetting the connection under frames the client has yet to read.
        let goodbye = async {
            if let Some(error) = error {
                self.sink.feed(error).await?;
            }
            self.sink.send(close).await?;
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Close(_) = message {
                    break;
                }
            }
            Ok::<(), axum::Error>(())
        };
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, goodbye).await;
    }

    /// Drops the connection's subscriptions and hands its unacknowledged and unsent
    /// queue-group deliveries to the rest of each group.
    fn release(&mut self) {
        for subscription in self.subscriptions.values() {
            self.node.broker.unsubscribe(subscription);
        }
        for item in self.outbox.close() {
            if let Outbound::Event {
                sub,
                event,
                delivery: Some(delivery),
            } = item
            {
                self.redeliver(&sub, &event, delivery.origin);
            }
        }
        let unacked: Vec<Unacked> = self.unacked.drain().map(|(_, u)| u).collect();
        for u in unacked {
            self.redeliver(&u.subscription, &u.event, u.origin);
        }
    }
}

fn encode_reply(format: Format, reply: &Reply<'_>) -> Message {
    match format {
        Format::Json => Message::Text(Utf8Bytes::from(json::encode_reply(reply))),
        Format::Protobuf => Message::Binary(protobuf::encode_reply(reply)),
    }
}

fn too_large(len: usize, max: usize) -> RequestError {
    RequestError::new(
        None,
        ErrorCode::FrameTooLarge,
        format!("frame of {len} bytes is over max_frame_bytes ({max})"),
    )
}

fn read_error_ending(err: &axum::Error) -> Ending {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(WsError::Capacity(_)) = e.downcast_ref::<WsError>() {
            return Ending::FrameTooLarge;
        }
        source = e.source();
    }
    Ending::SocketError
}
