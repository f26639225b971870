//! The client's requests: the checks every request passes, then `hello`, `refresh`, `sub`,
//! `unsub`, `pub`, `ack` and `ping`.

use std::sync::Arc;

use axum::extract::ws::Message;
use tokio::time::Instant;

use super::replay::{REPLAY_PAGE, ReplayInProgress};
use super::{Session, encode_reply};
use crate::broker::Subscription;
use crate::cluster::topics::{Publication, PublishError};
use crate::protocol::{BatchLimits, ErrorCode, Format, Reply, Request, RequestError};
use crate::routing::dedupe::PublishId;
use crate::routing::topic;

/// What a publish costs in the node's publish buffer beyond its topic and data: the request
/// around them.
const PUBLISH_OVERHEAD_BYTES: usize = 64;

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

impl Session {
    /// Ends subscription `id`: its unacknowledged deliveries go to the rest of its group.
    /// False when this connection holds no such subscription.
    pub(super) fn end_subscription(&mut self, id: &str) -> bool {
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
    pub(super) fn admit_request(&mut self, request: Request) -> Result<Request, RequestError> {
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
    pub(super) async fn handle(&mut self, request: Request) -> Result<Vec<Message>, RequestError> {
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
                id,
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
                let publication = Publication {
                    payload,
                    id: id.as_deref().map(PublishId::client),
                };
                let Some(reference) = reference else {
                    self.node
                        .cluster
                        .submit_unanswered(&name, publication, Some(permit));
                    return Ok(Vec::new());
                };
                let mut outcome = self.node.cluster.submit(&name, publication, Some(permit));
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
                        match &unacked.origin {
                            // Placed by a peer: that node records the group's progress.
                            Some(origin) => self.node.cluster.settle_group(origin, true),
                            None => self
                                .node
                                .broker
                                .group_delivery_acked(&unacked.subscription, &unacked.event),
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
}
