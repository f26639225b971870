//! `murmur history` (through the HTTP API) and `murmur sub --from`, as a user runs them.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{spawn_subscriber, wait_with_timeout};

const BIN: &str = env!("CARGO_BIN_EXE_murmur");

/// A `murmur serve` process, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start() -> Self {
        let free = || {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
        };
        let (addr, admin) = (free(), free());
        let child = Command::new(BIN)
            .args(["serve", "--name", "cli-history"])
            .args(["--listen", &addr.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--gossip", "127.0.0.1:0", "--quic", "127.0.0.1:0"])
            .env_remove("MURMUR_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("murmur serve starts");
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "murmur serve did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn murmur(args: &[&str]) -> std::process::Output {
    let child = Command::new(BIN)
        .args(args)
        .env_remove("MURMUR_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("murmur runs");
    wait_with_timeout(child, Duration::from_secs(20))
}

fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

fn seqs(events: &[serde_json::Value]) -> Vec<u64> {
    events.iter().filter_map(|e| e["seq"].as_u64()).collect()
}

#[test]
fn history_pages_through_retained_events_and_sub_starts_from_history() {
    let server = Server::start();
    let ws = format!("ws://{}/ws", server.addr);
    let http = format!("http://{}", server.addr);
    let mut publish = Command::new(BIN)
        .args(["pub", "log.a", "-", "--url", &ws])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    publish
        .stdin
        .take()
        .unwrap()
        .write_all(b"1\n2\n3\n4\n5\n")
        .unwrap();
    let published = wait_with_timeout(publish, Duration::from_secs(20));
    assert!(published.status.success(), "{published:?}");

    let first = murmur(&["history", "log.a", "--url", &http, "--limit", "3"]);
    assert!(first.status.success(), "{first:?}");
    let events = json_lines(&first.stdout);
    assert_eq!(seqs(&events), [1, 2, 3]);
    assert_eq!(events[0]["data"], 1);
    let said = String::from_utf8_lossy(&first.stderr);
    let next = said
        .split("next: ")
        .nth(1)
        .map(str::trim)
        .unwrap_or_else(|| panic!("the cursor to go on from: {said}"));
    let cursor: serde_json::Value = serde_json::from_str(next).expect("a JSON cursor");
    assert_eq!(cursor["seq"], 3);

    // Its WebSocket URL works too, and the cursor continues where the first run stopped.
    let rest = murmur(&["history", "log.a", "--url", &ws, "--from", next]);
    assert!(rest.status.success(), "{rest:?}");
    assert_eq!(seqs(&json_lines(&rest.stdout)), [4, 5]);

    let from_start = spawn_subscriber(
        BIN,
        &["log.a", "--url", &ws, "--from", "earliest", "--count", "5"],
        "log.a",
    );
    let out = wait_with_timeout(from_start, Duration::from_secs(20));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(seqs(&json_lines(&out.stdout)), [1, 2, 3, 4, 5]);

    let after_cursor = spawn_subscriber(
        BIN,
        &["log.a", "--url", &ws, "--from", next, "--count", "2"],
        "log.a",
    );
    let out = wait_with_timeout(after_cursor, Duration::from_secs(20));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(seqs(&json_lines(&out.stdout)), [4, 5]);

    let wildcard = murmur(&["sub", "log.*", "--url", &ws, "--from", next]);
    assert!(!wildcard.status.success());
    assert!(
        String::from_utf8_lossy(&wildcard.stderr).contains("exact topic"),
        "{wildcard:?}"
    );
    let bad = murmur(&["history", "log.*", "--url", &http]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("invalid_topic"),
        "{bad:?}"
    );
}
