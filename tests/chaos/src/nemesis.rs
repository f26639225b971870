//! The faults of a chaos run (nemeses), the node processes they act on, and the timeline
//! that records them.
//!
//! Every nemesis is driven by a seeded RNG (victims and timing jitter), logs the start and
//! end of its fault window on the [`Timeline`], and checks that it took effect — iptables
//! counters that moved, a victim the others saw go down or leave, a restarted node with a new
//! pid — so a fault that silently does nothing fails the run instead of passing it.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::ValueEnum;
use murmur_chaos::lab::Lab;
use murmur_chaos::workload;
use rand::RngExt;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

mod compound;
mod kill_all;

/// Ports every node listens on, on its own host.
pub const WS_PORT: u16 = 7400;
pub const GOSSIP_PORT: u16 = 7401;
pub const QUIC_PORT: u16 = 7402;
/// The admin port (`/v1/cluster`, `/metrics`), on the lab host's address so the client host
/// can ask every node for its view.
pub const ADMIN_PORT: u16 = 7403;
/// The lab cluster's key (made with `murmur keygen`; the lab's network is private).
const CHAOS_CLUSTER_KEY: &str = "9GuVAF3Xkr05mDoK2dm9jHgenwTujU3mpdP1X7Eg_n8";
/// The userspace queue the delay nemesis uses.
const DELAY_QUEUE: u16 = 7;
/// Probability of each packet lost by the loss nemeses.
const LOSS: f64 = 0.3;
/// How long the others may take to see a victim down: failure detection is a probe period
/// (1 s) plus the suspicion timeout (3 s) plus gossip, about 5 s; this leaves room for a
/// loaded machine.
const DETECTION_LIMIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Nemesis {
    /// No fault: the control run.
    None,
    /// Cut one node off from the others for 1.25–1.75 s, shorter than failure detection: it
    /// must not be marked down.
    PartitionShort,
    /// Cut one node off from the others (clients still reach it) past failure detection.
    Partition,
    /// Split the nodes into a majority and a minority of two (needs 5 nodes).
    Split,
    /// Cut the link between two nodes only; the others still see both.
    LinkCut,
    /// Drop everything one node sends to the others; what it receives still arrives.
    OneWay,
    /// Cut one node off and heal it, six times, 1–2 s each.
    Flap,
    /// Lose 30% of the gossip (UDP 7401) packets arriving at every node.
    GossipLoss,
    /// Lose 30% of the QUIC (UDP 7402) packets arriving at every node.
    QuicLoss,
    /// Delay every packet one node sends to the others by 100–200 ms (NFQUEUE).
    Delay,
    /// kill -9 one node, then start it again.
    Kill,
    /// SIGSTOP one node past failure detection, then SIGCONT.
    Pause,
    /// SIGTERM one node (graceful leave), then start a fresh node on a new host.
    LeaveJoin,
    /// SIGTERM, restart and wait for /readyz, one node after the other.
    RollingRestart,
    /// Cut one node off, kill -9 it while it is cut off, heal, restart it.
    KillInPartition,
    /// Lose 30% of the QUIC packets into every node and SIGSTOP one node meanwhile, past
    /// failure detection.
    PauseLoss,
    /// Cut one node off for 2 minutes (clients still reach it).
    LongPartition,
    /// kill -9 one node, then start it again, with the publishers at 10× the rate.
    HeavyKill,
    /// A rolling restart of every node while one of them is cut off past failure detection
    /// (healed after the first restart, then restarted last).
    PartitionRestart,
    /// kill -9 every node at once, then start them all again on their data dirs (the nodes
    /// run with `--storage disk`): every acknowledged event must be replayed, in its epoch.
    KillAll,
}

impl Nemesis {
    pub fn name(self) -> String {
        self.to_possible_value()
            .map_or_else(|| format!("{self:?}"), |v| v.get_name().to_owned())
    }

    /// Nodes the full matrix runs this nemesis on, and its seconds of load.
    pub fn matrix_shape(self) -> (usize, u64) {
        match self {
            Self::None | Self::PartitionShort => (3, 20),
            Self::Split => (5, 30),
            Self::Flap => (3, 40),
            Self::RollingRestart => (3, 45),
            Self::PartitionRestart => (3, 60),
            Self::LongPartition => (3, 200),
            _ => (3, 30),
        }
    }

    /// Events per second each publisher of the workload sends (one in flight at a time).
    pub fn publish_rate(self) -> u64 {
        match self {
            Self::HeavyKill => 500,
            _ => 50,
        }
    }

    /// Whether the nemesis makes sense on a cluster of `nodes`: a split needs a minority of
    /// two and a majority, everything else a cluster that survives one node's loss.
    pub fn runs_on(self, nodes: usize) -> bool {
        match self {
            Self::Split => nodes >= 5,
            _ => nodes >= 3,
        }
    }

    /// Whether the nodes keep their history on disk (`--storage disk --fsync interval`, each
    /// in its own data dir that outlives a restart) instead of the default, memory. Only
    /// `kill-all` needs it; the other nemeses check the default.
    pub fn on_disk(self) -> bool {
        self == Self::KillAll
    }

    /// Spare hosts the lab needs beyond the nodes it starts.
    pub fn spare_hosts(self) -> usize {
        usize::from(self == Self::LeaveJoin)
    }
}

pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Turns SIGINT and SIGTERM into a flag the harness checks while it waits, so an interrupted
/// run unwinds and its lab, nodes and clients are cleaned up by their `Drop`s.
pub fn watch_signals() {
    std::thread::spawn(|| {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            let Ok(mut terminate) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            INTERRUPTED.store(true, Ordering::SeqCst);
            eprintln!("interrupted: cleaning up the lab");
        });
    });
}

pub fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `duration`, returning early with an error when the run is interrupted.
pub fn pause(duration: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + duration;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        std::thread::sleep((until - now).min(Duration::from_millis(100)));
    }
}

/// Polls `condition` every 200 ms until it holds; how long that took, or an error after
/// `limit`.
pub fn wait_for(
    what: &str,
    limit: Duration,
    mut condition: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while !condition() {
        if started.elapsed() > limit {
            bail!("timed out after {limit:.1?} waiting until {what}");
        }
        pause(Duration::from_millis(200))?;
    }
    Ok(started.elapsed())
}

/// What happened when, for people (`report.md`) and for programs (`timeline.jsonl`: one
/// `{"t": µs since the workload's t0, "phase": "fault"|"heal"|"note", "what": …}` a line).
pub struct Timeline {
    t0: Option<u64>,
    started: Instant,
    file: std::fs::File,
    pub human: String,
}

impl Timeline {
    pub fn create(out: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            t0: None,
            started: Instant::now(),
            file: std::fs::File::create(out.join("timeline.jsonl"))?,
            human: String::new(),
        })
    }

    /// From now on, times are µs since the workload's `t0` (µs since the Unix epoch).
    pub fn start_workload(&mut self, t0: u64) {
        self.t0 = Some(t0);
    }

    pub fn fault(&mut self, what: &str) {
        self.log("fault", what);
    }

    pub fn heal(&mut self, what: &str) {
        self.log("heal", what);
    }

    pub fn note(&mut self, what: &str) {
        self.log("note", what);
    }

    fn log(&mut self, phase: &str, what: &str) {
        // Before the workload starts there is no t0: such lines (cluster start) are for people
        // only, timed from the harness's start.
        let line = match self.t0 {
            Some(t0) => {
                let t = workload::now_us(t0);
                let json = serde_json::json!({"t": t, "phase": phase, "what": what});
                let _ = writeln!(self.file, "{json}");
                let _ = self.file.flush();
                format!("{:>8.2}s {phase:<5} {what}\n", t as f64 / 1e6)
            }
            None => format!(
                "  (setup +{:.1}s) {phase:<5} {what}\n",
                self.started.elapsed().as_secs_f64()
            ),
        };
        print!("{line}");
        self.human.push_str(&line);
    }
}

/// A member as one node sees it.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub state: String,
    pub generation: u64,
}

/// The latest generation of `name` in a view.
fn latest<'a>(view: &'a [Member], name: &str) -> Option<&'a Member> {
    view.iter()
        .filter(|m| m.name == name)
        .max_by_key(|m| m.generation)
}

fn describe(view: &[Member]) -> String {
    view.iter()
        .map(|m| format!("{} {}", m.name, m.state))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A node process; killed if still running when dropped (a failed or interrupted run).
struct Node {
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The node processes on the lab's hosts: host `i` runs node `n{i+1}` when it runs one.
pub struct Cluster<'a> {
    pub lab: &'a Lab,
    murmur: PathBuf,
    harness: PathBuf,
    out: PathBuf,
    nodes: Vec<Option<Node>>,
    /// With disk storage: the directory of the nodes' data dirs (`<out>/data/n<i>`), kept
    /// across restarts and removed when the cluster is dropped.
    data: Option<PathBuf>,
}

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        // The nodes first (killed and reaped), then what they wrote.
        self.nodes.clear();
        if let Some(data) = &self.data
            && let Err(error) = std::fs::remove_dir_all(data)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("could not remove {}: {error}", data.display());
        }
    }
}

impl<'a> Cluster<'a> {
    /// A cluster of no node yet; with `on_disk`, its nodes run with `--storage disk`, each on
    /// its own data dir under `<out>/data/`.
    pub fn new(lab: &'a Lab, murmur: &Path, out: &Path, on_disk: bool) -> anyhow::Result<Self> {
        let data = if on_disk {
            let data = std::path::absolute(out.join("data"))?;
            // A previous run's (one killed before it could clean up) must not be taken up.
            if data.exists() {
                std::fs::remove_dir_all(&data)
                    .with_context(|| format!("remove the stale {}", data.display()))?;
            }
            std::fs::create_dir_all(&data)?;
            Some(data)
        } else {
            None
        };
        Ok(Self {
            lab,
            murmur: murmur.to_owned(),
            harness: std::env::current_exe()?,
            out: out.to_owned(),
            nodes: lab.nodes.iter().map(|_| None).collect(),
            data,
        })
    }

    /// Node `i`'s data dir, with disk storage.
    pub fn data_dir(&self, i: usize) -> Option<PathBuf> {
        self.data.as_ref().map(|d| d.join(Self::name(i)))
    }

    pub fn name(i: usize) -> String {
        format!("n{}", i + 1)
    }

    /// Hosts with a node process that has not exited.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect()
    }

    pub fn names(hosts: &[usize]) -> String {
        hosts
            .iter()
            .map(|&i| Self::name(i))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Starts node `n{i+1}` on host `i`; its pid. The log is appended to, so a restarted
    /// node's log follows its previous life's.
    pub fn start(&mut self, i: usize) -> anyhow::Result<u32> {
        let host = &self.lab.nodes[i];
        let name = Self::name(i);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.out.join(format!("{name}.log")))?;
        let seeds = format!(
            "{}:{GOSSIP_PORT},{}:{GOSSIP_PORT}",
            self.lab.nodes[0].ip, self.lab.nodes[1].ip
        );
        let mut command = host.command(self.murmur.to_str().context("murmur path")?);
        command
            .args(["serve", "--name", &name])
            .args(["--listen", &format!("{}:{WS_PORT}", host.ip)])
            .args(["--admin-listen", &format!("{}:{ADMIN_PORT}", host.ip)])
            .args(["--gossip", &format!("{}:{GOSSIP_PORT}", host.ip)])
            .args(["--quic", &format!("{}:{QUIC_PORT}", host.ip)])
            .args(["--seeds", &seeds])
            .args(["--shutdown-grace", "3s", "--log-format", "json"])
            .env("MURMUR_CLUSTER_KEY", CHAOS_CLUSTER_KEY)
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(dir) = self.data_dir(i) {
            command
                .args(["--storage", "disk", "--fsync", "interval", "--data-dir"])
                .arg(&dir);
        }
        let child = command.spawn().context("start a node")?;
        let pid = child.id();
        self.nodes[i] = Some(Node { child });
        Ok(pid)
    }

    fn pid(&self, i: usize) -> anyhow::Result<u32> {
        Ok(self.nodes[i]
            .as_ref()
            .with_context(|| format!("{} is not running", Self::name(i)))?
            .child
            .id())
    }

    /// Sends `signal` (`-STOP`, `-CONT`, …) to node `i`.
    pub fn signal(&self, i: usize, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid(i)?.to_string();
        let status = Command::new("kill").args([signal, &pid]).status()?;
        if !status.success() {
            bail!("kill {signal} {pid} failed");
        }
        Ok(())
    }

    /// kill -9 node `i` and reap it.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut node) = self.nodes[i].take() {
            node.child.kill()?;
            node.child.wait()?;
        }
        Ok(())
    }

    /// kill -9 every node of `hosts` at once (every SIGKILL is sent before any is reaped),
    /// then reap them; how they exited.
    pub fn kill_at_once(&mut self, hosts: &[usize]) -> anyhow::Result<Vec<ExitStatus>> {
        let mut killed = Vec::new();
        for &i in hosts {
            let mut node = self.nodes[i]
                .take()
                .with_context(|| format!("{} is not running", Self::name(i)))?;
            node.child.kill()?;
            killed.push(node);
        }
        let mut statuses = Vec::new();
        for node in &mut killed {
            statuses.push(node.child.wait()?);
        }
        Ok(statuses)
    }

    /// SIGTERM node `i` and wait up to `limit` for it to exit.
    pub fn stop(&mut self, i: usize, limit: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(i, "-TERM")?;
        let node = self.nodes[i].as_mut().context("running")?;
        let started = Instant::now();
        loop {
            if let Some(status) = node.child.try_wait()? {
                self.nodes[i] = None;
                return Ok(status);
            }
            if started.elapsed() > limit {
                bail!("{} did not exit within {limit:?} of SIGTERM", Self::name(i));
            }
            pause(Duration::from_millis(100))?;
        }
    }

    /// Stops every node (SIGTERM; SIGKILL for one that does not exit within 10 s).
    pub fn stop_all(&mut self) {
        for i in self.running() {
            let _ = self.signal(i, "-CONT");
            let _ = self.signal(i, "-TERM");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for slot in &mut self.nodes {
            if let Some(node) = slot.as_mut() {
                while matches!(node.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            *slot = None;
        }
    }

    /// Node `i`'s view of the cluster, asked from the client host.
    pub fn view(&self, i: usize) -> Option<Vec<Member>> {
        let ip = &self.lab.nodes[i].ip;
        let out = self
            .lab
            .client
            .command(self.murmur.to_str()?)
            .args([
                "members",
                "--json",
                "--url",
                &format!("http://{ip}:{ADMIN_PORT}"),
            ])
            .env("RUST_BACKTRACE", "0")
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let view: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(
            view["members"]
                .as_array()?
                .iter()
                .map(|m| Member {
                    name: m["name"].as_str().unwrap_or("").to_owned(),
                    state: m["state"].as_str().unwrap_or("").to_owned(),
                    generation: m["generation"].as_u64().unwrap_or(0),
                })
                .collect(),
        )
    }

    /// Every running node sees every running node alive and no other member alive or
    /// suspect.
    pub fn converged(&self) -> bool {
        let running = self.running();
        running.iter().all(|&i| {
            self.view(i).is_some_and(|view| {
                let names: Vec<String> = running.iter().map(|&r| Self::name(r)).collect();
                names
                    .iter()
                    .all(|n| latest(&view, n).is_some_and(|m| m.state == "alive"))
                    && view.iter().all(|m| {
                        names.contains(&m.name)
                            || latest(&view, &m.name)
                                .is_none_or(|l| l.state != "alive" && l.state != "suspect")
                    })
            })
        })
    }

    /// Each running node's view, for a report of what did not converge.
    pub fn views(&self) -> String {
        let mut text = String::new();
        for i in self.running() {
            let view = self
                .view(i)
                .map_or_else(|| "no answer".to_owned(), |v| describe(&v));
            let _ = writeln!(text, "  {} sees: {view}", Self::name(i));
        }
        text
    }

    /// Every node of `observers` sees every node of `targets` in a state `matches` accepts
    /// (`None`: not in its view at all).
    pub fn seen(
        &self,
        observers: &[usize],
        targets: &[usize],
        matches: impl Fn(Option<&Member>) -> bool,
    ) -> bool {
        observers.iter().all(|&o| {
            self.view(o).is_some_and(|view| {
                targets
                    .iter()
                    .all(|&t| matches(latest(&view, &Self::name(t))))
            })
        })
    }

    /// The generation `observer` knows `target` by (asked up to 5 times: a loaded machine
    /// can make one `murmur members` call fail).
    fn generation_seen(&self, observer: usize, target: usize) -> Option<u64> {
        (0..5).find_map(|attempt| {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200));
            }
            latest(&self.view(observer)?, &Self::name(target)).map(|m| m.generation)
        })
    }

    /// `GET /readyz` on node `i` answers 200.
    pub fn ready(&self, i: usize) -> bool {
        let Some(harness) = self.harness.to_str() else {
            return false;
        };
        self.lab
            .client
            .command(harness)
            .args([
                "ready",
                "--addr",
                &format!("{}:{WS_PORT}", self.lab.nodes[i].ip),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

fn is_down(m: Option<&Member>) -> bool {
    m.is_some_and(|m| m.state == "down")
}

fn is_gone(m: Option<&Member>) -> bool {
    m.is_none_or(|m| m.state == "left" || m.state == "down")
}

/// What a nemesis did and saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// From the fault's start until every other node saw the victims down (or gone).
    pub detection: Option<Duration>,
    /// How each fault was seen to take effect.
    pub checks: Vec<String>,
    /// The nemesis could not run here (say why); the run is reported as skipped.
    pub skipped: Option<String>,
    /// Nodes restarted in place, with the generation the others knew before: after
    /// convergence they must be known by a newer one.
    pub restarted: Vec<(usize, u64)>,
}

impl Outcome {
    /// After convergence: every restarted node is known to every other by a new generation.
    pub fn verify_restarts(&mut self, cluster: &Cluster<'_>) -> anyhow::Result<()> {
        for &(node, before) in &self.restarted {
            for observer in cluster.running() {
                if observer == node {
                    continue;
                }
                let now = cluster.generation_seen(observer, node).unwrap_or(0);
                if now <= before {
                    bail!(
                        "{} still knows {} by generation {now} (before the restart: {before})",
                        Cluster::name(observer),
                        Cluster::name(node)
                    );
                }
            }
        }
        if !self.restarted.is_empty() {
            self.checks.push(format!(
                "every restarted node ({}) is known to the others by a new generation",
                Cluster::names(&self.restarted.iter().map(|r| r.0).collect::<Vec<_>>())
            ));
        }
        Ok(())
    }
}

fn ms(rng: &mut StdRng, range: std::ops::Range<u64>) -> Duration {
    Duration::from_millis(rng.random_range(range))
}

fn pick(rng: &mut StdRng, hosts: &[usize]) -> anyhow::Result<usize> {
    if hosts.is_empty() {
        bail!("no running node to pick from");
    }
    Ok(hosts[rng.random_range(0..hosts.len())])
}

fn without(hosts: &[usize], gone: &[usize]) -> Vec<usize> {
    hosts
        .iter()
        .copied()
        .filter(|h| !gone.contains(h))
        .collect()
}

/// Injects `nemesis` now and holds it for about `window`; heals before returning, on error
/// too.
pub fn inject(
    cluster: &mut Cluster<'_>,
    nemesis: Nemesis,
    rng: &mut StdRng,
    timeline: &mut Timeline,
    window: Duration,
) -> anyhow::Result<Outcome> {
    let result = inject_and_heal(cluster, nemesis, rng, timeline, window);
    if result.is_err() {
        // Leave no fault behind for the convergence wait and the report.
        let _ = cluster.lab.heal();
        for i in cluster.running() {
            let _ = cluster.signal(i, "-CONT");
        }
    }
    result
}

/// A node killed with SIGKILL, to be restarted in place.
struct Killed {
    victim: usize,
    pid: u32,
    /// The generation the others knew it by: after the restart they must know a newer one.
    generation: u64,
}

/// `kill -9` of `victim` (`how` is added to the timeline line).
fn kill(
    cluster: &mut Cluster<'_>,
    victim: usize,
    others: &[usize],
    tl: &mut Timeline,
    how: &str,
) -> anyhow::Result<Killed> {
    let pid = cluster.pid(victim)?;
    let generation = cluster
        .generation_seen(others[0], victim)
        .context("the victim's generation")?;
    cluster.kill(victim)?;
    tl.fault(&format!(
        "kill -9 {} (pid {pid}){how}",
        Cluster::name(victim)
    ));
    Ok(Killed {
        victim,
        pid,
        generation,
    })
}

/// Starts a killed node again and checks it is a new process.
fn restart(
    cluster: &mut Cluster<'_>,
    killed: Killed,
    tl: &mut Timeline,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let name = Cluster::name(killed.victim);
    let before = killed.pid;
    let after = cluster.start(killed.victim)?;
    tl.heal(&format!("{name} restarted (pid {after})"));
    if after == before {
        bail!("{name} restarted with its old pid {before}: it was not killed");
    }
    outcome.checks.push(format!(
        "{name} killed (pid {before}), seen down, restarted as pid {after}"
    ));
    outcome.restarted.push((killed.victim, killed.generation));
    Ok(())
}

/// SIGSTOP of `victim` until every other node sees it down (and the rest of `window`),
/// then SIGCONT (`how` is added to the timeline line).
fn stop_until_seen_down(
    cluster: &mut Cluster<'_>,
    victim: usize,
    others: &[usize],
    tl: &mut Timeline,
    outcome: &mut Outcome,
    window: Duration,
    how: &str,
) -> anyhow::Result<()> {
    let name = Cluster::name(victim);
    let pid = cluster.pid(victim)?;
    cluster.signal(victim, "-STOP")?;
    tl.fault(&format!("SIGSTOP {name} (pid {pid}){how}"));
    wait_for(
        &format!("{name} is stopped"),
        Duration::from_secs(2),
        || process_state(pid) == Some('T'),
    )?;
    hold_until_seen_down(cluster, others, victim, tl, outcome, window)?;
    cluster.signal(victim, "-CONT")?;
    tl.heal(&format!("SIGCONT {name}"));
    outcome.checks.push(format!(
        "{name} (pid {pid}) was stopped (state T) and seen down by the others"
    ));
    Ok(())
}

/// Waits until every node of `others` sees `victim` down (the fault's detection, recorded in
/// `outcome`), then keeps the fault on for the rest of `window`, at least 2 s.
fn hold_until_seen_down(
    cluster: &Cluster<'_>,
    others: &[usize],
    victim: usize,
    tl: &mut Timeline,
    outcome: &mut Outcome,
    window: Duration,
) -> anyhow::Result<()> {
    let name = Cluster::name(victim);
    let detection = wait_for(
        &format!("the others see {name} down"),
        DETECTION_LIMIT,
        || cluster.seen(others, &[victim], is_down),
    )?;
    tl.note(&format!(
        "{name} seen down by every other node after {detection:.1?}"
    ));
    outcome.detection = Some(detection);
    pause(window.saturating_sub(detection).max(Duration::from_secs(2)))
}

fn inject_and_heal(
    cluster: &mut Cluster<'_>,
    nemesis: Nemesis,
    rng: &mut StdRng,
    tl: &mut Timeline,
    window: Duration,
) -> anyhow::Result<Outcome> {
    let lab = cluster.lab;
    let running = cluster.running();
    let mut outcome = Outcome::default();
    match nemesis {
        Nemesis::None => tl.note("no fault (control run)"),
        Nemesis::PartitionShort => {
            let victim = pick(rng, &running)?;
            let others = without(&running, &[victim]);
            let name = Cluster::name(victim);
            let cut = ms(rng, 1250..1750);
            lab.isolate(victim)?;
            tl.fault(&format!(
                "partition-short: {name} cut off from {} for {cut:.2?}",
                Cluster::names(&others)
            ));
            let started = Instant::now();
            let mut marked_down = None;
            let mut suspected = false;
            // Watch during the cut and for 5 s after it: suspicion (3 s) must be refuted.
            let mut healed = false;
            while started.elapsed() < cut + Duration::from_secs(5) {
                if !healed && started.elapsed() >= cut {
                    let dropped = lab.dropped_on(&lab.nodes[victim])?;
                    lab.heal()?;
                    tl.heal(&format!(
                        "partition-short healed ({dropped} packets dropped)"
                    ));
                    if dropped == 0 {
                        bail!("the short partition dropped no packet: it did not take effect");
                    }
                    outcome.checks.push(format!(
                        "{dropped} packets dropped on {name} during the cut"
                    ));
                    healed = true;
                }
                for &o in &others {
                    let state = cluster
                        .view(o)
                        .and_then(|v| latest(&v, &name).map(|m| m.state.clone()));
                    match state.as_deref() {
                        Some("down") => marked_down = Some(Cluster::name(o)),
                        Some("suspect") => suspected = true,
                        _ => {}
                    }
                }
                if marked_down.is_some() {
                    break;
                }
                pause(Duration::from_millis(100))?;
            }
            if !healed {
                let dropped = lab.dropped_on(&lab.nodes[victim])?;
                lab.heal()?;
                tl.heal(&format!(
                    "partition-short healed ({dropped} packets dropped)"
                ));
            }
            if let Some(observer) = marked_down {
                bail!(
                    "a cut of {cut:.2?}, shorter than failure detection, made {observer} mark {name} down"
                );
            }
            outcome.checks.push(format!(
                "{name} was never marked down by the others{}",
                if suspected {
                    " (suspected, then refuted)"
                } else {
                    ""
                }
            ));
        }
        Nemesis::Partition => {
            let victim = pick(rng, &running)?;
            let others = without(&running, &[victim]);
            let name = Cluster::name(victim);
            lab.isolate(victim)?;
            tl.fault(&format!(
                "partition: {name} cut off from {} (clients still reach it)",
                Cluster::names(&others)
            ));
            hold_until_seen_down(cluster, &others, victim, tl, &mut outcome, window)?;
            let dropped = lab.dropped_on(&lab.nodes[victim])?;
            if dropped == 0 {
                bail!("the partition dropped no packet: it did not take effect");
            }
            outcome.checks.push(format!(
                "{dropped} packets dropped on {name}; the others saw it down"
            ));
            lab.heal()?;
            tl.heal("partition healed");
        }
        Nemesis::Split => {
            if running.len() < 5 {
                bail!("the split needs 5 nodes (--nodes 5), not {}", running.len());
            }
            let mut order = running.clone();
            order.shuffle(rng);
            let (minority, majority) = order.split_at(2);
            let (minority, majority) = (minority.to_vec(), majority.to_vec());
            for &a in &minority {
                for &b in &majority {
                    lab.drop_between(&lab.nodes[a], &lab.nodes[b])?;
                }
            }
            tl.fault(&format!(
                "split: minority {} | majority {}",
                Cluster::names(&minority),
                Cluster::names(&majority)
            ));
            let detection = wait_for("each side sees the other down", DETECTION_LIMIT, || {
                cluster.seen(&majority, &minority, is_down)
                    && cluster.seen(&minority, &majority, is_down)
            })?;
            tl.note(&format!(
                "each side sees the other down after {detection:.1?}"
            ));
            outcome.detection = Some(detection);
            pause(window.saturating_sub(detection).max(Duration::from_secs(2)))?;
            for &m in &minority {
                let dropped = lab.dropped_on(&lab.nodes[m])?;
                if dropped == 0 {
                    bail!(
                        "the split dropped no packet on {}: it did not take effect",
                        Cluster::name(m)
                    );
                }
                outcome
                    .checks
                    .push(format!("{dropped} packets dropped on {}", Cluster::name(m)));
            }
            lab.heal()?;
            tl.heal("split healed");
        }
        Nemesis::LinkCut => {
            if running.len() < 3 {
                bail!("cutting one link needs 3 nodes");
            }
            let mut order = running.clone();
            order.shuffle(rng);
            let (a, b) = (order[0], order[1]);
            let bystanders = without(&running, &[a, b]);
            lab.drop_between(&lab.nodes[a], &lab.nodes[b])?;
            tl.fault(&format!(
                "link-cut: {} <-> {} cut; {} still sees both",
                Cluster::name(a),
                Cluster::name(b),
                Cluster::names(&bystanders)
            ));
            pause(window)?;
            for h in [a, b] {
                let dropped = lab.dropped_on(&lab.nodes[h])?;
                if dropped == 0 {
                    bail!(
                        "the link cut dropped no packet on {}: it did not take effect",
                        Cluster::name(h)
                    );
                }
                outcome
                    .checks
                    .push(format!("{dropped} packets dropped on {}", Cluster::name(h)));
            }
            for &o in &bystanders {
                let view = cluster.view(o).unwrap_or_default();
                let states: Vec<String> = [a, b]
                    .iter()
                    .map(|&t| {
                        let name = Cluster::name(t);
                        let state = latest(&view, &name).map_or("absent", |m| m.state.as_str());
                        format!("{name} {state}")
                    })
                    .collect();
                outcome.checks.push(format!(
                    "at the end of the cut {} saw {}",
                    Cluster::name(o),
                    states.join(", ")
                ));
            }
            let ends = |x: usize, y: usize| {
                let view = cluster.view(x).unwrap_or_default();
                latest(&view, &Cluster::name(y)).map_or("absent".to_owned(), |m| m.state.clone())
            };
            outcome.checks.push(format!(
                "{} saw {} {}; {} saw {} {}",
                Cluster::name(a),
                Cluster::name(b),
                ends(a, b),
                Cluster::name(b),
                Cluster::name(a),
                ends(b, a)
            ));
            lab.heal()?;
            tl.heal("link healed");
        }
        Nemesis::OneWay => {
            let victim = pick(rng, &running)?;
            let others = without(&running, &[victim]);
            let name = Cluster::name(victim);
            for &o in &others {
                lab.drop_outbound(&lab.nodes[victim], &lab.nodes[o])?;
            }
            tl.fault(&format!(
                "one-way: everything {name} sends to {} is dropped; what they send arrives",
                Cluster::names(&others)
            ));
            hold_until_seen_down(cluster, &others, victim, tl, &mut outcome, window)?;
            let dropped = lab.dropped_on(&lab.nodes[victim])?;
            if dropped == 0 {
                bail!("the one-way cut dropped no packet: it did not take effect");
            }
            outcome
                .checks
                .push(format!("{dropped} outbound packets dropped on {name}"));
            lab.heal()?;
            tl.heal("one-way cut healed");
        }
        Nemesis::Flap => {
            let victim = pick(rng, &running)?;
            let name = Cluster::name(victim);
            let cycles = 6;
            let mut total = 0;
            for cycle in 1..=cycles {
                let cut = ms(rng, 1000..2000);
                lab.isolate(victim)?;
                tl.fault(&format!(
                    "flap {cycle}/{cycles}: {name} cut off for {cut:.2?}"
                ));
                pause(cut)?;
                let dropped = lab.dropped_on(&lab.nodes[victim])?;
                lab.heal()?;
                tl.heal(&format!(
                    "flap {cycle}/{cycles}: healed ({dropped} packets dropped)"
                ));
                if dropped == 0 {
                    bail!("flap cycle {cycle} dropped no packet: it did not take effect");
                }
                total += dropped;
                if cycle < cycles {
                    pause(ms(rng, 1000..2000))?;
                }
            }
            outcome.checks.push(format!(
                "{cycles} cuts of {name}, each dropped packets ({total} in all)"
            ));
        }
        Nemesis::GossipLoss | Nemesis::QuicLoss => {
            let (port, what) = if nemesis == Nemesis::GossipLoss {
                (GOSSIP_PORT, "gossip")
            } else {
                (QUIC_PORT, "QUIC")
            };
            for &h in &running {
                lab.lose_inbound(&lab.nodes[h], port, LOSS)?;
            }
            tl.fault(&format!(
                "{what}-loss: {:.0}% of UDP packets to port {port} lost, into every node",
                LOSS * 100.0
            ));
            pause(window)?;
            let mut per_node = Vec::new();
            let mut total = 0;
            for &h in &running {
                let dropped = lab.dropped_on(&lab.nodes[h])?;
                total += dropped;
                per_node.push(format!("{} {dropped}", Cluster::name(h)));
            }
            if total == 0 {
                bail!("the {what} loss dropped no packet: it did not take effect");
            }
            outcome
                .checks
                .push(format!("{what} packets dropped: {}", per_node.join(", ")));
            lab.heal()?;
            tl.heal(&format!("{what} loss healed"));
        }
        Nemesis::Delay => delay(cluster, rng, tl, window, &mut outcome)?,
        Nemesis::KillInPartition => {
            compound::kill_in_partition(cluster, rng, tl, window, &mut outcome)?;
        }
        Nemesis::PauseLoss => compound::pause_loss(cluster, rng, tl, window, &mut outcome)?,
        Nemesis::LongPartition => compound::long_partition(cluster, rng, tl, &mut outcome)?,
        Nemesis::Kill | Nemesis::HeavyKill => {
            let victim = pick(rng, &running)?;
            let others = without(&running, &[victim]);
            let killed = kill(cluster, victim, &others, tl, "")?;
            hold_until_seen_down(cluster, &others, victim, tl, &mut outcome, window)?;
            restart(cluster, killed, tl, &mut outcome)?;
        }
        Nemesis::Pause => {
            let victim = pick(rng, &running)?;
            let others = without(&running, &[victim]);
            stop_until_seen_down(cluster, victim, &others, tl, &mut outcome, window, "")?;
        }
        Nemesis::LeaveJoin => {
            let spare = cluster
                .nodes
                .iter()
                .rposition(Option::is_none)
                .filter(|&s| s >= running.len())
                .context("the lab has no spare host for a fresh node")?;
            let victim = pick(rng, &running)?;
            let others = without(&running, &[victim]);
            let name = Cluster::name(victim);
            tl.fault(&format!("SIGTERM {name}: graceful leave"));
            let status = cluster.stop(victim, Duration::from_secs(15))?;
            if !status.success() {
                bail!("{name} exited with {status} after SIGTERM");
            }
            let detection = wait_for(
                &format!("the others see {name} gone"),
                DETECTION_LIMIT,
                || cluster.seen(&others, &[victim], is_gone),
            )?;
            tl.note(&format!(
                "{name} exited cleanly; every other node sees it gone after {detection:.1?}"
            ));
            outcome.detection = Some(detection);
            let left = cluster.seen(&others, &[victim], |m| m.is_none_or(|m| m.state == "left"));
            outcome.checks.push(format!(
                "{name} exited with {status}; the others see it {}",
                if left { "left" } else { "down (not left)" }
            ));
            pause(window.saturating_sub(detection).max(Duration::from_secs(2)))?;
            let fresh = Cluster::name(spare);
            let pid = cluster.start(spare)?;
            tl.heal(&format!(
                "{fresh} (a fresh node) starts on {} (pid {pid})",
                lab.nodes[spare].ip
            ));
            let ready = wait_for(
                &format!("{fresh} is ready"),
                Duration::from_secs(30),
                || cluster.ready(spare),
            )?;
            tl.note(&format!("{fresh} ready after {ready:.1?}"));
            outcome.checks.push(format!(
                "{fresh} joined and answered /readyz after {ready:.1?}"
            ));
        }
        Nemesis::RollingRestart => {
            let mut order = running.clone();
            order.shuffle(rng);
            for &i in &order {
                restart_gracefully(cluster, i, &running, tl, &mut outcome, "")?;
            }
        }
        Nemesis::PartitionRestart => {
            compound::partition_during_rolling_restart(cluster, rng, tl, window, &mut outcome)?;
        }
        Nemesis::KillAll => kill_all::kill_all(cluster, rng, tl, &mut outcome)?,
    }
    Ok(outcome)
}

/// One step of a rolling restart: SIGTERM node `i` (a graceful leave), start it again and
/// wait for its /readyz; records the generation it had, so the checks can tell it rejoined.
fn restart_gracefully(
    cluster: &mut Cluster<'_>,
    i: usize,
    running: &[usize],
    tl: &mut Timeline,
    outcome: &mut Outcome,
    context: &str,
) -> anyhow::Result<()> {
    let name = Cluster::name(i);
    let before = cluster.pid(i)?;
    let others = without(running, &[i]);
    let generation = cluster
        .generation_seen(others[0], i)
        .context("the node's generation")?;
    tl.fault(&format!(
        "rolling restart{context}: SIGTERM {name} (pid {before})"
    ));
    let status = cluster.stop(i, Duration::from_secs(15))?;
    if !status.success() {
        bail!("{name} exited with {status} after SIGTERM");
    }
    let after = cluster.start(i)?;
    if after == before {
        bail!("{name} restarted with its old pid {before}");
    }
    let ready = wait_for(
        &format!("{name} is ready again"),
        Duration::from_secs(30),
        || cluster.ready(i),
    )?;
    tl.heal(&format!(
        "{name} back as pid {after}, ready after {ready:.1?}"
    ));
    outcome.checks.push(format!(
        "{name} exited with {status}, restarted as pid {after} (was {before}), ready after {ready:.1?}"
    ));
    outcome.restarted.push((i, generation));
    Ok(())
}

/// The state letter of a process (`R`, `S`, `T` for stopped, …) from /proc.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name, which is in parentheses and may contain spaces.
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Delays what one node sends to the others: a delayer process in the victim's namespace
/// holds the packets an NFQUEUE rule hands it. Skipped, with the reason, where the kernel has
/// no userspace queueing.
fn delay(
    cluster: &mut Cluster<'_>,
    rng: &mut StdRng,
    tl: &mut Timeline,
    window: Duration,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let lab = cluster.lab;
    let running = cluster.running();
    let victim = pick(rng, &running)?;
    let others = without(&running, &[victim]);
    let name = Cluster::name(victim);
    let delay = ms(rng, 100..200);
    let hold = window + Duration::from_secs(1);
    let mut delayer = lab.nodes[victim]
        .command(cluster.harness.to_str().context("harness path")?)
        .args(["delayer", "--queue", &DELAY_QUEUE.to_string()])
        .args(["--delay-ms", &delay.as_millis().to_string()])
        .args(["--for-ms", &hold.as_millis().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start the delayer")?;
    let mut stdout = BufReader::new(delayer.stdout.take().context("delayer stdout")?);
    let mut first = String::new();
    let _ = stdout.read_line(&mut first);
    if first.trim() != "ready" {
        let _ = delayer.kill();
        let _ = delayer.wait();
        let mut why = String::new();
        if let Some(mut stderr) = delayer.stderr.take() {
            let _ = stderr.read_to_string(&mut why);
        }
        let reason = format!(
            "no userspace packet queue here (NFQUEUE): {}",
            why.trim()
                .lines()
                .last()
                .unwrap_or("the delayer did not start")
        );
        tl.note(&format!("delay skipped: {reason}"));
        outcome.skipped = Some(reason);
        return Ok(());
    }
    for &o in &others {
        lab.queue_outbound(&lab.nodes[victim], &lab.nodes[o], DELAY_QUEUE)?;
    }
    tl.fault(&format!(
        "delay: every UDP packet {name} sends to {} held {delay:.0?}",
        Cluster::names(&others)
    ));
    let queued = pause(window).and_then(|()| Ok(lab.matched_on(&lab.nodes[victim], "NFQUEUE")?));
    lab.heal()?;
    tl.heal("delay removed");
    let queued = queued?;
    // The delayer releases what it still holds and exits at its deadline.
    let limit = Instant::now() + Duration::from_secs(5);
    while matches!(delayer.try_wait(), Ok(None)) && Instant::now() < limit {
        pause(Duration::from_millis(100))?;
    }
    let _ = delayer.kill();
    let _ = delayer.wait();
    let mut rest = String::new();
    let _ = stdout.read_to_string(&mut rest);
    let delayed: u64 = rest
        .lines()
        .find_map(|l| l.strip_prefix("delayed ")?.parse().ok())
        .unwrap_or(0);
    if queued == 0 || delayed == 0 {
        bail!(
            "the delay held no packet ({queued} queued by the rule, {delayed} delayed): it did not take effect"
        );
    }
    outcome.checks.push(format!(
        "{queued} packets from {name} queued, {delayed} held {delay:.0?} by the delayer"
    ));
    Ok(())
}

/// The delayer: holds each packet of NFQUEUE `queue` for `delay`, then accepts it, for
/// `duration`; prints `ready` once bound and `delayed N` at the end. Run in a lab host.
pub fn run_delayer(queue_num: u16, delay: Duration, duration: Duration) -> anyhow::Result<()> {
    let mut queue = nfq::Queue::open().context("open a netfilter queue socket")?;
    queue
        .bind(queue_num)
        .with_context(|| format!("bind NFQUEUE {queue_num}"))?;
    queue.set_nonblocking(true);
    println!("ready");
    std::io::stdout().flush()?;
    let mut held: std::collections::VecDeque<(Instant, nfq::Message)> =
        std::collections::VecDeque::new();
    let mut delayed = 0u64;
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        let mut received = false;
        // Bounded per round so releases keep their pace under a burst.
        for _ in 0..256 {
            match queue.recv() {
                Ok(mut message) => {
                    message.set_verdict(nfq::Verdict::Accept);
                    held.push_back((Instant::now() + delay, message));
                    delayed += 1;
                    received = true;
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(err) => return Err(err).context("receive from the queue"),
            }
        }
        while held.front().is_some_and(|(due, _)| *due <= Instant::now()) {
            if let Some((_, message)) = held.pop_front() {
                queue.verdict(message).context("release a packet")?;
            }
        }
        if !received {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    for (_, message) in held {
        queue.verdict(message).context("release a packet")?;
    }
    let _ = queue.unbind(queue_num);
    println!("delayed {delayed}");
    Ok(())
}

/// `GET /readyz` on `addr` (host:port) answers 200.
pub fn probe_ready(addr: &str) -> anyhow::Result<bool> {
    use std::net::{SocketAddr, TcpStream};
    let socket: SocketAddr = addr.parse().context("host:port")?;
    let mut stream = TcpStream::connect_timeout(&socket, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut status = String::new();
    BufReader::new(stream).read_line(&mut status)?;
    Ok(status.split_whitespace().nth(1) == Some("200"))
}
