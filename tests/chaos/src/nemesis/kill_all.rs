//! Every node killed at once and started again on its data dir: what a bad deploy or a
//! host-wide OOM does. With `storage = "disk"` nothing acknowledged may be lost, and the
//! topics go on in their epochs (`docs/guarantees.md`, "Under which failures").

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use rand::rngs::StdRng;

use super::{Cluster, Outcome, Timeline, ms, pause, wait_for};

/// How long the restarted nodes may take to answer `/readyz`: they start, see each other,
/// settle their view and claim the topics they took up from disk (a few seconds).
const READY_LIMIT: Duration = Duration::from_secs(60);

/// The topics and events the node's last start took up from disk: the fields of the last
/// `history on disk opened` line of its JSON log (a restarted node's log follows its first
/// life's).
fn taken_up(log: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().rev().find_map(|line| {
        let line: serde_json::Value = serde_json::from_str(line).ok()?;
        let fields = &line["fields"];
        if fields["message"] != "history on disk opened" {
            return None;
        }
        Some((fields["topics"].as_u64()?, fields["events"].as_u64()?))
    })
}

/// `kill -9` of every node at once, mid-workload; every node stays down 2–5 s (clients find
/// no node to connect to), then all start again on their data dirs. Checked: every process
/// exited by SIGKILL, every node restarted as a new process, answers `/readyz` (it claimed
/// what it recovered) and logged events taken up from disk, and (after convergence) every
/// node is known by a new generation.
pub(super) fn kill_all(
    cluster: &mut Cluster<'_>,
    rng: &mut StdRng,
    tl: &mut Timeline,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let running = cluster.running();
    if running.len() < 2 {
        bail!("kill-all needs at least 2 nodes");
    }
    if cluster.data_dir(running[0]).is_none() {
        bail!("kill-all needs the nodes on disk storage (Nemesis::on_disk)");
    }
    // Asked before the kill: afterwards no one is left to ask.
    let mut before = Vec::new();
    for (k, &i) in running.iter().enumerate() {
        let observer = running[(k + 1) % running.len()];
        let generation = cluster
            .generation_seen(observer, i)
            .with_context(|| format!("{}'s generation", Cluster::name(i)))?;
        before.push((i, cluster.pid(i)?, generation));
    }
    let pids = before
        .iter()
        .map(|(i, pid, _)| format!("{} {pid}", Cluster::name(*i)))
        .collect::<Vec<_>>()
        .join(", ");
    let statuses = cluster.kill_at_once(&running)?;
    tl.fault(&format!("kill-all: kill -9 of every node at once ({pids})"));
    for (&i, status) in running.iter().zip(&statuses) {
        use std::os::unix::process::ExitStatusExt;
        if status.signal() != Some(9) {
            bail!(
                "{} exited with {status}, not by SIGKILL: it was not killed",
                Cluster::name(i)
            );
        }
    }
    for &i in &running {
        let dir = cluster.data_dir(i).context("data dir")?;
        if !dir.is_dir() {
            bail!("{} has no data dir {}", Cluster::name(i), dir.display());
        }
    }
    outcome
        .checks
        .push(format!("every node killed by SIGKILL at once ({pids})"));
    pause(ms(rng, 2000..5000))?;
    let mut restarted = Vec::new();
    for &(i, pid, _) in &before {
        let after = cluster.start(i)?;
        if after == pid {
            bail!(
                "{} restarted with its old pid {pid}: it was not killed",
                Cluster::name(i)
            );
        }
        restarted.push(format!("{} {after}", Cluster::name(i)));
    }
    let restarted = restarted.join(", ");
    tl.heal(&format!(
        "every node started again on its data dir ({restarted})"
    ));
    let ready = wait_for("every node is ready again", READY_LIMIT, || {
        running.iter().all(|&i| cluster.ready(i))
    })?;
    tl.note(&format!(
        "every node ready (recovered topics claimed) after {ready:.1?}"
    ));
    let mut recovered = Vec::new();
    for &i in &running {
        let name = Cluster::name(i);
        match taken_up(&cluster.out.join(format!("{name}.log"))) {
            Some((topics, events)) if events > 0 => {
                recovered.push(format!("{name} {topics} topics, {events} events"));
            }
            Some(_) => bail!("{name} took up no event from its data dir"),
            None => bail!("{name}'s log has no `history on disk opened` line"),
        }
    }
    outcome.checks.push(format!(
        "taken up from disk at the restart: {}",
        recovered.join("; ")
    ));
    outcome.checks.push(format!(
        "every node restarted as a new process ({restarted}) and answered /readyz after {ready:.1?}"
    ));
    outcome
        .restarted
        .extend(before.iter().map(|&(i, _, generation)| (i, generation)));
    Ok(())
}
