//! `storage = "disk"`: nodes killed with `SIGKILL` and started again on their data
//! directories serve every event they acknowledged, in the same epochs, without a gap, and
//! go on numbering after them.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use murmur_tests::process::{NodeProcess, free_udp};
use murmur_tests::{WsClient, recv_n, seqs};
use serde_json::{Value, json};

type TestResult = anyhow::Result<()>;

const READY_WITHIN: Duration = Duration::from_secs(30);

fn disk_args(data_dir: &Path) -> Vec<String> {
    vec![
        "--storage".into(),
        "disk".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--fsync".into(),
        "interval".into(),
    ]
}

fn spawn(
    name: &str,
    gossip: std::net::SocketAddr,
    seeds: &[std::net::SocketAddr],
    dir: &Path,
) -> NodeProcess {
    let args = disk_args(&dir.join(name));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    NodeProcess::spawn(name, gossip, seeds, &args, dir)
}

async fn connect(node: &NodeProcess) -> anyhow::Result<WsClient> {
    let mut client = WsClient::connect_url(&node.ws_url()).await?;
    let welcome = client.recv_json().await?;
    anyhow::ensure!(
        welcome["op"] == "welcome",
        "expected welcome, got {welcome}"
    );
    Ok(client)
}

/// Publishes `count` events on each topic, through the nodes in turn; returns each topic's
/// epoch and the payloads acknowledged, in seq order.
async fn publish_acknowledged(
    nodes: &[NodeProcess],
    topics: &[String],
    count: u64,
) -> anyhow::Result<HashMap<String, (String, Vec<Value>)>> {
    let mut clients = Vec::new();
    for node in nodes {
        clients.push(connect(node).await?);
    }
    let mut acked: HashMap<String, (String, Vec<Value>)> = HashMap::new();
    for round in 1..=count {
        for (i, topic) in topics.iter().enumerate() {
            let client = &mut clients[(i + round as usize) % nodes.len()];
            let data = json!({"topic": topic, "n": round});
            let (ok, _) = client
                .publish(topic, data.clone(), &format!("{topic}-{round}"))
                .await?;
            let epoch = ok["epoch"].as_str().expect("an epoch").to_owned();
            assert_eq!(ok["seq"], round, "{ok}");
            let entry = acked
                .entry(topic.clone())
                .or_insert_with(|| (epoch.clone(), Vec::new()));
            assert_eq!(entry.0, epoch, "one epoch per topic");
            entry.1.push(data);
        }
    }
    Ok(acked)
}

/// Resumes every topic from the start of its epoch on the nodes in turn: exactly what was
/// acknowledged comes back, nothing before it (no gap), nothing after it.
async fn check_replays(
    nodes: &[NodeProcess],
    acked: &HashMap<String, (String, Vec<Value>)>,
) -> TestResult {
    for (i, (topic, (epoch, payloads))) in acked.iter().enumerate() {
        let node = &nodes[i % nodes.len()];
        let mut client = connect(node).await?;
        let ok = client
            .request(
                json!({"op": "sub", "id": "s", "topic": topic, "from": {"epoch": epoch, "seq": 0}}),
            )
            .await?;
        assert_eq!(ok["op"], "ok", "resume of {topic} on {}: {ok}", node.name);
        let events = recv_n(&mut client, payloads.len()).await?;
        let want: Vec<u64> = (1..=payloads.len() as u64).collect();
        assert_eq!(seqs(&events), want, "{topic} on {}: {events:?}", node.name);
        for (event, payload) in events.iter().zip(payloads) {
            assert_eq!(event["epoch"], epoch.as_str(), "{event}");
            assert_eq!(&event["data"], payload, "{event}");
        }
        client.ping("nothing-more").await?;
    }
    Ok(())
}

/// Publishes once more on every topic: the same epoch, the next seq.
async fn check_numbering_goes_on(
    nodes: &[NodeProcess],
    acked: &HashMap<String, (String, Vec<Value>)>,
) -> TestResult {
    let mut client = connect(&nodes[0]).await?;
    for (topic, (epoch, payloads)) in acked {
        let (ok, _) = client
            .publish(topic, json!("after"), &format!("{topic}-after"))
            .await?;
        assert_eq!(ok["epoch"], epoch.as_str(), "{topic}: {ok}");
        assert_eq!(ok["seq"], payloads.len() as u64 + 1, "{topic}: {ok}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_and_started_again_serves_everything_it_acknowledged() -> TestResult {
    let dir = tempfile::TempDir::new()?;
    let gossip = free_udp();
    let mut node = spawn("solo", gossip, &[], dir.path());
    node.wait_ready(READY_WITHIN).await;
    let topics: Vec<String> = (0..4).map(|i| format!("disk.solo.t{i}")).collect();
    let acked = publish_acknowledged(std::slice::from_ref(&node), &topics, 25).await?;
    node.kill9();

    let mut node = spawn("solo", gossip, &[], dir.path());
    node.wait_ready(READY_WITHIN).await;
    let nodes = [node];
    check_replays(&nodes, &acked).await?;
    check_numbering_goes_on(&nodes, &acked).await?;
    assert!(
        nodes[0].log_tail().contains("history on disk opened"),
        "{}",
        nodes[0].log_tail()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_killed_at_once_loses_nothing_acknowledged() -> TestResult {
    let dir = tempfile::TempDir::new()?;
    let gossips: Vec<_> = (0..3).map(|_| free_udp()).collect();
    let start = |dir: &Path| -> Vec<NodeProcess> {
        (0..3)
            .map(|i| spawn(&format!("d{i}"), gossips[i], &gossips, dir))
            .collect()
    };
    let mut nodes = start(dir.path());
    for node in &mut nodes {
        node.wait_ready(READY_WITHIN).await;
    }
    let topics: Vec<String> = (0..12).map(|i| format!("disk.all.t{i}")).collect();
    let acked = publish_acknowledged(&nodes, &topics, 15).await?;
    // Every node at once, mid-flight for nobody: what was acknowledged is on disk on two
    // of them (replication 2), handed to the OS before the `ok`.
    for node in &mut nodes {
        node.kill9();
    }
    drop(nodes);

    let mut nodes = start(dir.path());
    for node in &mut nodes {
        node.wait_ready(READY_WITHIN).await;
    }
    let checked = async {
        check_replays(&nodes, &acked).await?;
        check_numbering_goes_on(&nodes, &acked).await
    };
    checked
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&nodes)))
}

/// The nodes' last log lines, for a failure to show.
fn logs(nodes: &[NodeProcess]) -> String {
    nodes
        .iter()
        .map(|n| format!("--- {}:\n{}", n.name, n.log_tail()))
        .collect::<Vec<_>>()
        .join("\n")
}
