//! What the tests that run the `murmur` binary share.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Waits for `child` to exit; kills it and fails the test after `limit`.
pub fn wait_with_timeout(mut child: Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("command did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Starts `murmur sub …` (stdout piped) and returns once it says on stderr that its
/// subscription to `pattern` is in place.
pub fn spawn_subscriber(bin: &str, args: &[&str], pattern: &str) -> Child {
    let mut sub = Command::new(bin)
        .arg("sub")
        .args(args)
        .env_remove("MURMUR_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(sub.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains(&format!("subscribed to {pattern}")), "{line}");
    sub
}
