//! Pieces the scenarios share: the arguments every scenario takes, connecting many clients,
//! warm-up tracking, and the subscriber loop that counts and times deliveries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;

use crate::client::{Conn, Incoming, MurmurOptions, System, Target};
use crate::counting::ReadCounter;
use crate::jetstream::JetStreamOptions;
use crate::report::{Latency, WARMUP, parse_payload};

/// Arguments every scenario takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    #[arg(long, value_enum)]
    pub system: System,
    /// WebSocket URLs of the nodes, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub url: Vec<String>,
    /// Label for the report (e.g. the round).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Exit with status 3 when a message (or an idle connection) was lost.
    #[arg(long)]
    pub fail_on_loss: bool,
    #[command(flatten)]
    pub murmur: MurmurOptions,
    #[command(flatten)]
    pub jetstream: JetStreamOptions,
    /// Process ids of the nodes under test, comma-separated: the CPU time they used while
    /// measuring is reported per delivery (a cost that other work on the machine disturbs
    /// far less than throughput).
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// Bytes each subscriber's socket read takes at most (default: the WebSocket library's
    /// 128 KiB). 4096 reads as the independent load generator of issue 13 does.
    #[arg(long, value_name = "BYTES")]
    pub read_buffer: Option<usize>,
    /// Run the subscribers (connects and reads) on a runtime of their own with this many
    /// threads, apart from the publishers, as a load generator whose subscriber process
    /// has that many threads. By default they share the bench's runtime.
    #[arg(long, value_name = "N")]
    pub subscriber_threads: Option<usize>,
}

impl Common {
    pub fn target(&self) -> Target {
        Target {
            system: self.system,
            murmur: self.murmur.clone(),
            read_buffer: None,
            jetstream: self.jetstream.clone(),
            read_bytes: ReadCounter::default(),
        }
    }

    /// The target as the subscribers see it (with `--read-buffer`), with a byte counter of
    /// its own for their sockets.
    pub fn subscriber_target(&self) -> Target {
        Target {
            read_buffer: self.read_buffer,
            ..self.target()
        }
    }

    /// Where the subscribers run (see `--subscriber-threads`).
    pub fn subscriber_pool(&self) -> anyhow::Result<SubscriberPool> {
        let runtime = match self.subscriber_threads {
            None => None,
            Some(threads) => Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads.max(1))
                    .thread_name("subscribers")
                    .enable_all()
                    .build()?,
            ),
        };
        Ok(SubscriberPool { runtime })
    }

    /// A `-<variant>` for the report's case when subscribers read unlike the default.
    pub fn subscriber_variant(&self) -> String {
        let mut variant = String::new();
        if let Some(bytes) = self.read_buffer {
            variant.push_str(&format!(" reads {bytes} B"));
        }
        if let Some(threads) = self.subscriber_threads {
            variant.push_str(&format!(" on {threads} threads"));
        }
        variant
    }
}

/// The runtime the subscribers run on: the bench's own, or one of their own.
pub struct SubscriberPool {
    runtime: Option<tokio::runtime::Runtime>,
}

impl SubscriberPool {
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.runtime
            .as_ref()
            .map_or_else(tokio::runtime::Handle::current, |r| r.handle().clone())
    }

    /// Connects and subscribes the clients of `plan` (see [`connect_subscribed`]) on this
    /// pool, so that their sockets are read by its threads.
    pub async fn connect_subscribed(
        &self,
        target: &Target,
        plan: Vec<(String, String)>,
        group: Option<String>,
    ) -> anyhow::Result<Vec<Conn>> {
        let target = target.clone();
        self.handle()
            .spawn(async move { connect_subscribed(&target, plan, group.as_deref()).await })
            .await?
    }

    /// [`spawn_receivers`] on this pool.
    pub fn spawn_receivers(
        &self,
        subscribers: Vec<Conn>,
        expected: usize,
        start: Instant,
        warmth: &Arc<Warmth>,
        publishing: &Arc<AtomicBool>,
    ) -> Vec<tokio::task::JoinHandle<Received>> {
        let _entered = self.handle().enter();
        spawn_receivers(subscribers, expected, start, warmth, publishing)
    }
}

impl Drop for SubscriberPool {
    fn drop(&mut self) {
        // Dropping a runtime from inside another one panics: let it wind down on its own.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The kernel reports process CPU time in USER_HZ ticks, 100 per second on Linux.
const USER_HZ: f64 = 100.0;

/// CPU time (user and system, all threads) the processes `pids` used so far, in seconds;
/// `None` without pids.
pub fn server_cpu_seconds(pids: &[u32]) -> anyhow::Result<Option<f64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("read /proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces, so it ends at the last `)`):
        // state is field 3, utime 14, stime 15.
        let after_name = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .context("a /proc/<pid>/stat line")?;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        for index in [14 - 3, 15 - 3] {
            ticks += fields
                .get(index)
                .context("utime and stime in /proc/<pid>/stat")?
                .parse::<u64>()?;
        }
    }
    Ok(Some(ticks as f64 / USER_HZ))
}

/// Per process of `pids`, in order, the seconds its threads have run on a CPU so far (the
/// first field of each thread's `/proc/<pid>/task/<tid>/schedstat`, in ns: finer than the
/// 10 ms ticks of `/proc/<pid>/stat`, for splitting a run's cost between the nodes).
/// Threads that ended meanwhile are not counted.
pub fn server_cpu_each(pids: &[u32]) -> anyhow::Result<Vec<f64>> {
    pids.iter()
        .map(|pid| {
            let mut ns = 0u64;
            for task in std::fs::read_dir(format!("/proc/{pid}/task"))
                .with_context(|| format!("list /proc/{pid}/task"))?
            {
                let path = task?.path().join("schedstat");
                // A thread may end between the listing and the read.
                let Ok(stat) = std::fs::read_to_string(&path) else {
                    continue;
                };
                ns += stat
                    .split_whitespace()
                    .next()
                    .context("a schedstat line")?
                    .parse::<u64>()?;
            }
            Ok(ns as f64 / 1e9)
        })
        .collect()
}

/// What each process of `--server-pids` used between two [`server_cpu_each`] samples, s.
pub fn cpu_used_each(before: &[f64], after: &[f64]) -> Vec<f64> {
    before.iter().zip(after).map(|(b, a)| a - b).collect()
}

/// The servers' CPU microseconds per delivery between two [`server_cpu_seconds`] samples.
pub fn cpu_per_delivery_us(
    before: Option<f64>,
    after: Option<f64>,
    deliveries: usize,
) -> Option<f64> {
    Some((after? - before?) * 1e6 / deliveries.max(1) as f64)
}

/// `  N B/delivery` (bytes the subscribers' sockets read per delivery) for the table row.
pub fn bytes_row(bytes: Option<f64>) -> String {
    bytes.map_or_else(String::new, |b| format!("  {b:.1} B/delivery"))
}

/// `  servers' CPU X µs/delivery` for the table row, or nothing.
pub fn cpu_row(cpu_us: Option<f64>) -> String {
    cpu_us.map_or_else(String::new, |us| {
        format!("  servers' CPU {us:.2} µs/delivery")
    })
}

/// How many connection handshakes run at once.
const CONNECT_CONCURRENCY: usize = 64;

/// Connects one client per `(url, topic)` and subscribes it (to `group` when given), at most
/// [`CONNECT_CONCURRENCY`] at a time; the result is in the order given.
pub async fn connect_subscribed(
    target: &Target,
    plan: Vec<(String, String)>,
    group: Option<&str>,
) -> anyhow::Result<Vec<Conn>> {
    futures_util::stream::iter(plan)
        .map(|(url, topic)| async move {
            let mut conn = Conn::connect(target, &url).await?;
            conn.subscribe(&topic, group).await?;
            anyhow::Ok(conn)
        })
        .buffered(CONNECT_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Which subscribers have seen a warm-up message: interest travels between nodes
/// asynchronously, so publishers send warm-ups until every subscriber heard one.
pub struct Warmth(Vec<AtomicBool>);

impl Warmth {
    pub fn new(slots: usize) -> Arc<Self> {
        Arc::new(Self((0..slots).map(|_| AtomicBool::new(false)).collect()))
    }

    pub fn mark(&self, slot: usize) {
        self.0[slot].store(true, Ordering::Relaxed);
    }

    pub fn is_warm(&self, slot: usize) -> bool {
        self.0[slot].load(Ordering::Relaxed)
    }

    pub fn count(&self) -> usize {
        self.0.iter().filter(|w| w.load(Ordering::Relaxed)).count()
    }
}

/// What one subscriber got.
pub struct Received {
    pub count: usize,
    pub latency: Latency,
    /// When the last measured message arrived, ns since the start.
    pub last_ns: Option<u128>,
    /// Why the connection ended early, if it did (a close frame's code and reason, an I/O
    /// error), rather than going quiet.
    pub ended: Option<String>,
}

/// How long a subscriber waits for the next message once publishing started before it
/// counts the rest as lost, and before publishing started at all.
const QUIET_WHILE_PUBLISHING: Duration = Duration::from_secs(5);
const QUIET_BEFORE_PUBLISHING: Duration = Duration::from_secs(120);

/// Connections that ended early, and one of their reasons, for the report.
#[derive(Debug, Default)]
pub struct Endings {
    pub count: usize,
    pub sample: Option<String>,
}

impl Endings {
    pub fn add(&mut self, ended: Option<String>) {
        if let Some(reason) = ended {
            self.count += 1;
            self.sample.get_or_insert(reason);
        }
    }

    /// ` ended early N (reason)` for the table row, or nothing.
    pub fn row(&self) -> String {
        match &self.sample {
            Some(sample) => format!("  ended early {} ({sample})", self.count),
            None => String::new(),
        }
    }
}

/// One receiving task per subscriber connection, each expecting `expected` measured messages.
pub fn spawn_receivers(
    subscribers: Vec<Conn>,
    expected: usize,
    start: Instant,
    warmth: &Arc<Warmth>,
    publishing: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Received>> {
    subscribers
        .into_iter()
        .enumerate()
        .map(|(slot, conn)| {
            tokio::spawn(receive(
                conn,
                expected,
                start,
                warmth.clone(),
                slot,
                publishing.clone(),
            ))
        })
        .collect()
}

/// What all the receivers got together.
pub struct Gathered {
    pub received: usize,
    pub latency: Latency,
    /// When the last measured message arrived anywhere (at least `first_send`), ns since the
    /// start.
    pub last_ns: u128,
    pub endings: Endings,
}

impl Gathered {
    /// Deliveries per second from `first_send` to the last arrival.
    pub fn per_second(&self, first_send: u128) -> f64 {
        self.received as f64 / ((self.last_ns - first_send) as f64 / 1e9).max(1e-9)
    }
}

/// Waits for every receiver of [`spawn_receivers`] and adds up what they got.
pub async fn gather(
    tasks: Vec<tokio::task::JoinHandle<Received>>,
    first_send: u128,
) -> anyhow::Result<Gathered> {
    let mut all = Gathered {
        received: 0,
        latency: Latency::new(),
        last_ns: first_send,
        endings: Endings::default(),
    };
    for task in tasks {
        let result = task.await?;
        all.endings.add(result.ended);
        all.received += result.count;
        all.latency.merge(&result.latency);
        all.last_ns = all.last_ns.max(result.last_ns.unwrap_or(0));
    }
    Ok(all)
}

/// Reads until `expected` measured messages arrived or the stream went quiet.
pub async fn receive(
    mut conn: Conn,
    expected: usize,
    start: Instant,
    warmth: Arc<Warmth>,
    slot: usize,
    publishing: Arc<AtomicBool>,
) -> Received {
    let mut received = Received {
        count: 0,
        latency: Latency::new(),
        last_ns: None,
        ended: None,
    };
    // One timer for the whole loop, pushed back at most every 100 ms: a timeout per read
    // would cost more than the read itself at full speed.
    let quiet = |publishing: &AtomicBool| {
        if publishing.load(Ordering::Relaxed) {
            QUIET_WHILE_PUBLISHING
        } else {
            QUIET_BEFORE_PUBLISHING
        }
    };
    let deadline = tokio::time::sleep(quiet(&publishing));
    tokio::pin!(deadline);
    let mut pushed_back = Instant::now();
    while received.count < expected {
        let incoming = tokio::select! {
            biased;
            next = conn.next() => match next {
                Ok(incoming) => incoming,
                Err(e) => {
                    received.ended = Some(format!("{e:#}"));
                    break;
                }
            },
            () = &mut deadline => break,
        };
        if pushed_back.elapsed() > Duration::from_millis(100) {
            pushed_back = Instant::now();
            deadline
                .as_mut()
                .reset((pushed_back + quiet(&publishing)).into());
        }
        let Incoming::Event { payload, .. } = incoming else {
            continue;
        };
        if payload == WARMUP {
            warmth.mark(slot);
            continue;
        }
        let now = start.elapsed().as_nanos();
        if let Some((sent, _)) = parse_payload(&payload) {
            received.latency.record(sent, now);
        }
        received.count += 1;
        received.last_ns = Some(now);
    }
    received
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cpu_time_of_processes() {
        assert_eq!(server_cpu_seconds(&[]).unwrap(), None);
        let mine = server_cpu_seconds(&[std::process::id()]).unwrap();
        assert!(mine.is_some_and(|s| s >= 0.0), "{mine:?}");
        assert!(server_cpu_seconds(&[u32::MAX]).is_err(), "no such process");
        assert_eq!(cpu_per_delivery_us(Some(1.0), Some(1.5), 1000), Some(500.0));
        assert_eq!(cpu_per_delivery_us(None, None, 1000), None);
        let each = server_cpu_each(&[std::process::id()]).unwrap();
        assert_eq!(each.len(), 1);
        assert!(each[0] > 0.0, "{each:?}");
        assert!(server_cpu_each(&[u32::MAX]).is_err(), "no such process");
        assert_eq!(cpu_used_each(&[1.0, 2.0], &[1.5, 2.25]), [0.5, 0.25]);
    }
}
