//! `GET /v1/history?topic=…&from=…&limit=…`: a topic's retained events after a cursor, one
//! page at a time, with the gaps a WebSocket resume would get. Read through the cluster's
//! resume path (`Cluster::replay`), so any node answers with the newest knowledge of the
//! topic's owner and replicas.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{ApiError, admit, forbidden};
use crate::broker::{ReplayPage, TopicReplay};
use crate::frontdoor::listener::ClientConnection;
use crate::node::NodeState;
use crate::protocol::{Cursor, ErrorCode, ResumeFrom, json};
use crate::routing::topic;

/// Events per page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// The most events a page may hold (as a WebSocket resume's page).
pub const MAX_LIMIT: usize = 1000;
/// Bytes of event data per page beyond its first event: a page of large events is cut
/// short (with `more`) rather than grown without bound.
const MAX_PAGE_BYTES: usize = 1024 * 1024;

#[derive(Debug, Deserialize)]
pub(super) struct HistoryQuery {
    topic: Option<String>,
    from: Option<String>,
    limit: Option<String>,
}

/// The cursor form of the protocol: `{"epoch": …, "seq": …}`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct CursorJson {
    epoch: String,
    seq: u64,
}

#[derive(Serialize)]
struct GapJson<'a> {
    epoch: &'a str,
    from_seq: u64,
    to_seq: u64,
    reason: &'a str,
}

#[derive(Serialize)]
struct HistoryPage<'a> {
    topic: &'a str,
    /// The topic's current epoch and last seq, as the cluster knows them; null when no node
    /// knows the topic.
    epoch: Option<&'a str>,
    last_seq: Option<u64>,
    gaps: Vec<GapJson<'a>>,
    /// Where the next page starts (pass it as `from`); null: start from `earliest`.
    next: Option<CursorJson>,
    more: bool,
}

pub(super) async fn history(
    State(node): State<Arc<NodeState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    connection: Option<Extension<Arc<ClientConnection>>>,
    headers: HeaderMap,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Response {
    match serve(
        &node,
        peer,
        connection.as_deref().map(|c| &**c),
        &headers,
        query,
    )
    .await
    {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn serve(
    node: &NodeState,
    peer: SocketAddr,
    connection: Option<&ClientConnection>,
    headers: &HeaderMap,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = admit(node, peer, connection, headers).await?;
    let Query(query) = query.map_err(|err| ApiError::invalid_request(err.body_text()))?;
    let topic = query
        .topic
        .ok_or_else(|| ApiError::invalid_request("`topic` is required"))?;
    topic::validate_publish_topic(&topic, node.settings.max_topic_bytes).map_err(|err| {
        ApiError::from_code(
            ErrorCode::InvalidTopic.as_str(),
            format!("{err} (history is read one topic at a time)"),
        )
    })?;
    let from = parse_from(query.from.as_deref())?;
    let limit = parse_limit(query.limit.as_deref())?;
    let permissions = &caller.identity.permissions;
    if !permissions.can_subscribe(&topic) || !permissions.can_read_history(&topic) {
        return Err(forbidden(
            node,
            format!(
                "your token does not allow reading the history of `{topic}` (it needs `sub` and `history`)"
            ),
        ));
    }
    let page = ReplayPage {
        max_events: limit,
        max_bytes: MAX_PAGE_BYTES,
    };
    let replays = node
        .cluster
        .replay(&topic, &from, page)
        .await
        .map_err(|err| ApiError::invalid_request(err.to_string()))?;
    let replay = replays.into_iter().find(|r| *r.topic == *topic);
    let metrics = &node.metrics;
    if let Some(replay) = &replay {
        metrics.gaps_sent.inc_by(replay.replay.gaps.len() as u64);
        metrics.deliveries.inc_by(replay.replay.events.len() as u64);
    }
    let body = page_json(&topic, &from, replay.as_ref());
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `earliest` (the default) or a cursor `{"epoch":"E","seq":N}`.
fn parse_from(from: Option<&str>) -> Result<ResumeFrom, ApiError> {
    let usage = "`from` is `earliest` or a cursor {\"epoch\":\"…\",\"seq\":N} (JSON, URL-encoded)";
    match from.map(str::trim) {
        // Bare, or as the JSON string the OpenAPI document describes.
        None | Some("earliest" | "\"earliest\"") => Ok(ResumeFrom::Earliest),
        Some(text) if text.starts_with('{') => {
            let cursor: CursorJson = serde_json::from_str(text)
                .map_err(|err| ApiError::invalid_request(format!("{usage}: {err}")))?;
            if cursor.epoch.is_empty() {
                return Err(ApiError::invalid_request(
                    "a cursor's `epoch` must not be empty",
                ));
            }
            if cursor.seq > Cursor::MAX_SEQ {
                return Err(ApiError::invalid_request(format!(
                    "a cursor's `seq` is at most {}",
                    Cursor::MAX_SEQ
                )));
            }
            Ok(ResumeFrom::Cursor(Cursor {
                epoch: cursor.epoch,
                seq: cursor.seq,
            }))
        }
        Some(_) => Err(ApiError::invalid_request(usage)),
    }
}

fn parse_limit(limit: Option<&str>) -> Result<usize, ApiError> {
    let Some(limit) = limit else {
        return Ok(DEFAULT_LIMIT);
    };
    limit
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| {
            ApiError::invalid_request(format!("`limit` must be an integer from 1 to {MAX_LIMIT}"))
        })
}

/// The page as JSON. `next` is where the following page starts: after the last event
/// returned; with no event, after what the gaps covered (the topic's last seq), or the cursor
/// asked with when nothing at all was said; null when no node knows the topic (start again
/// from `earliest`).
fn page_json(topic: &str, from: &ResumeFrom, replay: Option<&TopicReplay>) -> String {
    let known = replay.filter(|r| !r.epoch.is_empty());
    let (gaps, events) = match replay {
        Some(r) => (&r.replay.gaps[..], &r.replay.events[..]),
        None => (&[][..], &[][..]),
    };
    let next = if let Some(last) = events.last() {
        Some(CursorJson {
            epoch: last.epoch.to_string(),
            seq: last.seq,
        })
    } else if let (true, ResumeFrom::Cursor(cursor)) = (gaps.is_empty(), from) {
        Some(CursorJson {
            epoch: cursor.epoch.clone(),
            seq: cursor.seq,
        })
    } else {
        known.map(|r| CursorJson {
            epoch: r.epoch.to_string(),
            seq: r.last_seq,
        })
    };
    let page = HistoryPage {
        topic,
        epoch: known.map(|r| &*r.epoch),
        last_seq: known.map(|r| r.last_seq),
        gaps: gaps
            .iter()
            .map(|g| GapJson {
                epoch: &g.epoch,
                from_seq: g.from_seq,
                to_seq: g.to_seq,
                reason: g.reason,
            })
            .collect(),
        next,
        more: replay.is_some_and(|r| r.more),
    };
    // Serializing these plain fields cannot fail.
    let rest = serde_json::to_string(&page).unwrap_or_default();
    // The events go in as the encoded text every `event` frame shares (each one an object as
    // in a frame, without `op` and `sub`): not parsed and written again.
    let mut out = String::with_capacity(rest.len() + 64 * events.len() + 16);
    out.push_str("{\"events\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json::append_event_object(&mut out, event);
    }
    out.push_str("],");
    out.push_str(rest.strip_prefix('{').unwrap_or(&rest));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_is_earliest_or_a_cursor_and_limit_is_bounded() {
        assert_eq!(parse_from(None), Ok(ResumeFrom::Earliest));
        assert_eq!(parse_from(Some("earliest")), Ok(ResumeFrom::Earliest));
        assert_eq!(parse_from(Some("\"earliest\"")), Ok(ResumeFrom::Earliest));
        assert_eq!(
            parse_from(Some(r#"{"epoch":"e1","seq":4}"#)),
            Ok(ResumeFrom::Cursor(Cursor {
                epoch: "e1".into(),
                seq: 4
            }))
        );
        for bad in [
            "latest",
            r#"{"epoch":"","seq":1}"#,
            r#"{"epoch":"e"}"#,
            r#"{"epoch":"e","seq":-1}"#,
            r#"{"epoch":"e","seq":18446744073709551615}"#,
            "e:1",
        ] {
            assert_eq!(
                parse_from(Some(bad)).err().map(|e| e.code),
                Some("invalid_request"),
                "{bad}"
            );
        }
        assert_eq!(parse_limit(None), Ok(DEFAULT_LIMIT));
        assert_eq!(parse_limit(Some("1000")), Ok(1000));
        for bad in ["0", "1001", "-1", "x"] {
            assert!(parse_limit(Some(bad)).is_err(), "{bad}");
        }
    }
}
