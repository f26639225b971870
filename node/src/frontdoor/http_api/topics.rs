//! `GET /v1/topics?prefix=…&after=…&limit=…`: the topics the cluster knows, in name order,
//! with their epoch and last seq (the newest knowledge among the nodes, asked as a resume
//! asks them) and the subscriptions on this node their events go to.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::{ApiError, admit};
use crate::broker::ReplayPage;
use crate::frontdoor::listener::ClientConnection;
use crate::node::NodeState;
use crate::protocol::ResumeFrom;
use crate::routing::topic;

/// Topics per answer when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// The most topics one answer lists.
pub const MAX_LIMIT: usize = 1000;

/// The smallest replay page: the topics' knowledge (epoch, last seq) is what is wanted, not
/// their events (a page holds at least one event when there is one; it is dropped).
const KNOWLEDGE_ONLY: ReplayPage = ReplayPage {
    max_events: 1,
    max_bytes: 1,
};

#[derive(Debug, Deserialize)]
pub(super) struct TopicsQuery {
    prefix: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

#[derive(Debug, Serialize)]
struct TopicJson {
    topic: String,
    epoch: String,
    last_seq: u64,
    local_subscribers: usize,
}

#[derive(Debug, Serialize)]
struct TopicsPage {
    topics: Vec<TopicJson>,
    /// More topics follow: ask again with `after` = `next`.
    more: bool,
    next: Option<String>,
}

pub(super) async fn topics(
    State(node): State<Arc<NodeState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    connection: Option<Extension<Arc<ClientConnection>>>,
    headers: HeaderMap,
    query: Result<Query<TopicsQuery>, QueryRejection>,
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
        Ok(page) => Json(page).into_response(),
        Err(err) => err.into_response(),
    }
}

async fn serve(
    node: &NodeState,
    peer: SocketAddr,
    connection: Option<&ClientConnection>,
    headers: &HeaderMap,
    query: Result<Query<TopicsQuery>, QueryRejection>,
) -> Result<TopicsPage, ApiError> {
    let caller = admit(node, peer, connection, headers).await?;
    let Query(query) = query.map_err(|err| ApiError::invalid_request(err.body_text()))?;
    let max_topic_bytes = node.settings.max_topic_bytes;
    let prefix = query.prefix.unwrap_or_default();
    if prefix.len() > max_topic_bytes {
        return Err(ApiError::invalid_request(format!(
            "`prefix` is longer than max_topic_bytes ({max_topic_bytes})"
        )));
    }
    if query
        .after
        .as_ref()
        .is_some_and(|a| a.len() > max_topic_bytes)
    {
        return Err(ApiError::invalid_request(format!(
            "`after` is longer than max_topic_bytes ({max_topic_bytes})"
        )));
    }
    let limit = match query.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::invalid_request(format!(
                    "`limit` must be an integer from 1 to {MAX_LIMIT}"
                ))
            })?,
    };
    let pattern = pattern_for(&prefix, max_topic_bytes);
    let known = node
        .cluster
        .replay(&pattern, &ResumeFrom::Earliest, KNOWLEDGE_ONLY)
        .await
        .map_err(|err| ApiError::invalid_request(err.to_string()))?;
    let permissions = &caller.identity.permissions;
    // In name order (the replay sorts them); forgotten topics are not there.
    let mut listed = known
        .into_iter()
        .filter(|t| !t.epoch.is_empty() && t.topic.starts_with(&prefix))
        .filter(|t| query.after.as_deref().is_none_or(|after| &*t.topic > after))
        .filter(|t| permissions.can_subscribe(&t.topic));
    let topics: Vec<TopicJson> = listed
        .by_ref()
        .take(limit)
        .map(|t| TopicJson {
            local_subscribers: node.broker.local_subscribers(&t.topic),
            topic: t.topic.to_string(),
            epoch: t.epoch.to_string(),
            last_seq: t.last_seq,
        })
        .collect();
    let more = listed.next().is_some();
    let next = more
        .then(|| topics.last().map(|t| t.topic.clone()))
        .flatten();
    Ok(TopicsPage { topics, more, next })
}

/// The narrowest pattern that covers every topic starting with `prefix`: `p.>` for a prefix
/// `p.` of whole tokens, else every topic (and the prefix filters).
fn pattern_for(prefix: &str, max_topic_bytes: usize) -> String {
    if let Some(tokens) = prefix.strip_suffix('.') {
        let pattern = format!("{tokens}.>");
        if !topic::is_wildcard(tokens)
            && topic::validate_pattern(&pattern, max_topic_bytes + 2).is_ok()
        {
            return pattern;
        }
    }
    ">".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_of_whole_tokens_narrows_the_pattern() {
        assert_eq!(pattern_for("", 256), ">");
        assert_eq!(pattern_for("chat.", 256), "chat.>");
        assert_eq!(pattern_for("chat.eu.", 256), "chat.eu.>");
        assert_eq!(pattern_for("chat", 256), ">", "also chatter.x");
        assert_eq!(pattern_for("chat..", 256), ">");
        assert_eq!(pattern_for("*.", 256), ">");
        assert_eq!(pattern_for(".", 256), ">");
    }
}
