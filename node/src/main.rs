//! `murmur`: run a node, or talk to one from the command line.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use murmur::client::{Client, DEFAULT_URL, ResumeCursor, data_from_arg};
use murmur::config::{LogFormat, ServeArgs};
use murmur::node::RunningNode;
use murmur::publisher::{IdSource, Outcome, PublishOptions, Publisher};
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
    Serve(Box<ServeArgs>),
    /// Subscribe to a topic pattern and print each event as one JSON line on stdout. When the
    /// connection drops it reconnects (to the next --url, if several) and resumes where it
    /// left off; events it can no longer get are reported as `gap` lines on stderr.
    Sub {
        /// Topic pattern: dot-separated tokens, `*` for one token, a final `>` for the rest.
        topic: String,
        /// Node WebSocket URL (ws:// or wss://); several, comma-separated, to fail over
        /// between nodes.
        #[arg(long, env = "MURMUR_URL", default_value = DEFAULT_URL, value_delimiter = ',')]
        url: Vec<String>,
        /// PEM file of the CA that signed the node's certificate, for wss:// URLs [default:
        /// the system's root certificates].
        #[arg(long, env = "MURMUR_CA", value_name = "FILE")]
        ca: Option<PathBuf>,
        /// A client token (JWT) for nodes with `auth = token`; `murmur token` mints one for
        /// development.
        #[arg(long, env = "MURMUR_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Join a queue group: each event goes to one member of the group. `murmur sub`
        /// acknowledges each event as soon as it has written it to stdout, so the node does
        /// not redeliver it even if whatever reads the output fails to handle it; a worker
        /// that must finish its job before the ack should use a client library and send `ack`
        /// itself (docs/protocol.md, queue groups).
        #[arg(long)]
        group: Option<String>,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Where to start: `latest` (events from now on), `earliest` (every retained event
        /// first), or a cursor `{"epoch":"…","seq":N}` (an exact topic; `murmur history`
        /// prints where it ended) or `{"topics":{…},"since":MS}` (a pattern).
        #[arg(long, default_value = "latest", value_name = "START")]
        from: String,
    },
    /// Print a topic's retained events, one JSON line each on stdout, read page by page from
    /// the node's HTTP API (any node of the cluster); gaps go to stderr, then the cursor to
    /// continue from (`next`).
    History {
        /// A topic (no wildcards).
        topic: String,
        /// `earliest` (every retained event) or a cursor `{"epoch":"…","seq":N}`: the events
        /// after it.
        #[arg(long, default_value = "earliest", value_name = "START")]
        from: String,
        /// Print at most this many events [default: all retained].
        #[arg(long)]
        limit: Option<usize>,
        /// The node's client port (http:// or https://; its ws:// URL works too).
        #[arg(long, env = "MURMUR_URL", default_value = murmur::api_client::DEFAULT_API_URL)]
        url: String,
        /// PEM file of the CA that signed the node's certificate, for https:// URLs [default:
        /// the system's root certificates].
        #[arg(long, env = "MURMUR_CA", value_name = "FILE")]
        ca: Option<PathBuf>,
        /// A client token (JWT) for nodes with `auth = token`; it needs `sub` and `history`
        /// permission for the topic.
        #[arg(long, env = "MURMUR_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Show the cluster as a node sees it: every member, its state and addresses.
    Members {
        /// The node's admin address (its admin_listen).
        #[arg(
            long,
            env = "MURMUR_ADMIN_URL",
            default_value = "http://127.0.0.1:7403"
        )]
        url: String,
        /// Print the raw JSON of GET /v1/cluster instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make certificates for running the cluster on your own PKI instead of the CA derived
    /// from the cluster key.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Mint a client token (a JWT signed with the HMAC secret of `auth = token` nodes) and
    /// print it; for development and tests: production tokens come from your own issuer.
    Token(Box<TokenArgs>),
    /// Print a new random cluster key (32 random bytes, base64url) for MURMUR_CLUSTER_KEY or
    /// a --cluster-key-file: `(umask 077; murmur keygen > cluster.key)`.
    Keygen,
    /// Publish one event, or one event per line of stdin.
    Pub {
        /// Topic to publish to (no wildcards).
        topic: String,
        /// The event data: JSON (`{"text":"hi"}`, `42`), any other text is sent as a JSON
        /// string; `-` publishes each line of stdin as one event.
        data: String,
        /// Node WebSocket URL (ws:// or wss://).
        #[arg(long, env = "MURMUR_URL", default_value = DEFAULT_URL)]
        url: String,
        /// PEM file of the CA that signed the node's certificate, for wss:// URLs [default:
        /// the system's root certificates].
        #[arg(long, env = "MURMUR_CA", value_name = "FILE")]
        ca: Option<PathBuf>,
        /// A client token (JWT) for nodes with `auth = token`; `murmur token` mints one for
        /// development.
        #[arg(long, env = "MURMUR_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The event's idempotency key: sent again with the same id within the node's
        /// `dedupe_window`, it gets the first one's epoch and seq instead of becoming a
        /// second event. With `-`, the prefix of the lines' ids (`ID-1`, `ID-2`, …)
        /// [default: a random prefix per run].
        #[arg(long, value_name = "ID")]
        id: Option<String>,
        /// How many times an event is sent again, with its id, after `unavailable` or a lost
        /// connection.
        #[arg(long, default_value_t = 5, value_name = "N")]
        retries: u32,
    },
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// The nodes' token_hmac_secret (32+ bytes), for HS256/HS384/HS512 tokens.
    #[arg(
        long,
        env = "MURMUR_TOKEN_HMAC_SECRET",
        value_name = "SECRET",
        hide_env_values = true,
        required_unless_present = "key"
    )]
    secret: Option<murmur::config::Secret>,
    /// A PEM private key to sign with instead of the secret (RSA, EC P-256/P-384 or
    /// Ed25519; the nodes hold its public key in token_public_keys or token_jwks); needs
    /// --alg. Takes precedence over a secret from the environment.
    #[arg(long, value_name = "FILE")]
    key: Option<std::path::PathBuf>,
    /// The user (the `sub` claim), echoed in `welcome`.
    #[arg(long, value_name = "USER")]
    sub: String,
    /// A topic pattern the user may publish to; repeat for more.
    #[arg(long, value_name = "PATTERN")]
    allow_pub: Vec<String>,
    /// A topic pattern the user may subscribe within; repeat for more.
    #[arg(long, value_name = "PATTERN")]
    allow_sub: Vec<String>,
    /// A topic pattern whose history the user may replay (`sub` with `from`); repeat for more.
    #[arg(long, value_name = "PATTERN")]
    allow_history: Vec<String>,
    /// A topic pattern the user may never publish to, whatever the allows say.
    #[arg(long, value_name = "PATTERN")]
    deny_pub: Vec<String>,
    /// A topic pattern the user may never subscribe to or replay.
    #[arg(long, value_name = "PATTERN")]
    deny_sub: Vec<String>,
    /// How long the token is valid.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration, value_name = "DURATION")]
    ttl: std::time::Duration,
    /// The `aud` claim (nodes with token_audience require it).
    #[arg(long, value_name = "AUD")]
    aud: Option<String>,
    /// The `iss` claim (nodes with token_issuer require it).
    #[arg(long, value_name = "ISS")]
    iss: Option<String>,
    /// The signing algorithm [default: HS256 with --secret; required with --key].
    #[arg(long, value_parser = ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"])]
    alg: Option<String>,
    /// A `kid` for the header.
    #[arg(long, value_name = "KID")]
    kid: Option<String>,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a TOML file and print the effective settings (file, then MURMUR_* environment),
    /// secrets masked; exits non-zero with the reason when something is wrong.
    Check { file: PathBuf },
}

/// `murmur config check` reads settings exactly as `murmur serve` would.
#[derive(Debug, Parser)]
struct CheckSettings {
    #[command(flatten)]
    args: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Create a cluster CA: writes ca.pem and ca.key into --out.
    Ca {
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Issue a node certificate for NAME (the node's --name): writes NAME.pem and NAME.key.
    Node {
        name: String,
        /// The CA certificate.
        #[arg(long, default_value = "ca.pem")]
        ca: PathBuf,
        /// The CA private key.
        #[arg(long, default_value = "ca.key")]
        ca_key: PathBuf,
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

/// The binary's edge: a failure prints its message and causes on one line and exits 1.
/// Returning the error from `main` would print anyhow's `Debug` form instead, which carries a
/// stack backtrace whenever RUST_BACKTRACE is set (common on Rust developers' machines): noise
/// around a message meant for the user, such as a refused setting or an unreachable node.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    // Parsed by hand, not with `Cli::parse`, to tell where the cluster key came from.
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    let key_on_command_line = matches
        .subcommand_matches("serve")
        .and_then(|serve| serve.value_source("cluster_key"))
        == Some(ValueSource::CommandLine);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Serve(args) => {
            let settings = args.settings()?;
            init_logging(&settings.log, settings.log_format)?;
            if key_on_command_line {
                tracing::warn!(
                    "the cluster key was given with --cluster-key: every local user can read it \
                     in `ps` and /proc. Use MURMUR_CLUSTER_KEY or --cluster-key-file instead."
                );
            }
            runtime.block_on(serve(settings))
        }
        Command::Keygen => {
            println!("{}", murmur::cluster::key_rules::generate_key()?);
            Ok(())
        }
        Command::Config(ConfigCommand::Check { file }) => {
            let path = file.to_string_lossy().into_owned();
            let parsed = CheckSettings::try_parse_from(["murmur", "--config", path.as_str()])?;
            let settings = parsed.args.settings()?;
            print!("{}", settings.to_toml_masked());
            eprintln!("{path}: ok");
            Ok(())
        }
        Command::Sub {
            topic,
            url,
            ca,
            token,
            group,
            count,
            from,
        } => {
            init_logging("warn", LogFormat::Human)?;
            let tls = tls_for(&url, ca.as_deref())?;
            let start = ResumeCursor::from_start(&from, &topic, murmur::broker::now_ms())
                .map_err(anyhow::Error::msg)?;
            if group.is_some() && start.0.is_some() {
                bail!("a queue-group member cannot start from history: drop --from or --group");
            }
            runtime.block_on(sub(
                &url,
                tls,
                token.as_deref(),
                &topic,
                group.as_deref(),
                count,
                start,
            ))
        }
        Command::History {
            topic,
            from,
            limit,
            url,
            ca,
            token,
        } => {
            init_logging("warn", LogFormat::Human)?;
            runtime.block_on(history(&url, ca.as_deref(), token, &topic, &from, limit))
        }
        Command::Members { url, json } => {
            init_logging("warn", LogFormat::Human)?;
            runtime.block_on(members(&url, json))
        }
        Command::Cert(command) => cert(command),
        Command::Token(args) => {
            println!("{}", mint_token(&args)?);
            Ok(())
        }
        Command::Pub {
            topic,
            data,
            url,
            ca,
            token,
            id,
            retries,
        } => {
            init_logging("warn", LogFormat::Human)?;
            let tls = tls_for(std::slice::from_ref(&url), ca.as_deref())?;
            let options = PublishOptions {
                url,
                tls,
                token,
                retries,
            };
            runtime.block_on(publish(options, &topic, &data, id.as_deref()))
        }
    }
}

fn init_logging(default_filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(default_filter)
        .with_context(|| format!("invalid log filter `{default_filter}`"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        // One JSON object per line, with the spans (a connection's id and peer) in each.
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
    Ok(())
}

/// The TLS settings for the URLs when one of them is `wss://` (or `--ca` is given): the CA
/// file is read once, not at every reconnection.
fn tls_for(
    urls: &[String],
    ca: Option<&Path>,
) -> anyhow::Result<Option<std::sync::Arc<rustls::ClientConfig>>> {
    if ca.is_none() && !urls.iter().any(|u| murmur::client::wants_tls(u)) {
        return Ok(None);
    }
    Ok(Some(murmur::client::tls_config(ca)?))
}

async fn serve(settings: murmur::Settings) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let node = RunningNode::start(settings).await?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    loop {
        tokio::select! {
            result = tokio::signal::ctrl_c() => {
                result.context("cannot listen for SIGINT")?;
                break;
            }
            _ = terminate.recv() => break,
            _ = hangup.recv() => match node.reload_client_tls() {
                Ok(true) => tracing::info!("SIGHUP: client TLS certificate reloaded"),
                Ok(false) => tracing::info!("SIGHUP: no client TLS configured, nothing to reload"),
                Err(err) => tracing::error!(
                    %err,
                    "SIGHUP: client TLS certificate NOT reloaded; the previous one stays in use"
                ),
            },
        }
    }
    tracing::info!("shutting down");
    node.shutdown();
    node.stopped().await;
    Ok(())
}

/// Longest wait between reconnection attempts of `murmur sub`.
const MAX_RECONNECT_BACKOFF: std::time::Duration = std::time::Duration::from_secs(5);

async fn sub(
    urls: &[String],
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    token: Option<&str>,
    topic: &str,
    group: Option<&str>,
    count: Option<u64>,
    (start, mut cursor): (Option<serde_json::Value>, ResumeCursor),
) -> anyhow::Result<()> {
    if urls.is_empty() {
        bail!("give at least one --url");
    }
    let mut received = 0u64;
    let mut attempt = 0usize;
    let mut backoff = std::time::Duration::from_millis(100);
    let mut resuming = false;
    loop {
        let url = &urls[attempt % urls.len()];
        attempt += 1;
        // A queue group shares live work: a member has nothing of its own to resume.
        let from = if resuming {
            group.is_none().then(|| cursor.to_from(topic))
        } else {
            start.clone()
        };
        let connected = async {
            let mut client = Client::connect_with(url, tls.clone()).await?;
            if let Some(token) = token {
                client.authenticate(token).await?;
            }
            client.subscribe_from("cli", topic, group, from).await?;
            Ok::<_, murmur::client::ClientError>(client)
        };
        let mut client = match connected.await {
            Ok(client) => client,
            Err(err @ murmur::client::ClientError::Refused { .. }) => return Err(err.into()),
            Err(err) => {
                eprintln!("{url}: {err}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
                continue;
            }
        };
        backoff = std::time::Duration::from_millis(100);
        let how = if resuming { " (resumed)" } else { "" };
        eprintln!("subscribed to {topic} on {url}{how}");
        resuming = true;
        match relay(&mut client, &mut cursor, &mut received, count).await {
            Ok(()) => return Ok(()),
            Err(err) => eprintln!("{url}: {err}; reconnecting"),
        }
    }
}

/// `murmur history`: every retained event of `topic` from `from` (or `limit` of them) as
/// JSON lines; gaps and the cursor to continue from on stderr.
async fn history(
    url: &str,
    ca: Option<&Path>,
    token: Option<String>,
    topic: &str,
    from: &str,
    limit: Option<usize>,
) -> anyhow::Result<()> {
    let from = match from.trim() {
        "earliest" => json!("earliest"),
        cursor => serde_json::from_str(cursor).map_err(|e| {
            anyhow::anyhow!("--from is `earliest` or a cursor {{\"epoch\":\"…\",\"seq\":N}}: {e}")
        })?,
    };
    let client = murmur::api_client::ApiClient::new(url, token, ca)?;
    let mut stdout = std::io::stdout().lock();
    let mut printed = 0usize;
    let next = client
        .read_history(topic, from, limit, |item| match item {
            murmur::api_client::HistoryItem::Event(event) => {
                printed += 1;
                writeln!(stdout, "{event}")
            }
            murmur::api_client::HistoryItem::Gap(gap) => {
                eprintln!("gap: {gap}");
                Ok(())
            }
        })
        .await?;
    stdout.flush()?;
    match next {
        Some(next) => eprintln!("{printed} events of {topic}; next: {next}"),
        None => eprintln!("{printed} events of {topic}"),
    }
    Ok(())
}

/// Prints events until `count` is reached (Ok) or the connection fails (Err).
async fn relay(
    client: &mut Client,
    cursor: &mut ResumeCursor,
    received: &mut u64,
    count: Option<u64>,
) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    while count.is_none_or(|c| *received < c) {
        let frame = client.next_frame().await?;
        match frame["op"].as_str() {
            Some("event") => {
                if cursor.observe(&frame) {
                    writeln!(stdout, "{frame}")?;
                    stdout.flush()?;
                    *received += 1;
                }
                // A queue-group delivery is acknowledged once it is written out (a duplicate
                // was written before): if stdout fails first, the node redelivers it to
                // another member when the ack timeout passes.
                if let Some(delivery) = frame["delivery"].as_str() {
                    client
                        .send(&json!({"op": "ack", "delivery": delivery}))
                        .await?;
                }
            }
            Some("gap") => {
                cursor.observe(&frame);
                eprintln!("gap: {frame}");
            }
            Some("error") => eprintln!("error from node: {frame}"),
            _ => {}
        }
    }
    Ok(())
}

/// Publishes `data` (or each line of stdin for `-`) with an id each, sending an event again
/// with its id after `unavailable` or a lost connection (see `murmur::publisher`).
async fn publish(
    options: PublishOptions,
    topic: &str,
    data: &str,
    id: Option<&str>,
) -> anyhow::Result<()> {
    let mut publisher = Publisher::connect(options, topic).await?;
    if data != "-" {
        let id = id.map_or_else(|| IdSource::new(None).next_id(), str::to_owned);
        publisher.publish(data_from_arg(data), id).await?;
        return match publisher.finish().await?.pop() {
            Some(Outcome::Stored { epoch, seq, .. }) => {
                eprintln!("published to {topic}: epoch {epoch} seq {seq}");
                Ok(())
            }
            Some(Outcome::Refused { error, .. }) => bail!("the node refused the event: {error}"),
            None => bail!("no answer from the node"),
        };
    }
    let mut ids = IdSource::new(id);
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        publisher
            .publish(data_from_arg(&line), ids.next_id())
            .await?;
    }
    let outcomes = publisher.finish().await?;
    let mut refused_count = 0;
    for outcome in &outcomes {
        if let Outcome::Refused { id, error } = outcome {
            eprintln!("event {id} refused: {error}");
            refused_count += 1;
        }
    }
    eprintln!("{}", stored_summary(topic, &outcomes));
    if refused_count > 0 {
        bail!("{refused_count} of {} events were refused", outcomes.len());
    }
    Ok(())
}

/// `published 3 events to chat.random: epoch 5f0c… seq 4..=6`: the positions the events
/// got, per epoch in the order the epochs came (a new one when the topic's owner changed).
fn stored_summary(topic: &str, outcomes: &[Outcome]) -> String {
    let mut epochs: Vec<(&str, u64, u64)> = Vec::new();
    let mut stored = 0usize;
    for outcome in outcomes {
        let Outcome::Stored { epoch, seq, .. } = outcome else {
            continue;
        };
        stored += 1;
        match epochs.iter_mut().find(|(e, _, _)| e == epoch) {
            Some((_, low, high)) => {
                *low = (*low).min(*seq);
                *high = (*high).max(*seq);
            }
            None => epochs.push((epoch, *seq, *seq)),
        }
    }
    let noun = if stored == 1 { "event" } else { "events" };
    let mut text = format!("published {stored} {noun} to {topic}");
    for (i, (epoch, low, high)) in epochs.iter().enumerate() {
        text.push_str(if i == 0 { ": " } else { ", " });
        if low == high {
            text.push_str(&format!("epoch {epoch} seq {low}"));
        } else {
            text.push_str(&format!("epoch {epoch} seq {low}..={high}"));
        }
    }
    text
}

async fn members(url: &str, raw: bool) -> anyhow::Result<()> {
    let body = murmur::client::http_get(url, "/v1/cluster").await?;
    if raw {
        println!("{body}");
        return Ok(());
    }
    let view: serde_json::Value =
        serde_json::from_str(&body).context("the node answered /v1/cluster with invalid JSON")?;
    let me = view["self"].as_str().unwrap_or("");
    let header = ["NAME", "STATE", "GENERATION", "LISTEN", "GOSSIP", "QUIC"];
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    let rows: Vec<[String; 6]> = view["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let name = text(&m["name"]);
            let marker = if name == me { " *" } else { "" };
            [
                format!("{name}{marker}"),
                text(&m["state"]),
                text(&m["generation"]),
                text(&m["listen"]),
                text(&m["gossip"]),
                text(&m["quic"]),
            ]
        })
        .collect();
    // Each column as wide as its widest cell, so long names and IPv6 addresses stay aligned.
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: [&str; 6]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            // GENERATION is a number: right-aligned.
            .map(|(i, (cell, w))| {
                if i == 2 {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header);
    for row in &rows {
        line([&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]].map(String::as_str));
    }
    println!("* the node that answered ({url})");
    Ok(())
}

fn cert(command: CertCommand) -> anyhow::Result<()> {
    use murmur::cluster::security::files;
    match command {
        CertCommand::Ca { out } => {
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let (cert, key) = files::new_ca()?;
            write_new(&out.join("ca.pem"), &cert)?;
            write_secret(&out.join("ca.key"), &key)?;
            eprintln!(
                "wrote {} and {}",
                out.join("ca.pem").display(),
                out.join("ca.key").display()
            );
        }
        CertCommand::Node {
            name,
            ca,
            ca_key,
            out,
        } => {
            let read = |p: &Path| {
                std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
            };
            let (cert, key) = files::new_node(&name, &read(&ca)?, &read(&ca_key)?)?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let (cert_path, key_path) = (
                out.join(format!("{name}.pem")),
                out.join(format!("{name}.key")),
            );
            write_new(&cert_path, &cert)?;
            write_secret(&key_path, &key)?;
            eprintln!("wrote {} and {}", cert_path.display(), key_path.display());
        }
    }
    Ok(())
}

fn mint_token(args: &TokenArgs) -> anyhow::Result<String> {
    use murmur::auth::token::{TokenClaims, mint};
    use murmur::auth::{DenyClaim, PermissionClaim, Permissions};
    let (alg, key) = signing_key(args)?;
    let permissions = PermissionClaim {
        publish: args.allow_pub.clone(),
        subscribe: args.allow_sub.clone(),
        history: args.allow_history.clone(),
        deny: DenyClaim {
            publish: args.deny_pub.clone(),
            subscribe: args.deny_sub.clone(),
        },
    };
    // Refuse what a node would refuse, rather than mint a token that cannot be used.
    Permissions::from_claim(
        &permissions,
        murmur::routing::topic::DEFAULT_MAX_TOPIC_BYTES,
    )?;
    if args.ttl.is_zero() {
        bail!("--ttl must be more than zero");
    }
    let mut claims = TokenClaims::new(&args.sub, args.ttl, permissions);
    claims.aud = args.aud.clone();
    claims.iss = args.iss.clone();
    Ok(mint(&claims, alg, args.kid.as_deref(), &key)?)
}

/// The algorithm and key `murmur token` signs with: the PEM key of --key, else the secret.
fn signing_key(
    args: &TokenArgs,
) -> anyhow::Result<(
    murmur::auth::token::Algorithm,
    murmur::auth::token::EncodingKey,
)> {
    use murmur::auth::token::{Algorithm, EncodingKey};
    let alg: Option<Algorithm> = args
        .alg
        .as_deref()
        .map(str::parse)
        .transpose()
        .context("--alg")?;
    let Some(path) = &args.key else {
        let secret = args
            .secret
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("give --secret (or MURMUR_TOKEN_HMAC_SECRET) or --key"))?
            .0
            .as_bytes();
        murmur::auth::check_hmac_secret(secret)
            .map_err(|reason| anyhow::anyhow!("--secret {reason}"))?;
        let alg = alg.unwrap_or(Algorithm::HS256);
        if !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            bail!("--alg {alg:?} signs with a private key: give --key FILE");
        }
        return Ok((alg, EncodingKey::from_secret(secret).context("--secret")?));
    };
    let Some(alg) = alg else {
        bail!("--key needs --alg (RS256, ES256, EdDSA, …): the key file does not say which");
    };
    let pem =
        std::fs::read(path).with_context(|| format!("cannot read --key {}", path.display()))?;
    let key = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            bail!("--alg {alg:?} signs with a secret, not --key")
        }
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .with_context(|| format!("--key {} is not a PEM {alg:?} private key", path.display()))?;
    Ok((alg, key))
}

/// Never overwrites: replacing a CA or a key by accident cuts nodes off.
fn write_new(path: &Path, contents: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

/// Private keys are readable by their owner only, and never overwritten.
fn write_secret(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}
