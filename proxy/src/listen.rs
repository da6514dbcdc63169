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

use std::net::SocketAddr;
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
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::ListenerConfig;
use crate::forward::Forwarder;
use crate::lookup::{QueryTrace, TraceSink};
use crate::metrics::{
    CounterTable, QtypeLabel, RcodeLabel, ReasonCounters, ReasonLabels, Transport,
};
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
        ListenMetrics {
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

/// A UDP client query on its way through the proxy. Holds the query bytes (their ID is
/// rewritten for each upstream try) and the route back to the client.
pub struct UdpRequest {
    endpoint: Arc<UdpEndpoint>,
    pub peer: SocketAddr,
    pub query: Vec<u8>,
    pub info: QueryInfo,
    pub received: Instant,
    /// Plain-data record of this query for lookup correlation (`None` only without a tracker).
    pub trace: Option<Box<QueryTrace>>,
}

impl UdpRequest {
    /// Sends `answer` to the client with its own ID, truncated to its UDP payload size.
    pub fn respond(self, answer: &mut [u8]) {
        wire::set_id(answer, self.info.id);
        let metrics = &self.endpoint.metrics;
        let sent = if answer.len() > usize::from(self.info.udp_payload) {
            metrics.truncated.inc();
            let truncated = wire::truncated_answer(answer, self.info.question_end);
            self.endpoint.socket.try_send_to(&truncated, self.peer)
        } else {
            self.endpoint.socket.try_send_to(answer, self.peer)
        };
        match sent {
            Ok(_) => metrics.answered(Transport::Udp, self.info.qtype, wire::rcode(answer)),
            Err(e) => {
                debug!(peer = %self.peer, error = %e, "udp answer not sent");
                metrics.dropped("send_failed");
            }
        }
        if let (Some(mut trace), Some(sink)) = (self.trace, &self.endpoint.trace_sink) {
            trace.finish(answer);
            sink.send(*trace);
        }
    }

    /// Answers with an error RCODE of the proxy's own (SERVFAIL when upstreams failed).
    pub fn respond_error(self, rcode: Rcode) {
        let mut answer = wire::error_answer(&self.query, Some(self.info.question_end), rcode);
        self.respond(&mut answer);
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
        forwarder: Arc<Forwarder>,
        stop: CancellationToken,
        tasks: &mut JoinSet<()>,
    ) {
        for endpoint in self.udp {
            tasks.spawn(udp_worker(endpoint, forwarder.clone(), stop.clone()));
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
                forwarder.clone(),
                stop.clone(),
            ));
        }
    }
}

async fn udp_worker(
    endpoint: Arc<UdpEndpoint>,
    forwarder: Arc<Forwarder>,
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
            Ok(info) => forwarder.submit_udp(UdpRequest {
                trace: QueryTrace::start(
                    endpoint.trace_sink.as_ref(),
                    peer,
                    Transport::Udp,
                    packet,
                    &info,
                    received,
                ),
                endpoint: endpoint.clone(),
                peer,
                query: packet.to_vec(),
                info,
                received,
            }),
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
    forwarder: Arc<Forwarder>,
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
            forwarder.listen_metrics().dropped("tcp_connection_limit");
            drop(stream);
            continue;
        };
        let forwarder = forwarder.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            let _permit = permit;
            if let Err(e) = tcp_connection(stream, peer, settings, forwarder, stop).await {
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
    settings: TcpSettings,
    forwarder: Arc<Forwarder>,
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
    let metrics = forwarder.listen_metrics();
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
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            break;
        };
        let forwarder = forwarder.clone();
        let answers = answers_tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(answer) = forwarder.answer_tcp(message, peer, received).await {
                let _ = answers.send(answer).await;
            }
        });
    }
    drop(answers_tx);
    // The writer ends once every spawned query has sent its answer (or failed).
    let _ = writer_task.await;
    Ok(())
}
