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
/// `dedupe_window` by default: well past the retries of a client after `unavailable` (5 s
/// each) and an owner's failover (failure detection, a claim).
pub const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(120);
/// The longest `dedupe_window` accepted: a day of ids is a memory bound in name only.
const MAX_DEDUPE_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// `data_dir` by default: beside where the node was started.
pub const DEFAULT_DATA_DIR: &str = "murmur-data";
/// `dedupe_max_bytes` by default: about 300 000 remembered ids of 60 bytes.
pub const DEFAULT_DEDUPE_MAX_BYTES: usize = 64 * 1024 * 1024;

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
    /// How long a topic's owner and replicas remember a publish's `id`: a publish with an id
    /// seen within this time gets the first one's position instead of a new event. 0: off.
    #[serde(with = "humantime_serde")]
    pub dedupe_window: Duration,
    /// Bytes of remembered publish ids on this node; over it, the oldest are forgotten early.
    pub dedupe_max_bytes: usize,
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
    /// Where topic history lives: `memory` (lost with the node) or `disk` (under
    /// `data_dir`, taken up again when the node restarts).
    pub storage: StorageMode,
    /// The node's data directory (`storage = "disk"`): history goes in `history/` inside.
    /// One node per directory.
    pub data_dir: PathBuf,
    /// When the disk backend syncs what it wrote: `always` (before a publish is
    /// acknowledged), `interval` / `interval:<duration>` (every 100 ms by default), `never`.
    pub fsync: Fsync,
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
            history_max_bytes: crate::storage::RetentionPolicy::DEFAULT_MAX_BYTES,
            history_max_total_bytes: crate::storage::Retention::DEFAULT_MAX_TOTAL_BYTES,
            history_overrides: Vec::new(),
            topic_idle_forget: DEFAULT_TOPIC_IDLE_FORGET,
            dedupe_window: DEFAULT_DEDUPE_WINDOW,
            dedupe_max_bytes: DEFAULT_DEDUPE_MAX_BYTES,
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
            storage: StorageMode::Memory,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            fsync: Fsync::default(),
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
    pub fn retention(&self) -> crate::storage::Retention {
        use crate::storage::{Retention, RetentionPolicy};
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
}

mod args;
mod storage;
mod validate;

pub use storage::{Fsync, StorageMode};

pub use args::ServeArgs;

#[cfg(test)]
mod tests;
