//! Nodes as `murmur serve` processes, for what an in-process node cannot show: a `kill -9`
//! (nothing flushed, nothing closed) and a restart on the same data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{TEST_CLUSTER_KEY, murmur_binary};

/// A `murmur serve` process; killed (`SIGKILL`) when dropped.
#[derive(Debug)]
pub struct NodeProcess {
    pub name: String,
    pub child: Child,
    pub listen: SocketAddr,
    /// `/v1/cluster` and `/metrics`.
    pub admin: SocketAddr,
    pub gossip: SocketAddr,
    /// Where the node's stderr goes (its log), for a failing test to show.
    pub log: PathBuf,
}

/// A UDP port free on 127.0.0.1 right now.
pub fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free TCP port")
}

impl NodeProcess {
    /// Starts `murmur serve` named `name` on `gossip`, seeded with `seeds`, with `args` on
    /// top, logging to `log_dir/<name>.log` (appended to, so a restart's log follows).
    pub fn spawn(
        name: &str,
        gossip: SocketAddr,
        seeds: &[SocketAddr],
        args: &[&str],
        log_dir: &Path,
    ) -> Self {
        Self::spawn_under(&[], name, gossip, seeds, args, log_dir)
    }

    /// [`Self::spawn`], with the node's command line given to `wrapper` (a program and
    /// its first arguments, e.g. `unshare … sh -c …`) rather than run itself; the wrapper
    /// must `exec` it, so that the child is the node.
    pub fn spawn_under(
        wrapper: &[&str],
        name: &str,
        gossip: SocketAddr,
        seeds: &[SocketAddr],
        args: &[&str],
        log_dir: &Path,
    ) -> Self {
        let (listen, admin) = (free_tcp(), free_tcp());
        let log = log_dir.join(format!("{name}.log"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("the node's log file opens");
        let mut command = match wrapper.split_first() {
            Some((program, first)) => {
                let mut command = Command::new(program);
                command.args(first).arg(murmur_binary());
                command
            }
            None => Command::new(murmur_binary()),
        };
        command
            .args(["serve", "--name", name, "--listen", &listen.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--gossip", &gossip.to_string()])
            .args(["--quic", &free_udp().to_string()])
            .args(args)
            .env("MURMUR_CLUSTER_KEY", TEST_CLUSTER_KEY)
            .env("MURMUR_LOG", "info")
            .env_remove("MURMUR_CONFIG")
            .stdout(Stdio::null())
            .stderr(stderr);
        if !seeds.is_empty() {
            let seeds: Vec<String> = seeds.iter().map(ToString::to_string).collect();
            command.args(["--seeds", &seeds.join(",")]);
        }
        let child = command.spawn().expect("murmur serve starts");
        Self {
            name: name.to_owned(),
            child,
            listen,
            admin,
            gossip,
            log,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.listen)
    }

    /// Waits until `/readyz` answers 200 (the node serves and sees its cluster).
    pub async fn wait_ready(&mut self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let url = format!("http://{}", self.listen);
            if murmur::client::http_get(&url, "/readyz").await.is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}): {}", self.name, self.log_tail());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} not ready within {limit:?}: {}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `SIGKILL`: the process stops where it is, as in a power cut of the process (the
    /// kernel keeps what it was handed).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last lines of the node's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
