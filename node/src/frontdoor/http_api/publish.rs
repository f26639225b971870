//! `POST /v1/publish`: one event (`{"topic": …, "data": …}`) or a batch
//! (`{"events": [...]}`), each answered with its `epoch` and `seq` once stored — what an
//! acknowledged WebSocket `pub` (one with a `ref`) gets, through the same path: the node's
//! publish buffer (backpressure, `unavailable`), the topic's owner and its replicas.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::error::ErrorBody;
use super::{ApiError, Caller, HttpApi, admit, forbidden};
use crate::cluster::topics::{Publication, PublishResult};
use crate::event::Payload;
use crate::frontdoor::listener::ClientConnection;
use crate::node::NodeState;
use crate::protocol::ErrorCode;
use crate::routing::dedupe::PublishId;
use crate::routing::topic;

/// The most events one request may carry.
pub const MAX_BATCH_EVENTS: usize = 1000;

/// What a publish costs in the node's publish buffer beyond its topic and data (as for a
/// WebSocket `pub`).
const PUBLISH_OVERHEAD_BYTES: usize = 64;

/// One event of a request, as read.
struct EventRequest<'a> {
    topic: String,
    data: &'a RawValue,
    /// Idempotency key, as a WebSocket `pub`'s `id` (the same key, so a publish sent again
    /// over either gets the first one's position); echoed in the result.
    id: Option<String>,
}

/// What the request held. A body that does not have the documented shape is refused whole;
/// the events of a well-formed batch are then answered one by one.
enum PublishRequest<'a> {
    One(EventRequest<'a>),
    Batch(Vec<EventRequest<'a>>),
}

/// An event's answer: its position, or why it was not published.
#[derive(Serialize)]
#[serde(untagged)]
enum EventResult<'a> {
    Stored {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        epoch: &'a str,
        seq: u64,
    },
    Refused {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        #[serde(flatten)]
        error: ErrorBody<'a>,
    },
}

#[derive(Serialize)]
struct BatchAnswer<'a> {
    results: Vec<EventResult<'a>>,
}

pub(super) async fn publish(
    State(node): State<Arc<NodeState>>,
    Extension(api): Extension<Arc<HttpApi>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    connection: Option<Extension<Arc<ClientConnection>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let caller = match admit(&node, peer, connection.as_deref().map(|c| &**c), &headers).await {
        Ok(caller) => caller,
        Err(err) => return err.into_response(),
    };
    if let Err(err) = check_content_type(&headers) {
        return err.into_response();
    }
    let max = node.settings.max_frame_bytes;
    let Ok(bytes) = axum::body::to_bytes(body, max).await else {
        return ApiError::from_code(
            ErrorCode::FrameTooLarge.as_str(),
            format!("the request body is over max_frame_bytes ({max} bytes), or was cut off"),
        )
        .into_response();
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return ApiError::from_code(
            ErrorCode::InvalidJson.as_str(),
            "the request body is not UTF-8 text",
        )
        .into_response();
    };
    let request = match read_request(text) {
        Ok(request) => request,
        Err(err) => return err.into_response(),
    };
    match request {
        PublishRequest::One(event) => {
            let pending = submit(&node, &api, &caller, &event).await;
            match resolve(&node, pending).await {
                Ok(receipt) => Json(EventResult::Stored {
                    id: event.id.as_deref(),
                    epoch: &receipt.epoch,
                    seq: receipt.seq,
                })
                .into_response(),
                Err(err) => err.into_response(),
            }
        }
        PublishRequest::Batch(events) => {
            // Submitted in order before any answer is awaited, so they keep their order.
            let mut pending = Vec::with_capacity(events.len());
            for event in &events {
                pending.push(submit(&node, &api, &caller, event).await);
            }
            let mut outcomes = Vec::with_capacity(pending.len());
            for waiting in pending {
                outcomes.push(resolve(&node, waiting).await);
            }
            let results = events
                .iter()
                .zip(&outcomes)
                .map(|(event, outcome)| {
                    let id = event.id.as_deref();
                    match outcome {
                        Ok(receipt) => EventResult::Stored {
                            id,
                            epoch: &receipt.epoch,
                            seq: receipt.seq,
                        },
                        Err(err) => EventResult::Refused {
                            id,
                            error: err.body(),
                        },
                    }
                })
                .collect();
            Json(BatchAnswer { results }).into_response()
        }
    }
}

/// Only JSON bodies: a browser cannot send `application/json` to another origin without a
/// CORS preflight, which this node does not grant, so a page elsewhere cannot publish
/// through a user's browser (with `auth = none`, say).
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::InvalidRequest.as_str(),
            "send the events as `Content-Type: application/json`",
        ))
    }
}

type Fields<'a> = BTreeMap<String, &'a RawValue>;

fn read_request(text: &str) -> Result<PublishRequest<'_>, ApiError> {
    let fields: Fields<'_> = serde_json::from_str(text).map_err(|err| {
        if err.is_data() {
            ApiError::invalid_request(
                "the body must be a JSON object: one event, or {\"events\": [...]}",
            )
        } else {
            ApiError::from_code(ErrorCode::InvalidJson.as_str(), format!("not JSON: {err}"))
        }
    })?;
    let Some(events) = fields.get("events") else {
        return read_event(&fields).map(PublishRequest::One);
    };
    if fields.contains_key("topic") || fields.contains_key("data") {
        return Err(ApiError::invalid_request(
            "a body holds one event (`topic`, `data`) or a batch (`events`), not both",
        ));
    }
    let events: Vec<&RawValue> = serde_json::from_str(events.get())
        .map_err(|_| ApiError::invalid_request("`events` must be an array of events"))?;
    if events.is_empty() {
        return Err(ApiError::invalid_request("`events` is empty"));
    }
    if events.len() > MAX_BATCH_EVENTS {
        return Err(ApiError::invalid_request(format!(
            "`events` holds {} events; at most {MAX_BATCH_EVENTS} per request",
            events.len()
        )));
    }
    let events = events
        .into_iter()
        .enumerate()
        .map(|(i, event)| {
            serde_json::from_str::<Fields<'_>>(event.get())
                .map_err(|_| {
                    ApiError::invalid_request("an event must be an object with `topic` and `data`")
                })
                .and_then(|fields| read_event(&fields))
                .map_err(|err| ApiError::invalid_request(format!("events[{i}]: {}", err.message)))
        })
        .collect::<Result<_, _>>()?;
    Ok(PublishRequest::Batch(events))
}

fn read_event<'a>(fields: &Fields<'a>) -> Result<EventRequest<'a>, ApiError> {
    let topic = match fields.get("topic") {
        None => {
            return Err(ApiError::invalid_request(
                "an event needs `topic` (a string)",
            ));
        }
        Some(raw) => serde_json::from_str::<String>(raw.get())
            .map_err(|_| ApiError::invalid_request("`topic` must be a string"))?,
    };
    let Some(data) = fields.get("data").copied() else {
        return Err(ApiError::invalid_request(
            "an event needs `data` (any JSON value)",
        ));
    };
    let id = match fields.get("id") {
        None => None,
        Some(raw) => serde_json::from_str::<Option<String>>(raw.get())
            .map_err(|_| ApiError::invalid_request("`id` must be a string"))?,
    };
    Ok(EventRequest { topic, data, id })
}

/// An event on its way, or why it never left.
enum Pending {
    Refused(ApiError),
    Waiting(oneshot::Receiver<PublishResult>),
}

/// The checks of a WebSocket `pub`, in the same order, then the publish itself.
async fn submit(
    node: &Arc<NodeState>,
    api: &HttpApi,
    caller: &Caller,
    event: &EventRequest<'_>,
) -> Pending {
    let settings = &node.settings;
    if event
        .id
        .as_ref()
        .is_some_and(|id| id.len() > settings.max_id_bytes)
    {
        return Pending::Refused(ApiError::invalid_request(format!(
            "`id` is longer than max_id_bytes ({})",
            settings.max_id_bytes
        )));
    }
    if event.id.as_ref().is_some_and(|id| id.is_empty()) {
        return Pending::Refused(ApiError::invalid_request("`id` must not be empty"));
    }
    if let Err(err) = topic::validate_publish_topic(&event.topic, settings.max_topic_bytes) {
        return Pending::Refused(ApiError::from_code(
            ErrorCode::InvalidTopic.as_str(),
            err.to_string(),
        ));
    }
    if !caller.identity.permissions.can_publish(&event.topic) {
        return Pending::Refused(forbidden(
            node,
            format!("your token does not allow publishing to `{}`", event.topic),
        ));
    }
    if let Some(limiter) = &api.publish_limiter
        && limiter.take(&caller.rate_key, 1, Instant::now()) == 0
    {
        node.metrics.publishes_rate_limited.inc();
        return Pending::Refused(ApiError::from_code(
            ErrorCode::RateLimited.as_str(),
            format!(
                "you publish faster than publish_rate ({}/s, burst {}); the event was not \
                 published",
                limiter.rate(),
                limiter.burst()
            ),
        ));
    }
    node.metrics.events_received.inc();
    let bytes = event.data.get().len() + event.topic.len() + PUBLISH_OVERHEAD_BYTES;
    let permit = match node.cluster.reserve_publish(bytes).await {
        Ok(permit) => permit,
        Err(err) => {
            node.metrics.publish_errors.inc();
            return Pending::Refused(ApiError::from_code(
                ErrorCode::Unavailable.as_str(),
                format!("not published to {}: {}", event.topic, err.message),
            ));
        }
    };
    let publication = Publication {
        payload: Payload::Json(Bytes::copy_from_slice(event.data.get().as_bytes())),
        id: event.id.as_deref().map(PublishId::client),
    };
    Pending::Waiting(node.cluster.submit(&event.topic, publication, Some(permit)))
}

/// Waits until the event is stored on its topic's owner and replicas, or refused.
async fn resolve(node: &NodeState, pending: Pending) -> Result<crate::broker::Receipt, ApiError> {
    let waiting = match pending {
        Pending::Refused(err) => return Err(err),
        Pending::Waiting(waiting) => waiting,
    };
    let refused = |code: &'static str, message: String| {
        node.metrics.publish_errors.inc();
        ApiError::from_code(code, message)
    };
    match waiting.await {
        Ok(Ok(receipt)) => Ok(receipt),
        Ok(Err(err)) => Err(refused(known_code(err.code), err.message)),
        Err(_) => Err(refused(
            ErrorCode::Unavailable.as_str(),
            "the node stopped before the event was stored".into(),
        )),
    }
}

/// The publish path's codes are the protocol's; anything else is reported as `unavailable`.
fn known_code(code: &str) -> &'static str {
    match code {
        "invalid_topic" => ErrorCode::InvalidTopic.as_str(),
        "invalid_request" => ErrorCode::InvalidRequest.as_str(),
        "forbidden" => ErrorCode::Forbidden.as_str(),
        "rate_limited" => ErrorCode::RateLimited.as_str(),
        _ => ErrorCode::Unavailable.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_one_event_or_a_batch_read_event_by_event() {
        let Ok(PublishRequest::One(event)) =
            read_request(r#"{"topic":"a.b","data":{"x":[1,2.50]},"id":"k1"}"#)
        else {
            panic!("one event");
        };
        assert_eq!(event.topic, "a.b");
        assert_eq!(event.data.get(), r#"{"x":[1,2.50]}"#, "data kept as sent");
        assert_eq!(event.id.as_deref(), Some("k1"));

        let Ok(PublishRequest::Batch(events)) =
            read_request(r#"{"events":[{"topic":"a","data":null},{"topic":"b*","data":1}]}"#)
        else {
            panic!("a batch");
        };
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].data.get(), "null");
        assert_eq!(
            events[1].topic, "b*",
            "its topic is checked when it is published"
        );

        let code = |body: &str| read_request(body).err().map(|e| (e.code, e.status));
        let bad = Some(("invalid_request", StatusCode::BAD_REQUEST));
        assert_eq!(
            code("{nope"),
            Some(("invalid_json", StatusCode::BAD_REQUEST))
        );
        assert_eq!(code("[1]"), bad);
        assert_eq!(code(r#"{"events":[]}"#), bad);
        assert_eq!(code(r#"{"events":{}}"#), bad);
        assert_eq!(code(r#"{"events":[],"topic":"a","data":1}"#), bad);
        assert_eq!(code(r#"{"topic":"a"}"#), bad);
        assert_eq!(code(r#"{"topic":1,"data":1}"#), bad);
        for malformed in [r#"{"data":1}"#, "7", r#"{"topic":"b","data":"x","id":3}"#] {
            let body = format!(r#"{{"events":[{{"topic":"a","data":1}},{malformed}]}}"#);
            let refused = read_request(&body).err();
            assert!(
                refused.is_some_and(
                    |e| e.code == "invalid_request" && e.message.starts_with("events[1]: ")
                ),
                "{malformed}: the whole batch is refused, naming the event"
            );
        }
        let many = format!(
            r#"{{"events":[{}]}}"#,
            vec![r#"{"topic":"a","data":1}"#; MAX_BATCH_EVENTS + 1].join(",")
        );
        assert_eq!(code(&many), bad);
    }
}
