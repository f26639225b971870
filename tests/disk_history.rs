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

fn disk_args(data_dir: &Path, fsync: &str) -> Vec<String> {
    vec![
        "--storage".into(),
        "disk".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--fsync".into(),
        fsync.into(),
    ]
}

/// A node with `fsync = "interval"`, or `always` (group commit) when its name starts so.
fn spawn(
    name: &str,
    gossip: std::net::SocketAddr,
    seeds: &[std::net::SocketAddr],
    dir: &Path,
) -> NodeProcess {
    let fsync = if name.starts_with("always") {
        "always"
    } else {
        "interval"
    };
    let args = disk_args(&dir.join(name), fsync);
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

/// Publishes on `disk.solo.ids` with publish id `id`: the (epoch, seq) acknowledged.
async fn publish_with_id(node: &NodeProcess, id: &str) -> anyhow::Result<(String, u64)> {
    let mut client = connect(node).await?;
    let ok = client
        .request(
            json!({"op": "pub", "topic": "disk.solo.ids", "data": "once", "ref": "r", "id": id}),
        )
        .await?;
    anyhow::ensure!(ok["op"] == "ok", "{ok}");
    Ok((
        ok["epoch"].as_str().unwrap_or_default().to_owned(),
        ok["seq"].as_u64().unwrap_or_default(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_and_started_again_serves_everything_it_acknowledged() -> TestResult {
    let dir = tempfile::TempDir::new()?;
    let gossip = free_udp();
    // `fsync = "always"`: every acknowledgement waited for a (shared) sync.
    let mut node = spawn("always-solo", gossip, &[], dir.path());
    node.wait_ready(READY_WITHIN).await;
    let topics: Vec<String> = (0..4).map(|i| format!("disk.solo.t{i}")).collect();
    let acked = publish_acknowledged(std::slice::from_ref(&node), &topics, 25).await?;
    let first = publish_with_id(&node, "p-once").await?;
    node.kill9();

    let mut node = spawn("always-solo", gossip, &[], dir.path());
    node.wait_ready(READY_WITHIN).await;
    // Sent again after the restart (its `ok` was lost, say): the first position, no second
    // event.
    assert_eq!(publish_with_id(&node, "p-once").await?, first);
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

/// Runs the node in a user and mount namespace of its own with a 3 MiB tmpfs on its data
/// directory, 1 MiB of it taken by `filler`; `None` when this machine cannot.
fn spawn_on_small_tmpfs(dir: &Path, data: &Path) -> Option<NodeProcess> {
    let probe = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("note: skipped: `unshare --user --map-root-user --mount` is not available here");
        return None;
    }
    std::fs::create_dir_all(data).ok()?;
    let script = r#"mount -t tmpfs -o size=3m murmur-full "$1" || exit 97
dd if=/dev/zero of="$1/filler" bs=64k count=16 2>/dev/null || exit 98
shift; exec "$@""#;
    let data_arg = data.display().to_string();
    let wrapper = [
        "unshare",
        "--user",
        "--map-root-user",
        "--mount",
        "sh",
        "-c",
        script,
        "sh",
        &data_arg,
    ];
    let args = [
        "--storage",
        "disk",
        "--data-dir",
        &data_arg,
        "--fsync",
        "interval",
    ];
    Some(NodeProcess::spawn_under(
        &wrapper,
        "full",
        free_udp(),
        &[],
        &args,
        dir,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_publishes_keeps_serving_and_recovers_when_space_returns() -> TestResult
{
    let dir = tempfile::TempDir::new()?;
    let data = dir.path().join("data");
    let Some(mut node) = spawn_on_small_tmpfs(dir.path(), &data) else {
        return Ok(());
    };
    node.wait_ready(READY_WITHIN).await;
    let topic = "disk.full";
    let mut client = connect(&node).await?;
    // Incompressible (the store compresses): hex of a xorshift sequence.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let blob: String = (0..2048)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            format!("{state:016x}")
        })
        .collect();
    let mut acked = Vec::new();
    let mut epoch = String::new();
    let mut refusal = Value::Null;
    for n in 1..=1000u64 {
        let data = json!({"n": n, "blob": blob});
        client
            .send_json(json!({"op": "pub", "topic": topic, "data": data, "ref": format!("p{n}")}))
            .await?;
        let answer = client.recv_json().await?;
        if answer["op"] == "ok" {
            epoch = answer["epoch"].as_str().unwrap_or_default().to_owned();
            assert_eq!(answer["seq"], n, "{answer}");
            acked.push(data);
        } else {
            refusal = answer;
            break;
        }
    }
    assert_eq!(
        refusal["code"],
        "unavailable",
        "{refusal}\n{}",
        node.log_tail()
    );
    let why = refusal["message"].as_str().unwrap_or_default();
    assert!(why.contains("disk full"), "{why}");
    assert!(
        acked.len() > 10,
        "{} acknowledged before the disk filled",
        acked.len()
    );
    // Refused again while full: no position is used up meanwhile.
    let (again, _) = client
        .request(json!({"op": "pub", "topic": topic, "data": 0, "ref": "while-full"}))
        .await
        .map(|a| (a, ()))?;
    assert_eq!(again["code"], "unavailable", "{again}");

    assert_eq!(disk_failed_gauge(&node).await?, "1", "operators see it");

    // Reads go on: everything acknowledged is replayed.
    let check = |expected: Vec<Value>, epoch: String| {
        let node = &node;
        async move {
            let mut reader = connect(node).await?;
            let ok = reader
                .request(json!({"op": "sub", "id": "r", "topic": topic, "from": {"epoch": epoch, "seq": 0}}))
                .await?;
            assert_eq!(ok["op"], "ok", "{ok}");
            let events = recv_n(&mut reader, expected.len()).await?;
            let want: Vec<u64> = (1..=expected.len() as u64).collect();
            assert_eq!(seqs(&events), want);
            for (event, data) in events.iter().zip(&expected) {
                assert_eq!(&event["data"], data);
            }
            reader.ping("nothing-more").await
        }
    };
    check(acked.clone(), epoch.clone()).await?;

    // Space returns: the node reopens its history within seconds and stores again, in the
    // same epoch, right after what was acknowledged.
    let filler = format!("/proc/{}/root{}/filler", node.child.id(), data.display());
    std::fs::remove_file(&filler)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let next = json!({"after": "space came back"});
    loop {
        let (answer, _) = client
            .request(json!({"op": "pub", "topic": topic, "data": next, "ref": "after"}))
            .await
            .map(|a| (a, ()))?;
        if answer["op"] == "ok" {
            assert_eq!(answer["epoch"], epoch.as_str(), "{answer}");
            assert_eq!(answer["seq"], acked.len() as u64 + 1, "{answer}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still refused: {answer}\n{}",
            node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    acked.push(next);
    check(acked, epoch).await?;
    assert_eq!(disk_failed_gauge(&node).await?, "0");
    assert!(
        node.log_tail().contains("history on disk reopened"),
        "{}",
        node.log_tail()
    );
    Ok(())
}

/// The node's `murmur_history_disk_failed` sample.
async fn disk_failed_gauge(node: &NodeProcess) -> anyhow::Result<String> {
    let metrics = murmur::client::http_get(&format!("http://{}", node.admin), "/metrics").await?;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("murmur_history_disk_failed "))
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no murmur_history_disk_failed in /metrics"))
}
