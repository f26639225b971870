//! After a restart from disk (`storage = "disk"`): the node claims the recovered topics it
//! owns without waiting for a publish, so that what they hold is served as committed (and
//! announced to their replicas as such) as soon as the cluster has settled.
//!
//! Until a topic is claimed, a resume is served up to the committed position the disk
//! recorded, which trails the last acknowledged events by up to one commit announcement;
//! the claim weighs what every peer knows (a peer may have gone on with the topic while
//! this node was down) and installs the newest state, so nothing acknowledged is served
//! late for long, and nothing is numbered twice.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::cluster::Cluster;

/// Claims run this many at a time: each asks every peer.
const RECLAIMS_AT_ONCE: usize = 64;

/// How long to wait for a settled majority before leaving the topics to be claimed by their next
/// publish (as any other topic is).
const MAJORITY_PATIENCE: Duration = Duration::from_secs(300);

/// How often to look for a majority meanwhile.
const MAJORITY_POLL: Duration = Duration::from_millis(200);

impl Cluster {
    /// Marks the node as taking up topics recovered from disk (not ready, see
    /// [`Self::is_recovering`]) and returns the task that claims them.
    pub fn start_reclaiming(
        self: &Arc<Self>,
        topics: Vec<Arc<str>>,
    ) -> impl Future<Output = ()> + Send + 'static {
        self.recovering.store(true, Ordering::Release);
        let cluster = self.clone();
        async move {
            cluster.clone().reclaim_recovered(topics).await;
            cluster.recovering.store(false, Ordering::Release);
        }
    }

    /// True while recovered topics wait to be claimed.
    pub fn is_recovering(&self) -> bool {
        self.recovering.load(Ordering::Acquire)
    }

    /// Claims each of `topics` (recovered from disk) that this node owns, once it sees a
    /// majority of the cluster, is linked to every live peer and its view has settled.
    async fn reclaim_recovered(self: Arc<Self>, topics: Vec<Arc<str>>) {
        let deadline = tokio::time::Instant::now() + MAJORITY_PATIENCE;
        // Who owns what is only known once the view has settled: members still coming back
        // (a whole cluster restarting) would otherwise each think they own topics the
        // others own, and a node not linked to its peers yet would take itself for alone.
        while !(self.has_majority() && self.is_settled() && self.view_settle.remaining().is_none())
        {
            if tokio::time::Instant::now() >= deadline || self.stop.is_cancelled() {
                tracing::info!(
                    topics = topics.len(),
                    "no majority to reclaim recovered topics with: each is claimed by its next publish"
                );
                return;
            }
            tokio::time::sleep(MAJORITY_POLL).await;
        }
        let mut claimed = 0usize;
        for chunk in topics.chunks(RECLAIMS_AT_ONCE) {
            let mut claims = Vec::new();
            for topic in chunk {
                if self.owner_of(topic) != self.name() || self.broker.is_ready(topic) {
                    continue;
                }
                {
                    let mut waiting = self.claims.lock();
                    if waiting.contains_key(topic) {
                        continue; // a publish started one
                    }
                    if self.gossip.view.read().live_peers().is_empty() {
                        // Alone: nobody else can know the topic.
                        let known = self.broker.topic_snapshot(topic);
                        self.broker.install_topic(topic, known);
                        claimed += 1;
                        continue;
                    }
                    waiting.insert(topic.clone(), Vec::new());
                }
                claims.push(self.clone().claim(topic.clone()));
                claimed += 1;
            }
            futures_util::future::join_all(claims).await;
        }
        tracing::info!(
            recovered = topics.len(),
            claimed,
            "claimed the recovered topics this node owns"
        );
    }
}
