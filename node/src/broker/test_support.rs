//! What the broker's unit tests share: subscribing an outbox, a JSON payload, and draining
//! an outbox to (subscription id, seq, delivery).

use std::sync::Arc;

use bytes::Bytes;

use super::{Broker, Outbound, Outbox, Subscription};
use crate::event::{Delivery, Payload};

pub(super) fn subscription(
    broker: &Broker,
    id: &str,
    pattern: &str,
    group: Option<&str>,
    outbox: &Arc<Outbox>,
) -> Arc<Subscription> {
    let sub = Arc::new(Subscription::new(
        id.into(),
        pattern.into(),
        group.map(Into::into),
        outbox.clone(),
    ));
    broker.subscribe(sub.clone());
    sub
}

pub(super) fn json(text: &'static str) -> Payload {
    Payload::Json(Bytes::from_static(text.as_bytes()))
}

pub(super) fn drain(outbox: &Outbox) -> Vec<(String, u64, Option<Delivery>)> {
    let mut items = Vec::new();
    outbox.take(usize::MAX, &mut items);
    items
        .into_iter()
        .filter_map(|item| match item {
            Outbound::Event {
                sub,
                event,
                delivery,
            } => Some((sub.id.to_string(), event.seq, delivery)),
            Outbound::Reply(_) | Outbound::Gap { .. } => None,
        })
        .collect()
}
