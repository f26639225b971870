//! Scenario `topics`: T topics with one subscriber each, the subscriber of topic i on node
//! i mod N; one publisher per node, which publishes to the topics whose subscribers are on
//! the NEXT node, so every message crosses from one node to another. Each topic gets M
//! messages, interleaved over the topics, at full speed: fire-and-forget, or acknowledged
//! (`--acked`: each publisher keeps up to `window` publishes unanswered, as `fanout --acked`;
//! reported as acks/s too) against Murmur or JetStream (`crate::jetstream`: one stream over
//! every topic, 2 replicas, a push consumer per subscriber).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;
use tokio::sync::Barrier;

use crate::acked::{Answered, publish_windowed};
use crate::client::{Conn, System, Target};
use crate::common::{
    Common, Warmth, bytes_row, cpu_per_delivery_us, cpu_row, cpu_used_each, gather,
    server_cpu_each, server_cpu_seconds,
};
use crate::counting::{ReadCounter, bytes_per_delivery};
use crate::jetstream::Stream;
use crate::report::{WARMUP, emit, payload};

const FLUSH_EVERY: usize = 64;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 1_000)]
    pub topics: usize,
    /// Messages per topic.
    #[arg(long, default_value_t = 100)]
    pub messages: usize,
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Publish acknowledged (Murmur and JetStream): each publish waits for its `ok`
    /// (PubAck), up to `window` unanswered per publisher.
    #[arg(long)]
    pub acked: bool,
    /// Acknowledged publishes in flight at most, per publisher.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
}

/// Every topic of the scenario, as one subject pattern (the JetStream stream's subjects).
const TOPICS_PATTERN: &str = "bench.topics.*";

fn topic(i: usize) -> String {
    format!("bench.topics.{i}")
}

/// Runs the scenario; returns the number of deliveries lost.
pub async fn run(args: Args) -> anyhow::Result<u64> {
    let target = args.common.target();
    let urls = args.common.url.clone();
    let nodes = urls.len();
    if args.acked && target.system == System::Nats {
        bail!(
            "core NATS has no acknowledged publishing: use --system jetstream-mem or jetstream-file"
        );
    }
    if !args.acked && target.system.jetstream_storage().is_some() {
        bail!("JetStream is measured with acknowledged publishing only (--acked)");
    }
    let stream = Stream::create_for(&target, &urls[0], &[TOPICS_PATTERN]).await?;
    let start = Instant::now();
    let plan = (0..args.topics)
        .map(|i| (urls[i % nodes].clone(), topic(i)))
        .collect();
    let pool = args.common.subscriber_pool()?;
    let subscriber_target = args.common.subscriber_target();
    let subscribers = pool
        .connect_subscribed(&subscriber_target, plan, None)
        .await?;
    let warmth = Warmth::new(args.topics);
    let publishing = Arc::new(AtomicBool::new(false));
    let tasks = pool.spawn_receivers(subscribers, args.messages, start, &warmth, &publishing);

    publishing.store(true, Ordering::Relaxed);
    let barrier = Arc::new(Barrier::new(nodes));
    let publishers: Vec<_> = (0..nodes)
        .map(|node| {
            // Publisher on `node` serves the topics subscribed on the next node.
            let mine: Vec<usize> = (0..args.topics)
                .filter(|i| i % nodes == (node + 1) % nodes)
                .collect();
            tokio::spawn(publish(
                target.clone(),
                urls[node].clone(),
                mine,
                args.messages,
                args.size,
                start,
                warmth.clone(),
                barrier.clone(),
                args.common.server_pids.clone(),
                args.acked.then_some(args.window),
                subscriber_target.read_bytes.clone(),
            ))
        })
        .collect();
    let mut first_send = u128::MAX;
    let mut cpu_before = None;
    let mut bytes_before = None;
    let mut cpu_before_each = None;
    let (mut last_answer, mut publish_errors) = (0u128, 0usize);
    for publisher in publishers {
        let started = publisher.await??;
        first_send = first_send.min(started.first_send);
        cpu_before = cpu_before.or(started.server_cpu);
        bytes_before = bytes_before.or(started.subscriber_bytes);
        cpu_before_each = cpu_before_each.or(started.server_cpu_each);
        if let Some(answered) = started.answered {
            last_answer = last_answer.max((answered.last_answer - start).as_nanos());
            publish_errors += answered.errors;
        }
    }

    let gathered = gather(tasks, first_send).await?;
    let cpu_after = server_cpu_seconds(&args.common.server_pids)?;
    let cpu_after_each = server_cpu_each(&args.common.server_pids)?;
    let bytes_after = subscriber_target.read_bytes.load(Ordering::Relaxed);
    if let Some(stream) = stream {
        stream.delete().await?;
    }
    let (received, latency, endings) = (gathered.received, &gathered.latency, &gathered.endings);
    let per_second = gathered.per_second(first_send);
    let expected = args.topics * args.messages;
    let lost = (expected - received) as u64;
    let cpu_us = cpu_per_delivery_us(cpu_before, cpu_after, received);
    let bytes = bytes_before.and_then(|before| bytes_per_delivery(before, bytes_after, received));
    let name = target.name();
    let variant = args.common.subscriber_variant();
    let case = match (args.acked, variant.is_empty()) {
        (true, _) => "topics-acked",
        (false, true) => "topics",
        (false, false) => "topics-generator",
    };
    // Acknowledged: every publish answered (an error too), from the first send to the last
    // answer.
    let acks_per_s = args.acked.then(|| {
        expected as f64 / ((last_answer.saturating_sub(first_send)) as f64 / 1e9).max(1e-9)
    });
    let acked_row = acks_per_s.map_or_else(String::new, |a| {
        format!(", acked {a:>9.0} acks/s  errors {publish_errors}")
    });
    let row = format!(
        "{name:<7} topics {} topics{variant} / {nodes} nodes x {} msgs x {} B, publishers on other nodes{acked_row} {per_second:>12.0} deliveries/s  {}  lost {lost}",
        args.topics,
        args.messages,
        args.size,
        latency.row(),
    ) + &endings.row()
        + &cpu_row(cpu_us)
        + &bytes_row(bytes);
    emit(
        &row,
        json!({
            "scenario": "topics", "case": case,
            "system": name, "topics": args.topics, "acked": args.acked,
            "acks_per_s": acks_per_s, "publish_errors": publish_errors,
            "nodes": nodes, "messages_per_topic": args.messages, "size": args.size,
            "deliveries_per_s": per_second, "lost": lost, "latency_ms": latency.json(),
            "ended_early": endings.count, "ended_sample": endings.sample,
            "server_cpu_us_per_delivery": cpu_us,
            "bytes_per_delivery": bytes,
            "server_cpu_s_each": cpu_before_each.map(|b| cpu_used_each(&b, &cpu_after_each)),
            "read_buffer": args.common.read_buffer,
            "subscriber_threads": args.common.subscriber_threads,
        }),
        &args.common.label,
    );
    Ok(lost)
}

/// When a publisher started measuring.
struct Started {
    /// ns since the start.
    first_send: u128,
    /// The servers' CPU seconds once every topic was warm, read by one publisher only.
    server_cpu: Option<f64>,
    /// Acknowledged publishing: what the answers were and when the last came.
    answered: Option<Answered>,
    /// Bytes the subscribers' sockets had read once every topic was warm, read by the
    /// same publisher as `server_cpu`.
    subscriber_bytes: Option<u64>,
    /// Each server's CPU seconds at the same moment ([`server_cpu_each`]).
    server_cpu_each: Option<Vec<f64>>,
}

/// One publisher: warms its topics up, waits for the others, then publishes M rounds over
/// its topics (acknowledged, with up to `window` unanswered, when given).
#[allow(clippy::too_many_arguments)]
async fn publish(
    target: Target,
    url: String,
    topics: Vec<usize>,
    messages: usize,
    size: usize,
    start: Instant,
    warmth: Arc<Warmth>,
    barrier: Arc<Barrier>,
    server_pids: Vec<u32>,
    acked_window: Option<usize>,
    subscriber_read_bytes: ReadCounter,
) -> anyhow::Result<Started> {
    let mut conn = Conn::connect(&target, &url).await?;
    let names: Vec<String> = topics.iter().map(|&i| topic(i)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let cold: Vec<usize> = (0..topics.len())
            .filter(|&k| !warmth.is_warm(topics[k]))
            .collect();
        if cold.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("{} topics never heard the warm-up from {url}", cold.len());
        }
        for k in cold {
            conn.publish(&names[k], WARMUP, None).await?;
        }
        conn.round_trip().await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (server_cpu, subscriber_bytes, server_cpu_each) = if barrier.wait().await.is_leader() {
        (
            server_cpu_seconds(&server_pids)?,
            Some(subscriber_read_bytes.load(Ordering::Relaxed)),
            Some(server_cpu_each(&server_pids)?),
        )
    } else {
        (None, None, None)
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first_send = start.elapsed().as_nanos();
    if let Some(window) = acked_window {
        let count = messages * names.len();
        let answered = publish_windowed(&mut conn, count, window, |index| {
            (
                names[index % names.len()].as_str(),
                payload(start, index, size),
            )
        })
        .await?;
        return Ok(Started {
            first_send,
            server_cpu,
            answered: Some(answered),
            subscriber_bytes,
            server_cpu_each,
        });
    }
    let mut queued = 0usize;
    for round in 0..messages {
        for (k, name) in names.iter().enumerate() {
            conn.publish(name, &payload(start, round * topics.len() + k, size), None)
                .await?;
            queued += 1;
            if queued.is_multiple_of(FLUSH_EVERY) {
                conn.flush().await?;
            }
        }
    }
    conn.round_trip().await?;
    Ok(Started {
        first_send,
        server_cpu,
        answered: None,
        subscriber_bytes,
        server_cpu_each,
    })
}
