//! Idle sockets (8): TCP connections that never send an HTTP request, against a node with
//! an open-file limit of 1,024. Without a handshake timeout or a connection limit the node
//! runs out of files and stops accepting, silently. The check: a new WebSocket client gets
//! `welcome` and `pong` within 5 s throughout.

use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::{Ctx, Outcome};
use crate::ws::probe;

const TARGET: usize = 0;
const PROBE_EVERY: Duration = Duration::from_secs(2);
const PROBE_LIMIT: Duration = Duration::from_secs(5);

pub async fn idle(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::default();
    let url = &ctx.urls[TARGET];
    let port = ctx.ports[TARGET];
    let before = probe(url, PROBE_LIMIT).await;
    if let Err(err) = before {
        anyhow::bail!("n1 did not serve a client before the load: {err}");
    }
    ctx.start_load().await;
    let deadline = ctx.deadline();
    let started = Instant::now();

    // Opened 64 at a time; each connect waits at most 5 s (a full accept queue).
    let wanted = ctx.params.idle_sockets as usize;
    let mut sockets = Vec::with_capacity(wanted);
    let mut connect_errors = Vec::new();
    while sockets.len() + connect_errors.len() < wanted && Instant::now() < deadline {
        let batch = (wanted - sockets.len() - connect_errors.len()).min(64);
        let connects = (0..batch).map(|_| {
            tokio::time::timeout(
                Duration::from_secs(5),
                TcpStream::connect(("127.0.0.1", port)),
            )
        });
        for result in futures_util::future::join_all(connects).await {
            match result {
                Ok(Ok(socket)) => sockets.push(socket),
                Ok(Err(err)) => connect_errors.push(err.to_string()),
                Err(_) => connect_errors.push("connect took over 5 s".to_owned()),
            }
        }
    }
    outcome.notes.push(format!(
        "{} idle sockets open to n1 after {:.1} s{}",
        sockets.len(),
        started.elapsed().as_secs_f64(),
        connect_errors.first().map_or_else(String::new, |e| format!(
            "; {} connects failed, first: {e}",
            connect_errors.len()
        ))
    ));

    let (mut served, mut refused) = (0u32, Vec::new());
    let mut slowest = Duration::ZERO;
    while Instant::now() + PROBE_EVERY < deadline {
        let round = Instant::now();
        match probe(url, PROBE_LIMIT).await {
            Ok(took) => {
                served += 1;
                slowest = slowest.max(took);
            }
            Err(err) => refused.push(format!(
                "at {:.0} s: {err}",
                started.elapsed().as_secs_f64()
            )),
        }
        tokio::time::sleep_until((round + PROBE_EVERY).into()).await;
    }
    ctx.until_deadline().await;

    // Which idle sockets the node has closed by now (a read that finds the end).
    let closed_by_node = sockets
        .iter()
        .filter(|s| {
            let mut buf = [0u8; 1];
            matches!(s.try_read(&mut buf), Ok(0))
        })
        .count();
    outcome.notes.push(format!(
        "new clients during the load: {served} served (slowest {} ms), {} not; \
         the node had closed {closed_by_node} of the idle sockets by the end",
        slowest.as_millis(),
        refused.len()
    ));
    drop(sockets);
    if let Some(first) = refused.first() {
        outcome.failures.push(format!(
            "{} of {} new WebSocket clients were not served within {PROBE_LIMIT:?} while the idle sockets were open; first {first}",
            refused.len(),
            served as usize + refused.len()
        ));
    }
    Ok(outcome)
}
