//! Client-facing listeners: UDP and TCP on every `listen` address.
//!
//! UDP is the hot path and is owned here rather than by hickory-server. Measured on the
//! 2-core development machine (dnsperf, Knot upstream): hickory-server 0.26's request path
//! tops out near 30-38k QPS (a task plus a full decode/re-encode per datagram), while a raw
//! tokio path reached 65-79k. So each listen address gets `listener.udp_workers` sockets
//! bound with SO_REUSEPORT (the kernel spreads datagrams across them), each read by one task
//! that parses only header and question ([`dnslens_wire`]) and hands the bytes to the
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
//! Files: `udp.rs` (the workers), `tcp.rs` (accept, connections), `access.rs` (who is
//! answered: the access list and the rate limit within it, unit-tested), `bind.rs` (the
//! sockets: SO_REUSEPORT, dual stack, port 0).
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

mod access;
mod bind;
mod tcp;
mod udp;

pub use access::{AccessList, ClientPolicy};
pub use bind::{exclusive_port, tcp_listener};
use bind::{family_available, reuseport_udp};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use socket2::Socket;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::metrics::{ReasonCounters, ReasonLabels};
use crate::pipeline::Pipeline;
use crate::ratelimit::{RateLimitConfig, RateLimitMetrics, RateLimiter};
use crate::record::TraceSink;
use crate::request::{Replies, ReplyTo, RequestDurations, RequestLabels, UdpReply};
use crate::udp::DatagramSocket;
use dnslens_wire::{self as wire, QueryInfo, Rcode};
use dnslens_yaml::invalid::{check, Invalid};
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
        let policy = Arc::new(ClientPolicy {
            access: AccessList::new(&config.allow),
            rate_limit: RateLimiter::build(&config.rate_limit, &metrics.rate_limit),
        });
        for endpoint in self.udp {
            tasks.spawn(udp::udp_worker(
                endpoint,
                pipeline.clone(),
                metrics.clone(),
                policy.clone(),
                stop.clone(),
            ));
        }
        let connections = Arc::new(Semaphore::new(config.tcp_max_connections));
        let settings = tcp::TcpSettings {
            idle_timeout: config.tcp_idle_timeout,
            max_inflight: config.tcp_max_inflight_per_connection,
        };
        for listener in self.tcp {
            tasks.spawn(tcp::tcp_accept(
                listener,
                settings,
                connections.clone(),
                tcp::Served {
                    pipeline: pipeline.clone(),
                    metrics: metrics.clone(),
                    policy: policy.clone(),
                },
                stop.clone(),
            ));
        }
    }
}

/// Answers REFUSED (header, question, OPT): outside the access list, or over the rate.
pub(super) fn refuse(packet: &[u8], info: &QueryInfo, peer: SocketAddr, reply: ReplyTo) {
    let mut answer = wire::error_answer(packet, Some(info.question_end), Rcode::REFUSED);
    reply.send(peer, info, packet, &mut answer, None);
}

/// Answers a query from outside the access list with REFUSED, and one that does not parse
/// with FORMERR or NOTIMP (or nothing, when it is not even a query).
pub(super) fn refuse_or_reject(
    packet: &[u8],
    parsed: Result<QueryInfo, wire::WireError>,
    peer: SocketAddr,
    reply: ReplyTo,
    metrics: &ListenMetrics,
) {
    let (info, rcode) = match parsed {
        Ok(info) => {
            metrics.acl_refused.inc();
            (info, Rcode::REFUSED)
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
