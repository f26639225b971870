//! The log under a killed process and a full disk. Both run the test binary again as a child
//! process (the `#[ignore]`d `*_child` tests, which do nothing without their environment):
//! a process cannot `kill -9` itself and go on checking, and a small tmpfs is mounted in a
//! private mount namespace of the child's own.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use bytes::Bytes;
use tempfile::TempDir;

use super::tests::{all, event, open, seqs};
use super::*;
use crate::event::Payload;

const KILL_CHILD: &str = "storage::disk::fault_tests::kill_child";
const FULL_CHILD: &str = "storage::disk::fault_tests::full_disk_child";

/// Arguments that make the test binary run exactly `test`.
fn run_only(test: &str) -> [&str; 5] {
    [
        "--exact",
        test,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]
}

fn test_binary() -> std::path::PathBuf {
    std::env::current_exe().expect("the test binary's path")
}

#[test]
fn a_kill_9_loses_nothing_acknowledged_in_any_fsync_mode() {
    const ACKED: u64 = 150;
    for mode in ["never", "interval", "always"] {
        let dir = TempDir::new().expect("temp dir");
        let mut child = Command::new(test_binary())
            .args(run_only(KILL_CHILD))
            .env("MURMUR_DISK_KILL_DIR", dir.path())
            .env("MURMUR_DISK_KILL_MODE", mode)
            .env("MURMUR_DISK_KILL_BATCHES", ACKED.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the child starts");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut acked = 0;
        for line in stdout.lines() {
            let line = line.expect("the child's output");
            if let Some(n) = line.strip_prefix("acked ") {
                acked = n.parse().expect("a batch number");
                if acked >= ACKED {
                    break;
                }
            }
        }
        // SIGKILL, right after the last acknowledgement.
        child.kill().expect("kills the child");
        let output = child.wait_with_output().expect("the child ends");
        assert!(
            acked >= ACKED,
            "{mode}: the child stopped after {acked} batches: {}",
            String::from_utf8_lossy(&output.stderr)
        );

        let (log, recovered) = open(dir.path());
        assert!(
            recovered.repairs.is_empty(),
            "{mode}: {:?}",
            recovered.repairs
        );
        let highs: Vec<u64> = (0..3)
            .map(|t| log.topic(&format!("k{t}")).expect("a record").high_seq)
            .collect();
        // Every acknowledged batch is there, in every topic it touched.
        assert_eq!(highs, [acked; 3], "{mode}");
        for t in 0..3 {
            let topic = format!("k{t}");
            let events = all(&log, &topic);
            assert_eq!(seqs(&events), (1..=highs[0]).collect::<Vec<_>>(), "{mode}");
            for e in &events {
                super::tests::assert_same(e, &event(&topic, "e", e.seq));
            }
        }
    }
}

/// Appends `MURMUR_DISK_KILL_BATCHES` batches of one event to each of three topics,
/// printing each acknowledged one, then waits to be killed: the last acknowledged batches
/// are the journal's last bytes, which a write buffer left in the process would lose.
#[test]
#[ignore = "run as a child by a_kill_9_loses_nothing_acknowledged_in_any_fsync_mode"]
fn kill_child() {
    let Ok(dir) = std::env::var("MURMUR_DISK_KILL_DIR") else {
        return;
    };
    let mode = match std::env::var("MURMUR_DISK_KILL_MODE").as_deref() {
        Ok("always") => FsyncMode::Always,
        // Longer than the test: no periodic sync happens before the kill.
        Ok("interval") => FsyncMode::Interval(Duration::from_secs(600)),
        _ => FsyncMode::Never,
    };
    let batches: u64 = std::env::var("MURMUR_DISK_KILL_BATCHES")
        .ok()
        .and_then(|n| n.parse().ok())
        .expect("MURMUR_DISK_KILL_BATCHES");
    let (log, _) = DiskLog::open(&dir, mode).expect("opens");
    let mut out = std::io::stdout().lock();
    for seq in 1..=batches {
        let batch: Vec<_> = (0..3).map(|t| event(&format!("k{t}"), "e", seq)).collect();
        log.append(&batch).expect("appends");
        writeln!(out, "acked {seq}")
            .and_then(|()| out.flush())
            .expect("the parent reads");
    }
    // Bounded, should the parent never kill it.
    thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_full_disk_is_a_typed_error_reads_go_on_and_a_reopen_with_room_recovers_everything() {
    // A 1 MiB tmpfs in a user and mount namespace of the child's own (`unshare -rm`: no
    // root needed where unprivileged user namespaces are allowed).
    let probe = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|status| status.success()) {
        println!(
            "note: full-disk test skipped: `unshare --user --map-root-user --mount` is not available here"
        );
        return;
    }
    let dir = TempDir::new().expect("temp dir");
    let output = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=1m murmur-full "$1" || exit 97; shift; exec "$@""#)
        .arg("sh")
        .arg(dir.path())
        .arg(test_binary())
        .args(run_only(FULL_CHILD))
        .env("MURMUR_DISK_FULL_DIR", dir.path())
        .output()
        .expect("the child runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(97) {
        println!(
            "note: full-disk test skipped: cannot mount a tmpfs in a private namespace: {stderr}"
        );
        return;
    }
    assert!(
        output.status.success() && stdout.contains("full-disk child: done"),
        "the child failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    println!("{stdout}");
}

/// Fills a 1 MiB tmpfs, then checks the error, the refusals after it, reads, and a reopen
/// after the tmpfs grew.
#[test]
#[ignore = "run as a child by a_full_disk_is_a_typed_error_reads_go_on_and_a_reopen_with_room_recovers_everything"]
fn full_disk_child() {
    let Ok(dir) = std::env::var("MURMUR_DISK_FULL_DIR") else {
        return;
    };
    let store = Path::new(&dir).join("history");
    let (log, _) = DiskLog::open(&store, FsyncMode::Always).expect("opens on the small tmpfs");
    // Incompressible: fjall compresses journal entries of 4 KiB and more (LZ4).
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let payload: Bytes = (0..16 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_be_bytes()[0]
        })
        .collect::<Vec<u8>>()
        .into();
    let full_event = |seq: u64| {
        Arc::new(Event::new(
            "full".into(),
            "e".into(),
            seq,
            seq.cast_signed(),
            Payload::Binary(payload.clone()),
        ))
    };
    let mut acked = 0;
    let error = loop {
        match log.append(&[full_event(acked + 1)]) {
            Ok(()) => acked += 1,
            Err(error) => break error,
        }
        assert!(acked < 1_000, "a 1 MiB tmpfs took 16 MiB");
    };
    println!("full after {acked} events: {error}");
    assert!(matches!(error, StorageError::DiskFull(_)), "{error:?}");
    assert!(acked >= 3, "the store should hold a few events first");
    // Every later write is refused, still as a full disk; reads go on.
    let again = log.append(&[event("other", "e", 1)]).expect_err("refused");
    assert!(
        matches!(
            again,
            StorageError::Failed {
                disk_full: true,
                ..
            }
        ),
        "{again:?}"
    );
    let read = log.read("full", 1, usize::MAX, usize::MAX).expect("reads");
    assert_eq!(read.len() as u64, acked);
    drop(log);

    let grown = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&dir)
        .status()
        .expect("mount runs");
    assert!(grown.success(), "remount: {grown}");
    let (log, recovered) = DiskLog::open(&store, FsyncMode::Always).expect("reopens with room");
    assert!(recovered.repairs.is_empty(), "{:?}", recovered.repairs);
    let record = log.topic("full").expect("a record");
    assert!(record.high_seq >= acked, "{} < {acked}", record.high_seq);
    let events = all(&log, "full");
    assert_eq!(seqs(&events), (1..=record.high_seq).collect::<Vec<_>>());
    assert!(
        events
            .iter()
            .all(|e| e.payload == Payload::Binary(payload.clone()))
    );
    log.append(&[full_event(record.high_seq + 1)])
        .expect("appends again once there is room");
    println!(
        "full-disk child: done ({acked} acknowledged, {} after the reopen)",
        record.high_seq
    );
}
