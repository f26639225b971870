//! `murmur-chaos`: run real Murmur nodes on network-namespace hosts, inject a fault while
//! clients publish and subscribe, and check what the clients saw against the contract.
//!
//!   murmur-chaos run --nemesis partition --seconds 30 --out chaos-out   (as root)
//!   murmur-chaos matrix --out chaos-out                                 (every nemesis)
//!   murmur-chaos check chaos-out/*.jsonl

mod nemesis;
mod soak;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use murmur_chaos::checker::{Class, Verdict, check};
use murmur_chaos::history;
use murmur_chaos::lab::Lab;
use murmur_chaos::workload::{self, Recorder};
use nemesis::{Cluster, Nemesis, Outcome, Timeline, check_interrupted, pause, wait_for};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(name = "murmur-chaos", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    /// Publishes to the chaos topics, each with a ref, and records the answers.
    Publisher,
    /// A plain subscription that resumes from its cursor after every reconnect.
    Subscriber,
    /// A queue-group member that acknowledges every delivery.
    Member,
    /// After the load: replays everything retained (`from: "earliest"`) until 3 s pass
    /// without an event.
    Replayer,
}

/// What a run and a matrix share: the bound, the binary, where the reports go.
#[derive(Debug, clap::Args)]
struct Setup {
    /// Seconds the membership may take to converge after the last heal.
    #[arg(long, default_value_t = DEFAULT_CONVERGENCE_BOUND)]
    convergence_bound: u64,
    #[arg(long, default_value = "target/release/murmur")]
    murmur: PathBuf,
    #[arg(long, default_value = "chaos-out")]
    out: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// One chaos run (needs root, iproute2 and iptables).
    Run {
        #[arg(long, value_enum, default_value = "partition")]
        nemesis: Nemesis,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Seconds of load; the fault starts at about one third.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Seed of the choice of victims and of timing jitter (default: random, printed).
        #[arg(long)]
        seed: Option<u64>,
        #[command(flatten)]
        setup: Setup,
    },
    /// Every nemesis in turn (or those of --nemeses): reports in OUT/<nemesis>/report.md and
    /// a table of all in OUT/summary.md. Exits non-zero when any run is not valid.
    Matrix {
        #[arg(long, value_enum, value_delimiter = ',')]
        nemeses: Vec<Nemesis>,
        /// Seconds of load of every run (default: each nemesis's own).
        #[arg(long)]
        seconds: Option<u64>,
        /// One seed for every run (default: a random one each, printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Also run every nemesis on clusters of these sizes (default: each nemesis's own
        /// size only), e.g. `--sizes 3,5`.
        #[arg(long, value_delimiter = ',')]
        sizes: Vec<usize>,
        #[command(flatten)]
        setup: Setup,
    },
    /// The matrix ROUNDS times with fresh seeds: each round in OUT/round-<n>/, and a table
    /// of every round in OUT/soak.md. Exits non-zero when any run was not valid.
    Soak {
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        #[arg(long, value_enum, value_delimiter = ',')]
        nemeses: Vec<Nemesis>,
        #[arg(long)]
        seconds: Option<u64>,
        #[arg(long, value_delimiter = ',')]
        sizes: Vec<usize>,
        #[command(flatten)]
        setup: Setup,
    },
    /// A workload client (started by `run` inside the client host).
    Client {
        #[arg(long, value_enum)]
        role: Role,
        #[arg(long)]
        id: String,
        #[arg(long, value_delimiter = ',')]
        urls: Vec<String>,
        #[arg(long)]
        out: PathBuf,
        /// Run start, µs since the Unix epoch.
        #[arg(long)]
        t0: u64,
        /// Stop at this many µs after t0, or at SIGTERM if that comes first.
        #[arg(long)]
        until: u64,
        /// What a subscriber or queue member subscribes to: a topic or a wildcard pattern.
        #[arg(long, default_value = "chaos.>")]
        pattern: String,
        /// The queue group of a member.
        #[arg(long, default_value = "workers")]
        group: String,
        /// A publisher's events per second (one in flight at a time).
        #[arg(long, default_value_t = 50)]
        rate: u64,
    },
    /// Hold each packet of an NFQUEUE for a while (started by `run` inside a node host).
    #[command(hide = true)]
    Delayer {
        #[arg(long)]
        queue: u16,
        #[arg(long)]
        delay_ms: u64,
        #[arg(long)]
        for_ms: u64,
    },
    /// Exit 0 when GET /readyz on host:port answers 200 (run inside the client host).
    #[command(hide = true)]
    Ready {
        #[arg(long)]
        addr: String,
    },
    /// Check recorded histories against the delivery contract.
    Check { histories: Vec<PathBuf> },
}

/// Membership convergence after the last heal, in seconds: measured at 1–4 s on 3 and 5
/// nodes (docs/guarantees.md); the bound leaves room for a loaded 2-core machine.
const DEFAULT_CONVERGENCE_BOUND: u64 = 15;

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Client {
            role,
            id,
            urls,
            out,
            t0,
            until,
            pattern,
            group,
            rate,
        } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let mut recorder = Recorder::create(&out, &id, t0)?;
            let rec = &mut recorder;
            runtime.block_on(async {
                // SIGTERM ends the workload early, with the history complete.
                let mut terminate =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::spawn(async move {
                    terminate.recv().await;
                    workload::stop();
                });
                match role {
                    Role::Publisher => workload::publisher(&urls, &id, rec, until, rate).await,
                    Role::Subscriber => {
                        workload::subscriber(&urls, &id, &pattern, rec, until).await;
                    }
                    Role::Member => {
                        workload::queue_member(&urls, &id, &pattern, &group, rec, until).await;
                    }
                    Role::Replayer => {
                        let idle = Duration::from_secs(3);
                        workload::replayer(&urls, &id, &pattern, rec, until, idle).await;
                    }
                }
                Ok::<_, std::io::Error>(())
            })?;
            Ok(())
        }
        Cmd::Check { histories } => {
            let verdict = check_files(&histories, None)?;
            if !verdict.is_valid() {
                bail!("the history breaks the contract");
            }
            Ok(())
        }
        Cmd::Delayer {
            queue,
            delay_ms,
            for_ms,
        } => nemesis::run_delayer(
            queue,
            Duration::from_millis(delay_ms),
            Duration::from_millis(for_ms),
        ),
        Cmd::Ready { addr } => {
            if !nemesis::probe_ready(&addr)? {
                bail!("{addr} is not ready");
            }
            Ok(())
        }
        Cmd::Run {
            nemesis,
            nodes,
            seconds,
            seed,
            setup,
        } => {
            nemesis::watch_signals();
            let out = setup.out.clone();
            let result = run(&RunOptions {
                nemesis,
                count: nodes,
                seconds,
                seed: seed.unwrap_or_else(rand::random),
                convergence_bound: Duration::from_secs(setup.convergence_bound),
                murmur: setup.murmur,
                out: setup.out,
            })?;
            println!("verdict: {}", result.verdict);
            if !result.passed() {
                bail!(
                    "the run did not pass: see {}",
                    out.join("report.md").display()
                );
            }
            Ok(())
        }
        Cmd::Matrix {
            nemeses,
            seconds,
            seed,
            sizes,
            setup,
        } => {
            nemesis::watch_signals();
            let out = setup.out.clone();
            let results = matrix(&nemeses, seconds, seed, &sizes, &setup.out, &setup)?;
            report_failures(&out.join("summary.md"), &results);
            Ok(())
        }
        Cmd::Soak {
            rounds,
            nemeses,
            seconds,
            sizes,
            setup,
        } => {
            nemesis::watch_signals();
            soak::soak(rounds, &setup.out, |round_out| {
                matrix(&nemeses, seconds, None, &sizes, round_out, &setup)
            })
        }
    }
}

fn check_files(paths: &[PathBuf], report: Option<&mut String>) -> anyhow::Result<Verdict> {
    let mut ops = Vec::new();
    for path in paths {
        let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
        ops.extend(history::read(std::io::BufReader::new(file))?);
    }
    let verdict = check(&ops);
    let mut text = format!(
        "acknowledged {} | deliveries {} | ok {} | recovered {} | reprocessed {} | lost {} | duplicated {} | published twice {} | reordered {} | unexpected {}\n",
        verdict.acknowledged,
        verdict.deliveries,
        verdict.count(Class::Ok),
        verdict.count(Class::Recovered),
        verdict.count(Class::Reprocessed),
        verdict.count(Class::Lost),
        verdict.count(Class::Duplicated),
        verdict.count(Class::PublishedTwice),
        verdict.count(Class::Reordered),
        verdict.count(Class::Unexpected),
    );
    for finding in verdict
        .findings
        .iter()
        .filter(|f| f.class.is_violation())
        .take(20)
    {
        text.push_str(&format!(
            "  {:?} {} at {} on {}: {}\n",
            finding.class, finding.id, finding.sub, finding.node, finding.detail
        ));
    }
    text.push_str(if verdict.is_valid() {
        "verdict: valid\n"
    } else {
        "verdict: INVALID\n"
    });
    print!("{text}");
    if let Some(report) = report {
        report.push_str(&text);
    }
    Ok(verdict)
}

struct RunOptions {
    nemesis: Nemesis,
    count: usize,
    seconds: u64,
    seed: u64,
    convergence_bound: Duration,
    murmur: PathBuf,
    out: PathBuf,
}

impl RunOptions {
    fn reproduce(&self) -> String {
        format!(
            "flock /tmp/murmur-chaos.lock target/release/murmur-chaos run --nemesis {} --nodes {} --seconds {} --seed {} --convergence-bound {} --murmur {} --out {}",
            self.nemesis.name(),
            self.count,
            self.seconds,
            self.seed,
            self.convergence_bound.as_secs(),
            self.murmur.display(),
            self.out.display()
        )
    }
}

/// One run's result, as `result.json` and as a row of the matrix's summary.
#[derive(Debug, Serialize)]
struct RunResult {
    nemesis: String,
    seed: u64,
    nodes: usize,
    seconds: u64,
    acknowledged: usize,
    lost: usize,
    duplicated: usize,
    /// Publishes sent again with their id that became a second event.
    published_twice: usize,
    reordered: usize,
    unexpected: usize,
    detection_s: Option<f64>,
    convergence_s: Option<f64>,
    /// `valid`, `INVALID` (the histories break the contract), `FAILED` (a fault did not take
    /// effect, or membership did not converge in time), `skipped` or `error`.
    verdict: String,
    reasons: Vec<String>,
    reproduce: String,
}

impl RunResult {
    fn passed(&self) -> bool {
        self.verdict == "valid" || self.verdict == "skipped"
    }

    fn errored(options: &RunOptions, error: &anyhow::Error) -> Self {
        Self {
            nemesis: options.nemesis.name(),
            seed: options.seed,
            nodes: options.count,
            seconds: options.seconds,
            acknowledged: 0,
            lost: 0,
            duplicated: 0,
            published_twice: 0,
            reordered: 0,
            unexpected: 0,
            detection_s: None,
            convergence_s: None,
            verdict: "error".into(),
            reasons: vec![format!("{error:#}")],
            reproduce: options.reproduce(),
        }
    }
}

fn seconds_of(d: Option<f64>) -> String {
    d.map_or_else(|| "–".to_owned(), |s| format!("{s:.1} s"))
}

/// Runs every nemesis of `nemeses` (all when empty) on its own cluster size and on each of
/// `sizes`, writing reports and the summary under `out`; returns every run's result.
fn matrix(
    nemeses: &[Nemesis],
    seconds: Option<u64>,
    seed: Option<u64>,
    sizes: &[usize],
    out: &Path,
    setup: &Setup,
) -> anyhow::Result<Vec<RunResult>> {
    let all: Vec<Nemesis> = if nemeses.is_empty() {
        Nemesis::value_variants().to_vec()
    } else {
        nemeses.to_vec()
    };
    let mut shapes = Vec::new();
    for &nemesis in &all {
        let (own, own_seconds) = nemesis.matrix_shape();
        shapes.push((nemesis, own, own_seconds, nemesis.name()));
        for &size in sizes.iter().filter(|&&n| n != own && nemesis.runs_on(n)) {
            shapes.push((
                nemesis,
                size,
                own_seconds,
                format!("{}-{size}n", nemesis.name()),
            ));
        }
    }
    std::fs::create_dir_all(out)?;
    let started = Instant::now();
    let mut results = Vec::new();
    for (nemesis, count, own_seconds, dir) in shapes {
        let options = RunOptions {
            nemesis,
            count,
            seconds: seconds.unwrap_or(own_seconds),
            seed: seed.unwrap_or_else(rand::random),
            convergence_bound: Duration::from_secs(setup.convergence_bound),
            murmur: setup.murmur.clone(),
            out: out.join(&dir),
        };
        println!("\n=== {dir} (seed {})", options.seed);
        let result = match run(&options) {
            Ok(result) => result,
            Err(error) => {
                check_interrupted()?;
                eprintln!("{dir}: {error:#}");
                RunResult::errored(&options, &error)
            }
        };
        println!("=== {dir}: {}", result.verdict);
        results.push(result);
        write_summary(out, &results, started.elapsed())?;
    }
    Ok(results)
}

/// Prints the runs that did not pass and exits non-zero if there were any.
fn report_failures(summary: &Path, results: &[RunResult]) {
    println!("summary: {}", summary.display());
    if results.iter().all(RunResult::passed) {
        return;
    }
    // Printed last and without a backtrace: CI shows only the tail of the log, and the
    // failed runs' verdicts, reasons and seeds are what a reader needs from it.
    eprintln!("\n=== runs that did not pass");
    for result in results.iter().filter(|r| !r.passed()) {
        eprintln!(
            "{} (nodes {}, seed {}): {}",
            result.nemesis, result.nodes, result.seed, result.verdict
        );
        for reason in &result.reasons {
            eprintln!("  {reason}");
        }
        eprintln!("  reproduce: {}", result.reproduce);
    }
    std::process::exit(1);
}

/// The columns of a run in the summary and soak tables (without the leading `|`).
const RUN_COLUMNS: &str = "nemesis | nodes | seed | acknowledged | lost | duplicated | \
    published twice | reordered | unexpected | detection | convergence | verdict |";
const RUN_ALIGNMENT: &str = "---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|";

/// A run's cells, in [`RUN_COLUMNS`] order.
fn run_cells(r: &RunResult) -> String {
    format!(
        "{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        r.nemesis,
        r.nodes,
        r.seed,
        r.acknowledged,
        r.lost,
        r.duplicated,
        r.published_twice,
        r.reordered,
        r.unexpected,
        seconds_of(r.detection_s),
        seconds_of(r.convergence_s),
        r.verdict
    )
}

fn write_summary(out: &Path, results: &[RunResult], took: Duration) -> anyhow::Result<()> {
    let mut text = format!(
        "# chaos matrix\n\n{} runs in {:.0} min; one report per run in <nemesis>/report.md.\n\n\
         | {RUN_COLUMNS}\n|{RUN_ALIGNMENT}\n",
        results.len(),
        took.as_secs_f64() / 60.0
    );
    for r in results {
        let _ = writeln!(text, "| {}", run_cells(r));
    }
    let mut reasons = String::new();
    for r in results.iter().filter(|r| !r.reasons.is_empty()) {
        let _ = writeln!(reasons, "- {}: {}", r.nemesis, r.reasons.join("; "));
        let _ = writeln!(reasons, "  reproduce: `{}`", r.reproduce);
    }
    if !reasons.is_empty() {
        let _ = write!(text, "\n## Why\n\n{reasons}");
    }
    std::fs::write(out.join("summary.md"), text)?;
    Ok(())
}

fn run(options: &RunOptions) -> anyhow::Result<RunResult> {
    let RunOptions {
        nemesis,
        count,
        seconds,
        seed,
        convergence_bound,
        ref murmur,
        ref out,
    } = *options;
    let out = out.as_path();
    if count < 2 {
        bail!("a chaos run needs at least 2 nodes");
    }
    std::fs::create_dir_all(out)?;
    let murmur = std::fs::canonicalize(murmur).with_context(|| {
        format!(
            "{} (build it: cargo build --release -p murmur)",
            murmur.display()
        )
    })?;
    let reproduce = options.reproduce();
    println!("seed {seed}\nreproduce: {reproduce}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut timeline = Timeline::create(out)?;
    let lab = Lab::build(count + nemesis.spare_hosts())
        .context("building the namespace lab (needs root, iproute2, iptables)")?;
    let mut cluster = Cluster::new(&lab, &murmur, out, nemesis.on_disk())?;
    if nemesis.on_disk() {
        timeline.note("the nodes keep their history on disk (--storage disk --fsync interval)");
    }
    for i in 0..count {
        cluster.start(i)?;
    }
    let formed = wait_for("the cluster forms", Duration::from_secs(30), || {
        cluster.converged()
    })?;
    timeline.note(&format!("{count} nodes formed a cluster in {formed:.1?}"));

    let t0 = workload::now_us(0);
    let load_us = seconds * 1_000_000;
    let urls: Vec<String> = lab
        .nodes
        .iter()
        .map(|h| format!("ws://{}:7400/ws", h.ip))
        .collect();
    let self_exe = std::env::current_exe()?;
    let mut clients = Vec::new();
    let mut histories = Vec::new();
    // Each client starts on its own node (an index into the nodes, taken modulo their
    // number) and moves on to the next ones in turn. Subscribers and queue members start
    // first and stay 15 s past the load to receive what is still on its way.
    let drain_us = load_us + 15_000_000;
    let client_table = [
        ("subscriber", "s1", 0, "chaos.>", drain_us),
        ("subscriber", "s2", count - 1, "chaos.*", drain_us),
        ("subscriber", "s3", 1, "chaos.t1", drain_us),
        ("subscriber", "s4", 2, "chaos.deep.*", drain_us),
        ("member", "q1", 0, "chaos.>", drain_us),
        ("member", "q2", 1, "chaos.>", drain_us),
        ("member", "q3", count - 1, "chaos.>", drain_us),
        ("publisher", "p1", 1, "", load_us),
        ("publisher", "p2", count - 1, "", load_us),
    ];
    let mut publishing = false;
    for (role, id, first, pattern, until) in client_table {
        if role == "publisher" && !publishing {
            // Before the first publisher: let the subscriptions' interest spread.
            publishing = true;
            std::thread::sleep(Duration::from_millis(1500));
        }
        let mut rotated = urls.clone();
        rotated.rotate_left(first % count);
        let file = out.join(format!("{id}.jsonl"));
        clients.push(
            lab.client
                .command(self_exe.to_str().context("path")?)
                .args(["client", "--role", role, "--id", id, "--pattern", pattern])
                .args(["--urls", &rotated.join(",")])
                .args(["--out", file.to_str().context("path")?])
                .args(["--t0", &t0.to_string(), "--until", &until.to_string()])
                .args(["--rate", &nemesis.publish_rate().to_string()])
                .spawn()?,
        );
        histories.push(file);
    }
    timeline.start_workload(t0);
    timeline.note("workload started");

    // The fault starts at about a third of the load, with up to a second of seeded jitter.
    let fault_at =
        Duration::from_secs(seconds) / 3 + Duration::from_millis(rng.random_range(0..1000));
    pause(fault_at.saturating_sub(Duration::from_micros(workload::now_us(t0))))?;
    let window = Duration::from_secs(seconds / 3).max(Duration::from_secs(3));
    let mut reasons = Vec::new();
    let mut outcome = match nemesis::inject(&mut cluster, nemesis, &mut rng, &mut timeline, window)
    {
        Ok(outcome) => outcome,
        Err(error) => {
            check_interrupted()?;
            timeline.note(&format!("the fault failed: {error:#}"));
            reasons.push(format!("fault: {error:#}"));
            Outcome::default()
        }
    };
    let convergence = match wait_for("the membership converges", convergence_bound, || {
        cluster.converged()
    }) {
        Ok(took) => {
            timeline.note(&format!(
                "membership converged {took:.1?} after the last heal"
            ));
            Some(took)
        }
        Err(error) => {
            check_interrupted()?;
            let views = cluster.views();
            timeline.note(&format!("{error:#}"));
            reasons.push(format!(
                "membership did not converge within {convergence_bound:?} of the last heal:\n{views}"
            ));
            None
        }
    };
    if convergence.is_some()
        && let Err(error) = outcome.verify_restarts(&cluster)
    {
        reasons.push(format!("restart: {error:#}"));
    }

    // Clients stop by themselves (subscribers 15 s after the load); bounded all the same.
    let deadline = Instant::now()
        + Duration::from_micros((load_us + 15_000_000).saturating_sub(workload::now_us(t0)))
        + Duration::from_secs(30);
    for client in &mut clients {
        while matches!(client.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = client.kill();
                reasons.push("a client did not stop in time".into());
                break;
            }
            pause(Duration::from_millis(200))?;
        }
        let _ = client.wait();
    }
    timeline.note("workload done");
    // On disk, every acknowledged event must still be there: a replay from the earliest
    // retained event, before the nodes stop.
    let replay = if nemesis.on_disk() {
        let file = out.join("replay.jsonl");
        let until = workload::now_us(t0) + 60_000_000;
        let status = lab
            .client
            .command(self_exe.to_str().context("path")?)
            .args(["client", "--role", "replayer", "--id", "replay"])
            .args(["--pattern", "chaos.>", "--urls", &urls.join(",")])
            .args(["--out", file.to_str().context("path")?])
            .args(["--t0", &t0.to_string(), "--until", &until.to_string()])
            .status()?;
        if !status.success() {
            reasons.push(format!("the replay client exited with {status}"));
        }
        timeline.note("replay from the earliest event done");
        Some(file)
    } else {
        None
    };
    cluster.stop_all();

    let mut report = format!(
        "# chaos run: {}, {count} nodes, {seconds} s of load, seed {seed}\n\n\
         reproduce (as root, from the repository): `{reproduce}`\n\n## timeline\n\n```\n{}```\n\n\
         ## fault checks\n\n",
        nemesis.name(),
        timeline.human
    );
    for check in &outcome.checks {
        let _ = writeln!(report, "- {check}");
    }
    if let Some(why) = &outcome.skipped {
        let _ = writeln!(report, "- skipped: {why}");
    }
    let _ = write!(
        report,
        "\n## membership\n\n- detection (fault until every other node sees the victim down or gone): {}\n\
         - convergence after the last heal: {} (bound {} s)\n\n## verdict\n\n```\n",
        detection_text(outcome.detection),
        detection_text(convergence),
        convergence_bound.as_secs()
    );
    let verdict = check_files(&histories, Some(&mut report))?;
    report.push_str("```\n");
    let mut durability = Vec::new();
    if let Some(replay) = &replay {
        let mut ops = Vec::new();
        for path in &histories {
            ops.extend(history::read(std::io::BufReader::new(
                std::fs::File::open(path)?,
            ))?);
        }
        let replayed = history::read(std::io::BufReader::new(std::fs::File::open(replay)?))?;
        durability = murmur_chaos::durability::check(&ops, &replayed);
        let (acknowledged, events) = murmur_chaos::durability::counts(&ops, &replayed);
        let _ = writeln!(
            report,
            "\n## on disk\n\nreplay from the earliest event after the run: {events} events for \
             {acknowledged} acknowledged; every acknowledged event must be replayed at its \
             position, no subscriber told of a gap, every topic in one epoch.\n"
        );
        for problem in &durability {
            let _ = writeln!(report, "- {problem}");
        }
        let _ = writeln!(
            report,
            "{}",
            if durability.is_empty() {
                "on disk: kept"
            } else {
                "on disk: BROKEN"
            }
        );
        println!(
            "on disk: {} ({events} replayed for {acknowledged} acknowledged)",
            if durability.is_empty() {
                "kept"
            } else {
                "BROKEN"
            }
        );
        for problem in durability.iter().take(20) {
            println!("  {problem}");
        }
    }
    // The first violations go into the reasons, so the summary (and a CI log's tail) shows
    // what broke without opening the report.
    let violations: Vec<_> = verdict
        .findings
        .iter()
        .filter(|f| f.class.is_violation())
        .collect();
    for finding in violations.iter().take(5) {
        reasons.push(format!(
            "{:?} {} (subscription {} on {}): {}",
            finding.class, finding.id, finding.sub, finding.node, finding.detail
        ));
    }
    if violations.len() > 5 {
        reasons.push(format!("… and {} more violations", violations.len() - 5));
    }
    for problem in durability.iter().take(5) {
        reasons.push(format!("on disk: {problem}"));
    }
    if durability.len() > 5 {
        reasons.push(format!(
            "… and {} more on-disk violations",
            durability.len() - 5
        ));
    }
    let status = if outcome.skipped.is_some() {
        reasons.extend(outcome.skipped.clone());
        "skipped"
    } else if !verdict.is_valid() || !durability.is_empty() {
        "INVALID"
    } else if !reasons.is_empty() {
        "FAILED"
    } else {
        "valid"
    };
    if !reasons.is_empty() {
        report.push_str("\nwhy:\n");
        for reason in &reasons {
            let _ = writeln!(report, "- {reason}");
        }
    }
    let title = format!("chaos run: {}, {count} nodes, {seconds} s", nemesis.name());
    match murmur_chaos::report::write(out, &histories, &title) {
        Ok(section) => report.push_str(&format!("\n{section}")),
        Err(e) => report.push_str(&format!("\nno latency report: {e}\n")),
    }
    let _ = writeln!(report, "\nrun verdict: **{status}**");
    std::fs::write(out.join("report.md"), &report)?;
    let result = RunResult {
        nemesis: nemesis.name(),
        seed,
        nodes: count,
        seconds,
        acknowledged: verdict.acknowledged,
        lost: verdict.count(Class::Lost),
        duplicated: verdict.count(Class::Duplicated),
        published_twice: verdict.count(Class::PublishedTwice),
        reordered: verdict.count(Class::Reordered),
        unexpected: verdict.count(Class::Unexpected),
        detection_s: outcome.detection.map(|d| d.as_secs_f64()),
        convergence_s: convergence.map(|d| d.as_secs_f64()),
        verdict: status.to_owned(),
        reasons,
        reproduce,
    };
    std::fs::write(
        out.join("result.json"),
        serde_json::to_string_pretty(&result)?,
    )?;
    Ok(result)
}

fn detection_text(d: Option<Duration>) -> String {
    d.map_or_else(|| "–".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
}
