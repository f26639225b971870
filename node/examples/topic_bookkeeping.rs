//! What remembering a topic costs a node, and that forgetting gives it back.
//!
//! `cargo run --release -p murmur --example topic_bookkeeping -- --topics 600000 [--nodes 3]`
//!
//! Starts one node (or a 3-node cluster, replication 2) in this process, publishes one small
//! event to each of `--topics` distinct topics through the first node's cluster layer (the
//! path a client's `pub` without `ref` takes after its frame is decoded), and measures the
//! live heap of the process with a counting allocator:
//! 1. after publishing (every event still retained),
//! 2. once every event has expired (`history_max_age`, 2 s): the bookkeeping alone, which
//!    is what every node kept for good before topics were forgotten,
//! 3. once every topic was forgotten (`topic_idle_forget`, `--idle` seconds, default 60).
//!
//! Bytes per topic are the heap growth over the baseline (the nodes started, nothing
//! published) divided by the topics, and per copy divided by the copies kept cluster-wide
//! (one per node holding the topic: its owner and replicas). On a cluster each topic is
//! first claimed by its owner; publishes the cluster gives up on (after 5 s) are not
//! waited for: the table shows the copies actually held. VmRSS is printed too: the
//! allocator keeps some freed memory for reuse, so RSS falls less than the live heap.

mod common;

use std::alloc::System;
use std::time::{Duration, Instant};

use bytes::Bytes;
use murmur::event::Payload;
use murmur::{RunningNode, Settings};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

use common::gossip;

/// The system allocator, counting what is allocated and freed.
#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not yet freed.
fn live_heap() -> usize {
    let stats = ALLOCATOR.stats();
    stats
        .bytes_allocated
        .saturating_sub(stats.bytes_deallocated)
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

async fn node(name: &str, seeds: Vec<String>, idle: Duration, replication: usize) -> RunningNode {
    let settings = Settings {
        history_max_age: Duration::from_secs(2),
        topic_idle_forget: idle,
        replication,
        ..common::loopback_settings(name, seeds)
    };
    RunningNode::start(settings).await.expect("node starts")
}

/// Topic copies held across the nodes, and events retained.
fn held(nodes: &[RunningNode]) -> (usize, usize) {
    nodes.iter().fold((0, 0), |(topics, events), n| {
        let broker = &n.state().broker;
        (
            topics + broker.topics_known(),
            events + broker.history_size().1,
        )
    })
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Stage {
    name: &'static str,
    heap: usize,
    rss: u64,
    copies: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut topics = 600_000usize;
    let mut nodes_wanted = 1usize;
    let mut idle = Duration::from_secs(60);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--topics" => topics = value().parse().expect("a number"),
            "--nodes" => nodes_wanted = value().parse().expect("1 or 3"),
            "--idle" => idle = Duration::from_secs(value().parse().expect("seconds")),
            other => panic!("unknown argument {other}; use --topics N --nodes 1|3 --idle SECONDS"),
        }
    }
    let replication = if nodes_wanted > 1 { 2 } else { 1 };
    let mut nodes: Vec<RunningNode> = Vec::new();
    for i in 0..nodes_wanted {
        let seeds = nodes.first().map(gossip).into_iter().collect();
        nodes.push(node(&format!("n{i}"), seeds, idle, replication).await);
    }
    wait_for(
        "the cluster is a full mesh",
        Duration::from_secs(30),
        || {
            nodes
                .iter()
                .all(|n| n.state().cluster.links().len() == nodes_wanted - 1)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = (live_heap(), rss_bytes());

    let started = Instant::now();
    let cluster = nodes[0].state().cluster.clone();
    let payload = Payload::Json(Bytes::from_static(b"1"));
    for n in 0..topics {
        // Topic names as a client would make them: a prefix and an id.
        let topic = format!("device.{n:08}.status");
        cluster.submit_unanswered(&topic, payload.clone(), None);
        if n % 10_000 == 0 {
            // Let the cluster's tasks keep up, as a client's socket would.
            tokio::task::yield_now().await;
        }
    }
    // Every copy stored, or (on a cluster, where each topic is claimed by its owner first)
    // nothing new for a few seconds: what was given up is reported, not waited for.
    let copies = topics * replication;
    let (mut last, mut still_since) = (0, Instant::now());
    wait_for("every topic is sequenced and stored", idle, || {
        let now = held(&nodes).0;
        if now != last {
            (last, still_since) = (now, Instant::now());
        }
        now >= copies || still_since.elapsed() > Duration::from_secs(5)
    })
    .await;
    let published_in = started.elapsed();
    let mut stages = vec![Stage {
        name: "published (events retained)",
        heap: live_heap(),
        rss: rss_bytes(),
        copies: held(&nodes).0,
    }];
    wait_for("every event expired", idle, || held(&nodes).1 == 0).await;
    let expired = held(&nodes).0;
    assert_eq!(
        expired, stages[0].copies,
        "topics were forgotten before every event expired: raise --idle"
    );
    stages.push(Stage {
        name: "history expired (bookkeeping only)",
        heap: live_heap(),
        rss: rss_bytes(),
        copies: expired,
    });
    wait_for("every topic is forgotten", idle * 3, || held(&nodes).0 == 0).await;
    stages.push(Stage {
        name: "forgotten",
        heap: live_heap(),
        rss: rss_bytes(),
        copies: 0,
    });

    println!(
        "{topics} topics published once each into {nodes_wanted} node(s) (replication \
         {replication}) in {:.1} s; baseline heap {:.1} MiB, RSS {:.1} MiB",
        published_in.as_secs_f64(),
        baseline.0 as f64 / 1048576.0,
        baseline.1 as f64 / 1048576.0
    );
    println!(
        "| stage | topic copies held | heap over baseline | per topic | per copy | RSS over baseline |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for stage in &stages {
        let growth = stage.heap.saturating_sub(baseline.0) as f64;
        let per_copy = if stage.copies == 0 {
            "–".to_owned()
        } else {
            format!("{:.0} B", growth / stage.copies as f64)
        };
        println!(
            "| {} | {} | {:.1} MiB | {:.0} B | {per_copy} | {:.1} MiB |",
            stage.name,
            stage.copies,
            growth / 1048576.0,
            growth / topics as f64,
            stage.rss.saturating_sub(baseline.1) as f64 / 1048576.0
        );
    }
    for node in &nodes {
        node.shutdown();
    }
}
