//! What acknowledged publishing costs next to fire-and-forget, measured in one run on
//! in-process nodes over real WebSockets on 127.0.0.1.
//!
//! `cargo run --release -p murmur --example publish_cost` (or `make measure-publish`).
//! For one node and for a 3-node cluster (replication 2, the topic owned by another node
//! than the publisher's), one client publishes N small events:
//! - fire-and-forget: `pub` without `ref`, then one `ping` to know the node read them all;
//! - acknowledged, one at a time: each `pub` waits for its `ok` (latency-bound);
//! - acknowledged, pipelined: up to 256 `pub`s in flight.

mod common;

use std::time::{Duration, Instant};

use murmur::RunningNode;
use murmur::client::Client;
use serde_json::json;

use common::{connect, gossip, node};

const EVENTS: usize = 20_000;
const WINDOW: usize = 256;

async fn wait_reply(client: &mut Client) {
    loop {
        let frame = client.next_frame().await.expect("frame");
        match frame["op"].as_str() {
            Some("ok") | Some("pong") => return,
            Some("error") => panic!("refused: {frame}"),
            _ => {}
        }
    }
}

async fn measure(label: &str, publisher: &RunningNode, topic: &str) {
    let mut client = connect(publisher).await;
    // Warm up: claim the topic, open the paths.
    for i in 0..100 {
        client
            .send(&json!({"op":"pub","topic":topic,"data":i,"ref":"w"}))
            .await
            .unwrap();
        wait_reply(&mut client).await;
    }

    let started = Instant::now();
    for i in 0..EVENTS {
        client
            .send(&json!({"op":"pub","topic":topic,"data":i}))
            .await
            .unwrap();
    }
    client
        .send(&json!({"op":"ping","ref":"flush"}))
        .await
        .unwrap();
    wait_reply(&mut client).await;
    let fire = started.elapsed();

    let started = Instant::now();
    let sequential = EVENTS / 10;
    for i in 0..sequential {
        client
            .send(&json!({"op":"pub","topic":topic,"data":i,"ref":"a"}))
            .await
            .unwrap();
        wait_reply(&mut client).await;
    }
    let one_by_one = started.elapsed();

    let started = Instant::now();
    let mut in_flight = 0;
    for i in 0..EVENTS {
        client
            .send(&json!({"op":"pub","topic":topic,"data":i,"ref":"b"}))
            .await
            .unwrap();
        in_flight += 1;
        if in_flight == WINDOW {
            wait_reply(&mut client).await;
            in_flight -= 1;
        }
    }
    while in_flight > 0 {
        wait_reply(&mut client).await;
        in_flight -= 1;
    }
    let pipelined = started.elapsed();

    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "{label:<34} fire-and-forget {:>9.0}/s | acked one-by-one {:>7.0}/s ({:>6.0} µs each) | acked pipelined {:>9.0}/s ({:.2}× fire-and-forget time)",
        rate(EVENTS, fire),
        rate(sequential, one_by_one),
        one_by_one.as_secs_f64() * 1e6 / sequential as f64,
        rate(EVENTS, pipelined),
        pipelined.as_secs_f64() / fire.as_secs_f64(),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let single = node("solo", Vec::new()).await;
    measure("1 node", &single, "cost.solo").await;
    single.shutdown();
    single.stopped().await;

    let first = node("c0", Vec::new()).await;
    let seed = gossip(&first);
    let second = node("c1", vec![seed.clone()]).await;
    let third = node("c2", vec![seed]).await;
    let nodes = [first, second, third];
    let deadline = Instant::now() + Duration::from_secs(20);
    while nodes.iter().any(|n| n.state().cluster.links().len() < 2) {
        assert!(Instant::now() < deadline, "cluster did not form");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let topic = (0..)
        .map(|i| format!("cost.{i}"))
        .find(|t| nodes[0].state().cluster.placement(t)[0] != "c0")
        .unwrap();
    measure("3 nodes, owner on another node", &nodes[0], &topic).await;
    let local = (0..)
        .map(|i| format!("cost.local{i}"))
        .find(|t| nodes[0].state().cluster.placement(t)[0] == "c0")
        .unwrap();
    measure("3 nodes, owner is the publisher's", &nodes[0], &local).await;
    for n in nodes {
        n.shutdown();
        n.stopped().await;
    }
}
