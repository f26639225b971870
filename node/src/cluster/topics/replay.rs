//! Resumes across the cluster: asking the nodes that can hold a topic (its placement; every
//! node for a wildcard) what they can replay and keeping, per topic, the answer with the
//! newest knowledge; answering other nodes' replay requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use murmur_proto::cluster::v1 as pb;

use crate::broker::{ReplayPage, TopicReplay};
use crate::cluster::Cluster;
use crate::cluster::link::{PeerLink, PeerMessage};
use crate::cluster::transport::{event_from_pb, event_pb};
use crate::protocol::{Cursor, ResumeFrom};
use crate::routing::topic::is_wildcard;
use crate::routing::topics::newer_epoch;
use crate::storage::{Gap, Replay, reason};

/// The largest page of a replay this node answers a peer with, whatever the peer asks: well
/// within the largest peer frame.
const MAX_REPLAY_PAGE: ReplayPage = ReplayPage {
    max_events: 10_000,
    max_bytes: 16 * 1024 * 1024,
};

/// How long a resume waits for links to every live member, after the view grew, before it
/// asks the linked ones.
const RESUME_LINK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

impl Cluster {
    /// Waits until this node has joined its cluster, its view has stopped growing (see
    /// `view_settle`: members found one by one after a start) and it has a link to every
    /// live member, at most `patience`.
    async fn wait_for_links(&self, patience: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + patience;
        while tokio::time::Instant::now() < deadline
            && (!self.has_joined()
                || self.view_settle.remaining().is_some()
                || self.live_member_unlinked())
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// True when a live member has no open link from this node.
    fn live_member_unlinked(&self) -> bool {
        let view = self.gossip.view.read();
        view.live_peers()
            .iter()
            .any(|p| self.link_to(&p.name).is_none_or(|link| link.is_closed()))
    }

    /// What a subscription on `pattern` resuming `from` missed, from the newest knowledge
    /// anywhere in the cluster: per topic, gaps then events.
    pub async fn replay(
        &self,
        pattern: &str,
        from: &ResumeFrom,
        page: ReplayPage,
    ) -> Result<Vec<TopicReplay>, crate::broker::ResumeError> {
        if matches!(from, ResumeFrom::Latest) {
            self.broker.replay_candidates(pattern, from, page)?;
            return Ok(Vec::new());
        }
        // Before this node joined its cluster, and right after its view grew (it started,
        // or members came back), a member it has not found or linked to yet would not be
        // asked, and a topic only that member holds would be told `epoch_changed` although
        // nothing changed (chaos `kill-all` on 5 nodes): wait for the view to settle and
        // the links, at most 2 s. A member going down does not make the view grow, so a
        // resume during a failover does not wait.
        if !self.has_joined() || self.view_settle.remaining().is_some() {
            self.wait_for_links(RESUME_LINK_PATIENCE).await;
        }
        let mut candidates = self.broker.replay_candidates(pattern, from, page)?;
        let request_from = replay_from_pb(from);
        let make = |id| {
            pb::peer_frame::Msg::ReplayRequest(pb::ReplayRequest {
                id,
                pattern: pattern.to_owned(),
                from: request_from.clone(),
                max_events: u32::try_from(page.max_events).unwrap_or(u32::MAX),
                max_bytes: page.max_bytes as u64,
            })
        };
        // A single topic's history is on its placement (owner and replicas): ask those
        // nodes first. If what they answer leaves a gap — none knows the topic, or a node
        // that just (re)joined the placement is still being handed its history — the rest
        // are asked too, so a targeted resume never reports a gap the cluster could have
        // filled. A wildcard asks every node, once.
        let placement = (!is_wildcard(pattern)).then(|| {
            let mut placement = self.placement(pattern);
            placement.truncate(self.replication);
            placement
        });
        let in_placement = |name: &str| {
            placement
                .as_ref()
                .is_some_and(|nodes| nodes.iter().any(|n| n == name))
        };
        let answers = match &placement {
            Some(_) => self.ask_peers(in_placement, make).await,
            None => self.ask_all(make).await,
        };
        extend_candidates(&mut candidates, answers);
        if placement.is_some() && !covers_without_gap(&candidates) {
            self.stats
                .resumes_asked_everyone
                .fetch_add(1, Ordering::Relaxed);
            let answers = self.ask_peers(|name| !in_placement(name), make).await;
            extend_candidates(&mut candidates, answers);
        }
        let mut best: HashMap<Arc<str>, TopicReplay> = HashMap::new();
        for candidate in candidates {
            match best.get(&candidate.topic) {
                Some(current) if !better_replay(&candidate, current) => {}
                _ => {
                    best.insert(candidate.topic.clone(), candidate);
                }
            }
        }
        // Cursors for topics nobody knows any more: what followed them is unknown.
        let cursors = from.cursors(pattern);
        let unknown: Vec<(&str, &Cursor)> = cursors
            .into_iter()
            .filter(|(topic, _)| !best.contains_key(*topic))
            .collect();
        let mut replays: Vec<TopicReplay> = best.into_values().collect();
        for (topic, cursor) in unknown {
            let topic: Arc<str> = topic.into();
            replays.push(TopicReplay {
                topic: topic.clone(),
                epoch: "".into(),
                last_seq: 0,
                replay: Replay {
                    gaps: vec![Gap {
                        topic,
                        epoch: cursor.epoch.as_str().into(),
                        from_seq: cursor.seq + 1,
                        to_seq: 0,
                        reason: reason::EPOCH_CHANGED,
                    }],
                    events: Vec::new(),
                },
                more: false,
            });
        }
        replays.sort_by(|a, b| a.topic.cmp(&b.topic));
        Ok(replays)
    }

    pub(in crate::cluster) fn on_replay_request(
        &self,
        link: &PeerLink,
        request: pb::ReplayRequest,
    ) {
        self.stats
            .replay_requests_served
            .fetch_add(1, Ordering::Relaxed);
        let from = replay_from_from_pb(request.from);
        // A peer's page bound, within this node's own: an answer never outgrows a frame.
        let bounded = |asked: usize, ours: usize| if asked == 0 { ours } else { asked.min(ours) };
        let page = ReplayPage {
            max_events: bounded(request.max_events as usize, MAX_REPLAY_PAGE.max_events),
            max_bytes: bounded(
                usize::try_from(request.max_bytes).unwrap_or(usize::MAX),
                MAX_REPLAY_PAGE.max_bytes,
            ),
        };
        let topics = self
            .broker
            .replay_candidates(&request.pattern, &from, page)
            .unwrap_or_default()
            .into_iter()
            .map(topic_replay_pb)
            .collect();
        link.send_control(PeerMessage::Frame(pb::peer_frame::Msg::ReplayReply(
            pb::ReplayReply {
                id: request.id,
                topics,
            },
        )));
    }
}

/// Adds the topics peers' answers to a replay request know to `candidates`.
fn extend_candidates(
    candidates: &mut Vec<TopicReplay>,
    answers: impl IntoIterator<Item = Option<pb::peer_frame::Msg>>,
) {
    for answer in answers.into_iter().flatten() {
        if let pb::peer_frame::Msg::ReplayReply(reply) = answer {
            candidates.extend(reply.topics.into_iter().map(topic_replay_from_pb));
        }
    }
}

/// True when some answer replays the topic without a gap: all a resume of one topic needs.
fn covers_without_gap(candidates: &[TopicReplay]) -> bool {
    candidates.iter().any(|c| c.replay.gaps.is_empty())
}

/// Newest epoch, then highest sequence number, then the replay with more events (a node that
/// kept more history) and fewer gaps.
fn better_replay(a: &TopicReplay, b: &TopicReplay) -> bool {
    if newer_epoch(&a.epoch, &b.epoch) {
        return true;
    }
    if a.epoch != b.epoch || a.last_seq != b.last_seq {
        return a.epoch == b.epoch && a.last_seq > b.last_seq;
    }
    (
        a.replay.events.len(),
        std::cmp::Reverse(a.replay.gaps.len()),
    ) > (
        b.replay.events.len(),
        std::cmp::Reverse(b.replay.gaps.len()),
    )
}

fn cursor_pb(c: &Cursor) -> pb::Cursor {
    pb::Cursor {
        epoch: c.epoch.clone(),
        seq: c.seq,
    }
}

fn replay_from_pb(from: &ResumeFrom) -> Option<pb::replay_request::From> {
    match from {
        ResumeFrom::Latest => None,
        ResumeFrom::Earliest => Some(pb::replay_request::From::Earliest(true)),
        ResumeFrom::Cursor(c) => Some(pb::replay_request::From::Cursor(cursor_pb(c))),
        ResumeFrom::Topics { topics, since } => {
            Some(pb::replay_request::From::Topics(pb::TopicsCursor {
                topics: topics
                    .iter()
                    .map(|(t, c)| (t.clone(), cursor_pb(c)))
                    .collect(),
                since: *since,
            }))
        }
    }
}

fn replay_from_from_pb(from: Option<pb::replay_request::From>) -> ResumeFrom {
    let cursor = |c: pb::Cursor| Cursor {
        epoch: c.epoch,
        seq: c.seq,
    };
    match from {
        None => ResumeFrom::Latest,
        Some(pb::replay_request::From::Earliest(_)) => ResumeFrom::Earliest,
        Some(pb::replay_request::From::Cursor(c)) => ResumeFrom::Cursor(cursor(c)),
        Some(pb::replay_request::From::Topics(t)) => ResumeFrom::Topics {
            topics: t.topics.into_iter().map(|(k, c)| (k, cursor(c))).collect(),
            since: t.since,
        },
    }
}

fn topic_replay_pb(candidate: TopicReplay) -> pb::TopicReplay {
    pb::TopicReplay {
        topic: candidate.topic.to_string(),
        epoch: candidate.epoch.to_string(),
        last_seq: candidate.last_seq,
        gaps: candidate
            .replay
            .gaps
            .iter()
            .map(|g| pb::Gap {
                topic: g.topic.to_string(),
                epoch: g.epoch.to_string(),
                from_seq: g.from_seq,
                to_seq: g.to_seq,
                reason: g.reason.to_owned(),
            })
            .collect(),
        events: candidate
            .replay
            .events
            .iter()
            .map(|e| event_pb(e))
            .collect(),
        more: candidate.more,
    }
}

fn topic_replay_from_pb(candidate: pb::TopicReplay) -> TopicReplay {
    let topic: Arc<str> = candidate.topic.into();
    TopicReplay {
        topic: topic.clone(),
        epoch: candidate.epoch.into(),
        last_seq: candidate.last_seq,
        replay: Replay {
            gaps: candidate
                .gaps
                .into_iter()
                .map(|g| Gap {
                    topic: topic.clone(),
                    epoch: g.epoch.into(),
                    from_seq: g.from_seq,
                    to_seq: g.to_seq,
                    reason: if g.reason == reason::EPOCH_CHANGED {
                        reason::EPOCH_CHANGED
                    } else {
                        reason::RETENTION
                    },
                })
                .collect(),
            events: candidate
                .events
                .into_iter()
                .filter_map(event_from_pb)
                .map(Arc::new)
                .collect(),
        },
        more: candidate.more,
    }
}
