//! A cluster of real `murmur serve` processes on 127.0.0.1: crash (SIGKILL) detection, restart
//! on the same addresses, and recovery from a pause longer than failure detection (SIGSTOP /
//! SIGCONT, which both sides experience as a partition). Prints the measured times.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_murmur");
const KEY: &str = "8zZBlvNQmFXFa3dlht_p6CYvDWd0WWpVLsP2LOurU9U";

struct Node {
    name: String,
    listen: SocketAddr,
    /// The admin port, where `/v1/cluster` is.
    admin: SocketAddr,
    gossip: SocketAddr,
    quic: SocketAddr,
    child: Option<Child>,
}

fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl Node {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            listen: free_tcp(),
            admin: free_tcp(),
            gossip: free_udp(),
            quic: free_udp(),
            child: None,
        }
    }

    fn start(&mut self, seed: SocketAddr) {
        let child = Command::new(BIN)
            .args(["serve", "--name", &self.name])
            .args(["--listen", &self.listen.to_string()])
            .args(["--admin-listen", &self.admin.to_string()])
            .args(["--gossip", &self.gossip.to_string()])
            .args(["--quic", &self.quic.to_string()])
            .args(["--seeds", &seed.to_string()])
            .env("MURMUR_CLUSTER_KEY", KEY)
            .env_remove("MURMUR_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("murmur serve starts");
        self.child = Some(child);
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    fn kill(&mut self) {
        self.signal("-KILL");
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// `name → state` as this node reports it, or None if it does not answer.
    fn states(&self) -> Option<Vec<(String, String)>> {
        let mut stream =
            TcpStream::connect_timeout(&self.admin, Duration::from_millis(500)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(
            stream,
            "GET /v1/cluster HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let body = response.split_once("\r\n\r\n")?.1;
        let view: serde_json::Value = serde_json::from_str(body).ok()?;
        Some(
            view["members"]
                .as_array()?
                .iter()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap_or("").to_owned(),
                        m["state"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect(),
        )
    }

    fn sees(&self, name: &str, state: &str) -> bool {
        self.states()
            .is_some_and(|s| s.iter().any(|(n, st)| n == name && st == state))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

fn all_alive(nodes: &[Node]) -> bool {
    nodes.iter().all(|observer| {
        observer.states().is_some_and(|states| {
            nodes.iter().all(|n| {
                states
                    .iter()
                    .any(|(name, st)| name == &n.name && st == "alive")
            }) && states.iter().filter(|(_, st)| st == "alive").count() == nodes.len()
        })
    })
}

#[test]
fn crash_restart_and_pause_of_real_processes() {
    let mut nodes: Vec<Node> = ["p1", "p2", "p3"].iter().map(|n| Node::new(n)).collect();
    let seed = nodes[0].gossip;
    for node in &mut nodes {
        node.start(seed);
    }
    let formed = wait_until(
        "three processes form a cluster",
        Duration::from_secs(20),
        || all_alive(&nodes),
    );

    // kill -9: the others must mark it down through failure detection.
    nodes[2].kill();
    let detected = wait_until("p1 and p2 see p3 down", Duration::from_secs(15), || {
        nodes[..2].iter().all(|n| n.sees("p3", "down"))
    });

    // Restart on the same addresses: a new generation that everyone accepts.
    nodes[2].start(seed);
    let rejoined = wait_until(
        "the restarted p3 is back in the mesh",
        Duration::from_secs(15),
        || all_alive(&nodes),
    );

    // A pause longer than failure detection: p2 and the others declare each other down;
    // after SIGCONT both sides must find each other again by themselves.
    nodes[1].signal("-STOP");
    wait_until("p1 sees paused p2 down", Duration::from_secs(15), || {
        nodes[0].sees("p2", "down")
    });
    nodes[1].signal("-CONT");
    let healed = wait_until(
        "the cluster reconverges after the pause",
        Duration::from_secs(20),
        || all_alive(&nodes),
    );

    eprintln!(
        "formed {formed:?}; kill -9 detected by all after {detected:?}; restart meshed after {rejoined:?}; \
         reconverged {healed:?} after SIGCONT"
    );
}

/// A node dials the peers whose names sort after its own; when such a peer is declared down
/// without closing its connection (a pause, a partition), the dialling node must still tell
/// its subscribers to resync: what the peer sequences meanwhile never reaches them.
#[test]
fn a_peer_declared_down_makes_the_node_that_dialled_it_resync_its_subscribers() {
    let mut nodes = vec![Node::new("a"), Node::new("b"), Node::new("c")];
    let seed = nodes[0].gossip;
    for node in &mut nodes {
        node.start(seed);
    }
    wait_until("the cluster forms", Duration::from_secs(20), || {
        all_alive(&nodes)
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!("ws://{}/ws", nodes[0].listen);
    let mut subscriber = runtime.block_on(async {
        let mut client = murmur::client::Client::connect(&url).await.unwrap();
        client
            .subscribe_from("s", "news", None, None)
            .await
            .unwrap();
        client
    });
    // "a" dialled "c"; a stopped "c" closes nothing, so only failure detection ends the link.
    nodes[2].signal("-STOP");
    wait_until("a sees c down", Duration::from_secs(20), || {
        nodes[0].sees("c", "down")
    });
    let notice = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), subscriber.next_frame()).await
    });
    nodes[2].signal("-CONT");
    let notice = notice.expect("the subscriber is told to resync in time");
    match notice {
        Ok(frame) => assert_eq!(frame["code"], "resync", "{frame}"),
        Err(closed) => assert!(closed.to_string().contains("4003"), "{closed}"),
    }
}

/// Publishes `data` on `topic` with a `ref` and returns the node's answer (`ok` or `error`).
async fn publish(client: &mut murmur::client::Client, topic: &str, data: u64) -> serde_json::Value {
    let reference = format!("p{data}");
    client
        .send(&serde_json::json!({"op": "pub", "topic": topic, "data": data, "ref": reference}))
        .await
        .unwrap();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(15), client.next_frame())
            .await
            .expect("an answer to the publish")
            .unwrap();
        if frame["ref"] == reference.as_str() {
            return frame;
        }
    }
}

/// The JS client's chat example against a 3-node cluster (replication 2): kill -9 of the
/// node that held a topic's replica, with a publish in flight, restarted the topic in a new
/// epoch every time (resumers got `epoch_changed` from the lost event on). The owner failed
/// the event its replica never confirmed, and renewed the epoch so nobody would reuse the
/// position. Now the event waits for the replica that takes the dead one's place, and the
/// topic carries on in its epoch. SIGSTOP first makes sure the replica never answers.
#[test]
fn a_replica_killed_with_an_event_in_flight_changes_no_epoch() {
    let names = ["r1", "r2", "r3"];
    // A topic that r1 owns, r2 holds the replica of, and r3 holds nothing of.
    let topic = (0..)
        .map(|i| format!("chat.room{i}"))
        .find(|t| murmur::routing::ownership::rank(t, names) == names)
        .unwrap();
    let mut nodes: Vec<Node> = names.iter().map(|n| Node::new(n)).collect();
    let seed = nodes[0].gossip;
    for node in &mut nodes {
        node.start(seed);
    }
    wait_until("the cluster forms", Duration::from_secs(20), || {
        all_alive(&nodes)
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!("ws://{}/ws", nodes[2].listen);
    let mut publisher = runtime
        .block_on(murmur::client::Client::connect(&url))
        .unwrap();
    let mut epoch = String::new();
    for i in 1..=3 {
        let ok = runtime.block_on(publish(&mut publisher, &topic, i));
        assert_eq!(
            (ok["op"].as_str(), ok["seq"].as_u64()),
            (Some("ok"), Some(i)),
            "{ok}"
        );
        epoch = ok["epoch"].as_str().unwrap().to_owned();
    }

    // #4 is sequenced by r1 and sent to r2, which never stores it.
    nodes[1].signal("-STOP");
    runtime.block_on(async {
        publisher
            .send(&serde_json::json!({"op": "pub", "topic": topic, "data": 4, "ref": "p4"}))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    nodes[1].kill();
    wait_until("r1 and r3 see r2 down", Duration::from_secs(20), || {
        [&nodes[0], &nodes[2]].iter().all(|n| n.sees("r2", "down"))
    });

    // The next publish continues the epoch right after #4.
    let ok = runtime.block_on(publish(&mut publisher, &topic, 5));
    assert_eq!(
        (ok["op"].as_str(), ok["epoch"].as_str(), ok["seq"].as_u64()),
        (Some("ok"), Some(epoch.as_str()), Some(5)),
        "the topic's epoch survives the loss of its replica: {ok}"
    );
    // A subscriber resuming after #3 gets #4 and #5, in the epoch it knows, and no gap.
    let resumed = runtime.block_on(async {
        let mut reader = murmur::client::Client::connect(&url).await.unwrap();
        let from = serde_json::json!({"epoch": epoch, "seq": 3});
        reader
            .subscribe_from("s", &topic, None, Some(from))
            .await
            .unwrap();
        let mut frames = Vec::new();
        for _ in 0..2 {
            let frame = tokio::time::timeout(Duration::from_secs(5), reader.next_frame())
                .await
                .expect("a frame")
                .unwrap();
            frames.push(frame);
        }
        frames
    });
    let got: Vec<_> = resumed
        .iter()
        .map(|f| {
            (
                f["op"].as_str(),
                f["epoch"].as_str(),
                f["seq"].as_u64(),
                f["data"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (Some("event"), Some(epoch.as_str()), Some(4), Some(4)),
            (Some("event"), Some(epoch.as_str()), Some(5), Some(5)),
        ],
        "{resumed:?}"
    );
}
