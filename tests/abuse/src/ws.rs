//! A minimal JSON WebSocket client for the loads: connect (the node's `welcome`), send
//! frames without waiting, read frames, and ask a question that has a `ref`.

use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The node's name, from `welcome`.
    pub node: String,
}

impl Client {
    /// Connects and waits for the node's `welcome` (within 10 s).
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        tokio::time::timeout(Duration::from_secs(10), Self::connect_unbounded(url))
            .await
            .with_context(|| format!("connect {url}: no welcome within 10 s"))?
    }

    async fn connect_unbounded(url: &str) -> anyhow::Result<Self> {
        // Frames the node sends may be large (a replay page); the client takes any.
        let config = WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
            .await
            .with_context(|| format!("connect {url}"))?;
        let mut client = Self {
            ws,
            node: String::new(),
        };
        let welcome = client.recv().await?;
        if welcome["op"] != "welcome" {
            bail!("expected welcome, got {welcome}");
        }
        client.node = welcome["node"].as_str().unwrap_or_default().to_owned();
        Ok(client)
    }

    pub async fn send(&mut self, frame: &Value) -> anyhow::Result<()> {
        self.ws.send(Message::text(frame.to_string())).await?;
        Ok(())
    }

    /// The next JSON frame (WebSocket pings are answered by reading on).
    pub async fn recv(&mut self) -> anyhow::Result<Value> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text)?),
                Some(Ok(Message::Close(frame))) => bail!(
                    "closed by the node: {}",
                    frame.map_or_else(String::new, |f| format!("{} {}", f.code, f.reason))
                ),
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(err.into()),
                None => bail!("connection closed"),
            }
        }
    }

    /// Sends `frame` (which has `ref` or `id` = `reference`) and reads until the answer
    /// naming it, within 10 s; other frames in between are skipped.
    pub async fn request(&mut self, frame: &Value, reference: &str) -> anyhow::Result<Value> {
        self.send(frame).await?;
        let wait = async {
            loop {
                let answer = self.recv().await?;
                if answer["ref"] == reference {
                    return anyhow::Ok(answer);
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .with_context(|| {
                let shown: String = reference.chars().take(40).collect();
                format!("no answer to `{shown}` within 10 s")
            })?
    }

    /// `ok` for a subscription, or the error frame as an error.
    pub async fn subscribe(&mut self, frame: Value) -> anyhow::Result<()> {
        let id = frame["id"].as_str().unwrap_or_default().to_owned();
        let answer = self.request(&frame, &id).await?;
        if answer["op"] != "ok" {
            bail!("sub `{id}` refused: {answer}");
        }
        Ok(())
    }

    /// A `ping` answered by `pong`: the node reads and answers this connection.
    pub async fn ping(&mut self, reference: &str) -> anyhow::Result<()> {
        let answer = self
            .request(&json!({"op": "ping", "ref": reference}), reference)
            .await?;
        if answer["op"] != "pong" {
            bail!("ping answered with {answer}");
        }
        Ok(())
    }
}

/// A new client on `url` that gets its `welcome` and a `pong` within `limit`: the node still
/// takes and serves connections.
pub async fn probe(url: &str, limit: Duration) -> anyhow::Result<Duration> {
    let started = std::time::Instant::now();
    let exchange = async {
        let mut client = Client::connect(url).await?;
        client.ping("probe").await
    };
    tokio::time::timeout(limit, exchange)
        .await
        .with_context(|| format!("{url}: no welcome and pong within {limit:?}"))??;
    Ok(started.elapsed())
}

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

impl Client {
    /// The two halves, for a writer and a reader that run apart.
    pub fn split(
        self,
    ) -> (
        futures_util::stream::SplitSink<Stream, Message>,
        futures_util::stream::SplitStream<Stream>,
    ) {
        self.ws.split()
    }
}
