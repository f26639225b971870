//! Fencing a node that stalled.
//!
//! A node whose process was stopped (SIGSTOP, a VM pause) or whose gossip thread made no
//! progress for long enough may have been declared down by the others, who then gave its
//! topics to other owners. When it wakes it still believes its old membership view and
//! would read the publishes waiting in its sockets, sequence them at positions the new owners
//! have meanwhile given to other events, and place queue-group events on its own members a
//! second time. So a stall longer than [`STALL_THRESHOLD`] *fences* the node: it sequences
//! nothing and places no queue-group event until
//!
//! - the others had time to tell it what they decided (a hold as long as failure detection:
//!   if they declared it down, gossip says so by then and the node rejoins and claims its
//!   topics afresh), and
//! - it has heard fresh gossip (stamped after the stall ended, so not packets that waited in
//!   its socket) from enough peers to be a majority with itself.
//!
//! The stall is seen from two sides without a race: a watchdog thread notices the gap
//! between its own ticks once it runs again, and until it has, the publish path sees that
//! the watchdog's last tick is too old ([`StallFence::is_fenced`]), so a worker thread that
//! wakes first cannot slip a publish through.
//!
//! The state machine takes times as arguments (milliseconds on a monotonic clock since the
//! node started, and wall-clock ms for gossip stamps); the thread and the clocks are at the
//! edge ([`StallFence::spawn_watchdog`]).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::envelope::wall_clock_ms;

/// A pause longer than this fences the node: about half of what the others need to declare
/// it down (a missed probe, then `suspect_to_down_after`; see `gossip::foca_config`), so
/// every stall they could have acted on is caught, and a busy machine's scheduling hiccups
/// (tens of milliseconds) are not.
pub const STALL_THRESHOLD: Duration = Duration::from_secs(2);

/// How often the watchdog thread ticks.
const WATCHDOG_TICK: Duration = Duration::from_millis(100);

/// Most distinct gossip senders remembered while fenced (a cluster larger than this unfences
/// on the hold alone once this many have been heard, which is then a majority anyway for
/// any cluster the mesh supports).
const MAX_HEARD: usize = 256;

/// Why and since when the node is fenced.
#[derive(Debug, Clone)]
struct Fenced {
    /// Monotonic ms (since the node started) when the stall was noticed.
    noticed_ms: u64,
    /// Wall-clock ms when the stall was noticed: gossip stamped before this waited in the
    /// socket during the stall and proves nothing about now.
    noticed_wall_ms: u64,
    /// Gossip addresses of the peers heard from since, with fresh stamps.
    heard: BTreeSet<SocketAddr>,
    stalled_for: Duration,
    /// The node learnt it had been declared down and gave up every topic (it claims each
    /// afresh before sequencing it): what the hold waits for has happened.
    rejoined: bool,
}

/// The node's stall fence; shared by the watchdog thread, the gossip thread and the publish
/// path.
#[derive(Debug)]
pub struct StallFence {
    origin: Instant,
    /// When the watchdog thread last ran (ms since `origin`).
    watchdog_ms: AtomicU64,
    /// When the gossip thread's loop last ran (ms since `origin`).
    gossip_ms: AtomicU64,
    /// 1 while fenced (the fast path reads only this and `watchdog_ms`).
    fenced_flag: AtomicU64,
    fenced: Mutex<Option<Fenced>>,
    /// How long the hold lasts after a stall is noticed.
    hold: Duration,
    /// Stalls that fenced this node, for `murmur_stall_fences_total`.
    pub stalls: AtomicU64,
    /// When gossip last came from each sender (ms since `origin`): whether this node is
    /// still in touch with a majority, not just believes so (see
    /// [`Self::heard_majority_within`]).
    last_heard: Mutex<std::collections::HashMap<SocketAddr, u64>>,
}

impl StallFence {
    /// A fence whose hold after a stall is `hold` (failure detection's length).
    pub fn new(hold: Duration) -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            watchdog_ms: AtomicU64::new(0),
            gossip_ms: AtomicU64::new(0),
            fenced_flag: AtomicU64::new(0),
            fenced: Mutex::new(None),
            hold,
            stalls: AtomicU64::new(0),
            last_heard: Mutex::new(std::collections::HashMap::new()),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// True while this node must sequence nothing and place no queue-group event: fenced
    /// after a stall, or in one right now (the watchdog has not run for too long: this
    /// thread may be the first to wake from a SIGSTOP).
    pub fn is_fenced(&self) -> bool {
        self.is_fenced_at(self.now_ms())
    }

    fn is_fenced_at(&self, now_ms: u64) -> bool {
        if self.fenced_flag.load(Ordering::Acquire) != 0 {
            return true;
        }
        let last_tick = self.watchdog_ms.load(Ordering::Acquire);
        now_ms.saturating_sub(last_tick) > threshold_ms()
    }

    /// What the node says when it refuses a publish while fenced.
    pub fn reason(&self) -> String {
        match &*self.fenced.lock() {
            Some(f) => format!(
                "this node stalled for {:.1} s (paused or starved) and may have been declared \
                 down meanwhile: it sequences nothing until it has heard from the cluster \
                 again; publish again, or through another node",
                f.stalled_for.as_secs_f64()
            ),
            None => {
                "this node is stalled (paused or starved); publish through another node".to_owned()
            }
        }
    }

    /// A watchdog tick at `now_ms`: fences the node if this thread, or the gossip thread,
    /// made no progress for longer than [`STALL_THRESHOLD`].
    fn watchdog_tick(&self, now_ms: u64, wall_ms: u64) {
        let own_gap = now_ms.saturating_sub(self.watchdog_ms.load(Ordering::Acquire));
        let gossip_gap = now_ms.saturating_sub(self.gossip_ms.load(Ordering::Acquire));
        let gap = own_gap.max(gossip_gap);
        if gap > threshold_ms() {
            self.fence(now_ms, wall_ms, Duration::from_millis(gap));
        }
        // Stored after fencing, so the publish path never sees a fresh tick without the fence.
        self.watchdog_ms.store(now_ms, Ordering::Release);
    }

    fn fence(&self, now_ms: u64, wall_ms: u64, stalled_for: Duration) {
        let mut fenced = self.fenced.lock();
        if fenced.is_none() {
            self.stalls.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                stalled_ms = stalled_for.as_millis() as u64,
                "this node stalled past the threshold ({STALL_THRESHOLD:?}): fenced (no \
                 sequencing, no queue-group placement) until it hears from a majority"
            );
        }
        *fenced = Some(Fenced {
            noticed_ms: now_ms,
            noticed_wall_ms: wall_ms,
            heard: BTreeSet::new(),
            stalled_for,
            rejoined: false,
        });
        self.fenced_flag.store(1, Ordering::Release);
    }

    /// The gossip thread's loop ran (called on every turn of it).
    pub fn gossip_alive(&self) {
        self.gossip_ms.store(self.now_ms(), Ordering::Release);
    }

    /// The gossip thread authenticated a packet from `from` stamped `sent_at_wall_ms`.
    pub fn heard_from(&self, from: SocketAddr, sent_at_wall_ms: u64) {
        {
            let now_ms = self.now_ms();
            let mut last_heard = self.last_heard.lock();
            if last_heard.len() >= MAX_HEARD && !last_heard.contains_key(&from) {
                // Senders gone for long are of no use to the window asked about.
                last_heard.retain(|_, at| now_ms.saturating_sub(*at) < 60_000);
            }
            if last_heard.len() < MAX_HEARD || last_heard.contains_key(&from) {
                last_heard.insert(from, now_ms);
            }
        }
        if self.fenced_flag.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut fenced = self.fenced.lock();
        if let Some(f) = fenced.as_mut()
            && sent_at_wall_ms >= f.noticed_wall_ms
            && f.heard.len() < MAX_HEARD
        {
            f.heard.insert(from);
        }
    }

    /// The node learnt that the others had declared it down and gave up every topic it
    /// held: it claims each afresh (asking the others) before sequencing it, so the hold
    /// has nothing more to wait for; fresh gossip from a majority is still needed.
    pub fn rejoined(&self) {
        if let Some(f) = self.fenced.lock().as_mut() {
            f.rejoined = true;
        }
    }

    /// Lifts the fence once the hold is over and fresh gossip came from enough peers to make
    /// a majority of `cluster_size` (this node included) with this node; `is_member` says
    /// whether a gossip address is a member's. Returns true when it lifted the fence.
    pub fn try_lift(&self, cluster_size: usize, is_member: impl Fn(&SocketAddr) -> bool) -> bool {
        self.try_lift_at(self.now_ms(), cluster_size, is_member)
    }

    fn try_lift_at(
        &self,
        now_ms: u64,
        cluster_size: usize,
        is_member: impl Fn(&SocketAddr) -> bool,
    ) -> bool {
        if self.fenced_flag.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut fenced = self.fenced.lock();
        let Some(f) = fenced.as_ref() else {
            return false;
        };
        let hold_ms = u64::try_from(self.hold.as_millis()).unwrap_or(u64::MAX);
        if !f.rejoined && now_ms.saturating_sub(f.noticed_ms) < hold_ms {
            return false;
        }
        let heard = f.heard.iter().filter(|a| is_member(a)).count();
        let majority = (heard + 1) * 2 > cluster_size || f.heard.len() >= MAX_HEARD;
        if !majority {
            return false;
        }
        tracing::info!(
            peers_heard = heard,
            cluster_size,
            "heard from a majority after the stall: the fence is lifted"
        );
        *fenced = None;
        self.fenced_flag.store(0, Ordering::Release);
        true
    }

    /// Whether gossip came within `window` from enough members (`is_member`) to make a
    /// majority of `cluster_size` with this node. A node cut off by a partition still
    /// counts the others as alive (or suspect) until failure detection ends; this tells
    /// sooner that it no longer hears them.
    pub fn heard_majority_within(
        &self,
        window: Duration,
        cluster_size: usize,
        is_member: impl Fn(&SocketAddr) -> bool,
    ) -> bool {
        self.heard_majority_within_at(self.now_ms(), window, cluster_size, is_member)
    }

    fn heard_majority_within_at(
        &self,
        now_ms: u64,
        window: Duration,
        cluster_size: usize,
        is_member: impl Fn(&SocketAddr) -> bool,
    ) -> bool {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let heard = self
            .last_heard
            .lock()
            .iter()
            .filter(|(addr, at)| now_ms.saturating_sub(**at) <= window_ms && is_member(addr))
            .count();
        (heard + 1) * 2 > cluster_size
    }

    /// Starts the watchdog thread; it ends when `stop` is cancelled.
    pub fn spawn_watchdog(self: &Arc<Self>, stop: CancellationToken) -> std::io::Result<()> {
        let fence = self.clone();
        fence.watchdog_ms.store(fence.now_ms(), Ordering::Release);
        fence.gossip_ms.store(fence.now_ms(), Ordering::Release);
        std::thread::Builder::new()
            .name("murmur-watchdog".into())
            .spawn(move || {
                while !stop.is_cancelled() {
                    std::thread::sleep(WATCHDOG_TICK);
                    fence.watchdog_tick(fence.now_ms(), wall_clock_ms());
                }
            })?;
        Ok(())
    }
}

fn threshold_ms() -> u64 {
    u64::try_from(STALL_THRESHOLD.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Both threads run every 100 ms from `from` to `to` (ms); wall clock = 1,000,000 + t.
    fn tick(fence: &StallFence, from: u64, to: u64) {
        for t in (from..=to).step_by(100) {
            fence.gossip_ms.store(t, Ordering::Release);
            fence.watchdog_tick(t, 1_000_000 + t);
        }
    }

    fn fence_with_ticks() -> Arc<StallFence> {
        let fence = StallFence::new(Duration::from_secs(4));
        tick(&fence, 0, 1_000);
        fence
    }

    #[test]
    fn regular_ticks_never_fence() {
        let fence = fence_with_ticks();
        assert!(!fence.is_fenced_at(1_050));
        assert_eq!(fence.stalls.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_thread_waking_before_the_watchdog_sees_the_stall() {
        let fence = fence_with_ticks();
        // Stopped at t = 1 s, woken at t = 9 s: no watchdog tick since.
        assert!(fence.is_fenced_at(9_000));
        assert!(
            !fence.is_fenced_at(2_900),
            "a gap under the threshold is no stall"
        );
    }

    #[test]
    fn a_stall_fences_until_the_hold_is_over_and_a_majority_was_heard_fresh() {
        let fence = fence_with_ticks();
        fence.gossip_ms.store(9_000, Ordering::Release);
        fence.watchdog_tick(9_000, 1_009_000);
        assert!(fence.is_fenced_at(9_000));
        assert_eq!(fence.stalls.load(Ordering::Relaxed), 1);
        let members = |a: &SocketAddr| a.port() < 100;
        // A packet that waited in the socket during the stall does not count.
        fence.heard_from(addr(1), 1_005_000);
        // Fresh gossip from one peer of a 3-node cluster is a majority with this node, but
        // only once the hold is over.
        fence.heard_from(addr(2), 1_009_500);
        tick(&fence, 9_100, 12_000);
        assert!(!fence.try_lift_at(12_000, 3, members), "still in the hold");
        assert!(fence.is_fenced_at(12_000));
        tick(&fence, 12_100, 13_000);
        assert!(fence.try_lift_at(13_000, 3, members));
        assert!(!fence.is_fenced_at(13_000));
    }

    #[test]
    fn a_node_that_rejoined_after_being_declared_down_skips_the_hold() {
        let fence = fence_with_ticks();
        fence.watchdog_tick(9_000, 1_009_000);
        fence.heard_from(addr(2), 1_009_200);
        let members = |a: &SocketAddr| a.port() < 100;
        assert!(!fence.try_lift_at(9_500, 3, members));
        fence.rejoined();
        assert!(fence.try_lift_at(9_500, 3, members));
    }

    #[test]
    fn a_fenced_node_of_five_needs_two_fresh_peers_and_strangers_do_not_count() {
        let fence = fence_with_ticks();
        fence.watchdog_tick(5_000, 1_005_000);
        let members = |a: &SocketAddr| a.port() < 100;
        fence.heard_from(addr(1), 1_006_000);
        fence.heard_from(addr(1), 1_006_100);
        fence.heard_from(addr(500), 1_006_200);
        assert!(!fence.try_lift_at(10_000, 5, members));
        fence.heard_from(addr(2), 1_006_300);
        assert!(fence.try_lift_at(10_000, 5, members));
    }

    #[test]
    fn a_majority_heard_lately_is_counted_within_its_window() {
        let fence = StallFence::new(Duration::from_secs(3));
        let members = [addr(1), addr(2), addr(3), addr(4)];
        let is_member = |a: &SocketAddr| members.contains(a);
        fence.heard_from(addr(1), 0);
        fence.heard_from(addr(9), 0);
        let window = Duration::from_secs(3);
        let now = fence.now_ms();
        assert!(
            !fence.heard_majority_within_at(now, window, 5, is_member),
            "one member and a stranger are not two of four"
        );
        fence.heard_from(addr(2), 0);
        assert!(fence.heard_majority_within_at(now, window, 5, is_member));
        assert!(
            !fence.heard_majority_within_at(now + 3_001, window, 5, is_member),
            "heard too long ago"
        );
        assert!(fence.heard_majority_within_at(now, window, 1, is_member));
    }

    #[test]
    fn a_stuck_gossip_thread_fences_too() {
        let fence = fence_with_ticks();
        // The watchdog keeps ticking; the gossip loop last ran at t = 1 s.
        for t in (1_100..=3_100).step_by(100) {
            fence.watchdog_tick(t, 1_000_000 + t);
        }
        assert!(fence.is_fenced_at(3_100));
        assert!(
            fence.reason().contains("stalled for 2.1 s"),
            "{}",
            fence.reason()
        );
    }
}
