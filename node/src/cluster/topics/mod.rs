//! Topic ownership across the cluster: who sequences a topic, how publishes reach it, how a
//! new owner takes a topic over, and how resumes are answered from wherever history is.
//!
//! - The owner of a topic is the first of the live members ranked by rendezvous hashing
//!   ([`crate::routing::ownership`]); the next `replication - 1` hold replicas.
//! - A publish on a node that does not own the topic is sent to the owner (`PublishRequest`)
//!   on the one ordered stream to it, so one client's publishes keep their order. The owner
//!   sequences it, sends a copy to each replica, and fans it out — and answers — only once
//!   every replica has stored it. Anything delivered is therefore on every replica, and a
//!   replica that takes over after the owner fails continues the same epoch without a hole.
//!   A replica that fails (or leaves) before confirming is replaced by the next member of
//!   the ranking, which is asked to store what it had not confirmed
//!   (`Cluster::ask_replicas_again`): the owner's epoch goes on.
//! - A node that becomes owner of a topic it holds no state for *claims* it: once its view
//!   of the cluster has stopped growing for a moment (members coming back after a heal are
//!   asked too; `view_settle.rs`), it asks every peer what it knows. A peer that was sequencing the topic hands it over (once its
//!   pending events are stored) and stops; a peer that still owns the topic in its own view
//!   refuses, and the claimant asks again; so does a peer that does not answer (its link is
//!   being replaced, say, as after a generation change), since it may hold the newest
//!   position. The newest knowledge wins. If nothing is known, or a peer kept refusing or
//!   stayed silent until the claim's patience ran out, the topic starts a new epoch, so two
//!   nodes never number events of the same epoch.
//! - A resume asks every node what it can replay and keeps, per topic, the answer with the
//!   newest knowledge.
//!
//! Here: publishing (routing to the owner, sequencing there, answering) and who owns what;
//! `claims.rs` takes a topic over, `replay.rs` answers resumes across the cluster.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use murmur_proto::cluster::v1 as pb;
use tokio::sync::oneshot;

use super::Cluster;
use super::link::{PeerLink, PeerMessage};
pub use crate::broker::PublishPermit;
use crate::broker::{Receipt, Sequenced};
use crate::event::{Event, Payload};
use crate::routing::dedupe::PublishId;
use crate::routing::ownership::{best_ranked, owner, rank};

mod claims;
mod commits;
mod reclaim;
mod replay;
pub mod view_settle;

/// What a publish costs in a publish buffer beyond its payload and topic name (its
/// bookkeeping), so that a flood of tiny publishes is bounded too.
pub const PUBLISH_OVERHEAD_BYTES: usize = 64;

/// How long a publish may wait for its owner and replicas.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before asking again when views disagree or the owner is not reachable yet.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How long events whose replica went away wait for a replica to take its place before they
/// fail (and the topic starts a new epoch): longer than failure detection (about 5 s, up to
/// 8 s seen in the chaos runs) and a redial, since a replica whose link ended before it was
/// declared down stays in the placement until then.
const REPLACEMENT_PATIENCE: Duration = Duration::from_secs(15);
/// A node heard from a majority within this long is in touch with it: about three probe
/// periods, far shorter than the others need to declare a silent node down.
const RECENTLY_HEARD: Duration = Duration::from_secs(3);
/// Why a node cut off from most of the cluster refuses publishes.
pub(super) const MINORITY: &str =
    "this node sees only a minority of the cluster (a partition?); publish through another node";

/// A publish that could not be sequenced and stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PublishError {
    /// Stable code for the client's `error` frame.
    pub code: &'static str,
    pub message: String,
}

impl PublishError {
    fn unavailable(message: impl Into<String>) -> Self {
        Self {
            code: "unavailable",
            message: message.into(),
        }
    }
}

pub type PublishResult = Result<Receipt, PublishError>;

/// Where the outcome of a publish goes, and the share of the node's publish buffer it holds
/// until then.
struct ReplyTo {
    answer: Answer,
    /// Held from the publishing connection until the publish is sequenced here, handed to
    /// the link towards its owner, or answered: what bounds publishes in flight on a node.
    permit: Option<PublishPermit>,
}

enum Answer {
    Local(oneshot::Sender<PublishResult>),
    Peer(Arc<PeerLink>, u64),
    /// Nowhere: the client published without `ref`, so no one waits for the outcome and
    /// nothing is kept to tell it (no reply from the owner, no timer, no task).
    Nobody,
}

impl ReplyTo {
    fn wanted(&self) -> bool {
        !matches!(self.answer, Answer::Nobody)
    }

    fn send(self, result: PublishResult) {
        match self.answer {
            Answer::Nobody => {}
            Answer::Local(tx) => {
                let _ = tx.send(result);
            }
            Answer::Peer(link, id) => {
                let result = match result {
                    Ok(r) => pb::publish_reply::Result::Ok(pb::Position {
                        epoch: r.epoch.to_string(),
                        seq: r.seq,
                    }),
                    Err(e) => pb::publish_reply::Result::Failed(pb::Failure {
                        code: e.code.to_owned(),
                        message: e.message,
                    }),
                };
                link.send_control(PeerMessage::Frame(pb::peer_frame::Msg::Published(
                    pb::PublishReply {
                        id,
                        result: Some(result),
                    },
                )));
            }
        }
    }
}

/// What is published: the data, and the idempotency key that makes sending it again safe.
#[derive(Debug, Clone)]
pub struct Publication {
    pub payload: Payload,
    /// The client's id, or one this node gives it when it forwards it to the owner; the
    /// owner and its replicas remember it for `dedupe_window`.
    pub id: Option<PublishId>,
}

impl From<Payload> for Publication {
    /// A publish without an id of its own.
    fn from(payload: Payload) -> Self {
        Self { payload, id: None }
    }
}

/// A publish waiting for its topic to be claimed.
pub(super) struct Queued {
    publication: Publication,
    reply: ReplyTo,
}

impl Cluster {
    /// The owner of `topic` and its replicas, best first, among the members that can own
    /// topics now: this node and its live peers.
    pub fn placement(&self, topic: &str) -> Vec<String> {
        let view = self.gossip.view.read();
        rank(topic, self.member_names(&view))
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    /// The owner of `topic`: the first of its [`placement`](Self::placement), found without
    /// ranking the rest (this runs for every publish).
    pub fn owner_of(&self, topic: &str) -> String {
        let view = self.gossip.view.read();
        owner(topic, self.member_names(&view))
            .unwrap_or(&self.id.name)
            .to_owned()
    }

    /// The names of the live peers in `view` and of this node: the members that can own
    /// topics now.
    fn member_names<'a>(
        &'a self,
        view: &'a super::membership::MembershipView,
    ) -> impl Iterator<Item = &'a str> {
        view.live_peers_iter()
            .map(|p| p.name.as_str())
            .chain(std::iter::once(self.id.name.as_str()))
    }

    pub(super) fn link_to(&self, name: &str) -> Option<Arc<PeerLink>> {
        self.peers
            .lock()
            .get(name)
            .and_then(|p| p.link.clone())
            .filter(|l| !l.is_closed())
    }

    /// Links to `topic`'s replicas (the placement after the owner, up to `replication`), or
    /// the name of one this node has no link to: an event is stored on every replica of the
    /// placement before it is acknowledged, never on fewer because a link is down. Runs for
    /// every sequenced event, so the names stay borrowed.
    fn replica_links(&self, topic: &str) -> Result<Vec<Arc<PeerLink>>, String> {
        let replicas = self.replication.saturating_sub(1);
        if replicas == 0 {
            return Ok(Vec::new());
        }
        let view = self.gossip.view.read();
        // The placement after this node: the owner's replicas when it sequences, and still
        // whom to ask when it holds events in flight of a topic that a newcomer now outranks
        // it for (see `ask_replicas_again`), rather than itself.
        best_ranked(topic, self.member_names(&view), &self.id.name, replicas)
            .into_iter()
            .map(|name| self.link_to(name).ok_or_else(|| name.to_owned()))
            .collect()
    }

    /// Publishes `payload` on `topic` through its owner; the receiver resolves once the event
    /// is sequenced and stored on its replicas. The request leaves before this returns, so
    /// successive publishes from one caller keep their order.
    pub fn submit(
        self: &Arc<Self>,
        topic: &str,
        publication: impl Into<Publication>,
        permit: Option<PublishPermit>,
    ) -> oneshot::Receiver<PublishResult> {
        let (tx, rx) = oneshot::channel();
        let reply = ReplyTo {
            answer: Answer::Local(tx),
            permit,
        };
        self.route(topic.into(), publication.into(), reply, 0);
        rx
    }

    /// Publishes `payload` on `topic` through its owner for a publisher that wants no answer:
    /// the same route and order as [`submit`](Self::submit), without anything waiting for the
    /// outcome. A publish that cannot be stored is dropped (docs/protocol.md, `pub`).
    pub fn submit_unanswered(
        self: &Arc<Self>,
        topic: &str,
        publication: impl Into<Publication>,
        permit: Option<PublishPermit>,
    ) {
        let reply = ReplyTo {
            answer: Answer::Nobody,
            permit,
        };
        self.route(topic.into(), publication.into(), reply, 0);
    }

    /// Waits for room in the node's publish buffer for a publish of `bytes`: the
    /// backpressure a publishing connection feels when the way to an owner is congested (its
    /// socket is not read meanwhile). After the publish timeout it gives up: the publish is
    /// answered `unavailable` instead of queued without bound.
    pub async fn reserve_publish(&self, bytes: usize) -> Result<PublishPermit, PublishError> {
        let wanted = u32::try_from(bytes.min(self.publish_buffer_bytes))
            .unwrap_or(u32::MAX)
            .max(1);
        let budget = self.publish_budget.clone();
        match tokio::time::timeout(PUBLISH_TIMEOUT, budget.acquire_many_owned(wanted)).await {
            Ok(Ok(permit)) => Ok(PublishPermit(permit)),
            Ok(Err(_)) => Err(PublishError::unavailable("the node is stopping")),
            Err(_) => Err(PublishError::unavailable(format!(
                "this node's publish buffer ({} bytes) stayed full for {} s: the topics' \
                 owners are not keeping up; publish again later",
                self.publish_buffer_bytes,
                PUBLISH_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Bytes of the node's publish buffer held now by publishes on their way to an owner
    /// or waiting for their replicas (setting `publish_buffer_bytes`).
    pub fn publish_buffer_in_use(&self) -> usize {
        self.publish_buffer_bytes
            .saturating_sub(self.publish_budget.available_permits())
    }

    /// Room in the node's publish buffer for a publish of `bytes`, if there is some now.
    fn try_reserve_publish(&self, bytes: usize) -> Option<PublishPermit> {
        let wanted = u32::try_from(bytes.min(self.publish_buffer_bytes))
            .unwrap_or(u32::MAX)
            .max(1);
        self.publish_budget
            .clone()
            .try_acquire_many_owned(wanted)
            .ok()
            .map(PublishPermit)
    }

    fn route(
        self: &Arc<Self>,
        topic: Arc<str>,
        publication: Publication,
        reply: ReplyTo,
        attempt: u32,
    ) {
        let owner = self.owner_of(&topic);
        if owner == self.id.name {
            self.publish_as_owner(topic, publication, reply, attempt);
            return;
        }
        let Some(link) = self.link_to(&owner) else {
            self.retry(
                topic,
                publication,
                reply,
                attempt,
                format!("owner {owner} is not reachable"),
            );
            return;
        };
        let mut publication = publication;
        if publication.id.is_none() && reply.wanted() {
            // This node sends it again if the link ends before the answer: with an id, the
            // owner (or the replica that takes over) answers that with the first position.
            let (instance, counter) = &self.publish_ids;
            let count = counter.fetch_add(1, Ordering::Relaxed);
            publication.id = Some(PublishId::node(&self.id.name, *instance, count));
        }
        let (data, encoding) = payload_pb(&publication.payload);
        // Id 0 asks for no reply: the owner routes it on itself if it turns out not to own
        // the topic.
        let request = reply.wanted().then(|| self.request(&link));
        let mut reply = reply;
        // A publish nobody waits for gives its share of the buffer back once written towards
        // the owner (which then holds a share of its own buffer for it); one with an answer
        // keeps it until answered.
        let permit = if reply.wanted() {
            None
        } else {
            reply.permit.take()
        };
        link.send_publish(PeerMessage::Publish {
            msg: pb::peer_frame::Msg::Publish(pb::PublishRequest {
                id: request.as_ref().map_or(0, |(id, _)| *id),
                topic: topic.to_string(),
                data,
                encoding: encoding as i32,
                attempt,
                publish_id: publication
                    .id
                    .as_ref()
                    .map_or_else(String::new, |id| id.wire().to_owned()),
            }),
            permit,
        });
        let Some((id, answer)) = request else {
            return;
        };
        let cluster = self.clone();
        tokio::spawn(async move {
            let answer = tokio::time::timeout(PUBLISH_TIMEOUT, answer).await;
            cluster.requests.lock().remove(&id);
            let result = match answer {
                Ok(Ok(pb::peer_frame::Msg::Published(reply))) => reply.result,
                Ok(_) => None,
                Err(_) => {
                    reply.send(Err(PublishError::unavailable(format!(
                        "no answer from {owner}, the owner of {topic}"
                    ))));
                    return;
                }
            };
            match result {
                Some(pb::publish_reply::Result::Ok(position)) => reply.send(Ok(Receipt {
                    epoch: position.epoch.into(),
                    seq: position.seq,
                })),
                Some(pb::publish_reply::Result::Failed(failure)) => {
                    reply.send(Err(PublishError::unavailable(failure.message)));
                }
                Some(pb::publish_reply::Result::NotOwner(_)) => {
                    cluster.retry(
                        topic,
                        publication,
                        reply,
                        attempt,
                        "nodes disagree on the owner".into(),
                    );
                }
                None => {
                    // It may have been numbered before the link ended: sent again with the
                    // same id, it is not numbered twice.
                    cluster.retry(
                        topic,
                        publication,
                        reply,
                        attempt,
                        format!("the link to {owner} closed"),
                    );
                }
            }
        });
    }

    /// Registers a request to `link`'s peer; the receiver gets the peer's reply (or an
    /// error if the link closes first).
    fn request(&self, link: &PeerLink) -> (u64, oneshot::Receiver<pb::peer_frame::Msg>) {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.requests.lock().insert(id, (link.name.clone(), tx));
        (id, rx)
    }

    /// Routes a peer's reply to whoever asked.
    pub(super) fn on_reply(&self, id: u64, msg: pb::peer_frame::Msg) {
        if let Some((_, tx)) = self.requests.lock().remove(&id) {
            let _ = tx.send(msg);
        }
    }

    /// Fails every request waiting on `peer`.
    pub(super) fn forget_requests_to(&self, peer: &str) {
        self.requests.lock().retain(|_, (p, _)| &**p != peer);
    }

    fn retry(
        self: &Arc<Self>,
        topic: Arc<str>,
        publication: Publication,
        reply: ReplyTo,
        attempt: u32,
        why: String,
    ) {
        let limit = (PUBLISH_TIMEOUT.as_millis() / RETRY_PAUSE.as_millis()) as u32;
        if attempt >= limit {
            tracing::debug!(%topic, %why, answered = reply.wanted(), "publish given up");
            reply.send(Err(PublishError::unavailable(format!(
                "cannot publish to {topic}: {why}"
            ))));
            return;
        }
        let cluster = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RETRY_PAUSE).await;
            cluster.route(topic, publication, reply, attempt + 1);
        });
    }

    /// Sequences on this node, which owns `topic` in its view; claims it first if needed.
    fn publish_as_owner(
        self: &Arc<Self>,
        topic: Arc<str>,
        publication: Publication,
        reply: ReplyTo,
        attempt: u32,
    ) {
        if !self.has_majority() {
            // Cut off from most of the cluster, which carries on without this node (or never
            // found it): what this side accepted would never reach it. Refuse rather than
            // lose it silently.
            reply.send(Err(PublishError::unavailable(self.cut_off_reason())));
            return;
        }
        if self.leaving.load(Ordering::Acquire) {
            // The topic moves once this node has left; the publisher asks again by then.
            self.retry(topic, publication, reply, 0, "the owner is leaving".into());
            return;
        }
        {
            let mut claims = self.claims.lock();
            if let Some(waiting) = claims.get_mut(&topic) {
                waiting.push(Queued { publication, reply });
                return;
            }
            if !self.broker.is_ready(&topic) && self.gossip.view.read().live_peers().is_empty() {
                // Alone: nobody else can know the topic; take it over at once. (No link is
                // not enough: peers in the view whose links are not up yet may sequence it.)
                let known = self.broker.topic_snapshot(&topic);
                self.broker.install_topic(&topic, known);
            } else if !self.broker.is_ready(&topic) {
                claims.insert(topic.clone(), vec![Queued { publication, reply }]);
                drop(claims);
                tokio::spawn(self.clone().claim(topic));
                return;
            }
        }
        self.sequence_now(topic, publication, reply, attempt);
    }

    /// Sequences an event of a topic this node holds (no claim check); `attempt` counts the
    /// tries so far, to give up in time.
    fn sequence_now(
        self: &Arc<Self>,
        topic: Arc<str>,
        publication: Publication,
        reply: ReplyTo,
        attempt: u32,
    ) {
        if self.gossip.fence.is_fenced() {
            // Woken from a stall: the others may have given this topic's next positions to
            // other events meanwhile. Checked here, where every event is numbered, as well
            // as on the way in: a claim's queued publishes come straight here.
            reply.send(Err(PublishError::unavailable(self.gossip.fence.reason())));
            return;
        }
        let replicas = match self.replica_links(&topic) {
            Ok(replicas) => replicas,
            Err(replica) => {
                // Until the link is back, or the replica is declared down and the placement
                // moves on, the event could not be stored on enough replicas.
                let why = format!("no link to {replica}, a replica of {topic}");
                self.retry(topic, publication, reply, attempt, why);
                return;
            }
        };
        let mut reply = reply;
        let permit = reply.permit.take();
        match self.broker.sequence_holding(
            &topic,
            publication.payload.clone(),
            publication.id.clone(),
            &replicas,
            reply.wanted(),
            permit,
        ) {
            Sequenced::Done(receipt) => reply.send(Ok(receipt)),
            Sequenced::Waiting(receipt, stored) => {
                tokio::spawn(async move {
                    match tokio::time::timeout(PUBLISH_TIMEOUT, stored).await {
                        Ok(Ok(())) => reply.send(Ok(receipt)),
                        Ok(Err(_)) => reply.send(Err(PublishError::unavailable(
                            "a replica went away before confirming the event stored; publish it again",
                        ))),
                        Err(_) => reply.send(Err(PublishError::unavailable(
                            "the event was sequenced but its replicas did not confirm it in time",
                        ))),
                    }
                });
            }
            Sequenced::Failed(error) => reply.send(Err(PublishError::unavailable(format!(
                "the topic's owner could not store the event ({error}); publish it again"
            )))),
            // Handed over between the check and now: route it to the new owner.
            Sequenced::NotReady => {
                self.retry(topic, publication, reply, 0, "the topic moved".into());
            }
        }
    }

    /// After `peer` went away (declared down, left, or its link ended), asks the replicas of
    /// the placement as it is now to store the events it had not confirmed, for each topic
    /// in `orphaned` ([`crate::broker::Broker::on_peer_gone`]). A single replica's crash or
    /// graceful leave with events in flight thus changes neither their positions nor the
    /// topic's epoch: the next node in the ranking takes its place, as for a new event.
    ///
    /// The replicas are those a new event would get, under the same majority: until the
    /// membership view has one (the peer just left the placement and its successor is not
    /// linked yet, say, or the link ended and is being redialled), it asks again every
    /// [`RETRY_PAUSE`]. If that lasts past [`REPLACEMENT_PATIENCE`] the events fail, and
    /// the topic starts a new epoch unless another node knows it further (docs/guarantees.md).
    /// A node that gives its topics up meanwhile (a minority) fails them itself.
    pub(super) fn ask_replicas_again(self: &Arc<Self>, peer: &str, orphaned: Vec<Arc<str>>) {
        if orphaned.is_empty() {
            return;
        }
        tracing::debug!(
            peer,
            topics = orphaned.len(),
            "a replica went away with events in flight"
        );
        let cluster = self.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + REPLACEMENT_PATIENCE;
            let mut waiting = orphaned;
            loop {
                // A majority heard from lately, not just one believed alive: a node on the
                // minority side of a partition that has not detected it yet must not store
                // these on replicas from its own side and so complete them, while the
                // majority (which declared it down) numbers the same positions anew.
                let majority = cluster.compute_majority() && cluster.heard_majority_lately();
                waiting.retain(|topic| {
                    if !cluster.broker.has_orphans(topic) {
                        return false;
                    }
                    if !majority {
                        return true;
                    }
                    match cluster.replica_links(topic) {
                        Ok(replicas) => {
                            cluster.broker.ask_replicas_again(topic, &replicas);
                            false
                        }
                        Err(_) => true,
                    }
                });
                if waiting.is_empty() {
                    return;
                }
                if tokio::time::Instant::now() >= deadline {
                    for topic in &waiting {
                        cluster.broker.fail_orphans(topic);
                    }
                    return;
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        });
    }

    /// True when gossip came from a majority of the cluster (this node included) within
    /// [`RECENTLY_HEARD`].
    fn heard_majority_lately(&self) -> bool {
        let view = self.gossip.view.read();
        self.gossip
            .fence
            .heard_majority_within(RECENTLY_HEARD, view.cluster_size(), |addr| {
                view.is_member_address(addr)
            })
    }

    /// True when this node sees more than half of the cluster alive (see
    /// [`Self::compute_majority`]); kept up to date on every membership change, so the
    /// publish path reads one atomic.
    pub fn has_majority(&self) -> bool {
        // A node fenced after a stall counts as cut off until it has heard from a majority
        // again (see `fence`): its view may be older than the others' decisions.
        self.majority.load(Ordering::Acquire) && !self.gossip.fence.is_fenced()
    }

    /// Recomputes [`Self::has_majority`] from the membership view; returns the new value.
    pub(super) fn refresh_majority(&self) -> bool {
        let majority = self.compute_majority();
        self.majority.store(majority, Ordering::Release);
        majority
    }

    /// True when this node has found the cluster it was seeded with (see
    /// [`Self::has_joined`]) and sees more than half of it alive, itself included (an even
    /// split goes to the half with the smallest name). Members that left are not counted, nor
    /// the old identities of members alive under a new one.
    fn compute_majority(&self) -> bool {
        if !self.has_joined() {
            return false;
        }
        let members = self.members();
        let alive: std::collections::HashSet<&str> = members
            .iter()
            .filter(|m| {
                matches!(
                    m.state,
                    super::membership::MemberState::Alive | super::membership::MemberState::Suspect
                )
            })
            .map(|m| m.name.as_str())
            .collect();
        let missing: std::collections::HashSet<&str> = members
            .iter()
            .filter(|m| m.state == super::membership::MemberState::Down)
            .map(|m| m.name.as_str())
            .filter(|name| !alive.contains(name))
            .collect();
        // An even split is broken by name, so that exactly one side carries on.
        alive.len() > missing.len()
            || (alive.len() == missing.len() && alive.iter().min() < missing.iter().min())
    }

    /// Waits for room in this node's publish buffer for a publish of `bytes` that `link`'s
    /// peer sent on its publish stream, which is read no further meanwhile: QUIC's flow
    /// control then slows the peer's writer, which holds its publishers' shares of its own
    /// buffer, so its publishing connections are read more slowly in turn. Only the
    /// publish stream waits: the `Stored` answers and forwards that free room come on other
    /// streams. `None` once the link or the node closes.
    pub(super) async fn reserve_for_peer(
        &self,
        link: &PeerLink,
        bytes: usize,
    ) -> Option<PublishPermit> {
        if let Some(permit) = self.try_reserve_publish(bytes) {
            return Some(permit);
        }
        self.stats
            .peer_publishes_waited
            .fetch_add(1, Ordering::Relaxed);
        let wanted = u32::try_from(bytes.clamp(1, self.publish_buffer_bytes)).unwrap_or(u32::MAX);
        let budget = self.publish_budget.clone();
        tokio::select! {
            permit = budget.acquire_many_owned(wanted) => permit.ok().map(PublishPermit),
            () = link.closed() => None,
            () = self.stop.cancelled() => None,
        }
    }

    /// A peer asks this node to sequence an event; `permit` is the share of this node's
    /// publish buffer it holds until its replicas stored it and it is written to the peers
    /// it is forwarded to.
    pub(super) fn on_publish_request(
        self: &Arc<Self>,
        link: &Arc<PeerLink>,
        request: pb::PublishRequest,
        permit: PublishPermit,
    ) {
        let answer = if request.id == 0 {
            Answer::Nobody
        } else {
            Answer::Peer(link.clone(), request.id)
        };
        let permit = Some(permit);
        let reply = ReplyTo { answer, permit };
        let owner = self.owner_of(&request.topic);
        let leaving = self.leaving.load(Ordering::Acquire);
        if (leaving || owner != self.id.name) && reply.wanted() {
            link.send_control(PeerMessage::Frame(pb::peer_frame::Msg::Published(
                pb::PublishReply {
                    id: request.id,
                    result: Some(pb::publish_reply::Result::NotOwner(owner)),
                },
            )));
            return;
        }
        let Some(payload) = payload_from_pb(request.data, request.encoding) else {
            reply.send(Err(PublishError {
                code: "invalid_request",
                message: "malformed data".into(),
            }));
            return;
        };
        let id = if request.publish_id.is_empty() {
            None
        } else if let Some(id) = PublishId::from_wire(&request.publish_id) {
            Some(id)
        } else {
            reply.send(Err(PublishError {
                code: "invalid_request",
                message: "malformed publish id".into(),
            }));
            return;
        };
        let publication = Publication { payload, id };
        if crate::routing::topic::validate_publish_topic(&request.topic, 4096).is_err() {
            reply.send(Err(PublishError {
                code: "invalid_topic",
                message: "invalid topic".into(),
            }));
            return;
        }
        if leaving || owner != self.id.name {
            // Nobody to tell that views disagree: route it on from here, within the same
            // retry budget the publishing node had.
            let why = format!("nodes disagree on the owner ({owner} here)");
            self.retry(
                request.topic.into(),
                publication,
                reply,
                request.attempt,
                why,
            );
            return;
        }
        self.publish_as_owner(request.topic.into(), publication, reply, 0);
    }

    /// A replica's copy of an event: store it and confirm.
    pub(super) fn on_replicate(&self, link: &Arc<PeerLink>, event: Event) {
        let topic = event.topic.to_string();
        let (epoch, seq) = (event.epoch.to_string(), event.seq);
        match self.broker.store_replica_unsynced(Arc::new(event)) {
            Ok((receipt, None)) => {
                link.send_control(PeerMessage::Frame(stored_frame(topic, &receipt)))
            }
            Ok((receipt, Some(ticket))) => {
                // `fsync = "always"`: confirmed once this node's disk holds it.
                let link = link.clone();
                let then = move |synced: Result<(), crate::storage::StorageError>| {
                    let frame = match synced {
                        Ok(()) => stored_frame(topic, &receipt),
                        Err(error) => pb::peer_frame::Msg::Refused(pb::ReplicaRefused {
                            topic,
                            epoch: receipt.epoch.to_string(),
                            seq: receipt.seq,
                            reason: format!("this node could not store the event ({error})"),
                        }),
                    };
                    link.send_control(PeerMessage::Frame(frame));
                };
                let after = crate::broker::AfterSync::Then(Box::new(then));
                self.broker.after_sync(ticket, after);
            }
            Err(refusal) => {
                self.stats.replicas_refused.fetch_add(1, Ordering::Relaxed);
                tracing::info!(peer = %link.name, %topic, %epoch, seq, %refusal, "refused to store an event from an owner this node no longer recognises");
                link.send_control(PeerMessage::Frame(pb::peer_frame::Msg::Refused(
                    pb::ReplicaRefused {
                        topic,
                        epoch,
                        seq,
                        reason: refusal.to_string(),
                    },
                )));
            }
        }
    }
}

/// A replica's confirmation that it stored `topic` up to the receipt's position.
fn stored_frame(topic: String, receipt: &crate::broker::Receipt) -> pb::peer_frame::Msg {
    pb::peer_frame::Msg::Stored(pb::Stored {
        topic,
        epoch: receipt.epoch.to_string(),
        seq: receipt.seq,
    })
}

fn payload_pb(payload: &Payload) -> (bytes::Bytes, pb::Encoding) {
    match payload {
        Payload::Json(b) => (b.clone(), pb::Encoding::Json),
        Payload::Binary(b) => (b.clone(), pb::Encoding::Binary),
    }
}

fn payload_from_pb(data: bytes::Bytes, encoding: i32) -> Option<Payload> {
    match pb::Encoding::try_from(encoding).ok()? {
        pb::Encoding::Json => Payload::json(data).ok(),
        pb::Encoding::Binary => Some(Payload::Binary(data)),
    }
}
