//! Server memory per idle WebSocket connection, measured on a real release node.
//!
//! `cargo run --release -p murmur --example idle_connections -- --connections 19000`
//!
//! Starts one node (`target/release/murmur serve`, or `--murmur PATH`) on free 127.0.0.1
//! ports, then opens the connections in `--steps` equal steps, each one subscribing to its own
//! topic (`idle.<n>`) and waiting for the `ok`. After each step it reads the node's `VmRSS`
//! from `/proc` and prints the total and the growth per connection since the start, and at
//! the end the slope (bytes per connection from the first step to the last, which leaves out
//! what the node allocates once) and the footprint that slope projects for 100,000
//! connections. The connections come from child processes of this same program, at most
//! `--per-process` each, so no process runs into its open-file limit. This is a quick tool
//! for finding where the bytes go; the published figure comes from `make bench`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// How many connection attempts a child keeps in flight.
const CONNECTING_AT_ONCE: usize = 64;
/// How long one connection may take to be welcomed and subscribed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

struct Options {
    connections: usize,
    steps: usize,
    per_process: usize,
    murmur: String,
    /// Extra `murmur serve` arguments, e.g. `--ws-read-buffer=1024`.
    serve_args: Vec<String>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        let url = args.get(1).expect("--child URL COUNT FIRST");
        let count = args[2].parse().expect("count");
        let first = args[3].parse().expect("first topic number");
        child(url, count, first);
        return;
    }
    let mut options = Options {
        connections: 10_000,
        steps: 4,
        per_process: 15_000,
        murmur: "target/release/murmur".to_owned(),
        serve_args: Vec::new(),
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--connections" => options.connections = value().parse().expect("a number"),
            "--steps" => options.steps = value().parse::<usize>().expect("a number").max(1),
            "--per-process" => options.per_process = value().parse().expect("a number"),
            "--murmur" => options.murmur = value(),
            "--" => options.serve_args.extend(args.by_ref()),
            other => panic!(
                "unknown argument {other}; use --connections N --steps N --per-process N \
                 --murmur PATH [-- SERVE ARGS]"
            ),
        }
    }
    measure(&options);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("node status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn measure(options: &Options) {
    let port = free_port();
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let node = Command::new(&options.murmur)
        .args([
            "serve",
            "--name",
            "idle-measure",
            "--listen",
            &listen.to_string(),
        ])
        .args(["--gossip", "127.0.0.1:0", "--quic", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0"])
        // Every connection comes from 127.0.0.1.
        .args(["--max-connections-per-ip", "0"])
        .args(["--log", "warn"])
        .args(&options.serve_args)
        .env(
            "MURMUR_CLUSTER_KEY",
            "suyuTZqbu3lr9ynxhO_hkHS-A4JHPCn_5kPn1QWziCQ",
        )
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", options.murmur));
    let node = KillOnDrop(node);
    let pid = node.0.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(listen).is_err() {
        assert!(
            Instant::now() < deadline,
            "the node did not listen within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let url = format!("ws://{listen}/ws");
    let exe = std::env::current_exe().expect("own path");
    let base = rss_bytes(pid);
    println!("node pid {pid}, idle RSS {:.1} MiB", mib(base));
    println!("| connections | node RSS MiB | bytes per connection since start |");
    println!("|---:|---:|---:|");
    let per_step = options.connections.div_ceil(options.steps);
    let mut children: Vec<(KillOnDrop, ChildStdin)> = Vec::new();
    let mut open = 0;
    let mut samples = Vec::new();
    while open < options.connections {
        let step_end = (open + per_step).min(options.connections);
        while open < step_end {
            let count = (step_end - open).min(options.per_process);
            let mut child = Command::new(&exe)
                .args(["--child", &url, &count.to_string(), &open.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("starts a client process");
            let stdin = child.stdin.take().expect("piped stdin");
            let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
            let mut child = KillOnDrop(child);
            match lines.next() {
                Some(Ok(line)) if line == "ready" => {}
                other => {
                    let _ = child.0.kill();
                    panic!("client process failed at {open} connections: {other:?}");
                }
            }
            children.push((child, stdin));
            open += count;
        }
        std::thread::sleep(Duration::from_secs(1));
        let rss = rss_bytes(pid);
        samples.push((open, rss));
        println!(
            "| {open} | {:.1} | {:.0} |",
            mib(rss),
            (rss.saturating_sub(base)) as f64 / open as f64
        );
    }
    if let (Some(&(n0, r0)), Some(&(n1, r1))) = (samples.first(), samples.last())
        && n1 > n0
    {
        let slope = (r1 as f64 - r0 as f64) / (n1 - n0) as f64;
        println!(
            "slope {n0}..{n1}: {slope:.0} bytes ({:.2} KiB) per connection; \
             100,000 connections ≈ {:.0} MiB",
            slope / 1024.0,
            mib(base) + slope * 100_000.0 / (1024.0 * 1024.0)
        );
    }
    // Closing their stdin ends the client processes; dropping them kills any that linger.
    for (child, stdin) in children {
        drop(stdin);
        drop(child);
    }
    // A graceful stop (SIGTERM), so a profiler wrapped around the node can write its output.
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut node = node;
    while node.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Opens `count` subscribed connections, prints `ready`, and keeps them (answering pings)
/// until stdin closes.
fn child(url: &str, count: usize, first: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let connect = futures_util::stream::iter(first..first + count)
            .map(|n| {
                let url = url.to_owned();
                async move {
                    tokio::time::timeout(CONNECT_TIMEOUT, subscribe(&url, n))
                        .await
                        .unwrap_or_else(|_| panic!("connection {n} timed out"))
                }
            })
            .buffer_unordered(CONNECTING_AT_ONCE);
        let sockets: Vec<_> = connect.collect().await;
        for mut ws in sockets {
            // Reading answers the node's pings, so the connections stay alive.
            tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
        }
        println!("ready");
        let _ = std::io::stdout().flush();
        let mut stop = String::new();
        let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut stop)).await;
    });
}

async fn subscribe(
    url: &str,
    n: usize,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    // Small client buffers: the client's memory is not what is measured.
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false)
        .await
        .unwrap_or_else(|e| panic!("connection {n}: {e}"));
    let sub = format!(r#"{{"op":"sub","id":"s","topic":"idle.{n}"}}"#);
    ws.send(Message::text(sub)).await.expect("sends sub");
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.contains(r#""op":"ok""#) => return ws,
            Some(Ok(Message::Text(text))) if text.contains(r#""op":"error""#) => {
                panic!("connection {n}: {text}")
            }
            Some(Ok(_)) => {}
            other => panic!("connection {n} ended: {other:?}"),
        }
    }
}
