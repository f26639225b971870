//! Three `murmur serve` processes on 127.0.0.1, started fresh for each load so that one
//! load's leftovers (memory the allocator keeps, topics, history) never count against the
//! next one.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The node names; ownership is computed over them (`owner_of`).
pub const NAMES: [&str; 3] = ["n1", "n2", "n3"];

/// How the cluster is started.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub murmur: PathBuf,
    /// Node i listens on `base_port + 10 i` (HTTP/WebSocket), `+1` (gossip), `+2` (QUIC),
    /// `+3` (admin).
    pub base_port: u16,
    /// The shared cluster key (`murmur keygen` output), passed in the environment.
    pub cluster_key: String,
    /// Where each node's log goes: `<dir>/<name>.log`.
    pub log_dir: PathBuf,
    /// `ulimit -n` for each node, where the load asks for one.
    pub open_files: [Option<u32>; 3],
}

pub struct Node {
    pub name: &'static str,
    pub pid: u32,
    pub port: u16,
    pub log: PathBuf,
    child: Child,
    exit: Option<ExitStatus>,
}

impl Node {
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
}

/// Runs `murmur keygen` once: a key the nodes accept (short or repeated keys are refused).
pub async fn keygen(murmur: &Path) -> anyhow::Result<String> {
    let out = Command::new(murmur)
        .arg("keygen")
        .output()
        .await
        .with_context(|| format!("run {} keygen", murmur.display()))?;
    if !out.status.success() {
        bail!(
            "murmur keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// The node (index into `NAMES`) that owns `topic` while all three are up.
pub fn owner_of(topic: &str) -> usize {
    let owner = murmur::routing::ownership::owner(topic, NAMES).unwrap_or(NAMES[0]);
    NAMES.iter().position(|n| *n == owner).unwrap_or(0)
}

/// The first topic `<prefix><i>` that `node` owns.
pub fn topic_owned_by(prefix: &str, node: usize) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|t| owner_of(t) == node)
        .unwrap_or_else(|| format!("{prefix}0"))
}

impl Cluster {
    pub async fn start(spec: &ClusterSpec) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&spec.log_dir)?;
        let seeds = format!(
            "127.0.0.1:{},127.0.0.1:{}",
            spec.base_port + 1,
            spec.base_port + 11
        );
        let mut nodes = Vec::new();
        for (i, name) in NAMES.iter().enumerate() {
            let base = spec.base_port + 10 * u16::try_from(i)?;
            let log = spec.log_dir.join(format!("{name}.log"));
            let file = std::fs::File::create(&log)?;
            let serve = [
                "serve".to_owned(),
                "--name".to_owned(),
                (*name).to_owned(),
                "--listen".to_owned(),
                format!("127.0.0.1:{base}"),
                "--gossip".to_owned(),
                format!("127.0.0.1:{}", base + 1),
                "--quic".to_owned(),
                format!("127.0.0.1:{}", base + 2),
                "--admin-listen".to_owned(),
                format!("127.0.0.1:{}", base + 3),
                "--seeds".to_owned(),
                seeds.clone(),
                "--log-format".to_owned(),
                "json".to_owned(),
            ];
            // A lower open-file limit goes through the shell's `ulimit`, then `exec`, so the
            // pid is the node's.
            let mut command = match spec.open_files[i] {
                Some(limit) => {
                    let mut c = Command::new("sh");
                    c.arg("-c")
                        .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                        .arg(&spec.murmur)
                        .args(&serve);
                    c
                }
                None => {
                    let mut c = Command::new(&spec.murmur);
                    c.args(&serve);
                    c
                }
            };
            let child = command
                .env("MURMUR_CLUSTER_KEY", &spec.cluster_key)
                .stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("start {}", spec.murmur.display()))?;
            let pid = child.id().context("the node exited at once")?;
            nodes.push(Node {
                name,
                pid,
                port: base,
                log,
                child,
                exit: None,
            });
        }
        let mut cluster = Self { nodes };
        cluster.wait_ready(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// Until every node answers 200 on `/readyz` (joined, linked to every peer).
    async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let mut ready = 0;
            for node in &self.nodes {
                if matches!(http_get(node.port, "/readyz").await, Ok((200, _))) {
                    ready += 1;
                }
            }
            if ready == self.nodes.len() {
                return Ok(());
            }
            let dead = self.dead();
            if !dead.is_empty() {
                bail!("nodes exited while starting: {}", dead.join(", "));
            }
            if started.elapsed() > limit {
                bail!("the nodes were not all ready within {limit:?}; see their logs");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The nodes that have exited, each with how; remembers the exits.
    pub fn dead(&mut self) -> Vec<String> {
        let mut dead = Vec::new();
        for node in &mut self.nodes {
            if node.exit.is_none()
                && let Ok(Some(status)) = node.child.try_wait()
            {
                node.exit = Some(status);
            }
            if let Some(status) = node.exit {
                dead.push(format!("{} ({status})", node.name));
            }
        }
        dead
    }

    pub fn exited(&self, node: usize) -> Option<ExitStatus> {
        self.nodes[node].exit
    }

    /// Kills every node that still runs and waits for it.
    pub async fn stop(mut self) {
        self.dead();
        for node in &mut self.nodes {
            if node.exit.is_none() {
                let _ = node.child.kill().await;
            }
        }
    }
}

/// A bare HTTP/1.1 GET on 127.0.0.1 (no client library: the probe must not hide a stuck
/// node behind retries): the status code and body.
pub async fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut answer = Vec::new();
        stream.take(64 * 1024).read_to_end(&mut answer).await?;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no HTTP status line")?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(3), exchange)
        .await
        .context("no answer within 3 s")?
}
