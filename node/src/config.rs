//! Node settings: defaults, overridden by a TOML file, overridden by environment variables
//! and flags (`clap` reads a flag and its `MURMUR_…` variable as one source, the flag winning).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::auth::permissions::PermissionClaim;
use crate::routing::topic::DEFAULT_MAX_TOPIC_BYTES;

/// The longest `token_leeway` accepted: more would keep expired tokens alive for long.
pub const MAX_TOKEN_LEEWAY: Duration = Duration::from_secs(300);
/// The longest `hello_timeout` accepted.
pub const MAX_HELLO_TIMEOUT: Duration = Duration::from_secs(120);
/// `topic_idle_forget` by default: past the default `history_max_age` (10 minutes), so a
/// resume still gets exact `retention` gaps for a while after a topic's history expired.
pub const DEFAULT_TOPIC_IDLE_FORGET: Duration = Duration::from_secs(15 * 60);
/// Bounds of `topic_idle_forget`: the sweep runs once a second; past a week the bound on
/// topic bookkeeping would be no bound.
const MIN_TOPIC_IDLE_FORGET: Duration = Duration::from_secs(1);
const MAX_TOPIC_IDLE_FORGET: Duration = Duration::from_secs(7 * 24 * 3600);

/// Everything a node needs to run. Every field is a key of the TOML file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// This node's name in the cluster and in `welcome` frames.
    pub name: String,
    /// The client address: WebSocket at `/ws`, and `/healthz` and `/readyz`.
    pub listen: SocketAddr,
    /// PEM certificate chain for the client listener; with `client_tls_key` the listener
    /// speaks TLS only (`wss://`, `https://`). Reloaded on SIGHUP.
    pub client_tls_cert: Option<PathBuf>,
    /// PEM private key of `client_tls_cert`.
    pub client_tls_key: Option<PathBuf>,
    /// Origins a WebSocket upgrade that carries an `Origin` header may come from
    /// (`https://app.example.com`, `https://*.example.com`, `*`); empty: same origin only.
    pub allowed_origins: Vec<String>,
    /// The operators' address: `/metrics`, `/v1/cluster` (and `/healthz`, `/readyz`).
    pub admin_listen: SocketAddr,
    /// Client connections held at once (also capped by the open-file limit).
    pub max_connections: usize,
    /// Client connections held at once from one IPv4 address or IPv6 /64 (0: no limit).
    pub max_connections_per_ip: usize,
    /// A client connection that has not finished its TLS handshake and its WebSocket
    /// upgrade within this is closed.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// The UDP address for gossip (membership).
    pub gossip: SocketAddr,
    /// The UDP address of the QUIC mesh between nodes.
    pub quic: SocketAddr,
    /// Gossip addresses (`host:port`, DNS names allowed) of nodes to join through.
    pub seeds: Vec<String>,
    /// The shared secret that authenticates gossip and derives the cluster's TLS CA (32+
    /// characters, not a placeholder: see `cluster::key_rules`).
    pub cluster_key: Option<Secret>,
    /// A file holding the cluster key (one trailing newline ignored), instead of `cluster_key`.
    pub cluster_key_file: Option<PathBuf>,
    /// Gossip packets stamped further than this from this node's clock are refused (replay
    /// protection); node clocks must agree to within it.
    #[serde(with = "humantime_serde")]
    pub gossip_replay_window: Duration,
    /// PEM file of the CA that signs node certificates (own PKI instead of the derived CA).
    pub tls_ca: Option<PathBuf>,
    /// PEM file of this node's certificate chain (own PKI).
    pub tls_cert: Option<PathBuf>,
    /// PEM file of this node's private key (own PKI).
    pub tls_key: Option<PathBuf>,
    /// The IP peers and clients should use to reach this node, when it listens on 0.0.0.0/[::].
    pub advertise_ip: Option<IpAddr>,
    /// Events queued towards one peer at most. Publishes hold the events they cause in
    /// these queues against `publish_buffer_bytes`, so under load the buffer pushes back on
    /// publishers first; a queue that fills all the same is a stuck peer: further events are
    /// dropped (its plain subscribers see the hole and resync).
    pub peer_queue: usize,
    /// A peer that takes none of the events queued for it for this long is stuck: its link
    /// is reset, its queue dropped, and subscribers resync. A merely slow peer slows the
    /// publishers feeding it instead.
    #[serde(with = "humantime_serde")]
    pub peer_stall_timeout: Duration,
    /// Bytes of publishes this node's clients may have on their way to the topics' owners
    /// at once; beyond it publishing connections wait (up to 5 s, then `unavailable`).
    pub publish_buffer_bytes: usize,
    /// Nodes that store each topic's events, its owner included (when that many are up).
    pub replication: usize,
    /// The largest client frame accepted, in bytes.
    pub max_frame_bytes: usize,
    /// The most subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Deprecated (use `slow_consumer_bytes`): when not 0, also the most events queued for
    /// one connection before it is disconnected as a slow consumer.
    pub outbound_queue: usize,
    /// Bytes of events queued for one connection (payload, topic and the queue slot of
    /// each) before it is disconnected as a slow consumer.
    pub slow_consumer_bytes: usize,
    /// The longest topic or pattern accepted, in bytes.
    pub max_topic_bytes: usize,
    /// Bytes read from a client's socket at once: the per-connection read buffer, kept for
    /// the connection's life (a larger frame still arrives whole).
    pub ws_read_buffer: usize,
    /// Bytes of events gathered before they are written to a client's socket (a flush
    /// writes whatever is gathered sooner).
    pub ws_write_buffer: usize,
    /// How often the node pings each client.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A socket write that takes longer than this closes the connection as a slow consumer.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// How long a queue-group delivery waits for its `ack` before going to another member.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Queue-group deliveries one member may hold unacknowledged; at the bound it gets no
    /// more until it acks (other members get them).
    pub max_unacked: usize,
    /// The longest subscription id, `ref`, delivery id, group or client name accepted, in
    /// bytes.
    pub max_id_bytes: usize,
    /// Publishes per second one connection may make (0: no limit); over it a publish is
    /// refused with `rate_limited`.
    pub publish_rate: u32,
    /// Publishes one connection may make at once above `publish_rate` (the bucket's size).
    pub publish_burst: u32,
    /// On shutdown, how long to wait for clients to be told and connections to close.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Events kept per topic for resuming subscribers (0 keeps none).
    pub history_max_events: usize,
    /// How long events are kept for resuming subscribers.
    #[serde(with = "humantime_serde")]
    pub history_max_age: Duration,
    /// Bytes of events kept per topic (payload, topic name and a fixed share per event);
    /// the oldest events go first, the newest stays even if it alone is larger.
    pub history_max_bytes: usize,
    /// Bytes of events kept across every topic on this node, replicas' copies included;
    /// over it, the topic being appended to gives up its oldest events first.
    pub history_max_total_bytes: usize,
    /// Retention for topics under a prefix; the longest matching prefix wins (file only).
    pub history_overrides: Vec<HistoryOverride>,
    /// A topic with no event for this long and no retained history is forgotten (its epoch
    /// and last seq): what bounds the node's per-topic bookkeeping.
    #[serde(with = "humantime_serde")]
    pub topic_idle_forget: Duration,
    /// Log filter, in `RUST_LOG` syntax (`info`, `murmur=debug`, …).
    pub log: String,
    /// `human` (default) or `json` (one object per line, for log collectors).
    pub log_format: LogFormat,
    /// Client authentication: `none` (every connection may do everything) or `token` (JWTs).
    pub auth: AuthMode,
    /// Shared secret for HS256/HS384/HS512 tokens.
    pub token_hmac_secret: Option<Secret>,
    /// A file holding the HMAC secret (surrounding whitespace is ignored), instead of
    /// `token_hmac_secret`.
    pub token_hmac_secret_file: Option<PathBuf>,
    /// PEM public keys (RSA, EC P-256/P-384, Ed25519), one per file; a key's `kid` is its file
    /// name without the extension (`keys/2026-12.pem` has kid `2026-12`).
    pub token_public_keys: Vec<PathBuf>,
    /// A JWKS: a file path, or an `https://` URL (`http://` only for loopback hosts).
    pub token_jwks: Option<String>,
    /// When set, tokens must carry this `aud`.
    pub token_audience: Option<String>,
    /// When set, tokens must carry this `iss`.
    pub token_issuer: Option<String>,
    /// Clock skew allowed when checking `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub token_leeway: Duration,
    /// With `auth = token`, what a connection without a token may do; unset refuses it.
    pub anonymous_permissions: Option<PermissionClaim>,
    /// With `auth = token`, a connection that has not said a valid `hello` by then is closed.
    #[serde(with = "humantime_serde")]
    pub hello_timeout: Duration,
}

/// How clients are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No authentication: every connection may do everything (development on loopback).
    #[default]
    None,
    /// A JWT in `hello` (or `Authorization: Bearer`), with per-topic permissions.
    Token,
}

/// The most `max_connections` (and `max_connections_per_ip`) accepted.
const MAX_CONNECTIONS_BOUND: usize = 10_000_000;
/// The longest `handshake_timeout` accepted: longer only helps idle sockets hold file
/// descriptors.
const MAX_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Retention for the topics that start with `prefix`; unset fields keep the defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryOverride {
    pub prefix: String,
    pub max_events: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
    pub max_bytes: Option<usize>,
}

/// Upper bounds of settings a typo could make absurd (a node that tries to honour them runs
/// out of memory or never times anything out).
const MAX_REPLICATION: usize = 16;
const MAX_FRAME_BYTES_BOUND: usize = 64 * 1024 * 1024;

impl Default for Settings {
    fn default() -> Self {
        Self {
            name: default_node_name(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            client_tls_cert: None,
            client_tls_key: None,
            allowed_origins: Vec::new(),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 7403)),
            max_connections: 100_000,
            max_connections_per_ip: 1000,
            handshake_timeout: Duration::from_secs(10),
            gossip: SocketAddr::from(([127, 0, 0, 1], 7401)),
            quic: SocketAddr::from(([127, 0, 0, 1], 7402)),
            seeds: Vec::new(),
            cluster_key: None,
            cluster_key_file: None,
            gossip_replay_window: crate::cluster::envelope::DEFAULT_REPLAY_WINDOW,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            advertise_ip: None,
            peer_queue: 1 << 20,
            peer_stall_timeout: Duration::from_secs(10),
            publish_buffer_bytes: 64 * 1024 * 1024,
            replication: 2,
            max_frame_bytes: 1024 * 1024,
            max_subscriptions: 1024,
            outbound_queue: 0,
            slow_consumer_bytes: 64 * 1024 * 1024,
            max_topic_bytes: DEFAULT_MAX_TOPIC_BYTES,
            ws_read_buffer: 1024,
            ws_write_buffer: 16 * 1024,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(30),
            max_unacked: 1000,
            max_id_bytes: 256,
            publish_rate: 0,
            publish_burst: 1000,
            shutdown_grace: Duration::from_secs(10),
            history_max_events: 1000,
            history_max_age: Duration::from_secs(600),
            history_max_bytes: crate::routing::history::RetentionPolicy::DEFAULT_MAX_BYTES,
            history_max_total_bytes: crate::routing::history::Retention::DEFAULT_MAX_TOTAL_BYTES,
            history_overrides: Vec::new(),
            topic_idle_forget: DEFAULT_TOPIC_IDLE_FORGET,
            log: "info".to_owned(),
            log_format: LogFormat::Human,
            auth: AuthMode::None,
            token_hmac_secret: None,
            token_hmac_secret_file: None,
            token_public_keys: Vec::new(),
            token_jwks: None,
            token_audience: None,
            token_issuer: None,
            token_leeway: Duration::from_secs(30),
            anonymous_permissions: None,
            hello_timeout: Duration::from_secs(5),
        }
    }
}

/// A secret setting: shown masked in debug output and in printed configurations.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"****\"")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Bounds of `gossip_replay_window`: under a second, ordinary scheduling delays would be
/// taken for replays; over ten minutes, a replay has all the time it needs.
const MIN_REPLAY_WINDOW: Duration = Duration::from_secs(1);
const MAX_REPLAY_WINDOW: Duration = Duration::from_secs(600);

/// Reads a key file: its contents without the trailing newline (`echo KEY > file` adds one).
fn read_key_file(path: &Path) -> Result<Secret, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        setting: "cluster_key_file",
        reason,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|err| invalid(format!("cannot read {}: {err}", path.display())))?;
    let key = text
        .strip_suffix('\n')
        .map_or(text.as_str(), |k| k.strip_suffix('\r').unwrap_or(k));
    if key.is_empty() {
        return Err(invalid(format!("{} is empty", path.display())));
    }
    Ok(Secret(key.to_owned()))
}

/// The permission bits of a key file when group or others may read it (a warning at start:
/// any local user could join the cluster).
pub fn key_file_readable_by_others(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o044 != 0).then_some(mode)
}

fn default_node_name() -> String {
    gethostname::gethostname()
        .into_string()
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "murmur".to_owned())
}

#[derive(Debug, Error)]
pub enum ConfigError {
    // The cause is part of the message (not a `source`), so it is printed once.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("invalid config file {path}: {reason}")]
    Parse {
        path: PathBuf,
        reason: Box<toml::de::Error>,
    },
    #[error("invalid setting `{setting}`: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
}

impl Settings {
    /// The effective settings as TOML, with secrets masked.
    pub fn to_toml_masked(&self) -> String {
        let mut shown = self.clone();
        if shown.cluster_key.is_some() {
            shown.cluster_key = Some(Secret("****".into()));
        }
        if shown.token_hmac_secret.is_some() {
            shown.token_hmac_secret = Some(Secret("****".into()));
        }
        toml::to_string(&shown).unwrap_or_else(|err| format!("# cannot print settings: {err}\n"))
    }

    /// The cluster key in effect: `cluster_key`, or what `cluster_key_file` holds (without
    /// its trailing newline); None for the unauthenticated development cluster. Refuses a
    /// weak key, naming the rule it breaks.
    pub fn effective_cluster_key(&self) -> Result<Option<Secret>, ConfigError> {
        let (key, setting) = match (&self.cluster_key, &self.cluster_key_file) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid {
                    setting: "cluster_key/cluster_key_file",
                    reason: "give one or the other, not both".to_owned(),
                });
            }
            (Some(key), None) => (key.clone(), "cluster_key"),
            (None, Some(path)) => (read_key_file(path)?, "cluster_key_file"),
        };
        crate::cluster::key_rules::check_key_strength(&key.0).map_err(|weak| {
            ConfigError::Invalid {
                setting,
                reason: format!(
                    "the cluster key is too weak: {weak}. Generate one with `murmur keygen`"
                ),
            }
        })?;
        Ok(Some(key))
    }

    /// The history retention these settings describe.
    pub fn retention(&self) -> crate::routing::history::Retention {
        use crate::routing::history::{Retention, RetentionPolicy};
        let default = RetentionPolicy {
            max_events: self.history_max_events,
            max_age: self.history_max_age,
            max_bytes: self.history_max_bytes,
        };
        Retention {
            overrides: self
                .history_overrides
                .iter()
                .map(|o| {
                    let policy = RetentionPolicy {
                        max_events: o.max_events.unwrap_or(default.max_events),
                        max_age: o.max_age.unwrap_or(default.max_age),
                        max_bytes: o.max_bytes.unwrap_or(default.max_bytes),
                    };
                    (o.prefix.clone(), policy)
                })
                .collect(),
            ..Retention::new(default, self.history_max_total_bytes)
        }
    }

    /// Reads a TOML file; keys it leaves out keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
            path: path.to_owned(),
            reason,
        })?;
        toml::from_str(&text).map_err(|reason| ConfigError::Parse {
            path: path.to_owned(),
            reason: Box::new(reason),
        })
    }

    /// Refuses combinations that cannot work, with the setting's name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |setting, reason: &str| {
            Err(ConfigError::Invalid {
                setting,
                reason: reason.to_owned(),
            })
        };
        if self.name.trim().is_empty() {
            return invalid("name", "must not be empty");
        }
        if let Err(err) = crate::cluster::security::validate_node_name(&self.name) {
            return invalid("name", &err.to_string());
        }
        let own_pki = [&self.tls_ca, &self.tls_cert, &self.tls_key];
        if own_pki.iter().any(|p| p.is_some()) && !own_pki.iter().all(|p| p.is_some()) {
            return invalid("tls_ca/tls_cert/tls_key", "give all three, or none");
        }
        if self.client_tls_cert.is_some() != self.client_tls_key.is_some() {
            return invalid("client_tls_cert/client_tls_key", "give both, or neither");
        }
        if let Err(reason) = crate::frontdoor::origin::AllowedOrigins::parse(&self.allowed_origins)
        {
            return invalid("allowed_origins", &reason.to_string());
        }
        if self.admin_listen == self.listen && self.listen.port() != 0 {
            return invalid("admin_listen", "must differ from listen");
        }
        if !(1..=MAX_CONNECTIONS_BOUND).contains(&self.max_connections) {
            return invalid("max_connections", "must be between 1 and 10000000");
        }
        if self.max_connections_per_ip > MAX_CONNECTIONS_BOUND {
            return invalid(
                "max_connections_per_ip",
                "must be at most 10000000 (0: no limit)",
            );
        }
        if self.handshake_timeout.is_zero() || self.handshake_timeout > MAX_HANDSHAKE_TIMEOUT {
            return invalid("handshake_timeout", "must be more than zero and at most 5m");
        }
        self.effective_cluster_key()?;
        if !(MIN_REPLAY_WINDOW..=MAX_REPLAY_WINDOW).contains(&self.gossip_replay_window) {
            return invalid(
                "gossip_replay_window",
                "must be between 1s and 10m (node clocks must agree to within it)",
            );
        }
        if !(1..=MAX_REPLICATION).contains(&self.replication) {
            return invalid("replication", "must be between 1 (the owner itself) and 16");
        }
        if !(1024 * 1024..=4 * 1024 * 1024 * 1024).contains(&self.publish_buffer_bytes) {
            return invalid(
                "publish_buffer_bytes",
                "must be between 1048576 (1 MiB) and 4294967296 (4 GiB)",
            );
        }
        if self.publish_buffer_bytes < 2 * self.max_frame_bytes {
            return invalid(
                "publish_buffer_bytes",
                "must hold at least two frames of max_frame_bytes",
            );
        }
        if !(1..=10_000_000).contains(&self.peer_queue) {
            return invalid("peer_queue", "must be between 1 and 10000000");
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.peer_stall_timeout)
        {
            return invalid("peer_stall_timeout", "must be between 1s and 1h");
        }
        if !(1024..=MAX_FRAME_BYTES_BOUND).contains(&self.max_frame_bytes) {
            return invalid(
                "max_frame_bytes",
                "must be between 1024 and 67108864 (64 MiB)",
            );
        }
        if !(1..=1_000_000).contains(&self.max_subscriptions) {
            return invalid("max_subscriptions", "must be between 1 and 1000000");
        }
        if self.outbound_queue > 1_000_000 {
            return invalid(
                "outbound_queue",
                "must be between 0 (no count bound: slow_consumer_bytes alone) and 1000000",
            );
        }
        if !(64 * 1024..=4 * 1024 * 1024 * 1024).contains(&self.slow_consumer_bytes) {
            return invalid(
                "slow_consumer_bytes",
                "must be between 65536 (64 KiB) and 4294967296 (4 GiB)",
            );
        }
        if self.history_max_events > 100_000_000 {
            return invalid("history_max_events", "must be at most 100000000");
        }
        // A node cannot hold more than its memory: past 1 TiB a value is a typo.
        const MAX_HISTORY_BYTES: usize = 1 << 40;
        if !(1024..=MAX_HISTORY_BYTES).contains(&self.history_max_bytes) {
            return invalid(
                "history_max_bytes",
                "must be between 1024 and 1099511627776 (1 TiB)",
            );
        }
        if !(1024 * 1024..=MAX_HISTORY_BYTES).contains(&self.history_max_total_bytes) {
            return invalid(
                "history_max_total_bytes",
                "must be between 1048576 (1 MiB) and 1099511627776 (1 TiB)",
            );
        }
        if self.history_overrides.iter().any(|o| {
            o.max_bytes
                .is_some_and(|b| !(1024..=MAX_HISTORY_BYTES).contains(&b))
        }) {
            return invalid(
                "history_overrides",
                "max_bytes must be between 1024 and 1099511627776 (1 TiB)",
            );
        }
        if !(64..=1024 * 1024).contains(&self.ws_read_buffer) {
            return invalid("ws_read_buffer", "must be between 64 and 1048576 bytes");
        }
        if self.ws_write_buffer > 16 * 1024 * 1024 {
            return invalid("ws_write_buffer", "must be at most 16777216 bytes");
        }
        if !(1..=4096).contains(&self.max_topic_bytes) {
            // Peers refuse patterns over 4096 bytes: a longer one could never be forwarded.
            return invalid("max_topic_bytes", "must be between 1 and 4096");
        }
        if self.ping_interval.is_zero() {
            return invalid("ping_interval", "must be more than zero");
        }
        if self.idle_timeout <= self.ping_interval {
            return invalid(
                "idle_timeout",
                "must be longer than ping_interval, or healthy clients are cut off",
            );
        }
        if self.history_overrides.iter().any(|o| o.prefix.is_empty()) {
            return invalid(
                "history_overrides",
                "every override needs a non-empty prefix",
            );
        }
        if !(MIN_TOPIC_IDLE_FORGET..=MAX_TOPIC_IDLE_FORGET).contains(&self.topic_idle_forget) {
            return invalid("topic_idle_forget", "must be between 1s and 7days");
        }
        if !(1..=1_000_000).contains(&self.max_unacked) {
            return invalid("max_unacked", "must be between 1 and 1000000");
        }
        if !(16..=4096).contains(&self.max_id_bytes) {
            return invalid("max_id_bytes", "must be between 16 and 4096");
        }
        if self.publish_rate > 0 && self.publish_burst == 0 {
            return invalid(
                "publish_burst",
                "must be at least 1 when publish_rate is set",
            );
        }
        if self.write_timeout.is_zero() || self.ack_timeout.is_zero() {
            return invalid("write_timeout/ack_timeout", "must be more than zero");
        }
        let day = Duration::from_secs(24 * 3600);
        for (setting, value, max) in [
            (
                "ping_interval",
                self.ping_interval,
                Duration::from_secs(3600),
            ),
            ("idle_timeout", self.idle_timeout, day),
            (
                "write_timeout",
                self.write_timeout,
                Duration::from_secs(600),
            ),
            ("ack_timeout", self.ack_timeout, day),
            (
                "shutdown_grace",
                self.shutdown_grace,
                Duration::from_secs(600),
            ),
        ] {
            if value > max {
                return invalid(
                    setting,
                    &format!("must be at most {}", humantime::format_duration(max)),
                );
            }
        }
        self.validate_auth()
    }

    /// The client-authentication settings (key files are read later, by the authenticator).
    fn validate_auth(&self) -> Result<(), ConfigError> {
        let invalid = |setting, reason: String| Err(ConfigError::Invalid { setting, reason });
        if self.token_leeway > MAX_TOKEN_LEEWAY {
            return invalid(
                "token_leeway",
                format!(
                    "must be at most {}",
                    humantime::format_duration(MAX_TOKEN_LEEWAY)
                ),
            );
        }
        if self.hello_timeout.is_zero() || self.hello_timeout > MAX_HELLO_TIMEOUT {
            return invalid(
                "hello_timeout",
                format!(
                    "must be more than zero and at most {}",
                    humantime::format_duration(MAX_HELLO_TIMEOUT)
                ),
            );
        }
        if self.token_hmac_secret.is_some() && self.token_hmac_secret_file.is_some() {
            return invalid(
                "token_hmac_secret/token_hmac_secret_file",
                "give one of them, not both".into(),
            );
        }
        if let Some(secret) = &self.token_hmac_secret {
            crate::auth::check_hmac_secret(secret.0.as_bytes())
                .or_else(|reason| invalid("token_hmac_secret", reason))?;
        }
        if let Some(claim) = &self.anonymous_permissions
            && let Err(err) = crate::auth::Permissions::from_claim(claim, self.max_topic_bytes)
        {
            return invalid("anonymous_permissions", err.to_string());
        }
        if let Some(jwks) = &self.token_jwks
            && let Err(err) = crate::auth::jwks::JwksSource::parse(jwks)
        {
            return invalid("token_jwks", err.to_string());
        }
        let has_key_source = self.token_hmac_secret.is_some()
            || self.token_hmac_secret_file.is_some()
            || !self.token_public_keys.is_empty()
            || self.token_jwks.is_some();
        if self.auth == AuthMode::Token && !has_key_source {
            return invalid(
                "auth",
                "`token` needs a key to check tokens with: token_hmac_secret, \
                 token_hmac_secret_file, token_public_keys or token_jwks"
                    .into(),
            );
        }
        Ok(())
    }
}

/// The flags of `murmur serve`. Each is also read from its environment variable; both win
/// over the config file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys are the flag names with `_`).
    #[arg(long, env = "MURMUR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Node name shown to clients and peers [default: the host name].
    #[arg(long, env = "MURMUR_NAME")]
    pub name: Option<String>,
    /// Client listen address: ws://ADDR/ws (wss:// with --client-tls-cert), /healthz, /readyz
    /// [default: 127.0.0.1:7400].
    #[arg(long, env = "MURMUR_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain for the client listener (with --client-tls-key): clients then
    /// connect with wss://. Reloaded on SIGHUP.
    #[arg(long, env = "MURMUR_CLIENT_TLS_CERT", value_name = "FILE")]
    pub client_tls_cert: Option<PathBuf>,
    /// PEM private key for --client-tls-cert.
    #[arg(long, env = "MURMUR_CLIENT_TLS_KEY", value_name = "FILE")]
    pub client_tls_key: Option<PathBuf>,
    /// Comma-separated origins browsers may open WebSockets from: `https://app.example.com`,
    /// `https://*.example.com`, `*` [default: none, same origin only].
    #[arg(
        long,
        env = "MURMUR_ALLOWED_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGIN,..."
    )]
    pub allowed_origins: Option<Vec<String>>,
    /// Admin listen address: /metrics and /v1/cluster; keep it off the public network
    /// [default: 127.0.0.1:7403].
    #[arg(long, env = "MURMUR_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Client connections held at once; also capped below the open-file limit [default: 100000].
    #[arg(long, env = "MURMUR_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Client connections held at once from one IPv4 address or IPv6 /64; 0 for no limit
    /// [default: 1000].
    #[arg(long, env = "MURMUR_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// Close a client connection that has not finished its TLS handshake and WebSocket
    /// upgrade within this [default: 10s].
    #[arg(long, env = "MURMUR_HANDSHAKE_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub handshake_timeout: Option<Duration>,
    /// UDP address for gossip (cluster membership) [default: 127.0.0.1:7401].
    #[arg(long, env = "MURMUR_GOSSIP", value_name = "ADDR")]
    pub gossip: Option<SocketAddr>,
    /// UDP address for the QUIC mesh between nodes [default: 127.0.0.1:7402].
    #[arg(long, env = "MURMUR_QUIC", value_name = "ADDR")]
    pub quic: Option<SocketAddr>,
    /// Comma-separated gossip addresses (host:port, DNS names re-resolved) to join through.
    #[arg(
        long,
        env = "MURMUR_SEEDS",
        value_delimiter = ',',
        value_name = "HOST:PORT,..."
    )]
    pub seeds: Option<Vec<String>>,
    /// Shared secret (32+ characters; `murmur keygen` makes one) that authenticates gossip and
    /// derives the cluster CA; without one, peers are NOT authenticated (development only).
    /// Prefer the variable or --cluster-key-file: a flag shows in `ps`.
    #[arg(
        long,
        env = "MURMUR_CLUSTER_KEY",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub cluster_key: Option<Secret>,
    /// File holding the cluster key (a trailing newline is ignored; keep it mode 0600).
    #[arg(long, env = "MURMUR_CLUSTER_KEY_FILE", value_name = "FILE")]
    pub cluster_key_file: Option<PathBuf>,
    /// Refuse gossip packets stamped further than this from the local clock (replay
    /// protection; node clocks must agree to within it) [default: 30s].
    #[arg(long, env = "MURMUR_GOSSIP_REPLAY_WINDOW", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub gossip_replay_window: Option<Duration>,
    /// PEM CA certificate for node certificates (own PKI; with --tls-cert and --tls-key).
    #[arg(long, env = "MURMUR_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate chain of this node, issued for its --name (own PKI).
    #[arg(long, env = "MURMUR_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of this node (own PKI).
    #[arg(long, env = "MURMUR_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// IP that peers and clients use to reach this node when it listens on 0.0.0.0 or [::].
    #[arg(long, env = "MURMUR_ADVERTISE_IP", value_name = "IP")]
    pub advertise_ip: Option<IpAddr>,
    /// Events queued towards one peer at most; a peer whose queue fills is stuck: its link
    /// is reset [default: 1048576].
    #[arg(long, env = "MURMUR_PEER_QUEUE", value_name = "N")]
    pub peer_queue: Option<usize>,
    /// A peer that takes no queued event for this long is stuck: its link is reset [default: 10s].
    #[arg(long, env = "MURMUR_PEER_STALL_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub peer_stall_timeout: Option<Duration>,
    /// Bytes of publishes in flight towards owners before publishers wait [default: 67108864].
    #[arg(long, env = "MURMUR_PUBLISH_BUFFER_BYTES", value_name = "BYTES")]
    pub publish_buffer_bytes: Option<usize>,
    /// Nodes that store each topic's events, its owner included [default: 2].
    #[arg(long, env = "MURMUR_REPLICATION", value_name = "N")]
    pub replication: Option<usize>,
    /// Largest client frame accepted, in bytes [default: 1048576].
    #[arg(long, env = "MURMUR_MAX_FRAME_BYTES", value_name = "BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Most subscriptions per connection [default: 1024].
    #[arg(long, env = "MURMUR_MAX_SUBSCRIPTIONS", value_name = "N")]
    pub max_subscriptions: Option<usize>,
    /// Deprecated: events buffered per connection before it is disconnected as a slow
    /// consumer, 0 for no count bound (slow_consumer_bytes decides) [default: 0].
    #[arg(long, env = "MURMUR_OUTBOUND_QUEUE", value_name = "N")]
    pub outbound_queue: Option<usize>,
    /// Bytes of events buffered per connection before it is disconnected as a slow
    /// consumer [default: 67108864].
    #[arg(long, env = "MURMUR_SLOW_CONSUMER_BYTES", value_name = "BYTES")]
    pub slow_consumer_bytes: Option<usize>,
    /// Longest topic or pattern, in bytes [default: 256].
    #[arg(long, env = "MURMUR_MAX_TOPIC_BYTES", value_name = "BYTES")]
    pub max_topic_bytes: Option<usize>,
    /// Per-connection socket read buffer, in bytes; kept for the connection's life [default: 1024].
    #[arg(long, env = "MURMUR_WS_READ_BUFFER", value_name = "BYTES")]
    pub ws_read_buffer: Option<usize>,
    /// Event bytes gathered per connection before a socket write [default: 16384].
    #[arg(long, env = "MURMUR_WS_WRITE_BUFFER", value_name = "BYTES")]
    pub ws_write_buffer: Option<usize>,
    /// How often the node pings each client [default: 20s].
    #[arg(long, env = "MURMUR_PING_INTERVAL", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub ping_interval: Option<Duration>,
    /// Close a connection that sends nothing, not even a pong, for this long [default: 60s].
    #[arg(long, env = "MURMUR_IDLE_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub idle_timeout: Option<Duration>,
    /// Close a connection as a slow consumer when one socket write takes this long [default: 10s].
    #[arg(long, env = "MURMUR_WRITE_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub write_timeout: Option<Duration>,
    /// Redeliver a queue-group event to another member when not acked within this [default: 30s].
    #[arg(long, env = "MURMUR_ACK_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub ack_timeout: Option<Duration>,
    /// Queue-group deliveries one member may hold unacknowledged [default: 1000].
    #[arg(long, env = "MURMUR_MAX_UNACKED", value_name = "N")]
    pub max_unacked: Option<usize>,
    /// Longest subscription id, ref, delivery id, group or client name, in bytes [default: 256].
    #[arg(long, env = "MURMUR_MAX_ID_BYTES", value_name = "BYTES")]
    pub max_id_bytes: Option<usize>,
    /// Publishes per second per connection, 0 for no limit [default: 0].
    #[arg(long, env = "MURMUR_PUBLISH_RATE", value_name = "N")]
    pub publish_rate: Option<u32>,
    /// Publishes a connection may make at once above --publish-rate [default: 1000].
    #[arg(long, env = "MURMUR_PUBLISH_BURST", value_name = "N")]
    pub publish_burst: Option<u32>,
    /// On SIGTERM/SIGINT, wait this long for clients to be told and to disconnect [default: 10s].
    #[arg(long, env = "MURMUR_SHUTDOWN_GRACE", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub shutdown_grace: Option<Duration>,
    /// Events kept per topic so subscribers can resume (0 keeps none) [default: 1000].
    #[arg(long, env = "MURMUR_HISTORY_MAX_EVENTS", value_name = "N")]
    pub history_max_events: Option<usize>,
    /// How long events are kept so subscribers can resume [default: 10m].
    #[arg(long, env = "MURMUR_HISTORY_MAX_AGE", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub history_max_age: Option<Duration>,
    /// Bytes of events kept per topic so subscribers can resume [default: 16777216 (16 MiB)].
    #[arg(long, env = "MURMUR_HISTORY_MAX_BYTES", value_name = "BYTES")]
    pub history_max_bytes: Option<usize>,
    /// Bytes of events kept across all topics on this node [default: 1073741824 (1 GiB)].
    #[arg(long, env = "MURMUR_HISTORY_MAX_TOTAL_BYTES", value_name = "BYTES")]
    pub history_max_total_bytes: Option<usize>,
    /// Forget a topic (its epoch and last seq) after this long without an event, once none of
    /// its history is retained [default: 15m].
    #[arg(long, env = "MURMUR_TOPIC_IDLE_FORGET", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub topic_idle_forget: Option<Duration>,
    /// Log filter in RUST_LOG syntax, e.g. `info` or `murmur=debug` [default: info].
    #[arg(long, env = "MURMUR_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// Log lines for people (`human`) or one JSON object per line (`json`) [default: human].
    #[arg(long, env = "MURMUR_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Client authentication: `none` (anyone may do anything; for loopback) or `token` (a JWT
    /// in `hello`, with per-topic permissions) [default: none].
    #[arg(long, env = "MURMUR_AUTH", value_name = "MODE")]
    pub auth: Option<AuthMode>,
    /// Shared secret for HS256/HS384/HS512 client tokens; prefer the environment variable or
    /// --token-hmac-secret-file, since flags show in `ps`.
    #[arg(
        long,
        env = "MURMUR_TOKEN_HMAC_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub token_hmac_secret: Option<Secret>,
    /// File holding the HMAC secret for client tokens.
    #[arg(long, env = "MURMUR_TOKEN_HMAC_SECRET_FILE", value_name = "FILE")]
    pub token_hmac_secret_file: Option<PathBuf>,
    /// Comma-separated PEM public keys for RS/PS, ES and EdDSA tokens; a key's kid is its file
    /// name without the extension.
    #[arg(
        long,
        env = "MURMUR_TOKEN_PUBLIC_KEYS",
        value_delimiter = ',',
        value_name = "FILE,..."
    )]
    pub token_public_keys: Option<Vec<PathBuf>>,
    /// JWKS file, or https:// URL (fetched and cached; http:// only on loopback).
    #[arg(long, env = "MURMUR_TOKEN_JWKS", value_name = "FILE|URL")]
    pub token_jwks: Option<String>,
    /// Require this `aud` in client tokens.
    #[arg(long, env = "MURMUR_TOKEN_AUDIENCE", value_name = "AUD")]
    pub token_audience: Option<String>,
    /// Require this `iss` in client tokens.
    #[arg(long, env = "MURMUR_TOKEN_ISSUER", value_name = "ISS")]
    pub token_issuer: Option<String>,
    /// Clock skew allowed on a token's `exp` and `nbf`, at most 5m [default: 30s].
    #[arg(long, env = "MURMUR_TOKEN_LEEWAY", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub token_leeway: Option<Duration>,
    /// What a connection without a token may do when auth is `token`, as JSON:
    /// '{"sub":["public.>"],"history":["public.>"]}'; unset refuses such connections.
    #[arg(long, env = "MURMUR_ANONYMOUS_PERMISSIONS", value_parser = parse_permission_claim, value_name = "JSON")]
    pub anonymous_permissions: Option<PermissionClaim>,
    /// Close a connection that has not said a valid `hello` within this, when auth is
    /// `token` [default: 5s].
    #[arg(long, env = "MURMUR_HELLO_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub hello_timeout: Option<Duration>,
}

fn parse_permission_claim(text: &str) -> Result<PermissionClaim, String> {
    serde_json::from_str(text).map_err(|err| format!("not a permission object: {err}"))
}

impl ServeArgs {
    /// Defaults, then the config file, then environment and flags; validated.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let mut settings = match &self.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        macro_rules! apply {
            ($($field:ident),*) => {$(
                if let Some(value) = &self.$field {
                    settings.$field = value.clone();
                }
            )*};
        }
        apply!(
            name,
            listen,
            admin_listen,
            max_connections,
            max_connections_per_ip,
            handshake_timeout,
            gossip,
            quic,
            peer_queue,
            peer_stall_timeout,
            publish_buffer_bytes,
            replication,
            max_frame_bytes,
            max_subscriptions,
            outbound_queue,
            slow_consumer_bytes,
            max_topic_bytes,
            ws_read_buffer,
            ws_write_buffer,
            ping_interval,
            idle_timeout,
            write_timeout,
            ack_timeout,
            max_unacked,
            max_id_bytes,
            publish_rate,
            publish_burst,
            shutdown_grace,
            history_max_events,
            history_max_age,
            history_max_bytes,
            history_max_total_bytes,
            topic_idle_forget,
            gossip_replay_window,
            log,
            log_format,
            auth,
            token_leeway,
            hello_timeout
        );
        // Optional settings: a flag sets them, its absence keeps the file's value.
        macro_rules! apply_some {
            ($($field:ident),*) => {$(
                if self.$field.is_some() {
                    settings.$field = self.$field.clone();
                }
            )*};
        }
        apply_some!(
            tls_ca,
            tls_cert,
            tls_key,
            advertise_ip,
            token_hmac_secret,
            token_hmac_secret_file,
            token_jwks,
            token_audience,
            token_issuer,
            anonymous_permissions,
            client_tls_cert,
            client_tls_key
        );
        if let Some(keys) = &self.token_public_keys {
            settings.token_public_keys = keys
                .iter()
                .filter(|k| !k.as_os_str().is_empty())
                .cloned()
                .collect();
        }
        // The key and the key file are one setting given two ways: whichever a flag or
        // variable gives replaces both of the file's.
        match (&self.cluster_key, &self.cluster_key_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid {
                    setting: "cluster_key/cluster_key_file",
                    reason: "give --cluster-key (MURMUR_CLUSTER_KEY) or --cluster-key-file \
                             (MURMUR_CLUSTER_KEY_FILE), not both"
                        .to_owned(),
                });
            }
            (Some(key), None) => {
                settings.cluster_key = Some(key.clone());
                settings.cluster_key_file = None;
            }
            (None, Some(path)) => {
                settings.cluster_key = None;
                settings.cluster_key_file = Some(path.clone());
            }
            (None, None) => {}
        }
        if let Some(seeds) = &self.seeds {
            settings.seeds = seeds.iter().filter(|s| !s.is_empty()).cloned().collect();
        }
        if let Some(origins) = &self.allowed_origins {
            settings.allowed_origins = origins
                .iter()
                .map(|o| o.trim())
                .filter(|o| !o.is_empty())
                .map(str::to_owned)
                .collect();
        }
        settings.validate()?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags() {
        let dir = std::env::temp_dir().join(format!("murmur-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(
            &path,
            "name = \"n1\"\nlisten = \"127.0.0.1:9000\"\nping_interval = \"5s\"\noutbound_queue = 10\n\
             [[history_overrides]]\nprefix = \"chat.\"\nmax_events = 5\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            outbound_queue: Some(20),
            ..ServeArgs::default()
        };
        let settings = args.settings().unwrap();
        assert_eq!(settings.name, "n1");
        assert_eq!(settings.listen.port(), 9000);
        assert_eq!(settings.ping_interval, Duration::from_secs(5));
        assert_eq!(settings.outbound_queue, 20, "flags win over the file");
        assert_eq!(settings.max_subscriptions, 1024, "defaults fill the rest");
        let retention = settings.retention();
        assert_eq!(retention.policy("chat.lobby").max_events, 5);
        assert_eq!(
            retention.policy("chat.lobby").max_age,
            Duration::from_secs(600)
        );
        assert_eq!(retention.policy("orders").max_events, 1000);

        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\nlisten_typo = 1\n").unwrap();
        let err = args.settings().unwrap_err().to_string();
        assert!(err.contains("listen_typo"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn auth_settings_from_file_and_flags() {
        let dir = std::env::temp_dir().join(format!("murmur-config-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(
            &path,
            "auth = \"token\"\ntoken_hmac_secret = \"0123456789abcdef0123456789abcdef\"\n\
             token_audience = \"murmur\"\ntoken_leeway = \"10s\"\n\
             token_public_keys = [\"keys/2026-12.pem\"]\n\
             [anonymous_permissions]\nsub = [\"public.>\"]\ndeny = { sub = [\"public.secret\"] }\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            hello_timeout: Some(Duration::from_secs(2)),
            token_issuer: Some("https://issuer.test".into()),
            ..ServeArgs::default()
        };
        let settings = args.settings().unwrap();
        assert_eq!(settings.auth, AuthMode::Token);
        assert_eq!(settings.token_leeway, Duration::from_secs(10));
        assert_eq!(settings.hello_timeout, Duration::from_secs(2));
        assert_eq!(
            settings.token_issuer.as_deref(),
            Some("https://issuer.test")
        );
        assert_eq!(
            settings.token_public_keys,
            [PathBuf::from("keys/2026-12.pem")]
        );
        let anonymous = settings.anonymous_permissions.clone().unwrap();
        assert_eq!(anonymous.subscribe, ["public.>"]);
        assert_eq!(anonymous.deny.subscribe, ["public.secret"]);
        let shown = settings.to_toml_masked();
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert_eq!(
            toml::from_str::<Settings>(&shown).unwrap().auth,
            AuthMode::Token
        );

        let flag_claim = parse_permission_claim(r#"{"sub":["a.>"],"history":["a.>"]}"#).unwrap();
        assert_eq!(flag_claim.history, ["a.>"]);
        assert!(parse_permission_claim(r#"{"subs":["a"]}"#).is_err());
        std::fs::remove_dir_all(dir).unwrap();

        let refused = |settings: Settings| settings.validate().unwrap_err().to_string();
        let token = |s: Settings| Settings {
            auth: AuthMode::Token,
            token_jwks: Some("jwks.json".into()),
            ..s
        };
        let long_leeway = token(Settings {
            token_leeway: Duration::from_secs(3600),
            ..Settings::default()
        });
        assert!(refused(long_leeway).contains("token_leeway"));
        let no_hello = token(Settings {
            hello_timeout: Duration::ZERO,
            ..Settings::default()
        });
        assert!(refused(no_hello).contains("hello_timeout"));
        let bad_anonymous = token(Settings {
            anonymous_permissions: Some(parse_permission_claim(r#"{"sub":["a.>.b"]}"#).unwrap()),
            ..Settings::default()
        });
        assert!(refused(bad_anonymous).contains("'a.>.b'"));
        let both_secrets = token(Settings {
            token_hmac_secret: Some(Secret("0123456789abcdef0123456789abcdef".into())),
            token_hmac_secret_file: Some("secret".into()),
            ..Settings::default()
        });
        assert!(refused(both_secrets).contains("not both"));
        assert!(token(Settings::default()).validate().is_ok());
    }

    #[test]
    fn refuses_unworkable_settings() {
        let settings = Settings {
            idle_timeout: Duration::from_secs(1),
            ping_interval: Duration::from_secs(5),
            ..Settings::default()
        };
        assert!(matches!(
            settings.validate(),
            Err(ConfigError::Invalid {
                setting: "idle_timeout",
                ..
            })
        ));
        assert!(Settings::default().validate().is_ok());
    }

    const STRONG_KEY: &str = "rhzr6uV9q-itgxq40nPRrBj37lcLzbdepBsYOaJZ57E";

    fn refusal(settings: &Settings) -> (&'static str, String) {
        match settings.validate() {
            Err(ConfigError::Invalid { setting, reason }) => (setting, reason),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn weak_cluster_keys_are_refused_with_the_rule_they_break() {
        let with_key = |key: &str| Settings {
            cluster_key: Some(Secret(key.to_owned())),
            ..Settings::default()
        };
        let (setting, reason) = refusal(&with_key(&"a".repeat(16)));
        assert_eq!(setting, "cluster_key");
        assert!(reason.contains("at least 32"), "{reason}");
        assert!(reason.contains("murmur keygen"), "{reason}");
        let (_, reason) = refusal(&with_key("change-me-to-a-long-random-secret"));
        assert!(reason.contains("placeholder"), "{reason}");
        let (_, reason) = refusal(&with_key(&"abc".repeat(12)));
        assert!(reason.contains("distinct"), "{reason}");
        assert!(with_key(STRONG_KEY).validate().is_ok());
        assert_eq!(
            with_key(STRONG_KEY).effective_cluster_key().unwrap(),
            Some(Secret(STRONG_KEY.into()))
        );
        assert_eq!(Settings::default().effective_cluster_key().unwrap(), None);
    }

    #[test]
    fn the_cluster_key_may_come_from_a_file() {
        let dir = std::env::temp_dir().join(format!("murmur-keyfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cluster.key");
        let from_file = Settings {
            cluster_key_file: Some(path.clone()),
            ..Settings::default()
        };
        for contents in [
            STRONG_KEY.to_owned(),
            format!("{STRONG_KEY}\n"),
            format!("{STRONG_KEY}\r\n"),
        ] {
            std::fs::write(&path, contents).unwrap();
            assert_eq!(
                from_file.effective_cluster_key().unwrap(),
                Some(Secret(STRONG_KEY.into())),
                "one trailing newline is not part of the key"
            );
        }
        std::fs::write(&path, "short\n").unwrap();
        let (setting, reason) = refusal(&from_file);
        assert_eq!(setting, "cluster_key_file");
        assert!(reason.contains("at least 32"), "{reason}");
        std::fs::write(&path, "").unwrap();
        assert!(refusal(&from_file).1.contains("empty"));
        std::fs::remove_file(&path).unwrap();
        assert!(refusal(&from_file).1.contains("cannot read"));

        let both = Settings {
            cluster_key: Some(Secret(STRONG_KEY.into())),
            ..from_file.clone()
        };
        assert_eq!(refusal(&both).0, "cluster_key/cluster_key_file");

        // A flag or variable for one replaces the file's setting of the other.
        std::fs::write(&path, STRONG_KEY).unwrap();
        let config = dir.join("node.toml");
        std::fs::write(&config, format!("cluster_key = \"{}\"\n", "x".repeat(40))).unwrap();
        let args = ServeArgs {
            config: Some(config.clone()),
            cluster_key_file: Some(path.clone()),
            ..ServeArgs::default()
        };
        let settings = args.settings().unwrap();
        assert_eq!(settings.cluster_key, None);
        assert_eq!(settings.cluster_key_file, Some(path.clone()));
        let both_flags = ServeArgs {
            cluster_key: Some(Secret(STRONG_KEY.into())),
            ..args
        };
        assert!(both_flags.settings().is_err());

        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(key_file_readable_by_others(&path), Some(0o644));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(key_file_readable_by_others(&path), None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn settings_have_upper_bounds() {
        let refused = |settings: Settings| match settings.validate() {
            Err(ConfigError::Invalid { setting, .. }) => setting,
            other => panic!("accepted: {other:?}"),
        };
        let huge = Settings {
            outbound_queue: 100_000_000,
            ..Settings::default()
        };
        assert_eq!(refused(huge), "outbound_queue");
        let huge = Settings {
            max_frame_bytes: 1 << 30,
            publish_buffer_bytes: 4 << 30,
            ..Settings::default()
        };
        assert_eq!(refused(huge), "max_frame_bytes");
        let huge = Settings {
            replication: 100,
            ..Settings::default()
        };
        assert_eq!(refused(huge), "replication");
        let huge = Settings {
            ack_timeout: Duration::from_secs(30 * 24 * 3600),
            ..Settings::default()
        };
        assert_eq!(refused(huge), "ack_timeout");
        let huge = Settings {
            max_topic_bytes: 10_000,
            ..Settings::default()
        };
        assert_eq!(refused(huge), "max_topic_bytes");
    }

    #[test]
    fn the_replay_window_is_bounded() {
        for (window, ok) in [(0, false), (1, true), (30, true), (600, true), (601, false)] {
            let settings = Settings {
                gossip_replay_window: Duration::from_secs(window),
                ..Settings::default()
            };
            assert_eq!(settings.validate().is_ok(), ok, "{window}s");
        }
    }

    #[test]
    fn refuses_unworkable_transport_settings() {
        let refused = |settings: Settings| match settings.validate() {
            Err(ConfigError::Invalid { setting, .. }) => setting,
            other => panic!("accepted: {other:?}"),
        };
        let half_tls = Settings {
            client_tls_cert: Some("cert.pem".into()),
            ..Settings::default()
        };
        assert_eq!(refused(half_tls), "client_tls_cert/client_tls_key");
        let bad_origin = Settings {
            allowed_origins: vec!["example.com".into()],
            ..Settings::default()
        };
        assert_eq!(refused(bad_origin), "allowed_origins");
        let no_deadline = Settings {
            handshake_timeout: Duration::ZERO,
            ..Settings::default()
        };
        assert_eq!(refused(no_deadline), "handshake_timeout");
        let no_connections = Settings {
            max_connections: 0,
            ..Settings::default()
        };
        assert_eq!(refused(no_connections), "max_connections");
        let same_port = Settings {
            admin_listen: Settings::default().listen,
            ..Settings::default()
        };
        assert_eq!(refused(same_port), "admin_listen");
    }

    #[test]
    fn the_topic_idle_forget_is_bounded() {
        let week = 7 * 24 * 3600;
        for (idle, ok) in [
            (0, false),
            (1, true),
            (900, true),
            (week, true),
            (week + 1, false),
        ] {
            let settings = Settings {
                topic_idle_forget: Duration::from_secs(idle),
                ..Settings::default()
            };
            assert_eq!(settings.validate().is_ok(), ok, "{idle}s");
        }
        let args = ServeArgs {
            topic_idle_forget: Some(Duration::from_secs(30)),
            ..ServeArgs::default()
        };
        assert_eq!(
            args.settings().unwrap().topic_idle_forget,
            Duration::from_secs(30)
        );
    }
}
