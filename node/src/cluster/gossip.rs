//! Membership by gossip: one task owns the `foca` SWIM state machine and its UDP socket.
//!
//! The task runs on a thread of its own, with its own single-threaded runtime: failure
//! detection must keep its timing when the node is saturated. On the node's runtime, probes
//! and acks waited behind thousands of busy connection tasks, and a node that was merely busy
//! was declared down (then every subscriber resynced). The OS schedules this thread fairly
//! against the runtime's workers instead.
//!
//! Every packet is sealed with the cluster key ([`ClusterKey::seal`]); packets that fail the
//! check are dropped and counted before foca sees them. Timers foca asks for are kept in a
//! heap and handed back in due order (foca needs them in order). Seeds — `host:port`, DNS
//! names included — are re-resolved periodically and announced to whenever they are not
//! known alive, so an isolated node, or either side of a healed partition, finds its way
//! back without waiting for foca's slow re-contact of down members.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec, Timer};
use parking_lot::RwLock;
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::membership::{MembershipView, NodeId};
use super::security::{ClusterKey, ENVELOPE_OVERHEAD};

/// How often seeds that are not known alive are announced to.
const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);
/// How often seed names are resolved again (a Kubernetes headless service changes).
const RESOLVE_INTERVAL: Duration = Duration::from_secs(10);
/// After `leave_cluster`, how long to keep answering so the news spreads.
const LEAVE_LINGER: Duration = Duration::from_millis(300);
/// Largest UDP payload foca may produce, leaving room for the envelope under a 1500 MTU.
const MAX_PACKET: usize = 1400;

/// A membership change, for the part of the node that keeps connections to peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    Up(NodeId),
    Down(NodeId),
    /// This node was declared down by the others and rejoined under a new generation.
    Rejoined,
}

/// Counters of the gossip layer.
#[derive(Debug, Default)]
pub struct GossipStats {
    pub packets_in: AtomicU64,
    pub packets_out: AtomicU64,
    /// Packets dropped because they failed authentication (wrong cluster key, forgery).
    pub packets_rejected: AtomicU64,
}

enum Command {
    Leave(oneshot::Sender<()>),
}

/// Handle on the gossip task.
#[derive(Debug, Clone)]
pub struct Gossip {
    commands: mpsc::UnboundedSender<Command>,
    pub view: Arc<RwLock<MembershipView>>,
    pub stats: Arc<GossipStats>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Leave")
    }
}

/// foca's LAN profile, tightened so failures are noticed in seconds and a healed partition
/// reconverges in seconds rather than foca's 65 s re-contact of down members.
pub fn foca_config() -> foca::Config {
    let mut config = foca::Config::new_lan(NonZeroU32::new(8).unwrap_or(NonZeroU32::MIN));
    config.probe_period = Duration::from_millis(1000);
    config.probe_rtt = Duration::from_millis(400);
    config.suspect_to_down_after = Duration::from_secs(3);
    config.max_packet_size =
        NonZeroUsize::new(MAX_PACKET - ENVELOPE_OVERHEAD).unwrap_or(NonZeroUsize::MIN);
    config.periodic_announce = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(5),
        num_members: NonZeroUsize::MIN,
    });
    config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(2),
        num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
    });
    config.remove_down_after = Some(Duration::from_secs(15 * 60));
    config
}

impl Gossip {
    /// Starts the gossip task on `socket` (non-blocking) as `identity`, on its own thread; it
    /// ends when `stop` is cancelled or this handle is dropped.
    pub async fn spawn(
        socket: std::net::UdpSocket,
        identity: NodeId,
        key: ClusterKey,
        seeds: Vec<String>,
        events: mpsc::UnboundedSender<MemberEvent>,
        stop: CancellationToken,
    ) -> std::io::Result<Self> {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let view = Arc::new(RwLock::new(MembershipView::default()));
        view.write().set_self(identity.clone());
        let stats = Arc::new(GossipStats::default());
        let task_view = view.clone();
        let task_stats = stats.clone();
        // The thread reports whether its runtime and socket are set up, so that a failure
        // stops the node's start instead of leaving it without membership.
        let (ready_tx, ready_rx) = oneshot::channel::<std::io::Result<()>>();
        let run = move || {
            let setup = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .and_then(|runtime| {
                    let socket = {
                        let _in_runtime = runtime.enter();
                        UdpSocket::from_std(socket)?
                    };
                    Ok((runtime, socket))
                });
            let (runtime, socket) = match setup {
                Ok(ready) => {
                    let _ = ready_tx.send(Ok(()));
                    ready
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(err));
                    return;
                }
            };
            let task = GossipTask {
                foca: Foca::new(
                    identity,
                    foca_config(),
                    rand::make_rng::<StdRng>(),
                    PostcardCodec,
                ),
                runtime: AccumulatingRuntime::new(),
                socket,
                key,
                seeds,
                resolved: Vec::new(),
                last_resolve: None,
                timers: BinaryHeap::new(),
                timer_payloads: HashMap::new(),
                next_timer: 0,
                events,
                view: task_view,
                stats: task_stats,
            };
            runtime.block_on(task.run(command_rx, stop));
        };
        std::thread::Builder::new()
            .name("murmur-gossip".into())
            .spawn(run)?;
        ready_rx
            .await
            .map_err(|_| std::io::Error::other("the gossip thread ended while starting"))??;
        Ok(Self {
            commands,
            view,
            stats,
        })
    }

    /// Leaves the cluster gracefully; resolves once the departure has been gossiped.
    pub async fn leave(&self) {
        let (done, wait) = oneshot::channel();
        if self.commands.send(Command::Leave(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

struct GossipTask {
    foca: Foca<NodeId, PostcardCodec, StdRng, NoCustomBroadcast>,
    runtime: AccumulatingRuntime<NodeId>,
    socket: UdpSocket,
    key: ClusterKey,
    seeds: Vec<String>,
    resolved: Vec<std::net::SocketAddr>,
    last_resolve: Option<Instant>,
    /// Due time and insertion order: equal due times fire in the order they were asked for.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_payloads: HashMap<u64, Timer<NodeId>>,
    next_timer: u64,
    events: mpsc::UnboundedSender<MemberEvent>,
    view: Arc<RwLock<MembershipView>>,
    stats: Arc<GossipStats>,
}

impl GossipTask {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        stop: CancellationToken,
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut announce = tokio::time::interval(ANNOUNCE_INTERVAL);
        announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rejected_logged_at: Option<Instant> = None;
        let mut leaving: Option<(Instant, oneshot::Sender<()>)> = None;
        loop {
            let next_timer = self.timers.peek().map_or_else(
                || Instant::now() + Duration::from_secs(3600),
                |Reverse((at, _))| *at,
            );
            let linger_until = leaving
                .as_ref()
                .map_or_else(|| Instant::now() + Duration::from_secs(3600), |(at, _)| *at);
            tokio::select! {
                () = stop.cancelled() => break,
                // The node is gone (its runtime shut down without a stop): so is this thread.
                () = self.events.closed() => break,
                () = sleep_until(linger_until), if leaving.is_some() => {
                    if let Some((_, done)) = leaving.take() {
                        let _ = done.send(());
                    }
                    break;
                }
                received = self.socket.recv_from(&mut buf) => {
                    let Ok((len, from)) = received else { continue };
                    self.stats.packets_in.fetch_add(1, Ordering::Relaxed);
                    match self.key.open(&buf[..len]) {
                        Ok(payload) => {
                            if let Err(err) = self.foca.handle_data(payload, &mut self.runtime) {
                                tracing::debug!(%from, %err, "gossip packet refused by foca");
                            }
                        }
                        Err(err) => {
                            self.stats.packets_rejected.fetch_add(1, Ordering::Relaxed);
                            let now = Instant::now();
                            if rejected_logged_at.is_none_or(|t| now.duration_since(t) > Duration::from_secs(10)) {
                                rejected_logged_at = Some(now);
                                tracing::warn!(%from, %err, "refused a gossip packet: the sender does not hold this cluster's key");
                            }
                        }
                    }
                }
                () = sleep_until(next_timer) => self.fire_due_timers(),
                _ = announce.tick(), if leaving.is_none() => self.announce_to_seeds().await,
                command = commands.recv() => match command {
                    Some(Command::Leave(done)) => {
                        if let Err(err) = self.foca.leave_cluster(&mut self.runtime) {
                            tracing::warn!(%err, "leaving the gossip cluster failed");
                        }
                        leaving = Some((Instant::now() + LEAVE_LINGER, done));
                    }
                    None => break,
                },
            }
            self.drain_runtime().await;
        }
    }

    fn fire_due_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if let Some(timer) = self.timer_payloads.remove(&id)
                && let Err(err) = self.foca.handle_timer(timer, &mut self.runtime)
            {
                tracing::debug!(%err, "foca timer");
            }
        }
    }

    async fn announce_to_seeds(&mut self) {
        if self.seeds.is_empty() {
            return;
        }
        let due = self
            .last_resolve
            .is_none_or(|t| t.elapsed() >= RESOLVE_INTERVAL || self.resolved.is_empty());
        if due {
            self.last_resolve = Some(Instant::now());
            let mut resolved = Vec::new();
            for seed in &self.seeds {
                match tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio::net::lookup_host(seed.as_str()),
                )
                .await
                {
                    Ok(Ok(addrs)) => resolved.extend(addrs),
                    Ok(Err(err)) => tracing::debug!(%seed, %err, "cannot resolve seed"),
                    Err(_) => tracing::debug!(%seed, "resolving seed timed out"),
                }
            }
            resolved.sort_unstable();
            resolved.dedup();
            self.resolved = resolved;
        }
        let own = self.foca.identity().gossip;
        let alive: Vec<std::net::SocketAddr> =
            self.foca.iter_members().map(|m| m.id().gossip).collect();
        for addr in self.resolved.clone() {
            if addr != own && !alive.contains(&addr) {
                let _ = self.foca.announce(NodeId::seed(addr), &mut self.runtime);
            }
        }
    }

    /// Carries out what foca asked for: packets, timers, notifications.
    async fn drain_runtime(&mut self) {
        while let Some((to, data)) = self.runtime.to_send() {
            let packet = self.key.seal(&data);
            if let Err(err) = self.socket.send_to(&packet, to.gossip).await {
                tracing::debug!(to = %to.gossip, %err, "gossip send failed");
            } else {
                self.stats.packets_out.fetch_add(1, Ordering::Relaxed);
            }
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            let id = self.next_timer;
            self.next_timer += 1;
            self.timers.push(Reverse((Instant::now() + after, id)));
            self.timer_payloads.insert(id, timer);
        }
        // Sent once the view is refreshed, so whoever reacts sees the new membership.
        let mut events = Vec::new();
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(id) => {
                    tracing::info!(peer = %id.name, generation = id.generation, "member up");
                    events.push(MemberEvent::Up(id));
                }
                OwnedNotification::MemberDown(id) => {
                    tracing::info!(peer = %id.name, generation = id.generation, "member down");
                    events.push(MemberEvent::Down(id));
                }
                OwnedNotification::Rename(old, new) => {
                    tracing::info!(peer = %new.name, old = old.generation, new = new.generation, "member renamed");
                    events.push(MemberEvent::Down(old));
                    if self.foca.iter_members().any(|m| m.id() == &new) {
                        events.push(MemberEvent::Up(new));
                    }
                }
                OwnedNotification::Rejoin(id) => {
                    tracing::warn!(
                        generation = id.generation,
                        "this node was declared down; rejoined with a new generation"
                    );
                    self.view.write().set_self(id);
                    events.push(MemberEvent::Rejoined);
                }
                OwnedNotification::Active => tracing::info!("joined the cluster"),
                OwnedNotification::Idle => tracing::info!("no live peers; announcing to seeds"),
                OwnedNotification::Defunct => tracing::debug!("left the cluster"),
            }
        }
        // Refreshed every step: states move between alive and suspect without notifications.
        self.view.write().refresh(self.foca.iter_membership_state());
        for event in events {
            let _ = self.events.send(event);
        }
    }
}
