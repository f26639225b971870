//! Scenario `queue`: one publisher on the last node, a queue group of K members spread over
//! the nodes (Murmur: `sub` with a `group`, every delivery acked; NATS: `SUB subject queue
//! sid`). Every message must reach exactly one member: reported are deliveries/s, the
//! balance between members (smallest and largest share relative to an even split, and the
//! coefficient of variation of the members' counts), duplicates and lost messages.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::client::{Conn, Incoming};
use crate::common::{Common, connect_subscribed};
use crate::report::{Latency, WARMUP, emit, parse_payload, payload};

const TOPIC: &str = "bench.queue";
const GROUP: &str = "workers";
const FLUSH_EVERY: usize = 64;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Members of the group, spread over the nodes.
    #[arg(long, default_value_t = 30)]
    pub members: usize,
    #[arg(long, default_value_t = 20_000)]
    pub messages: usize,
    #[arg(long, default_value_t = 128)]
    pub size: usize,
}

struct Member {
    indices: Vec<usize>,
    latency: Latency,
    last_ns: Option<u128>,
}

/// Shared between the members and the scenario.
struct Progress {
    warmups: AtomicUsize,
    measured: AtomicUsize,
    stop: AtomicBool,
}

async fn member(mut conn: Conn, start: Instant, progress: Arc<Progress>) -> anyhow::Result<Member> {
    let mut member = Member {
        indices: Vec::new(),
        latency: Latency::new(),
        last_ns: None,
    };
    while !progress.stop.load(Ordering::Relaxed) {
        let Ok(incoming) = tokio::time::timeout(Duration::from_millis(200), conn.next()).await
        else {
            continue;
        };
        let Incoming::Event { payload, delivery } = incoming? else {
            continue;
        };
        if let Some(delivery) = delivery {
            conn.ack(&delivery).await?;
        }
        if payload == WARMUP {
            progress.warmups.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let now = start.elapsed().as_nanos();
        if let Some((sent, index)) = parse_payload(&payload) {
            member.latency.record(sent, now);
            member.indices.push(index);
        }
        member.last_ns = Some(now);
        progress.measured.fetch_add(1, Ordering::Relaxed);
    }
    Ok(member)
}

/// Runs the scenario; returns the number of messages lost.
pub async fn run(args: Args) -> anyhow::Result<u64> {
    let target = args.common.target();
    let urls = &args.common.url;
    let start = Instant::now();
    let plan = (0..args.members)
        .map(|i| (urls[i % urls.len()].clone(), TOPIC.to_owned()))
        .collect();
    let members = connect_subscribed(&target, plan, Some(GROUP)).await?;
    let progress = Arc::new(Progress {
        warmups: AtomicUsize::new(0),
        measured: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
    });
    let tasks: Vec<_> = members
        .into_iter()
        .map(|conn| tokio::spawn(member(conn, start, progress.clone())))
        .collect();

    let mut publisher = Conn::connect(&target, urls.last().context("a URL")?).await?;
    // Each warm-up reaches one member, so "everyone heard one" cannot be the signal: wait
    // for the first, then keep warming up briefly while interest reaches every node.
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress.warmups.load(Ordering::Relaxed) == 0 {
        if Instant::now() > deadline {
            bail!("no queue-group member heard the warm-up");
        }
        publisher.publish(TOPIC, WARMUP, None).await?;
        publisher.round_trip().await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let settle = Instant::now() + Duration::from_millis(500);
    while Instant::now() < settle {
        publisher.publish(TOPIC, WARMUP, None).await?;
        publisher.round_trip().await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let first_send = start.elapsed().as_nanos();
    for index in 0..args.messages {
        publisher
            .publish(TOPIC, &payload(start, index, args.size), None)
            .await?;
        if index % FLUSH_EVERY == FLUSH_EVERY - 1 {
            publisher.flush().await?;
        }
    }
    publisher.round_trip().await?;
    // Done when every message arrived, or when nothing more arrived for 3 s.
    let mut seen = 0;
    let mut quiet_since = Instant::now();
    loop {
        let now = progress.measured.load(Ordering::Relaxed);
        if now >= args.messages {
            break;
        }
        if now != seen {
            seen = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress.stop.store(true, Ordering::Relaxed);

    let mut counts = Vec::with_capacity(tasks.len());
    let mut delivered = vec![false; args.messages];
    let mut duplicates = 0usize;
    let mut latency = Latency::new();
    let mut last = first_send;
    for task in tasks {
        let member = task.await??;
        counts.push(member.indices.len());
        for index in member.indices {
            match delivered.get_mut(index) {
                Some(seen @ false) => *seen = true,
                Some(true) => duplicates += 1,
                None => bail!("a message index {index} that was never published"),
            }
        }
        latency.merge(&member.latency);
        last = last.max(member.last_ns.unwrap_or(0));
    }
    let total: usize = counts.iter().sum();
    let lost = delivered.iter().filter(|d| !**d).count() as u64;
    let per_second = total as f64 / ((last - first_send) as f64 / 1e9).max(1e-9);
    let balance = Balance::of(&counts);
    let name = target.name();
    let row = format!(
        "{name:<7} queue  {} members / {} nodes x {} msgs x {} B {per_second:>12.0} deliveries/s  {}  share min {:.2} max {:.2} cv {:.2}  dup {duplicates}  lost {lost}",
        args.members,
        urls.len(),
        args.messages,
        args.size,
        latency.row(),
        balance.min_share,
        balance.max_share,
        balance.cv,
    );
    emit(
        &row,
        json!({
            "scenario": "queue", "case": "queue", "system": name, "members": args.members,
            "nodes": urls.len(), "messages": args.messages, "size": args.size,
            "deliveries_per_s": per_second, "duplicates": duplicates, "lost": lost,
            "min_share": balance.min_share, "max_share": balance.max_share, "cv": balance.cv,
            "idle_members": counts.iter().filter(|c| **c == 0).count(),
            "counts": counts, "latency_ms": latency.json(),
        }),
        &args.common.label,
    );
    Ok(lost)
}

/// How evenly the members shared the messages: each member's count relative to an even
/// split (1.0 = its fair share), and the coefficient of variation of the counts.
#[derive(Debug, PartialEq)]
struct Balance {
    min_share: f64,
    max_share: f64,
    cv: f64,
}

impl Balance {
    fn of(counts: &[usize]) -> Self {
        let n = counts.len().max(1) as f64;
        let mean = counts.iter().sum::<usize>() as f64 / n;
        if mean == 0.0 {
            return Self {
                min_share: 0.0,
                max_share: 0.0,
                cv: 0.0,
            };
        }
        let variance = counts
            .iter()
            .map(|&c| (c as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let share = |c: Option<&usize>| c.map_or(0.0, |&c| c as f64 / mean);
        Self {
            min_share: share(counts.iter().min()),
            max_share: share(counts.iter().max()),
            cv: variance.sqrt() / mean,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balance_of_even_and_skewed_groups() {
        assert_eq!(
            Balance::of(&[10, 10, 10]),
            Balance {
                min_share: 1.0,
                max_share: 1.0,
                cv: 0.0
            }
        );
        let skewed = Balance::of(&[0, 0, 30]);
        assert_eq!((skewed.min_share, skewed.max_share), (0.0, 3.0));
        assert!((skewed.cv - 2f64.sqrt()).abs() < 1e-9);
        assert_eq!(Balance::of(&[]).cv, 0.0);
    }
}
