//! Starting and stopping a node: binds the client and admin ports, owns the shared state,
//! drains on shutdown.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Broker;
use crate::cluster::membership::NodeId;
use crate::cluster::security::{ClusterKey, NodeIdentity, SecurityError};
use crate::cluster::transport::TransportError;
use crate::cluster::{Cluster, ClusterSetup};
use crate::config::Settings;
use crate::frontdoor;
use crate::frontdoor::listener::{ConnectionCaps, ConnectionLimiter, HttpListener};
use crate::frontdoor::origin::AllowedOrigins;
use crate::frontdoor::tls::{ClientTls, ClientTlsError};
use crate::protocol::Limits;

/// State shared by the front door and every connection task.
#[derive(Debug)]
pub struct NodeState {
    pub settings: Arc<Settings>,
    pub broker: Arc<Broker>,
    pub cluster: Arc<Cluster>,
    /// What `welcome` announces; derived from the settings once.
    pub limits: Limits,
    /// Cancelled when the node begins to shut down.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub connections: TaskTracker,
    pub metrics: crate::metrics::Metrics,
    /// Checks clients' tokens (every connection is unrestricted with `auth = none`).
    pub auth: Arc<crate::auth::Authenticator>,
    /// Who may open WebSockets from a browser (`allowed_origins`, parsed).
    pub allowed_origins: AllowedOrigins,
    /// The client port's certificate, when it speaks TLS.
    pub client_tls: Option<Arc<ClientTls>>,
    ready: AtomicBool,
    next_connection: AtomicU64,
}

impl NodeState {
    /// True until the node begins to shut down: it takes new clients.
    pub fn is_accepting(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// What `/readyz` reports: accepting clients, joined the cluster it was seeded with (or
    /// alone by design: no seeds, or seeds naming only itself), and linked to every live peer
    /// with its interest known — so events published here reach subscribers everywhere. A
    /// seeded node that never found its cluster (seeds down, another cluster key) stays
    /// unready, and refuses publishes, however long it waits: it is not an island.
    pub fn readiness(&self) -> Result<(), Cow<'static, str>> {
        if !self.is_accepting() {
            return Err("draining".into());
        }
        let cluster = &self.cluster;
        if !cluster.has_joined() {
            return Err(cluster.not_joined_reason().into());
        }
        if !cluster.has_majority() {
            if cluster.gossip.fence.is_fenced() {
                return Err(format!("fenced: {}", cluster.gossip.fence.reason()).into());
            }
            return Err("cut off: this node sees only a minority of the cluster".into());
        }
        if !cluster.is_settled() {
            return Err("connecting to peers".into());
        }
        if cluster.is_recovering() {
            return Err("claiming the topics recovered from disk".into());
        }
        Ok(())
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }
}

#[derive(Debug, Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("client TLS: {0}")]
    ClientTls(#[from] ClientTlsError),
    #[error("cannot start gossip: {0}")]
    Gossip(std::io::Error),
    #[error("cluster security: {0}")]
    Security(#[from] SecurityError),
    #[error("client authentication: {0}")]
    Auth(#[from] crate::auth::AuthSetupError),
    #[error("QUIC transport: {0}")]
    Transport(#[from] TransportError),
    #[error("{setting} listens on {addr}, which peers cannot reach: set advertise_ip")]
    NoAdvertiseIp {
        setting: &'static str,
        addr: SocketAddr,
    },
    #[error("cannot start the thread that syncs history to disk: {0}")]
    Syncer(std::io::Error),
    #[error("history in {dir}: {source}")]
    Storage {
        dir: std::path::PathBuf,
        source: crate::storage::StorageError,
    },
}

/// A node that is serving. Dropping it does not stop it; call [`RunningNode::shutdown`].
#[derive(Debug)]
pub struct RunningNode {
    state: Arc<NodeState>,
    local_addr: SocketAddr,
    admin_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl RunningNode {
    /// Binds the listener and starts serving in the background.
    pub async fn start(settings: Settings) -> Result<Self, StartError> {
        settings.validate()?;
        let auth = Arc::new(crate::auth::Authenticator::from_settings(&settings)?);
        for warning in crate::auth::setup_warnings(&settings) {
            tracing::warn!("{warning}");
        }
        if let Err(err) = auth.prefetch_keys().await {
            // Retried when a token needs the keys; said now so a wrong URL shows at start.
            tracing::warn!(%err, "cannot fetch token_jwks yet");
        }
        let allowed_origins = AllowedOrigins::parse(&settings.allowed_origins).map_err(|err| {
            crate::config::ConfigError::Invalid {
                setting: "allowed_origins",
                reason: err.to_string(),
            }
        })?;
        let client_tls = match (&settings.client_tls_cert, &settings.client_tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(ClientTls::load(cert, key)?)),
            _ => None,
        };
        let (listener, local_addr) = bind_tcp(settings.listen).await?;
        let (admin_listener, admin_addr) = bind_tcp(settings.admin_listen).await?;
        let limits = Limits {
            max_frame_bytes: settings.max_frame_bytes as u64,
            max_subscriptions: u32::try_from(settings.max_subscriptions).unwrap_or(u32::MAX),
            outbound_queue: u32::try_from(settings.outbound_queue).unwrap_or(u32::MAX),
            ping_interval_ms: settings.ping_interval.as_millis() as u64,
            idle_timeout_ms: settings.idle_timeout.as_millis() as u64,
            max_topic_bytes: u32::try_from(settings.max_topic_bytes).unwrap_or(u32::MAX),
        };
        // A std socket: gossip runs on its own thread and runtime (cluster::gossip).
        let gossip_socket = std::net::UdpSocket::bind(settings.gossip)
            .and_then(|socket| socket.set_nonblocking(true).map(|()| socket))
            .map_err(|source| StartError::Bind {
                addr: settings.gossip,
                source,
            })?;
        let gossip_addr = gossip_socket
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: settings.gossip,
                source,
            })?;
        let secret = settings.effective_cluster_key()?;
        if let Some(path) = &settings.cluster_key_file
            && let Some(mode) = crate::config::key_file_readable_by_others(path)
        {
            tracing::warn!(
                file = %path.display(),
                mode = format!("{mode:o}"),
                "the cluster key file is readable by other users, who could join this \
                 cluster with it: `chmod 600` it"
            );
        }
        let key = ClusterKey::derive(secret.as_ref().map(|k| k.0.as_str()));
        let identity = match (&settings.tls_ca, &settings.tls_cert, &settings.tls_key) {
            (Some(ca), Some(cert), Some(key_file)) => NodeIdentity::from_files(ca, cert, key_file)?,
            _ => NodeIdentity::from_cluster_key(&key, &settings.name)?,
        };
        let endpoint = crate::cluster::transport::bind(settings.quic, &identity)?;
        let quic_addr = endpoint.local_addr().map_err(|source| StartError::Bind {
            addr: settings.quic,
            source,
        })?;
        if !key.authenticated {
            warn_unauthenticated(gossip_addr, quic_addr);
        }
        let advertise = |setting, addr: SocketAddr| -> Result<SocketAddr, StartError> {
            match (addr.ip().is_unspecified(), settings.advertise_ip) {
                (false, _) => Ok(addr),
                (true, Some(ip)) => Ok(SocketAddr::new(ip, addr.port())),
                (true, None) => Err(StartError::NoAdvertiseIp { setting, addr }),
            }
        };
        let id = NodeId::new(
            settings.name.clone(),
            advertise("gossip", gossip_addr)?,
            advertise("quic", quic_addr)?,
            advertise("listen", local_addr)?,
        );
        let broker = Broker::new(settings.retention())
            .with_topic_idle_forget(settings.topic_idle_forget)
            .with_dedupe(settings.dedupe_window, settings.dedupe_max_bytes);
        let (broker, recovered) = open_history(broker, &settings)?;
        let broker = Arc::new(broker);
        if settings.storage == crate::config::StorageMode::Disk
            && settings.fsync == crate::config::Fsync::Always
        {
            // Group commit: appends share their syncs (see `broker/syncing.rs`).
            broker.start_syncer().map_err(StartError::Syncer)?;
        }
        let cluster = Cluster::start(
            ClusterSetup {
                id,
                gossip_socket,
                endpoint,
                key,
                seeds: settings.seeds.clone(),
                replay_window: settings.gossip_replay_window,
                peer_queue: settings.peer_queue,
                peer_stall_timeout: settings.peer_stall_timeout,
                publish_buffer_bytes: settings.publish_buffer_bytes,
                replication: settings.replication,
            },
            broker.clone(),
        )
        .await
        .map_err(StartError::Gossip)?;
        let state = Arc::new(NodeState {
            settings: Arc::new(settings),
            broker,
            cluster,
            limits,
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
            metrics: crate::metrics::Metrics::default(),
            auth,
            allowed_origins,
            client_tls,
            ready: AtomicBool::new(true),
            next_connection: AtomicU64::new(1),
        });
        let scheme = if state.client_tls.is_some() {
            "wss"
        } else {
            "ws"
        };
        tracing::info!(
            node = %state.settings.name,
            listen = %local_addr,
            admin = %admin_addr,
            gossip = %gossip_addr,
            quic = %quic_addr,
            "murmur node serving: {scheme}://{local_addr}/ws (admin: http://{admin_addr}/metrics)"
        );
        let (client, admin) = listeners(&state, listener, admin_listener);
        if !recovered.is_empty() {
            tokio::spawn(state.cluster.start_reclaiming(recovered));
        }
        tokio::spawn(expire_history(state.clone()));
        tokio::spawn(place_waiting_group_events(state.clone()));
        let task = tokio::spawn(serve(client, admin, state.clone()));
        Ok(Self {
            state,
            local_addr,
            admin_addr,
            task,
        })
    }

    /// The address the client port listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the admin port (`/metrics`, `/v1/cluster`) listens on.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Reads the client certificate and key again (SIGHUP): new TLS handshakes get the new
    /// certificate, open connections are not touched. On error the old certificate stays.
    /// Ok(false) when the client port does not speak TLS.
    pub fn reload_client_tls(&self) -> Result<bool, ClientTlsError> {
        match &self.state.client_tls {
            Some(tls) => tls.reload().map(|()| true),
            None => Ok(false),
        }
    }

    pub fn state(&self) -> &Arc<NodeState> {
        &self.state
    }

    /// Begins a graceful shutdown: no new clients, every client told to reconnect.
    pub fn shutdown(&self) {
        self.state.ready.store(false, Ordering::Release);
        self.state.shutdown.cancel();
    }

    /// Stops at once without telling clients or peers, as a crashed process would; peers
    /// find out through failure detection. For tests.
    pub fn halt(&self) {
        self.state.ready.store(false, Ordering::Release);
        self.state.cluster.halt();
        self.state.shutdown.cancel();
        self.task.abort();
    }

    /// Waits until the node has stopped (after [`Self::shutdown`]).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// The development cluster (no key): fine on loopback, where only local processes reach
/// it; anywhere else any host that can send a UDP packet can join it, so say so loudly.
fn warn_unauthenticated(gossip: SocketAddr, quic: SocketAddr) {
    if gossip.ip().is_loopback() && quic.ip().is_loopback() {
        tracing::warn!(
            "no cluster key: gossip and the mesh are not authenticated (the development \
             cluster). Fine on loopback; set MURMUR_CLUSTER_KEY or --cluster-key-file \
             (`murmur keygen` makes a key) anywhere else."
        );
    } else {
        tracing::error!(
            %gossip,
            %quic,
            "NO CLUSTER KEY ON A NETWORK ADDRESS: gossip and the QUIC mesh listen beyond \
             loopback WITHOUT AUTHENTICATION. Any host that can reach these ports can join \
             this cluster, read every event and declare nodes down. Set MURMUR_CLUSTER_KEY or \
             --cluster-key-file on every node (`murmur keygen` makes a key)."
        );
    }
}

/// Trims history by age once a second, so quiet topics do not keep old events, and forgets
/// topics quiet for `topic_idle_forget` with nothing retained, so the node's topic
/// bookkeeping stays bounded (see `Broker::sweep`).
/// Puts the broker's history where `storage` says; with `disk`, takes up what the node's
/// data directory kept and returns those topics.
fn open_history(
    broker: Broker,
    settings: &Settings,
) -> Result<(Broker, Vec<Arc<str>>), StartError> {
    match settings.storage {
        crate::config::StorageMode::Memory => Ok((broker, Vec::new())),
        #[cfg(feature = "disk")]
        crate::config::StorageMode::Disk => {
            use crate::storage::disk::DiskLog;
            let dir = settings.data_dir.join("history");
            let failed = |source| StartError::Storage {
                dir: dir.clone(),
                source,
            };
            std::fs::create_dir_all(&dir)
                .map_err(|e| failed(crate::storage::StorageError::from_io(e)))?;
            let started = std::time::Instant::now();
            let (log, recovered) = DiskLog::open(&dir, settings.fsync.into()).map_err(failed)?;
            // Recovery logged each repair it made; the broker renews what they cut.
            let log = Arc::new(crate::storage::disk_history::SharedLog::new(log));
            let (broker, topics) = broker
                .with_disk_history(log, &recovered.repairs)
                .map_err(failed)?;
            tracing::info!(
                dir = %dir.display(),
                fsync = %settings.fsync,
                topics = topics.len(),
                events = broker.history_size().1,
                took_ms = started.elapsed().as_millis() as u64,
                "history on disk opened"
            );
            Ok((broker, topics))
        }
        #[cfg(not(feature = "disk"))]
        crate::config::StorageMode::Disk => {
            Err(StartError::Config(crate::config::ConfigError::Invalid {
                setting: "storage",
                reason: "this build has no disk backend (built without the `disk` feature)"
                    .to_owned(),
            }))
        }
    }
}

async fn expire_history(state: Arc<NodeState>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            _ = tick.tick() => {
                let claimed = state.cluster.claimed_topics();
                state.broker.expire_history(&claimed);
                #[cfg(feature = "disk")]
                state.broker.reopen_failed_history();
            }
        }
    }
}

/// How often queue-group events waiting for a member are offered again: a member that
/// acknowledged one frees room, and one that (re)joined may take them.
const WAITING_GROUP_EVENTS_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Places queue-group events that waited for a member (see `Broker::place_waiting`), and
/// tells the topics' replicas where the queue groups stand (see
/// `crate::routing::group_progress`) and how far the topics are committed.
async fn place_waiting_group_events(state: Arc<NodeState>) {
    let mut tick = tokio::time::interval(WAITING_GROUP_EVENTS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            _ = tick.tick() => {
                state.broker.place_waiting();
                state.cluster.report_group_progress();
                state.cluster.announce_commits();
            }
        }
    }
}

async fn bind_tcp(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let bind_error = |source| StartError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local))
}

/// The client and admin ports with their limits. The client port's connection cap stays
/// below the open-file limit, so a full node refuses clients instead of failing accepts.
fn listeners(
    state: &Arc<NodeState>,
    client: TcpListener,
    admin: TcpListener,
) -> (HttpListener, HttpListener) {
    let settings = &state.settings;
    let fd_limit = frontdoor::listener::raise_open_file_limit();
    let caps = ConnectionCaps::for_clients(
        settings.max_connections,
        settings.max_connections_per_ip,
        fd_limit,
    );
    if caps.admitted < settings.max_connections {
        let message = "the open-file limit holds fewer client connections than max_connections; \
                       raise LimitNOFILE / ulimit -n to take more";
        // Loud only when someone asked for that many.
        if settings.max_connections == Settings::default().max_connections {
            tracing::info!(
                open_file_limit = fd_limit,
                admitted = caps.admitted,
                "{message}"
            );
        } else {
            tracing::warn!(
                max_connections = settings.max_connections,
                open_file_limit = fd_limit,
                admitted = caps.admitted,
                "{message}"
            );
        }
    }
    let metrics = state.metrics.listener.clone();
    let client = HttpListener {
        name: "client",
        listener: client,
        router: frontdoor::router(state.clone()),
        tls: state.client_tls.clone(),
        limiter: ConnectionLimiter::new(caps, &metrics),
        handshake_timeout: settings.handshake_timeout,
        metrics,
    };
    // The admin port counts into metrics nobody registered: its numbers are not clients'.
    let admin_metrics = frontdoor::listener::ListenerMetrics::default();
    let admin = HttpListener {
        name: "admin",
        listener: admin,
        router: frontdoor::admin_router(state.clone()),
        tls: None,
        limiter: ConnectionLimiter::new(ConnectionCaps::for_admin(), &admin_metrics),
        handshake_timeout: settings.handshake_timeout,
        metrics: admin_metrics,
    };
    (client, admin)
}

async fn serve(client: HttpListener, admin: HttpListener, state: Arc<NodeState>) {
    let admin = tokio::spawn(frontdoor::listener::serve(admin, state.shutdown.clone()));
    frontdoor::listener::serve(client, state.shutdown.clone()).await;
    state.connections.close();
    let grace = state.settings.shutdown_grace;
    if tokio::time::timeout(grace, state.connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = state.connections.len(),
            "connections still open after the shutdown grace period; dropping them"
        );
    }
    state.cluster.leave().await;
    let _ = admin.await;
    tracing::info!("node stopped");
}
