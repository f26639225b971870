//! `murmur-abuse`: a bounded soak. Each adversarial finding of issue 12 is replayed as a
//! load against a fresh cluster of three `murmur serve` processes on 127.0.0.1, while every
//! node's memory (VmRSS) and open files are read from /proc once a second, during the load
//! and after it. A load fails if a node dies, stops serving, grows past its bound, or breaks
//! the load's own check. Writes `<out>/report.md` (and, per load, the samples as CSV and the
//! nodes' logs); exits non-zero if any load failed.
//!
//!   murmur-abuse                                  # every load, 60 s each (`make abuse`)
//!   murmur-abuse --seconds 8 --settle 3           # `make abuse-smoke`
//!   murmur-abuse --loads huge-ids,idle-sockets --bound many-topics=300

mod cluster;
mod loads;
mod report;
mod sampler;
mod ws;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use cluster::{Cluster, ClusterSpec, NAMES};
use loads::{Ctx, Load, Outcome, Params};
use report::{LoadReport, NodeRow};
use sampler::{Phase, Sampler};

#[derive(Debug, Parser)]
#[command(name = "murmur-abuse", version)]
struct Cli {
    /// Seconds each load runs.
    #[arg(long, env = "ABUSE_SECONDS", default_value_t = 60)]
    seconds: u64,
    /// Seconds the nodes are watched after each load, before they are checked and stopped.
    #[arg(long, env = "ABUSE_SETTLE", default_value_t = 10)]
    settle: u64,
    /// The loads to run, comma-separated (default: all, in order).
    #[arg(long, value_enum, value_delimiter = ',')]
    loads: Vec<Load>,
    #[arg(long, default_value = "target/release/murmur")]
    murmur: PathBuf,
    /// Where report.md, and per load the samples and the node logs, go.
    #[arg(long, default_value = "abuse-out")]
    out: PathBuf,
    /// Node i listens on base+10i (WebSocket), base+10i+1 (gossip), base+10i+2 (QUIC).
    #[arg(long, default_value_t = 17400)]
    base_port: u16,
    /// A load's RSS bound over baseline in MiB, instead of its default: LOAD=MIB
    /// (for example `many-topics=300`, which has none by default). Repeatable.
    #[arg(long, value_parser = parse_bound)]
    bound: Vec<(Load, u64)>,
    #[command(flatten)]
    params: Params,
}

fn parse_bound(text: &str) -> Result<(Load, u64), String> {
    let (load, mib) = text
        .split_once('=')
        .ok_or_else(|| format!("expected LOAD=MIB, got `{text}`"))?;
    let load = Load::from_str(load, false)?;
    let mib = mib
        .parse()
        .map_err(|e| format!("`{mib}` is not a number of MiB: {e}"))?;
    Ok((load, mib))
}

/// WARN and ERROR lines a second (averaged over the load) any node may write under any
/// load: log lines per event are rate-limited (one per second per kind of line)...
const LOG_LINES_PER_SECOND: f64 = 2.0;
/// ... plus this many once: a warning logged at each power of two of a count (the peer
/// queue's drops) writes a burst of about 12 lines in its first second of drops and
/// fewer than 64 over the life of the node.
const LOG_LINES_ONCE: u64 = 32;

/// When the load started, and how long each node's log was then.
type LoadWindow = Arc<std::sync::Mutex<Option<(Instant, Vec<u64>)>>>;

/// Seconds of baseline sampled once a load's setup is done.
const BASELINE: Duration = Duration::from_millis(2500);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let loads = if cli.loads.is_empty() {
        Load::ALL.to_vec()
    } else {
        cli.loads.clone()
    };
    std::fs::create_dir_all(&cli.out).with_context(|| format!("create {}", cli.out.display()))?;
    let key = cluster::keygen(&cli.murmur).await?;
    let began = Instant::now();
    let mut reports = Vec::new();
    for load in loads {
        println!("== {}. {} ({} s)", load.number(), load.name(), cli.seconds);
        let report = run_load(&cli, load, &key).await?;
        println!("{}", report.markdown());
        reports.push(report);
    }
    let header = header(&cli, began.elapsed()).await;
    let markdown = report::render(&header, &reports);
    let path = cli.out.join("report.md");
    std::fs::write(&path, &markdown).with_context(|| format!("write {}", path.display()))?;
    println!("{markdown}\nwrote {}", path.display());
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.load.name())
        .collect();
    if !failed.is_empty() {
        eprintln!("murmur-abuse: failed: {}", failed.join(", "));
        std::process::exit(1);
    }
    Ok(())
}

async fn header(cli: &Cli, took: Duration) -> String {
    let version = tokio::process::Command::new(&cli.murmur)
        .arg("--version")
        .output()
        .await
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let git = tokio::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .await
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "`{version}` (git {git}), three nodes on 127.0.0.1 with default settings, a fresh cluster \
         per load. Each load ran {} s, then the nodes were watched {} s more; RSS (VmRSS) and \
         open files were read from /proc every second. Growth is the peak during and after the \
         load minus the baseline sampled just before it. A load fails if a node dies, does not \
         serve a new client after the load, grows past the load's bound, writes more than \
         {LOG_LINES_PER_SECOND} WARN/ERROR log lines a second (plus {LOG_LINES_ONCE} once), or \
         fails the load's own check. \
         The whole run took {:.0} s.",
        cli.seconds,
        cli.settle,
        took.as_secs_f64()
    )
}

async fn run_load(cli: &Cli, load: Load, key: &str) -> anyhow::Result<LoadReport> {
    let dir = cli.out.join(format!("{}-{}", load.number(), load.name()));
    let spec = ClusterSpec {
        murmur: cli.murmur.clone(),
        base_port: cli.base_port,
        cluster_key: key.to_owned(),
        log_dir: dir.clone(),
        open_files: load.open_files(),
    };
    let mut cluster = Cluster::start(&spec)
        .await
        .with_context(|| format!("start the cluster for {}", load.name()))?;
    let pids: Vec<u32> = cluster.nodes.iter().map(|n| n.pid).collect();
    let logs: Vec<PathBuf> = cluster.nodes.iter().map(|n| n.log.clone()).collect();
    let sampler = Sampler::start(pids.clone());

    // The load's window: when it started, and how long each log was then.
    let window: LoadWindow = Arc::default();
    let start = {
        let (sampler, pids, logs, window) =
            (sampler.clone(), pids.clone(), logs.clone(), window.clone());
        Box::new(move || {
            let (sampler, pids, logs, window) =
                (sampler.clone(), pids.clone(), logs.clone(), window.clone());
            Box::pin(async move {
                tokio::time::sleep(BASELINE).await;
                sampler.sample_now(&pids).await;
                let offsets = logs.iter().map(|l| file_len(l)).collect();
                *window.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), offsets));
                sampler.set_phase(Phase::Load);
            }) as futures_util::future::BoxFuture<'static, ()>
        }) as loads::StartLoad
    };
    let ctx = Ctx::new(
        cluster.nodes.iter().map(cluster::Node::ws_url).collect(),
        cluster.nodes.iter().map(|n| n.port).collect(),
        cli.params.clone(),
        Duration::from_secs(cli.seconds),
        start,
    );
    // Setup (filling history) and the load's own waits get three minutes beyond the load.
    let limit = Duration::from_secs(cli.seconds + 180);
    let result = tokio::time::timeout(limit, loads::run(load, &ctx)).await;
    sampler.sample_now(&pids).await;
    let (started, start_offsets) = window
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or((Instant::now(), vec![0; logs.len()]));
    let seconds = started.elapsed().as_secs_f64();
    let end_offsets: Vec<u64> = logs.iter().map(|l| file_len(l)).collect();

    sampler.set_phase(Phase::After);
    tokio::time::sleep(Duration::from_secs(cli.settle)).await;
    let mut served_after = Vec::new();
    for node in &cluster.nodes {
        served_after.push(
            ws::probe(&node.ws_url(), Duration::from_secs(5))
                .await
                .is_ok(),
        );
    }
    sampler.sample_now(&pids).await;
    cluster.dead();
    let samples = sampler.finish().await;
    let died: Vec<Option<String>> = (0..NAMES.len())
        .map(|i| {
            cluster.exited(i).map(|status| {
                format!(
                    "{status}, found gone {:.0} s into the load",
                    summary_gone_at(&samples, i)
                )
            })
        })
        .collect();
    cluster.stop().await;
    std::fs::write(dir.join("samples.csv"), sampler::to_csv(&samples, &NAMES))?;

    let (outcome, load_error) = match result {
        Ok(Ok(outcome)) => (outcome, None),
        Ok(Err(err)) => (
            Outcome::default(),
            Some(format!("the load broke off: {err:#}")),
        ),
        Err(_) => (
            Outcome::default(),
            Some(format!("the load did not finish within {limit:?}")),
        ),
    };
    let nodes = (0..NAMES.len())
        .map(|i| NodeRow {
            name: NAMES[i],
            memory: sampler::summarize(&samples, i),
            warn_lines: count_warnings(&logs[i], start_offsets[i], end_offsets[i]),
            died: died[i].clone(),
            log_tail: last_lines(&logs[i], 3),
            served_after: served_after[i],
        })
        .collect();
    let rss_bound_mib = cli
        .bound
        .iter()
        .rev()
        .find(|(l, _)| *l == load)
        .map(|(_, mib)| *mib)
        .or(load.default_rss_bound_mib());
    let mut report = LoadReport {
        load,
        seconds: if load_error.is_some() && seconds < 0.5 {
            0.0
        } else {
            seconds
        },
        outcome,
        nodes,
        rss_bound_mib,
        failures: load_error.into_iter().collect(),
    };
    report.judge(LOG_LINES_PER_SECOND, LOG_LINES_ONCE);
    Ok(report)
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// WARN and ERROR lines (the nodes log JSON) written between two offsets of a log.
fn count_warnings(path: &Path, from: u64, to: u64) -> u64 {
    let Ok(bytes) = std::fs::read(path) else {
        return 0;
    };
    let end = usize::try_from(to).unwrap_or(usize::MAX).min(bytes.len());
    let start = usize::try_from(from).unwrap_or(0).min(end);
    String::from_utf8_lossy(&bytes[start..end])
        .lines()
        .filter(|l| l.contains(r#""level":"WARN""#) || l.contains(r#""level":"ERROR""#))
        .count() as u64
}

/// Seconds into the load when the node was first found gone (negative: before it).
fn summary_gone_at(samples: &[sampler::Sample], node: usize) -> f64 {
    let load_began = samples
        .iter()
        .find(|s| s.phase == Phase::Load)
        .map_or(0.0, |s| s.seconds);
    sampler::summarize(samples, node)
        .gone_at
        .map_or(0.0, |gone| gone - load_began)
}

/// The last `n` non-empty lines of a log, the message only of JSON lines (a crash writes
/// plain text, such as Rust's `fatal runtime error: stack overflow`), at most 300
/// characters.
fn last_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["fields"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| line.to_owned())
        })
        .collect();
    let tail = lines[lines.len().saturating_sub(n)..]
        .join(" / ")
        .replace('`', "'");
    let mut cut: String = tail.chars().take(300).collect();
    if cut.len() < tail.len() {
        cut.push('…');
    }
    cut
}
