//! `murmur`: run a node, or talk to one from the command line.

use std::io::{IsTerminal, Write};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use murmur::client::{Client, DEFAULT_URL, data_from_arg, refused};
use murmur::config::ServeArgs;
use murmur::node::RunningNode;
use serde_json::json;
use tokio::io::AsyncBufReadExt;
use tracing_subscriber::EnvFilter;

/// Murmur: publish/subscribe over WebSocket, with no silent loss.
#[derive(Debug, Parser)]
#[command(name = "murmur", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node. Settings come from flags, MURMUR_* environment variables and an optional
    /// TOML file (--config), in that order of precedence.
    Serve(ServeArgs),
    /// Subscribe to a topic pattern and print each event as one JSON line on stdout.
    Sub {
        /// Topic pattern: dot-separated tokens, `*` for one token, a final `>` for the rest.
        topic: String,
        /// Node WebSocket URL.
        #[arg(long, env = "MURMUR_URL", default_value = DEFAULT_URL)]
        url: String,
        /// Join a queue group: each event goes to one member of the group.
        #[arg(long)]
        group: Option<String>,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Publish one event, or one event per line of stdin.
    Pub {
        /// Topic to publish to (no wildcards).
        topic: String,
        /// The event data: JSON (`{"text":"hi"}`, `42`), any other text is sent as a JSON
        /// string; `-` publishes each line of stdin as one event.
        data: String,
        /// Node WebSocket URL.
        #[arg(long, env = "MURMUR_URL", default_value = DEFAULT_URL)]
        url: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Serve(args) => {
            let settings = args.settings()?;
            init_logging(&settings.log)?;
            runtime.block_on(serve(settings))
        }
        Command::Sub {
            topic,
            url,
            group,
            count,
        } => {
            init_logging("warn")?;
            runtime.block_on(sub(&url, &topic, group.as_deref(), count))
        }
        Command::Pub { topic, data, url } => {
            init_logging("warn")?;
            runtime.block_on(publish(&url, &topic, &data))
        }
    }
}

fn init_logging(default_filter: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(default_filter)
        .with_context(|| format!("invalid log filter `{default_filter}`"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}

async fn serve(settings: murmur::Settings) -> anyhow::Result<()> {
    let node = RunningNode::start(settings).await?;
    wait_for_signal().await?;
    tracing::info!("shutting down");
    node.shutdown();
    node.stopped().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot listen for SIGINT")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

async fn sub(
    url: &str,
    topic: &str,
    group: Option<&str>,
    count: Option<u64>,
) -> anyhow::Result<()> {
    let mut client = Client::connect(url).await?;
    client.subscribe("cli", topic, group).await?;
    eprintln!("subscribed to {topic} on {url}");
    let mut received = 0;
    let mut stdout = std::io::stdout().lock();
    while count.is_none_or(|c| received < c) {
        let frame = client.next_frame().await?;
        match frame["op"].as_str() {
            Some("event") => {
                writeln!(stdout, "{frame}")?;
                stdout.flush()?;
                received += 1;
                if let Some(delivery) = frame["delivery"].as_str() {
                    client
                        .send(&json!({"op": "ack", "delivery": delivery}))
                        .await?;
                }
            }
            Some("gap") => eprintln!("gap: {frame}"),
            Some("error") => eprintln!("error from node: {frame}"),
            _ => {}
        }
    }
    Ok(())
}

/// Publishes with a `ref` each and waits for every `ok`, keeping at most this many in flight.
const PUBLISH_WINDOW: usize = 1000;

async fn publish(url: &str, topic: &str, data: &str) -> anyhow::Result<()> {
    let mut client = Client::connect(url).await?;
    if data != "-" {
        client
            .send(&json!({"op": "pub", "topic": topic, "data": data_from_arg(data), "ref": "1"}))
            .await?;
        let ok = await_reply(&mut client).await?;
        eprintln!(
            "published to {topic}: epoch {} seq {}",
            ok["epoch"].as_str().unwrap_or("?"),
            ok["seq"]
        );
        return Ok(());
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let (mut sent, mut acknowledged, mut refused_count) = (0usize, 0usize, 0usize);
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        sent += 1;
        let frame = json!({"op": "pub", "topic": topic, "data": data_from_arg(&line), "ref": sent.to_string()});
        client.send(&frame).await?;
        while sent - acknowledged - refused_count >= PUBLISH_WINDOW {
            tally(&mut client, &mut acknowledged, &mut refused_count).await?;
        }
    }
    while acknowledged + refused_count < sent {
        tally(&mut client, &mut acknowledged, &mut refused_count).await?;
    }
    eprintln!("published {acknowledged} events to {topic}");
    if refused_count > 0 {
        bail!("{refused_count} of {sent} events were refused");
    }
    Ok(())
}

async fn tally(
    client: &mut Client,
    ok: &mut usize,
    refused_count: &mut usize,
) -> anyhow::Result<()> {
    match await_reply(client).await {
        Ok(_) => *ok += 1,
        Err(err) => {
            eprintln!("{err}");
            *refused_count += 1;
        }
    }
    Ok(())
}

/// The next `ok` (Ok) or `error` (Err) frame, skipping anything else.
async fn await_reply(client: &mut Client) -> anyhow::Result<serde_json::Value> {
    loop {
        let frame = client.next_frame().await?;
        match frame["op"].as_str() {
            Some("ok") => return Ok(frame),
            Some("error") => return Err(refused(&frame).into()),
            _ => {}
        }
    }
}
