//! Lookups: the queries one `getaddrinfo` call sends (every search suffix, A and AAAA, then
//! the absolute name), correlated into one record.
//!
//! The hot path records each answered query as plain data ([`QueryTrace`]: times, rcode,
//! upstream tries) and pushes it into a bounded buffer (`lookup.queue`) that the tracker
//! drains on its tick; a full buffer drops the record and counts it. No span objects and no
//! name parsing on the hot path. The tracker thread (SCHED_BATCH, stepping aside after every
//! 100 µs of work: see `background`) owns all lookup state:
//!
//! - **Correlation**: the query name is read through the [`SearchModel`]; a query joins the
//!   lookup already open for the same client address and base name (A and AAAA, any
//!   socket), or opens one. Client ports are not part of the key: glibc opens a new socket
//!   for every search step, Go and dnspython one for every query. The batch drained on each
//!   tick is put in arrival order first (the sink is sharded per thread).
//! - **Where a lookup ends** (the rule every verdict rests on). A lookup has its *final
//!   answer* when a query returned data, or the absolute name was answered (NOERROR or
//!   NXDOMAIN); it is *finished* once the A/AAAA twin of that question was answered too
//!   (a question without a twin finishes at once). A query then joins only if it is a
//!   **retransmission** — the same message ID and question as one the lookup holds, from
//!   the same client address (socket reopened or not: glibc's `single-request-reopen`
//!   resends on a new one) — and is counted as a retry, not a new attempt. Any other query
//!   opens a new lookup at once (the open one is closed and reported), and so does, before
//!   the end, a query that **rewinds** the walk (a position of the search list visited
//!   before, other than the current one: the next `getaddrinfo` starting over) or **asks a
//!   question again** under another message ID (a new call by a resolver that asks one
//!   question per step). Evidence per resolver, from `tests/integration/resolvers.rs`:
//!   glibc sends A and AAAA together from one socket, a new socket per search step; musl
//!   the same (one `res_msend` socket per step); Go both at once from two sockets (a new
//!   socket per query); dnspython one question at a time, a new socket per query, one type
//!   per call. Back to back, each next call starts at its first position again, or repeats
//!   a question under a new ID: one lookup each. What this cannot tell apart: Go re-asks
//!   after a timeout with a new ID from a new socket, exactly as a new call would (a second
//!   lookup). Re-asks that come after their lookup was reported (its answers are traced
//!   when answered, so a slow answer can come after a quick final one) form a record of
//!   their own that the detectors recognise as that lookup's tail.
//! - **Close**: a lookup with its final answer is reported after `linger` (250 ms) of quiet
//!   (a missing twin's grace, and retransmissions of a lost answer); any lookup `lookup.window`
//!   after its last query. While the forwarder has queries in flight ([`InFlight`]), both
//!   the window and the missing twin's linger last the longest upstream wait longer still: a
//!   query is only seen once answered, so the next step of a walk waiting on dnslens's retry
//!   of a lost upstream try (2 s or more), or a twin whose upstream answers slowly, must not
//!   cut the lookup in two. Each tick reads the time and the in-flight count before draining, so
//!   every query answered before that time is in the batch, however long the batch takes.
//! - **Bounds**: at most `lookup.max_entries` open lookups; the oldest is evicted (counted) and
//!   still reported. A lookup holds at most 32 queries; a full one is closed and reported.
//! - **Cost of a tick**: closing times are kept in order (`deadlines`), so a tick pops the
//!   lookups that are due rather than scanning every open one (measured: 1.7–1.8 µs per walk
//!   and tick with 1,000 or 100,000 other lookups open, against 17 µs and 16 ms for the scan).
//!
//! Finished lookups go to [`LookupObserver`]s as a [`LookupRecord`] (telemetry export, the
//! demo's console trees, the anomaly detectors); observers never reach back.
//!
//! Metrics: `dnslens_lookup_records_dropped_total` (queue full), `dnslens_lookups_evicted_total`,
//! `dnslens_lookups_open`.

pub mod console;
mod deadlines;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::background::Pacer;
use deadlines::{Deadlines, Due};
use dnslens_datapath::record::{
    Attempt, InFlight, LookupOutcome, LookupRecord, Outcome, QueryTrace, TraceSink,
};
use dnslens_datapath::search::{Candidate, SearchModel};
use dnslens_k8s::identity::Identities;
use dnslens_wire::{self as wire, Rcode};
use dnslens_yaml::invalid::{check, Invalid};
use serde::Deserialize;

/// Correlation of queries into lookups (see `lookup`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LookupConfig {
    /// A lookup without its final answer ends this long after its last query (plus the
    /// longest upstream wait while queries wait on upstreams).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Open lookups kept at once; the oldest is evicted beyond it (counted).
    pub max_entries: usize,
    /// Finished queries waiting for the tracker; beyond it they are dropped (counted).
    pub queue: usize,
}

impl Default for LookupConfig {
    fn default() -> Self {
        LookupConfig {
            window: Duration::from_secs(2),
            max_entries: 10_000,
            queue: 16_384,
        }
    }
}

impl LookupConfig {
    /// Checks the `lookup:` section on its own.
    pub fn validate(&self) -> Result<(), Invalid> {
        check(
            self.max_entries == 0 || self.queue == 0,
            "lookup",
            "max_entries and queue must be above zero",
        )
    }
}

/// How often the tracker drains the hot path's buffer and closes ended lookups.
const TICK: Duration = Duration::from_millis(20);
/// Work the tracker does before it steps aside for the DNS workers (see `background`).
const WORK_BUDGET: Duration = Duration::from_micros(100);
const PAUSE: Duration = Duration::from_micros(20);
/// A batch still being worked on after half a tick means the tracker is falling behind:
/// then it stops stepping aside (a worker that always wants the core is saturated anyway).
const BEHIND_AFTER: Duration = Duration::from_millis(10);
/// Quiet time after a lookup got its final answer before it is closed: the grace of a
/// missing twin, and of a retransmission of an answer lost on its way back. As long as the
/// late-twin threshold of the race detector (`anomaly`'s 250 ms): a twin sooner than that is
/// part of the lookup, not a race — at 100 ms a Go resolver's second socket, descheduled on
/// a loaded machine, split one lookup into two.
const LINGER: Duration = Duration::from_millis(250);
/// Queries one lookup may hold. A real `getaddrinfo` sends at most about a dozen (suffixes
/// times A/AAAA, plus retries); a client that keeps asking the same name without pause
/// (a load generator, a hot loop) would otherwise grow one lookup forever. A full lookup is
/// closed and reported, and the next query opens a new one.
const MAX_ATTEMPTS: usize = 32;

/// Empties `batch` in arrival order. Sorting the traces themselves moved whole records
/// (~230 bytes) n·log n times (7% of the process at load): the keys are sorted instead and
/// each record moves twice. `order` and `slots` are reused buffers.
fn in_arrival_order<'a>(
    batch: &mut Vec<QueryTrace>,
    order: &'a mut Vec<(Instant, usize)>,
    slots: &'a mut Vec<Option<QueryTrace>>,
) -> impl Iterator<Item = QueryTrace> + 'a {
    order.clear();
    order.extend(batch.iter().enumerate().map(|(i, t)| (t.received, i)));
    order.sort_unstable();
    slots.clear();
    slots.extend(batch.drain(..).map(Some));
    order.iter().filter_map(|(_, i)| slots[*i].take())
}

/// When `lookup` closes (see `deadlines`): quiet for the linger after its final answer
/// (plus the grace while its twin is missing), or for the window without one (plus the
/// grace).
fn due_of(lookup: &OpenLookup, window: Duration) -> Due {
    let (length, plus_grace) = match (&lookup.final_answer, lookup.finished) {
        (Some(_), true) => (LINGER.min(window), false),
        // The twin may be waiting on an upstream: it is only seen once answered.
        (Some(_), false) => (LINGER.min(window), true),
        (None, _) => (window, true),
    };
    Due {
        at: lookup.last_activity + length,
        plus_grace,
    }
}

/// The record of a lookup that has ended.
fn close(open: OpenLookup, evicted: bool) -> LookupRecord {
    let OpenLookup {
        client,
        base,
        attempts,
        ..
    } = open;
    let start = attempts
        .iter()
        .map(|a| a.query.received)
        .min()
        .unwrap_or_else(Instant::now);
    let end = attempts
        .iter()
        .map(|a| a.query.answered)
        .max()
        .unwrap_or(start);
    let outcome = if attempts.iter().any(|a| a.query.has_data()) {
        LookupOutcome::Answered
    } else {
        match attempts.iter().max_by_key(|a| a.query.received) {
            Some(last) => match last.query.rcode {
                Rcode::NOERROR => LookupOutcome::NoData,
                Rcode::NXDOMAIN => LookupOutcome::NxDomain,
                _ if last
                    .query
                    .tries
                    .iter()
                    .any(|t| t.outcome == Outcome::Timeout) =>
                {
                    LookupOutcome::Timeout
                }
                _ => LookupOutcome::ServFail,
            },
            None => LookupOutcome::ServFail,
        }
    };
    LookupRecord {
        client,
        base: base.to_string(),
        attempts,
        outcome,
        start,
        end,
        evicted,
        trace_id: rand::random(),
        anomalies: Vec::new(),
        waited: None,
        client_identity: None,
    }
}

/// Receives every finished lookup, in the tracker task. Must not block.
pub trait LookupObserver: Send {
    /// Called for every observer before any `observe`: the one place a finding may be
    /// written onto the record (the anomaly detectors set `anomalies`), so that every
    /// observer — the trace exporter among them — sees it.
    fn annotate(&mut self, _lookup: &mut LookupRecord) {}

    fn observe(&mut self, lookup: &LookupRecord);
}

struct OpenLookup {
    client: IpAddr,
    base: Arc<str>,
    attempts: Vec<Attempt>,
    last_activity: Instant,
    /// The attempt that gave the final answer (data, or the absolute name answered).
    final_answer: Option<usize>,
    /// The final answer's A/AAAA twin was answered too (or it has none).
    finished: bool,
    /// Search-list positions visited (a set, no allocation) and the current one.
    visited: Visited,
    seq: u64,
    /// The closing time of this lookup's live entry in the tracker's `Deadlines`.
    indexed: Option<Due>,
}

/// A query's place in the walk: its search-suffix index, or `None` for the absolute name.
type Position = Option<usize>;

/// The positions of the search walk a lookup has visited, as a bit set: suffixes 0..62 (a
/// longer search list shares the last bit) and the absolute name.
#[derive(Debug, Default)]
struct Visited {
    set: u64,
    current: Option<Position>,
}

impl Visited {
    fn bit(position: Position) -> u64 {
        1 << position.map_or(63, |i| i.min(62))
    }

    /// A position visited before that is not the current one: the walk starts over.
    fn rewinds_to(&self, position: Position) -> bool {
        self.current.is_some_and(|c| c != position) && self.set & Self::bit(position) != 0
    }

    fn visit(&mut self, position: Position) {
        self.set |= Self::bit(position);
        self.current = Some(position);
    }
}

/// What a query does to the lookup open for its client and base name.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    /// It belongs to this lookup (a next step, the twin, or a retransmission).
    Joins { retransmission: bool },
    /// It starts the next lookup: this one is closed.
    OpensNext,
}

impl OpenLookup {
    /// Where query `q` for `qname`, read at `position` of the walk, belongs (the rule is in
    /// the module doc).
    fn place(&self, q: &QueryTrace, qname: &str, position: Position) -> Place {
        if self.attempts.len() >= MAX_ATTEMPTS {
            return Place::OpensNext;
        }
        let same_question = |a: &&Attempt| a.query.qtype == q.qtype && a.qname == qname;
        let mut asked = self.attempts.iter().filter(same_question).peekable();
        if asked.peek().is_some() {
            return if asked.any(|a| a.query.id == q.id) {
                Place::Joins {
                    retransmission: true,
                }
            } else {
                Place::OpensNext
            };
        }
        let rewinds = self.visited.rewinds_to(position);
        if self.finished || rewinds {
            Place::OpensNext
        } else {
            Place::Joins {
                retransmission: false,
            }
        }
    }

    fn push(&mut self, mut attempt: Attempt, retransmission: bool) {
        attempt.retransmission = retransmission;
        let position = attempt.position();
        self.visited.visit(position);
        let q = &attempt.query;
        self.last_activity = self.last_activity.max(q.answered);
        let is_final = q.has_data()
            || (attempt.suffix.is_none() && matches!(q.rcode, Rcode::NOERROR | Rcode::NXDOMAIN));
        if self.final_answer.is_none() && is_final && !retransmission {
            self.final_answer = Some(self.attempts.len());
        }
        self.attempts.push(attempt);
        if let Some(final_answer) = self.final_answer.map(|i| &self.attempts[i]) {
            self.finished = match wire::address_twin(final_answer.query.qtype) {
                Some(twin) => self
                    .attempts
                    .iter()
                    .any(|a| a.query.qtype == twin && a.qname == final_answer.qname),
                None => true,
            };
        }
    }
}

/// A base name is allocated once per lookup and shared by the map, the eviction order and
/// the lookup itself.
type Key = (IpAddr, Arc<str>);

/// foldhash instead of SipHash: the keys are client addresses and names, and the profile
/// showed SipHash at ~1% of the process with tracing on. HashDoS is bounded by `max_entries`.
pub(crate) type FastHash = foldhash::fast::RandomState;

/// Open lookups by client, then base name: probing with a borrowed name allocates nothing.
#[derive(Default)]
struct OpenMap {
    by_client: HashMap<IpAddr, HashMap<Arc<str>, OpenLookup, FastHash>, FastHash>,
    len: usize,
}

impl OpenMap {
    fn get(&self, (client, base): &Key) -> Option<&OpenLookup> {
        self.get_str(*client, base)
    }

    fn get_str(&self, client: IpAddr, base: &str) -> Option<&OpenLookup> {
        self.by_client.get(&client)?.get(base)
    }

    fn get_mut(&mut self, (client, base): &Key) -> Option<&mut OpenLookup> {
        self.get_mut_str(*client, base)
    }

    fn get_mut_str(&mut self, client: IpAddr, base: &str) -> Option<&mut OpenLookup> {
        self.by_client.get_mut(&client)?.get_mut(base)
    }

    fn insert(&mut self, (client, base): Key, lookup: OpenLookup) {
        if self
            .by_client
            .entry(client)
            .or_default()
            .insert(base, lookup)
            .is_none()
        {
            self.len += 1;
        }
    }

    fn remove(&mut self, (client, base): &Key) -> Option<OpenLookup> {
        let names = self.by_client.get_mut(client)?;
        let removed = names.remove(&**base)?;
        if names.is_empty() {
            self.by_client.remove(client);
        }
        self.len -= 1;
        Some(removed)
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// The correlation state, owned by one task.
pub struct Tracker {
    model: SearchModel,
    window: Duration,
    max_entries: usize,
    open: OpenMap,
    /// Keys in opening order, for evicting the oldest; stale entries are skipped.
    order: VecDeque<(u64, Key)>,
    /// When each open lookup closes: a tick pops what is due instead of scanning them all.
    deadlines: Deadlines,
    next_seq: u64,
    observers: Vec<Box<dyn LookupObserver>>,
    evicted: Counter,
    open_gauge: Gauge,
    /// Whether queries wait on upstreams (a lookup's next query may be one of them).
    in_flight: InFlight,
    /// On a proxy confined to one core this thread and the DNS worker share it: a batch
    /// must never hold up answers for long.
    pacer: Pacer,
    /// Who each client is (node-local pod identity), when it is on.
    identities: Option<Identities>,
}

/// The tracker's metric handles.
#[derive(Clone)]
pub struct LookupMetrics {
    dropped: Counter,
    evicted: Counter,
    open: Gauge,
}

impl LookupMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = LookupMetrics {
            dropped: Counter::default(),
            evicted: Counter::default(),
            open: Gauge::default(),
        };
        registry.register(
            "lookup_records_dropped",
            "Finished queries not correlated because the tracker's queue was full",
            m.dropped.clone(),
        );
        registry.register(
            "lookups_evicted",
            "Open lookups evicted (oldest first) because lookup.max_entries was reached",
            m.evicted.clone(),
        );
        registry.register("lookups_open", "Lookups being correlated", m.open.clone());
        m
    }
}

impl Tracker {
    pub fn new(
        model: SearchModel,
        config: &LookupConfig,
        metrics: &LookupMetrics,
        observers: Vec<Box<dyn LookupObserver>>,
    ) -> Tracker {
        Tracker {
            model,
            window: config.window,
            max_entries: config.max_entries,
            open: OpenMap::default(),
            order: VecDeque::new(),
            deadlines: Deadlines::default(),
            next_seq: 0,
            observers,
            evicted: metrics.evicted.clone(),
            open_gauge: metrics.open.clone(),
            in_flight: InFlight::default(),
            pacer: Pacer::new(WORK_BUDGET, PAUSE).until_behind(BEHIND_AFTER),
            identities: None,
        }
    }

    /// Names each lookup's client (node-local pod identity), and reads the client's search
    /// list exactly: its own namespace is the first suffix.
    pub fn with_identities(mut self, identities: Identities) -> Tracker {
        self.identities = Some(identities);
        self
    }

    /// Reads the forwarder's queries in flight: a lookup without its final answer stays open
    /// past its window while one of its queries may still wait on an upstream.
    pub fn with_in_flight(mut self, in_flight: InFlight) -> Tracker {
        self.in_flight = in_flight;
        self
    }

    /// Starts the tracker on its own thread; returns the sink the hot path sends to. The
    /// thread drains the sink every 20 ms and closes what has ended. A thread rather than a
    /// task: draining a batch then never holds up a runtime worker that serves DNS (measured:
    /// as a task it put ~5 ms into the p99 latency of a one-core proxy).
    pub fn spawn(
        mut self,
        queue: usize,
        metrics: &LookupMetrics,
        stop: CancellationToken,
    ) -> TraceSink {
        let sink = TraceSink::new(queue, metrics.dropped.clone());
        let drained = sink.clone();
        let spawned = std::thread::Builder::new()
            .name("dnslens-lookups".into())
            .spawn(move || {
                crate::background::run_as_background_work();
                let (mut batch, mut spare) = (Vec::new(), Vec::new());
                let (mut order, mut slots) = (Vec::new(), Vec::new());
                loop {
                    std::thread::sleep(TICK);
                    self.pacer.start();
                    let stopping = stop.is_cancelled();
                    // The time and the in-flight reading come before the drain: every query
                    // answered before `now` is in this batch, whatever the pauses between
                    // adds (a lookup is never closed while its next query sits in the sink).
                    let (now, grace) = (Instant::now(), self.in_flight.grace());
                    drained.drain_into(&mut batch, &mut spare);
                    // Correlation needs arrival order; the shards together are not in it.
                    for trace in in_arrival_order(&mut batch, &mut order, &mut slots) {
                        self.add(trace);
                    }
                    if stopping {
                        // Report everything still open.
                        self.expire_with(now + self.window + LINGER, Duration::ZERO);
                        return;
                    }
                    self.expire_with(now, grace);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the lookup tracker thread; lookups are not correlated");
        }
        sink
    }

    /// Correlates one finished query (queries must come in arrival order).
    pub fn add(&mut self, query: QueryTrace) {
        let Some(qname) = query.name() else { return };
        let client = query.client.ip();
        let client_pod = self
            .identities
            .as_ref()
            .and_then(|ids| ids.namespace_of(client, query.answered));
        let (base_len, suffix, place) = {
            let namespace = client_pod.as_ref().map(|p| p.namespace.as_str());
            let candidates = self.model.candidates_for(&qname, namespace);
            let Some((chosen, place)) = self.choose_reading(client, &query, &qname, &candidates)
            else {
                return;
            };
            (
                chosen.base.len(),
                chosen.suffix.map(|(i, s)| (i, s.to_string())),
                place,
            )
        };
        let attempt = Attempt {
            qname,
            suffix,
            retransmission: false,
            query,
        };
        let base = &attempt.qname[..base_len];
        let retransmission = match place {
            Some(Place::Joins { retransmission }) => retransmission,
            Some(Place::OpensNext) | None => {
                let key: Key = (client, base.into());
                if let Some(closed) = self.open.remove(&key) {
                    self.report(close(closed, false));
                }
                self.open_lookup(key, client, attempt.query.answered);
                false
            }
        };
        if let Some(open) = self.open.get_mut_str(client, &attempt.qname[..base_len]) {
            open.push(attempt, retransmission);
            let due = due_of(open, self.window);
            // A later closing time waits for the old entry to come up; an earlier one (the
            // final answer, the twin) or one in the other heap needs an entry of its own.
            let sooner = open
                .indexed
                .is_none_or(|i| i.plus_grace != due.plus_grace || due.at < i.at);
            if sooner {
                open.indexed = Some(due);
                let key = (client, open.base.clone());
                self.deadlines.push(due, open.seq, key);
            }
        }
        self.open_gauge.set(self.open.len() as i64);
        self.pacer.checkpoint();
    }

    /// The reading of `qname` the walk decides, and where the query goes under it. A name
    /// can be read several ways (`kubernetes.default.svc.cluster.local`: `kubernetes` under
    /// the first suffix, `kubernetes.default` under the second, or absolute), and more than
    /// one reading may have a lookup open for the client — another process of the pod asked
    /// the full name a moment before. The reading whose open lookup takes the query wins:
    /// a retransmission first, then the next step of a walk still without its final answer,
    /// then the twin of a final answer (the lookup heard from last, among several); failing
    /// those, a reading whose walk, still without its final answer, the query rewinds or
    /// re-asks (it closes that lookup and opens the next under the same base), else the most
    /// specific reading (a lookup with its final answer under it is closed: a dnspython
    /// lookup, A only, never gets its twin, and the next process's question is its own).
    fn choose_reading<'c, 'n>(
        &self,
        client: IpAddr,
        query: &QueryTrace,
        qname: &str,
        candidates: &'c [Candidate<'n>],
    ) -> Option<(&'c Candidate<'n>, Option<Place>)> {
        let ranked = candidates.iter().map(|c| {
            let open = self.open.get_str(client, c.base);
            let place = open.map(|l| l.place(query, qname, c.suffix.map(|(i, _)| i)));
            let rank = match (open, &place) {
                (
                    _,
                    Some(Place::Joins {
                        retransmission: true,
                    }),
                ) => 0,
                (Some(l), Some(Place::Joins { .. })) if l.final_answer.is_none() => 1,
                (_, Some(Place::Joins { .. })) => 2,
                (Some(l), Some(Place::OpensNext)) if l.final_answer.is_none() => 3,
                _ => 4,
            };
            // Among equals, the lookup that heard from the client last: a twin goes with the
            // partner just asked, not with one asked a moment before by another process.
            let joins = matches!(place, Some(Place::Joins { .. }));
            let recent = std::cmp::Reverse(open.filter(|_| joins).map(|l| l.last_activity));
            ((rank, recent), c, place)
        });
        // `min_by_key` keeps the first of equals: the most specific reading.
        ranked
            .min_by_key(|(rank, _, _)| *rank)
            .map(|(_, c, place)| (c, place))
    }

    fn open_lookup(&mut self, key: Key, client: IpAddr, activity: Instant) {
        if self.open.len() >= self.max_entries {
            self.evict_oldest();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.push_back((seq, key.clone()));
        self.open.insert(
            key.clone(),
            OpenLookup {
                client,
                base: key.1,
                attempts: Vec::new(),
                last_activity: activity,
                final_answer: None,
                finished: false,
                visited: Visited::default(),
                seq,
                indexed: None,
            },
        );
        self.compact_order();
    }

    /// Closes lookups that have their final answer and are quiet, or are past their window
    /// (and, while queries wait on upstreams, a lookup missing its twin or its final answer
    /// past the longest wait too).
    pub fn expire(&mut self, now: Instant) {
        let grace = self.in_flight.grace();
        self.expire_with(now, grace);
    }

    fn expire_with(&mut self, now: Instant, grace: Duration) {
        while let Some((due, seq, key)) = self.deadlines.pop_due(now, grace) {
            let Some(open) = self.open.get_mut(&key) else {
                continue; // closed or evicted since
            };
            if open.seq != seq || open.indexed != Some(due) {
                continue; // a later lookup under the key, or a newer entry stands for it
            }
            let current = due_of(open, self.window);
            if current == due {
                if let Some(open) = self.open.remove(&key) {
                    self.report(close(open, false));
                }
            } else {
                // Active since the entry was pushed: due later.
                open.indexed = Some(current);
                self.deadlines.push(current, seq, key);
            }
        }
        if self.deadlines.len() > 2 * self.open.len() + 1024 {
            let open = &self.open;
            self.deadlines.retain(|due, seq, key| {
                open.get(key)
                    .is_some_and(|l| l.seq == seq && l.indexed == Some(due))
            });
        }
        self.open_gauge.set(self.open.len() as i64);
    }

    fn evict_oldest(&mut self) {
        while let Some((seq, key)) = self.order.pop_front() {
            if self.open.get(&key).is_some_and(|l| l.seq == seq) {
                if let Some(open) = self.open.remove(&key) {
                    self.evicted.inc();
                    self.report(close(open, true));
                }
                return;
            }
        }
    }

    /// Keeps the eviction order from growing past twice the open lookups.
    fn compact_order(&mut self) {
        if self.order.len() > 2 * self.max_entries.max(self.open.len()) {
            let open = &self.open;
            self.order
                .retain(|(seq, key)| open.get(key).is_some_and(|l| l.seq == *seq));
        }
    }

    fn report(&mut self, mut record: LookupRecord) {
        if let Some(identities) = &self.identities {
            record.client_identity = identities.of(record.client, Instant::now());
        }
        for observer in &mut self.observers {
            observer.annotate(&mut record);
        }
        for observer in &mut self.observers {
            observer.observe(&record);
        }
        self.pacer.checkpoint();
    }

    pub fn open_lookups(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests;
