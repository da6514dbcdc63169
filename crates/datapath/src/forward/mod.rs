//! Upstream forwarding: picks an upstream, sends the client's query with a fresh random ID
//! from a pool of persistent UDP sockets, matches the answer, retries, and gives up with a
//! fast SERVFAIL.
//!
//! Files: `config.rs` (`forward:` and upstream addresses), `metrics.rs` (the families, shared
//! across reloads), `select.rs` (which upstream next, retry or not: pure, unit-tested),
//! `upstream.rs` (one upstream's health and handles), `tcp_pool.rs`, `zones.rs`; this file
//! is the forwarding itself.
//!
//! - **UDP pool** (`forward.udp_sockets`, default 4): unconnected sockets on random source
//!   ports, used round-robin, each replaced by a socket on a new random port after
//!   `forward.socket_lifetime` (the old one keeps receiving until its queries are done).
//!   Persistent sockets are already-confirmed conntrack flows, and round-robin puts the two
//!   queries of an A/AAAA pair on different sockets, so dnslens never triggers the conntrack
//!   insertion race on a DNAT'ed path (the 5-second timeouts of a lost A/AAAA answer).
//! - **Matching** (RFC 5452): an answer is accepted only if its ID is outstanding on that
//!   socket, it comes from the address the query went to, and its question equals the
//!   query's. Anything else is dropped and counted.
//! - **Retries**: a try that gets no answer in `upstream_timeout` is retried on the next
//!   upstream, `attempts` tries in all, then SERVFAIL. Which upstream, whether to retry and
//!   late-versus-unknown answers are pure functions in [`select`], unit-tested there. A UDP answer with TC set is fetched
//!   again over TCP. TCP clients are forwarded over TCP ([`tcp_pool`]: one reused, pipelined
//!   connection per upstream), and so is everything with `forward.force_tcp` (as node-cache's
//!   `force_tcp`: no UDP flow for a NAT to race on).
//! - **Local errors**: a send the kernel refuses (a full socket buffer, a firewall's EPERM)
//!   is dnslens's side, not the upstream's: counted as outcome `local_error`, the query tries
//!   again, and the upstream's health is unchanged.
//! - **Health**: `forward.failure_threshold` consecutive failures put an upstream aside for
//!   a back-off (`forward.backoff_min`, doubling up to `forward.backoff_max`); the first
//!   query after the back-off probes it. With every upstream aside, queries still go to the
//!   one due back first (as CoreDNS's `forward`): a dead cluster DNS costs its timeouts,
//!   and DNS is back with the first query after the upstream is.
//! - **Zones** ([`zones`], `forward_zones:`): a name under a configured zone goes to that
//!   zone's upstreams (the longest zone wins, optionally over TCP), everything else to the
//!   top-level `upstreams`. An address listed in several places is one upstream (one health,
//!   one TCP connection, one set of series). Retries stay within the zone's upstreams.
//! - **Bounds**: at most `forward.max_inflight` queries wait on upstreams, over UDP and TCP
//!   (TC re-fetches and `force_tcp` included); beyond that, SERVFAIL. TCP fetches run as
//!   tasks of the shared tracker, so shutdown waits for them.
//! - **Address families**: answers from an IPv4 upstream reach a dual-stack pool socket
//!   (opened when any upstream is IPv6) as `::ffff:a.b.c.d`; sources are compared in their
//!   canonical form.
//! - **Locks**: the pool sockets are swapped atomically (`arc-swap`); each socket's pending
//!   map is locked to insert an entry (before the send, never across it) and to take it when
//!   its answer arrives or it expires; upstream health is read from atomics. Expiry is a sweep every `upstream_timeout / 8` (5-100 ms) over outstanding
//!   entries only.
//!
//! Metrics:
//! - `dnslens_upstream_requests_total{upstream,transport,outcome}`: tries, outcome `answer`,
//!   `servfail`, `refused`, `timeout`, `truncated`, `error` (the upstream's failure: a broken
//!   or refused TCP connection), `local_error` (not sent: dnslens's side).
//! - `dnslens_upstream_duration_seconds{upstream,transport}`: time to an upstream's answer.
//! - `dnslens_upstream_healthy{upstream}`: 1 in service, 0 put aside.
//! - `dnslens_responses_dropped_total{upstream,reason}`: upstream responses discarded:
//!   `malformed`, `late` (the answer to a try that had timed out, from its upstream, within
//!   30 s), `unknown_id` (spoofed, or later still), `wrong_source` and `question_mismatch`
//!   (spoofing); `upstream` is the configured upstream the datagram came from, or `other`
//!   (any other source: never a free-form address as a label).
//! - `dnslens_forward_failures_total{reason}`: queries answered SERVFAIL by dnslens:
//!   `exhausted` (every try failed), `overload` (inflight cap or a full pending map).
//! - `dnslens_inflight_queries`: queries waiting on an upstream.
//! - `dnslens_forward_zone_queries_total{zone}`: queries routed to each zone's upstreams
//!   (`.`: the top-level ones); series exist while zones are configured.

mod config;
mod metrics;
pub mod select;
mod tcp_pool;
mod upstream;
pub mod zones;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::udp::{DatagramSocket, RecvBatch};
use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::dnstap::{Dnstap, MessageKind};
use crate::metrics::{ReasonCounters, Transport};
use crate::record::{Outcome, QueryTrace, UpstreamTry};
use crate::request::Request;
use dnslens_wire::{self as wire, Rcode};
use select::{AfterFailure, Tried};
use upstream::Upstream;
use zones::Pool;

pub use config::{ForwardConfig, UpstreamAddr, DNS_PORT};
pub use metrics::ForwardMetrics;
use metrics::{ResponseDrops, ZoneLabels};

/// Outstanding queries on one UDP socket: IDs are 16 bits, keep some free for fast picks.
const MAX_PENDING_PER_SOCKET: usize = 49_152;
/// Timed-out IDs remembered per socket, and for how long, to tell late answers apart.
const MAX_TIMED_OUT: usize = 4_096;
const LATE_WINDOW: Duration = Duration::from_secs(30);
const RESPONSE_DROP_REASONS: &[&str] = &[
    "malformed",
    "late",
    "unknown_id",
    "wrong_source",
    "question_mismatch",
];
const FAILURE_REASONS: &[&str] = &["exhausted", "overload"];

/// Settings the forwarder reads on every query.
#[derive(Debug, Clone)]
struct Settings {
    timeout: Duration,
    attempts: u32,
    max_inflight: usize,
    socket_lifetime: Duration,
}

/// A query waiting for its upstream answer.
struct Pending {
    request: Request,
    /// The zone pool it was routed to (retries stay in it).
    pool: usize,
    upstream: usize,
    sent_at: Instant,
    deadline: Instant,
    /// Tries made so far, this one included.
    tries: u32,
    tried: Tried,
}

/// One upstream-facing UDP socket and the queries outstanding on it.
struct PoolSocket {
    socket: DatagramSocket,
    pending: Mutex<HashMap<u16, Pending>>,
    /// IDs that timed out lately, with when and to which upstream: an answer that comes
    /// after its timeout is counted `late`, not `unknown_id` (bounded: [`MAX_TIMED_OUT`]).
    timed_out: Mutex<HashMap<u16, (Instant, usize)>>,
    created: Instant,
    /// Ends the receive task once the socket is retired and drained.
    retired: CancellationToken,
}

pub struct Forwarder {
    settings: Settings,
    /// Every distinct upstream address, of the default pool and of every zone.
    upstreams: Vec<Upstream>,
    /// Pool 0: the top-level upstreams; then one per `forward_zones` entry.
    pools: Vec<Pool>,
    /// `dnslens_forward_zone_queries_total`, one per pool (empty without zones).
    zone_queries: Vec<Counter>,
    /// Current sockets, used round-robin; replaced whole when a socket is rotated.
    slots: Vec<ArcSwap<PoolSocket>>,
    /// Replaced sockets still waiting for answers.
    retiring: Mutex<Vec<Arc<PoolSocket>>>,
    next_slot: AtomicUsize,
    next_upstream: AtomicUsize,
    inflight: Gauge,
    responses_dropped: ResponseDrops,
    failures: ReasonCounters,
    /// TCP fetches in flight (a task each), awaited at shutdown.
    tasks: TaskTracker,
    /// Queries to and answers from the upstreams, logged when dnstap wants them.
    dnstap: Option<Dnstap>,
}

/// What the forwarder is built from besides `forward:`.
pub struct ForwardParts {
    pub tasks: TaskTracker,
    pub dnstap: Option<Dnstap>,
}

impl Forwarder {
    /// Builds the forwarder and binds its UDP sockets; its series come from `metrics`.
    /// Call [`Forwarder::spawn`] from inside the runtime to start its tasks.
    pub fn build(
        config: &ForwardConfig,
        parts: ForwardParts,
        metrics: &ForwardMetrics,
    ) -> std::io::Result<Arc<Forwarder>> {
        // One upstream per distinct address; pools refer to them by index.
        let mut addrs: Vec<SocketAddr> = Vec::new();
        let mut members_of = |list: &[UpstreamAddr]| -> Vec<usize> {
            list.iter()
                .map(|a| {
                    let a = canonical(a.0);
                    addrs
                        .iter()
                        .position(|known| *known == a)
                        .unwrap_or_else(|| {
                            addrs.push(a);
                            addrs.len() - 1
                        })
                })
                .collect()
        };
        // `forward.force_tcp` holds for every pool; a zone can also ask for TCP alone.
        let mut pools = vec![Pool::new(
            ".",
            members_of(&config.upstreams),
            config.force_tcp,
        )];
        for zone in &config.zones {
            pools.push(Pool::new(
                &zone.zone,
                members_of(&zone.upstreams),
                zone.force_tcp || config.force_tcp,
            ));
        }
        let zone_queries = if pools.len() > 1 {
            pools
                .iter()
                .map(|p| {
                    metrics
                        .zone_queries
                        .get_or_create(&ZoneLabels {
                            zone: p.name.to_string(),
                        })
                        .clone()
                })
                .collect()
        } else {
            Vec::new()
        };
        let upstreams = addrs
            .iter()
            .map(|a| Upstream::new(*a, config, &metrics.families))
            .collect();
        let v6 = addrs.iter().any(|a| a.is_ipv6());
        let slots = (0..config.udp_sockets)
            .map(|_| Ok(ArcSwap::from_pointee(PoolSocket::bind(v6)?)))
            .collect::<std::io::Result<_>>()?;
        metrics
            .waiting_on_upstreams
            .set_longest(config.timeout * config.attempts);
        Ok(Arc::new(Forwarder {
            settings: Settings {
                timeout: config.timeout,
                attempts: config.attempts,
                max_inflight: config.max_inflight,
                socket_lifetime: config.socket_lifetime,
            },
            upstreams,
            pools,
            zone_queries,
            slots,
            retiring: Mutex::new(Vec::new()),
            next_slot: AtomicUsize::new(0),
            next_upstream: AtomicUsize::new(0),
            inflight: metrics.inflight_queries.clone(),
            responses_dropped: ResponseDrops::new(&metrics.responses_dropped, addrs),
            failures: ReasonCounters::new(&metrics.failures, FAILURE_REASONS),
            tasks: parts.tasks,
            dnstap: parts.dnstap,
        }))
    }

    #[inline]
    fn tap(&self, kind: MessageKind, transport: Transport, upstream: SocketAddr, message: &[u8]) {
        if let Some(dnstap) = &self.dnstap {
            dnstap.log(kind, transport, upstream, message);
        }
    }

    /// Starts the receive task of every socket and the sweeper. They run until `stop`.
    pub fn spawn(self: &Arc<Self>, stop: CancellationToken) {
        for slot in &self.slots {
            let socket = slot.load_full();
            tokio::spawn(self.clone().receive_udp(socket, stop.clone()));
        }
        tokio::spawn(self.clone().sweep(stop));
    }

    /// Each upstream and whether it is in service (or due for a probe) now.
    pub fn upstream_states(&self) -> Vec<(SocketAddr, bool)> {
        let now = Instant::now();
        self.upstreams
            .iter()
            .map(|u| (u.addr, u.available(now)))
            .collect()
    }

    /// The pool of the zone holding the query's name, counted and marked on its trace.
    fn route(&self, request: &mut Request) -> usize {
        if self.pools.len() == 1 {
            return 0;
        }
        let question = request
            .query
            .get(wire::HEADER_LEN..request.info.question_end)
            .unwrap_or(&[]);
        let pool = zones::route(&self.pools, question);
        self.zone_queries[pool].inc();
        if let Some(trace) = &mut request.trace {
            trace.zone = Some(self.pools[pool].name.clone());
        }
        pool
    }

    /// Forwards a query: over TCP for a TCP client (as CoreDNS's `forward` does) and for a
    /// pool with `force_tcp`, over the UDP pool otherwise (a truncated UDP answer is then
    /// fetched again over TCP). Never blocks: the answer is handed on by a task.
    pub fn submit(self: &Arc<Self>, mut request: Request) {
        let pool = self.route(&mut request);
        if request.transport() == Transport::Tcp || self.pools[pool].force_tcp {
            self.fetch_over_tcp(request, pool, None);
        } else {
            self.try_udp(request, pool, 0, Tried::default());
        }
    }

    fn try_udp(&self, mut request: Request, pool: usize, tries: u32, tried: Tried) {
        if self.inflight.get() >= self.settings.max_inflight as i64 {
            self.failures.inc("overload");
            request.respond_error(Rcode::SERVFAIL);
            return;
        }
        let Some(index) = self.pick_upstream(pool, tried) else {
            // No upstream configured at all (config validation prevents it).
            self.failures.inc("exhausted");
            request.respond_error(Rcode::SERVFAIL);
            return;
        };
        let upstream = &self.upstreams[index];
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let socket = self.slots[slot].load_full();
        // The entry goes in before the send, so the answer cannot arrive before it; the
        // lock is not held across the send.
        let (id, copy) = {
            let mut pending = lock(&socket.pending);
            if pending.len() >= MAX_PENDING_PER_SOCKET {
                drop(pending);
                self.failures.inc("overload");
                request.respond_error(Rcode::SERVFAIL);
                return;
            }
            let id = loop {
                let id = rand::random::<u16>();
                if !pending.contains_key(&id) {
                    break id;
                }
            };
            wire::set_id(&mut request.query, id);
            let copy = SendCopy::of(&request.query);
            let now = Instant::now();
            let entry = Pending {
                request,
                pool,
                upstream: index,
                sent_at: now,
                deadline: now + self.settings.timeout,
                tries: tries + 1,
                tried: tried.with(index),
            };
            pending.insert(id, entry);
            // Counted before the lock goes: the answer's decrement cannot come first.
            self.inflight.inc();
            (id, copy)
        };
        let sent = socket.socket.send_to(copy.bytes(), upstream.addr);
        if sent.is_ok() {
            self.tap(
                MessageKind::ForwarderQuery,
                Transport::Udp,
                upstream.addr,
                copy.bytes(),
            );
        }
        if let Err(e) = sent {
            let Some(mut entry) = lock(&socket.pending).remove(&id) else {
                return;
            };
            self.inflight.dec();
            debug!(upstream = %upstream.addr, error = %e, "udp send failed (local)");
            upstream.record(Transport::Udp, Outcome::LocalError, Duration::ZERO);
            let now = Instant::now();
            record_try(
                &mut entry.request.trace,
                upstream.addr,
                Transport::Udp,
                Outcome::LocalError,
                now,
                now,
            );
            self.retry_or_fail(entry.request, entry.pool, entry.tries, entry.tried);
        }
    }

    fn retry_or_fail(&self, request: Request, pool: usize, tries: u32, tried: Tried) {
        match select::after_failure(tries, self.settings.attempts) {
            AfterFailure::Retry => self.try_udp(request, pool, tries, tried),
            AfterFailure::Exhausted => {
                self.failures.inc("exhausted");
                request.respond_error(Rcode::SERVFAIL);
            }
        }
    }

    /// The next upstream of `pool` for a query that tried `tried` (see [`select::pick`]).
    fn pick_upstream(&self, pool: usize, tried: Tried) -> Option<usize> {
        let start = self.next_upstream.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        select::pick(&self.pools[pool].members, start, tried, |i| {
            self.upstreams[i].state(now)
        })
    }

    async fn receive_udp(self: Arc<Self>, socket: Arc<PoolSocket>, stop: CancellationToken) {
        let mut batch = RecvBatch::new(65_535);
        // One wait on each token for the task's life (see `listen::udp_worker`).
        let mut stopped = std::pin::pin!(stop.cancelled());
        let mut retired = std::pin::pin!(socket.retired.cancelled());
        loop {
            tokio::select! {
                biased;
                _ = &mut stopped => return,
                _ = &mut retired => return,
                received = socket.socket.recv_batch(&mut batch, false) => {
                    if let Err(e) = received {
                        debug!(error = %e, "upstream socket receive error");
                        continue;
                    }
                },
            };
            let RecvBatch { buffers, received } = &mut batch;
            for r in received.iter() {
                self.on_udp_answer(&socket, &mut buffers[r.slot][..r.len], r.peer);
            }
        }
    }

    /// `late` for the answer to a try that timed out lately, from the upstream it went to;
    /// else `unknown_id` (spoofed, or older than [`LATE_WINDOW`]).
    fn late_or_unknown(&self, socket: &PoolSocket, id: u16, from: SocketAddr) -> &'static str {
        let timed_out_to = lock(&socket.timed_out)
            .get(&id)
            .map(|(_, upstream)| self.upstreams[*upstream].addr);
        select::unmatched_reason(timed_out_to, from)
    }

    fn on_udp_answer(self: &Arc<Self>, socket: &PoolSocket, answer: &mut [u8], from: SocketAddr) {
        let from = canonical(from);
        let Ok(info) = wire::parse_response(answer) else {
            self.responses_dropped.inc(from, "malformed");
            return;
        };
        let entry = {
            let mut pending = lock(&socket.pending);
            let verdict = match pending.get(&info.id) {
                None => Err(self.late_or_unknown(socket, info.id, from)),
                Some(p) if self.upstreams[p.upstream].addr != from => Err("wrong_source"),
                Some(p)
                    if !wire::same_question(
                        &p.request.query,
                        p.request.info.question_end,
                        answer,
                        info.question_end,
                    ) =>
                {
                    Err("question_mismatch")
                }
                Some(_) => Ok(()),
            };
            match verdict {
                Ok(()) => pending.remove(&info.id),
                Err(reason) => {
                    self.responses_dropped.inc(from, reason);
                    return;
                }
            }
        };
        let Some(mut entry) = entry else { return };
        self.inflight.dec();
        let upstream = &self.upstreams[entry.upstream];
        self.tap(MessageKind::ForwarderResponse, Transport::Udp, from, answer);
        let now = Instant::now();
        let outcome = if info.truncated {
            Outcome::Truncated
        } else {
            Outcome::of_rcode(info.rcode)
        };
        upstream.record(Transport::Udp, outcome, now - entry.sent_at);
        record_try(
            &mut entry.request.trace,
            upstream.addr,
            Transport::Udp,
            outcome,
            entry.sent_at,
            now,
        );
        if info.truncated {
            self.fetch_over_tcp(entry.request, entry.pool, Some(entry.upstream));
            return;
        }
        entry.request.respond(answer);
    }

    /// Fetches an answer over TCP from the upstreams of `pool`, upstream `first` first (the
    /// one that truncated), in a tracked task; counted in `max_inflight` like a UDP try.
    fn fetch_over_tcp(self: &Arc<Self>, mut request: Request, pool: usize, first: Option<usize>) {
        if self.inflight.get() >= self.settings.max_inflight as i64 {
            self.failures.inc("overload");
            request.respond_error(Rcode::SERVFAIL);
            return;
        }
        self.inflight.inc();
        let forwarder = self.clone();
        self.tasks.spawn(async move {
            let question_end = request.info.question_end;
            let mut trace = request.trace.take();
            let fetched = forwarder
                .exchange_tcp(&mut request.query, question_end, pool, first, &mut trace)
                .await;
            forwarder.inflight.dec();
            request.trace = trace;
            match fetched {
                Some(mut answer) => request.respond(&mut answer),
                None => {
                    forwarder.failures.inc("exhausted");
                    request.respond_error(Rcode::SERVFAIL);
                }
            }
        });
    }

    /// Up to `attempts` TCP tries over the available upstreams, `first` first.
    async fn exchange_tcp(
        &self,
        query: &mut [u8],
        question_end: usize,
        pool: usize,
        first: Option<usize>,
        trace: &mut Option<Box<QueryTrace>>,
    ) -> Option<Vec<u8>> {
        let mut tried = Tried::default();
        for attempt in 0..self.settings.attempts {
            let index = match (attempt, first) {
                (0, Some(first)) => first,
                _ => self.pick_upstream(pool, tried)?,
            };
            tried = tried.with(index);
            let upstream = &self.upstreams[index];
            let started = Instant::now();
            let timeout = self.settings.timeout;
            self.tap(
                MessageKind::ForwarderQuery,
                Transport::Tcp,
                upstream.addr,
                query,
            );
            let result = upstream.tcp.exchange(query, question_end, timeout).await;
            if let Ok(answer) = &result {
                self.tap(
                    MessageKind::ForwarderResponse,
                    Transport::Tcp,
                    upstream.addr,
                    answer,
                );
            }
            if let Err(e) = &result {
                debug!(upstream = %upstream.addr, error = %e, "tcp try failed");
            }
            let outcome = match &result {
                Ok(answer) => Outcome::of_rcode(wire::rcode(answer)),
                Err(tcp_pool::TcpError::Timeout) => Outcome::Timeout,
                Err(_) => Outcome::Error,
            };
            upstream.record(Transport::Tcp, outcome, started.elapsed());
            record_try(
                trace,
                upstream.addr,
                Transport::Tcp,
                outcome,
                started,
                Instant::now(),
            );
            if let Ok(answer) = result {
                return Some(answer);
            }
        }
        None
    }

    /// Expires timed-out tries, rotates old sockets and drops drained retired ones.
    async fn sweep(self: Arc<Self>, stop: CancellationToken) {
        let tick =
            (self.settings.timeout / 8).clamp(Duration::from_millis(5), Duration::from_millis(100));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = interval.tick() => {}
            }
            let now = Instant::now();
            let mut sockets: Vec<Arc<PoolSocket>> =
                self.slots.iter().map(|s| s.load_full()).collect();
            sockets.extend(lock(&self.retiring).iter().cloned());
            for socket in &sockets {
                let expired: Vec<(u16, Pending)> = lock(&socket.pending)
                    .extract_if(|_, p| p.deadline <= now)
                    .collect();
                {
                    let mut timed_out = lock(&socket.timed_out);
                    timed_out.retain(|_, (at, _)| now.duration_since(*at) < LATE_WINDOW);
                    for (id, p) in &expired {
                        if timed_out.len() < MAX_TIMED_OUT {
                            timed_out.insert(*id, (now, p.upstream));
                        }
                    }
                }
                for (_, mut p) in expired {
                    self.inflight.dec();
                    let upstream = &self.upstreams[p.upstream];
                    upstream.record(Transport::Udp, Outcome::Timeout, now - p.sent_at);
                    let trace = &mut p.request.trace;
                    record_try(
                        trace,
                        upstream.addr,
                        Transport::Udp,
                        Outcome::Timeout,
                        p.sent_at,
                        now,
                    );
                    self.retry_or_fail(p.request, p.pool, p.tries, p.tried);
                }
            }
            self.rotate_sockets(now, &stop);
        }
    }

    fn rotate_sockets(self: &Arc<Self>, now: Instant, stop: &CancellationToken) {
        // Only the sweeper replaces sockets, so load-then-store does not race.
        for slot in &self.slots {
            let current = slot.load_full();
            if now.duration_since(current.created) < self.settings.socket_lifetime {
                continue;
            }
            let v6 = current.socket.local_addr().is_ok_and(|a| a.is_ipv6());
            match PoolSocket::bind(v6) {
                Ok(fresh) => {
                    let fresh = Arc::new(fresh);
                    tokio::spawn(self.clone().receive_udp(fresh.clone(), stop.clone()));
                    slot.store(fresh);
                    lock(&self.retiring).push(current);
                }
                Err(e) => {
                    debug!(error = %e, "could not open a fresh upstream socket; keeping the old one")
                }
            }
        }
        lock(&self.retiring).retain(|old| {
            let drained = lock(&old.pending).is_empty();
            if drained {
                old.retired.cancel();
            }
            !drained
        });
    }
}

impl PoolSocket {
    /// A UDP socket on a random port chosen by the kernel (its ephemeral range is
    /// randomised), ready for any upstream of the family.
    fn bind(v6: bool) -> std::io::Result<PoolSocket> {
        let addr: SocketAddr = if v6 { "[::]:0" } else { "0.0.0.0:0" }
            .parse()
            .map_err(|_| std::io::Error::other("bad wildcard address"))?;
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if v6 {
            socket.set_only_v6(false)?;
        }
        let _ = socket.set_recv_buffer_size(4 << 20);
        socket.bind(&addr.into())?;
        Ok(PoolSocket {
            socket: DatagramSocket::new(socket)?,
            pending: Mutex::new(HashMap::new()),
            timed_out: Mutex::new(HashMap::new()),
            created: Instant::now(),
            retired: CancellationToken::new(),
        })
    }
}

/// The bytes of a query being sent, outside the pending map: on the stack for the usual
/// query (a few dozen bytes), on the heap for a large one.
#[allow(clippy::large_enum_variant)] // lives on the stack for one send: boxing it would be
                                     // the allocation it exists to avoid
enum SendCopy {
    Small([u8; SendCopy::SMALL], usize),
    Large(Vec<u8>),
}

impl SendCopy {
    const SMALL: usize = 512;

    fn of(query: &[u8]) -> SendCopy {
        match query.len() {
            len if len <= Self::SMALL => {
                let mut buf = [0u8; Self::SMALL];
                buf[..len].copy_from_slice(query);
                SendCopy::Small(buf, len)
            }
            _ => SendCopy::Large(query.to_vec()),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            SendCopy::Small(buf, len) => &buf[..*len],
            SendCopy::Large(bytes) => bytes,
        }
    }
}

/// The form addresses are compared in: an IPv4 address seen through a dual-stack socket
/// (`::ffff:a.b.c.d`) as plain IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Adds one upstream try to a query's trace, when the query is traced.
fn record_try(
    trace: &mut Option<Box<QueryTrace>>,
    upstream: SocketAddr,
    transport: Transport,
    outcome: Outcome,
    start: Instant,
    end: Instant,
) {
    if let Some(trace) = trace {
        trace.tries.push(UpstreamTry {
            upstream,
            transport,
            outcome,
            start,
            end,
        });
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (the data here are
/// maps of independent entries; no invariant spans a panic).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
