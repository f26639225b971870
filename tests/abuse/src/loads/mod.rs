//! The loads: each one a finding of the adversarial pass in issue 12, replayed against a
//! fresh three-node cluster. A load does its setup, calls [`Ctx::start_load`] (the
//! baseline is what the nodes hold at that moment), runs until [`Ctx::deadline`], and says
//! what it saw ([`Outcome`]); the caller watches memory, files and logs.

mod flood;
mod queue;
mod replay;
mod sockets;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use futures_util::StreamExt;
use futures_util::stream::SplitSink;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::ws::Client;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Load {
    /// 1. A queue-group member that never reads, fire-and-forget publishes into the owner.
    QueueNeverReads,
    /// 2. A queue-group member that reads but never acks, the same publishes.
    QueueNeverAcks,
    /// 3. A publish flood into a node that does not own the topic.
    FloodNonOwner,
    /// 4. Subscriptions with ids of 1 MB.
    HugeIds,
    /// 5. Many distinct topics, each published once.
    ManyTopics,
    /// 6. `sub hist.>` from earliest by clients that never read, after filling history.
    ReplayNeverReads,
    /// 7. Queue-group events that no member can take (every member at its unacked bound).
    GroupNoMember,
    /// 8. Idle TCP sockets that never send a request, against a node with 1,024 files.
    IdleSockets,
}

impl Load {
    pub const ALL: [Self; 8] = [
        Self::QueueNeverReads,
        Self::QueueNeverAcks,
        Self::FloodNonOwner,
        Self::HugeIds,
        Self::ManyTopics,
        Self::ReplayNeverReads,
        Self::GroupNoMember,
        Self::IdleSockets,
    ];

    pub fn number(self) -> usize {
        Self::ALL.iter().position(|l| *l == self).unwrap_or(0) + 1
    }

    pub fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }

    /// What the load does and what it did before the fixes (issue 12).
    pub fn describe(self) -> &'static str {
        match self {
            Self::QueueNeverReads => {
                "a queue-group member on n2 that never reads (a new one every 5 s, the newest 4 kept), \
                 fire-and-forget publishes at `--queue-rate` into the topic's owner n1. \
                 Was: the owner died of a stack overflow within seconds"
            }
            Self::QueueNeverAcks => {
                "a queue-group member on n2 that reads every delivery and never acks, \
                 fire-and-forget publishes at `--queue-rate` into the owner n1. \
                 Was: +3.6 GiB in 29 s; now bounded by `max_unacked`"
            }
            Self::FloodNonOwner => {
                "4 connections on n1 publish events of `--flood-event-bytes` (4 KiB) as fast as n1 reads them, to 4 topics n2 owns. \
                 Was: +1.5 GiB in 27 s on n1; now bounded by `publish_buffer_bytes` (publishers wait)"
            }
            Self::HugeIds => {
                "4 connections (n1, n2, n3, n1) subscribe over and over with 1,000,000-byte ids. \
                 Was: 1 MiB ids × 1,024 subs = +1.7 GiB; now refused by `max_id_bytes`"
            }
            Self::ManyTopics => {
                "one publisher per node publishes once to each of `--topic-rate` new topics a second. \
                 Was: ~0.7–0.9 KB per topic per node, never freed (600k topics: +460 MiB); \
                 reported, and failed only with a `--bound many-topics=MIB`"
            }
            Self::ReplayNeverReads => {
                "after filling `--history-topics` topics `hist.*` with 1,000 events of 1 KiB, a new client every 2 s \
                 (nodes in turn) sends `sub hist.>` from earliest and never reads; 200 live events/s meanwhile. \
                 Was: ~45 MiB pinned per such client; now replays are paged"
            }
            Self::GroupNoMember => {
                "a queue group with one member on each node, all reading and never acking; once each holds \
                 `max_unacked`, every event published (at `--group-rate`, into n1) finds no member. \
                 Was: one WARN line per event (34,000 in 30 s); now at most one line a second per kind"
            }
            Self::IdleSockets => {
                "n1 runs with `ulimit -n 1024`; `--idle-sockets` TCP connections to it never send a request, \
                 while a new WebSocket client is tried every 2 s. \
                 Was: the node was starved silently; checked: every new client gets `welcome` and `pong` within 5 s"
            }
        }
    }

    /// Growth of any node's RSS over its baseline (MiB) that fails the load; `None`:
    /// reported only. Chosen from measurement (docs/benchmarks.md, "Abuse soak"): about
    /// twice the largest growth seen in 60 s runs, and at least 64 MiB, so that a return of
    /// any finding (hundreds of MiB to GiB within seconds) fails while allocator noise does
    /// not. Loads 1–3 level off within about 40 s (loads 1 and 2 then creep slowly).
    pub fn default_rss_bound_mib(self) -> Option<u64> {
        match self {
            // Measured up to 88 MiB on the owner in 60 s (96 MiB in 180 s: it creeps).
            Self::QueueNeverReads => Some(160),
            // Measured up to 84 MiB on the owner in 60 s (103 MiB in 180 s).
            Self::QueueNeverAcks => Some(160),
            // Measured up to 128 MiB on the owner and 117 MiB on the entry node:
            // `publish_buffer_bytes` (64 MiB) on the entry node, the peer queues and the
            // topics' history (4 × 1,000 events of 4 KiB) on the owner and its replica.
            Self::FloodNonOwner => Some(250),
            // Measured 4 MiB.
            Self::HugeIds => Some(64),
            // Grows with every topic (about 610 B per topic per node): reported until topic
            // bookkeeping is bounded; `--bound many-topics=MIB` makes it a check.
            Self::ManyTopics => None,
            // Measured up to 15 MiB; one replay held whole would be about 40 MiB.
            Self::ReplayNeverReads => Some(64),
            // Measured 3 MiB.
            Self::GroupNoMember => Some(64),
            // Measured 2 MiB.
            Self::IdleSockets => Some(64),
        }
    }

    /// `ulimit -n` for each node.
    pub fn open_files(self) -> [Option<u32>; 3] {
        match self {
            Self::IdleSockets => [Some(1024), None, None],
            _ => [None; 3],
        }
    }
}

/// Sizes of the loads (from the command line).
#[derive(Debug, Clone, clap::Args)]
pub struct Params {
    /// Fire-and-forget publishes a second into the owner (loads 1 and 2).
    #[arg(long, default_value_t = 20_000)]
    pub queue_rate: u32,
    /// Publishes a second for the queue group no member can take (load 7).
    #[arg(long, default_value_t = 5_000)]
    pub group_rate: u32,
    /// New topics a second, over all nodes (load 5: 600,000 topics in 60 s).
    #[arg(long, default_value_t = 10_000)]
    pub topic_rate: u32,
    /// Size of each flood publish's data (load 3).
    #[arg(long, default_value_t = 4096)]
    pub flood_event_bytes: usize,
    /// Topics of history filled before load 6 (1,000 events of 1 KiB each).
    #[arg(long, default_value_t = 40)]
    pub history_topics: u32,
    /// Idle TCP sockets held against n1 (load 8).
    #[arg(long, default_value_t = 1_100)]
    pub idle_sockets: u32,
}

/// Samples the baseline, then marks the load's start (given by the caller, which watches).
pub type StartLoad = Box<dyn Fn() -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;

/// What a load needs: where the nodes are, how long to run, how to mark its start.
pub struct Ctx {
    pub urls: Vec<String>,
    pub ports: Vec<u16>,
    pub params: Params,
    pub seconds: Duration,
    /// Called once the setup is done: samples the baseline, then marks the load's start.
    start: StartLoad,
    deadline: std::sync::Mutex<Option<Instant>>,
}

impl Ctx {
    pub fn new(
        urls: Vec<String>,
        ports: Vec<u16>,
        params: Params,
        seconds: Duration,
        start: StartLoad,
    ) -> Self {
        Self {
            urls,
            ports,
            params,
            seconds,
            start,
            deadline: std::sync::Mutex::new(None),
        }
    }

    /// The setup is done: the baseline is sampled now and the load's time starts.
    pub async fn start_load(&self) {
        (self.start)().await;
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + self.seconds);
    }

    /// When the load ends (`start_load` must have been called).
    pub fn deadline(&self) -> Instant {
        self.deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or_else(|| Instant::now() + self.seconds)
    }

    /// Sleeps until the deadline.
    pub async fn until_deadline(&self) {
        tokio::time::sleep_until(self.deadline().into()).await;
    }
}

/// What the load saw: facts for the report, and its own failed checks.
#[derive(Debug, Default)]
pub struct Outcome {
    pub notes: Vec<String>,
    pub failures: Vec<String>,
    /// Distinct topics the load created (the report gives the growth per topic).
    pub topics_published: Option<u64>,
}

pub async fn run(load: Load, ctx: &Ctx) -> anyhow::Result<Outcome> {
    match load {
        Load::QueueNeverReads => queue::never_reads(ctx).await,
        Load::QueueNeverAcks => queue::never_acks(ctx).await,
        Load::FloodNonOwner => flood::into_non_owner(ctx).await,
        Load::HugeIds => flood::huge_ids(ctx).await,
        Load::ManyTopics => flood::many_topics(ctx).await,
        Load::ReplayNeverReads => replay::never_reads(ctx).await,
        Load::GroupNoMember => queue::no_member_can_take(ctx).await,
        Load::IdleSockets => sockets::idle(ctx).await,
    }
}

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

/// A connection that sends without waiting for answers; what the node sends it (events,
/// errors, pongs) is read by a task of its own and counted by kind (`event`, `ok`, `pong`,
/// `error:<code>`, `closed:<code>`), so the node never sees it as a slow reader.
pub struct Conn {
    sink: Sink,
    pub answers: Arc<std::sync::Mutex<BTreeMap<String, u64>>>,
    reader: tokio::task::JoinHandle<()>,
    pub sent: u64,
}

impl Conn {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let (sink, mut stream) = Client::connect(url).await?.split();
        let answers = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let counted = answers.clone();
        let reader = tokio::spawn(async move {
            let kind = loop {
                let kind = match stream.next().await {
                    Some(Ok(Message::Text(text))) => {
                        let frame: Value = serde_json::from_str(&text).unwrap_or_default();
                        match frame["op"].as_str() {
                            Some("event") if frame["redelivered"] == true => {
                                "event(redelivered)".to_owned()
                            }
                            Some("error") => {
                                format!("error:{}", frame["code"].as_str().unwrap_or("?"))
                            }
                            Some(op) => op.to_owned(),
                            None => "unreadable".to_owned(),
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        break format!("closed:{}", frame.map_or(0, |f| u16::from(f.code)));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => break "closed".to_owned(),
                };
                *counted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(kind)
                    .or_default() += 1;
            };
            *counted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(kind)
                .or_default() += 1;
        });
        Ok(Self {
            sink,
            answers,
            reader,
            sent: 0,
        })
    }

    /// Sends `count` frames `frame(sent)`, `frame(sent + 1)`, … and flushes.
    async fn send_frames(
        &mut self,
        count: u64,
        frame: &mut impl FnMut(u64) -> Value,
    ) -> anyhow::Result<()> {
        use futures_util::SinkExt;
        for _ in 0..count {
            let text = frame(self.sent).to_string();
            self.sink.feed(Message::text(text)).await?;
            self.sent += 1;
        }
        self.sink.flush().await?;
        Ok(())
    }

    /// Publishes `frame(n)` for n = sent, sent+1, … at `rate` a second until `until`,
    /// without waiting for anything but the socket.
    pub async fn paced(
        &mut self,
        rate: u32,
        until: Instant,
        mut frame: impl FnMut(u64) -> Value,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let first = self.sent;
        let per_tick_cap = u64::from(rate / 20).max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let work = async {
            loop {
                tick.tick().await;
                let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as u64;
                // A stalled socket does not turn into a burst later: at most 1/20 s worth.
                let owed = due.saturating_sub(self.sent - first).min(per_tick_cap);
                if let Err(err) = self.send_frames(owed, &mut frame).await {
                    return anyhow::Result::<()>::Err(err);
                }
            }
        };
        tokio::time::timeout_at(until.into(), work)
            .await
            .unwrap_or(Ok(()))
    }

    /// Publishes `frame(n)` as fast as the node reads them until `until`.
    pub async fn flood(
        &mut self,
        until: Instant,
        mut frame: impl FnMut(u64) -> Value,
    ) -> anyhow::Result<()> {
        let work = async {
            loop {
                if let Err(err) = self.send_frames(32, &mut frame).await {
                    return anyhow::Result::<()>::Err(err);
                }
            }
        };
        tokio::time::timeout_at(until.into(), work)
            .await
            .unwrap_or(Ok(()))
    }

    /// Sends one frame now.
    pub async fn send(&mut self, frame: &Value) -> anyhow::Result<()> {
        use futures_util::SinkExt;
        self.sink.send(Message::text(frame.to_string())).await?;
        Ok(())
    }

    /// How many answers of `kind` came so far.
    pub fn count(&self, kind: &str) -> u64 {
        self.answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until `count(kind)` reaches `at_least`, for up to `limit`.
    pub async fn wait_for(&self, kind: &str, at_least: u64, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        while self.count(kind) < at_least {
            if started.elapsed() > limit || self.closed() {
                anyhow::bail!(
                    "expected {at_least} `{kind}` within {limit:?}; got {}",
                    self.answers_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// A `sub` answered `ok` (within 10 s).
    pub async fn subscribe(&mut self, frame: &Value) -> anyhow::Result<()> {
        let oks = self.count("ok");
        self.send(frame).await?;
        self.wait_for("ok", oks + 1, Duration::from_secs(10)).await
    }

    /// A `ping` answered by `pong` within 10 s: the node still reads and answers this
    /// connection, whatever it sent before.
    pub async fn ping(&mut self) -> anyhow::Result<()> {
        let pongs = self.count("pong");
        self.send(&serde_json::json!({"op": "ping", "ref": "alive"}))
            .await?;
        self.wait_for("pong", pongs + 1, Duration::from_secs(10))
            .await
    }

    /// The answers counted so far, as `kind ×n, …` (empty: none).
    pub fn answers_text(&self) -> String {
        describe_counts(&self.answers.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether the node closed this connection.
    pub fn closed(&self) -> bool {
        self.reader.is_finished()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

pub fn describe_counts(counts: &BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(kind, n)| format!("`{kind}` ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Events a second, for notes.
pub fn per_second(count: u64, over: Duration) -> u64 {
    (count as f64 / over.as_secs_f64().max(0.001)).round() as u64
}
