//! The cluster: gossip membership ([`gossip`]), the authenticated QUIC mesh
//! ([`transport`]), and the links through which nodes exchange interest and events
//! ([`link`]).
//!
//! Membership drives connections: when gossip reports a member up, the node whose name sorts
//! first dials it (so each pair shares one connection); when a member goes down or leaves,
//! its link closes and its interest leaves the routing table at once. A link that breaks
//! while its peer is still a member is redialled with backoff, and the peer's interest is
//! rebuilt from the snapshot it sends on the new connection.

pub mod envelope;
pub mod fence;
pub mod gossip;
mod group_progress;
pub mod key_rules;
pub mod link;
pub mod membership;
pub mod security;
pub mod suspicion;
pub mod topics;
pub mod transport;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use murmur_proto::cluster::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Broker;
use gossip::{Gossip, MemberEvent};
use link::{PeerLink, PeerMessage};
use membership::{MemberInfo, NodeId};
use security::ClusterKey;
use transport::Established;

/// Longest wait between attempts to reach a peer.
const MAX_REDIAL_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct PeerEntry {
    link: Option<Arc<PeerLink>>,
    /// The last link to this peer ended without a goodbye.
    lost_unexpectedly: bool,
    /// The dial loop for this peer and the generation it dials.
    dialer: Option<(u64, AbortHandle)>,
}

/// This node's part of the cluster.
pub struct Cluster {
    id: NodeId,
    endpoint: quinn::Endpoint,
    broker: Arc<Broker>,
    pub gossip: Gossip,
    peers: Mutex<HashMap<String, PeerEntry>>,
    peer_queue: usize,
    /// Bytes of publishes this node's clients may have in flight (see `reserve_publish`).
    publish_buffer_bytes: usize,
    publish_budget: Arc<tokio::sync::Semaphore>,
    /// How long a peer may take no events while some wait for it before its link is reset.
    peer_stall_timeout: Duration,
    /// Copies kept of each topic's events, the owner's included.
    replication: usize,
    stop: CancellationToken,
    tasks: TaskTracker,
    pub stats: ClusterStats,
    /// Requests to peers awaiting their reply, by id, with the peer asked.
    requests: Mutex<HashMap<u64, PendingRequest>>,
    next_request: std::sync::atomic::AtomicU64,
    /// The ids this node gives the publishes it forwards to their owner, so that one sent
    /// again after a lost link is not numbered twice: a number random per process, and a
    /// counter.
    publish_ids: (u64, std::sync::atomic::AtomicU64),
    /// Topics being claimed, with the publishes that wait for the claim.
    claims: Mutex<HashMap<Arc<str>, Vec<topics::Queued>>>,
    /// Set when the node begins to leave: it sequences nothing more.
    leaving: std::sync::atomic::AtomicBool,
    /// Whether this node sees a majority of the cluster (see `has_majority`).
    majority: std::sync::atomic::AtomicBool,
    /// Set while topics recovered from disk wait to be claimed (`reclaim_recovered`): the
    /// node is not ready meanwhile, so that clients come once it serves them in full.
    recovering: std::sync::atomic::AtomicBool,
    /// When this node's view of the cluster last grew: claims wait for it to settle.
    view_settle: topics::view_settle::ViewSettle,
    /// Bumped when this node may have missed events forwarded to its subscribers (a peer
    /// link was lost, or came back after being lost): connections then resync.
    resync: tokio::sync::watch::Sender<u64>,
}

type PendingRequest = (Arc<str>, tokio::sync::oneshot::Sender<pb::peer_frame::Msg>);

#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Peer connections that failed their handshake, either way (TLS, identity, version).
    pub connections_refused: std::sync::atomic::AtomicU64,
    /// Peer links established, either way.
    pub links_established: std::sync::atomic::AtomicU64,
    /// Publishes from peers that waited, on this node as the topic's owner, for room in its
    /// publish buffer.
    pub peer_publishes_waited: std::sync::atomic::AtomicU64,
    /// Links reset because their peer took no events for `peer_stall_timeout`, or its
    /// event queue (`peer_queue`) filled.
    pub links_stalled: std::sync::atomic::AtomicU64,
    /// Events this node refused to store as a replica because it no longer recognises their
    /// sender as the topic's owner.
    pub replicas_refused: std::sync::atomic::AtomicU64,
    /// Single-topic resumes whose placement knew nothing of the topic, so that every node
    /// was asked after all.
    pub resumes_asked_everyone: std::sync::atomic::AtomicU64,
    /// Replay requests from peers (their clients' resumes) this node answered.
    pub replay_requests_served: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Everything the cluster needs from the node at start.
pub struct ClusterSetup {
    pub id: NodeId,
    /// Non-blocking; gossip moves it to its own thread.
    pub gossip_socket: std::net::UdpSocket,
    pub endpoint: quinn::Endpoint,
    pub key: ClusterKey,
    pub seeds: Vec<String>,
    /// Gossip packets stamped further than this from this node's clock are refused.
    pub replay_window: Duration,
    pub peer_queue: usize,
    pub peer_stall_timeout: Duration,
    pub publish_buffer_bytes: usize,
    pub replication: usize,
}

impl Cluster {
    /// Starts gossip and the mesh; fails only when the gossip thread cannot start.
    pub async fn start(setup: ClusterSetup, broker: Arc<Broker>) -> std::io::Result<Arc<Self>> {
        let stop = CancellationToken::new();
        let (events_tx, events) = mpsc::unbounded_channel();
        // A node given seeds has a cluster to find: until it does, it is as cut off as a
        // node in a minority, and refuses publishes rather than become an island.
        let alone_by_design = setup.seeds.is_empty();
        let gossip = Gossip::spawn(
            setup.gossip_socket,
            setup.id.clone(),
            setup.key,
            setup.seeds,
            setup.replay_window,
            events_tx,
            stop.clone(),
        )
        .await?;
        gossip.fence.spawn_watchdog(stop.clone())?;
        broker.set_stall_fence(gossip.fence.clone());
        let cluster = Arc::new(Self {
            id: setup.id,
            endpoint: setup.endpoint,
            broker,
            gossip,
            peers: Mutex::new(HashMap::new()),
            peer_queue: setup.peer_queue,
            publish_buffer_bytes: setup.publish_buffer_bytes,
            publish_budget: Arc::new(tokio::sync::Semaphore::new(setup.publish_buffer_bytes)),
            peer_stall_timeout: setup.peer_stall_timeout,
            replication: setup.replication.max(1),
            stop,
            tasks: TaskTracker::new(),
            stats: ClusterStats::default(),
            requests: Mutex::new(HashMap::new()),
            next_request: std::sync::atomic::AtomicU64::new(1),
            publish_ids: (rand::random(), std::sync::atomic::AtomicU64::new(1)),
            claims: Mutex::new(HashMap::new()),
            leaving: std::sync::atomic::AtomicBool::new(false),
            majority: std::sync::atomic::AtomicBool::new(alone_by_design),
            recovering: std::sync::atomic::AtomicBool::new(false),
            view_settle: topics::view_settle::ViewSettle::default(),
            resync: tokio::sync::watch::Sender::new(0),
        });
        cluster.tasks.spawn(cluster.clone().member_events(events));
        cluster.tasks.spawn(cluster.clone().accept_loop());
        Ok(cluster)
    }

    pub fn name(&self) -> &str {
        &self.id.name
    }

    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// Every member as this node sees it, itself included.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.gossip.view.read().members()
    }

    /// Topics a claim is under way for on this node: the sweep that forgets idle topics
    /// leaves them be (a publish waits for them).
    pub fn claimed_topics(&self) -> Vec<Arc<str>> {
        self.claims.lock().keys().cloned().collect()
    }

    /// Changes whenever this node's subscribers may have missed forwarded events.
    pub fn resync_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.resync.subscribe()
    }

    /// True when this node has seen another member alive, or has no cluster to find: no
    /// seeds, or seeds that name only itself (see [`gossip::Seeding`]). A node seeded with a
    /// cluster it cannot reach (down, unreachable, another cluster key) has not; the
    /// majority rule (`has_majority`) then holds it cut off, so it refuses publishes.
    pub fn has_joined(&self) -> bool {
        self.gossip.seeding.alone_by_design() || self.gossip.view.read().has_joined()
    }

    /// Why publishes are refused while this node is cut off.
    pub fn cut_off_reason(&self) -> String {
        if self.gossip.fence.is_fenced() {
            self.gossip.fence.reason()
        } else if self.has_joined() {
            topics::MINORITY.to_owned()
        } else {
            format!(
                "this node has not joined its cluster ({}); publish through another node",
                self.not_joined_reason()
            )
        }
    }

    /// What keeps a seeded node from joining, as far as it can tell: no seed answered, and
    /// what it refused of the gossip it did receive (another cluster key, skewed clocks).
    pub fn not_joined_reason(&self) -> String {
        let seeds = self.gossip.seeding.seeds.join(", ");
        match self.gossip.stats.refused.describe() {
            Some(refused) => format!("not joined: no seed answered (seeds: {seeds}); {refused}"),
            None => format!("not joined: no seed answered (seeds: {seeds})"),
        }
    }

    /// Live peers (alive or suspect) as gossip sees them.
    pub fn live_peer_count(&self) -> usize {
        self.gossip.view.read().live_peers().len()
    }

    /// True when every live peer is linked and its interest known.
    pub fn is_settled(&self) -> bool {
        let view = self.gossip.view.read();
        let peers = self.peers.lock();
        view.live_peers().iter().all(|p| {
            peers
                .get(&p.name)
                .and_then(|e| e.link.as_ref())
                .is_some_and(|l| !l.is_closed() && l.interest_known())
        })
    }

    /// The links to peers that are connected now.
    pub fn links(&self) -> Vec<Arc<PeerLink>> {
        self.peers
            .lock()
            .values()
            .filter_map(|p| p.link.clone())
            .collect()
    }

    /// This node's identity as it is now: a node declared down rejoins under a new
    /// generation, and peers accept links only from the generation they see alive.
    fn hello(&self) -> pb::Hello {
        pb::Hello {
            name: self.id.name.clone(),
            generation: self.current_generation(),
        }
    }

    fn current_generation(&self) -> u64 {
        self.gossip
            .view
            .read()
            .myself()
            .map_or(self.id.generation, |me| me.generation)
    }

    async fn member_events(self: Arc<Self>, mut events: mpsc::UnboundedReceiver<MemberEvent>) {
        loop {
            let event = tokio::select! {
                () = self.stop.cancelled() => return,
                event = events.recv() => match event {
                    Some(e) => e,
                    None => return,
                },
            };
            let had_majority = self.has_majority();
            let lost_a_member = matches!(event, MemberEvent::Down(_));
            if matches!(event, MemberEvent::Up(_) | MemberEvent::Rejoined) {
                // Members may still be coming back one by one: claims wait for the rest.
                self.view_settle.grew();
            }
            match event {
                MemberEvent::Up(id) => self.on_member_up(id),
                MemberEvent::Down(id) => self.on_member_down(&id),
                MemberEvent::Rejoined => {
                    // The others numbered this node's topics meanwhile: claim them afresh.
                    tracing::warn!("rejoined after being declared down: reclaiming topics");
                    self.broker.relinquish_all();
                    self.gossip.fence.rejoined();
                }
                // Nothing to tear down: the majority below is computed afresh.
                MemberEvent::AloneByDesign => {}
            }
            // Refreshed after every event, so that a node regains it too (it rejoined, or
            // found the cluster it was seeded with).
            let has_majority = self.refresh_majority();
            if !had_majority && has_majority {
                // What this node saw while cut off is stale: let the view catch up first.
                self.view_settle.grew();
            }
            if had_majority && !has_majority {
                // Cut off from most of the cluster, which may carry on with these topics.
                tracing::warn!(
                    "this node sees only a minority of the cluster: new epochs from here"
                );
                self.broker.relinquish_all();
            }
            if lost_a_member && has_majority {
                // Topics whose owner went away: this node's copy is their history now.
                self.broker
                    .promote_copies(|topic| self.owner_of(topic) == self.name());
            }
        }
    }

    fn on_member_up(self: &Arc<Self>, id: NodeId) {
        if id.name == self.id.name {
            if id.gossip != self.id.gossip {
                tracing::error!(peer = %id.gossip, name = %id.name, "another node uses this node's name; names must be unique");
            }
            return;
        }
        // One connection per pair: the node whose name sorts first dials.
        if self.id.name.as_str() > id.name.as_str() {
            return;
        }
        let mut peers = self.peers.lock();
        let entry = peers.entry(id.name.clone()).or_default();
        if let Some((generation, handle)) = &entry.dialer {
            if *generation == id.generation && !handle.is_finished() {
                return;
            }
            handle.abort();
        }
        let handle = self.tasks.spawn(self.clone().dial_loop(id.clone()));
        entry.dialer = Some((id.generation, handle.abort_handle()));
    }

    fn on_member_down(self: &Arc<Self>, id: &NodeId) {
        let left = self.gossip.view.read().has_left_named(&id.name);
        let (link, dialer_aborted) = {
            let mut peers = self.peers.lock();
            let Some(entry) = peers.get_mut(&id.name) else {
                return;
            };
            let mut dialer_aborted = false;
            if let Some((generation, handle)) = &entry.dialer
                && *generation <= id.generation
            {
                handle.abort();
                entry.dialer = None;
                dialer_aborted = true;
            }
            let link = entry.link.take_if(|l| l.generation <= id.generation);
            if dialer_aborted && link.is_some() && !left {
                // The link task ran inside the dialer just aborted, so it never reaches its
                // own cleanup: mark the loss here, for the resync when the link comes back.
                entry.lost_unexpectedly = true;
            }
            (link, dialer_aborted)
        };
        if let Some(link) = &link {
            tracing::info!(peer = %link.name, "peer is down: dropping its link and interest");
            self.broker.detach_peer(link);
            if dialer_aborted && !left {
                // What the peer sequenced from now on never reaches this node's subscribers
                // (a partition, or a pause): they resume elsewhere, or here once it is back.
                self.resync.send_modify(|g| *g += 1);
            }
        }
        self.forget_requests_to(&id.name);
        let orphaned = self.broker.on_peer_gone(&id.name);
        self.ask_replicas_again(&id.name, orphaned);
        // A link that outlived the departure (a graceful leave's, say) is marked too.
        let current = self
            .peers
            .lock()
            .get(&id.name)
            .and_then(|p| p.link.clone())
            .filter(|l| l.generation <= id.generation);
        self.take_over_group_progress(&id.name, link.as_deref().or(current.as_deref()));
    }

    /// True when this node's membership view has `name` alive (or suspect) under
    /// `generation`.
    fn is_live_member(&self, name: &str, generation: u64) -> bool {
        self.gossip
            .view
            .read()
            .live_peers()
            .iter()
            .any(|p| p.name == name && p.generation == generation)
    }

    async fn dial_loop(self: Arc<Self>, peer: NodeId) {
        let mut backoff = Duration::from_millis(50);
        let mut failures = 0u32;
        while !self.stop.is_cancelled() {
            let hello = self.hello();
            match transport::dial(&self.endpoint, peer.quic, &peer.name, &hello).await {
                Ok(established) => {
                    failures = 0;
                    backoff = Duration::from_millis(50);
                    self.clone().run_link(established).await;
                }
                Err(err) => {
                    self.stats
                        .connections_refused
                        .fetch_add(1, Ordering::Relaxed);
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(peer = %peer.name, addr = %peer.quic, %err, failures, "cannot connect to peer");
                    }
                }
            }
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_REDIAL_BACKOFF);
        }
    }

    async fn accept_loop(self: Arc<Self>) {
        loop {
            let incoming = tokio::select! {
                () = self.stop.cancelled() => return,
                incoming = self.endpoint.accept() => match incoming {
                    Some(i) => i,
                    None => return,
                },
            };
            let remote = incoming.remote_address();
            let cluster = self.clone();
            let hello = self.hello();
            self.tasks.spawn(async move {
                match transport::accept(incoming, &hello).await {
                    Ok(established) => cluster.run_link(established).await,
                    Err(err) => {
                        cluster
                            .stats
                            .connections_refused
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%remote, %err, "refused a peer connection");
                    }
                }
            });
        }
    }

    /// Serves one established connection until it ends.
    async fn run_link(self: Arc<Self>, established: Established) {
        let Established {
            connection,
            peer,
            writer,
            mut reader,
            publish_writer,
            publish_reader,
        } = established;
        if !self.is_live_member(&peer.name, peer.generation) {
            // A peer this node declared down (or has not seen join yet) may still see itself
            // as an owner, with this node as its replica: storing its events would let it
            // acknowledge positions the rest of the cluster numbers too. It dials again; by
            // then it has learnt it was declared down and rejoined under a new generation.
            tracing::info!(peer = %peer.name, generation = peer.generation, "refused a link: not a live member in this node's view");
            self.stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            connection.close(quinn::VarInt::from_u32(2), b"not a live member here");
            return;
        }
        let (link, queues) = PeerLink::new(&peer.name, peer.generation, self.peer_queue);
        let replaced = self
            .peers
            .lock()
            .entry(peer.name.clone())
            .or_default()
            .link
            .replace(link.clone());
        let came_back = {
            let mut peers = self.peers.lock();
            let entry = peers.entry(peer.name.clone()).or_default();
            std::mem::replace(&mut entry.lost_unexpectedly, false)
        };
        if let Some(old) = replaced {
            self.broker.detach_peer(&old);
        }
        if came_back {
            // Events it sequenced while the link was down never reached this node's
            // subscribers: they resume, and get them from history.
            self.resync.send_modify(|g| *g += 1);
        }
        self.stats.links_established.fetch_add(1, Ordering::Relaxed);
        tracing::info!(peer = %peer.name, remote = %connection.remote_address(), "peer link up");
        self.broker.attach_peer(&link);
        let link::LinkQueues {
            control,
            events,
            publishes,
        } = queues;
        let writer = tokio::spawn(transport::write_loop(
            writer,
            control,
            Some(events),
            link.clone(),
        ));
        let publish_writer = tokio::spawn(transport::write_loop(
            publish_writer,
            publishes,
            None,
            link.clone(),
        ));
        let publish_reader =
            tokio::spawn(self.clone().read_publishes(link.clone(), publish_reader));
        let mut rtt_tick = tokio::time::interval(Duration::from_secs(1));
        let ended = loop {
            tokio::select! {
                _ = rtt_tick.tick() => {
                    let micros = u64::try_from(connection.rtt().as_micros()).unwrap_or(u64::MAX);
                    link.stats.rtt_micros.store(micros, Ordering::Relaxed);
                    if link.is_stalled(self.peer_stall_timeout) {
                        // Stuck, not slow: nothing it was queued was written for the whole
                        // timeout. Its queue goes (the publishers it held back go on) and
                        // subscribers resync, as after a lost link.
                        self.stats.links_stalled.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(peer = %peer.name, queued = link.queue_depth(), timeout = ?self.peer_stall_timeout, "peer took no events for peer_stall_timeout; resetting the link");
                        break "stalled".to_owned();
                    }
                }
                () = link.closed() => {
                    // Closed because gossip reported the peer down: its goodbye may be in
                    // flight just behind, and tells a departure from a crash.
                    self.read_goodbye(&link, &mut reader).await;
                    break "closed".to_owned();
                }
                () = self.stop.cancelled() => break "node stopping".to_owned(),
                frame = reader.next() => match frame {
                    None => break "peer closed the stream".to_owned(),
                    Some(Err(err)) => break err.to_string(),
                    Some(Ok(bytes)) => {
                        if let Err(err) = self.on_frame(&link, bytes.freeze()) {
                            tracing::warn!(peer = %peer.name, %err, "bad frame from peer; dropping the link");
                            break err.to_string();
                        }
                    }
                },
            }
        };
        publish_reader.abort();
        // Let queued frames (a `Leaving`, say) reach the peer before the connection closes.
        let _ = tokio::time::timeout(Duration::from_millis(200), writer).await;
        publish_writer.abort();
        connection.close(quinn::VarInt::from_u32(0), b"bye");
        let left = self.gossip.view.read().has_left_named(&link.name);
        if !left && !self.stop.is_cancelled() {
            // Lost without a goodbye: what it would have forwarded is missed from now on.
            if let Some(entry) = self.peers.lock().get_mut(&peer.name) {
                entry.lost_unexpectedly = true;
            }
            self.resync.send_modify(|g| *g += 1);
        }
        self.broker.detach_peer(&link);
        self.forget_requests_to(&link.name);
        let orphaned = self.broker.on_peer_gone(&link.name);
        self.ask_replicas_again(&link.name, orphaned);
        let mut peers = self.peers.lock();
        if let Some(entry) = peers.get_mut(&peer.name) {
            entry.link.take_if(|l| Arc::ptr_eq(l, &link));
        }
        tracing::info!(peer = %peer.name, reason = %ended, "peer link down");
    }

    /// Reads the peer's publish stream: each publish waits for room in this node's
    /// publish buffer before the next is read (see `reserve_for_peer`). A bad frame closes
    /// the link.
    async fn read_publishes(
        self: Arc<Self>,
        link: Arc<PeerLink>,
        mut reader: transport::PeerReader,
    ) {
        let failure = loop {
            let frame = tokio::select! {
                () = link.closed() => return,
                frame = reader.next() => frame,
            };
            let bytes = match frame {
                None => return,
                Some(Err(err)) => break err.to_string(),
                Some(Ok(bytes)) => bytes,
            };
            let request = match transport::decode(bytes.freeze()) {
                Ok(pb::peer_frame::Msg::Publish(request)) => request,
                Ok(_) => break "not a publish on the publish stream".to_owned(),
                Err(err) => break err.to_string(),
            };
            let bytes = request.data.len() + request.topic.len() + topics::PUBLISH_OVERHEAD_BYTES;
            let Some(permit) = self.reserve_for_peer(&link, bytes).await else {
                return;
            };
            self.on_publish_request(&link, request, permit);
        };
        tracing::warn!(peer = %link.name, err = %failure, "bad publish stream from peer; dropping the link");
        link.close();
    }

    async fn read_goodbye(
        &self,
        link: &Arc<PeerLink>,
        reader: &mut tokio_util::codec::FramedRead<
            quinn::RecvStream,
            tokio_util::codec::LengthDelimitedCodec,
        >,
    ) {
        let wait = async {
            while let Some(Ok(bytes)) = reader.next().await {
                if let Ok(pb::peer_frame::Msg::Leaving(leaving)) = transport::decode(bytes.freeze())
                {
                    self.gossip
                        .view
                        .write()
                        .mark_left(&link.name, leaving.generation);
                    self.refresh_majority();
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(300), wait).await;
    }

    fn on_frame(
        self: &Arc<Self>,
        link: &Arc<PeerLink>,
        bytes: bytes::Bytes,
    ) -> Result<(), transport::TransportError> {
        match transport::decode(bytes)? {
            pb::peer_frame::Msg::Hello(_) => {}
            pb::peer_frame::Msg::Snapshot(snapshot) => {
                let all = snapshot
                    .interests
                    .into_iter()
                    .map(transport::interest_from_pb)
                    .collect();
                self.broker
                    .apply_peer_interest(link, Some(all), Vec::new(), Vec::new());
            }
            pb::peer_frame::Msg::Delta(delta) => {
                let added = delta
                    .added
                    .into_iter()
                    .map(transport::interest_from_pb)
                    .collect();
                let removed = delta
                    .removed
                    .into_iter()
                    .map(transport::interest_from_pb)
                    .collect();
                self.broker.apply_peer_interest(link, None, added, removed);
            }
            pb::peer_frame::Msg::Forward(forward) => {
                let Some(event) = forward.event.and_then(transport::event_from_pb) else {
                    tracing::warn!(peer = %link.name, "peer forwarded a malformed event; ignored");
                    return Ok(());
                };
                link.stats.events_received.fetch_add(1, Ordering::Relaxed);
                let tokens = forward.group_tokens.into_iter().chain(std::iter::repeat(0));
                let groups: Vec<_> = forward
                    .groups
                    .into_iter()
                    .map(transport::interest_from_pb)
                    .zip(tokens)
                    .collect();
                let not_placed = if link.groups_taken_over.load(Ordering::Acquire) {
                    // This node took the peer's queue-group progress over and places what it
                    // owed itself (`Leaving` overtakes the forwards queued before it): a late
                    // placement goes back to the peer, which places it again, marked, if it
                    // is still there.
                    self.broker.deliver_forwarded(
                        &Arc::new(event),
                        forward.plain,
                        &[],
                        &link.name,
                        forward.redelivered,
                    );
                    groups.iter().map(|(_, token)| *token).collect()
                } else {
                    self.broker.deliver_forwarded(
                        &Arc::new(event),
                        forward.plain,
                        &groups,
                        &link.name,
                        forward.redelivered,
                    )
                };
                for token in not_placed.into_iter().filter(|t| *t != 0) {
                    link.send_control(PeerMessage::Frame(pb::peer_frame::Msg::GroupSettled(
                        pb::GroupSettled {
                            token,
                            acked: false,
                        },
                    )));
                }
            }
            pb::peer_frame::Msg::Publish(_) => {
                return Err(transport::TransportError::Misplaced(
                    "a publish on the main stream",
                ));
            }
            pb::peer_frame::Msg::Replicate(replicate) => {
                match replicate.event.and_then(transport::event_from_pb) {
                    Some(event) => self.on_replicate(link, event),
                    None => {
                        tracing::warn!(peer = %link.name, "peer sent a malformed replica; ignored")
                    }
                }
            }
            pb::peer_frame::Msg::Stored(stored) => {
                self.broker
                    .on_stored(&link.name, &stored.topic, &stored.epoch, stored.seq);
            }
            pb::peer_frame::Msg::Refused(refused) => {
                tracing::warn!(peer = %link.name, topic = %refused.topic, seq = refused.seq, reason = %refused.reason, "a replica no longer recognises this node as the topic's owner: its waiting events fail, the topic is claimed again");
                self.broker.replica_refused(&refused.topic);
            }
            pb::peer_frame::Msg::StateRequest(request) => self.on_state_request(link, request),
            pb::peer_frame::Msg::Sync(sync) => {
                let snapshot = crate::broker::TopicSnapshot {
                    epoch: sync.epoch.into(),
                    last_seq: sync.last_seq,
                    events: sync
                        .events
                        .into_iter()
                        .filter_map(transport::event_from_pb)
                        .map(Arc::new)
                        .collect(),
                    ids: transport::remembered_from_pb(sync.ids),
                };
                self.broker.store_copy(&sync.topic, snapshot);
            }
            pb::peer_frame::Msg::Commit(commit) => self.on_commit(commit),
            pb::peer_frame::Msg::GroupProgress(progress) => {
                self.on_group_progress(&link.name, progress);
            }
            pb::peer_frame::Msg::GroupSettled(settled) => {
                self.broker
                    .settle_on_peer(&link.name, settled.token, settled.acked);
            }
            pb::peer_frame::Msg::Dropped(_) => {
                // Events for this node's plain subscribers were dropped on the way: they
                // resume from their cursors now, rather than when (if ever) the topic's next
                // event shows the hole.
                tracing::info!(peer = %link.name, "peer dropped events forwarded here; subscribers resync");
                self.resync.send_modify(|g| *g += 1);
            }
            pb::peer_frame::Msg::ReplayRequest(request) => self.on_replay_request(link, request),
            reply @ (pb::peer_frame::Msg::Published(_)
            | pb::peer_frame::Msg::StateReply(_)
            | pb::peer_frame::Msg::ReplayReply(_)) => {
                let id = match &reply {
                    pb::peer_frame::Msg::Published(r) => r.id,
                    pb::peer_frame::Msg::StateReply(r) => r.id,
                    pb::peer_frame::Msg::ReplayReply(r) => r.id,
                    _ => 0,
                };
                self.on_reply(id, reply);
            }
            pb::peer_frame::Msg::Leaving(leaving) => {
                tracing::info!(peer = %link.name, "peer is leaving the cluster");
                self.gossip
                    .view
                    .write()
                    .mark_left(&link.name, leaving.generation);
                // A member that left no longer counts towards the cluster's size.
                self.refresh_majority();
                link.close();
            }
        }
        Ok(())
    }

    /// Leaves gracefully: tells every peer at once, then leaves the gossip cluster, then
    /// closes the mesh.
    pub async fn leave(&self) {
        // Sequence nothing more, and let what is in flight be stored and sent on, so that
        // whoever takes the topics over continues right after the last event delivered.
        self.leaving.store(true, Ordering::Release);
        // Queue-group events placed on peers' members are waited for too (within the same
        // bound): acknowledged before this node goes, they are not placed again by the
        // topics' next owners.
        let settle = async {
            while self.broker.has_pending() || self.broker.group_events_on_peers() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), settle).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The last word on what the groups still owe and how far the topics are committed,
        // ahead of `Leaving` on the same queue.
        self.report_group_progress();
        self.announce_commits();
        let generation = self.current_generation();
        let mut sent = Vec::new();
        for link in self.links() {
            let (done, wait) = tokio::sync::oneshot::channel();
            link.send_control(PeerMessage::Leaving {
                generation,
                sent: Some(done),
            });
            sent.push(wait);
        }
        // Peers should hear it over the mesh before gossip reports this node down, so they
        // can tell a departure from a failure.
        let _ = tokio::time::timeout(
            Duration::from_millis(500),
            futures_util::future::join_all(sent),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.gossip.leave().await;
        self.stop.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tasks.wait()).await;
        self.endpoint.close(quinn::VarInt::from_u32(0), b"leaving");
    }

    /// Tells the node that placed a queue-group event here what became of it: acknowledged
    /// by a member, or to be placed elsewhere.
    pub fn settle_group(&self, origin: &crate::event::GroupOrigin, acked: bool) {
        let link = self
            .peers
            .lock()
            .get(&*origin.peer)
            .and_then(|p| p.link.clone());
        match link {
            Some(link) => link.send_control(PeerMessage::Frame(pb::peer_frame::Msg::GroupSettled(
                pb::GroupSettled {
                    token: origin.token,
                    acked,
                },
            ))),
            // The link is gone: the origin re-places everything it placed here anyway.
            None => tracing::debug!(peer = %origin.peer, "cannot settle a group delivery: no link"),
        }
    }

    /// Closes the link to `peer` (if any); the dialing side reconnects and both sides send
    /// their interest afresh. Returns whether there was a link.
    pub fn reset_link(&self, peer: &str) -> bool {
        let link = self.peers.lock().get(peer).and_then(|p| p.link.clone());
        link.inspect(|l| l.close()).is_some()
    }

    /// Stops without telling anyone, as a crash would (for tests of failure detection).
    pub fn halt(&self) {
        self.stop.cancel();
        self.endpoint.close(quinn::VarInt::from_u32(0), b"halt");
    }
}
