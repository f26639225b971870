//! `murmur-bench`: load against Murmur and, for comparison in the same run, against NATS
//! over WebSocket. Each scenario prints a table row for people and one JSON line for scripts
//! (see `bench/run.sh`, which runs them all against both systems and renders
//! `docs/benchmarks.md`).
//!
//! - `fanout`: one publisher, S subscribers on one topic over the nodes; full speed, fixed
//!   rate, or acknowledged publishing (`--acked`: Murmur, JetStream).
//! - `topics`: T topics with one subscriber each, publishers on other nodes; fire-and-forget
//!   or acknowledged (`--acked`: Murmur, JetStream).
//! - `queue`: one publisher, a queue group of K members over the nodes; balance.
//! - `idle`: C idle subscribed connections to one node; the node's memory per connection.
//!
//! Against nodes with `auth = token`, `--token` (or `MURMUR_BENCH_TOKEN`) gives every
//! connection a token to say `hello` with; reports then name the system `murmur-auth`.
//!
//! Systems (`--system`): `murmur`; `nats` (core NATS, fire-and-forget); `jetstream-mem` and
//! `jetstream-file` (NATS JetStream, a stream with 2 replicas in memory or in files, for the
//! acknowledged scenarios only: `fanout --acked`, `topics --acked`; see `jetstream`).

mod acked;
mod client;
mod common;
mod counting;
mod fanout;
mod idle;
mod jetstream;
mod nats;
mod queue;
mod report;
mod topics;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "murmur-bench", version)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// One publisher, S subscribers on one topic.
    Fanout(fanout::Args),
    /// T topics with one subscriber each; publishers on other nodes than the subscribers.
    Topics(topics::Args),
    /// One publisher, a queue group of K members over the nodes.
    Queue(queue::Args),
    /// C idle connections with one subscription each to one node; its memory per connection.
    Idle(idle::Args),
    /// (Internal) hold idle connections for `idle` until stdin closes.
    #[command(hide = true)]
    IdleHold(idle::HoldArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (lost, fail_on_loss) = match Cli::parse().scenario {
        Scenario::Fanout(args) => {
            let fail = args.common.fail_on_loss;
            (fanout::run(args).await?, fail)
        }
        Scenario::Topics(args) => {
            let fail = args.common.fail_on_loss;
            (topics::run(args).await?, fail)
        }
        Scenario::Queue(args) => {
            jetstream_unsupported(args.common.system, "queue")?;
            let fail = args.common.fail_on_loss;
            (queue::run(args).await?, fail)
        }
        Scenario::Idle(args) => {
            jetstream_unsupported(args.common.system, "idle")?;
            let fail = args.common.fail_on_loss;
            (idle::run(args).await?, fail)
        }
        Scenario::IdleHold(args) => {
            idle::hold(args).await?;
            (0, false)
        }
    };
    if fail_on_loss && lost > 0 {
        eprintln!("murmur-bench: {lost} lost");
        std::process::exit(3);
    }
    Ok(())
}

/// JetStream is compared in the acknowledged scenarios only.
fn jetstream_unsupported(system: client::System, scenario: &str) -> anyhow::Result<()> {
    if system.jetstream_storage().is_some() {
        anyhow::bail!(
            "JetStream is measured in the acknowledged scenarios only (fanout --acked, topics --acked), not {scenario}"
        );
    }
    Ok(())
}
