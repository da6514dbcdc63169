//! Client-facing listeners: UDP and TCP on every `listen` address.
//!
//! UDP is the hot path and is owned here rather than by hickory-server. Measured on the
//! 2-core development machine (dnsperf, Knot upstream): hickory-server 0.26's request path
//! tops out near 30-38k QPS (a task plus a full decode/re-encode per datagram), while a raw
//! tokio path reached 65-79k. So each listen address gets `listener.udp_workers` sockets
//! bound with SO_REUSEPORT (the kernel spreads datagrams across them), each read by one task
//! that parses only header and question ([`crate::wire`]) and hands the bytes to the
//! forwarder without spawning anything. The answer is sent from the forwarder's receive
//! task straight to the client socket.
//!
//! TCP (RFC 7766): one task per connection, queries pipelined (each handled concurrently,
//! answered as they complete, at most `listener.tcp_max_inflight_per_connection` at once),
//! connections capped at `listener.tcp_max_connections`, closed after
//! `listener.tcp_idle_timeout` without a query. A length prefix below a DNS header closes
//! the connection.
//!
//! Metrics:
//! - `dnslens_requests_total{transport,qtype,rcode}`: queries answered, by the RCODE sent.
//! - `dnslens_requests_dropped_total{reason}`: queries not forwarded: `too_short`,
//!   `not_a_query`, `question_count`, `malformed`, `not_implemented` (the last three are
//!   answered FORMERR/NOTIMP), `tcp_bad_length`, `tcp_connection_limit`, `send_failed`.
//! - `dnslens_udp_truncated_total`: answers cut to header+question with TC set because they
//!   exceeded the client's UDP payload size.
//! - `dnslens_acl_refused_total`: queries answered REFUSED because the client is outside
//!   `listener.allow` (default: loopback only; node-local mode requires the pod CIDRs), so
//!   dnslens is never an open resolver.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::cache::CacheKey;
use crate::config::ListenerConfig;
use crate::metrics::{
    CounterTable, QtypeLabel, RcodeLabel, ReasonCounters, ReasonLabels, Transport,
};
use crate::pipeline::Pipeline;
use crate::record::{QueryTrace, TraceSink};
use crate::wire::{self, QueryInfo, Rcode};

/// Largest UDP datagram read from a client.
const UDP_RECV_BUFFER: usize = 65_535;

/// Reasons of `dnslens_requests_dropped_total`.
const DROP_REASONS: &[&str] = &[
    "malformed",
    "too_short",
    "not_a_query",
    "not_a_response",
    "question_count",
    "not_implemented",
    "tcp_bad_length",
    "tcp_connection_limit",
    "send_failed",
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    transport: Transport,
    qtype: QtypeLabel,
    rcode: RcodeLabel,
}

/// The listener's metric families.
pub struct ListenMetrics {
    requests: CounterTable<RequestLabels>,
    dropped: ReasonCounters,
    truncated: Counter,
    acl_refused: Counter,
}

impl ListenMetrics {
    pub fn register(registry: &mut Registry) -> Self {
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
        ListenMetrics {
            acl_refused,
            requests: CounterTable::new(
                requests,
                Transport::ALL.len() * QtypeLabel::COUNT * RcodeLabel::COUNT,
            ),
            dropped: ReasonCounters::new(&dropped, DROP_REASONS),
            truncated,
        }
    }

    /// Counts one answered query.
    pub fn answered(&self, transport: Transport, qtype: u16, rcode: u8) {
        let qtype = QtypeLabel::from_qtype(qtype);
        let rcode = RcodeLabel::from_rcode(rcode);
        let index = (transport as usize * QtypeLabel::COUNT + qtype.index()) * RcodeLabel::COUNT
            + rcode.index();
        self.requests
            .get(index, || RequestLabels {
                transport,
                qtype,
                rcode,
            })
            .inc();
    }

    pub fn dropped(&self, reason: &str) {
        self.dropped.inc(reason);
    }
}

/// One UDP listening socket and what answering through it needs.
pub struct UdpEndpoint {
    socket: UdpSocket,
    metrics: Arc<ListenMetrics>,
    /// Where finished queries go for lookup correlation; `None` when nothing observes them.
    trace_sink: Option<TraceSink>,
}

/// Where a query's answer goes.
pub enum ReplyTo {
    /// Back to a UDP client through the socket it came in on.
    Client(Arc<UdpEndpoint>),
    /// To dnslens itself (prefetch, autopath, the shield's twin check).
    Internal(oneshot::Sender<Vec<u8>>),
}

/// A UDP query on its way through the proxy. Holds the query bytes (their ID is rewritten
/// for each upstream try) and the route back.
pub struct UdpRequest {
    reply: ReplyTo,
    /// Runs the cache and mitigations once the forwarder has an answer.
    pipeline: Arc<Pipeline>,
    pub peer: SocketAddr,
    pub query: Vec<u8>,
    pub info: QueryInfo,
    pub received: Instant,
    /// Plain-data record of this query for lookup correlation (`None` only without a tracker).
    pub trace: Option<Box<QueryTrace>>,
    /// Set on the query that leads a coalesced question: its answer is stored and shared.
    pub cache_key: Option<CacheKey>,
}

impl UdpRequest {
    /// A query dnslens asks on its own behalf; the answer arrives on `reply`.
    pub fn internal(
        pipeline: Arc<Pipeline>,
        query: Vec<u8>,
        info: QueryInfo,
        reply: oneshot::Sender<Vec<u8>>,
    ) -> UdpRequest {
        UdpRequest {
            reply: ReplyTo::Internal(reply),
            pipeline,
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            query,
            info,
            received: Instant::now(),
            trace: None,
            cache_key: None,
        }
    }

    pub fn is_client(&self) -> bool {
        matches!(self.reply, ReplyTo::Client(_))
    }

    /// Hands the upstream's answer (or the proxy's own error) to the pipeline, which caches
    /// it, shares it with coalesced waiters, applies the mitigations and sends it.
    pub fn respond(self, answer: &mut [u8]) {
        let pipeline = self.pipeline.clone();
        pipeline.complete(self, answer);
    }

    /// Answers with an error RCODE of the proxy's own (SERVFAIL when upstreams failed).
    pub fn respond_error(self, rcode: Rcode) {
        let mut answer = wire::error_answer(&self.query, Some(self.info.question_end), rcode);
        self.respond(&mut answer);
    }

    /// Sends `answer` with the query's own ID: to a client truncated to its UDP payload
    /// size, then the trace goes to the tracker.
    pub fn send(self, answer: &mut [u8]) {
        match self.reply {
            ReplyTo::Internal(reply) => {
                wire::set_id(answer, self.info.id);
                let _ = reply.send(answer.to_vec());
            }
            ReplyTo::Client(endpoint) => {
                endpoint.send_answer(self.peer, &self.info, answer, self.trace)
            }
        }
    }

    /// A client query as it came off the socket.
    pub fn from_client(
        endpoint: &Arc<UdpEndpoint>,
        pipeline: &Arc<Pipeline>,
        packet: &[u8],
        peer: SocketAddr,
        info: QueryInfo,
        received: Instant,
    ) -> UdpRequest {
        UdpRequest {
            trace: endpoint.trace(packet, peer, &info, received),
            reply: ReplyTo::Client(endpoint.clone()),
            pipeline: pipeline.clone(),
            peer,
            query: packet.to_vec(),
            info,
            received,
            cache_key: None,
        }
    }
}

impl UdpEndpoint {
    /// A trace record for a query received here, when lookups are tracked.
    pub fn trace(
        &self,
        packet: &[u8],
        peer: SocketAddr,
        info: &QueryInfo,
        received: Instant,
    ) -> Option<Box<QueryTrace>> {
        QueryTrace::start(
            self.trace_sink.as_ref(),
            peer,
            Transport::Udp,
            packet,
            info,
            received,
        )
    }

    /// Sends `answer` to `peer` with its query's ID, truncated to its UDP payload size, and
    /// hands the query's trace to the tracker.
    pub fn send_answer(
        &self,
        peer: SocketAddr,
        info: &QueryInfo,
        answer: &mut [u8],
        trace: Option<Box<QueryTrace>>,
    ) {
        wire::set_id(answer, info.id);
        let sent = if answer.len() > usize::from(info.udp_payload) {
            self.metrics.truncated.inc();
            let truncated = wire::truncated_answer(answer, info.question_end);
            self.socket.try_send_to(&truncated, peer)
        } else {
            self.socket.try_send_to(answer, peer)
        };
        match sent {
            Ok(_) => self
                .metrics
                .answered(Transport::Udp, info.qtype, wire::rcode(answer)),
            Err(e) => {
                debug!(%peer, error = %e, "udp answer not sent");
                self.metrics.dropped("send_failed");
            }
        }
        if let (Some(mut trace), Some(sink)) = (trace, &self.trace_sink) {
            trace.answered = Instant::now();
            sink.send(*trace);
        }
    }
}

/// The client networks dnslens answers (`listener.allow`).
#[derive(Debug, Clone)]
pub struct Acl {
    allowed: Vec<ipnet::IpNet>,
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
        }
    }

    pub fn allows(&self, client: IpAddr) -> bool {
        // A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d.
        let client = client.to_canonical();
        self.allowed.iter().any(|net| net.contains(&client))
    }
}

/// Bound sockets, before any task runs: binding fails early and reports the real ports.
pub struct BoundListeners {
    udp: Vec<Arc<UdpEndpoint>>,
    tcp: Vec<TcpListener>,
    pub local_addrs: Vec<SocketAddr>,
}

/// Binds UDP (`workers` sockets with SO_REUSEPORT) and TCP on every address. Port 0 binds
/// one ephemeral port shared by UDP and TCP.
pub fn bind(
    addrs: &[SocketAddr],
    config: &ListenerConfig,
    metrics: Arc<ListenMetrics>,
    trace_sink: Option<TraceSink>,
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
            bound.udp.push(Arc::new(UdpEndpoint {
                socket: UdpSocket::from_std(socket.into())?,
                metrics: metrics.clone(),
                trace_sink: trace_sink.clone(),
            }));
        }
        bound.tcp.push(tcp);
        bound.local_addrs.push(addr);
    }
    Ok(bound)
}

/// UDP sockets and a TCP listener on one address. With port 0 the kernel picks the UDP
/// port, which TCP may already use (an outgoing connection's local port): then try again.
fn bind_one(
    requested: SocketAddr,
    workers: usize,
) -> std::io::Result<(SocketAddr, Vec<Socket>, TcpListener)> {
    let tries = if requested.port() == 0 { 16 } else { 1 };
    let mut last_error = None;
    for _ in 0..tries {
        let first = reuseport_udp(requested)?;
        let addr = first
            .local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("listen socket has no IP address"))?;
        match tcp_listener(addr) {
            Ok(tcp) => {
                let mut sockets = vec![first];
                for _ in 1..workers {
                    sockets.push(reuseport_udp(addr)?);
                }
                return Ok((addr, sockets, tcp));
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no port for UDP and TCP")))
}

fn reuseport_udp(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    // Room for bursts while a worker is busy; the kernel caps it at rmem_max.
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    Ok(socket)
}

fn tcp_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
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
        stop: CancellationToken,
        tasks: &mut JoinSet<()>,
    ) {
        let acl = Arc::new(Acl::new(&config.allow));
        for endpoint in self.udp {
            tasks.spawn(udp_worker(
                endpoint,
                pipeline.clone(),
                acl.clone(),
                stop.clone(),
            ));
        }
        let connections = Arc::new(Semaphore::new(config.tcp_max_connections));
        for listener in self.tcp {
            tasks.spawn(tcp_accept(
                listener,
                TcpSettings {
                    idle_timeout: config.tcp_idle_timeout,
                    max_inflight: config.tcp_max_inflight_per_connection,
                },
                connections.clone(),
                pipeline.clone(),
                acl.clone(),
                stop.clone(),
            ));
        }
    }
}

async fn udp_worker(
    endpoint: Arc<UdpEndpoint>,
    pipeline: Arc<Pipeline>,
    acl: Arc<Acl>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; UDP_RECV_BUFFER];
    loop {
        let (len, peer) = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            received = endpoint.socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors and the like surface here on some kernels; keep serving.
                    debug!(error = %e, "udp receive error");
                    continue;
                }
            },
        };
        let received = Instant::now();
        let packet = &buf[..len];
        match wire::parse_query(packet) {
            Ok(info) if !acl.allows(peer.ip()) => {
                endpoint.metrics.acl_refused.inc();
                let answer = wire::error_answer(packet, Some(info.question_end), Rcode::Refused);
                if endpoint.socket.try_send_to(&answer, peer).is_ok() {
                    endpoint
                        .metrics
                        .answered(Transport::Udp, info.qtype, Rcode::Refused as u8);
                }
            }
            Ok(info) => pipeline.handle_udp_packet(&endpoint, packet, peer, info, received),
            Err(e) => {
                endpoint.metrics.dropped(e.reason());
                if let Some(rcode) = e.answer_rcode() {
                    let answer = wire::error_answer(packet, None, rcode);
                    if endpoint.socket.try_send_to(&answer, peer).is_ok() {
                        endpoint.metrics.answered(Transport::Udp, 0, rcode as u8);
                    }
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
struct TcpSettings {
    idle_timeout: Duration,
    max_inflight: usize,
}

async fn tcp_accept(
    listener: TcpListener,
    settings: TcpSettings,
    connections: Arc<Semaphore>,
    pipeline: Arc<Pipeline>,
    acl: Arc<Acl>,
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
            pipeline.listen_metrics().dropped("tcp_connection_limit");
            drop(stream);
            continue;
        };
        let pipeline = pipeline.clone();
        let stop = stop.clone();
        let allowed = acl.allows(peer.ip());
        conns.spawn(async move {
            let _permit = permit;
            let result = tcp_connection(stream, peer, allowed, settings, pipeline, stop).await;
            if let Err(e) = result {
                debug!(%peer, error = %e, "tcp connection ended");
            }
        });
    }
    // Let open connections answer what they already read.
    while conns.join_next().await.is_some() {}
}

async fn tcp_connection(
    stream: TcpStream,
    peer: SocketAddr,
    allowed: bool,
    settings: TcpSettings,
    pipeline: Arc<Pipeline>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (answers_tx, mut answers_rx) = mpsc::channel::<Vec<u8>>(settings.max_inflight);
    let write_failed = Arc::new(AtomicBool::new(false));
    let writer_task = {
        let write_failed = write_failed.clone();
        tokio::spawn(async move {
            while let Some(answer) = answers_rx.recv().await {
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
    let metrics = pipeline.listen_metrics();
    loop {
        let mut len_prefix = [0u8; 2];
        let read = tokio::select! {
            _ = stop.cancelled() => break,
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
        if !allowed {
            metrics.acl_refused.inc();
            let answer = refused_tcp(&message, metrics);
            if answers_tx.send(answer).await.is_err() {
                break;
            }
            continue;
        }
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            break;
        };
        let pipeline = pipeline.clone();
        let answers = answers_tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(answer) = pipeline.answer_tcp(message, peer, received).await {
                let _ = answers.send(answer).await;
            }
        });
    }
    drop(answers_tx);
    // The writer ends once every spawned query has sent its answer (or failed).
    let _ = writer_task.await;
    Ok(())
}

/// REFUSED for a TCP client outside the access list (FORMERR if its query does not parse).
fn refused_tcp(message: &[u8], metrics: &ListenMetrics) -> Vec<u8> {
    let (question_end, qtype, rcode) = match wire::parse_query(message) {
        Ok(info) => (Some(info.question_end), info.qtype, Rcode::Refused),
        Err(_) => (None, 0, Rcode::FormErr),
    };
    metrics.answered(Transport::Tcp, qtype, rcode as u8);
    wire::error_answer(message, question_end, rcode)
}
