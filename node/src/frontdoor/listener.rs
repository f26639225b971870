//! The accept loop behind the client and admin ports: connection limits, the handshake
//! deadline, optional TLS, then HTTP/1.1 (with upgrades) served by an axum router.
//!
//! Every accepted TCP connection is counted from accept to close, whatever it is doing.
//! - Up to `max_connections` of them (and `max_connections_per_ip` from one address) are
//!   *admitted*: they may upgrade to a WebSocket.
//! - Beyond that a few more (`REFUSAL_ALLOWANCE`) are still served, without keep-alive, so
//!   an upgrade gets a clear `503` and a health check still gets its answer.
//! - When even those are taken, the loop stops accepting until a connection closes: further
//!   clients wait in the kernel's backlog instead of using up the process's file descriptors.
//!
//! A connection that has not sent a complete request within `handshake_timeout` of its
//! accept (TLS handshake included) is closed; one that has, but has not upgraded by then, is
//! closed once its request is answered. Only WebSockets outlive the deadline.
//!
//! Sockets that never send anything would otherwise hold their places until their deadline,
//! and a flood of them would keep every real client out for that long. So a connection that
//! has not sent a complete request for at least [`EVICT_AFTER`] gives its place up when it
//! is needed: when the admitted places are all taken, a new connection takes the oldest
//! silent admitted one's place; when even the open places are taken, the accept loop closes
//! the oldest silent connection of any kind and accepts the next one from the backlog (where
//! a real client may wait behind more silent ones). Either way the closed one is counted as
//! refused with reason `idle_evicted`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::tls::ClientTls;

/// Connections served beyond the limits, just long enough to be told why they are refused.
pub const REFUSAL_ALLOWANCE: usize = 64;
/// Connections the admin port holds at once; more wait in the backlog.
pub const ADMIN_CONNECTIONS: usize = 64;
/// File descriptors kept for everything but client connections: the admin port, the UDP
/// sockets, the runtime, logs, DNS look-ups of seeds.
const FD_RESERVE: u64 = 128 + ADMIN_CONNECTIONS as u64;
/// How long a connection that is answering its last request may take once told to close.
const FINISH_AFTER_DEADLINE: Duration = Duration::from_secs(5);
/// After an accept error (out of file descriptors, say), wait this long before the next
/// accept: the pending connection stays in the backlog and would fail again at once.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// A connection still without a complete request after this long may give its place to a
/// new one when the node is full. Real clients send their request within milliseconds of
/// connecting; this keeps a burst of them (a reconnect storm) from pushing each other out.
pub const EVICT_AFTER: Duration = Duration::from_secs(1);
/// At most one line per this interval for each kind of repeated listener trouble.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why a connection may not upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections,
    MaxConnectionsPerIp,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::MaxConnectionsPerIp => "max_connections_per_ip",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::MaxConnections => "too many connections to this node; try another or later\n",
            Self::MaxConnectionsPerIp => "too many connections from your address\n",
        }
    }
}

/// Counters a listener bumps; clones of the node's registered metrics (or unregistered
/// ones, for a listener nobody graphs).
#[derive(Debug, Clone, Default)]
pub struct ListenerMetrics {
    /// Connections and upgrades refused, by `reason`.
    pub refused: Family<[(&'static str, &'static str); 1], Counter>,
    /// Connections closed by the handshake deadline before a complete request.
    pub handshake_timeouts: Counter,
    pub tls_handshake_failures: Counter,
    pub accept_errors: Counter,
    /// TCP connections open on the port, handshakes included.
    pub sockets: Gauge,
}

impl ListenerMetrics {
    pub fn count_refusal(&self, reason: &'static str) {
        self.refused.get_or_create(&[("reason", reason)]).inc();
    }
}

/// How many connections a listener holds, and from one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCaps {
    /// Connections that may upgrade, at once.
    pub admitted: usize,
    /// Admitted connections from one IPv4 address or IPv6 /64; 0: no limit.
    pub per_ip: usize,
    /// Connections open at once, refused ones included; the accept loop waits beyond.
    pub open: usize,
}

impl ConnectionCaps {
    /// The client port's caps: the settings, lowered when the process's open-file limit
    /// (`fd_limit`) could not hold that many connections.
    pub fn for_clients(max_connections: usize, per_ip: usize, fd_limit: Option<u64>) -> Self {
        let fits = fd_limit
            .map(|limit| limit.saturating_sub(FD_RESERVE + REFUSAL_ALLOWANCE as u64))
            .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
        // A process with almost no descriptors still takes a few clients.
        let admitted = max_connections.min(fits).max(1);
        Self {
            admitted,
            per_ip,
            open: admitted + REFUSAL_ALLOWANCE,
        }
    }

    pub fn for_admin() -> Self {
        Self {
            admitted: ADMIN_CONNECTIONS,
            per_ip: 0,
            open: ADMIN_CONNECTIONS,
        }
    }
}

/// The open-file limit of this process, raised to its hard limit first (as Go's runtime
/// does): the soft limit is often 1024 for old `select()` users, far below what a node
/// holding thousands of connections needs. None when there is no limit.
pub fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (limit.current, limit.maximum)
        && hard > soft
    {
        limit.current = Some(hard);
        if let Err(err) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!(%err, "cannot raise the open-file limit");
        }
    }
    getrlimit(Resource::Nofile).current
}

#[derive(Debug, Default)]
struct Counts {
    open: usize,
    admitted: usize,
    by_address: HashMap<IpAddr, usize>,
    /// Connections (admitted or refused) without a complete request yet, oldest (lowest id)
    /// first.
    waiting: std::collections::BTreeMap<u64, WaitingConnection>,
    next_id: u64,
}

/// A connection that has not sent a complete request yet.
#[derive(Debug)]
struct WaitingConnection {
    accepted: Instant,
    address: IpAddr,
    admitted: Arc<std::sync::atomic::AtomicBool>,
    evict: CancellationToken,
}

/// The connection counts of one listener.
#[derive(Debug)]
pub struct ConnectionLimiter {
    caps: ConnectionCaps,
    counts: Mutex<Counts>,
    freed: Notify,
    sockets: Gauge,
    metrics: ListenerMetrics,
}

impl ConnectionLimiter {
    pub fn new(caps: ConnectionCaps, metrics: &ListenerMetrics) -> Arc<Self> {
        Arc::new(Self {
            caps,
            counts: Mutex::default(),
            freed: Notify::new(),
            sockets: metrics.sockets.clone(),
            metrics: metrics.clone(),
        })
    }

    pub fn caps(&self) -> ConnectionCaps {
        self.caps
    }

    /// Counts a connection just accepted from `ip` and decides whether it may upgrade.
    fn open(self: &Arc<Self>, ip: IpAddr) -> ConnectionSlot {
        self.open_at(ip, Instant::now())
    }

    fn open_at(self: &Arc<Self>, ip: IpAddr, now: Instant) -> ConnectionSlot {
        let address = address_key(ip);
        let mut counts = self.counts.lock();
        counts.open += 1;
        counts.next_id += 1;
        let id = counts.next_id;
        let from_address = counts.by_address.get(&address).copied().unwrap_or(0);
        let per_ip_full = self.caps.per_ip != 0 && from_address >= self.caps.per_ip;
        if counts.admitted >= self.caps.admitted && !per_ip_full {
            self.evict_oldest_waiting(&mut counts, now);
        }
        let refusal = if counts.admitted >= self.caps.admitted {
            Some(Refusal::MaxConnections)
        } else if per_ip_full {
            Some(Refusal::MaxConnectionsPerIp)
        } else {
            counts.admitted += 1;
            *counts.by_address.entry(address).or_default() += 1;
            None
        };
        let admitted = Arc::new(std::sync::atomic::AtomicBool::new(refusal.is_none()));
        let evict = CancellationToken::new();
        counts.waiting.insert(
            id,
            WaitingConnection {
                accepted: now,
                address,
                admitted: admitted.clone(),
                evict: evict.clone(),
            },
        );
        drop(counts);
        self.sockets.inc();
        ConnectionSlot {
            limiter: self.clone(),
            id,
            address,
            refusal,
            admitted,
            evict,
        }
    }

    /// Closes the oldest admitted connection that has sent no complete request for
    /// [`EVICT_AFTER`], and frees its admitted place at once.
    fn evict_oldest_waiting(&self, counts: &mut Counts, now: Instant) {
        let victim = counts
            .waiting
            .iter()
            .take_while(|(_, waiting)| {
                now.saturating_duration_since(waiting.accepted) >= EVICT_AFTER
            })
            .find(|(_, waiting)| waiting.admitted.load(Ordering::Relaxed))
            .map(|(id, _)| *id);
        if let Some(id) = victim {
            self.evict(counts, id);
        }
    }

    /// When every open place is taken: closes the oldest connection, admitted or refused,
    /// that has sent no complete request for [`EVICT_AFTER`]. Its open place comes back when
    /// its task ends. Otherwise says when the oldest silent one becomes evictable, if any is.
    fn evict_for_room(&self, now: Instant) -> RoomEviction {
        let mut counts = self.counts.lock();
        if counts.open < self.caps.open {
            return RoomEviction::HasRoom;
        }
        let Some((&id, oldest)) = counts.waiting.first_key_value() else {
            return RoomEviction::NoneSilent;
        };
        let evictable_at = oldest.accepted + EVICT_AFTER;
        if now < evictable_at {
            return RoomEviction::NotBefore(evictable_at);
        }
        self.evict(&mut counts, id);
        RoomEviction::Evicted
    }

    fn evict(&self, counts: &mut Counts, id: u64) {
        let Some(victim) = counts.waiting.remove(&id) else {
            return;
        };
        victim.evict.cancel();
        if victim.admitted.swap(false, Ordering::Relaxed) {
            counts.admitted -= 1;
            if let Some(n) = counts.by_address.get_mut(&victim.address) {
                *n -= 1;
                if *n == 0 {
                    counts.by_address.remove(&victim.address);
                }
            }
        }
        self.metrics.count_refusal("idle_evicted");
    }

    #[cfg(test)]
    fn is_full(&self) -> bool {
        self.counts.lock().open >= self.caps.open
    }

    /// Returns once a connection may be accepted (true), or at shutdown (false). While the
    /// listener is full, silent connections are evicted to make room (see the module doc).
    async fn wait_for_room(&self, shutdown: &CancellationToken, full: &LogThrottle) -> bool {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let eviction = self.evict_for_room(Instant::now());
            let wake_at = match eviction {
                RoomEviction::HasRoom => return true,
                // Its task ends at once and frees the place: `freed` fires.
                RoomEviction::Evicted => Instant::now() + EVICT_AFTER,
                RoomEviction::NotBefore(at) => at,
                RoomEviction::NoneSilent => Instant::now() + LOG_INTERVAL,
            };
            if !matches!(eviction, RoomEviction::Evicted)
                && let Some(suppressed) = full.ready()
            {
                tracing::warn!(
                    open = self.caps.open,
                    suppressed,
                    "listener full: not accepting connections until one closes or falls silent"
                );
            }
            tokio::select! {
                () = freed => {}
                () = tokio::time::sleep_until(wake_at) => {}
                () = shutdown.cancelled() => return false,
            }
        }
    }
}

/// What [`ConnectionLimiter::evict_for_room`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RoomEviction {
    HasRoom,
    Evicted,
    NotBefore(Instant),
    NoneSilent,
}

/// IPv6 clients usually hold a whole /64: they are counted per /64.
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// One accepted connection's place in the counts; given back when dropped.
#[derive(Debug)]
struct ConnectionSlot {
    limiter: Arc<ConnectionLimiter>,
    id: u64,
    address: IpAddr,
    refusal: Option<Refusal>,
    /// Whether this connection still holds an admitted place (an evicted one gave it up).
    admitted: Arc<std::sync::atomic::AtomicBool>,
    /// Cancelled when the connection is evicted for another.
    evict: CancellationToken,
}

impl ConnectionSlot {
    /// The connection sent a complete request: it may no longer be evicted.
    fn settle(&self) {
        self.limiter.counts.lock().waiting.remove(&self.id);
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self.limiter.counts.lock();
        counts.open -= 1;
        counts.waiting.remove(&self.id);
        if self.admitted.load(Ordering::Relaxed) {
            counts.admitted -= 1;
            if let Some(n) = counts.by_address.get_mut(&self.address) {
                *n -= 1;
                if *n == 0 {
                    counts.by_address.remove(&self.address);
                }
            }
        }
        drop(counts);
        self.limiter.sockets.dec();
        self.limiter.freed.notify_one();
    }
}

/// What a request handler knows about the connection it came on (a request extension). An
/// upgraded WebSocket keeps it for its life, and with it its place in the counts.
#[derive(Debug)]
pub struct ClientConnection {
    slot: ConnectionSlot,
    /// Whether the connection came over TLS.
    pub tls: bool,
    requests: AtomicU64,
}

impl ClientConnection {
    /// Why this connection may not upgrade, if it may not.
    pub fn refusal(&self) -> Option<Refusal> {
        self.slot.refusal
    }
}

/// At most one log line per [`LOG_INTERVAL`]; counts the lines it held back.
#[derive(Debug, Default)]
struct LogThrottle {
    last: Mutex<Option<std::time::Instant>>,
    suppressed: AtomicU64,
}

impl LogThrottle {
    /// Some(lines held back since the last one) when a line may be written now.
    fn ready(&self) -> Option<u64> {
        let mut last = self.last.lock();
        let now = std::time::Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < LOG_INTERVAL) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// One listening port and how it serves.
#[derive(Debug)]
pub struct HttpListener {
    /// `client` or `admin`, for the logs.
    pub name: &'static str,
    pub listener: TcpListener,
    pub router: Router,
    pub tls: Option<Arc<ClientTls>>,
    pub limiter: Arc<ConnectionLimiter>,
    pub handshake_timeout: Duration,
    pub metrics: ListenerMetrics,
}

#[derive(Debug, Default)]
struct Throttles {
    full: LogThrottle,
    accept: LogThrottle,
}

/// Accepts and serves until `shutdown`; then stops accepting (the port closes), lets each
/// connection finish the request it is answering, and returns once all have closed (at the
/// latest at their handshake deadline). Upgraded WebSockets are not waited for here.
pub async fn serve(listener: HttpListener, shutdown: CancellationToken) {
    let HttpListener {
        name,
        listener,
        router,
        tls,
        limiter,
        handshake_timeout,
        metrics,
    } = listener;
    let connections = TaskTracker::new();
    let throttles = Throttles::default();
    while limiter.wait_for_room(&shutdown, &throttles.full).await {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                metrics.accept_errors.inc();
                if !accept_error_is_transient(&err) {
                    if let Some(suppressed) = throttles.accept.ready() {
                        tracing::error!(
                            listener = name,
                            %err,
                            suppressed,
                            "cannot accept connections (out of file descriptors?); retrying"
                        );
                    }
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
                continue;
            }
        };
        let deadline = Instant::now() + handshake_timeout;
        // Nagle's algorithm would hold a frame written right after another (a publish's `ok`
        // and then its event, say) until the client's delayed TCP acknowledgement: ~40 ms.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "cannot turn Nagle's algorithm off");
        }
        let connection = Arc::new(ClientConnection {
            slot: limiter.open(peer.ip()),
            tls: tls.is_some(),
            requests: AtomicU64::new(0),
        });
        let served = Served {
            router: router.clone(),
            peer,
            connection,
            deadline,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        };
        connections.spawn(handle(tcp, tls.clone(), served));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Errors that concern one connection (it was reset before we took it), not the listener.
fn accept_error_is_transient(err: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        err.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
    )
}

/// What serving one connection needs.
struct Served {
    router: Router,
    peer: SocketAddr,
    connection: Arc<ClientConnection>,
    deadline: Instant,
    metrics: ListenerMetrics,
    shutdown: CancellationToken,
}

async fn handle(tcp: TcpStream, tls: Option<Arc<ClientTls>>, served: Served) {
    let Some(tls) = tls else {
        return serve_http(tcp, served).await;
    };
    let evicted = served.connection.slot.evict.clone();
    let handshake = tokio::time::timeout_at(served.deadline, tls.acceptor().accept(tcp));
    let finished = tokio::select! {
        finished = handshake => finished,
        () = evicted.cancelled() => {
            tracing::debug!(peer = %served.peer, "evicted during its TLS handshake: the node is full");
            return;
        }
    };
    match finished {
        Ok(Ok(stream)) => serve_http(stream, served).await,
        Ok(Err(err)) => {
            served.metrics.tls_handshake_failures.inc();
            tracing::debug!(peer = %served.peer, %err, "TLS handshake failed");
        }
        Err(_) => {
            served.metrics.handshake_timeouts.inc();
            tracing::debug!(peer = %served.peer, "TLS handshake not finished in time");
        }
    }
}

async fn serve_http<IO>(io: IO, served: Served)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Served {
        router,
        peer,
        connection,
        deadline,
        metrics,
        shutdown,
    } = served;
    let for_requests = connection.clone();
    let service = hyper::service::service_fn(move |mut request| {
        if for_requests.requests.fetch_add(1, Ordering::Relaxed) == 0 {
            for_requests.slot.settle();
        }
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(for_requests.clone());
        tower_service::Service::call(&mut router.clone(), request)
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    // A refused connection gets its one answer, then closes.
    http.keep_alive(connection.refusal().is_none());
    let served = http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(served);
    let mut stop_at = deadline;
    let mut closing = false;
    let evicted = connection.slot.evict.clone();
    loop {
        tokio::select! {
            () = evicted.cancelled() => {
                tracing::debug!(%peer, "evicted: no complete request, and the node is full");
                return;
            }
            result = served.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(%peer, %err, "HTTP connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(stop_at) => {
                if closing {
                    return;
                }
                if connection.requests.load(Ordering::Relaxed) == 0 {
                    // Silent, or still sending its first request: nothing to finish.
                    metrics.handshake_timeouts.inc();
                    tracing::debug!(%peer, "no complete request within handshake_timeout");
                    return;
                }
                served.as_mut().graceful_shutdown();
                closing = true;
                stop_at = Instant::now() + FINISH_AFTER_DEADLINE;
            }
            () = shutdown.cancelled(), if !closing => {
                served.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_stay_below_the_open_file_limit() {
        let caps = ConnectionCaps::for_clients(100_000, 1000, Some(20_000));
        assert!(caps.open < 20_000 - 128, "{caps:?}");
        assert!(
            caps.admitted >= 19_000,
            "bench's 19,000 idle connections fit: {caps:?}"
        );
        let caps = ConnectionCaps::for_clients(100_000, 0, Some(1024));
        assert!(caps.open <= 1024 - 128, "{caps:?}");
        assert_eq!(
            ConnectionCaps::for_clients(500, 10, Some(20_000)).admitted,
            500
        );
        assert_eq!(ConnectionCaps::for_clients(500, 10, None).admitted, 500);
    }

    #[test]
    fn slots_count_admissions_per_address_and_give_them_back() {
        let caps = ConnectionCaps {
            admitted: 3,
            per_ip: 2,
            open: 5,
        };
        let metrics = ListenerMetrics::default();
        let limiter = ConnectionLimiter::new(caps, &metrics);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let b_same_64: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let a1 = limiter.open(a);
        let a2 = limiter.open(a);
        let a3 = limiter.open(a);
        assert_eq!(
            [a1.refusal, a2.refusal, a3.refusal],
            [None, None, Some(Refusal::MaxConnectionsPerIp)]
        );
        let b1 = limiter.open(b);
        let b2 = limiter.open(b_same_64);
        assert_eq!(
            [b1.refusal, b2.refusal],
            [None, Some(Refusal::MaxConnections)]
        );
        assert!(limiter.is_full());
        assert_eq!(metrics.sockets.get(), 5);
        drop(a1);
        assert!(!limiter.is_full());
        let a4 = limiter.open(a);
        assert_eq!(
            a4.refusal, None,
            "a closed connection's place is free again"
        );
        drop((a2, a3, a4, b1, b2));
        assert_eq!(metrics.sockets.get(), 0);
        let counts = limiter.counts.lock();
        assert_eq!((counts.open, counts.admitted), (0, 0));
        assert!(counts.by_address.is_empty(), "no address kept once gone");
    }

    #[test]
    fn a_full_node_evicts_the_oldest_silent_connection_for_a_new_one() {
        let caps = ConnectionCaps {
            admitted: 2,
            per_ip: 0,
            open: 10,
        };
        let metrics = ListenerMetrics::default();
        let limiter = ConnectionLimiter::new(caps, &metrics);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let start = Instant::now();
        let talker = limiter.open_at(ip, start);
        let silent = limiter.open_at(ip, start);
        talker.settle();
        // Too young to evict: a burst of real clients must not push each other out.
        let early = limiter.open_at(ip, start + EVICT_AFTER / 2);
        assert_eq!(early.refusal, Some(Refusal::MaxConnections));
        assert!(!silent.evict.is_cancelled());
        let late = limiter.open_at(ip, start + EVICT_AFTER * 2);
        assert_eq!(late.refusal, None, "the silent one's place is taken");
        assert!(silent.evict.is_cancelled());
        assert!(
            !talker.evict.is_cancelled(),
            "one that talked is never evicted"
        );
        assert_eq!(
            metrics
                .refused
                .get_or_create(&[("reason", "idle_evicted")])
                .get(),
            1
        );
        // Nothing settled is left to evict.
        late.settle();
        let another = limiter.open_at(ip, start + EVICT_AFTER * 3);
        assert_eq!(another.refusal, Some(Refusal::MaxConnections));
        drop((talker, silent, early, late, another));
        let counts = limiter.counts.lock();
        assert_eq!((counts.open, counts.admitted), (0, 0));
        assert!(counts.waiting.is_empty() && counts.by_address.is_empty());
    }

    #[test]
    fn a_full_listener_closes_the_oldest_silent_connection_refused_or_not() {
        let caps = ConnectionCaps {
            admitted: 1,
            per_ip: 0,
            open: 2,
        };
        let metrics = ListenerMetrics::default();
        let limiter = ConnectionLimiter::new(caps, &metrics);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let start = Instant::now();
        let talker = limiter.open_at(ip, start);
        talker.settle();
        let refused = limiter.open_at(ip, start);
        assert_eq!(refused.refusal, Some(Refusal::MaxConnections));
        assert_eq!(
            limiter.evict_for_room(start),
            RoomEviction::NotBefore(start + EVICT_AFTER),
            "a connection just accepted keeps its place"
        );
        assert_eq!(
            limiter.evict_for_room(start + EVICT_AFTER),
            RoomEviction::Evicted
        );
        assert!(refused.evict.is_cancelled());
        assert!(!talker.evict.is_cancelled(), "one that talked stays");
        drop(refused);
        assert_eq!(
            limiter.evict_for_room(start + EVICT_AFTER),
            RoomEviction::HasRoom
        );
        let another = limiter.open_at(ip, start + EVICT_AFTER);
        another.settle();
        assert_eq!(
            limiter.evict_for_room(start + EVICT_AFTER * 5),
            RoomEviction::NoneSilent,
            "connections that talk are never closed for room"
        );
        drop((talker, another));
        let counts = limiter.counts.lock();
        assert_eq!((counts.open, counts.admitted), (0, 0));
        assert!(counts.waiting.is_empty());
    }

    #[test]
    fn log_throttle_counts_what_it_holds_back() {
        let throttle = LogThrottle::default();
        assert_eq!(throttle.ready(), Some(0));
        assert_eq!(throttle.ready(), None);
        assert_eq!(throttle.ready(), None);
        *throttle.last.lock() = Some(std::time::Instant::now() - LOG_INTERVAL);
        assert_eq!(throttle.ready(), Some(2));
    }
}
