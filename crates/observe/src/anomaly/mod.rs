//! Anomaly detectors: read finished lookups ([`LookupRecord`]) and name the patterns that
//! broke a real cluster. `detect` holds the pure per-lookup detectors ([`kinds`]), `memory`
//! the bounded memory across lookups that finds retries and suspected races (one
//! implementation of each), and [`Detectors`] is the [`LookupObserver`] that runs both,
//! counts and journals; they never reach back into the data path.
//!
//! Detectors and their metrics (labels are closed sets, never a query name):
//! - **Empty NOERROR**: RCODE NOERROR with no answer for an A/AAAA question.
//!   `dnslens_empty_noerror_total{qtype, search_expansion, soa}`: `search_expansion` says
//!   whether the name was a search-list expansion (the musl trap: musl stops its walk there
//!   and the lookup fails), `soa` whether the authority section carried an SOA (a
//!   well-formed NODATA) or nothing (an upstream misbehaving). An AAAA NODATA while the A of
//!   the same name has data is ordinary (IPv4-only names): counted, not an anomaly. A
//!   lookup of the trap whose every such answer the musl shield turned into NXDOMAIN is also
//!   counted in `dnslens_empty_noerror_shielded_total`: the alerts tell clients breaking
//!   from an upstream the shield hides.
//! - **Parallel A/AAAA**: A and AAAA for one name from one client socket, the later one
//!   received before the first was answered (or within 5 ms of it: both already queued)
//!   and within 50 ms (`dnslens_parallel_queries_total`, pairs). A resolver asking one type
//!   after the other (`single-request`, dnspython) needs the first answer before it asks
//!   again: not a pair; neither are Go's A and AAAA from two sockets. A suspected race
//!   (`dnslens_parallel_query_race_suspected_total`, kind `parallel_race`): seen from
//!   dnslens's side of a lossy path, an A or AAAA whose twin never came with it and then
//!   arrives alone on the same socket 0.25-12 s after the first one's answer (a resolver
//!   timeout: glibc re-sends after `timeout`, musl after `timeout/attempts`) — within one
//!   lookup or across two; or a question of a pair that dnslens had not answered (withheld
//!   or lost upstream) when the client asked again, while its twin was answered. An answer
//!   lost on its way back to the client is a retry, not a race (no query was lost). That
//!   memory is bounded (4096 entries, oldest evicted: `dnslens_anomaly_state_evicted_total`).
//! - **Client retries**: the same client socket sending the same question with the same
//!   message ID again within 12 s (a retransmission; across lookups, as a 5 s resolver
//!   timeout outlasts a lookup; within one lookup also from a new socket of the same
//!   address, as dnspython and glibc's `single-request-reopen` re-ask), from the same
//!   bounded memory: `dnslens_client_retries_total{qtype}` and the gap,
//!   `dnslens_client_retry_gap_seconds` (buckets that make 1, 2 and 5 s resolver timeouts
//!   stand out). The retransmissions are marked on the record: a record of nothing else is
//!   the *tail* of a lookup that had ended — not counted as a lookup, and the kinds its
//!   lookup was already counted for are not counted again.
//! - **Search noise**: `dnslens_search_expansion_queries_total{outcome}` (nxdomain / nodata /
//!   answer / servfail: expected noise of a search walk), `dnslens_lookups_total{outcome}`
//!   and `dnslens_lookup_attempts` (queries per lookup), `dnslens_lookup_duration_seconds
//!   {outcome}` (first query to last answer: the DNS wait a client's `getaddrinfo` sees,
//!   OpenTelemetry's `dns.lookup.duration`), so the share of traffic that is
//!   search noise is one PromQL expression and a genuine NXDOMAIN (of the absolute name,
//!   `dnslens_lookups_total{outcome="nxdomain"}`) is told apart from expected ones.
//! - **Upstream faults**: a lookup with an upstream timeout (`upstream_timeout`), SERVFAIL
//!   or REFUSED (`upstream_error`); per upstream counts are
//!   `dnslens_upstream_requests_total{outcome}` in `forward`. An upstream put aside is still
//!   asked when it is the only choice (see `forward`), so a dead one shows as timeouts.
//! - **ndots hint** (a note, not an anomaly): a lookup that walked the search list and was
//!   answered by the absolute name — evidence for lowering ndots or writing the name with a
//!   trailing dot. `dnslens_ndots_hints_total`, and the journal's per-name tally of hints
//!   (`/debug/anomalies?hints=1`, `dnslens anomalies --hints`) — never a journal entry: the
//!   journal holds anomalies only.
//!
//! `dnslens_anomalies_total{kind, client_namespace, client_workload}` counts lookups by anomaly
//! kind (the client labels only in node-local mode with pod identity: at most 256 workloads,
//! then `other`) (`empty_noerror_search`,
//! `empty_noerror_no_soa`, `parallel_race`, `client_retry`, `upstream_timeout`,
//! `upstream_error`), each increment carrying the lookup's trace id as an OpenMetrics
//! exemplar; it is what the alert rules use. The detectors write each lookup's kinds on its
//! record before any observer reads it (`LookupObserver::annotate`), so the kinds that only
//! memory across lookups reveals (a retry, a late twin) reach its trace as `dnslens.anomaly`
//! too, and a lookup with any kind is always exported (see `telemetry`).

mod detect;
pub mod journal;
mod memory;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::CounterWithExemplar;
use std::collections::HashMap;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::lookup::FastHash;
use crate::lookup::LookupObserver;
use detect::{is_empty_noerror, parallel_pairs};
pub use detect::{kinds, ndots_hint};
use dnslens_datapath::metrics::{CounterTable, QtypeLabel};
use dnslens_datapath::record::{Attempt, Kind, LookupOutcome, LookupRecord};
use dnslens_wire::{Rcode, QTYPE_A, QTYPE_AAAA};
use memory::Memory;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Flag(bool);

impl Flag {
    fn as_str(self) -> &'static str {
        if self.0 {
            "true"
        } else {
            "false"
        }
    }
}

dnslens_datapath::label_value_from_as_str!(Flag);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EmptyNoerrorLabels {
    qtype: QtypeLabel,
    search_expansion: Flag,
    soa: Flag,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TraceLabels {
    trace_id: String,
}

/// `kind`, and in node-local mode with pod identity the client's namespace and workload
/// (left out when empty: a sidecar's series stay `{kind}` alone).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct KindLabels {
    kind: &'static str,
    client_namespace: String,
    client_workload: String,
}

impl prometheus_client::encoding::EncodeLabelSet for KindLabels {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("kind", self.kind).encode(encoder.encode_label())?;
        for (key, value) in [
            ("client_namespace", &self.client_namespace),
            ("client_workload", &self.client_workload),
        ] {
            if !value.is_empty() {
                (key, value.as_str()).encode(encoder.encode_label())?;
            }
        }
        Ok(())
    }
}

/// Distinct client workloads the anomaly counters keep apart; the rest count as
/// `other`/`other` (a node runs at most a few hundred pods).
const MAX_CLIENT_WORKLOADS: usize = 256;

type AnomalyCounter = CounterWithExemplar<TraceLabels>;

/// `dnslens_anomalies_total`: a series per kind, and per kind and client workload once one
/// is named. A workload's series are all made at 0 the first time any of its lookups is
/// seen, so `increase()` sees its first anomaly.
struct AnomalyCounters {
    family: Family<KindLabels, AnomalyCounter>,
    unnamed: Vec<AnomalyCounter>,
    /// By namespace, then workload: probed with the pod's borrowed names, so a lookup of a
    /// workload already seen allocates nothing.
    by_workload: HashMap<String, HashMap<String, Vec<AnomalyCounter>, FastHash>, FastHash>,
    workloads: usize,
    /// `other`/`other`, once the cap is reached.
    other: Option<Vec<AnomalyCounter>>,
}

impl AnomalyCounters {
    fn new(family: Family<KindLabels, AnomalyCounter>) -> AnomalyCounters {
        let unnamed = Self::series(&family, "", "");
        AnomalyCounters {
            family,
            unnamed,
            by_workload: HashMap::default(),
            workloads: 0,
            other: None,
        }
    }

    fn series(
        family: &Family<KindLabels, AnomalyCounter>,
        ns: &str,
        wl: &str,
    ) -> Vec<AnomalyCounter> {
        Kind::ALL
            .iter()
            .map(|kind| {
                family
                    .get_or_create(&KindLabels {
                        kind: kind.as_str(),
                        client_namespace: ns.to_string(),
                        client_workload: wl.to_string(),
                    })
                    .clone()
            })
            .collect()
    }

    /// The counters for `lookup`'s client, indexed by `Kind`.
    fn of(&mut self, lookup: &LookupRecord) -> &[AnomalyCounter] {
        let Some(client) = &lookup.client_identity else {
            return &self.unnamed;
        };
        let (ns, wl) = (client.pod.namespace.as_str(), client.pod.workload.as_str());
        let known = self.by_workload.get(ns).is_some_and(|w| w.contains_key(wl));
        if !known && self.workloads >= MAX_CLIENT_WORKLOADS {
            let family = &self.family;
            return self
                .other
                .get_or_insert_with(|| Self::series(family, "other", "other"));
        }
        if !known {
            self.workloads += 1;
            let series = Self::series(&self.family, ns, wl);
            self.by_workload
                .entry(ns.to_string())
                .or_default()
                .insert(wl.to_string(), series);
        }
        &self.by_workload[ns][wl]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct QtypeLabels {
    qtype: QtypeLabel,
}

/// Counts what the detectors find; runs in the lookup tracker.
/// Buckets of `dnslens_lookup_duration_seconds`: a cached answer (under 1 ms) to a walk
/// behind a 5 s resolver timeout, and past it.
const LOOKUP_DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub struct Detectors {
    journal: journal::Journal,
    clock: dnslens_datapath::record::Clock,
    /// Lookups with each anomaly kind (what the journal and alerts use).
    anomalies: AnomalyCounters,
    /// Recent questions, for retries and late twins.
    memory: Memory,
    empty_noerror: CounterTable<EmptyNoerrorLabels>,
    /// By [`query_outcome`] index.
    search_expansion: [Counter; 4],
    /// By `LookupOutcome` (in `LookupOutcome::ALL` order).
    lookups: [Counter; 5],
    /// `dnslens_lookup_duration_seconds`, by `LookupOutcome` as `lookups`.
    durations: [Histogram; 5],
    attempts: Histogram,
    retries: CounterTable<QtypeLabels>,
    retry_gap: Histogram,
    parallel: Counter,
    race_suspected: Counter,
    ndots_hints: Counter,
    /// Lookups of the musl trap that the shield answered NXDOMAIN instead.
    shielded: Counter,
}

impl Detectors {
    pub fn register(registry: &mut Registry, journal: journal::Journal) -> Detectors {
        let anomalies = Family::<KindLabels, CounterWithExemplar<TraceLabels>>::default();
        registry.register(
            "anomalies",
            "Lookups with an anomaly, by kind (ordinary AAAA NODATA of IPv4-only names excluded)",
            anomalies.clone(),
        );
        let empty_noerror = Family::<EmptyNoerrorLabels, Counter>::default();
        registry.register(
            "empty_noerror",
            "A/AAAA answers with RCODE NOERROR and no records, by qtype, whether the name was a search expansion, and whether an SOA came with it",
            empty_noerror.clone(),
        );
        let search_expansion = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "search_expansion_queries",
            "Queries for search-list expansions of a name, by outcome (expected noise of a search walk)",
            search_expansion.clone(),
        );
        let lookups = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "lookups",
            "Lookups (all queries of one getaddrinfo) by outcome",
            lookups.clone(),
        );
        let durations = Family::<OutcomeLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(LOOKUP_DURATION_BUCKETS)) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "lookup_duration",
            "Time from a lookup's first query to its last answer (what a client's getaddrinfo waits on DNS: the whole search walk, retries included), by outcome",
            prometheus_client::registry::Unit::Seconds,
            durations.clone(),
        );
        let attempts = Histogram::new([1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0, 24.0, 32.0]);
        registry.register("lookup_attempts", "Queries per lookup", attempts.clone());
        let retries = Family::<QtypeLabels, Counter>::default();
        registry.register(
            "client_retries",
            "Retransmissions: the same client socket sending the same question with the same ID again within 12 s",
            retries.clone(),
        );
        let retry_gap = Histogram::new([
            0.1, 0.25, 0.5, 0.9, 1.1, 1.9, 2.1, 2.9, 3.1, 4.9, 5.1, 7.5, 10.0,
        ]);
        registry.register_with_unit(
            "client_retry_gap",
            "Time between a question and the client's repeat of it (resolver timeouts show as peaks at 1, 2, 5 s)",
            prometheus_client::registry::Unit::Seconds,
            retry_gap.clone(),
        );
        let parallel = Counter::default();
        registry.register(
            "parallel_queries",
            "A/AAAA pairs sent together from one client socket",
            parallel.clone(),
        );
        let race_suspected = Counter::default();
        registry.register(
            "parallel_query_race_suspected",
            "Parallel A/AAAA pairs one of which the client had to ask again (conntrack race suspected)",
            race_suspected.clone(),
        );
        let shielded = Counter::default();
        registry.register(
            "empty_noerror_shielded",
            "Lookups with empty NOERROR on a search expansion (counted in dnslens_anomalies_total) whose every such answer the musl shield turned into NXDOMAIN: the client walked on; the upstream is still wrong",
            shielded.clone(),
        );
        let ndots_hints = Counter::default();
        registry.register(
            "ndots_hints",
            "Lookups that walked the whole search list before the name itself answered (lower ndots, or use a trailing dot)",
            ndots_hints.clone(),
        );
        let evicted = Counter::default();
        registry.register(
            "anomaly_state_evicted",
            "Entries dropped from the detectors' bounded memory of lonely A/AAAA queries",
            evicted.clone(),
        );
        // Every kind's series exists from the start at 0, so `increase()` sees the first one.
        let anomalies = AnomalyCounters::new(anomalies);
        // The series dashboards and alerts read exist at 0 from the start too, resolved
        // once (no label hashing per lookup).
        let lookups = LookupOutcome::ALL.map(|outcome| {
            lookups
                .get_or_create(&OutcomeLabels {
                    outcome: outcome.as_str(),
                })
                .clone()
        });
        let durations = LookupOutcome::ALL.map(|outcome| {
            durations
                .get_or_create(&OutcomeLabels {
                    outcome: outcome.as_str(),
                })
                .clone()
        });
        let search_expansion = QUERY_OUTCOMES.map(|outcome| {
            search_expansion
                .get_or_create(&OutcomeLabels { outcome })
                .clone()
        });
        let empty_noerror = CounterTable::new(empty_noerror, QtypeLabel::COUNT * 4);
        let retries = CounterTable::new(retries, QtypeLabel::COUNT);
        for qtype in [QTYPE_A, QTYPE_AAAA].map(QtypeLabel::from_qtype) {
            retries.get(qtype.index(), || QtypeLabels { qtype });
            for (search, soa) in [(false, false), (false, true), (true, false), (true, true)] {
                empty_noerror_counter(&empty_noerror, qtype, search, soa);
            }
        }
        Detectors {
            journal,
            clock: dnslens_datapath::record::Clock::now(),
            anomalies,
            memory: Memory::new(evicted),
            empty_noerror,
            search_expansion,
            lookups,
            durations,
            attempts,
            retries,
            retry_gap,
            parallel,
            race_suspected,
            ndots_hints,
            shielded,
        }
    }
}

/// The `outcome` labels of `dnslens_search_expansion_queries_total`.
const QUERY_OUTCOMES: [&str; 4] = ["answer", "nodata", "nxdomain", "servfail"];

/// A query's outcome, as an index into [`QUERY_OUTCOMES`].
fn query_outcome(a: &Attempt) -> usize {
    match a.query.rcode {
        Rcode::NOERROR if a.query.answers > 0 => 0,
        Rcode::NOERROR => 1,
        Rcode::NXDOMAIN => 2,
        _ => 3,
    }
}

impl LookupObserver for Detectors {
    /// Finds the lookup's kinds — its own, and retries and late twins remembered across
    /// lookups — and writes them on the record, so its trace carries them too.
    fn annotate(&mut self, lookup: &mut LookupRecord) {
        let across = self.memory.findings(lookup);
        // A retransmission of a question of an ended lookup is one too: a lookup of nothing
        // but those is that lookup's tail, not a lookup of its own.
        for index in &across.retransmissions {
            lookup.attempts[*index].retransmission = true;
        }
        let mut found = kinds(lookup);
        found.extend(across.kinds.iter().copied());
        found.sort();
        found.dedup();
        if lookup.is_tail() {
            // What its lookup was already counted for is not counted again.
            found.retain(|k| across.counted_before & memory::kind_mask(&[*k]) == 0);
        }
        for retry in &across.retries {
            let qtype = QtypeLabel::from_qtype(retry.qtype);
            self.retries
                .get(qtype.index(), || QtypeLabels { qtype })
                .inc();
            self.retry_gap.observe(retry.gap.as_secs_f64());
        }
        if found.contains(&Kind::ParallelRace) {
            self.race_suspected.inc_by(across.races);
        }
        if !found.is_empty() {
            self.memory.counted(lookup, memory::kind_mask(&found));
        }
        lookup.anomalies = found;
        lookup.waited = across.longest_gap;
    }

    fn observe(&mut self, lookup: &LookupRecord) {
        let found = &lookup.anomalies;
        let counters = self.anomalies.of(lookup);
        if !found.is_empty() {
            // The lookup's trace id rides along as an OpenMetrics exemplar: a dashboard jumps
            // from the counter to the trace (anomalous lookups are always exported, see
            // `telemetry`).
            let exemplar = TraceLabels {
                trace_id: format!("{:032x}", lookup.trace_id),
            };
            for kind in found {
                counters[*kind as usize].inc_by(1, Some(exemplar.clone()), None);
            }
            if found.contains(&Kind::EmptyNoerrorSearch) && shielded(lookup) {
                self.shielded.inc();
            }
            self.journal.record(lookup, found, &self.clock);
        }
        self.count_queries(lookup);
        // Retries and races are counted in `annotate`: the memory across lookups sees a
        // lookup's own repeats as well as those that come after it ended.
        if lookup.is_tail() {
            // Re-asks of a lookup that had ended: not a lookup of their own.
            return;
        }
        if ndots_hint(lookup) {
            self.ndots_hints.inc();
            self.journal.note_hint(&lookup.base, lookup.questions());
        }
        self.lookups[lookup.outcome as usize].inc();
        self.durations[lookup.outcome as usize].observe(
            lookup
                .end
                .saturating_duration_since(lookup.start)
                .as_secs_f64(),
        );
        self.attempts.observe(lookup.questions() as f64);
        self.parallel.inc_by(parallel_pairs(lookup).len() as u64);
    }
}

impl Detectors {
    /// The per-query counters: search noise and empty NOERROR answers.
    fn count_queries(&self, lookup: &LookupRecord) {
        for a in &lookup.attempts {
            if a.suffix.is_some() {
                self.search_expansion[query_outcome(a)].inc();
            }
            if is_empty_noerror(a) {
                let qtype = QtypeLabel::from_qtype(a.query.qtype);
                let (search, soa) = (a.suffix.is_some(), a.query.authority_soa);
                empty_noerror_counter(&self.empty_noerror, qtype, search, soa).inc();
            }
        }
    }
}

/// Whether every empty NOERROR answer to a search expansion in `lookup` reached the client as
/// the shield's NXDOMAIN: the trap was there, the client never saw it.
fn shielded(lookup: &LookupRecord) -> bool {
    lookup
        .attempts
        .iter()
        .filter(|a| a.suffix.is_some() && is_empty_noerror(a))
        .all(|a| a.query.rewritten)
}

/// The `dnslens_empty_noerror_total` series of one label combination.
fn empty_noerror_counter(
    table: &CounterTable<EmptyNoerrorLabels>,
    qtype: QtypeLabel,
    search: bool,
    soa: bool,
) -> &Counter {
    let index = qtype.index() * 4 + usize::from(search) * 2 + usize::from(soa);
    table.get(index, || EmptyNoerrorLabels {
        qtype,
        search_expansion: Flag(search),
        soa: Flag(soa),
    })
}

#[cfg(test)]
mod tests;
