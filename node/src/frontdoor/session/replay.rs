//! A resuming subscription's replay, page by page: turning pages into frames, writing the
//! later pages with other subscriptions' events between them, and where the live stream
//! goes on from after the last.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::extract::ws::Message;

use super::{Ending, Session};
use crate::broker::{Outbound, Subscription, TopicReplay};
use crate::protocol::Reply;
use crate::routing::topic;

/// A resume being replayed page by page.
pub(super) struct ReplayInProgress {
    pub(super) subscription: Arc<Subscription>,
    /// Where the subscription asked to start.
    pub(super) from: crate::protocol::ResumeFrom,
    /// Per topic, the last event replayed so far: where the next page starts.
    pub(super) cursors: std::collections::BTreeMap<String, crate::protocol::Cursor>,
    /// Topics whose replay is complete.
    pub(super) done: std::collections::HashSet<Arc<str>>,
    /// Topics the replay said something about (a gap or an event).
    pub(super) answered: std::collections::HashSet<Arc<str>>,
}

impl ReplayInProgress {
    /// Where the next page starts: the original start, with each topic's cursor moved past
    /// what was replayed.
    fn next_from(&self) -> crate::protocol::ResumeFrom {
        use crate::protocol::{ResumeFrom, SINCE_EARLIEST};
        let pattern = &*self.subscription.pattern;
        if !topic::is_wildcard(pattern) {
            return match self.cursors.get(pattern) {
                Some(cursor) => ResumeFrom::Cursor(cursor.clone()),
                None => self.from.clone(),
            };
        }
        let (mut topics, since) = match &self.from {
            ResumeFrom::Topics { topics, since } => (topics.clone(), *since),
            _ => (std::collections::BTreeMap::new(), SINCE_EARLIEST),
        };
        topics.extend(self.cursors.iter().map(|(t, c)| (t.clone(), c.clone())));
        ResumeFrom::Topics { topics, since }
    }
}

/// One page of a resume's replay: enough to keep a fast client busy, small enough that a
/// client that does not read pins little.
pub(super) const REPLAY_PAGE: crate::broker::ReplayPage = crate::broker::ReplayPage {
    max_events: 1000,
    max_bytes: 1024 * 1024,
};

impl Session {
    /// Turns one page of a replay into frames (gaps, then events, topic by topic) and
    /// records how far each topic got; true when more pages follow.
    pub(super) fn replay_page(
        &mut self,
        replay: &mut ReplayInProgress,
        page: Vec<TopicReplay>,
        frames: &mut Vec<Message>,
    ) -> bool {
        let sub_id = replay.subscription.id.clone();
        let mut more = false;
        for topic_replay in page {
            if replay.done.contains(&topic_replay.topic) {
                continue;
            }
            let TopicReplay {
                topic,
                replay: events,
                more: topic_more,
                ..
            } = topic_replay;
            if !events.gaps.is_empty() || !events.events.is_empty() {
                replay.answered.insert(topic.clone());
            }
            let metrics = &self.node.metrics;
            metrics.gaps_sent.inc_by(events.gaps.len() as u64);
            metrics.deliveries.inc_by(events.events.len() as u64);
            for gap in &events.gaps {
                frames.push(self.encode(&Reply::Gap {
                    sub: &sub_id,
                    topic: &gap.topic,
                    epoch: &gap.epoch,
                    from_seq: gap.from_seq,
                    to_seq: gap.to_seq,
                    reason: gap.reason,
                }));
            }
            for event in &events.events {
                frames.push(self.encode_event(&sub_id, event, None));
            }
            if let Some(last) = events.events.last() {
                let position = (last.epoch.clone(), last.seq);
                self.replayed_up_to
                    .entry(sub_id.clone())
                    .or_default()
                    .insert(last.topic.clone(), position.clone());
                self.last_sent
                    .entry(sub_id.clone())
                    .or_default()
                    .insert(last.topic.clone(), position);
                replay.cursors.insert(
                    last.topic.to_string(),
                    crate::protocol::Cursor {
                        epoch: last.epoch.to_string(),
                        seq: last.seq,
                    },
                );
            }
            if topic_more {
                more = true;
            } else {
                replay.done.insert(topic);
            }
        }
        more
    }

    /// Writes the pages of a replay after its first, each as asked for and written before
    /// the next is asked for.
    pub(super) async fn continue_replay(
        &mut self,
        mut replay: ReplayInProgress,
    ) -> Result<(), Ending> {
        self.replaying = Some((replay.subscription.clone(), VecDeque::new()));
        let written = self.write_replay_pages(&mut replay).await;
        let held = self.replaying.take().map(|(_, held)| held);
        self.replaying_bytes = 0;
        written?;
        self.finish_replay(&replay);
        // The replayed subscription's live events, in order, now that the replay is out:
        // copies of events already replayed are dropped by `admit`.
        let mut admitted = Vec::new();
        for item in held.into_iter().flatten() {
            if let Outbound::Event {
                sub,
                event,
                delivery,
            } = item
            {
                admitted.extend(self.admit(sub, event, delivery));
            }
        }
        let mut frames = Vec::new();
        self.encode_events(&mut admitted, &mut frames);
        self.write_all(frames).await?;
        if self.hole {
            return Err(Ending::Resync);
        }
        Ok(())
    }

    /// The pages after the first, each written before the next is asked for; what other
    /// subscriptions received meanwhile is written between pages.
    async fn write_replay_pages(&mut self, replay: &mut ReplayInProgress) -> Result<(), Ending> {
        loop {
            let from = replay.next_from();
            let pattern = replay.subscription.pattern.clone();
            let page = match self.node.cluster.replay(&pattern, &from, REPLAY_PAGE).await {
                Ok(page) => page,
                Err(err) => {
                    // The first page passed the same checks: only a bug gets here. The client
                    // resumes from what it got, so nothing is skipped silently.
                    tracing::warn!(%err, "a replay page failed; the client resyncs");
                    return Err(Ending::Resync);
                }
            };
            let mut frames = Vec::new();
            let more = self.replay_page(replay, page, &mut frames);
            self.write_all(frames).await?;
            if !more || !replay.subscription.is_active() {
                return Ok(());
            }
            if self.outbox.has_overflowed() {
                return Err(Ending::SlowConsumer);
            }
            if !self.outbox.is_empty() {
                self.write_queued().await?;
            }
        }
    }

    /// After the last page: a cursor the replay said nothing about is where the live stream
    /// must go on from. A live event past it means the replay missed events (the nodes that
    /// had them were not reachable from here yet, as right after a restart), and the hole
    /// check sends the client to resume again instead of skipping them.
    pub(super) fn finish_replay(&mut self, replay: &ReplayInProgress) {
        let subscription = &replay.subscription;
        for (topic, cursor) in replay.from.cursors(&subscription.pattern) {
            if !replay.answered.contains(topic) {
                self.last_sent
                    .entry(subscription.id.clone())
                    .or_default()
                    .insert_if_absent(topic, || (cursor.epoch.as_str().into(), cursor.seq));
            }
        }
    }
}
