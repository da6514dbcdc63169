//! Client-facing listeners: UDP and TCP on every `listen` address.
//!
//! UDP is the hot path and is owned here rather than by hickory-server. Measured on the
//! 2-core development machine (dnsperf, Knot upstream): hickory-server 0.26's request path
//! tops out near 30-38k QPS (a task plus a full decode/re-encode per datagram), while a raw
//! tokio path reached 65-79k. So each listen address gets `listener.udp_workers` sockets
//! bound with SO_REUSEPORT (the kernel spreads datagrams across them), each read by one task
//! that parses only header and question ([`crate::wire`]) and hands the bytes to the
//! pipeline without spawning anything, with a [`ReplyTo::Udp`]. The answer is sent from
//! the forwarder's receive task straight to the client socket.
//!
//! TCP (RFC 7766): one task per connection and one writer task; queries pipelined through
//! the same pipeline as UDP with a [`ReplyTo::Tcp`], answered as they complete, at most
//! `listener.tcp_max_inflight_per_connection` at once; connections capped at `listener.tcp_max_connections`, closed after
//! `listener.tcp_idle_timeout` without a query. A length prefix below a DNS header closes
//! the connection.
//!
//! Handover: every listening socket (UDP, TCP, and the admin listener, see `lib`) is bound
//! with SO_REUSEPORT, so a second dnslens — the new pod of a rolling update on the host's
//! network — binds the same address beside this one. On stop a UDP worker answers what its
//! socket still holds before closing it, and the TCP listener accepts what the kernel
//! queued for it, then leaves the group (open connections finish what they read), so new
//! traffic goes to the other process.
//!
//! Dual stack: the IPv6 wildcard `[::]:PORT` is bound dual-stack (IPv4 clients arrive as
//! `::ffff:a.b.c.d`) whatever `net.ipv6.bindv6only` says, so one address serves both
//! families of a dual-stack pod; on a kernel without IPv6 (EAFNOSUPPORT) it is IPv4's
//! wildcard, with a warning. The same holds for the admin listener.
//!
//! Metrics:
//! - `dnslens_requests_total{transport,qtype,rcode}`: queries answered, by the RCODE sent.
//! - `dnslens_requests_dropped_total{reason}`: queries not forwarded: `too_short`,
//!   `not_a_query`, `question_count`, `malformed`, `not_implemented` (the last three are
//!   answered FORMERR/NOTIMP), `tcp_bad_length`, `tcp_connection_limit`, `send_failed`.
//! - `dnslens_udp_truncated_total`: answers cut to header, question and OPT with TC set
//!   because they exceeded the client's UDP payload size (counted in [`crate::request`]).
//! - `dnslens_acl_refused_total`: queries answered REFUSED because the client is outside
//!   `listener.allow` (default: loopback only; node-local mode requires the pod CIDRs), so
//!   dnslens is never an open resolver.
//! - `dnslens_rate_limited_total{action}`, `dnslens_rate_limit_table_full_total`: the
//!   per-client rate limit, `listener.rate_limit` ([`crate::ratelimit`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::Transport;
use crate::udp::DatagramSocket;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::dnstap::MessageKind;
use crate::invalid::{check, Invalid};
use crate::metrics::{ReasonCounters, ReasonLabels};
use crate::pipeline::Pipeline;
use crate::ratelimit::{RateLimitConfig, RateLimitMetrics, RateLimiter, Verdict};
use crate::record::TraceSink;
use crate::request::{
    Arrival, Replies, ReplyTo, RequestDurations, RequestLabels, TcpReply, UdpReply,
};
use crate::wire::{self, QueryInfo, Rcode};
use serde::Deserialize;

/// Client-facing listener tuning.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// UDP sockets (SO_REUSEPORT) per listen address; 0 means one per core.
    pub udp_workers: usize,
    pub tcp_max_connections: usize,
    #[serde(with = "humantime_serde")]
    pub tcp_idle_timeout: Duration,
    pub tcp_max_inflight_per_connection: usize,
    /// Client networks that get answers; queries from elsewhere are REFUSED. Empty: loopback
    /// in a sidecar; node-local mode requires the pod CIDRs here.
    pub allow: Vec<ipnet::IpNet>,
    /// Per-client token bucket (off by default): see [`crate::ratelimit`].
    pub rate_limit: RateLimitConfig,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            udp_workers: 0,
            tcp_max_connections: 1024,
            tcp_idle_timeout: Duration::from_secs(10),
            tcp_max_inflight_per_connection: 64,
            allow: Vec::new(),
            rate_limit: RateLimitConfig::default(),
        }
    }
}

impl ListenerConfig {
    /// Checks the `listener:` section on its own.
    pub fn validate(&self) -> Result<(), Invalid> {
        check(
            self.tcp_max_connections == 0 || self.tcp_max_inflight_per_connection == 0,
            "listener",
            "tcp_max_connections and tcp_max_inflight_per_connection must be above zero",
        )?;
        check(self.udp_workers > 64, "listener.udp_workers", "at most 64")?;
        self.rate_limit.validate()
    }
}

/// Largest UDP datagram read from a client.
const UDP_RECV_BUFFER: usize = 65_535;

/// Reasons of `dnslens_requests_dropped_total`.
const DROP_REASONS: &[&str] = &[
    "malformed",
    "too_short",
    "not_a_query",
    "question_count",
    "not_implemented",
    "tcp_bad_length",
    "tcp_connection_limit",
    "send_failed",
];

/// The listener's metric families; the answering side's counters are in [`Replies`].
pub struct ListenMetrics {
    pub replies: Arc<Replies>,
    dropped: ReasonCounters,
    acl_refused: Counter,
    rate_limit: RateLimitMetrics,
}

impl ListenMetrics {
    /// Registers the listener's families. Answered queries' traces go to `trace_sink`.
    pub fn register(
        registry: &mut Registry,
        trace_sink: Option<TraceSink>,
        dnstap: Option<crate::dnstap::Dnstap>,
    ) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Client queries answered, by transport, query type and the RCODE sent",
            requests.clone(),
        );
        let dropped = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "requests_dropped",
            "Client messages not forwarded, by reason",
            dropped.clone(),
        );
        let truncated = Counter::default();
        registry.register(
            "udp_truncated",
            "UDP answers truncated to the client's payload size (TC set)",
            truncated.clone(),
        );
        let acl_refused = Counter::default();
        registry.register(
            "acl_refused",
            "Queries answered REFUSED because the client is outside listener.allow",
            acl_refused.clone(),
        );
        let dropped = ReasonCounters::new(&dropped, DROP_REASONS);
        let send_failed = dropped.handle("send_failed");
        ListenMetrics {
            replies: Arc::new(Replies::new(
                requests,
                RequestDurations::register(registry),
                truncated,
                send_failed,
                trace_sink,
                dnstap,
            )),
            dropped,
            acl_refused,
            rate_limit: RateLimitMetrics::register(registry),
        }
    }

    fn dropped(&self, reason: &str) {
        self.dropped.inc(reason);
    }
}

/// The client networks dnslens answers (`listener.allow`), and the per-client rate limit
/// within them (`listener.rate_limit`).
pub struct Acl {
    allowed: Vec<ipnet::IpNet>,
    limiter: Option<RateLimiter>,
}

impl Acl {
    /// `allow` from the config; empty means loopback only.
    pub fn new(allow: &[ipnet::IpNet]) -> Acl {
        let loopback = ["127.0.0.0/8", "::1/128"]
            .iter()
            .filter_map(|net| net.parse().ok())
            .collect();
        Acl {
            allowed: if allow.is_empty() {
                loopback
            } else {
                allow.to_vec()
            },
            limiter: None,
        }
    }

    /// With a per-client rate limit (`None`: off).
    pub fn limited_by(mut self, limiter: Option<RateLimiter>) -> Acl {
        self.limiter = limiter;
        self
    }

    /// Whether this query from `client` (already allowed) stays within its rate.
    fn rate(&self, client: IpAddr, now: Instant) -> Verdict {
        self.limiter
            .as_ref()
            .map_or(Verdict::Pass, |l| l.check(client.to_canonical(), now))
    }

    pub fn allows(&self, client: IpAddr) -> bool {
        // A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d.
        let client = client.to_canonical();
        self.allowed.iter().any(|net| net.contains(&client))
    }
}

/// Bound sockets, before any task runs: binding fails early and reports the real ports.
pub struct BoundListeners {
    udp: Vec<Arc<UdpReply>>,
    tcp: Vec<TcpListener>,
    pub local_addrs: Vec<SocketAddr>,
}

/// Binds UDP (`workers` sockets with SO_REUSEPORT) and TCP on every address. Port 0 binds
/// one ephemeral port shared by UDP and TCP.
pub fn bind(
    addrs: &[SocketAddr],
    config: &ListenerConfig,
    replies: &Arc<Replies>,
) -> std::io::Result<BoundListeners> {
    let workers = if config.udp_workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        config.udp_workers
    };
    let mut bound = BoundListeners {
        udp: Vec::new(),
        tcp: Vec::new(),
        local_addrs: Vec::new(),
    };
    for requested in addrs {
        let (addr, sockets, tcp) = bind_one(*requested, workers)?;
        for socket in sockets {
            let socket = DatagramSocket::new(socket)?;
            if let Err(e) = socket.stamp_arrivals() {
                debug!(error = %e, "no kernel arrival stamps; queries are timed when read");
            }
            bound.udp.push(Arc::new(UdpReply {
                socket,
                replies: replies.clone(),
            }));
        }
        bound.tcp.push(tcp);
        bound.local_addrs.push(addr);
    }
    Ok(bound)
}

/// UDP sockets and a TCP listener on one address. Port 0 gets a port no other socket
/// uses ([`exclusive_port`]): with SO_REUSEPORT the kernel may otherwise hand out a port
/// another listener of the same user already holds, and the two would share its traffic.
fn bind_one(
    requested: SocketAddr,
    workers: usize,
) -> std::io::Result<(SocketAddr, Vec<Socket>, TcpListener)> {
    let requested = family_available(requested);
    let addr = if requested.port() == 0 {
        SocketAddr::new(requested.ip(), exclusive_port(requested.ip())?)
    } else {
        requested
    };
    let sockets = (0..workers.max(1))
        .map(|_| reuseport_udp(addr))
        .collect::<std::io::Result<Vec<_>>>()?;
    let tcp = tcp_listener(addr)?;
    Ok((addr, sockets, tcp))
}

/// A port free for both UDP and TCP on `ip`, found with sockets that do not share
/// (no SO_REUSEPORT), so no other listener holds it; they are closed before the shared
/// sockets bind it.
pub fn exclusive_port(ip: IpAddr) -> std::io::Result<u16> {
    let mut last_error = None;
    for _ in 0..16 {
        let udp = std::net::UdpSocket::bind((ip, 0))?;
        let port = udp.local_addr()?.port();
        match std::net::TcpListener::bind((ip, port)) {
            Ok(_) => return Ok(port),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no port free for UDP and TCP")))
}

/// Linux's EAFNOSUPPORT: the kernel has no such address family (booted without IPv6).
const NO_ADDRESS_FAMILY: i32 = 97;

/// `addr`, or IPv4's wildcard on the same port when `addr` is IPv6's wildcard and the
/// kernel has no IPv6 at all.
fn family_available(addr: SocketAddr) -> SocketAddr {
    if addr.ip() != IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) {
        return addr;
    }
    match Socket::new(Domain::IPV6, Type::DGRAM, None) {
        Err(e) if e.raw_os_error() == Some(NO_ADDRESS_FAMILY) => {
            let v4 = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), addr.port());
            tracing::warn!(requested = %addr, bound = %v4, "no IPv6 in this kernel: IPv4 only");
            v4
        }
        _ => addr,
    }
}

/// A socket for `addr`: the IPv6 wildcard dual-stack (see the module doc).
fn socket_for(addr: SocketAddr, kind: Type, protocol: Protocol) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), kind, Some(protocol))?;
    if addr.ip() == IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) {
        socket.set_only_v6(false)?;
    }
    Ok(socket)
}

fn reuseport_udp(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = socket_for(addr, Type::DGRAM, Protocol::UDP)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    // Room for bursts while a worker is busy; the kernel caps it at rmem_max.
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// A TCP listener that another dnslens may share (SO_REUSEPORT: the new pod of a rolling
/// update binds beside the old one).
pub fn tcp_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let addr = family_available(addr);
    let addr = if addr.port() == 0 {
        SocketAddr::new(addr.ip(), exclusive_port(addr.ip())?)
    } else {
        addr
    };
    let socket = socket_for(addr, Type::STREAM, Protocol::TCP)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

impl BoundListeners {
    /// Starts the tasks. They stop reading when `stop` is cancelled; TCP connections finish
    /// the queries they already read.
    pub fn spawn(
        self,
        config: &ListenerConfig,
        pipeline: Arc<Pipeline>,
        metrics: Arc<ListenMetrics>,
        stop: CancellationToken,
        tasks: &mut JoinSet<()>,
    ) {
        let limiter = RateLimiter::build(&config.rate_limit, &metrics.rate_limit);
        let acl = Arc::new(Acl::new(&config.allow).limited_by(limiter));
        for endpoint in self.udp {
            tasks.spawn(udp_worker(
                endpoint,
                pipeline.clone(),
                metrics.clone(),
                acl.clone(),
                stop.clone(),
            ));
        }
        let connections = Arc::new(Semaphore::new(config.tcp_max_connections));
        let settings = TcpSettings {
            idle_timeout: config.tcp_idle_timeout,
            max_inflight: config.tcp_max_inflight_per_connection,
        };
        for listener in self.tcp {
            tasks.spawn(tcp_accept(
                listener,
                settings,
                connections.clone(),
                Served {
                    pipeline: pipeline.clone(),
                    metrics: metrics.clone(),
                    acl: acl.clone(),
                },
                stop.clone(),
            ));
        }
    }
}

async fn udp_worker(
    endpoint: Arc<UdpReply>,
    pipeline: Arc<Pipeline>,
    metrics: Arc<ListenMetrics>,
    acl: Arc<Acl>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; UDP_RECV_BUFFER];
    // One wait on the token for the worker's life: a fresh `cancelled()` per datagram
    // registered and removed a waiter under the token's mutex, shared by every worker.
    let mut stopped = std::pin::pin!(stop.cancelled());
    loop {
        let (len, peer, arrived) = tokio::select! {
            biased;
            _ = &mut stopped => break,
            received = endpoint.socket.recv_stamped(&mut buf) => match received {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors and the like surface here on some kernels; keep serving.
                    debug!(error = %e, "udp receive error");
                    continue;
                }
            },
        };
        serve_datagram(
            &endpoint,
            &buf[..len],
            peer,
            arrived,
            &pipeline,
            &metrics,
            &acl,
        );
    }
    // What the kernel queued on this socket before it closes would be lost: with another
    // dnslens on the same address (SO_REUSEPORT, a rolling update) new datagrams go to it
    // once this socket is gone, so answering the queue loses nothing.
    for _ in 0..UDP_DRAIN_MAX {
        match endpoint.socket.try_recv_stamped(&mut buf) {
            Ok((len, peer, arrived)) => serve_datagram(
                &endpoint,
                &buf[..len],
                peer,
                arrived,
                &pipeline,
                &metrics,
                &acl,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(_) => continue,
        }
    }
}

/// How long a connection accepted from the queue after the stop may take to send its
/// queries.
const TCP_DRAIN_READ: Duration = Duration::from_millis(500);

/// Datagrams answered from a socket's queue after the stop, at most.
const UDP_DRAIN_MAX: usize = 65_536;

/// One received datagram (`received`: when it reached the host): to the pipeline, or
/// refused / rejected.
fn serve_datagram(
    endpoint: &Arc<UdpReply>,
    packet: &[u8],
    peer: SocketAddr,
    received: Instant,
    pipeline: &Arc<Pipeline>,
    metrics: &ListenMetrics,
    acl: &Acl,
) {
    metrics
        .replies
        .tap(MessageKind::ClientQuery, Transport::Udp, peer, packet);
    let reply = ReplyTo::Udp(endpoint.clone());
    match wire::parse_query(packet) {
        Ok(info) if acl.allows(peer.ip()) => match acl.rate(peer.ip(), received) {
            Verdict::Pass => pipeline.handle(
                packet,
                info,
                Arrival {
                    peer,
                    received,
                    reply,
                },
            ),
            Verdict::Refuse => refuse(packet, &info, peer, reply),
            Verdict::Drop => {}
        },
        parsed => refuse_or_reject(packet, parsed, peer, reply, metrics),
    }
}

/// Answers REFUSED (header, question, OPT): outside the access list, or over the rate.
fn refuse(packet: &[u8], info: &QueryInfo, peer: SocketAddr, reply: ReplyTo) {
    let mut answer = wire::error_answer(packet, Some(info.question_end), Rcode::Refused);
    reply.send(peer, info, packet, &mut answer, None);
}

/// Answers a query from outside the access list with REFUSED, and one that does not parse
/// with FORMERR or NOTIMP (or nothing, when it is not even a query).
fn refuse_or_reject(
    packet: &[u8],
    parsed: Result<QueryInfo, wire::WireError>,
    peer: SocketAddr,
    reply: ReplyTo,
    metrics: &ListenMetrics,
) {
    let (info, rcode) = match parsed {
        Ok(info) => {
            metrics.acl_refused.inc();
            (info, Rcode::Refused)
        }
        Err(e) => {
            metrics.dropped(e.reason());
            let Some(rcode) = e.answer_rcode() else {
                return;
            };
            let unparsed = QueryInfo {
                id: wire::id(packet).unwrap_or(0),
                qtype: 0,
                question_end: 0,
                udp_payload: wire::CLASSIC_UDP_PAYLOAD,
                edns: false,
                dnssec_ok: false,
            };
            (unparsed, rcode)
        }
    };
    let question_end = (info.question_end > 0).then_some(info.question_end);
    let mut answer = wire::error_answer(packet, question_end, rcode);
    reply.send(peer, &info, packet, &mut answer, None);
}

#[derive(Clone, Copy)]
struct TcpSettings {
    idle_timeout: Duration,
    max_inflight: usize,
}

/// What a TCP connection hands its queries to.
#[derive(Clone)]
struct Served {
    pipeline: Arc<Pipeline>,
    metrics: Arc<ListenMetrics>,
    acl: Arc<Acl>,
}

async fn tcp_accept(
    listener: TcpListener,
    settings: TcpSettings,
    connections: Arc<Semaphore>,
    served: Served,
    stop: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            served.metrics.dropped("tcp_connection_limit");
            drop(stream);
            continue;
        };
        let served = served.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            let _permit = permit;
            let result = tcp_connection(stream, peer, settings, served, stop).await;
            if let Err(e) = result {
                debug!(%peer, error = %e, "tcp connection ended");
            }
        });
    }
    // Connections the kernel completed that were not accepted yet would be reset when the
    // listener closes: take them too, and give them TCP_DRAIN_READ to send their queries.
    let drained = CancellationToken::new();
    while let Ok(Ok((stream, peer))) = tokio::time::timeout(Duration::ZERO, listener.accept()).await
    {
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            served.metrics.dropped("tcp_connection_limit");
            continue;
        };
        let (served, drained) = (served.clone(), drained.clone());
        conns.spawn(async move {
            let _permit = permit;
            let _ = tcp_connection(stream, peer, settings, served, drained).await;
        });
    }
    // Out of the SO_REUSEPORT group, so new connections go to another dnslens on the address
    // (a rolling update) while the open ones answer what they already read.
    drop(listener);
    tokio::spawn(async move {
        tokio::time::sleep(TCP_DRAIN_READ).await;
        drained.cancel();
    });
    while conns.join_next().await.is_some() {}
}

/// One client connection: reads length-prefixed queries and hands each to the pipeline
/// with a [`TcpReply`]; a writer task frames the answers as they complete. No task per
/// query: the permit that bounds the connection's queries in flight travels with each.
async fn tcp_connection(
    stream: TcpStream,
    peer: SocketAddr,
    settings: TcpSettings,
    served: Served,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let allowed = served.acl.allows(peer.ip());
    let metrics = &served.metrics;
    let (mut reader, mut writer) = stream.into_split();
    let (answers_tx, mut answers_rx) = mpsc::unbounded_channel::<(Vec<u8>, OwnedSemaphorePermit)>();
    let write_failed = Arc::new(AtomicBool::new(false));
    let writer_task = {
        let write_failed = write_failed.clone();
        tokio::spawn(async move {
            while let Some((answer, _permit)) = answers_rx.recv().await {
                let Ok(len) = u16::try_from(answer.len()) else {
                    continue;
                };
                let mut frame = Vec::with_capacity(answer.len() + 2);
                frame.extend_from_slice(&len.to_be_bytes());
                frame.extend_from_slice(&answer);
                if writer.write_all(&frame).await.is_err() {
                    write_failed.store(true, Ordering::Relaxed);
                    return;
                }
            }
            let _ = writer.shutdown().await;
        })
    };
    let inflight = Arc::new(Semaphore::new(settings.max_inflight));
    let mut stopped = std::pin::pin!(stop.cancelled());
    loop {
        let mut len_prefix = [0u8; 2];
        let read = tokio::select! {
            _ = &mut stopped => break,
            read = tokio::time::timeout(settings.idle_timeout, reader.read_exact(&mut len_prefix)) => read,
        };
        match read {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => break, // closed by the client, or idle
        }
        let len = usize::from(u16::from_be_bytes(len_prefix));
        if len < wire::HEADER_LEN {
            metrics.dropped("tcp_bad_length");
            break;
        }
        // At most 64 KiB: the prefix is 16 bits, so no length can make this unbounded.
        let mut message = vec![0u8; len];
        match tokio::time::timeout(settings.idle_timeout, reader.read_exact(&mut message)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => {
                metrics.dropped("tcp_bad_length");
                break;
            }
        }
        if write_failed.load(Ordering::Relaxed) {
            break;
        }
        let received = Instant::now();
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            break;
        };
        metrics
            .replies
            .tap(MessageKind::ClientQuery, Transport::Tcp, peer, &message);
        let reply = ReplyTo::Tcp(TcpReply {
            answers: answers_tx.clone(),
            permit,
            replies: metrics.replies.clone(),
        });
        match wire::parse_query(&message) {
            Ok(info) if allowed => match served.acl.rate(peer.ip(), received) {
                Verdict::Pass => served.pipeline.handle(
                    &message,
                    info,
                    Arrival {
                        peer,
                        received,
                        reply,
                    },
                ),
                Verdict::Refuse => refuse(&message, &info, peer, reply),
                Verdict::Drop => {}
            },
            parsed => refuse_or_reject(&message, parsed, peer, reply, metrics),
        }
    }
    drop(answers_tx);
    // The writer ends once every query in flight has sent its answer (or failed).
    let _ = writer_task.await;
    Ok(())
}
