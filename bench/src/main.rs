//! `murmur-bench`: load against Murmur and, for comparison in the same run, against NATS
//! over WebSocket.
//!
//! Scenario `fanout`: S subscribers spread over the given URLs subscribe to one topic; one
//! publisher sends M messages of P bytes, at full speed or at a fixed rate. Each message
//! carries its send time, so every subscriber measures end-to-end latency; deliveries/s, the
//! latency percentiles and the messages lost (must be 0) are reported as a table row and one
//! JSON line.

mod nats;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[derive(Debug, Parser)]
#[command(name = "murmur-bench", version)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum System {
    Murmur,
    Nats,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// One publisher, S subscribers on one topic.
    Fanout {
        #[arg(long, value_enum)]
        system: System,
        /// WebSocket URLs of the nodes, comma-separated; subscribers are spread over them and
        /// the publisher uses the last one.
        #[arg(long, value_delimiter = ',', required = true)]
        url: Vec<String>,
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
        /// Payload bytes per message.
        #[arg(long, default_value_t = 128)]
        size: usize,
        /// Messages per second; full speed when absent.
        #[arg(long)]
        rate: Option<u64>,
        /// Label for the report (e.g. the git revision).
        #[arg(long, default_value = "")]
        label: String,
    },
}

const TOPIC: &str = "bench.fanout";
const WARMUP: &[u8] = b"warmup";

/// One client connection, to either system.
struct Conn {
    system: System,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    parser: nats::Parser,
}

impl Conn {
    async fn connect(system: System, url: &str) -> anyhow::Result<Self> {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .with_context(|| format!("connect {url}"))?;
        let mut conn = Self {
            system,
            ws,
            parser: nats::Parser::default(),
        };
        match system {
            // The node greets first.
            System::Murmur => {
                conn.next_text().await?;
            }
            System::Nats => {
                loop {
                    if let nats::Incoming::Info = conn.next_nats().await? {
                        break;
                    }
                }
                conn.send(nats::connect().as_bytes().to_vec()).await?;
            }
        }
        Ok(conn)
    }

    async fn send(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        let message = match self.system {
            System::Murmur => Message::text(String::from_utf8(bytes)?),
            System::Nats => Message::binary(bytes),
        };
        self.ws.send(message).await?;
        Ok(())
    }

    async fn next_text(&mut self) -> anyhow::Result<String> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
                Some(Ok(Message::Close(_))) | None => bail!("connection closed"),
                Some(Err(e)) => return Err(e.into()),
                _ => {}
            }
        }
    }

    async fn next_nats(&mut self) -> anyhow::Result<nats::Incoming> {
        loop {
            if let Some(message) = self.parser.next() {
                if message == nats::Incoming::Ping {
                    self.send(b"PONG\r\n".to_vec()).await?;
                    continue;
                }
                return Ok(message);
            }
            match self.ws.next().await {
                Some(Ok(Message::Binary(b))) => self.parser.push(&b),
                Some(Ok(Message::Text(t))) => self.parser.push(t.as_bytes()),
                Some(Ok(Message::Close(_))) | None => bail!("connection closed"),
                Some(Err(e)) => return Err(e.into()),
                _ => {}
            }
        }
    }

    /// Subscribes and waits until the node confirmed it.
    async fn subscribe(&mut self, topic: &str) -> anyhow::Result<()> {
        match self.system {
            System::Murmur => {
                let sub = json!({"op": "sub", "id": "b", "topic": topic}).to_string();
                self.send(sub.into_bytes()).await?;
                loop {
                    let frame = self.next_text().await?;
                    if frame.contains(r#""op":"ok""#) {
                        return Ok(());
                    }
                    if frame.contains(r#""op":"error""#) {
                        bail!("subscribe refused: {frame}");
                    }
                }
            }
            System::Nats => {
                self.send(nats::sub(topic, 1).into_bytes()).await?;
                self.round_trip().await
            }
        }
    }

    /// A ping answered: everything sent before has been read by the node.
    async fn round_trip(&mut self) -> anyhow::Result<()> {
        match self.system {
            System::Murmur => {
                self.send(br#"{"op":"ping","ref":"rt"}"#.to_vec()).await?;
                while !self.next_text().await?.contains(r#""op":"pong""#) {}
            }
            System::Nats => {
                self.send(b"PING\r\n".to_vec()).await?;
                loop {
                    match self.next_nats().await? {
                        nats::Incoming::Pong => break,
                        nats::Incoming::Err(e) => bail!("nats: {e}"),
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    async fn publish(&mut self, topic: &str, payload: &[u8]) -> anyhow::Result<()> {
        let bytes = match self.system {
            // The payload is ASCII without quotes, so it is a JSON string as is.
            System::Murmur => format!(
                r#"{{"op":"pub","topic":"{topic}","data":"{}"}}"#,
                std::str::from_utf8(payload)?
            )
            .into_bytes(),
            System::Nats => nats::publish(topic, payload),
        };
        self.send(bytes).await
    }

    /// The payload of the next message received.
    async fn next_payload(&mut self) -> anyhow::Result<Vec<u8>> {
        match self.system {
            System::Murmur => loop {
                let frame = self.next_text().await?;
                if let Some(start) = frame.find(r#""data":""#) {
                    let rest = &frame[start + 8..];
                    let end = rest.find('"').unwrap_or(rest.len());
                    return Ok(rest.as_bytes()[..end].to_vec());
                }
            },
            System::Nats => loop {
                if let nats::Incoming::Msg { payload, .. } = self.next_nats().await? {
                    return Ok(payload);
                }
            },
        }
    }
}

/// `t=<ns since start>;` then padding up to `size` bytes.
fn payload(start: Instant, size: usize) -> Vec<u8> {
    let mut p = format!("t={};", start.elapsed().as_nanos()).into_bytes();
    p.resize(size.max(p.len()), b'x');
    p
}

fn sent_at(payload: &[u8]) -> Option<u128> {
    let text = std::str::from_utf8(payload).ok()?;
    text.strip_prefix("t=")?.split(';').next()?.parse().ok()
}

struct SubscriberResult {
    received: usize,
    latency_us: Histogram<u64>,
    last_at: Option<Duration>,
}

#[allow(clippy::too_many_arguments)]
async fn fanout(
    system: System,
    urls: &[String],
    subscribers: usize,
    messages: usize,
    size: usize,
    rate: Option<u64>,
    label: &str,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let warmed = Arc::new(AtomicUsize::new(0));
    // Subscribers connect one after another; none may give up before the publisher starts.
    let publishing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let url = urls[i % urls.len()].clone();
        let mut conn = Conn::connect(system, &url).await?;
        conn.subscribe(TOPIC).await?;
        let warmed = warmed.clone();
        let publishing = publishing.clone();
        tasks.push(tokio::spawn(async move {
            let mut result = SubscriberResult {
                received: 0,
                latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
                last_at: None,
            };
            let mut warm = false;
            while result.received < messages {
                let idle = if publishing.load(Ordering::Relaxed) {
                    5
                } else {
                    300
                };
                let next =
                    tokio::time::timeout(Duration::from_secs(idle), conn.next_payload()).await;
                let Ok(Ok(p)) = next else { break };
                if p == WARMUP {
                    if !warm {
                        warm = true;
                        warmed.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                let now = start.elapsed();
                if let Some(sent) = sent_at(&p) {
                    let us = (now.as_nanos().saturating_sub(sent) / 1000).max(1) as u64;
                    let _ = result.latency_us.record(us.min(60_000_000));
                }
                result.received += 1;
                result.last_at = Some(now);
            }
            result
        }));
    }
    let mut publisher = Conn::connect(system, urls.last().context("a URL")?).await?;
    publishing.store(true, std::sync::atomic::Ordering::Relaxed);
    // Interest travels between nodes asynchronously: send warm-up messages until every
    // subscriber has seen one.
    let warm_deadline = Instant::now() + Duration::from_secs(30);
    while warmed.load(Ordering::Relaxed) < subscribers {
        if Instant::now() > warm_deadline {
            bail!(
                "only {} of {subscribers} subscribers heard the warm-up",
                warmed.load(Ordering::Relaxed)
            );
        }
        publisher.publish(TOPIC, WARMUP).await?;
        publisher.round_trip().await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let first_send = start.elapsed();
    let interval = rate.map(|r| Duration::from_nanos(1_000_000_000 / r.max(1)));
    let mut next = Instant::now();
    for _ in 0..messages {
        if let Some(interval) = interval {
            next += interval;
            tokio::time::sleep_until(next.into()).await;
        }
        publisher.publish(TOPIC, &payload(start, size)).await?;
    }
    publisher.round_trip().await?;

    let mut received = 0usize;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut last = first_send;
    for task in tasks {
        let result = task.await?;
        received += result.received;
        latency.add(&result.latency_us)?;
        if let Some(at) = result.last_at {
            last = last.max(at);
        }
    }
    let expected = subscribers * messages;
    let seconds = (last - first_send).as_secs_f64().max(1e-9);
    let rate_label = rate.map_or("full speed".to_owned(), |r| format!("{r}/s"));
    let per_second = received as f64 / seconds;
    let p = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{:<7} fanout {subscribers} subs x {messages} msgs x {size} B @ {rate_label:<10} {per_second:>12.0} deliveries/s  p50 {:>8.2} ms  p90 {:>8.2}  p99 {:>8.2}  p99.9 {:>8.2}  max {:>8.2}  lost {}",
        format!("{system:?}").to_lowercase(),
        p(0.5),
        p(0.9),
        p(0.99),
        p(0.999),
        latency.max() as f64 / 1000.0,
        expected - received,
    );
    println!(
        "{}",
        json!({
            "scenario": "fanout", "system": format!("{system:?}").to_lowercase(), "label": label,
            "subscribers": subscribers, "messages": messages, "size": size, "rate": rate,
            "deliveries_per_s": per_second, "lost": expected - received,
            "latency_ms": {"p50": p(0.5), "p90": p(0.9), "p99": p(0.99), "p999": p(0.999),
                            "max": latency.max() as f64 / 1000.0},
        })
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Fanout {
            system,
            url,
            subscribers,
            messages,
            size,
            rate,
            label,
        } => fanout(system, &url, subscribers, messages, size, rate, &label).await,
    }
}
