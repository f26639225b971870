//! A node that runs out of file descriptors says so (once, not per failed accept) and does
//! not spin on the pending connections.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_murmur");

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// User plus system CPU time of `pid`, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("a command name")
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after `)`.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn out_of_file_descriptors_is_logged_once_and_accepting_does_not_spin() {
    let (listen, admin) = (free_port(), free_port());
    // 60 files: enough to start, far too few for the connections below. `exec` keeps the
    // pid, and the hard limit stops the node from raising it.
    let script = format!(
        "ulimit -n 60 && exec {BIN} serve --name fd-test --listen {listen} \
         --admin-listen {admin} --gossip 127.0.0.1:0 --quic 127.0.0.1:0 --handshake-timeout 60s"
    );
    let mut node = Command::new("sh")
        .args(["-c", &script])
        .env_remove("MURMUR_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(admin).is_err() {
        assert!(Instant::now() < deadline, "the node did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The kernel completes these handshakes in the listen backlog; the node runs out of
    // descriptors accepting them, and the rest keep its listening socket readable.
    let held: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(listen).ok())
        .collect();
    assert!(held.len() > 60, "only {} connections", held.len());
    std::thread::sleep(Duration::from_secs(1));
    let before = cpu_ticks(node.id());
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks(node.id()) - before;
    assert!(
        spent < 40,
        "the node spent {spent} ticks of CPU in 2 s with nothing to do but failed accepts"
    );
    let _ = node.kill();
    let _ = node.wait();
    drop(held);
    let mut log = String::new();
    node.stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let lines = log
        .lines()
        // The admin listener may log its own line: the test's startup probes can still be
        // in its backlog when the descriptors run out.
        .filter(|l| l.contains("cannot accept connections") && l.contains("listener=\"client\""))
        .count();
    assert_eq!(lines, 1, "one line per 10 s, not one per failure:\n{log}");
}
