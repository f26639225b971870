//! `murmur-chaos`: run real Murmur nodes on network-namespace hosts, inject a fault while
//! clients publish and subscribe, and check what the clients saw against the contract.
//!
//!   murmur-chaos run --nemesis partition --seconds 30 --out chaos-out   (as root)
//!   murmur-chaos check chaos-out/*.jsonl

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use murmur_chaos::checker::{Class, check};
use murmur_chaos::history;
use murmur_chaos::lab::Lab;
use murmur_chaos::workload::{self, Recorder};

#[derive(Debug, Parser)]
#[command(name = "murmur-chaos", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Nemesis {
    /// No fault: the control run.
    None,
    /// Cut the last node off from the others (clients still reach it), then heal.
    Partition,
    /// kill -9 the last node, then start it again.
    Kill,
    /// SIGSTOP the last node past failure detection, then SIGCONT.
    Pause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    /// Publishes to the chaos topics, each with a ref, and records the answers.
    Publisher,
    /// A plain subscription that resumes from its cursor after every reconnect.
    Subscriber,
    /// A queue-group member that acknowledges every delivery.
    Member,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// One chaos run (needs root, iproute2 and iptables).
    Run {
        #[arg(long, value_enum, default_value = "partition")]
        nemesis: Nemesis,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Seconds of load; the fault starts at one third and heals at two thirds.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        #[arg(long, default_value = "target/release/murmur")]
        murmur: PathBuf,
        #[arg(long, default_value = "chaos-out")]
        out: PathBuf,
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
        /// Stop at this many µs after t0.
        #[arg(long)]
        until: u64,
        /// What a subscriber or queue member subscribes to: a topic or a wildcard pattern.
        #[arg(long, default_value = "chaos.>")]
        pattern: String,
        /// The queue group of a member.
        #[arg(long, default_value = "workers")]
        group: String,
    },
    /// Check recorded histories against the delivery contract.
    Check { histories: Vec<PathBuf> },
}

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
        } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let mut recorder = Recorder::create(&out, &id, t0)?;
            let rec = &mut recorder;
            runtime.block_on(async {
                match role {
                    Role::Publisher => workload::publisher(&urls, &id, rec, until, 50).await,
                    Role::Subscriber => {
                        workload::subscriber(&urls, &id, &pattern, rec, until).await;
                    }
                    Role::Member => {
                        workload::queue_member(&urls, &id, &pattern, &group, rec, until).await;
                    }
                }
            });
            Ok(())
        }
        Cmd::Check { histories } => {
            let valid = check_files(&histories, None)?;
            if !valid {
                bail!("the history breaks the contract");
            }
            Ok(())
        }
        Cmd::Run {
            nemesis,
            nodes,
            seconds,
            murmur,
            out,
        } => run(nemesis, nodes, seconds, &murmur, &out),
    }
}

fn check_files(paths: &[PathBuf], report: Option<&mut String>) -> anyhow::Result<bool> {
    let mut ops = Vec::new();
    for path in paths {
        let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
        ops.extend(history::read(std::io::BufReader::new(file))?);
    }
    let verdict = check(&ops);
    let mut text = format!(
        "acknowledged {} | deliveries {} | ok {} | recovered {} | reprocessed {} | lost {} | duplicated {} | reordered {} | unexpected {}\n",
        verdict.acknowledged,
        verdict.deliveries,
        verdict.count(Class::Ok),
        verdict.count(Class::Recovered),
        verdict.count(Class::Reprocessed),
        verdict.count(Class::Lost),
        verdict.count(Class::Duplicated),
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
    Ok(verdict.is_valid())
}

struct Node {
    child: Option<Child>,
    name: String,
}

fn start_node(lab: &Lab, i: usize, murmur: &Path, out: &Path) -> anyhow::Result<Node> {
    let host = &lab.nodes[i];
    let name = format!("n{}", i + 1);
    let log = std::fs::File::create(out.join(format!("{name}.log")))?;
    let child = host
        .command(murmur.to_str().context("murmur path")?)
        .args(["serve", "--name", &name])
        .args(["--listen", &format!("{}:7400", host.ip)])
        .args(["--gossip", &format!("{}:7401", host.ip)])
        .args(["--quic", &format!("{}:7402", host.ip)])
        .args([
            "--seeds",
            &format!("{}:7401,{}:7401", lab.nodes[0].ip, lab.nodes[1].ip),
        ])
        .args(["--shutdown-grace", "3s", "--log-format", "json"])
        .env("MURMUR_CLUSTER_KEY", "chaos-cluster-key-0123456789")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("start a node")?;
    Ok(Node {
        child: Some(child),
        name,
    })
}

/// The members and their states as the node at `ip` reports them, from the client host.
fn states(lab: &Lab, murmur: &Path, ip: &str) -> Option<Vec<(String, String)>> {
    let out = lab
        .client
        .command(murmur.to_str()?)
        .args(["members", "--json", "--url", &format!("http://{ip}:7400")])
        .env("RUST_BACKTRACE", "0")
        .output()
        .ok()?;
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        view["members"]
            .as_array()?
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap_or("").to_owned(),
                    m["state"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect(),
    )
}

fn wait_for(
    what: &str,
    limit: Duration,
    mut condition: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while !condition() {
        if started.elapsed() > limit {
            bail!("timed out after {limit:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(started.elapsed())
}

fn signal(node: &Node, signal: &str) -> anyhow::Result<()> {
    let pid = node.child.as_ref().context("running")?.id().to_string();
    Command::new("kill").args([signal, &pid]).status()?;
    Ok(())
}

fn run(
    nemesis: Nemesis,
    count: usize,
    seconds: u64,
    murmur: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let murmur = std::fs::canonicalize(murmur).with_context(|| {
        format!(
            "{} (build it: cargo build --release -p murmur)",
            murmur.display()
        )
    })?;
    let lab =
        Lab::build(count).context("building the namespace lab (needs root, iproute2, iptables)")?;
    let mut timeline = String::new();
    let started = Instant::now();
    let mark = |timeline: &mut String, what: &str| {
        let line = format!("{:>7.2}s {what}\n", started.elapsed().as_secs_f64());
        print!("{line}");
        timeline.push_str(&line);
    };
    let mut nodes: Vec<Node> = (0..count)
        .map(|i| start_node(&lab, i, &murmur, out))
        .collect::<Result<_, _>>()?;
    let all_alive = |lab: &Lab| {
        lab.nodes.iter().all(|h| {
            states(lab, &murmur, &h.ip)
                .is_some_and(|s| s.iter().filter(|(_, st)| st == "alive").count() == count)
        })
    };
    let formed = wait_for("the cluster forms", Duration::from_secs(30), || {
        all_alive(&lab)
    })?;
    mark(&mut timeline, &format!("cluster formed in {formed:.1?}"));

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
                .spawn()?,
        );
        histories.push(file);
    }
    mark(&mut timeline, "workload started");

    let third = Duration::from_secs(seconds / 3);
    std::thread::sleep(third);
    let target = count - 1;
    let victim = nodes[target].name.clone();
    let observer = lab.nodes[0].ip.clone();
    let seen_down = |lab: &Lab| {
        states(lab, &murmur, &observer)
            .is_some_and(|s| s.iter().any(|(n, st)| *n == victim && st == "down"))
    };
    let mut detected = None;
    match nemesis {
        Nemesis::None => mark(&mut timeline, "no fault (control run)"),
        Nemesis::Partition => {
            lab.isolate(target)?;
            mark(
                &mut timeline,
                &format!("partition: {victim} cut off from the other nodes"),
            );
            detected = Some(wait_for(
                "the partition is seen",
                third + Duration::from_secs(15),
                || seen_down(&lab),
            )?);
            let dropped = lab.dropped_on(&lab.nodes[target])?;
            if dropped == 0 {
                bail!("the partition dropped no packet: the fault did not take effect");
            }
            mark(
                &mut timeline,
                &format!(
                    "partition seen after {:.1?}; {dropped} packets dropped",
                    detected.unwrap_or_default()
                ),
            );
        }
        Nemesis::Kill | Nemesis::Pause => {
            if nemesis == Nemesis::Kill {
                signal(&nodes[target], "-KILL")?;
                if let Some(mut child) = nodes[target].child.take() {
                    let _ = child.wait();
                }
                mark(&mut timeline, &format!("kill -9 {victim}"));
            } else {
                signal(&nodes[target], "-STOP")?;
                mark(&mut timeline, &format!("SIGSTOP {victim}"));
            }
            detected = Some(wait_for(
                "the fault is seen",
                third + Duration::from_secs(15),
                || seen_down(&lab),
            )?);
            mark(
                &mut timeline,
                &format!(
                    "{victim} marked down after {:.1?}",
                    detected.unwrap_or_default()
                ),
            );
        }
    }
    std::thread::sleep(third.saturating_sub(detected.unwrap_or_default()));
    match nemesis {
        Nemesis::None => {}
        Nemesis::Partition => lab.heal()?,
        Nemesis::Kill => nodes[target] = start_node(&lab, target, &murmur, out)?,
        Nemesis::Pause => signal(&nodes[target], "-CONT")?,
    }
    mark(&mut timeline, "healed");
    let converged = wait_for("the cluster reconverges", Duration::from_secs(30), || {
        all_alive(&lab)
    })?;
    mark(
        &mut timeline,
        &format!("membership converged {converged:.1?} after the heal"),
    );

    for mut client in clients {
        let _ = client.wait();
    }
    mark(&mut timeline, "workload done");
    for node in &nodes {
        let _ = signal(node, "-TERM");
    }
    for node in &mut nodes {
        if let Some(mut child) = node.child.take() {
            let _ = child.wait();
        }
    }
    let mut report = format!(
        "# chaos run: {nemesis:?}, {count} nodes, {seconds} s of load\n\nreproduce: murmur-chaos run --nemesis {} --nodes {count} --seconds {seconds}\n\n## timeline\n{timeline}\n## verdict\n",
        format!("{nemesis:?}").to_lowercase()
    );
    let valid = check_files(&histories, Some(&mut report))?;
    let title = format!("chaos run: {nemesis:?}, {count} nodes, {seconds} s");
    match murmur_chaos::report::write(out, &histories, &title) {
        Ok(section) => report.push_str(&format!("\n{section}")),
        Err(e) => report.push_str(&format!("\nno latency report: {e}\n")),
    }
    std::fs::write(out.join("report.md"), &report)?;
    drop(lab);
    if !valid {
        bail!(
            "the run broke the contract: see {}",
            out.join("report.md").display()
        );
    }
    Ok(())
}
