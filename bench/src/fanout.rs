//! Scenario `fanout`: S subscribers spread over the nodes on one topic; one publisher on the
//! last node sends M messages of P bytes, at full speed or at a fixed rate, fire-and-forget
//! or acknowledged (Murmur's `pub` with a `ref`: answered once the event is sequenced and
//! stored on its replicas, with up to `window` publishes in flight). Against JetStream
//! (acknowledged only) the topic is a stream with 2 replicas, each subscriber a push consumer
//! (`crate::jetstream`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::acked::publish_windowed;
use crate::client::System;
use crate::common::{
    Common, Warmth, bytes_row, cpu_per_delivery_us, cpu_row, cpu_used_each, gather,
    server_cpu_each, server_cpu_seconds,
};
use crate::counting::bytes_per_delivery;
use crate::jetstream::Stream;
use crate::report::{WARMUP, emit, payload};

const TOPIC: &str = "bench.fanout";
/// Fire-and-forget publishes queued before a flush at full speed.
const FLUSH_EVERY: usize = 64;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    #[arg(long, default_value_t = 2_000)]
    pub messages: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Messages per second; full speed when absent.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Publish acknowledged (Murmur and JetStream): each `pub` carries a `ref` (JetStream: a
    /// reply subject) and counts once its `ok` (PubAck) came back.
    #[arg(long)]
    pub acked: bool,
    /// Acknowledged publishes in flight at most.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
}

/// Runs the scenario; returns the number of deliveries lost.
pub async fn run(args: Args) -> anyhow::Result<u64> {
    let target = args.common.target();
    let urls = &args.common.url;
    if args.acked && target.system == System::Nats {
        bail!(
            "core NATS has no acknowledged publishing: use --system jetstream-mem or jetstream-file"
        );
    }
    if !args.acked && target.system.jetstream_storage().is_some() {
        bail!("JetStream is measured with acknowledged publishing only (--acked)");
    }
    let stream = Stream::create_for(&target, &urls[0], &[TOPIC]).await?;
    let start = Instant::now();
    let plan = (0..args.subscribers)
        .map(|i| (urls[i % urls.len()].clone(), TOPIC.to_owned()))
        .collect();
    let pool = args.common.subscriber_pool()?;
    let subscriber_target = args.common.subscriber_target();
    let subscribers = pool
        .connect_subscribed(&subscriber_target, plan, None)
        .await?;
    let warmth = Warmth::new(args.subscribers);
    let publishing = Arc::new(AtomicBool::new(false));
    let tasks = pool.spawn_receivers(subscribers, args.messages, start, &warmth, &publishing);

    let mut publisher =
        crate::client::Conn::connect(&target, urls.last().context("a URL")?).await?;
    publishing.store(true, Ordering::Relaxed);
    let warm_deadline = Instant::now() + Duration::from_secs(30);
    while warmth.count() < args.subscribers {
        if Instant::now() > warm_deadline {
            bail!(
                "only {} of {} subscribers heard the warm-up",
                warmth.count(),
                args.subscribers
            );
        }
        publisher.publish(TOPIC, WARMUP, None).await?;
        publisher.round_trip().await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let cpu_before = server_cpu_seconds(&args.common.server_pids)?;
    let cpu_before_each = server_cpu_each(&args.common.server_pids)?;
    let bytes_before = subscriber_target.read_bytes.load(Ordering::Relaxed);
    let first_send = start.elapsed().as_nanos();
    let mut publish_errors = 0usize;
    if args.acked {
        // Up to `window` publishes in flight; each answer (an error too) frees a slot.
        let answered = publish_windowed(&mut publisher, args.messages, args.window, |i| {
            (TOPIC, payload(start, i, args.size))
        })
        .await?;
        publish_errors = answered.errors;
    } else {
        let interval = args
            .rate
            .map(|r| Duration::from_nanos(1_000_000_000 / r.max(1)));
        let mut next = Instant::now();
        for index in 0..args.messages {
            if let Some(interval) = interval {
                next += interval;
                tokio::time::sleep_until(next.into()).await;
            }
            publisher
                .publish(TOPIC, &payload(start, index, args.size), None)
                .await?;
            if interval.is_some() || index % FLUSH_EVERY == FLUSH_EVERY - 1 {
                publisher.flush().await?;
            }
        }
        publisher.flush().await?;
    }
    let publish_seconds = (start.elapsed().as_nanos() - first_send) as f64 / 1e9;
    publisher.round_trip().await?;

    let gathered = gather(tasks, first_send).await?;
    let cpu_after = server_cpu_seconds(&args.common.server_pids)?;
    let cpu_after_each = server_cpu_each(&args.common.server_pids)?;
    let bytes_after = subscriber_target.read_bytes.load(Ordering::Relaxed);
    if let Some(stream) = stream {
        stream.delete().await?;
    }
    let (received, latency, endings) = (gathered.received, &gathered.latency, &gathered.endings);
    let per_second = gathered.per_second(first_send);
    let expected = args.subscribers * args.messages;
    let lost = (expected - received) as u64;
    let cpu_us = cpu_per_delivery_us(cpu_before, cpu_after, received);
    let bytes = bytes_per_delivery(bytes_before, bytes_after, received);
    let name = target.name();
    let mode = match (args.acked, args.rate) {
        (true, _) => "acked".to_owned(),
        (false, Some(r)) => format!("{r}/s"),
        (false, None) => "full speed".to_owned(),
    };
    let case = match (args.acked, args.rate) {
        (true, _) => "fanout-acked",
        (false, Some(_)) => "fanout-rate",
        (false, None) => "fanout-full",
    };
    // Subscribers that read like the independent generator's are another case.
    let variant = args.common.subscriber_variant();
    let case = if variant.is_empty() {
        case.to_owned()
    } else {
        format!("{case}-generator")
    };
    let row = format!(
        "{name:<7} fanout {} subs{variant} / {} nodes x {} msgs x {} B @ {mode:<10} {per_second:>12.0} deliveries/s  {}  lost {lost}",
        args.subscribers,
        urls.len(),
        args.messages,
        args.size,
        latency.row(),
    ) + &endings.row()
        + &cpu_row(cpu_us)
        + &bytes_row(bytes);
    emit(
        &row,
        json!({
            "scenario": "fanout", "case": case, "system": name,
            "subscribers": args.subscribers, "nodes": urls.len(), "messages": args.messages,
            "size": args.size, "rate": args.rate, "acked": args.acked,
            "deliveries_per_s": per_second, "publish_seconds": publish_seconds,
            "publish_errors": publish_errors, "lost": lost, "latency_ms": latency.json(),
            "ended_early": endings.count, "ended_sample": endings.sample,
            "server_cpu_us_per_delivery": cpu_us,
            "bytes_per_delivery": bytes,
            "server_cpu_s_each": cpu_used_each(&cpu_before_each, &cpu_after_each),
            "read_buffer": args.common.read_buffer,
            "subscriber_threads": args.common.subscriber_threads,
        }),
        &args.common.label,
    );
    Ok(lost)
}
