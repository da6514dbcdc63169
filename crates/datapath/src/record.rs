//! The shared vocabulary of the data path and its observers: plain data, no behaviour
//! beyond reading itself. Everything above the wire format depends on this module and it
//! depends on nothing of the crate's behaviour (only `wire` and `metrics` label types).
//!
//! - [`QueryTrace`] / [`UpstreamTry`] / [`CacheUse`] / [`Outcome`]: one client query as the
//!   hot path saw it, filled as it travels and handed to the [`TraceSink`].
//! - [`Attempt`] / [`LookupRecord`] / [`LookupOutcome`]: a finished lookup, as the tracker
//!   correlated it, with the anomaly [`Kind`]s the detectors found.
//! - [`Clock`]: turns the monotonic instants of records into wall-clock times.
//! - [`InFlight`]: what the forwarder has waiting on upstreams, as the tracker reads it.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

pub use dnslens_k8s::identity::{ClientIdentity, PodIdentity};

use crate::metrics::Transport;
use dnslens_wire::{self as wire, QueryInfo, Rcode};

/// How one try at an upstream ended: the `outcome` label of
/// `dnslens_upstream_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A response with RCODE NOERROR or NXDOMAIN (or anything not listed below).
    Answer,
    ServFail,
    Refused,
    /// No matching response within `upstream_timeout`.
    Timeout,
    /// A UDP response with TC set; the query is retried over TCP.
    Truncated,
    /// The upstream's failure: a refused or broken TCP connection.
    Error,
    /// Not sent: the kernel refused the send (a full socket buffer, a firewall's EPERM).
    /// dnslens's side, so the upstream's health is unchanged.
    LocalError,
}

crate::label_value_from_as_str!(Outcome);

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Answer,
        Outcome::ServFail,
        Outcome::Refused,
        Outcome::Timeout,
        Outcome::Truncated,
        Outcome::Error,
        Outcome::LocalError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Answer => "answer",
            Outcome::ServFail => "servfail",
            Outcome::Refused => "refused",
            Outcome::Timeout => "timeout",
            Outcome::Truncated => "truncated",
            Outcome::Error => "error",
            Outcome::LocalError => "local_error",
        }
    }

    /// The outcome of a response by its RCODE.
    pub fn of_rcode(rcode: u8) -> Outcome {
        match rcode {
            Rcode::SERVFAIL => Outcome::ServFail,
            Rcode::REFUSED => Outcome::Refused,
            _ => Outcome::Answer,
        }
    }

    /// Whether the upstream showed itself alive.
    pub fn is_success(self) -> bool {
        matches!(
            self,
            Outcome::Answer | Outcome::ServFail | Outcome::Refused | Outcome::Truncated
        )
    }
}

/// One try at an upstream, as the forwarder saw it.
#[derive(Debug, Clone)]
pub struct UpstreamTry {
    pub upstream: SocketAddr,
    pub transport: Transport,
    pub outcome: Outcome,
    pub start: Instant,
    pub end: Instant,
}

/// One client query from receipt to answer: plain data filled on the hot path.
#[derive(Debug, Clone)]
pub struct QueryTrace {
    pub client: SocketAddr,
    pub transport: Transport,
    /// The raw question section (name, type, class).
    pub question: Vec<u8>,
    pub qtype: u16,
    /// The client's message ID (a resolver's retransmission repeats it).
    pub id: u16,
    /// When the query reached the host: the kernel's arrival stamp over UDP (see `udp`),
    /// when it was read over TCP.
    pub received: Instant,
    pub answered: Instant,
    pub rcode: u8,
    pub answers: u16,
    /// An SOA in the answer's authority section (a well-formed negative answer).
    pub authority_soa: bool,
    pub tries: Vec<UpstreamTry>,
    /// Whether the answer came from the cache.
    pub cache: CacheUse,
    /// The musl shield sent NXDOMAIN in place of the upstream's empty NOERROR (the fields
    /// above keep what the upstream said).
    pub rewritten: bool,
    /// Autopath answered with a CNAME to this name.
    pub autopath: Option<String>,
    /// The `forward_zones` zone whose upstreams it went to (`.`: the top-level ones); set
    /// only when zones are configured.
    pub zone: Option<std::sync::Arc<str>>,
    /// The first addresses the answer carried (`dns.answers` on the trace), when
    /// `keep_addresses`.
    pub addresses: AnswerAddresses,
    pub keep_addresses: bool,
}

/// The first few addresses of an answer, kept inline (no allocation per query).
#[derive(Debug, Clone, Copy)]
pub struct AnswerAddresses {
    list: [IpAddr; AnswerAddresses::MAX],
    len: u8,
}

impl AnswerAddresses {
    /// Addresses kept per answer: enough to see what a client got, bounded on the trace.
    pub const MAX: usize = 4;

    pub fn as_slice(&self) -> &[IpAddr] {
        &self.list[..usize::from(self.len)]
    }
}

impl Default for AnswerAddresses {
    fn default() -> Self {
        AnswerAddresses {
            list: [IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED); AnswerAddresses::MAX],
            len: 0,
        }
    }
}

/// How the cache took part in answering a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheUse {
    /// Not answered from the cache (or no cache).
    #[default]
    Miss,
    Hit,
    /// An expired entry, served because upstreams failed (RFC 8767).
    Stale,
}

impl QueryTrace {
    pub fn new(
        client: SocketAddr,
        transport: Transport,
        question: &[u8],
        qtype: u16,
        received: Instant,
    ) -> Self {
        QueryTrace {
            client,
            transport,
            question: question.to_vec(),
            qtype,
            id: 0,
            received,
            answered: received,
            rcode: 0,
            answers: 0,
            authority_soa: false,
            tries: Vec::new(),
            cache: CacheUse::Miss,
            rewritten: false,
            autopath: None,
            zone: None,
            addresses: AnswerAddresses::default(),
            keep_addresses: true,
        }
    }

    /// A record for `query` (as parsed into `info`), when there is a tracker to send it to.
    pub fn start(
        sink: Option<&TraceSink>,
        client: SocketAddr,
        transport: Transport,
        query: &[u8],
        info: &QueryInfo,
        received: Instant,
    ) -> Option<Box<QueryTrace>> {
        let sink = sink?;
        let question = query.get(wire::HEADER_LEN..info.question_end)?;
        let mut trace = QueryTrace::new(client, transport, question, info.qtype, received);
        trace.id = info.id;
        trace.keep_addresses = sink.addresses;
        Some(Box::new(trace))
    }

    /// Records what an answer says (RCODE, records, SOA, the first addresses), as the
    /// upstream or cache gave it.
    pub fn record_answer(&mut self, answer: &[u8]) {
        self.rcode = wire::rcode(answer);
        self.answers = wire::answer_count(answer);
        // Only empty NOERROR answers need their authority section read (empty-NOERROR kinds);
        // NXDOMAIN, the bulk of search noise, never does.
        self.authority_soa =
            self.rcode == Rcode::NOERROR && self.answers == 0 && wire::authority_has_soa(answer);
        if self.keep_addresses && self.answers > 0 && wire::address_twin(self.qtype).is_some() {
            let len = wire::answer_addresses(answer, &mut self.addresses.list);
            self.addresses.len = len as u8;
        }
    }

    /// The query name, lower case, without the trailing dot ("." for the root).
    pub fn name(&self) -> Option<String> {
        wire::question_name(&self.question)
    }

    /// NOERROR with at least one answer record.
    pub fn has_data(&self) -> bool {
        self.rcode == Rcode::NOERROR && self.answers > 0
    }
}

/// Queries waiting on upstreams (the forwarder's `dnslens_inflight_queries`) and the
/// longest one can wait (`attempts` × `upstream_timeout`, set by each forwarder built).
/// The tracker reads it so a walk is not cut in two while one of its queries waits on a slow
/// upstream: such a query is only reported once answered, maybe later than `lookup.window`.
#[derive(Clone, Debug, Default)]
pub struct InFlight {
    queries: Gauge,
    longest_nanos: Arc<AtomicU64>,
}

impl InFlight {
    pub fn new(queries: Gauge) -> InFlight {
        InFlight {
            queries,
            longest_nanos: Arc::default(),
        }
    }

    /// The longest a query may wait on upstreams, from now on.
    pub fn set_longest(&self, wait: Duration) {
        let nanos = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
        self.longest_nanos.store(nanos, Ordering::Relaxed);
    }

    /// How much longer than its window a lookup without its final answer stays open, as
    /// of now: the longest wait while any query waits on an upstream, else none.
    pub fn grace(&self) -> Duration {
        if self.queries.get() > 0 {
            Duration::from_nanos(self.longest_nanos.load(Ordering::Relaxed))
        } else {
            Duration::ZERO
        }
    }
}

/// Where the hot path hands finished queries to the tracker: bounded buffers the tracker
/// drains on its tick, one per thread that sends (up to [`SINK_SHARDS`]), so two DNS
/// workers never wait on one lock. Measured: a channel send per query woke the tracker
/// for every query and cost about 30% more CPU per query; one uncontended lock and a push
/// cost ~1-2%.
#[derive(Clone)]
pub struct TraceSink {
    shards: Arc<[Mutex<Vec<QueryTrace>>]>,
    capacity_per_shard: usize,
    dropped: Counter,
    /// Whether records keep their answers' addresses (only spans show them).
    addresses: bool,
}

/// Buffers of a [`TraceSink`]; threads beyond this many share them.
pub const SINK_SHARDS: usize = 16;

thread_local! {
    /// The shard this thread sends to, assigned on its first send.
    static SHARD: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}
static NEXT_SHARD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl TraceSink {
    /// A sink holding at most `capacity` records in all; records beyond it are counted on
    /// `dropped`.
    pub fn new(capacity: usize, dropped: Counter) -> TraceSink {
        TraceSink {
            shards: (0..SINK_SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
            capacity_per_shard: capacity.div_ceil(SINK_SHARDS).max(1),
            dropped,
            addresses: false,
        }
    }

    /// Records sent here keep the first addresses of their answers (`dns.answers` on the
    /// trace): on when traces are exported, else the parse is saved (~300 instructions per
    /// answered A/AAAA query).
    pub fn keeping_addresses(mut self, keep: bool) -> TraceSink {
        self.addresses = keep;
        self
    }

    /// Never blocks on another sender: a full buffer drops the record and counts it.
    pub fn send(&self, trace: QueryTrace) {
        let shard = SHARD.with(|s| {
            s.get().unwrap_or_else(|| {
                let next = NEXT_SHARD.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                s.set(Some(next));
                next
            })
        }) % self.shards.len();
        let mut buffer = lock(&self.shards[shard]);
        if buffer.len() >= self.capacity_per_shard {
            drop(buffer);
            self.dropped.inc();
        } else {
            buffer.push(trace);
        }
    }

    /// Appends everything buffered to `out`, swapping each shard with `spare` (which must
    /// be empty) so that the allocations go back to the hot path: no new buffer per tick.
    pub fn drain_into(&self, out: &mut Vec<QueryTrace>, spare: &mut Vec<QueryTrace>) {
        for shard in self.shards.iter() {
            std::mem::swap(&mut *lock(shard), spare);
            out.append(spare);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a lookup ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupOutcome {
    Answered,
    NxDomain,
    NoData,
    ServFail,
    Timeout,
}

impl LookupOutcome {
    /// Whether the lookup failed outright (SERVFAIL or timeout): worth keeping whatever
    /// its anomalies. NXDOMAIN and NODATA are answers.
    pub fn is_failure(self) -> bool {
        matches!(self, LookupOutcome::ServFail | LookupOutcome::Timeout)
    }

    /// In declaration order: counters are indexed by `outcome as usize`.
    pub const ALL: [LookupOutcome; 5] = [
        LookupOutcome::Answered,
        LookupOutcome::NxDomain,
        LookupOutcome::NoData,
        LookupOutcome::ServFail,
        LookupOutcome::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LookupOutcome::Answered => "answered",
            LookupOutcome::NxDomain => "nxdomain",
            LookupOutcome::NoData => "nodata",
            LookupOutcome::ServFail => "servfail",
            LookupOutcome::Timeout => "timeout",
        }
    }
}

/// One query of a lookup, with its reading in the search list.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub qname: String,
    /// Position and text of the search suffix; `None` for the absolute name.
    pub suffix: Option<(usize, String)>,
    /// The client sent this question again with the same message ID: a retry of an earlier
    /// attempt of the lookup, not a step of its own.
    pub retransmission: bool,
    pub query: QueryTrace,
}

impl Attempt {
    /// Its place in the search walk: the suffix index, `None` for the absolute name.
    pub fn position(&self) -> Option<usize> {
        self.suffix.as_ref().map(|(i, _)| *i)
    }
}

/// A finished lookup: what observers receive.
#[derive(Debug, Clone)]
pub struct LookupRecord {
    pub client: IpAddr,
    pub base: String,
    /// In the order the queries arrived.
    pub attempts: Vec<Attempt>,
    pub outcome: LookupOutcome,
    pub start: Instant,
    pub end: Instant,
    /// Ended by eviction rather than by its own end.
    pub evicted: bool,
    /// The id of this lookup's trace, whether or not it is exported (exemplars use it too).
    pub trace_id: u128,
    /// The anomaly kinds the detectors found, including those only memory across lookups
    /// reveals (a retry, a late A/AAAA twin); empty until the detectors have annotated it
    /// (they always run before any other observer).
    pub anomalies: Vec<Kind>,
    /// The longest a client waited before asking again (a retry, or the late twin of a
    /// parallel pair): its resolver timeout as dnslens sees it. Set with `anomalies`.
    pub waited: Option<std::time::Duration>,
    /// Which pod asked (node-local with `pod_identity`): set by the tracker when the lookup
    /// is reported, from the pods of this node as last seen through the API server.
    pub client_identity: Option<ClientIdentity>,
}

impl LookupRecord {
    /// Questions the lookup asked: its attempts less the client's retransmissions.
    pub fn questions(&self) -> usize {
        self.attempts.iter().filter(|a| !a.retransmission).count()
    }

    /// Only retransmissions of questions of a lookup that had already ended (its answer was
    /// lost on the way back, say): the tail of that lookup, not a lookup of its own.
    pub fn is_tail(&self) -> bool {
        self.questions() == 0
    }

    /// When `attempt` arrived, counted from the lookup's first query.
    pub fn offset(&self, attempt: &Attempt) -> std::time::Duration {
        attempt.query.received.saturating_duration_since(self.start)
    }

    /// The first attempt that returned data.
    pub fn answered_by(&self) -> Option<&Attempt> {
        self.attempts.iter().find(|a| a.query.has_data())
    }
}

/// What can be abnormal about a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Empty NOERROR for a search expansion: musl stops here and the lookup fails.
    EmptyNoerrorSearch,
    /// Empty NOERROR with no SOA: the upstream answers "nothing" instead of NXDOMAIN/NODATA.
    EmptyNoerrorNoSoa,
    /// A query of a parallel A/AAAA pair asked again while its twin was answered.
    ParallelRace,
    /// The client asked the same question again.
    ClientRetry,
    /// An upstream try timed out.
    UpstreamTimeout,
    /// An upstream answered SERVFAIL or REFUSED.
    UpstreamError,
}

impl Kind {
    /// What a kind means and what usually causes it: one line for operators.
    pub fn explain(self) -> &'static str {
        match self {
            Kind::EmptyNoerrorSearch => {
                "empty NOERROR on a search expansion: musl/Alpine clients stop here and fail the lookup; the upstream should say NXDOMAIN"
            }
            Kind::EmptyNoerrorNoSoa => {
                "NOERROR with no records and no SOA: the upstream answers 'nothing' instead of NXDOMAIN/NODATA (a filter or a broken zone)"
            }
            Kind::ParallelRace => {
                "one query of an A/AAAA pair sent together was lost and re-sent after a timeout: the conntrack race (5 s stalls)"
            }
            Kind::ClientRetry => {
                "the client asked the same question again: it timed out waiting for an answer"
            }
            Kind::UpstreamTimeout => "an upstream did not answer in time; dnslens retried another",
            Kind::UpstreamError => "an upstream answered SERVFAIL or REFUSED",
        }
    }

    pub const ALL: [Kind; 6] = [
        Kind::EmptyNoerrorSearch,
        Kind::EmptyNoerrorNoSoa,
        Kind::ParallelRace,
        Kind::ClientRetry,
        Kind::UpstreamTimeout,
        Kind::UpstreamError,
    ];

    /// The lookup span's attribute that marks this kind (`true`): one attribute per kind, so
    /// a tracing backend that matches tags by their exact text (Jaeger) finds a kind with
    /// one tag, whatever other kinds the lookup has.
    pub fn span_attribute(self) -> &'static str {
        match self {
            Kind::EmptyNoerrorSearch => "dnslens.anomaly.empty_noerror_search",
            Kind::EmptyNoerrorNoSoa => "dnslens.anomaly.empty_noerror_no_soa",
            Kind::ParallelRace => "dnslens.anomaly.parallel_race",
            Kind::ClientRetry => "dnslens.anomaly.client_retry",
            Kind::UpstreamTimeout => "dnslens.anomaly.upstream_timeout",
            Kind::UpstreamError => "dnslens.anomaly.upstream_error",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::EmptyNoerrorSearch => "empty_noerror_search",
            Kind::EmptyNoerrorNoSoa => "empty_noerror_no_soa",
            Kind::ParallelRace => "parallel_race",
            Kind::ClientRetry => "client_retry",
            Kind::UpstreamTimeout => "upstream_timeout",
            Kind::UpstreamError => "upstream_error",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown kind '{s}' (known: {})", known.join(", "))
            })
    }
}

/// Turns instants into wall-clock times, anchored once.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    instant: Instant,
    system: SystemTime,
}

impl Clock {
    pub fn now() -> Clock {
        Clock {
            instant: Instant::now(),
            system: SystemTime::now(),
        }
    }

    pub fn at(&self, t: Instant) -> SystemTime {
        match t.checked_duration_since(self.instant) {
            Some(after) => self.system + after,
            None => self.system - self.instant.duration_since(t),
        }
    }
}

#[cfg(test)]
mod tests;
