//! One client connection: its own task reads frames, answers requests, and drains the
//! connection's outbox onto the socket.
//!
//! The task owns the connection's state (its subscriptions and its unacknowledged queue-group
//! deliveries), so none of it needs a lock. Replies are written by the task itself, right after
//! the request; events come through the bounded outbox, several per socket flush.

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
use crate::broker::{Outbound, Outbox, Subscription, TopicReplay};
use crate::cluster::topics::PublishError;
use crate::event::{Delivery, Event, GroupOrigin};
use crate::node::NodeState;
use crate::protocol::{
    BatchLimits, ErrorCode, Format, Reply, Request, RequestError, json, protobuf,
};
use crate::routing::topic;

mod auth;

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

/// Events written to the socket per flush, at most (without batch frames).
const WRITE_BATCH: usize = 64;

/// What a publish costs in the node's publish buffer beyond its topic and data: the request
/// around them.
const PUBLISH_OVERHEAD_BYTES: usize = 64;

/// Events taken from the outbox per flush, at most, for a client that gets batch frames.
const MAX_BATCHED_TAKE: usize = 1024;

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
        let outbox = Outbox::new(connection, node.settings.outbound_queue);
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
    /// between pages). At most `outbound_queue` are held; more end the connection as a slow
    /// consumer, as the outbox itself would.
    replaying: Option<(Arc<Subscription>, VecDeque<Outbound>)>,
    /// Who the client is, what it may do, until when.
    auth: auth::ConnectionAuth,
}

/// A resume being replayed page by page.
struct ReplayInProgress {
    subscription: Arc<Subscription>,
    /// Where the subscription asked to start.
    from: crate::protocol::ResumeFrom,
    /// Per topic, the last event replayed so far: where the next page starts.
    cursors: std::collections::BTreeMap<String, crate::protocol::Cursor>,
    /// Topics whose replay is complete.
    done: std::collections::HashSet<Arc<str>>,
    /// Topics the replay said something about (a gap or an event).
    answered: std::collections::HashSet<Arc<str>>,
}

impl ReplayInProgress {
    /// Where the next page starts: the original start, with each topic's cursor moved past
    /// what was replayed.
    fn next_from(&self) -> crate::protocol::ResumeFrom {
        use crate::protocol::{ResumeFrom, SINCE_EARLIEST};
        let pattern = &*self.subscription.pattern;
        if !topic::is_wildcard(pattern) {
            return match self.cursors.get(pattern) {
                Some(cursor) => ResumeFrom::Cursor(cursor.clone()),
                None => self.from.clone(),
            };
        }
        let (mut topics, since) = match &self.from {
            ResumeFrom::Topics { topics, since } => (topics.clone(), *since),
            _ => (std::collections::BTreeMap::new(), SINCE_EARLIEST),
        };
        topics.extend(self.cursors.iter().map(|(t, c)| (t.clone(), c.clone())));
        ResumeFrom::Topics { topics, since }
    }
}

/// One page of a resume's replay: enough to keep a fast client busy, small enough that a
/// client that does not read pins little.
const REPLAY_PAGE: crate::broker::ReplayPage = crate::broker::ReplayPage {
    max_events: 1000,
    max_bytes: 1024 * 1024,
};

/// Per subscription id, then per topic, the position of the last event sent. Looked up by
/// `&str` for every event, so no key is built or cloned on the hot path.
type LastSent = HashMap<Arc<str>, HashMap<Arc<str>, Position, FastHash>, FastHash>;
type FastHash = foldhash::fast::RandomState;

/// An event that passed the session's checks and is to be written.
struct Admitted {
    sub: Arc<Subscription>,
    event: Arc<Event>,
    /// Queue-group deliveries: the id and redelivery flag to write.
    delivery: Option<Delivery>,
}

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

    /// Ends subscription `id`: its unacknowledged deliveries go to the rest of its group.
    /// False when this connection holds no such subscription.
    fn end_subscription(&mut self, id: &str) -> bool {
        let Some(subscription) = self.subscriptions.remove(id) else {
            return false;
        };
        self.node.broker.unsubscribe(&subscription);
        self.replayed_up_to.remove(&subscription.id);
        self.last_sent.remove(&subscription.id);
        let orphaned: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, u)| Arc::ptr_eq(&u.subscription, &subscription))
            .map(|(id, _)| *id)
            .collect();
        for delivery in orphaned {
            if let Some(u) = self.unacked.remove(&delivery) {
                self.redeliver(&u.subscription, &u.event, u.origin);
            }
        }
        true
    }

    /// The checks every request passes before it is served: the length of the names it
    /// makes the node keep or echo, and the connection's publish rate.
    fn admit_request(&mut self, request: Request) -> Result<Request, RequestError> {
        let settings = &self.node.settings;
        if request.longest_id() > settings.max_id_bytes {
            return Err(RequestError::new(
                None,
                ErrorCode::InvalidRequest,
                format!(
                    "an id, ref, group or client name is longer than max_id_bytes ({})",
                    settings.max_id_bytes
                ),
            ));
        }
        if let (Request::Publish { reference, .. }, Some(bucket)) =
            (&request, self.publish_bucket.as_mut())
            && !bucket.try_take(Instant::now().into_std())
        {
            self.node.metrics.publishes_rate_limited.inc();
            return Err(RequestError::new(
                reference.as_deref(),
                ErrorCode::RateLimited,
                format!(
                    "this connection publishes faster than publish_rate ({}/s, burst {}); \
                     the event was not published",
                    settings.publish_rate, settings.publish_burst
                ),
            ));
        }
        Ok(request)
    }

    /// Serves one request; the returned frames answer it, in order.
    async fn handle(&mut self, request: Request) -> Result<Vec<Message>, RequestError> {
        self.check_allowed(&request)?;
        let settings = &self.node.settings;
        match request {
            Request::Refresh { token, reference } => {
                self.refresh(&token, reference.as_deref()).await
            }
            Request::Hello {
                client,
                token,
                batch,
            } => {
                let mut frames = self.hello_token(token.as_deref()).await?;
                if let Some(name) = client.as_deref() {
                    tracing::Span::current().record("client", name);
                }
                self.batch = batch.map(BatchLimits::granted);
                tracing::debug!(batch = ?self.batch, "hello");
                frames.push(self.welcome());
                Ok(frames)
            }
            Request::Subscribe(sub) => {
                let reference = Some(sub.id.as_str());
                topic::validate_pattern(&sub.topic, settings.max_topic_bytes).map_err(|e| {
                    RequestError::new(reference, ErrorCode::InvalidTopic, e.to_string())
                })?;
                if let Some(group) = &sub.group
                    && (group.is_empty()
                        || group.len() > settings.max_topic_bytes
                        || group.chars().any(|c| c.is_whitespace() || c.is_control()))
                {
                    return Err(RequestError::new(
                        reference,
                        ErrorCode::InvalidRequest,
                        "`group` must be a non-empty name without whitespace or control characters",
                    ));
                }
                if self.subscriptions.contains_key(&sub.id) {
                    return Err(RequestError::new(
                        reference,
                        ErrorCode::DuplicateSubscription,
                        format!(
                            "subscription id `{}` is already in use on this connection",
                            sub.id
                        ),
                    ));
                }
                if self.subscriptions.len() >= settings.max_subscriptions {
                    return Err(RequestError::new(
                        reference,
                        ErrorCode::TooManySubscriptions,
                        format!(
                            "this connection already holds the maximum of {} subscriptions",
                            settings.max_subscriptions
                        ),
                    ));
                }
                if sub.group.is_some() && sub.from != crate::protocol::ResumeFrom::Latest {
                    return Err(RequestError::new(
                        reference,
                        ErrorCode::InvalidRequest,
                        "a queue-group member cannot resume: the group shares live events, and \
                         unacknowledged ones are redelivered to the group anyway",
                    ));
                }
                let subscription = Arc::new(
                    Subscription::new(
                        sub.id.as_str().into(),
                        sub.topic.into(),
                        sub.group.map(Into::into),
                        self.outbox.clone(),
                    )
                    .with_max_unacked(settings.max_unacked),
                );
                self.node.broker.subscribe(subscription.clone());
                // Registered first, replayed second: see `Broker::replay`. The replay comes
                // page by page, so neither the answers between nodes nor one write to this
                // client grows with the history it covers.
                let first_page = self
                    .node
                    .cluster
                    .replay(&subscription.pattern, &sub.from, REPLAY_PAGE)
                    .await;
                let page = match first_page {
                    Ok(page) => page,
                    Err(err) => {
                        self.node.broker.unsubscribe(&subscription);
                        return Err(RequestError::new(
                            reference,
                            ErrorCode::InvalidRequest,
                            err.to_string(),
                        ));
                    }
                };
                let mut frames = vec![self.encode(&Reply::Ok {
                    reference,
                    position: None,
                })];
                let mut replay = ReplayInProgress {
                    subscription: subscription.clone(),
                    from: sub.from,
                    cursors: std::collections::BTreeMap::new(),
                    done: std::collections::HashSet::new(),
                    answered: std::collections::HashSet::new(),
                };
                let more = self.replay_page(&mut replay, page, &mut frames);
                self.subscriptions.insert(sub.id, subscription);
                if more {
                    self.replay_in_progress = Some(replay);
                } else {
                    self.finish_replay(&replay);
                }
                Ok(frames)
            }
            Request::Unsubscribe { id } => {
                if !self.end_subscription(&id) {
                    return Err(RequestError::new(
                        Some(&id),
                        ErrorCode::UnknownSubscription,
                        format!("no subscription `{id}` on this connection"),
                    ));
                }
                Ok(vec![self.encode(&Reply::Ok {
                    reference: Some(&id),
                    position: None,
                })])
            }
            Request::Publish {
                topic: name,
                payload,
                reference,
            } => {
                topic::validate_publish_topic(&name, settings.max_topic_bytes).map_err(|e| {
                    RequestError::new(reference.as_deref(), ErrorCode::InvalidTopic, e.to_string())
                })?;
                self.node.metrics.events_received.inc();
                // Backpressure: while the node's publish buffer is full this connection is
                // read no further; a publish that cannot get room in time is refused, told.
                let bytes = payload.len() + name.len() + PUBLISH_OVERHEAD_BYTES;
                let permit = match self.node.cluster.reserve_publish(bytes).await {
                    Ok(permit) => permit,
                    Err(err) => {
                        self.node.metrics.publish_errors.inc();
                        return Err(RequestError::new(
                            reference.as_deref(),
                            ErrorCode::Unavailable,
                            format!("not published to {name}: {}", err.message),
                        ));
                    }
                };
                let Some(reference) = reference else {
                    self.node
                        .cluster
                        .submit_unanswered(&name, payload, Some(permit));
                    return Ok(Vec::new());
                };
                let mut outcome = self.node.cluster.submit(&name, payload, Some(permit));
                // Usually known at once (this node owns the topic and needs no replica);
                // otherwise answered when the owner and replicas are done.
                if let Ok(result) = outcome.try_recv() {
                    if result.is_err() {
                        self.node.metrics.publish_errors.inc();
                    }
                    return publish_answer(self.format, &reference, result).map(|m| vec![m]);
                }
                let format = self.format;
                let outbox = self.outbox.clone();
                let node = self.node.clone();
                tokio::spawn(async move {
                    let result = outcome.await.unwrap_or_else(|_| {
                        Err(PublishError {
                            code: "unavailable",
                            message: "the node stopped before the event was stored".into(),
                        })
                    });
                    if result.is_err() {
                        node.metrics.publish_errors.inc();
                    }
                    let message = match publish_answer(format, &reference, result) {
                        Ok(message) => message,
                        Err(err) => encode_reply(format, &err.reply()),
                    };
                    outbox.push_reply(message);
                });
                Ok(Vec::new())
            }
            Request::Ack { delivery } => {
                let known = delivery
                    .parse::<u64>()
                    .ok()
                    .and_then(|id| self.unacked.remove(&id));
                match known {
                    Some(unacked) => {
                        unacked.subscription.delivery_settled();
                        if let Some(origin) = &unacked.origin {
                            self.node.cluster.settle_group(origin, true);
                        }
                        Ok(Vec::new())
                    }
                    None => Err(RequestError::new(
                        Some(&delivery),
                        ErrorCode::UnknownDelivery,
                        format!(
                            "delivery `{delivery}` is not awaiting an ack on this connection \
                             (already acked, redelivered after the ack timeout, or never sent here)"
                        ),
                    )),
                }
            }
            Request::Ping { reference } => Ok(vec![self.encode(&Reply::Pong {
                reference: reference.as_deref(),
            })]),
        }
    }

    /// Turns one page of a replay into frames (gaps, then events, topic by topic) and
    /// records how far each topic got; true when more pages follow.
    fn replay_page(
        &mut self,
        replay: &mut ReplayInProgress,
        page: Vec<TopicReplay>,
        frames: &mut Vec<Message>,
    ) -> bool {
        let sub_id = replay.subscription.id.clone();
        let mut more = false;
        for topic_replay in page {
            if replay.done.contains(&topic_replay.topic) {
                continue;
            }
            let TopicReplay {
                topic,
                replay: events,
                more: topic_more,
                ..
            } = topic_replay;
            if !events.gaps.is_empty() || !events.events.is_empty() {
                replay.answered.insert(topic.clone());
            }
            let metrics = &self.node.metrics;
            metrics.gaps_sent.inc_by(events.gaps.len() as u64);
            metrics.deliveries.inc_by(events.events.len() as u64);
            for gap in &events.gaps {
                frames.push(self.encode(&Reply::Gap {
                    sub: &sub_id,
                    topic: &gap.topic,
                    epoch: &gap.epoch,
                    from_seq: gap.from_seq,
                    to_seq: gap.to_seq,
                    reason: gap.reason,
                }));
            }
            for event in &events.events {
                frames.push(self.encode_event(&sub_id, event, None));
            }
            if let Some(last) = events.events.last() {
                let position = (last.epoch.clone(), last.seq);
                self.replayed_up_to
                    .entry(sub_id.clone())
                    .or_default()
                    .insert(last.topic.clone(), position.clone());
                self.last_sent
                    .entry(sub_id.clone())
                    .or_default()
                    .insert(last.topic.clone(), position);
                replay.cursors.insert(
                    last.topic.to_string(),
                    crate::protocol::Cursor {
                        epoch: last.epoch.to_string(),
                        seq: last.seq,
                    },
                );
            }
            if topic_more {
                more = true;
            } else {
                replay.done.insert(topic);
            }
        }
        more
    }

    /// Writes the pages of a replay after its first, each as asked for and written before
    /// the next is asked for.
    async fn continue_replay(&mut self, mut replay: ReplayInProgress) -> Result<(), Ending> {
        self.replaying = Some((replay.subscription.clone(), VecDeque::new()));
        let written = self.write_replay_pages(&mut replay).await;
        let held = self.replaying.take().map(|(_, held)| held);
        written?;
        self.finish_replay(&replay);
        // The replayed subscription's live events, in order, now that the replay is out:
        // copies of events already replayed are dropped by `admit`.
        let mut admitted = Vec::new();
        for item in held.into_iter().flatten() {
            if let Outbound::Event {
                sub,
                event,
                delivery,
            } = item
            {
                admitted.extend(self.admit(sub, event, delivery));
            }
        }
        let mut frames = Vec::new();
        self.encode_events(&mut admitted, &mut frames);
        self.write_all(frames).await?;
        if self.hole {
            return Err(Ending::Resync);
        }
        Ok(())
    }

    /// The pages after the first, each written before the next is asked for; what other
    /// subscriptions received meanwhile is written between pages.
    async fn write_replay_pages(&mut self, replay: &mut ReplayInProgress) -> Result<(), Ending> {
        loop {
            let from = replay.next_from();
            let pattern = replay.subscription.pattern.clone();
            let page = match self.node.cluster.replay(&pattern, &from, REPLAY_PAGE).await {
                Ok(page) => page,
                Err(err) => {
                    // The first page passed the same checks: only a bug gets here. The client
                    // resumes from what it got, so nothing is skipped silently.
                    tracing::warn!(%err, "a replay page failed; the client resyncs");
                    return Err(Ending::Resync);
                }
            };
            let mut frames = Vec::new();
            let more = self.replay_page(replay, page, &mut frames);
            self.write_all(frames).await?;
            if !more || !replay.subscription.is_active() {
                return Ok(());
            }
            if self.outbox.has_overflowed() {
                return Err(Ending::SlowConsumer);
            }
            if !self.outbox.is_empty() {
                self.write_queued().await?;
            }
        }
    }

    /// After the last page: a cursor the replay said nothing about is where the live stream
    /// must go on from. A live event past it means the replay missed events (the nodes that
    /// had them were not reachable from here yet, as right after a restart), and the hole
    /// check sends the client to resume again instead of skipping them.
    fn finish_replay(&mut self, replay: &ReplayInProgress) {
        let subscription = &replay.subscription;
        for (topic, cursor) in replay.from.cursors(&subscription.pattern) {
            if !replay.answered.contains(topic) {
                self.last_sent
                    .entry(subscription.id.clone())
                    .or_default()
                    .entry(topic.into())
                    .or_insert_with(|| (cursor.epoch.as_str().into(), cursor.seq));
            }
        }
    }

    /// Writes what is queued (up to a batch's worth) and flushes once. A client that asked
    /// for batches gets consecutive events in batch frames.
    async fn write_queued(&mut self) -> Result<(), Ending> {
        let take = self.batch.map_or(WRITE_BATCH, |b| {
            (b.max_events as usize).clamp(WRITE_BATCH, MAX_BATCHED_TAKE)
        });
        let mut items = Vec::new();
        self.outbox.take(take, &mut items);
        // Sized once: growing these a push at a time cost more allocations than the frames.
        let mut frames = Vec::with_capacity(if self.batch.is_some() { 4 } else { items.len() });
        let mut admitted = Vec::with_capacity(items.len());
        let mut events = 0;
        let mut held_overflow = false;
        for item in items {
            match item {
                Outbound::Reply(message) => {
                    events += admitted.len();
                    self.encode_events(&mut admitted, &mut frames);
                    frames.push(message);
                }
                Outbound::Event {
                    sub,
                    event,
                    delivery,
                } if self.hole => {
                    // The connection ends: what was taken after the hole is not written, and
                    // queue deliveries go to the rest of their group.
                    if let Some(delivery) = delivery {
                        self.redeliver(&sub, &event, delivery.origin);
                    }
                }
                Outbound::Event {
                    sub,
                    event,
                    delivery: None,
                } if self
                    .replaying
                    .as_ref()
                    .is_some_and(|(replayed, _)| Arc::ptr_eq(replayed, &sub)) =>
                {
                    let limit = self.node.settings.outbound_queue;
                    if let Some((_, held)) = self.replaying.as_mut() {
                        if held.len() < limit {
                            held.push_back(Outbound::Event {
                                sub,
                                event,
                                delivery: None,
                            });
                        } else {
                            // Too far behind: the connection ends once this batch is out,
                            // and the client resumes from its cursor.
                            held_overflow = true;
                        }
                    }
                }
                Outbound::Event {
                    sub,
                    event,
                    delivery,
                } => admitted.extend(self.admit(sub, event, delivery)),
            }
        }
        events += admitted.len();
        self.encode_events(&mut admitted, &mut frames);
        let after_write = if self.hole {
            Err(Ending::Resync)
        } else if held_overflow {
            Err(Ending::SlowConsumer)
        } else {
            Ok(())
        };
        if frames.is_empty() {
            return after_write;
        }
        self.node.metrics.deliveries.inc_by(events as u64);
        self.count_sent(&frames);
        let write_timeout = self.node.settings.write_timeout;
        let sink = &mut self.sink;
        let write = async {
            for message in frames {
                sink.feed(message).await?;
            }
            sink.flush().await
        };
        match tokio::time::timeout(write_timeout, write).await {
            Ok(Ok(())) => after_write,
            Ok(Err(_)) => Err(Ending::SocketError),
            Err(_) => Err(Ending::SlowConsumer),
        }
    }

    /// Encodes `admitted` (emptying it) into `frames`: one frame per event, or, for a client
    /// that asked for batches, batch frames within its bounds. A batch that would hold a
    /// single event is written as a plain `event` frame.
    fn encode_events(&self, admitted: &mut Vec<Admitted>, frames: &mut Vec<Message>) {
        let Some(limits) = self.batch.filter(|_| admitted.len() > 1) else {
            for a in admitted.drain(..) {
                frames.push(self.encode_event(&a.sub.id, &a.event, a.delivery.as_ref()));
            }
            return;
        };
        let max_events = (limits.max_events as usize).max(1);
        let max_bytes = limits.max_bytes as usize;
        let mut next = 0;
        while next < admitted.len() {
            let first = next;
            let mut frame = BatchBuilder::new(self.format);
            while next < admitted.len() && next - first < max_events {
                let a = &admitted[next];
                let mark = frame.len();
                frame.push(&a.sub.id, &a.event, a.delivery.as_ref());
                if next > first && frame.finished_len() > max_bytes {
                    frame.truncate(mark);
                    break;
                }
                next += 1;
            }
            if next - first == 1 {
                let a = &admitted[first];
                frames.push(self.encode_event(&a.sub.id, &a.event, a.delivery.as_ref()));
            } else {
                frames.push(frame.finish());
            }
        }
        admitted.clear();
    }

    /// Checks one queued event: `None` when it must not be sent because its subscription
    /// has ended (a queue delivery then goes to another member), it was already replayed,
    /// or it reveals a hole (the connection then ends with `resync`).
    fn admit(
        &mut self,
        sub: Arc<Subscription>,
        event: Arc<Event>,
        delivery: Option<Delivery>,
    ) -> Option<Admitted> {
        if !sub.is_active() {
            if let Some(delivery) = delivery {
                self.redeliver(&sub, &event, delivery.origin);
            }
            return None;
        }
        if !self.replayed_up_to.is_empty()
            && let Some(up_to) = self.replayed_up_to.get_mut(&sub.id)
            && let Some((epoch, seq)) = up_to.get(&event.topic)
        {
            if *epoch == event.epoch && event.seq <= *seq {
                return None;
            }
            up_to.remove(&event.topic);
            if up_to.is_empty() {
                self.replayed_up_to.remove(&sub.id);
            }
        }
        if let Some(delivery) = delivery {
            let deadline = Instant::now() + self.node.settings.ack_timeout;
            self.ack_deadlines.push_back((deadline, delivery.id));
            let written = Delivery {
                id: delivery.id,
                redelivered: delivery.redelivered,
                origin: None,
            };
            self.unacked.insert(
                delivery.id,
                Unacked {
                    subscription: sub.clone(),
                    event: event.clone(),
                    origin: delivery.origin,
                },
            );
            return Some(Admitted {
                sub,
                event,
                delivery: Some(written),
            });
        }
        let last = self
            .last_sent
            .get_mut(&*sub.id)
            .and_then(|topics| topics.get_mut(&*event.topic));
        match last {
            Some((epoch, last)) => {
                let same_epoch = Arc::ptr_eq(epoch, &event.epoch) || **epoch == *event.epoch;
                if same_epoch && event.seq <= *last {
                    // A second copy of an event this subscription already got (a forward
                    // repeated around a peer link's loss and return): once per subscription.
                    return None;
                }
                if same_epoch && event.seq > *last + 1 {
                    // Events between never reached this node (a peer link was lost): the
                    // client resumes from its cursor and gets them from history, or a gap
                    // naming them.
                    tracing::info!(topic = %event.topic, after = *last, got = event.seq, "sequence hole; resync");
                    self.hole = true;
                    return None;
                }
                if !same_epoch {
                    // The topic moved to a new epoch (its state was lost, or the nodes could
                    // not agree on its owner): whatever followed `last` in the old epoch may
                    // never come, and so may the new epoch's first events. The client's
                    // resume names the first with an `epoch_changed` gap and replays the others.
                    tracing::info!(topic = %event.topic, after = *last, got = event.seq, "epoch changed mid-stream; resync");
                    self.hole = true;
                    return None;
                }
                *last = event.seq;
            }
            None => {
                self.last_sent
                    .entry(sub.id.clone())
                    .or_default()
                    .insert(event.topic.clone(), (event.epoch.clone(), event.seq));
            }
        }
        Some(Admitted {
            sub,
            event,
            delivery: None,
        })
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

    fn encode_event(&self, sub: &str, event: &Event, delivery: Option<&Delivery>) -> Message {
        match self.format {
            Format::Json => {
                Message::Text(Utf8Bytes::from(json::encode_event(sub, event, delivery)))
            }
            Format::Protobuf => Message::Binary(protobuf::encode_event(sub, event, delivery)),
        }
    }

    fn count_sent(&self, messages: &[Message]) {
        let bytes: usize = messages
            .iter()
            .map(|m| match m {
                Message::Text(t) => t.len(),
                Message::Binary(b) => b.len(),
                _ => 0,
            })
            .sum();
        self.node.metrics.bytes_sent.inc_by(bytes as u64);
    }

    /// Writes several frames with one flush.
    async fn write_all(&mut self, messages: Vec<Message>) -> Result<(), Ending> {
        if messages.is_empty() {
            return Ok(());
        }
        self.count_sent(&messages);
        let sink = &mut self.sink;
        let write = async {
            for message in messages {
                sink.feed(message).await?;
            }
            sink.flush().await
        };
        match tokio::time::timeout(self.node.settings.write_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Ending::SocketError),
            Err(_) => Err(Ending::SlowConsumer),
        }
    }

    async fn write(&mut self, message: Message) -> Result<(), Ending> {
        self.count_sent(std::slice::from_ref(&message));
        match tokio::time::timeout(self.node.settings.write_timeout, self.sink.send(message)).await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Ending::SocketError),
            Err(_) => Err(Ending::SlowConsumer),
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
                "the connection fell behind: its outbound buffer is full; reconnect and resume",
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
                "this node lost contact with a peer and may have missed events for you; \
                 reconnect and resume from your cursor",
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

/// The `ok` (with the event's position) or `error` answering an acknowledged publish.
fn publish_answer(
    format: Format,
    reference: &str,
    result: Result<crate::broker::Receipt, PublishError>,
) -> Result<Message, RequestError> {
    match result {
        Ok(receipt) => Ok(encode_reply(
            format,
            &Reply::Ok {
                reference: Some(reference),
                position: Some((&receipt.epoch, receipt.seq)),
            },
        )),
        Err(err) => Err(RequestError::new(
            Some(reference),
            match err.code {
                "invalid_topic" => ErrorCode::InvalidTopic,
                "invalid_request" => ErrorCode::InvalidRequest,
                _ => ErrorCode::Unavailable,
            },
            err.message,
        )),
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

/// One batch frame being built, in the connection's format.
enum BatchBuilder {
    Json(String),
    Protobuf(protobuf::BatchFrame),
}

impl BatchBuilder {
    fn new(format: Format) -> Self {
        match format {
            Format::Json => Self::Json(json::BATCH_START.to_owned()),
            Format::Protobuf => Self::Protobuf(protobuf::BatchFrame::new()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Json(buf) => buf.len(),
            Self::Protobuf(frame) => frame.len(),
        }
    }

    /// The frame's size if it were finished now (at most; protobuf's header may be smaller).
    fn finished_len(&self) -> usize {
        match self {
            Self::Json(buf) => buf.len() + json::BATCH_END.len(),
            Self::Protobuf(frame) => frame.len(),
        }
    }

    fn push(&mut self, sub: &str, event: &Event, delivery: Option<&Delivery>) {
        match self {
            Self::Json(buf) => {
                if buf.len() > json::BATCH_START.len() {
                    buf.push(json::BATCH_SEPARATOR);
                }
                json::append_event(buf, sub, event, delivery);
            }
            Self::Protobuf(frame) => frame.push(sub, event, delivery),
        }
    }

    fn truncate(&mut self, len: usize) {
        match self {
            Self::Json(buf) => buf.truncate(len),
            Self::Protobuf(frame) => frame.truncate(len),
        }
    }

    fn finish(self) -> Message {
        match self {
            Self::Json(mut buf) => {
                buf.push_str(json::BATCH_END);
                Message::Text(Utf8Bytes::from(buf))
            }
            Self::Protobuf(frame) => Message::Binary(frame.finish()),
        }
    }
}
