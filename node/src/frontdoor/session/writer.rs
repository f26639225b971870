//! Writing to the client: the outbox drained onto the socket in flushes (batch frames for
//! a client that asked), the checks each queued event passes first, and plain writes.

use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes};
use futures_util::SinkExt;
use tokio::time::Instant;

use super::{Ending, Session, Unacked};
use crate::broker::{Outbound, Subscription};
use crate::event::{Delivery, Event};
use crate::protocol::{Format, json, protobuf, runs};

/// Events written to the socket per flush, at most (without batch frames).
const WRITE_BATCH: usize = 64;

/// Events taken from the outbox per flush, at most, for a client that gets batch frames.
const MAX_BATCHED_TAKE: usize = 1024;

/// An event that passed the session's checks and is to be written.
pub(super) struct Admitted {
    sub: Arc<Subscription>,
    event: Arc<Event>,
    /// Queue-group deliveries: the id and redelivery flag to write.
    delivery: Option<Delivery>,
}

/// One batch frame being built, in the connection's format and batch layout.
enum BatchBuilder {
    Json(String),
    Protobuf(protobuf::BatchFrame),
    JsonRuns(runs::JsonRuns),
    ProtobufRuns(runs::ProtobufRuns),
}

impl BatchBuilder {
    fn new(format: Format, compact: bool) -> Self {
        match (format, compact) {
            (Format::Json, false) => Self::Json(json::BATCH_START.to_owned()),
            (Format::Protobuf, false) => Self::Protobuf(protobuf::BatchFrame::new()),
            (Format::Json, true) => Self::JsonRuns(runs::JsonRuns::new()),
            (Format::Protobuf, true) => Self::ProtobufRuns(runs::ProtobufRuns::new()),
        }
    }

    /// Adds the event unless the frame would then exceed `max_bytes`; the frame's first
    /// event is always taken (a frame of one is written as a plain event).
    fn push_within(&mut self, a: &Admitted, first: bool, max_bytes: usize) -> bool {
        let (sub, event, delivery) = (&a.sub.id, &*a.event, a.delivery.as_ref());
        match self {
            Self::Json(buf) => {
                let mark = buf.len();
                if buf.len() > json::BATCH_START.len() {
                    buf.push(json::BATCH_SEPARATOR);
                }
                json::append_event(buf, sub, event, delivery);
                if !first && buf.len() + json::BATCH_END.len() > max_bytes {
                    buf.truncate(mark);
                    return false;
                }
                true
            }
            Self::Protobuf(frame) => {
                let mark = frame.len();
                frame.push(sub, event, delivery);
                // At most: the header may take less than the room kept for it.
                if !first && frame.len() > max_bytes {
                    frame.truncate(mark);
                    return false;
                }
                true
            }
            Self::JsonRuns(frame) => {
                if !first && !frame.fits(sub, event, delivery, max_bytes) {
                    return false;
                }
                frame.push(sub, event, delivery);
                true
            }
            Self::ProtobufRuns(frame) => {
                if !first && !frame.fits(sub, event, delivery, max_bytes) {
                    return false;
                }
                frame.push(sub, event, delivery);
                true
            }
        }
    }

    fn finish(self) -> Message {
        match self {
            Self::Json(mut buf) => {
                buf.push_str(json::BATCH_END);
                Message::Text(Utf8Bytes::from(buf))
            }
            Self::Protobuf(frame) => Message::Binary(frame.finish()),
            Self::JsonRuns(frame) => Message::Text(Utf8Bytes::from(frame.finish())),
            Self::ProtobufRuns(frame) => Message::Binary(frame.finish()),
        }
    }
}

impl Session {
    /// Writes what is queued (up to a batch's worth) and flushes once. A client that asked
    /// for batches gets consecutive events in batch frames.
    pub(super) async fn write_queued(&mut self) -> Result<(), Ending> {
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
                Outbound::Gap { sub, gap } => {
                    events += admitted.len();
                    self.encode_events(&mut admitted, &mut frames);
                    self.node.metrics.gaps_sent.inc();
                    frames.push(self.encode(&crate::protocol::Reply::Gap {
                        sub: &sub.id,
                        topic: &gap.topic,
                        epoch: &gap.epoch,
                        from_seq: gap.from_seq,
                        to_seq: gap.to_seq,
                        reason: "retention",
                    }));
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
                    let max_events = match self.node.settings.outbound_queue {
                        0 => usize::MAX,
                        n => n,
                    };
                    let bytes = crate::broker::queued_bytes(&event);
                    let fits = self.replaying_bytes.saturating_add(bytes)
                        <= self.node.settings.slow_consumer_bytes;
                    if let Some((_, held)) = self.replaying.as_mut() {
                        if held.is_empty() || (held.len() < max_events && fits) {
                            self.replaying_bytes += bytes;
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
        if events > 0 {
            self.node.metrics.event_writes.inc();
        }
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
    pub(super) fn encode_events(&self, admitted: &mut Vec<Admitted>, frames: &mut Vec<Message>) {
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
            let mut frame = BatchBuilder::new(self.format, limits.compact);
            while next < admitted.len()
                && next - first < max_events
                && frame.push_within(&admitted[next], next == first, max_bytes)
            {
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
    pub(super) fn admit(
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
            .and_then(|topics| topics.get_mut(&event.topic));
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

    pub(super) fn encode_event(
        &self,
        sub: &str,
        event: &Event,
        delivery: Option<&Delivery>,
    ) -> Message {
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
    pub(super) async fn write_all(&mut self, messages: Vec<Message>) -> Result<(), Ending> {
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

    pub(super) async fn write(&mut self, message: Message) -> Result<(), Ending> {
        self.count_sent(std::slice::from_ref(&message));
        match tokio::time::timeout(self.node.settings.write_timeout, self.sink.send(message)).await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Ending::SocketError),
            Err(_) => Err(Ending::SlowConsumer),
        }
    }
}
