//! Nemeses that put two faults together, or hold one for long: where the single-fault
//! matrix does not look.

use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;

use super::{
    Cluster, LOSS, Outcome, QUIC_PORT, Timeline, hold_until_seen_down, ms, pause, pick,
    process_state, wait_for, without,
};

/// How long `long-partition` keeps its victim cut off.
pub const LONG_PARTITION: Duration = Duration::from_secs(120);

/// Cuts a node off, kills it while it is cut off (whatever it held in flight dies unseen by
/// the others), then heals and restarts it.
pub(super) fn kill_in_partition(
    cluster: &mut Cluster<'_>,
    rng: &mut StdRng,
    tl: &mut Timeline,
    window: Duration,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let lab = cluster.lab;
    let running = cluster.running();
    let victim = pick(rng, &running)?;
    let others = without(&running, &[victim]);
    let name = Cluster::name(victim);
    let before = cluster.pid(victim)?;
    let generation = cluster
        .generation_seen(others[0], victim)
        .context("the victim's generation")?;
    lab.isolate(victim)?;
    tl.fault(&format!(
        "kill-in-partition: {name} cut off from {}",
        Cluster::names(&others)
    ));
    pause(ms(rng, 1000..3000))?;
    let dropped = lab.dropped_on(&lab.nodes[victim])?;
    cluster.kill(victim)?;
    tl.fault(&format!(
        "kill -9 {name} (pid {before}) while it is cut off"
    ));
    hold_until_seen_down(cluster, &others, victim, tl, outcome, window)?;
    lab.heal()?;
    tl.heal("partition healed");
    let after = cluster.start(victim)?;
    tl.heal(&format!("{name} restarted (pid {after})"));
    if dropped == 0 {
        anyhow::bail!("the partition dropped no packet before the kill: it did not take effect");
    }
    if after == before {
        anyhow::bail!("{name} restarted with its old pid {before}: it was not killed");
    }
    outcome.checks.push(format!(
        "{name} cut off ({dropped} packets dropped), killed (pid {before}), seen down, \
         restarted as pid {after}"
    ));
    outcome.restarted.push((victim, generation));
    Ok(())
}

/// Loses 30% of the QUIC packets into every node and, meanwhile, stops one node past
/// failure detection; it wakes into the same loss.
pub(super) fn pause_loss(
    cluster: &mut Cluster<'_>,
    rng: &mut StdRng,
    tl: &mut Timeline,
    window: Duration,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let lab = cluster.lab;
    let running = cluster.running();
    for &h in &running {
        lab.lose_inbound(&lab.nodes[h], QUIC_PORT, LOSS)?;
    }
    tl.fault(&format!(
        "pause-loss: {:.0}% of QUIC packets lost into every node",
        LOSS * 100.0
    ));
    pause(ms(rng, 1000..2000))?;
    let victim = pick(rng, &running)?;
    let others = without(&running, &[victim]);
    let name = Cluster::name(victim);
    let pid = cluster.pid(victim)?;
    cluster.signal(victim, "-STOP")?;
    tl.fault(&format!("SIGSTOP {name} (pid {pid}) under the loss"));
    wait_for(
        &format!("{name} is stopped"),
        Duration::from_secs(2),
        || process_state(pid) == Some('T'),
    )?;
    hold_until_seen_down(cluster, &others, victim, tl, outcome, window)?;
    cluster.signal(victim, "-CONT")?;
    tl.heal(&format!("SIGCONT {name}; the loss goes on"));
    pause(ms(rng, 2000..4000))?;
    let mut total = 0;
    for &h in &running {
        total += lab.dropped_on(&lab.nodes[h])?;
    }
    lab.heal()?;
    tl.heal("QUIC loss healed");
    if total == 0 {
        anyhow::bail!("the QUIC loss dropped no packet: it did not take effect");
    }
    outcome.checks.push(format!(
        "{name} (pid {pid}) stopped and seen down while {total} QUIC packets were lost"
    ));
    Ok(())
}

/// Cuts a node off for [`LONG_PARTITION`]: longer than anything a client or a buffer rides
/// out, so what the node's clients missed comes from history or as a gap.
pub(super) fn long_partition(
    cluster: &mut Cluster<'_>,
    rng: &mut StdRng,
    tl: &mut Timeline,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let lab = cluster.lab;
    let running = cluster.running();
    let victim = pick(rng, &running)?;
    let others = without(&running, &[victim]);
    let name = Cluster::name(victim);
    lab.isolate(victim)?;
    tl.fault(&format!(
        "long-partition: {name} cut off from {} for {}s (clients still reach it)",
        Cluster::names(&others),
        LONG_PARTITION.as_secs()
    ));
    hold_until_seen_down(cluster, &others, victim, tl, outcome, LONG_PARTITION)?;
    let dropped = lab.dropped_on(&lab.nodes[victim])?;
    lab.heal()?;
    tl.heal("long partition healed");
    if dropped == 0 {
        anyhow::bail!("the partition dropped no packet: it did not take effect");
    }
    outcome.checks.push(format!(
        "{dropped} packets dropped on {name} over {}s; the others saw it down",
        LONG_PARTITION.as_secs()
    ));
    Ok(())
}
