//! Claiming a topic: a node that becomes its owner waits for its view of the cluster to
//! settle (`view_settle.rs`), asks every peer what it knows, takes over from the one that
//! was sequencing it, and weighs the answers; and the answers this node gives to another
//! node's claim.

use std::sync::Arc;
use std::time::Duration;

use murmur_proto::cluster::v1 as pb;

use super::view_settle::VIEW_SETTLE_PATIENCE;
use super::{PublishError, RETRY_PAUSE};
use crate::broker::TopicSnapshot;
use crate::cluster::Cluster;
use crate::cluster::link::{PeerLink, PeerMessage};
use crate::cluster::transport::{event_from_pb, event_pb, remembered_from_pb, remembered_pb};
use crate::routing::dedupe::RememberedId;
use crate::routing::topics::newer_epoch;

/// How long a claim keeps asking peers that refuse before starting a new epoch.
const CLAIM_PATIENCE: Duration = Duration::from_secs(3);

/// How long to wait for one peer's answer to a claim or replay request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

impl Cluster {
    /// Takes `topic` over: asks every peer what it knows, installs the newest state (or a
    /// new epoch), then serves the publishes that waited.
    pub(super) async fn claim(self: Arc<Self>, topic: Arc<str>) {
        let settle_deadline = tokio::time::Instant::now() + VIEW_SETTLE_PATIENCE;
        let mut deadline = None;
        let mut best: Option<TopicSnapshot> = None;
        // The publish ids every answer remembers, not only the newest's: a retry after the
        // owner failed over gets its original position from whichever node kept the id.
        let mut ids: Vec<RememberedId> = Vec::new();
        let mut unsettled = false;
        loop {
            // Members that are still coming back would not be asked (see `view_settle`).
            let now = tokio::time::Instant::now();
            if let Some(wait) = self.view_settle.remaining()
                && now < settle_deadline
            {
                tokio::time::sleep(wait.min(settle_deadline - now)).await;
                continue;
            }
            let deadline = *deadline.get_or_insert_with(|| now + CLAIM_PATIENCE);
            // A live peer this node cannot ask yet may be numbering the topic right now; and
            // until a peer's interest is known, its subscribers would miss what is sequenced.
            // Looked at before asking: a link that comes up while the others answer was not
            // asked, and its peer may be sequencing the topic still (seen in rolling
            // restarts: the claim settled, and that peer refused the new owner's events).
            let unlinked = {
                let view = self.gossip.view.read();
                view.live_peers().iter().any(|p| {
                    self.link_to(&p.name)
                        .is_none_or(|link| link.is_closed() || !link.interest_known())
                })
            };
            let answers = self
                .ask_all(|id| {
                    pb::peer_frame::Msg::StateRequest(pb::TopicStateRequest {
                        id,
                        topic: topic.to_string(),
                    })
                })
                .await;
            // What this node knows, read once the peers have answered: a copy of its own that
            // went quiet meanwhile is forgotten (the peers' newer knowledge may have been, in
            // the same time), never carried into the claim from before.
            if let Some(own) = self.broker.topic_snapshot(&topic)
                && best.as_ref().is_none_or(|b| is_newer(&own, b))
            {
                best = Some(own);
            }
            let heard = weigh_claim_answers(answers, &mut best, &mut ids);
            if !heard.refused && !heard.silent && !unlinked {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                unsettled = true;
                break;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        // Asked afresh from the view: the peers this claim waited for may have just been
        // declared down, before the membership task updated the cached majority; numbering
        // the topic now, with no replica left, would acknowledge events only this side has.
        let majority = self.compute_majority();
        let still_owner = majority
            && self
                .placement(&topic)
                .first()
                .is_some_and(|o| *o == self.id.name);
        if still_owner {
            // A peer that kept the topic may still be numbering it: never share its epoch.
            let known = if unsettled { None } else { best };
            self.broker.remember_ids(&topic, ids);
            let epoch = self.broker.install_topic(&topic, known);
            tracing::debug!(%topic, %epoch, unsettled, "claimed topic");
        }
        // Serve what waited, in arrival order: the entry stays until it is empty, so a publish
        // arriving meanwhile queues behind the others instead of overtaking them.
        loop {
            let batch = {
                let mut claims = self.claims.lock();
                match claims.get_mut(&topic) {
                    Some(waiting) if !waiting.is_empty() => std::mem::take(waiting),
                    _ => {
                        claims.remove(&topic);
                        break;
                    }
                }
            };
            for queued in batch {
                if still_owner {
                    self.sequence_now(topic.clone(), queued.publication, queued.reply, 0);
                } else if !majority {
                    queued
                        .reply
                        .send(Err(PublishError::unavailable(self.cut_off_reason())));
                } else {
                    self.route(topic.clone(), queued.publication, queued.reply, 0);
                }
            }
        }
    }

    /// Sends a request to every linked peer and collects the answers (None: no answer).
    pub(super) async fn ask_all(
        &self,
        make: impl Fn(u64) -> pb::peer_frame::Msg,
    ) -> Vec<Option<pb::peer_frame::Msg>> {
        self.ask_peers(|_| true, make).await
    }

    /// Sends a request to the linked peers `which` accepts (by name) and collects the
    /// answers (None: no answer).
    pub(super) async fn ask_peers(
        &self,
        which: impl Fn(&str) -> bool,
        make: impl Fn(u64) -> pb::peer_frame::Msg,
    ) -> Vec<Option<pb::peer_frame::Msg>> {
        let mut waits = Vec::new();
        // A closed link is on its way out of the peer table; its peer is asked again over the
        // next one, or is down.
        for link in self
            .links()
            .into_iter()
            .filter(|l| !l.is_closed() && which(&l.name))
        {
            let (id, answer) = self.request(&link);
            link.send_control(PeerMessage::Frame(make(id)));
            waits.push(async move {
                let answer = tokio::time::timeout(REQUEST_TIMEOUT, answer).await;
                (id, answer.ok().and_then(Result::ok))
            });
        }
        let answers = futures_util::future::join_all(waits).await;
        let mut requests = self.requests.lock();
        answers
            .into_iter()
            .map(|(id, answer)| {
                requests.remove(&id);
                answer
            })
            .collect()
    }

    /// A peer claims a topic: hand it over if this node was sequencing it and no longer
    /// owns it; refuse while this node still owns it in its own view.
    pub(in crate::cluster) fn on_state_request(
        &self,
        link: &PeerLink,
        request: pb::TopicStateRequest,
    ) {
        let topic = request.topic.as_str();
        let i_own = self
            .placement(topic)
            .first()
            .is_some_and(|o| *o == self.id.name);
        let mut reply = pb::TopicStateReply {
            id: request.id,
            ..Default::default()
        };
        let known = if self.broker.is_ready(topic) {
            if i_own || self.claims.lock().contains_key(topic) {
                reply.refused = true;
                None
            } else {
                match self.broker.hand_over(topic) {
                    Ok(snapshot) => snapshot,
                    Err(_) => {
                        reply.refused = true;
                        None
                    }
                }
            }
        } else {
            self.broker.topic_snapshot(topic)
        };
        if let Some(snapshot) = known {
            reply.found = true;
            reply.epoch = snapshot.epoch.to_string();
            reply.last_seq = snapshot.last_seq;
            reply.events = snapshot.events.iter().map(|e| event_pb(e)).collect();
            reply.ids = snapshot.ids.iter().map(remembered_pb).collect();
        }
        link.send_control(PeerMessage::Frame(pb::peer_frame::Msg::StateReply(reply)));
    }
}

/// Newest epoch, then highest sequence number, then the longest history.
fn is_newer(a: &TopicSnapshot, b: &TopicSnapshot) -> bool {
    newer_epoch(&a.epoch, &b.epoch)
        || (a.epoch == b.epoch
            && (a.last_seq > b.last_seq
                || (a.last_seq == b.last_seq && a.events.len() > b.events.len())))
}

/// What one round of a claim heard from the peers it asked.
#[derive(Debug, Default, PartialEq, Eq)]
struct Heard {
    /// A peer still owns the topic in its own view.
    refused: bool,
    /// A peer gave no answer (timed out, or its link closed meanwhile): it may hold a newer
    /// position than any answer, so the claim cannot settle on what it heard.
    silent: bool,
}

/// Folds one round of answers to a claim into `best`, the newest state known so far, and
/// the publish ids they remember into `ids`.
fn weigh_claim_answers(
    answers: Vec<Option<pb::peer_frame::Msg>>,
    best: &mut Option<TopicSnapshot>,
    ids: &mut Vec<RememberedId>,
) -> Heard {
    let mut heard = Heard::default();
    for answer in answers {
        let Some(pb::peer_frame::Msg::StateReply(reply)) = answer else {
            heard.silent = true;
            continue;
        };
        if reply.refused {
            heard.refused = true;
            continue;
        }
        if !reply.found {
            continue;
        }
        ids.extend(remembered_from_pb(reply.ids));
        let snapshot = TopicSnapshot {
            epoch: reply.epoch.into(),
            last_seq: reply.last_seq,
            events: reply
                .events
                .into_iter()
                .filter_map(event_from_pb)
                .map(Arc::new)
                .collect(),
            ids: Vec::new(),
        };
        if best.as_ref().is_none_or(|b| is_newer(&snapshot, b)) {
            *best = Some(snapshot);
        }
    }
    heard
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(
        found: bool,
        refused: bool,
        epoch: &str,
        last_seq: u64,
    ) -> Option<pb::peer_frame::Msg> {
        Some(pb::peer_frame::Msg::StateReply(pb::TopicStateReply {
            id: 1,
            found,
            refused,
            epoch: epoch.into(),
            last_seq,
            events: Vec::new(),
            ids: Vec::new(),
        }))
    }

    fn known(epoch: &str, last_seq: u64) -> Option<TopicSnapshot> {
        Some(TopicSnapshot {
            epoch: epoch.into(),
            last_seq,
            events: Vec::new(),
            ids: Vec::new(),
        })
    }

    #[test]
    fn a_claim_settles_only_when_every_peer_answered_without_refusing() {
        // Everyone answered: the newest position wins.
        let mut best = known("e1", 3);
        let heard = weigh_claim_answers(
            vec![reply(false, false, "", 0), reply(true, false, "e1", 6)],
            &mut best,
            &mut Vec::new(),
        );
        assert_eq!(heard, Heard::default());
        assert_eq!(best.as_ref().map(|b| b.last_seq), Some(6));

        // An older answer does not replace what this node knows.
        let heard = weigh_claim_answers(
            vec![reply(true, false, "e1", 2)],
            &mut best,
            &mut Vec::new(),
        );
        assert_eq!(heard, Heard::default());
        assert_eq!(best.as_ref().map(|b| b.last_seq), Some(6));

        // A peer that said nothing may hold a newer position than anyone who answered (the
        // claim that numbered #4–#6 twice after a pause: its link was being replaced).
        let mut best = known("e1", 3);
        let heard = weigh_claim_answers(
            vec![reply(false, false, "", 0), None],
            &mut best,
            &mut Vec::new(),
        );
        assert!(heard.silent && !heard.refused);
        assert_eq!(best.as_ref().map(|b| b.last_seq), Some(3));

        // A peer still owning the topic refuses.
        let heard =
            weigh_claim_answers(vec![reply(false, true, "", 0)], &mut best, &mut Vec::new());
        assert!(heard.refused && !heard.silent);

        // An answer of another kind is no answer.
        let odd = Some(pb::peer_frame::Msg::Leaving(pb::Leaving { generation: 1 }));
        assert!(weigh_claim_answers(vec![odd], &mut best, &mut Vec::new()).silent);
    }
}
