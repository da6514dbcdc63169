//! The anomaly journal: a bounded in-memory ring of anomalous lookups that answers "which
//! lookups were abnormal in this time window, and why?" — anomalies only (the kinds of
//! `dnslens_anomalies_total`). Written by the detectors (in the lookup tracker), read by
//! `GET /debug/anomalies?since=10m&kind=K` or `?from=…&to=…` (RFC 3339 or unix seconds; JSON,
//! newest first) and by `dnslens anomalies`, which prints it as a table with an explanation
//! of each kind.
//!
//! Tuning hints are not entries: a lookup that walked the whole search list before the name
//! itself answered is added to a per-name tally (`?hints=1`, `dnslens anomalies --hints`):
//! the names that cost the most queries, with the advice. At most 4,096 names are tallied;
//! when full, names seen once are dropped (then all, if every name was seen more than once).
//!
//! Config: `journal: {entries}` [10000]; the oldest entry goes when it is full.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use dnslens_datapath::metrics::{QtypeLabel, RcodeLabel};
use dnslens_datapath::record::{Clock, Kind, LookupRecord};

/// The anomaly journal (see `anomaly::journal`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Anomalous lookups kept; the oldest goes first.
    pub entries: usize,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig { entries: 10_000 }
    }
}

/// Queries kept per journal entry: a `getaddrinfo` walk is at most about a dozen; a
/// longer lookup (a client hammering one name) keeps its first ones. With `journal.entries`
/// this bounds the journal's memory (10,000 entries: about 20 MB at worst).
const MAX_QUERIES_PER_ENTRY: usize = 12;

/// One query of a journaled lookup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryQuery {
    pub name: String,
    pub qtype: String,
    /// Search-list position, or `absolute`.
    pub search: String,
    pub rcode: String,
    pub answers: u16,
    pub soa: bool,
    pub upstreams: Vec<String>,
    /// When the query arrived, counted from the lookup's first query (a 1 s or 5 s gap
    /// before a resend shows here).
    #[serde(default)]
    pub offset_ms: f64,
    pub duration_ms: f64,
    /// The client's retransmission of an earlier query of the lookup (same ID, question).
    #[serde(default)]
    pub retransmission: bool,
}

/// One anomalous lookup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Unix time (seconds) of the lookup's first query.
    pub time: f64,
    pub client: String,
    pub base: String,
    pub outcome: String,
    pub kinds: Vec<String>,
    pub queries: Vec<EntryQuery>,
    /// The longest a client waited before asking again (a retry, or a late A/AAAA twin):
    /// its resolver timeout as dnslens saw it.
    #[serde(default)]
    pub waited_ms: Option<f64>,
    /// More lookups of the same client, name and kinds within a second of this one, folded
    /// into it (a flood of one anomaly is one entry a second, not thousands).
    #[serde(default)]
    pub repeats: u32,
    /// The lookup's trace id (32 hex digits), exported or not: the link to its trace.
    #[serde(default)]
    pub trace_id: String,
    /// Which pod asked (node-local with pod identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_identity: Option<EntryIdentity>,
    /// The dnslens that saw the lookup (its pod, else its node): set when read from a
    /// tracing backend across the cluster (see `cluster`), absent in a local journal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// Which entries a reader wants: every field given must match exactly.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EntryFilter {
    pub kind: Option<Kind>,
    /// The client's namespace (pod identity).
    pub namespace: Option<String>,
    /// The client's workload name (pod identity).
    pub workload: Option<String>,
    /// The lookup's base name.
    pub name: Option<String>,
}

impl EntryFilter {
    pub fn matches(&self, entry: &Entry) -> bool {
        let identity = entry.client_identity.as_ref();
        self.kind
            .is_none_or(|k| entry.kinds.iter().any(|x| x == k.as_str()))
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| identity.is_some_and(|id| &id.namespace == ns))
            && self
                .workload
                .as_ref()
                .is_none_or(|w| identity.is_some_and(|id| &id.workload == w))
            && self.name.as_ref().is_none_or(|n| &entry.base == n)
    }
}

/// The client's pod, as pod identity knew it when the lookup was reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryIdentity {
    pub namespace: String,
    pub pod: String,
    pub workload_kind: String,
    pub workload: String,
    /// The watch on the API server was down longer than `pod_identity.stale_after`.
    #[serde(default)]
    pub stale: bool,
}

impl EntryIdentity {
    fn of(client: &dnslens_datapath::record::ClientIdentity) -> EntryIdentity {
        EntryIdentity {
            namespace: client.pod.namespace.clone(),
            pod: client.pod.pod.clone(),
            workload_kind: client.pod.workload_kind.clone(),
            workload: client.pod.workload.clone(),
            stale: client.stale,
        }
    }

    /// `namespace/pod`, with a mark when stale.
    pub fn label(&self) -> String {
        let stale = if self.stale { " (stale)" } else { "" };
        format!("{}/{}{stale}", self.namespace, self.pod)
    }
}

impl Entry {
    pub fn from_lookup(lookup: &LookupRecord, kinds: &[Kind], clock: &Clock) -> Entry {
        let time = clock
            .at(lookup.start)
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Entry {
            time,
            client: lookup.client.to_string(),
            base: lookup.base.clone(),
            outcome: lookup.outcome.as_str().to_string(),
            kinds: kinds.iter().map(|k| k.as_str().to_string()).collect(),
            queries: lookup
                .attempts
                .iter()
                .take(MAX_QUERIES_PER_ENTRY)
                .map(|a| EntryQuery {
                    name: a.qname.clone(),
                    qtype: QtypeLabel::from_qtype(a.query.qtype).as_str().to_string(),
                    search: a
                        .suffix
                        .as_ref()
                        .map_or("absolute".to_string(), |(i, _)| format!("suffix {i}")),
                    rcode: RcodeLabel::from_rcode(a.query.rcode).as_str().to_string(),
                    answers: a.query.answers,
                    soa: a.query.authority_soa,
                    upstreams: a
                        .query
                        .tries
                        .iter()
                        .map(|t| {
                            format!(
                                "{} {} {}",
                                t.upstream,
                                t.transport.as_str(),
                                t.outcome.as_str()
                            )
                        })
                        .collect(),
                    offset_ms: lookup.offset(a).as_secs_f64() * 1e3,
                    duration_ms: a
                        .query
                        .answered
                        .saturating_duration_since(a.query.received)
                        .as_secs_f64()
                        * 1e3,
                    retransmission: a.retransmission,
                })
                .collect(),
            waited_ms: lookup.waited.map(|w| w.as_secs_f64() * 1e3),
            repeats: 0,
            trace_id: format!("{:032x}", lookup.trace_id),
            client_identity: lookup.client_identity.as_ref().map(EntryIdentity::of),
            instance: None,
        }
    }
}

/// A time window of the journal, in unix seconds, both ends included.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub from: f64,
    pub to: f64,
}

impl Window {
    /// The last `since`, up to now.
    pub fn last(since: Duration) -> Window {
        let now = unix_now();
        Window {
            from: now - since.as_secs_f64(),
            to: now,
        }
    }

    /// From query parameters: `from`/`to` (RFC 3339 or unix seconds; `to` defaults to now)
    /// when `from` is given, else the last `since` (a duration, default 10m). One-line error.
    pub fn parse(
        since: Option<&str>,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Window, String> {
        let to = to
            .map(|t| parse_time(t).map_err(|e| format!("to: {e}")))
            .transpose()?;
        let Some(from) = from else {
            let since = since
                .map(humantime::parse_duration)
                .transpose()
                .map_err(|e| format!("since: {e}"))?
                .unwrap_or(Duration::from_secs(600));
            let mut window = Window::last(since);
            if let Some(to) = to {
                window.from = to - since.as_secs_f64();
                window.to = to;
            }
            return Ok(window);
        };
        let from = parse_time(from).map_err(|e| format!("from: {e}"))?;
        let to = to.unwrap_or_else(unix_now);
        if to < from {
            return Err("to: before from".to_string());
        }
        Ok(Window { from, to })
    }
}

/// RFC 3339 (`2026-11-30T04:00:00Z`) or unix seconds.
fn parse_time(text: &str) -> Result<f64, String> {
    if let Ok(seconds) = text.parse::<f64>() {
        return Ok(seconds);
    }
    humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("'{text}' is neither RFC 3339 nor unix seconds ({e})"))?
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .map_err(|_| format!("'{text}' is before 1970"))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One base name's tally of lookups that walked the whole search list before the name itself
/// answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hint {
    pub base: String,
    pub lookups: u64,
    /// Queries those lookups sent (the walk's noise and the answer).
    pub queries: u64,
}

/// Names tallied at most.
const HINT_NAMES: usize = 4096;

/// The ring, shared by its writer (the detectors) and its readers (the admin endpoint).
#[derive(Clone)]
pub struct Journal {
    entries: Arc<Mutex<VecDeque<Entry>>>,
    capacity: usize,
    hints: Arc<Mutex<HashMap<String, (u64, u64)>>>,
}

impl Journal {
    pub fn new(capacity: usize) -> Journal {
        Journal {
            entries: Arc::new(Mutex::new(VecDeque::new())),
            capacity: capacity.max(1),
            hints: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Tallies a lookup of `base` that walked the search list before the name answered.
    pub fn note_hint(&self, base: &str, queries: usize) {
        let mut hints = self.hints.lock().unwrap_or_else(|e| e.into_inner());
        if hints.len() >= HINT_NAMES && !hints.contains_key(base) {
            hints.retain(|_, (lookups, _)| *lookups > 1);
            if hints.len() >= HINT_NAMES {
                hints.clear();
            }
        }
        let (lookups, spent) = hints.entry(base.to_string()).or_default();
        *lookups += 1;
        *spent += queries as u64;
    }

    /// The `limit` names that cost the most queries, most first.
    pub fn hints(&self, limit: usize) -> Vec<Hint> {
        let hints = self.hints.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<Hint> = hints
            .iter()
            .map(|(base, &(lookups, queries))| Hint {
                base: base.clone(),
                lookups,
                queries,
            })
            .collect();
        list.sort_by(|a, b| b.queries.cmp(&a.queries).then_with(|| a.base.cmp(&b.base)));
        list.truncate(limit);
        list
    }

    /// Journals an anomalous lookup, folding it into the newest entry when that is the same
    /// client, name, outcome and kinds less than a second earlier (then nothing is built).
    pub fn record(&self, lookup: &LookupRecord, kinds: &[Kind], clock: &Clock) {
        let time = clock
            .at(lookup.start)
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(last) = entries.back_mut() {
                let same = time - last.time < 1.0
                    && last.base == lookup.base
                    && last.outcome == lookup.outcome.as_str()
                    && last.client == lookup.client.to_string()
                    && last.kinds.len() == kinds.len()
                    && last.kinds.iter().zip(kinds).all(|(a, b)| a == b.as_str());
                if same {
                    last.repeats += 1;
                    return;
                }
            }
        }
        self.push(Entry::from_lookup(lookup, kinds, clock));
    }

    pub fn push(&self, entry: Entry) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity {
            entries.pop_front();
        }
        entries.push_back(entry);
    }

    /// The entries of `window` that `filter` wants, newest first.
    pub fn query(&self, window: &Window, filter: &EntryFilter) -> Vec<Entry> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .rev()
            .filter(|e| e.time >= window.from && e.time <= window.to)
            .filter(|e| filter.matches(e))
            .cloned()
            .collect()
    }
}
