//! Membership by gossip: one task owns the `foca` SWIM state machine and its UDP socket.
//!
//! The task runs on a thread of its own, with its own single-threaded runtime: failure
//! detection must keep its timing when the node is saturated. On the node's runtime, probes
//! and acks waited behind thousands of busy connection tasks, and a node that was merely busy
//! was declared down (then every subscriber resynced). The OS schedules this thread fairly
//! against the runtime's workers instead.
//!
//! Every packet is sealed with the cluster key, a timestamp and a nonce ([`super::envelope`]);
//! packets that fail the tag, fall outside the replay window or repeat a nonce are dropped
//! and counted by reason before foca sees them. Timers foca asks for are kept in a
//! heap and handed back in due order (foca needs them in order). Seeds — `host:port`, DNS
//! names included — are re-resolved periodically and announced to whenever they are not
//! known alive, so an isolated node, or either side of a healed partition, finds its way
//! back without waiting for foca's slow re-contact of down members.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::num::{NonZeroU8, NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec, Timer};
use parking_lot::RwLock;
use rand::Rng as _;
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::envelope::{ENVELOPE_OVERHEAD, Refusal, ReplayWindow, Stamp, wall_clock_ms};
use super::fence::StallFence;
use super::membership::{MembershipView, NodeId};
use super::security::ClusterKey;
use super::suspicion::SuspicionDeadlines;

/// How often seeds that are not known alive are announced to.
const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);
/// How often seed names are resolved again (a Kubernetes headless service changes).
const RESOLVE_INTERVAL: Duration = Duration::from_secs(10);
/// After `leave_cluster`, how long to keep answering so the news spreads.
const LEAVE_LINGER: Duration = Duration::from_millis(300);
/// Largest UDP payload foca may produce, leaving room for the envelope under a 1500 MTU.
const MAX_PACKET: usize = 1400;
/// How long seeds must name nothing but this node before it counts as alone by design.
pub const ALONE_PATIENCE: Duration = Duration::from_secs(10);
/// At most one warning about refused packets per this interval (they may come in floods).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How often the loop turns when nothing else happens, so the stall fence's watchdog can
/// tell a quiet gossip thread from a stuck one.
const HEARTBEAT: Duration = Duration::from_millis(250);

/// A membership change, for the part of the node that keeps connections to peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    Up(NodeId),
    Down(NodeId),
    /// This node was declared down by the others and rejoined under a new generation.
    Rejoined,
    /// The seeds have named only this node for [`ALONE_PATIENCE`]: it is alone by design.
    AloneByDesign,
}

/// Counters of the gossip layer.
#[derive(Debug, Default)]
pub struct GossipStats {
    pub packets_in: AtomicU64,
    pub packets_out: AtomicU64,
    /// Packets dropped before foca saw them, whatever the reason (the sum of `refused`).
    pub packets_rejected: AtomicU64,
    /// Packets dropped, by reason.
    pub refused: RefusedPackets,
}

/// Refused gossip packets by reason (see [`Refusal::label`]).
#[derive(Debug, Default)]
pub struct RefusedPackets {
    /// Failed the tag: a sender with another cluster key, or a forgery.
    pub bad_key: AtomicU64,
    /// Too short, or an unknown envelope version.
    pub malformed: AtomicU64,
    /// Stamped before the replay window: a replay, or a sender whose clock is behind.
    pub too_old: AtomicU64,
    /// Stamped after the replay window: a sender whose clock is ahead.
    pub from_future: AtomicU64,
    /// A nonce already received within the window: a replay.
    pub replayed: AtomicU64,
    /// The replay memory was full (see [`ReplayWindow`]).
    pub memory_full: AtomicU64,
}

impl RefusedPackets {
    fn count(&self, refusal: Refusal) {
        let counter = match refusal {
            Refusal::Truncated | Refusal::Version(_) => &self.malformed,
            Refusal::BadKey => &self.bad_key,
            Refusal::TooOld { .. } => &self.too_old,
            Refusal::FromFuture { .. } => &self.from_future,
            Refusal::Replayed => &self.replayed,
            Refusal::MemoryFull => &self.memory_full,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `(reason label, count)` for every reason, in a fixed order.
    pub fn by_reason(&self) -> [(&'static str, u64); 6] {
        [
            ("bad_key", &self.bad_key),
            ("malformed", &self.malformed),
            ("too_old", &self.too_old),
            ("from_future", &self.from_future),
            ("replayed", &self.replayed),
            ("memory_full", &self.memory_full),
        ]
        .map(|(label, n)| (label, n.load(Ordering::Relaxed)))
    }

    /// The refusals so far as an operator reads them (`/readyz`, errors), or None if none:
    /// "12 gossip packets refused: bad key (…)", or with several reasons
    /// "15 gossip packets refused: 12 bad key (…), 3 too old (…)".
    pub fn describe(&self) -> Option<String> {
        let refused: Vec<(&str, u64)> = self
            .by_reason()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect();
        let total: u64 = refused.iter().map(|(_, n)| n).sum();
        let noun = if total == 1 { "packet" } else { "packets" };
        match refused.as_slice() {
            [] => None,
            [(label, _)] => Some(format!(
                "{total} gossip {noun} refused: {}",
                in_words(label)
            )),
            several => Some(format!(
                "{total} gossip {noun} refused: {}",
                several
                    .iter()
                    .map(|(label, n)| format!("{n} {}", in_words(label)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

/// A refusal reason as an operator reads it.
fn in_words(label: &str) -> &'static str {
    match label {
        "bad_key" => "bad key (the sender holds another cluster key)",
        "too_old" => "too old (replays, or a sender whose clock is behind)",
        "from_future" => "from the future (a sender whose clock is ahead)",
        "replayed" => "replayed",
        "memory_full" => "refused by a full replay memory",
        _ => "malformed",
    }
}

/// What this node's seeds say about whether it is meant to have company.
#[derive(Debug)]
pub struct Seeding {
    /// The seeds as configured.
    pub seeds: Vec<String>,
    alone_by_design: AtomicBool,
}

impl Seeding {
    fn new(seeds: Vec<String>) -> Self {
        let alone = seeds.is_empty();
        Self {
            seeds,
            alone_by_design: AtomicBool::new(alone),
        }
    }

    /// True when the node has no seeds, or its seeds have named nothing but itself for
    /// [`ALONE_PATIENCE`] (the one replica of a StatefulSet, a seed list naming itself):
    /// then it need not join anyone to serve.
    pub fn alone_by_design(&self) -> bool {
        self.alone_by_design.load(Ordering::Acquire)
    }
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
    pub seeding: Arc<Seeding>,
    /// Fences this node after a stall (see [`StallFence`]); this thread reports its own
    /// progress and the fresh gossip it hears to it.
    pub fence: Arc<StallFence>,
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
    // foca's LAN profile sends each membership update 3 times for a cluster this size
    // (4·log10(n+1)), which periodic gossip (every 200 ms) spends within a fraction of a
    // second. An update raised by a node cut off for a moment — "I suspect n1" — is then
    // spent on packets that are dropped, the suspect never hears of it to refute it, and a
    // 1.5 s cut ends with a member declared down (seen in `partition-short` chaos runs).
    // 40 sends keep an update alive for about as long as failure detection takes.
    config.max_transmissions = NonZeroU8::new(40).unwrap_or(NonZeroU8::MIN);
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
    /// ends when `stop` is cancelled or this handle is dropped. Packets stamped more than
    /// `replay_window` away from this node's clock are refused.
    pub async fn spawn(
        socket: std::net::UdpSocket,
        identity: NodeId,
        key: ClusterKey,
        seeds: Vec<String>,
        replay_window: Duration,
        events: mpsc::UnboundedSender<MemberEvent>,
        stop: CancellationToken,
    ) -> std::io::Result<Self> {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let view = Arc::new(RwLock::new(MembershipView::default()));
        view.write().set_self(identity.clone());
        let stats = Arc::new(GossipStats::default());
        let seeding = Arc::new(Seeding::new(seeds));
        // The hold after a stall: as long as the others take to declare a member down, so
        // that what they decided meanwhile reaches this node before it sequences again.
        let config = foca_config();
        let fence = StallFence::new(config.probe_period + config.suspect_to_down_after);
        let task_fence = fence.clone();
        let task_view = view.clone();
        let task_stats = stats.clone();
        let task_seeding = seeding.clone();
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
                replay_window: ReplayWindow::new(replay_window),
                nonces: rand::make_rng::<StdRng>(),
                seeding: task_seeding,
                seeds_only_self_since: None,
                resolved: Vec::new(),
                last_resolve: None,
                timers: BinaryHeap::new(),
                timer_payloads: HashMap::new(),
                next_timer: 0,
                events,
                view: task_view,
                stats: task_stats,
                fence: task_fence,
                suspicions: SuspicionDeadlines::new(suspicion_deadline()),
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
            seeding,
            fence,
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
    replay_window: ReplayWindow,
    /// Draws the envelope nonces.
    nonces: StdRng,
    seeding: Arc<Seeding>,
    /// Since when every seed has resolved to this node's own address.
    seeds_only_self_since: Option<Instant>,
    resolved: Vec<std::net::SocketAddr>,
    last_resolve: Option<Instant>,
    /// Due time and insertion order: equal due times fire in the order they were asked for.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_payloads: HashMap<u64, Timer<NodeId>>,
    next_timer: u64,
    events: mpsc::UnboundedSender<MemberEvent>,
    view: Arc<RwLock<MembershipView>>,
    stats: Arc<GossipStats>,
    fence: Arc<StallFence>,
    suspicions: SuspicionDeadlines<NodeId>,
}

/// How long this node lets a suspicion stand before declaring the member down itself (see
/// [`SuspicionDeadlines`]): foca's own `suspect_to_down_after`, plus a probe period so that
/// the node that raised it, whose timer started first, normally decides.
fn suspicion_deadline() -> Duration {
    let config = foca_config();
    config.suspect_to_down_after + config.probe_period
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
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rejected_logged_at: Option<Instant> = None;
        let mut leaving: Option<(Instant, oneshot::Sender<()>)> = None;
        loop {
            self.fence.gossip_alive();
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
                    match self.open_fresh(&buf[..len]) {
                        Ok((payload, sent_at_ms)) => {
                            self.fence.heard_from(from, sent_at_ms);
                            if let Err(err) = self.foca.handle_data(payload, &mut self.runtime) {
                                tracing::debug!(%from, %err, "gossip packet refused by foca");
                            }
                        }
                        Err(refusal) => {
                            self.stats.packets_rejected.fetch_add(1, Ordering::Relaxed);
                            self.stats.refused.count(refusal);
                            let now = Instant::now();
                            if rejected_logged_at.is_none_or(|t| now.duration_since(t) > REFUSAL_LOG_INTERVAL) {
                                rejected_logged_at = Some(now);
                                tracing::warn!(
                                    %from,
                                    reason = refusal.label(),
                                    refused_so_far = self.stats.packets_rejected.load(Ordering::Relaxed),
                                    "refused a gossip packet: {refusal}"
                                );
                            }
                        }
                    }
                }
                () = sleep_until(next_timer) => self.fire_due_timers(),
                _ = heartbeat.tick() => self.settle_stale_suspicions(),
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
            self.lift_fence_if_heard();
        }
    }

    /// Declares down every member suspected here past the deadline at the same incarnation.
    fn settle_stale_suspicions(&mut self) {
        let suspects = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == foca::State::Suspect)
            .map(|m| (m.id().clone(), m.incarnation()));
        let overdue = self.suspicions.overdue(suspects, Instant::now().into_std());
        if overdue.is_empty() {
            return;
        }
        for (id, incarnation) in &overdue {
            tracing::info!(
                peer = %id.name,
                generation = id.generation,
                "suspected for longer than {:?} without refuting: declared down here",
                suspicion_deadline()
            );
            let down = foca::Member::new(id.clone(), *incarnation, foca::State::Down);
            if let Err(err) = self
                .foca
                .apply_many(std::iter::once(down), true, &mut self.runtime)
            {
                tracing::debug!(%err, "declaring a stale suspect down failed");
            }
        }
    }

    /// Lifts the stall fence once its hold is over and fresh gossip came from a majority
    /// (after `drain_runtime`, so the view counts what foca just learned).
    fn lift_fence_if_heard(&self) {
        if !self.fence.is_fenced() {
            return;
        }
        let view = self.view.read();
        let size = view.cluster_size();
        self.fence
            .try_lift(size, |addr| view.is_member_address(addr));
    }

    /// Authenticates a packet and checks it is neither stale nor a replay; returns the
    /// payload for foca.
    fn open_fresh<'a>(&mut self, packet: &'a [u8]) -> Result<(&'a [u8], u64), Refusal> {
        let opened = self.key.open(packet)?;
        self.replay_window.check(opened.stamp, wall_clock_ms())?;
        Ok((opened.payload, opened.stamp.sent_at_ms))
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
        if self.seeding.seeds.is_empty() {
            return;
        }
        let due = self
            .last_resolve
            .is_none_or(|t| t.elapsed() >= RESOLVE_INTERVAL || self.resolved.is_empty());
        if due {
            let resolved_at = Instant::now();
            self.last_resolve = Some(resolved_at);
            let mut resolved = Vec::new();
            for seed in &self.seeding.seeds {
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
            self.watch_for_seeds_naming_only_self(resolved_at);
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

    /// A node whose seeds resolve to nothing but its own address, for long enough, is alone
    /// by design: it serves without waiting to join anyone.
    fn watch_for_seeds_naming_only_self(&mut self, resolved_at: Instant) {
        if self.seeding.alone_by_design() {
            return;
        }
        let own = self.foca.identity().gossip;
        let only_self = !self.resolved.is_empty() && self.resolved.iter().all(|a| *a == own);
        if !only_self {
            self.seeds_only_self_since = None;
            return;
        }
        let since = *self.seeds_only_self_since.get_or_insert(resolved_at);
        if resolved_at.duration_since(since) >= ALONE_PATIENCE {
            tracing::info!("the seeds name only this node: serving alone");
            self.seeding.alone_by_design.store(true, Ordering::Release);
            let _ = self.events.send(MemberEvent::AloneByDesign);
        }
    }

    /// Carries out what foca asked for: packets, timers, notifications.
    async fn drain_runtime(&mut self) {
        while let Some((to, data)) = self.runtime.to_send() {
            let stamp = Stamp {
                sent_at_ms: wall_clock_ms(),
                nonce: self.nonces.next_u64(),
            };
            let packet = self.key.seal(&data, stamp);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_by_reason_and_described_for_operators() {
        let refused = RefusedPackets::default();
        assert_eq!(refused.describe(), None);
        refused.count(Refusal::BadKey);
        assert_eq!(
            refused.describe().as_deref(),
            Some("1 gossip packet refused: bad key (the sender holds another cluster key)")
        );
        for _ in 0..11 {
            refused.count(Refusal::BadKey);
        }
        refused.count(Refusal::TooOld { age_ms: 40_000 });
        refused.count(Refusal::Version(1));
        let described = refused.describe().unwrap();
        assert!(
            described.starts_with("14 gossip packets refused: 12 bad key"),
            "{described}"
        );
        assert!(described.contains("1 too old"), "{described}");
        assert!(described.contains("1 malformed"), "{described}");
        let counts: Vec<(&str, u64)> = refused
            .by_reason()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect();
        assert_eq!(counts, [("bad_key", 12), ("malformed", 1), ("too_old", 1)]);
    }
}
