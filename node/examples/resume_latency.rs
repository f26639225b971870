//! How long a resume takes, by cluster size: in-process nodes over real WebSockets and QUIC
//! on 127.0.0.1.
//!
//! `cargo run --release -p murmur --example resume_latency` (or `make measure-resume`).
//! For clusters of 1, 3, 5 and 9 nodes (replication 2), 20 topics get 50 events each; then a
//! client on a node that holds none of the measured topic resumes, over and over:
//! - one topic from a cursor 10 events back (the placement is asked: owner and replica);
//! - a wildcard (`resume.>`) from the same cursor of one topic (every node is asked, once);
//!
//! and the time from sending `sub` to the last replayed event is reported (p50, p99). The
//! nodes share one process and its 2 worker threads, so larger clusters pay for their nodes'
//! background work too: compare the sizes with each other, not with another machine.

mod common;

use std::time::{Duration, Instant};

use murmur::RunningNode;
use murmur::client::Client;
use serde_json::json;

use common::{connect, gossip, node};

const TOPICS: usize = 20;
const EVENTS_PER_TOPIC: u64 = 50;
const RESUMES: usize = 200;
const BACK: u64 = 10;
/// `since` for the wildcard resume: later than any event, so only the cursor's topic replays.
const FAR_FUTURE_MS: i64 = 4_102_444_800_000;

async fn cluster(size: usize) -> Vec<RunningNode> {
    let first = node("r0", Vec::new()).await;
    let seed = gossip(&first);
    let mut nodes = vec![first];
    for i in 1..size {
        nodes.push(node(&format!("r{i}"), vec![seed.clone()]).await);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes
        .iter()
        .any(|n| n.state().cluster.links().len() < size - 1 || n.state().readiness().is_err())
    {
        assert!(Instant::now() < deadline, "cluster did not form");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nodes
}

/// Sends `sub` and reads frames until `events` events came; returns the time taken.
async fn resume(client: &mut Client, frame: serde_json::Value, events: u64) -> Duration {
    let started = Instant::now();
    client.send(&frame).await.unwrap();
    let mut seen = 0;
    while seen < events {
        let frame = client.next_frame().await.expect("frame");
        match frame["op"].as_str() {
            Some("event") => seen += 1,
            Some("error") => panic!("refused: {frame}"),
            _ => {}
        }
    }
    let took = started.elapsed();
    let id = frame["id"].as_str().unwrap().to_owned();
    // The `ok` of an `unsub` carries the subscription's id as its `ref`.
    client.send(&json!({"op":"unsub","id":&id})).await.unwrap();
    loop {
        let frame = client.next_frame().await.expect("frame");
        if frame["op"] == "ok" && frame["ref"] == id.as_str() {
            break;
        }
    }
    took
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

async fn measure(size: usize) {
    let nodes = cluster(size).await;
    let mut publisher = connect(&nodes[0]).await;
    let mut epochs = Vec::new();
    for t in 0..TOPICS {
        let topic = format!("resume.{t}");
        let mut epoch = String::new();
        for i in 0..EVENTS_PER_TOPIC {
            publisher
                .send(&json!({"op":"pub","topic":&topic,"data":i,"ref":"p"}))
                .await
                .unwrap();
            loop {
                let frame = publisher.next_frame().await.expect("frame");
                if frame["op"] == "ok" {
                    epoch = frame["epoch"].as_str().unwrap().to_owned();
                    break;
                }
                assert_ne!(frame["op"], "error", "{frame}");
            }
        }
        epochs.push(epoch);
    }
    // A node outside the measured topic's placement, when there is one.
    let placement = nodes[0].state().cluster.placement("resume.0");
    let resumer = nodes
        .iter()
        .find(|n| !placement[..2.min(size)].contains(&n.state().cluster.name().to_owned()))
        .unwrap_or(&nodes[0]);
    let mut client = connect(resumer).await;
    let cursor = json!({"epoch": &epochs[0], "seq": EVENTS_PER_TOPIC - BACK});
    let mut single = Vec::new();
    let mut wildcard = Vec::new();
    for i in 0..RESUMES {
        single.push(
            resume(
                &mut client,
                json!({"op":"sub","id":format!("s{i}"),"topic":"resume.0","from":cursor}),
                BACK,
            )
            .await,
        );
        wildcard.push(
            resume(
                &mut client,
                json!({"op":"sub","id":format!("w{i}"),"topic":"resume.>","from":{"topics":{"resume.0":cursor},"since":FAR_FUTURE_MS}}),
                BACK,
            )
            .await,
        );
    }
    single.sort();
    wildcard.sort();
    println!(
        "{size} node{} | one topic: p50 {:>6.2} ms  p99 {:>6.2} ms | wildcard: p50 {:>6.2} ms  p99 {:>6.2} ms",
        if size == 1 { " " } else { "s" },
        percentile(&single, 0.5),
        percentile(&single, 0.99),
        percentile(&wildcard, 0.5),
        percentile(&wildcard, 0.99),
    );
    for n in nodes {
        n.shutdown();
        n.stopped().await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    for size in [1, 3, 5, 9] {
        measure(size).await;
    }
}
