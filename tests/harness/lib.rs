//! Test harness: real Murmur nodes on 127.0.0.1 with OS-assigned ports, and a WebSocket
//! client that speaks the protocol frame by frame. Every wait is bounded.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use murmur::{RunningNode, Settings};
use murmur_proto::client::v1 as pb;
use prost::Message as _;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

pub mod process;

/// How long any single expected frame may take to arrive.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts a node on 127.0.0.1 with a free port; `tweak` adjusts the settings first.
pub async fn start_node(tweak: impl FnOnce(&mut Settings)) -> RunningNode {
    // MURMUR_TEST_LOG=murmur=debug shows the nodes' logs in failing tests.
    if let Ok(filter) = std::env::var("MURMUR_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let mut settings = Settings {
        name: "test-node".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        gossip: "127.0.0.1:0".parse().unwrap(),
        quic: "127.0.0.1:0".parse().unwrap(),
        ..Settings::default()
    };
    tweak(&mut settings);
    RunningNode::start(settings).await.expect("node starts")
}

/// The `murmur` binary of this build (`make test` builds it before the tests run).
pub fn murmur_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory");
    let bin = dir.join("murmur");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p murmur`, which `make test` does)",
        bin.display()
    );
    bin
}

/// The cluster key of test clusters (made with `murmur keygen`; it only ever guards nodes
/// on 127.0.0.1 that a test starts).
pub const TEST_CLUSTER_KEY: &str = "rhzr6uV9q-itgxq40nPRrBj37lcLzbdepBsYOaJZ57E";

/// The HMAC secret of test nodes with `auth = token` (see [`token_auth`]).
pub const TEST_TOKEN_SECRET: &str = "murmur-tests-token-secret-0123456789abcdef";

/// Settings for `auth = token`, checking tokens signed by [`sign_token`].
pub fn token_auth(s: &mut Settings) {
    s.auth = murmur::config::AuthMode::Token;
    s.token_hmac_secret = Some(murmur::config::Secret(TEST_TOKEN_SECRET.into()));
}

/// `claims` as an HS256 token signed with [`TEST_TOKEN_SECRET`].
pub fn sign_token(claims: &murmur::auth::token::TokenClaims) -> String {
    use murmur::auth::token::{Algorithm, EncodingKey, mint};
    let key = EncodingKey::from_secret(TEST_TOKEN_SECRET.as_bytes()).expect("an HMAC key");
    mint(claims, Algorithm::HS256, None, &key).expect("a token")
}

/// Permissions to publish, subscribe and read history within the given patterns.
pub fn permissions(
    publish: &[&str],
    subscribe: &[&str],
    history: &[&str],
) -> murmur::auth::PermissionClaim {
    let list = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect();
    murmur::auth::PermissionClaim {
        publish: list(publish),
        subscribe: list(subscribe),
        history: list(history),
        deny: murmur::auth::DenyClaim::default(),
    }
}

/// A second valid cluster key, for nodes that must not be able to join a test cluster.
pub const OTHER_CLUSTER_KEY: &str = "5lW7SwywQn9VWnVByoIyWJBv42pQzqKlsmBTm_UPpYI";

/// The gossip address a node advertises, for use as a seed.
pub fn gossip_addr(node: &RunningNode) -> String {
    let view = node.state().cluster.gossip.view.read();
    view.myself()
        .expect("a node knows itself")
        .gossip
        .to_string()
}

/// Names of the members `node` sees in `state` ("alive", "down", "left", "suspect").
pub fn members_in_state(node: &RunningNode, state: &str) -> Vec<String> {
    node.state()
        .cluster
        .members()
        .into_iter()
        .filter(|m| serde_json::to_value(m.state).ok() == Some(json!(state)))
        .map(|m| m.name)
        .collect()
}

/// Names of the peers `node` has a live link to.
pub fn linked_peers(node: &RunningNode) -> Vec<String> {
    let mut names: Vec<String> = node
        .state()
        .cluster
        .links()
        .iter()
        .map(|l| l.name.to_string())
        .collect();
    names.sort();
    names
}

/// Polls `condition` every 20 ms until it holds; fails after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `n` nodes named node-0.. that join through node-0, and waits for a full mesh:
/// every node sees every other alive and holds a link to it.
pub async fn start_cluster(n: usize, tweak: impl Fn(usize, &mut Settings)) -> Vec<RunningNode> {
    let mut nodes: Vec<RunningNode> = Vec::new();
    for i in 0..n {
        let seeds = nodes.first().map(gossip_addr).into_iter().collect();
        let node = start_node(|s| {
            s.name = format!("node-{i}");
            s.seeds = seeds;
            s.cluster_key = Some(murmur::config::Secret(TEST_CLUSTER_KEY.into()));
            tweak(i, s);
        })
        .await;
        nodes.push(node);
    }
    wait_for_mesh(&nodes).await;
    nodes
}

/// Waits until every node sees all of `nodes` alive and is linked to all the others.
pub async fn wait_for_mesh(nodes: &[RunningNode]) {
    let n = nodes.len();
    wait_until(
        "the cluster is a full mesh",
        Duration::from_secs(20),
        || {
            nodes.iter().all(|node| {
                members_in_state(node, "alive").len() == n && linked_peers(node).len() == n - 1
            })
        },
    )
    .await;
}

pub fn ws_url(node: &RunningNode) -> String {
    format!("ws://{}/ws", node.local_addr())
}

/// The base URL of a node's admin port (`/metrics`, `/v1/cluster`).
pub fn admin_url(node: &RunningNode) -> String {
    format!("http://{}", node.admin_addr())
}

/// What the node sent, or how the connection ended.
#[derive(Debug)]
pub enum Received {
    Frame(Message),
    Closed(Option<CloseFrame>),
}

pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    /// Connects and consumes the `welcome` frame (returned).
    pub async fn connect_json(node: &RunningNode) -> anyhow::Result<(Self, Value)> {
        let mut client = Self::connect_url(&ws_url(node)).await?;
        let welcome = client.recv_json().await?;
        if welcome["op"] != "welcome" {
            bail!("expected welcome, got {welcome}");
        }
        Ok((client, welcome))
    }

    /// Connects with `?format=protobuf` and consumes the `welcome` frame.
    pub async fn connect_protobuf(node: &RunningNode) -> anyhow::Result<(Self, pb::Welcome)> {
        let mut client = Self::connect_url(&format!("{}?format=protobuf", ws_url(node))).await?;
        match client.recv_proto().await?.op {
            Some(pb::server_frame::Op::Welcome(w)) => Ok((client, w)),
            other => bail!("expected welcome, got {other:?}"),
        }
    }

    pub async fn connect_url(url: &str) -> anyhow::Result<Self> {
        let (ws, _) = tokio::time::timeout(FRAME_TIMEOUT, connect_async(url))
            .await
            .context("connect timed out")?
            .with_context(|| format!("connect to {url}"))?;
        Ok(Self { ws })
    }

    /// Connects to a `wss://` URL, checking the node's certificate with `tls` (see
    /// [`TestPki::client_config`]).
    pub async fn connect_url_tls(
        url: &str,
        tls: std::sync::Arc<rustls::ClientConfig>,
    ) -> anyhow::Result<Self> {
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            url,
            None,
            true,
            Some(tokio_tungstenite::Connector::Rustls(tls)),
        );
        let (ws, _) = tokio::time::timeout(FRAME_TIMEOUT, connect)
            .await
            .context("connect timed out")?
            .with_context(|| format!("connect to {url}"))?;
        Ok(Self { ws })
    }

    pub async fn send_json(&mut self, frame: Value) -> anyhow::Result<()> {
        self.send_text(&frame.to_string()).await
    }

    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    pub async fn send_binary(&mut self, bytes: impl Into<Bytes>) -> anyhow::Result<()> {
        self.ws.send(Message::binary(bytes.into())).await?;
        Ok(())
    }

    pub async fn send_proto(&mut self, op: pb::client_frame::Op) -> anyhow::Result<()> {
        self.send_binary(pb::ClientFrame { op: Some(op) }.encode_to_vec())
            .await
    }

    /// The next data frame or the end of the connection, skipping WebSocket pings/pongs.
    pub async fn recv(&mut self) -> anyhow::Result<Received> {
        loop {
            let next = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next())
                .await
                .context("no frame from the node in time")?;
            match next {
                None => return Ok(Received::Closed(None)),
                Some(Err(err)) => return Err(anyhow!("socket error: {err}")),
                Some(Ok(Message::Close(frame))) => return Ok(Received::Closed(frame)),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(message)) => return Ok(Received::Frame(message)),
            }
        }
    }

    pub async fn recv_json(&mut self) -> anyhow::Result<Value> {
        match self.recv().await? {
            Received::Frame(Message::Text(text)) => {
                serde_json::from_str(text.as_str()).context("node sent invalid JSON")
            }
            other => bail!("expected a JSON text frame, got {other:?}"),
        }
    }

    pub async fn recv_proto(&mut self) -> anyhow::Result<pb::ServerFrame> {
        match self.recv().await? {
            Received::Frame(Message::Binary(bytes)) => {
                pb::ServerFrame::decode(bytes).context("node sent an invalid ServerFrame")
            }
            other => bail!("expected a protobuf binary frame, got {other:?}"),
        }
    }

    /// Sends a request and returns the next frame, which must answer it.
    pub async fn request(&mut self, frame: Value) -> anyhow::Result<Value> {
        self.send_json(frame).await?;
        self.recv_json().await
    }

    /// Sends raw text and returns the next frame.
    pub async fn request_text(&mut self, text: &str) -> anyhow::Result<Value> {
        self.send_text(text).await?;
        self.recv_json().await
    }

    pub async fn sub(&mut self, id: &str, topic: &str) -> anyhow::Result<()> {
        let reply = self
            .request(json!({"op": "sub", "id": id, "topic": topic}))
            .await?;
        expect_ok(&reply, id)
    }

    pub async fn sub_group(&mut self, id: &str, topic: &str, group: &str) -> anyhow::Result<()> {
        let reply = self
            .request(json!({"op": "sub", "id": id, "topic": topic, "group": group}))
            .await?;
        expect_ok(&reply, id)
    }

    /// Publishes with a ref and returns the `ok` (with epoch and seq). Events this client
    /// receives meanwhile are returned too, so none is lost to the caller.
    pub async fn publish(
        &mut self,
        topic: &str,
        data: Value,
        reference: &str,
    ) -> anyhow::Result<(Value, Vec<Value>)> {
        self.send_json(json!({"op": "pub", "topic": topic, "data": data, "ref": reference}))
            .await?;
        let mut events = Vec::new();
        loop {
            let frame = self.recv_json().await?;
            match frame["op"].as_str() {
                Some("event") => events.push(frame),
                Some("ok") if frame["ref"] == reference => return Ok((frame, events)),
                _ => bail!("unexpected answer to pub {reference}: {frame}"),
            }
        }
    }

    /// Answers a WebSocket-level check that the connection is alive and in sync:
    /// sends `ping` with `reference` and expects the matching `pong` next.
    pub async fn ping(&mut self, reference: &str) -> anyhow::Result<()> {
        let pong = self
            .request(json!({"op": "ping", "ref": reference}))
            .await?;
        if pong["op"] != "pong" || pong["ref"] != reference {
            bail!("expected pong {reference}, got {pong}");
        }
        Ok(())
    }

    /// Receives events until one on `sentinel_topic` arrives; returns those before it.
    pub async fn events_until(&mut self, sentinel_topic: &str) -> anyhow::Result<Vec<Value>> {
        let mut events = Vec::new();
        loop {
            let frame = self.recv_json().await?;
            if frame["op"] != "event" {
                bail!("expected an event, got {frame}");
            }
            if frame["topic"] == sentinel_topic {
                return Ok(events);
            }
            events.push(frame);
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Drops the connection without a close handshake, as a crashed client would.
    pub fn abandon(self) {
        drop(self.ws);
    }
}

/// The `seq` of each event frame.
pub fn seqs(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["seq"].as_u64().unwrap_or(0))
        .collect()
}

/// The next `n` JSON frames.
pub async fn recv_n(client: &mut WsClient, n: usize) -> anyhow::Result<Vec<Value>> {
    let mut frames = Vec::with_capacity(n);
    for _ in 0..n {
        frames.push(client.recv_json().await?);
    }
    Ok(frames)
}

pub fn expect_ok(reply: &Value, reference: &str) -> anyhow::Result<()> {
    if reply["op"] != "ok" || reply["ref"] != reference {
        bail!("expected ok for {reference}, got {reply}");
    }
    Ok(())
}

/// Asserts `frame` is an `error` with `code` answering `reference` (None: no ref).
pub fn expect_error(frame: &Value, code: &str, reference: Option<&str>) {
    assert_eq!(frame["op"], "error", "expected an error frame, got {frame}");
    assert_eq!(frame["code"], code, "wrong code in {frame}");
    match reference {
        Some(r) => assert_eq!(frame["ref"], r, "wrong ref in {frame}"),
        None => assert!(frame.get("ref").is_none(), "unexpected ref in {frame}"),
    }
    assert!(
        frame["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {frame}"
    );
}

/// Waits until every node in `nodes` except `except` knows at least `count` peer interests,
/// so that whichever node owns a topic forwards its events to the subscriber's node.
pub async fn wait_for_interest_everywhere(nodes: &[RunningNode], except: usize, count: usize) {
    wait_until(
        "interest has reached every node",
        Duration::from_secs(10),
        || {
            nodes
                .iter()
                .enumerate()
                .all(|(i, n)| i == except || n.state().broker.peer_interests() >= count)
        },
    )
    .await;
}

/// Connects to the next of `urls` (round-robin) and reads its welcome; None, after a short
/// pause, when that node does not answer (it may be restarting).
async fn connect_next(
    urls: &std::sync::Mutex<Vec<String>>,
    attempt: &mut usize,
) -> Option<WsClient> {
    let url = {
        let urls = urls.lock().unwrap();
        urls[*attempt % urls.len()].clone()
    };
    *attempt += 1;
    match WsClient::connect_url(&url).await {
        Ok(mut client) => client.recv_json().await.ok().map(|_| client),
        Err(_) => {
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// What a resuming subscriber received.
#[derive(Debug, Default, Clone)]
pub struct Record {
    pub events: Vec<Value>,
    pub gaps: Vec<Value>,
    pub reconnects: usize,
    /// Events that arrived after a later one of their topic, or twice: the client's cursor
    /// rejects them, so the node must never send them.
    pub out_of_order: Vec<Value>,
}

impl Record {
    /// (topic, epoch, seq) of every event received.
    pub fn positions(&self) -> std::collections::HashSet<(String, String, u64)> {
        self.events.iter().map(position).collect()
    }
}

pub fn position(frame: &Value) -> (String, String, u64) {
    (
        frame["topic"].as_str().unwrap_or_default().to_owned(),
        frame["epoch"].as_str().unwrap_or_default().to_owned(),
        frame["seq"].as_u64().unwrap_or_default(),
    )
}

/// A subscriber that behaves as a careful client should: when its connection ends it
/// reconnects to the next URL in `urls` and resumes from its cursor. Runs until `stop`.
pub fn resuming_subscriber(
    urls: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pattern: String,
    record: std::sync::Arc<std::sync::Mutex<Record>>,
    stop: tokio::sync::watch::Receiver<bool>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ready = Some(ready);
        let mut cursor = murmur::client::ResumeCursor::starting_at(0);
        let mut attempt = 0usize;
        let mut resuming = false;
        while !*stop.borrow() {
            let Some(mut client) = connect_next(&urls, &mut attempt).await else {
                continue;
            };
            let mut sub = json!({"op": "sub", "id": "r", "topic": pattern});
            if resuming {
                sub["from"] = cursor.to_from(&pattern);
                record.lock().unwrap().reconnects += 1;
            }
            if client.send_json(sub).await.is_err() {
                continue;
            }
            resuming = true;
            loop {
                if *stop.borrow() {
                    return;
                }
                let frame = tokio::select! {
                    frame = client.recv() => frame,
                    () = tokio::time::sleep(Duration::from_millis(200)) => continue,
                };
                let frame = match frame {
                    Ok(Received::Frame(Message::Text(text))) => {
                        serde_json::from_str::<Value>(text.as_str()).unwrap_or_default()
                    }
                    _ => break,
                };
                match frame["op"].as_str() {
                    Some("ok") => {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(());
                        }
                    }
                    Some("event") => {
                        if cursor.observe(&frame) {
                            record.lock().unwrap().events.push(frame);
                        } else {
                            record.lock().unwrap().out_of_order.push(frame);
                        }
                    }
                    Some("gap") => {
                        cursor.observe(&frame);
                        record.lock().unwrap().gaps.push(frame);
                    }
                    _ => {}
                }
            }
        }
    })
}

/// Acknowledged publishes, as (topic, epoch, seq).
pub type Acked = std::sync::Arc<std::sync::Mutex<Vec<(String, String, u64)>>>;

/// A publisher that round-robins over `topics`, waits for each `ok`, and moves to the next
/// URL when its node goes away. Runs until `stop`; returns how many publishes failed.
pub fn steady_publisher(
    urls: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    topics: Vec<String>,
    acked: Acked,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut failed = 0;
        let mut attempt = 0usize;
        let mut n = 0usize;
        'connect: while !*stop.borrow() {
            let Some(mut client) = connect_next(&urls, &mut attempt).await else {
                continue;
            };
            while !*stop.borrow() {
                let topic = &topics[n % topics.len()];
                n += 1;
                let reference = format!("p{n}");
                if client
                    .send_json(json!({"op": "pub", "topic": topic, "data": n, "ref": reference}))
                    .await
                    .is_err()
                {
                    failed += 1;
                    continue 'connect;
                }
                let answer = loop {
                    match client.recv_json().await {
                        Ok(frame) if frame["ref"] == reference.as_str() => break Some(frame),
                        Ok(_) => continue,
                        Err(_) => break None,
                    }
                };
                match answer {
                    Some(frame) if frame["op"] == "ok" => acked.lock().unwrap().push((
                        topic.clone(),
                        frame["epoch"].as_str().unwrap_or_default().to_owned(),
                        frame["seq"].as_u64().unwrap_or_default(),
                    )),
                    Some(_) => failed += 1,
                    None => {
                        failed += 1;
                        continue 'connect;
                    }
                }
            }
        }
        failed
    })
}

/// A private CA and a certificate it issued for 127.0.0.1 and localhost, as PEM files in a
/// directory of their own (removed on drop): what a node needs for TLS on its client port.
pub struct TestPki {
    pub dir: std::path::PathBuf,
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl TestPki {
    pub fn new(label: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "murmur-test-pki-{label}-{}-{n}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("a directory for the test PKI");
        let ca_key = rcgen::KeyPair::generate().expect("a CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "murmur test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("a CA certificate");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("a node key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("a node certificate");
        let pki = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("node.pem"),
            key: dir.join("node.key"),
            dir,
        };
        std::fs::write(&pki.ca, ca_cert.pem()).expect("write ca.pem");
        std::fs::write(&pki.cert, cert.pem()).expect("write node.pem");
        std::fs::write(&pki.key, key.serialize_pem()).expect("write node.key");
        pki
    }

    /// Client TLS that trusts this CA only.
    pub fn client_config(&self) -> std::sync::Arc<rustls::ClientConfig> {
        murmur::client::tls_config(Some(&self.ca)).expect("the test CA loads")
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A raw client socket, for tests that write frames exactly as they want them.
pub type RawSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The next data frame (pings and pongs skipped), within [`FRAME_TIMEOUT`].
pub async fn next_raw_message(ws: &mut RawSocket) -> anyhow::Result<Message> {
    loop {
        let message = tokio::time::timeout(FRAME_TIMEOUT, ws.next())
            .await?
            .ok_or_else(|| anyhow!("connection ended"))??;
        if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
            return Ok(message);
        }
    }
}

/// The next text frame as JSON, with its length in bytes.
pub async fn next_raw_json(ws: &mut RawSocket) -> anyhow::Result<(Value, usize)> {
    match next_raw_message(ws).await? {
        Message::Text(text) => Ok((serde_json::from_str(text.as_str())?, text.len())),
        other => bail!("expected a text frame, got {other:?}"),
    }
}

/// Sends every frame with one flush, so they reach the node together.
pub async fn send_together(ws: &mut RawSocket, frames: Vec<Message>) -> anyhow::Result<()> {
    for frame in frames {
        ws.feed(frame).await?;
    }
    ws.flush().await?;
    Ok(())
}

/// A topic whose owner (in `node`'s view) is `owner`: `prefix` and the first number that
/// makes one.
pub fn topic_owned_by(node: &RunningNode, prefix: &str, owner: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|t| node.state().cluster.placement(t)[0] == owner)
        .expect("some topic is owned by every member")
}

/// Halts the nodes named in `doomed`, as crashes, and waits until the others see them down;
/// returns the others.
pub async fn crash(nodes: Vec<RunningNode>, doomed: &[String]) -> Vec<RunningNode> {
    let mut survivors = Vec::new();
    for node in nodes {
        if doomed.contains(&node.state().cluster.name().to_owned()) {
            node.halt();
        } else {
            survivors.push(node);
        }
    }
    wait_until(
        "the survivors see the crashed nodes down",
        Duration::from_secs(15),
        || {
            survivors
                .iter()
                .all(|n| members_in_state(n, "down").len() == doomed.len())
        },
    )
    .await;
    survivors
}
