//! `murmur serve`'s flags (each also an environment variable), and how they are laid over
//! the config file's settings.

use super::*;

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
    /// Remember publish ids for this long: a `pub` sent again with the same `id` gets the
    /// first one's position instead of a new event; 0 turns it off [default: 2m].
    #[arg(long, env = "MURMUR_DEDUPE_WINDOW", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub dedupe_window: Option<Duration>,
    /// Bytes of remembered publish ids on this node [default: 67108864 (64 MiB)].
    #[arg(long, env = "MURMUR_DEDUPE_MAX_BYTES", value_name = "BYTES")]
    pub dedupe_max_bytes: Option<usize>,
    /// Where topic history lives: `memory` (lost with the node) or `disk` (under
    /// --data-dir, taken up again on restart) [default: memory].
    #[arg(long, env = "MURMUR_STORAGE", value_name = "BACKEND")]
    pub storage: Option<crate::config::StorageMode>,
    /// The node's data directory, for `--storage disk` (one node per directory)
    /// [default: murmur-data].
    #[arg(long, env = "MURMUR_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// When disk history is synced: `always` (before a publish is acknowledged),
    /// `interval` or `interval:<duration>` (every 100 ms by default), `never` [default: interval].
    #[arg(long, env = "MURMUR_FSYNC", value_name = "WHEN")]
    pub fsync: Option<crate::config::Fsync>,
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

pub(super) fn parse_permission_claim(text: &str) -> Result<PermissionClaim, String> {
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
            dedupe_window,
            dedupe_max_bytes,
            gossip_replay_window,
            log,
            log_format,
            auth,
            token_leeway,
            hello_timeout,
            storage,
            data_dir,
            fsync
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
