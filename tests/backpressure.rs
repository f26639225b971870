//! Bursts that a cluster must absorb without disconnecting anyone or losing anything (issue
//! 13): publishers are slowed down instead. Real nodes on 127.0.0.1, subscribers that read
//! 4 KiB at a time as the independent load generator's do, publishers that write frames back
//! to back and flush every 64.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use murmur::RunningNode;
use murmur_tests::{start_cluster, wait_for_interest_everywhere, ws_url};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Ws = WebSocketStream<TcpStream>;

/// Frames a publisher writes before each flush, as the independent generator does.
const FLUSH_EVERY: usize = 64;
/// How long the whole burst may take to arrive everywhere.
const DELIVERY_LIMIT: Duration = Duration::from_secs(90);

/// Connects with 4 KiB socket reads, or, for a `paused` subscriber, also with a small fixed
/// kernel receive buffer (no autotuning), so that what the node cannot write piles up in its
/// outbox rather than in the kernel; then consumes the `welcome`.
async fn connect(node: &RunningNode, paused: bool) -> anyhow::Result<Ws> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if paused {
        socket.set_recv_buffer_size(16 * 1024)?;
    }
    socket.set_nodelay(true)?;
    let stream = socket.connect(node.local_addr()).await?;
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(ws_url(node), stream, Some(config)).await?;
    let welcome = next_json(&mut ws).await?;
    if welcome["op"] != "welcome" {
        bail!("expected welcome, got {welcome}");
    }
    Ok(ws)
}

async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
    next_json_within(ws, Duration::from_secs(10)).await
}

async fn next_json_within(ws: &mut Ws, limit: Duration) -> anyhow::Result<Value> {
    loop {
        let frame = tokio::time::timeout(limit, ws.next())
            .await
            .with_context(|| format!("nothing for {limit:?}"))?
            .context("connection ended")??;
        match frame {
            Message::Text(text) => return Ok(serde_json::from_str(&text)?),
            Message::Close(close) => bail!("closed by the node: {close:?}"),
            _ => {}
        }
    }
}

async fn subscribe(ws: &mut Ws, topic: &str) -> anyhow::Result<()> {
    ws.send(Message::text(
        json!({"op": "sub", "id": "s", "topic": topic}).to_string(),
    ))
    .await?;
    let reply = next_json(ws).await?;
    if reply["op"] != "ok" {
        bail!("sub refused: {reply}");
    }
    Ok(())
}

/// Reads until `expected` events arrived on the subscription, each the next `seq`; a close
/// (`slow_consumer`, `resync`), an error frame, a hole or silence fails it. A `paused`
/// subscriber reads nothing until `go` turns true.
async fn receive(
    mut ws: Ws,
    expected: usize,
    mut go: watch::Receiver<bool>,
    who: String,
) -> anyhow::Result<()> {
    go.wait_for(|go| *go).await?;
    let mut last = 0u64;
    while (last as usize) < expected {
        let frame = next_json(&mut ws)
            .await
            .with_context(|| format!("{who}: after event {last} of {expected}"))?;
        match frame["op"].as_str() {
            Some("event") => {
                let seq = frame["seq"].as_u64().context("seq")?;
                if seq != last + 1 {
                    bail!("{who}: event {seq} after {last}");
                }
                last = seq;
            }
            _ => bail!("{who}: unexpected frame after event {last}: {frame}"),
        }
    }
    Ok(())
}

/// Publishes `messages` events of `size` bytes on each of `topics`, round robin, without
/// `ref`, flushing every [`FLUSH_EVERY`] frames; then checks with a `ping` that the node
/// answered nothing else (no `unavailable`).
async fn publish(
    node: &RunningNode,
    topics: Vec<String>,
    messages: usize,
    size: usize,
) -> anyhow::Result<()> {
    let mut ws = connect(node, false).await?;
    let data = "x".repeat(size);
    let mut written = 0;
    for n in 0..messages {
        for topic in &topics {
            let frame = json!({"op": "pub", "topic": topic, "data": format!("{n}{data}")});
            ws.feed(Message::text(frame.to_string())).await?;
            written += 1;
            if written % FLUSH_EVERY == 0 {
                ws.flush().await?;
            }
        }
    }
    ws.send(Message::text(
        json!({"op": "ping", "ref": "done"}).to_string(),
    ))
    .await?;
    let answer = next_json_within(&mut ws, DELIVERY_LIMIT)
        .await
        .context("no pong")?;
    if answer["op"] != "pong" {
        bail!("the publisher was told: {answer}");
    }
    Ok(())
}

/// Fan-out: one publisher, subscribers on every node, a few of which read nothing until
/// the burst is published. Each burst event is ~0.5 KiB: the paused subscribers fall
/// thousands of events behind (far more than the old 4,096-event outbox held), and the
/// nodes forward every event to their peers. Every subscriber gets every event, in order,
/// and none is disconnected (`slow_consumer`, `resync`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_reaches_every_subscriber_whole_even_those_behind() {
    let nodes = start_cluster(3, |_, _| {}).await;
    const TOPIC: &str = "burst.fanout";
    const READING: usize = 30;
    const PAUSED: usize = 3;
    const MESSAGES: usize = 8_000;
    let (go, went) = watch::channel(false);
    let (started, _) = watch::channel(true);
    let mut receivers = Vec::new();
    for i in 0..READING + PAUSED {
        let paused = i >= READING;
        let mut ws = connect(&nodes[i % 3], paused).await.unwrap();
        subscribe(&mut ws, TOPIC).await.unwrap();
        let gate = if paused {
            went.clone()
        } else {
            started.subscribe()
        };
        let who = format!("subscriber {i} on node-{} (paused: {paused})", i % 3);
        receivers.push(tokio::spawn(receive(ws, MESSAGES, gate, who)));
    }
    // Every node's interest known everywhere: no event is missed for want of it.
    wait_for_interest_everywhere(&nodes, usize::MAX, 1).await;

    publish(&nodes[2], vec![TOPIC.to_owned()], MESSAGES, 512)
        .await
        .unwrap();
    // The publisher is done; the paused subscribers start reading what piled up for them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    go.send(true).unwrap();
    let all = futures_util::future::join_all(receivers);
    let results = tokio::time::timeout(DELIVERY_LIMIT, all)
        .await
        .expect("the burst arrives in time");
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.unwrap().err().map(|e| format!("{e:#}")))
        .collect();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:#?}",
        failures.len()
    );
}

/// Fan-in: topics whose publishers sit on other nodes than their owners, at full speed,
/// into owners with a small publish buffer (1 MiB, the least allowed) that fills many times
/// over. A publish without `ref` from a peer used to be dropped by an owner whose buffer was
/// full; now the owner reads that peer's publishes more slowly and the publishers wait.
/// Every event arrives, in order, and no publisher is told `unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishes_from_other_nodes_wait_for_a_full_owner_instead_of_being_dropped() {
    let nodes = Arc::new(
        start_cluster(3, |_, s| {
            s.max_frame_bytes = 64 * 1024;
            s.publish_buffer_bytes = 1024 * 1024;
        })
        .await,
    );
    const TOPICS: usize = 30;
    const MESSAGES: usize = 500;
    let topic = |i: usize| format!("burst.fanin.{i}");
    let (_go, went) = watch::channel(true);
    let mut receivers = Vec::new();
    for i in 0..TOPICS {
        let mut ws = connect(&nodes[i % 3], false).await.unwrap();
        subscribe(&mut ws, &topic(i)).await.unwrap();
        let who = format!("subscriber of {} on node-{}", topic(i), i % 3);
        receivers.push(tokio::spawn(receive(ws, MESSAGES, went.clone(), who)));
    }
    wait_for_interest_everywhere(&nodes, usize::MAX, TOPICS / 3).await;

    // The publisher on node k publishes to the topics subscribed on node k + 1.
    let publishers: Vec<_> = (0..3)
        .map(|k| {
            let nodes = nodes.clone();
            let mine: Vec<String> = (0..TOPICS)
                .filter(|i| i % 3 == (k + 1) % 3)
                .map(topic)
                .collect();
            tokio::spawn(async move { publish(&nodes[k], mine, MESSAGES, 2048).await })
        })
        .collect();
    for publisher in publishers {
        tokio::time::timeout(DELIVERY_LIMIT, publisher)
            .await
            .expect("publishing ends in time")
            .unwrap()
            .unwrap();
    }
    let results = tokio::time::timeout(DELIVERY_LIMIT, futures_util::future::join_all(receivers))
        .await
        .expect("the burst arrives in time");
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.unwrap().err().map(|e| format!("{e:#}")))
        .collect();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:#?}",
        failures.len()
    );
}
