//! A client query on its way through the proxy, below the listeners, the pipeline and the
//! forwarder: the query bytes, where its answer goes ([`ReplyTo`]), and who finishes it
//! ([`Complete`], implemented by the pipeline). `forward` hands answers to
//! [`Request::respond`] and never names the listener or the pipeline.
//!
//! Every answer to a client leaves through [`ReplyTo::send`], for UDP and TCP alike: the
//! client's own ID, question section (byte for byte: resolvers that randomise the case of
//! names drop anything else) and RD/CD bits are put back; a UDP answer longer than the
//! client's payload size is cut to header, question and OPT with TC set; the query is
//! counted and its trace handed to the tracker.
//!
//! Metrics (registered by `listen`, which owns the sockets; counted here):
//! - `dnslens_requests_total{transport,qtype,rcode}`: queries answered, by the RCODE sent.
//! - `dnslens_request_duration_seconds{transport,cache}`: from receipt to the answer's send,
//!   the latency clients see (`cache`: `hit` for answers from the cache, stale included,
//!   else `miss`); CoreDNS's `coredns_dns_request_duration_seconds` counterpart.
//! - `dnslens_udp_truncated_total`: UDP answers truncated to the client's payload size.
//! - `dnslens_requests_dropped_total{reason="send_failed"}`: answers the socket refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::udp::DatagramSocket;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tracing::debug;

use crate::cache::CacheKey;
use crate::dnstap::{Dnstap, MessageKind};
use crate::metrics::{CounterTable, QtypeLabel, RcodeLabel, Transport};
use crate::record::{QueryTrace, TraceSink};
use dnslens_wire::{self as wire, QueryInfo};

/// Finishes a request once the forwarder has its answer (the pipeline: cache, coalesced
/// waiters, mitigations, then [`Request::send`]).
pub trait Complete: Send + Sync {
    fn complete(self: Arc<Self>, request: Request, answer: &mut [u8]);
}

/// A query in flight. Its ID is rewritten for each upstream try; the client's is in `info`.
pub struct Request {
    pub query: Vec<u8>,
    pub info: QueryInfo,
    pub peer: SocketAddr,
    pub received: Instant,
    /// Plain-data record of this query for lookup correlation (`None` without a tracker,
    /// and for dnslens's own queries).
    pub trace: Option<Box<QueryTrace>>,
    /// Set on the query that leads a coalesced question: its answer is stored and shared.
    pub lead: Option<CacheKey>,
    reply: ReplyTo,
    done: Arc<dyn Complete>,
}

impl Request {
    pub fn new(
        query: Vec<u8>,
        info: QueryInfo,
        arrival: Arrival,
        trace: Option<Box<QueryTrace>>,
        done: Arc<dyn Complete>,
    ) -> Request {
        Request {
            query,
            info,
            peer: arrival.peer,
            received: arrival.received,
            trace,
            lead: None,
            reply: arrival.reply,
            done,
        }
    }

    /// How the client asked (dnslens's own queries count as UDP).
    pub fn transport(&self) -> Transport {
        self.reply.transport()
    }

    pub fn is_client(&self) -> bool {
        !matches!(self.reply, ReplyTo::Internal(_))
    }

    /// Hands the upstream's answer (or the proxy's own error) to whoever finishes it.
    pub fn respond(self, answer: &mut [u8]) {
        let done = self.done.clone();
        done.complete(self, answer);
    }

    /// Answers with an error RCODE of the proxy's own (SERVFAIL when upstreams failed).
    pub fn respond_error(self, rcode: u8) {
        let mut answer = wire::error_answer(&self.query, Some(self.info.question_end), rcode);
        self.respond(&mut answer);
    }

    /// Sends `answer` to the asker (see [`ReplyTo::send`]).
    pub fn send(self, answer: &mut [u8]) {
        self.reply
            .send(self.peer, &self.info, &self.query, answer, self.trace);
    }
}

/// Where and when a query arrived, and where its answer goes.
pub struct Arrival {
    pub peer: SocketAddr,
    pub received: Instant,
    pub reply: ReplyTo,
}

impl Arrival {
    /// A query dnslens asks on its own behalf; the answer arrives on `reply`.
    pub fn internal(reply: oneshot::Sender<Vec<u8>>) -> Arrival {
        Arrival {
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            received: Instant::now(),
            reply: ReplyTo::Internal(reply),
        }
    }
}

/// Where a query's answer goes.
pub enum ReplyTo {
    /// Back to a UDP client through the socket it came in on.
    Udp(Arc<UdpReply>),
    /// Onto a TCP client's connection.
    Tcp(TcpReply),
    /// To dnslens itself (prefetch, autopath's walk, the shield's twin check).
    Internal(oneshot::Sender<Vec<u8>>),
}

/// A listening UDP socket, as the answers see it.
pub struct UdpReply {
    pub socket: DatagramSocket,
    pub replies: Arc<Replies>,
}

/// A TCP client connection's writer: each answer travels with the permit that let its
/// query in, so the connection's in-flight bound holds until the answer is written.
pub struct TcpReply {
    pub answers: mpsc::UnboundedSender<(Vec<u8>, OwnedSemaphorePermit)>,
    pub permit: OwnedSemaphorePermit,
    pub replies: Arc<Replies>,
}

impl ReplyTo {
    pub fn transport(&self) -> Transport {
        match self {
            ReplyTo::Tcp(_) => Transport::Tcp,
            ReplyTo::Udp(_) | ReplyTo::Internal(_) => Transport::Udp,
        }
    }

    /// Sends `answer` to the asker of `query` with the asker's ID, question bytes and
    /// RD/CD bits, truncated to a UDP client's payload size; counts it and hands the
    /// query's trace to the tracker.
    pub fn send(
        self,
        peer: SocketAddr,
        info: &QueryInfo,
        query: &[u8],
        answer: &mut [u8],
        trace: Option<Box<QueryTrace>>,
    ) {
        wire::set_id(answer, info.id);
        match self {
            ReplyTo::Internal(reply) => {
                let _ = reply.send(answer.to_vec());
            }
            ReplyTo::Udp(endpoint) => {
                wire::echo_question(answer, query, info.question_end);
                // The trace goes to the tracker before the answer leaves: the client's next
                // query (the next step of its walk) cannot then reach the tracker first
                // through another worker, which read as a rewind and cut the walk in two.
                endpoint.replies.hand_over(trace);
                let replies = &endpoint.replies;
                let sent = if answer.len() > usize::from(info.udp_payload) {
                    replies.truncated.inc();
                    let truncated = wire::truncated_answer(answer);
                    replies.tap(
                        MessageKind::ClientResponse,
                        Transport::Udp,
                        peer,
                        &truncated,
                    );
                    endpoint.socket.send_to(&truncated, peer)
                } else {
                    replies.tap(MessageKind::ClientResponse, Transport::Udp, peer, answer);
                    endpoint.socket.send_to(answer, peer)
                };
                if let Err(e) = sent {
                    debug!(%peer, error = %e, "udp answer not sent");
                    endpoint.replies.send_failed.inc();
                } else {
                    endpoint
                        .replies
                        .answered(Transport::Udp, info.qtype, wire::rcode(answer));
                }
            }
            ReplyTo::Tcp(conn) => {
                wire::echo_question(answer, query, info.question_end);
                let rcode = wire::rcode(answer);
                conn.replies.hand_over(trace);
                conn.replies
                    .tap(MessageKind::ClientResponse, Transport::Tcp, peer, answer);
                if conn.answers.send((answer.to_vec(), conn.permit)).is_err() {
                    conn.replies.send_failed.inc();
                } else {
                    conn.replies.answered(Transport::Tcp, info.qtype, rcode);
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    transport: Transport,
    qtype: QtypeLabel,
    rcode: RcodeLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DurationLabels {
    transport: Transport,
    cache: &'static str,
}

/// Buckets of `dnslens_request_duration_seconds`: a local cache hit (tens of µs) to a
/// client's 5 s timeout.
const DURATION_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The `dnslens_request_duration_seconds` histograms, resolved once: [transport][hit].
pub struct RequestDurations([[Histogram; 2]; 2]);

impl RequestDurations {
    pub fn register(registry: &mut Registry) -> RequestDurations {
        let family = Family::<DurationLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(DURATION_BUCKETS)) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "request_duration",
            "Time from a query's receipt to its answer's send (the latency clients see), by transport and whether the cache answered",
            prometheus_client::registry::Unit::Seconds,
            family.clone(),
        );
        let get = |transport: Transport, cache: &'static str| {
            family
                .get_or_create(&DurationLabels { transport, cache })
                .clone()
        };
        RequestDurations([
            [get(Transport::Udp, "miss"), get(Transport::Udp, "hit")],
            [get(Transport::Tcp, "miss"), get(Transport::Tcp, "hit")],
        ])
    }

    fn observe(&self, trace: &QueryTrace) {
        let hit = trace.cache != crate::record::CacheUse::Miss;
        let transport = usize::from(trace.transport == Transport::Tcp);
        let seconds = trace
            .answered
            .saturating_duration_since(trace.received)
            .as_secs_f64();
        self.0[transport][usize::from(hit)].observe(seconds);
    }
}

/// What the answering side counts, and where traces go once answered.
pub struct Replies {
    requests: CounterTable<RequestLabels>,
    durations: RequestDurations,
    truncated: Counter,
    send_failed: Counter,
    trace_sink: Option<TraceSink>,
    dnstap: Option<Dnstap>,
}

impl Replies {
    pub fn new(
        requests: Family<RequestLabels, Counter>,
        durations: RequestDurations,
        truncated: Counter,
        send_failed: Counter,
        trace_sink: Option<TraceSink>,
        dnstap: Option<Dnstap>,
    ) -> Replies {
        Replies {
            requests: CounterTable::new(
                requests,
                Transport::ALL.len() * QtypeLabel::COUNT * RcodeLabel::COUNT,
            ),
            durations,
            truncated,
            send_failed,
            trace_sink,
            dnstap,
        }
    }

    /// Logs a client's message to dnstap, when it is on.
    #[inline]
    pub fn tap(&self, kind: MessageKind, transport: Transport, peer: SocketAddr, message: &[u8]) {
        if let Some(dnstap) = &self.dnstap {
            dnstap.log(kind, transport, peer, message);
        }
    }

    /// Hands an answered query's trace to the tracker, stamped with the moment its answer
    /// is sent (just before it leaves).
    fn hand_over(&self, trace: Option<Box<QueryTrace>>) {
        if let Some(mut trace) = trace {
            trace.answered = Instant::now();
            self.durations.observe(&trace);
            if let Some(sink) = &self.trace_sink {
                sink.send(*trace);
            }
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
}

#[cfg(test)]
mod tests;
