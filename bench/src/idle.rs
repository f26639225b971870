//! Scenario `idle`: C connections to ONE node, each with one subscription (its own topic),
//! doing nothing but answering pings. The server's memory per connection comes from its
//! resident set (`VmRSS` in `/proc/<pid>/status`), read before the first connection and at
//! each step (e.g. 1k, 5k, 10k, 19k connections): per connection overall, the slope between
//! steps (flat means the cost is per connection, not a one-off), and the footprint at
//! 100,000 connections projected from the slope.
//!
//! One process can hold only so many sockets (20,000 open files here), so the connections
//! are held by child processes of this binary (`idle-hold`), at most `per_process` each.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use crate::client::Conn;
use crate::common::Common;
use crate::report::emit;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Process id of the node the URL points at (its memory is measured).
    #[arg(long)]
    pub server_pid: u32,
    /// Connection counts at which the node's memory is read, ascending.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000,19000")]
    pub steps: Vec<usize>,
    /// Connections held by one load-generator process at most.
    #[arg(long, default_value_t = 5_000)]
    pub per_process: usize,
    /// Wait after each step before reading the memory, in ms.
    #[arg(long, default_value_t = 2_000)]
    pub settle_ms: u64,
}

/// Arguments of one holding process.
#[derive(Debug, clap::Args)]
pub struct HoldArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long)]
    pub connections: usize,
    /// Topic number of the first connection (each connection subscribes to its own topic).
    #[arg(long, default_value_t = 0)]
    pub first_topic: usize,
}

const CONNECT_CONCURRENCY: usize = 64;

/// A holding process: connects, subscribes, says `ready <n>` on stdout, keeps every
/// connection alive until stdin closes, then says `dropped <n>` (connections the server
/// closed meanwhile) and exits.
pub async fn hold(args: HoldArgs) -> anyhow::Result<()> {
    let target = args.common.target();
    let url = args.common.url.first().context("a URL")?.clone();
    let dropped = Arc::new(AtomicUsize::new(0));
    let conns: Vec<Conn> = futures_util::stream::iter(0..args.connections)
        .map(|i| {
            let (target, url) = (&target, &url);
            async move {
                let mut conn = Conn::connect(target, url).await?;
                conn.subscribe(&format!("bench.idle.{}", args.first_topic + i), None)
                    .await?;
                anyhow::Ok(conn)
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    for mut conn in conns {
        let dropped = dropped.clone();
        tokio::spawn(async move {
            // Reading answers the server's pings; nothing else is expected.
            while conn.next().await.is_ok() {}
            dropped.fetch_add(1, Ordering::Relaxed);
        });
    }
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(format!("ready {}\n", args.connections).as_bytes())
        .await?;
    stdout.flush().await?;
    let mut sink = Vec::new();
    tokio::io::stdin().read_to_end(&mut sink).await?;
    stdout
        .write_all(format!("dropped {}\n", dropped.load(Ordering::Relaxed)).as_bytes())
        .await?;
    stdout.flush().await?;
    std::process::exit(0);
}

struct Holder {
    child: Child,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Holder {
    async fn spawn(args: &Args, connections: usize, first_topic: usize) -> anyhow::Result<Self> {
        let common = &args.common;
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("idle-hold")
            .arg("--system")
            .arg(common.system.cli_name())
            .arg("--url")
            .arg(common.url.join(","))
            .arg("--connections")
            .arg(connections.to_string())
            .arg("--first-topic")
            .arg(first_topic.to_string())
            .args(common.murmur.to_args())
            .envs(common.murmur.to_env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().context("start an idle-hold process")?;
        let stdout = child.stdout.take().context("the holder's stdout")?;
        Ok(Self {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// Waits for a line `<word> <n>` and returns n.
    async fn expect(&mut self, word: &str) -> anyhow::Result<usize> {
        let line = tokio::time::timeout(Duration::from_secs(300), self.lines.next_line())
            .await
            .with_context(|| format!("no `{word}` from a holder within 300 s"))??
            .with_context(|| format!("a holder exited before `{word}`"))?;
        line.strip_prefix(word)
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("unexpected line from a holder: {line}"))
    }

    /// Closes its stdin, so it drops its connections; returns how many the server had
    /// closed before.
    async fn finish(mut self) -> anyhow::Result<usize> {
        drop(self.child.stdin.take());
        let dropped = self.expect("dropped").await?;
        self.child.wait().await?;
        Ok(dropped)
    }
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Runs the scenario; returns the connections lost (closed by the server while idle).
pub async fn run(args: Args) -> anyhow::Result<u64> {
    if args.steps.is_empty() || args.steps.windows(2).any(|w| w[0] >= w[1]) {
        bail!("--steps must be ascending");
    }
    let pid = args.server_pid;
    let name = args.common.target().name();
    tokio::time::sleep(Duration::from_millis(args.settle_ms / 2)).await;
    let baseline = rss_kib(pid)?;
    let baseline_files = open_files(pid);
    let mut holders = Vec::new();
    let mut held = 0usize;
    let mut steps = Vec::new();
    let (mut previous_connections, mut previous_rss) = (0usize, baseline);
    for &step in &args.steps {
        let mut starting = Vec::new();
        while held < step {
            let n = (step - held).min(args.per_process);
            starting.push(Holder::spawn(&args, n, held).await?);
            held += n;
        }
        for holder in &mut starting {
            holder.expect("ready").await?;
        }
        holders.extend(starting);
        tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
        let rss = rss_kib(pid)?;
        let files = open_files(pid);
        let per_connection = (rss as f64 - baseline as f64) / step as f64;
        let slope = (rss as f64 - previous_rss as f64) / (step - previous_connections) as f64;
        println!(
            "{name:<7} idle   {step:>6} connections: server RSS {:>8.1} MiB, {per_connection:>6.2} KiB per connection, {slope:>6.2} KiB per connection since the last step, {} open files",
            rss as f64 / 1024.0,
            files
        );
        steps.push(
            json!({"connections": step, "rss_kib": rss, "open_files": files,
                          "per_connection_kib": per_connection, "slope_kib": slope}),
        );
        (previous_connections, previous_rss) = (step, rss);
    }
    let mut dropped = 0;
    for holder in holders {
        dropped += holder.finish().await?;
    }
    let first = &steps[0];
    let first_connections = first["connections"].as_u64().unwrap_or(0) as f64;
    let first_rss = first["rss_kib"].as_u64().unwrap_or(0) as f64;
    let per_connection = (previous_rss as f64 - baseline as f64) / held as f64;
    // Slope over the measured range, so the baseline's one-off costs don't count.
    let slope = if steps.len() > 1 {
        (previous_rss as f64 - first_rss) / (held as f64 - first_connections)
    } else {
        per_connection
    };
    let projected_mib = (baseline as f64 + slope * 100_000.0) / 1024.0;
    let row = format!(
        "{name:<7} idle   {held} connections to one node: {per_connection:.2} KiB per connection, slope {slope:.2} KiB, 100,000 connections ≈ {projected_mib:.0} MiB, dropped {dropped}"
    );
    emit(
        &row,
        json!({
            "scenario": "idle", "case": "idle", "system": name, "connections": held,
            "baseline_kib": baseline, "baseline_open_files": baseline_files,
            "per_connection_kib": per_connection, "slope_kib": slope,
            "projected_100k_mib": projected_mib, "steps": steps, "lost": dropped,
        }),
        &args.common.label,
    );
    Ok(dropped as u64)
}
