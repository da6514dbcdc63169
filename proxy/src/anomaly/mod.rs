//! Anomaly detectors: read finished lookups ([`LookupRecord`]) and name the patterns that
//! broke a real cluster. Pure functions over plain data ([`kinds`]) plus a
//! [`LookupObserver`] that counts them; they never reach back into the data path.
//!
//! Detectors and their metrics (labels are closed sets, never a query name):
//! - **Empty NOERROR**: RCODE NOERROR with no answer for an A/AAAA question.
//!   `dnslens_empty_noerror_total{qtype, search_expansion, soa}`: `search_expansion` says
//!   whether the name was a search-list expansion (the musl trap: musl stops its walk there
//!   and the lookup fails), `soa` whether the authority section carried an SOA (a
//!   well-formed NODATA) or nothing (an upstream misbehaving). An AAAA NODATA while the A of
//!   the same name has data is ordinary (IPv4-only names): counted, not an anomaly.
//! - **Parallel A/AAAA**: A and AAAA for one name from one client socket within 50 ms
//!   (`dnslens_parallel_queries_total`, pairs). A pair where one query is asked again
//!   by the client — its twin was answered, this one presumably lost on the way (the
//!   conntrack insertion race) — is `dnslens_parallel_query_race_suspected_total`; so is,
//!   seen from dnslens's side of a lossy path, an A or AAAA whose twin never arrived and then
//!   arrives alone on the same socket 0.5-12 s later (a resolver timeout). That memory is
//!   bounded (4096 entries, oldest evicted: `dnslens_anomaly_state_evicted_total`).
//! - **Client retries**: the same client socket sending the same question with the same
//!   message ID again within 12 s (a retransmission; across lookups, as a 5 s resolver
//!   timeout outlasts a lookup), from the same bounded memory: `dnslens_client_retries_total{qtype}` and the gap,
//!   `dnslens_client_retry_gap_seconds` (buckets that make 1, 2 and 5 s resolver
//!   timeouts stand out).
//! - **Search noise**: `dnslens_search_expansion_queries_total{outcome}` (nxdomain / nodata /
//!   answer / servfail: expected noise of a search walk), `dnslens_lookups_total{outcome}`
//!   and `dnslens_lookup_attempts` (queries per lookup), so the share of traffic that is
//!   search noise is one PromQL expression and a genuine NXDOMAIN (of the absolute name,
//!   `dnslens_lookups_total{outcome="nxdomain"}`) is told apart from expected ones.
//! - **Upstream faults**: a lookup with an upstream timeout, SERVFAIL or REFUSED (per
//!   upstream counts are `dnslens_upstream_requests_total{outcome}` in `forward`).
//! - **ndots hint** (a note, not an anomaly): a lookup that walked the search list and was
//!   answered by the absolute name — evidence for lowering ndots or writing the name with a
//!   trailing dot. `dnslens_ndots_hints_total`, and a journal entry of kind `ndots_hint`
//!   (one per name per 10 minutes, 4,096 names remembered) that names the lookup.
//!
//! `dnslens_anomalies_total{kind}` counts lookups by anomaly kind (`empty_noerror_search`,
//! `empty_noerror_no_soa`, `parallel_race`, `client_retry`, `upstream_timeout`,
//! `upstream_error`), each increment carrying the lookup's trace id as an OpenMetrics
//! exemplar; it is what the alert rules use. The detectors write each lookup's kinds on its
//! record before any observer reads it (`LookupObserver::annotate`), so the kinds that only
//! memory across lookups reveals (a retry, a late twin) reach its trace as `dns.anomaly`
//! too, and a lookup with any kind is always exported (see `telemetry`).

pub mod journal;

use std::collections::HashMap;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::CounterWithExemplar;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::lookup::LookupObserver;
use crate::metrics::{CounterTable, QtypeLabel};
use crate::record::{Attempt, Kind, LookupOutcome, LookupRecord, Outcome};
use crate::wire::{QTYPE_A, QTYPE_AAAA};

/// A and AAAA of one name from one socket this close together are "sent in parallel".
const PARALLEL_WINDOW: Duration = Duration::from_millis(50);

fn is_empty_noerror(a: &Attempt) -> bool {
    a.query.rcode == 0 && a.query.answers == 0 && matches!(a.query.qtype, QTYPE_A | QTYPE_AAAA)
}

/// An AAAA NODATA whose A twin (same name, same lookup) has data: an IPv4-only name.
fn is_ordinary_aaaa_nodata(a: &Attempt, lookup: &LookupRecord) -> bool {
    a.query.qtype == QTYPE_AAAA
        && lookup
            .attempts
            .iter()
            .any(|b| b.query.qtype == QTYPE_A && b.qname == a.qname && b.query.has_data())
}

/// Pairs (index of A, index of AAAA) sent in parallel from one socket.
fn parallel_pairs(lookup: &LookupRecord) -> Vec<(usize, usize)> {
    let mut pairs = Vec::new();
    for (i, a) in lookup
        .attempts
        .iter()
        .enumerate()
        .filter(|(_, a)| a.query.qtype == QTYPE_A)
    {
        let twin = lookup.attempts.iter().enumerate().find(|(_, b)| {
            b.query.qtype == QTYPE_AAAA
                && b.qname == a.qname
                && b.query.client == a.query.client
                && abs_diff(b.query.received, a.query.received) <= PARALLEL_WINDOW
        });
        if let Some((j, _)) = twin {
            pairs.push((i, j));
        }
    }
    pairs
}

fn abs_diff(a: std::time::Instant, b: std::time::Instant) -> Duration {
    a.saturating_duration_since(b)
        .max(b.saturating_duration_since(a))
}

/// Retries: (index of the repeat, gap since the previous ask of the same name and type from
/// the same client socket). Resolvers resend on the socket they asked from; a second
/// `getaddrinfo` of the same name opens a new socket and is not a retry. Attempts are in
/// arrival order.
fn retries(lookup: &LookupRecord) -> Vec<(usize, Duration)> {
    let mut last_seen: HashMap<
        (&str, u16, u16, u16),
        std::time::Instant,
        foldhash::fast::RandomState,
    > = HashMap::default();
    let mut out = Vec::new();
    for (i, a) in lookup.attempts.iter().enumerate() {
        let key = (
            a.qname.as_str(),
            a.query.qtype,
            a.query.client.port(),
            a.query.id,
        );
        if let Some(previous) = last_seen.insert(key, a.query.received) {
            out.push((i, a.query.received.saturating_duration_since(previous)));
        }
    }
    out
}

/// The anomaly kinds of one lookup, sorted, without repeats.
pub fn kinds(lookup: &LookupRecord) -> Vec<Kind> {
    let mut kinds = Vec::new();
    for a in &lookup.attempts {
        if is_empty_noerror(a) && !is_ordinary_aaaa_nodata(a, lookup) {
            if a.suffix.is_some() {
                kinds.push(Kind::EmptyNoerrorSearch);
            }
            if !a.query.authority_soa {
                kinds.push(Kind::EmptyNoerrorNoSoa);
            }
        }
        for t in &a.query.tries {
            match t.outcome {
                Outcome::Timeout => kinds.push(Kind::UpstreamTimeout),
                Outcome::ServFail | Outcome::Refused => kinds.push(Kind::UpstreamError),
                _ => {}
            }
        }
    }
    let retried = retries(lookup);
    if !retried.is_empty() {
        kinds.push(Kind::ClientRetry);
    }
    if race_suspected(lookup, &retried) > 0 {
        kinds.push(Kind::ParallelRace);
    }
    kinds.sort();
    kinds.dedup();
    kinds
}

/// Parallel pairs one of whose queries the client asked again (the other was answered).
fn race_suspected(lookup: &LookupRecord, retried: &[(usize, Duration)]) -> usize {
    parallel_pairs(lookup)
        .into_iter()
        .filter(|&(a, aaaa)| {
            let asked_again = |i: usize| {
                let first = &lookup.attempts[i];
                retried.iter().any(|&(r, _)| {
                    let again = &lookup.attempts[r];
                    r > i && again.qname == first.qname && again.query.qtype == first.query.qtype
                })
            };
            asked_again(a) != asked_again(aaaa)
        })
        .count()
}

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

crate::metrics::label_value_from_as_str!(Flag);

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

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct QtypeLabels {
    qtype: QtypeLabel,
}

/// What the detectors remember across lookups, keyed by (client socket, name, qtype):
/// a retry or a late twin arrives seconds later, after the first lookup has ended. Bounded:
/// at most `RECENT_CAP` entries, oldest evicted and counted; entries older than
/// `RECENT_WINDOW` no longer match.
/// (client socket, hash of the name, qtype): a 64-bit hash rather than the name keeps the
/// per-query work allocation-free; a collision could at worst pair two names once.
type QuestionKey = (std::net::SocketAddr, u64, u16);

fn question_key(a: &Attempt, qtype: u16) -> QuestionKey {
    use std::hash::BuildHasher;
    (a.query.client, NAME_HASH.hash_one(a.qname.as_str()), qtype)
}

/// A fixed-seed hasher, so equal names hash equally across lookups.
const NAME_HASH: foldhash::fast::FixedState =
    foldhash::fast::FixedState::with_seed(0x0064_6e73_6c65_6e73);
/// (when it was asked, the client's message ID)
type Asked = (std::time::Instant, u16);

struct Recent {
    seen: HashMap<QuestionKey, Asked, foldhash::fast::RandomState>,
    order: std::collections::VecDeque<(QuestionKey, Asked)>,
    evicted: Counter,
}

const RECENT_CAP: usize = 4096;
const RECENT_WINDOW: Duration = Duration::from_secs(12);
/// A twin arriving sooner than this is not "late": resolvers time out after 1 s at least.
const LATE_TWIN: Duration = Duration::from_millis(500);

impl Recent {
    fn new(evicted: Counter) -> Recent {
        Recent {
            seen: HashMap::default(),
            order: std::collections::VecDeque::new(),
            evicted,
        }
    }

    /// Forgets and returns how long ago `qtype` for `a`'s socket and name was remembered
    /// (and the message ID it had then), if within the window.
    fn take(&mut self, a: &Attempt, qtype: u16) -> Option<(Duration, u16)> {
        let key = question_key(a, qtype);
        let (at, id) = self.seen.remove(&key)?;
        let gap = a.query.received.saturating_duration_since(at);
        (gap <= RECENT_WINDOW).then_some((gap, id))
    }

    fn remember(&mut self, a: &Attempt, qtype: u16) {
        let key = question_key(a, qtype);
        if self.seen.len() >= RECENT_CAP && !self.seen.contains_key(&key) {
            while let Some((old, at)) = self.order.pop_front() {
                if self.seen.get(&old) == Some(&at) {
                    self.seen.remove(&old);
                    self.evicted.inc();
                    break;
                }
            }
        }
        let value = (a.query.received, a.query.id);
        self.seen.insert(key, value);
        self.order.push_back((key, value));
        if self.order.len() > 2 * RECENT_CAP {
            let seen = &self.seen;
            self.order.retain(|(k, at)| seen.get(k) == Some(at));
        }
    }
}

/// Counts what the detectors find; runs in the lookup tracker.
pub struct Detectors {
    journal: journal::Journal,
    clock: crate::record::Clock,
    /// Lookups with each anomaly kind (what the journal and alerts use).
    anomalies: Vec<CounterWithExemplar<TraceLabels>>,
    /// Every A/AAAA/other question asked, for retries.
    asked: Recent,
    /// A/AAAA questions whose twin did not come with them, keyed by the missing qtype.
    lonely: Recent,
    empty_noerror: CounterTable<EmptyNoerrorLabels>,
    search_expansion: Family<OutcomeLabels, Counter>,
    lookups: Family<OutcomeLabels, Counter>,
    attempts: Histogram,
    retries: CounterTable<QtypeLabels>,
    retry_gap: Histogram,
    parallel: Counter,
    race_suspected: Counter,
    ndots_hints: Counter,
    /// Base names journaled with an ndots hint lately (one note per name per 10 minutes).
    hinted: HashMap<String, std::time::Instant, foldhash::fast::RandomState>,
}

/// How often one name gets an ndots note in the journal, and how many names are remembered.
const HINT_EVERY: Duration = Duration::from_secs(600);
const HINTED_NAMES: usize = 4096;

/// A lookup that walked the search list and was answered by the absolute name: with a
/// lower ndots (or a trailing dot) it would have taken one query pair.
pub fn ndots_hint(lookup: &LookupRecord) -> bool {
    lookup.outcome == LookupOutcome::Answered
        && lookup.answered_by().is_some_and(|a| a.suffix.is_none())
        && lookup.attempts.iter().any(|a| a.suffix.is_some())
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
        let anomalies: Vec<CounterWithExemplar<TraceLabels>> = Kind::ALL
            .iter()
            .map(|kind| {
                anomalies
                    .get_or_create(&KindLabels {
                        kind: kind.as_str(),
                    })
                    .clone()
            })
            .collect();
        // The series dashboards and alerts read exist at 0 from the start too.
        for outcome in LookupOutcome::ALL {
            let _ = lookups.get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            });
        }
        for outcome in ["answer", "nodata", "nxdomain", "servfail"] {
            let _ = search_expansion.get_or_create(&OutcomeLabels { outcome });
        }
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
            clock: crate::record::Clock::now(),
            anomalies,
            asked: Recent::new(evicted.clone()),
            lonely: Recent::new(evicted),
            empty_noerror,
            search_expansion,
            lookups,
            attempts,
            retries,
            retry_gap,
            parallel,
            race_suspected,
            ndots_hints,
            hinted: HashMap::default(),
        }
    }

    /// Counts an ndots hint; true when the journal should note it (not noted for this name
    /// in the last 10 minutes).
    fn note_ndots_hint(&mut self, lookup: &LookupRecord) -> bool {
        if !ndots_hint(lookup) {
            return false;
        }
        self.ndots_hints.inc();
        let now = lookup.end;
        if self
            .hinted
            .get(&lookup.base)
            .is_some_and(|at| now.saturating_duration_since(*at) < HINT_EVERY)
        {
            return false;
        }
        if self.hinted.len() >= HINTED_NAMES {
            self.hinted
                .retain(|_, at| now.saturating_duration_since(*at) < HINT_EVERY);
            if self.hinted.len() >= HINTED_NAMES {
                self.hinted.clear();
            }
        }
        self.hinted.insert(lookup.base.clone(), now);
        true
    }
}

impl Detectors {
    /// Whether the A/AAAA twin of `a` was asked from the same socket within the parallel
    /// window of `first` (when `a` was first asked) and has not been asked again since.
    fn twin_sent_with(&self, a: &Attempt, first: Option<std::time::Instant>) -> bool {
        let twin = match a.query.qtype {
            QTYPE_A => QTYPE_AAAA,
            QTYPE_AAAA => QTYPE_A,
            _ => return false,
        };
        let (Some(first), Some((twin_at, _))) =
            (first, self.asked.seen.get(&question_key(a, twin)))
        else {
            return false;
        };
        abs_diff(*twin_at, first) <= PARALLEL_WINDOW
    }

    /// Retries and late twins, which span lookups: counted against what was remembered,
    /// then this lookup's questions (and its lonely A/AAAA) are remembered.
    fn across_lookups(&mut self, lookup: &LookupRecord) -> Vec<Kind> {
        let mut found = Vec::new();
        for a in &lookup.attempts {
            // A retransmission repeats the message ID; a new question with another ID from a
            // long-lived socket (a load generator, a caching stub) is not a retry.
            if let Some((gap, _)) = self
                .asked
                .take(a, a.query.qtype)
                .filter(|(_, id)| *id == a.query.id)
            {
                found.push(Kind::ClientRetry);
                let qtype = QtypeLabel::from_qtype(a.query.qtype);
                self.retries
                    .get(qtype.index(), || QtypeLabels { qtype })
                    .inc();
                self.retry_gap.observe(gap.as_secs_f64());
                // Retried, while its twin sent with it was not: one of a parallel pair lost.
                if self.twin_sent_with(a, a.query.received.checked_sub(gap)) {
                    found.push(Kind::ParallelRace);
                    self.race_suspected.inc();
                }
            }
            self.asked.remember(a, a.query.qtype);
            if matches!(a.query.qtype, QTYPE_A | QTYPE_AAAA)
                && self
                    .lonely
                    .take(a, a.query.qtype)
                    .is_some_and(|(gap, _)| gap >= LATE_TWIN)
            {
                found.push(Kind::ParallelRace);
                self.race_suspected.inc();
            }
        }
        for a in &lookup.attempts {
            let twin = match a.query.qtype {
                QTYPE_A => QTYPE_AAAA,
                QTYPE_AAAA => QTYPE_A,
                _ => continue,
            };
            // A twin that got no real answer (SERVFAIL: its answer was withheld or lost
            // upstream) counts as missing: the client will send it again.
            let has_twin = lookup.attempts.iter().any(|b| {
                b.query.qtype == twin
                    && b.qname == a.qname
                    && b.query.client == a.query.client
                    && b.query.rcode != 2
            });
            if !has_twin {
                self.lonely.remember(a, twin);
            }
        }
        found
    }
}

fn query_outcome(a: &Attempt) -> &'static str {
    match a.query.rcode {
        0 if a.query.answers > 0 => "answer",
        0 => "nodata",
        3 => "nxdomain",
        _ => "servfail",
    }
}

impl LookupObserver for Detectors {
    /// Finds the lookup's kinds — its own, and retries and late twins remembered across
    /// lookups — and writes them on the record, so its trace carries them too.
    fn annotate(&mut self, lookup: &mut LookupRecord) {
        let mut found = kinds(lookup);
        found.extend(self.across_lookups(lookup));
        found.sort();
        found.dedup();
        lookup.anomalies = found;
    }

    fn observe(&mut self, lookup: &LookupRecord) {
        let mut found = lookup.anomalies.clone();
        // The lookup's trace id rides along as an OpenMetrics exemplar: a dashboard jumps
        // from the counter to the trace (anomalous lookups are always exported, see
        // `telemetry`).
        let exemplar = TraceLabels {
            trace_id: format!("{:032x}", lookup.trace_id),
        };
        for kind in &found {
            self.anomalies[*kind as usize].inc_by(1, Some(exemplar.clone()), None);
        }
        if self.note_ndots_hint(lookup) {
            found.push(Kind::NdotsHint);
        }
        if !found.is_empty() {
            self.journal.record(lookup, &found, &self.clock);
        }
        self.lookups
            .get_or_create(&OutcomeLabels {
                outcome: lookup.outcome.as_str(),
            })
            .inc();
        self.attempts.observe(lookup.attempts.len() as f64);
        for a in &lookup.attempts {
            if a.suffix.is_some() {
                self.search_expansion
                    .get_or_create(&OutcomeLabels {
                        outcome: query_outcome(a),
                    })
                    .inc();
            }
            if is_empty_noerror(a) {
                let qtype = QtypeLabel::from_qtype(a.query.qtype);
                let (search, soa) = (a.suffix.is_some(), a.query.authority_soa);
                empty_noerror_counter(&self.empty_noerror, qtype, search, soa).inc();
            }
        }
        self.parallel.inc_by(parallel_pairs(lookup).len() as u64);
        // Retries and races are counted in `across_lookups`, which sees a lookup's own
        // repeats as well as those that come after it ended.
    }
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
