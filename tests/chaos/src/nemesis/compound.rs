//! Nemeses that put two faults together, or hold one for long: where the single-fault
//! matrix does not look.

use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::{
    Cluster, LOSS, Outcome, QUIC_PORT, Timeline, hold_until_seen_down, kill, ms, pause, pick,
    restart, restart_gracefully, stop_until_seen_down, without,
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
    lab.isolate(victim)?;
    tl.fault(&format!(
        "kill-in-partition: {} cut off from {}",
        Cluster::name(victim),
        Cluster::names(&others)
    ));
    pause(ms(rng, 1000..3000))?;
    let dropped = lab.dropped_on(&lab.nodes[victim])?;
    let killed = kill(cluster, victim, &others, tl, " while it is cut off")?;
    hold_until_seen_down(cluster, &others, victim, tl, outcome, window)?;
    lab.heal()?;
    tl.heal("partition healed");
    restart(cluster, killed, tl, outcome)?;
    if dropped == 0 {
        anyhow::bail!("the partition dropped no packet before the kill: it did not take effect");
    }
    outcome
        .checks
        .push(format!("{dropped} packets dropped before the kill"));
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
    stop_until_seen_down(
        cluster,
        victim,
        &others,
        tl,
        outcome,
        window,
        " under the loss",
    )?;
    // It wakes into the same loss.
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
    outcome
        .checks
        .push(format!("{total} QUIC packets lost meanwhile"));
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

/// A rolling restart while a node is cut off: the partition holds through the first restart
/// (the restarted node comes back into a cluster missing one member, and may not find it)
/// and heals in the middle of the restart; the node that was cut off is restarted last.
pub(super) fn partition_during_rolling_restart(
    cluster: &mut Cluster<'_>,
    rng: &mut StdRng,
    tl: &mut Timeline,
    window: Duration,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let lab = cluster.lab;
    let running = cluster.running();
    let cut_off = pick(rng, &running)?;
    let mut order = without(&running, &[cut_off]);
    order.shuffle(rng);
    lab.isolate(cut_off)?;
    tl.fault(&format!(
        "partition-restart: {} cut off from {}",
        Cluster::name(cut_off),
        Cluster::names(&order)
    ));
    // Long enough to be declared down, short enough to leave the restarts load to run with.
    hold_until_seen_down(
        cluster,
        &order,
        cut_off,
        tl,
        outcome,
        window.min(Duration::from_secs(8)),
    )?;
    let dropped = lab.dropped_on(&lab.nodes[cut_off])?;
    let (first, rest) = order.split_first().context("no node to restart")?;
    restart_gracefully(
        cluster,
        *first,
        &running,
        tl,
        outcome,
        " during the partition",
    )?;
    lab.heal()?;
    tl.heal("partition healed in the middle of the rolling restart");
    pause(ms(rng, 500..2000))?;
    for &i in rest.iter().chain(std::iter::once(&cut_off)) {
        restart_gracefully(cluster, i, &running, tl, outcome, "")?;
    }
    if dropped == 0 {
        anyhow::bail!("the partition dropped no packet: it did not take effect");
    }
    outcome.checks.push(format!(
        "{dropped} packets dropped on {} before the first restart",
        Cluster::name(cut_off)
    ));
    Ok(())
}
