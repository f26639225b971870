//! Announcing how far the topics this node sequences are committed, so that their replicas
//! serve replays only up to there (see `Broker::take_commit_announcements`).

use std::collections::HashMap;
use std::sync::Arc;

use murmur_proto::cluster::v1 as pb;

use super::super::Cluster;
use super::super::link::{PeerLink, PeerMessage};

/// Topics per `Commit` frame, at most.
const TOPICS_PER_FRAME: usize = 512;

impl Cluster {
    /// Tells each topic's replicas how far it is committed, for the topics whose committed
    /// position moved since the last call. Called several times a second.
    pub fn announce_commits(&self) {
        let moved = self.broker.take_commit_announcements();
        if moved.is_empty() {
            return;
        }
        let mut per_link: HashMap<Arc<str>, (Arc<PeerLink>, Vec<pb::TopicCommit>)> = HashMap::new();
        for (topic, epoch, seq) in moved {
            // A replica without a link now is skipped: it gets the topic's history and
            // position afresh when it is asked to store the next event.
            let links = self
                .placement(&topic)
                .into_iter()
                .filter(|name| name != self.name())
                .take(self.replication.saturating_sub(1))
                .filter_map(|name| self.link_to(&name));
            for link in links {
                per_link
                    .entry(link.name.clone())
                    .or_insert_with(|| (link.clone(), Vec::new()))
                    .1
                    .push(pb::TopicCommit {
                        topic: topic.to_string(),
                        epoch: epoch.to_string(),
                        seq,
                    });
            }
        }
        for (link, topics) in per_link.into_values() {
            for chunk in topics.chunks(TOPICS_PER_FRAME) {
                link.send_control(PeerMessage::Frame(pb::peer_frame::Msg::Commit(
                    pb::Commit {
                        topics: chunk.to_vec(),
                    },
                )));
            }
        }
    }

    /// A topic's owner says how far topics this node replicates are committed.
    pub(in crate::cluster) fn on_commit(&self, commit: pb::Commit) {
        for topic in commit.topics {
            self.broker.on_commit(&topic.topic, &topic.epoch, topic.seq);
        }
    }
}
