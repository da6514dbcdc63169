//! The anomaly journal: a bounded in-memory ring of anomalous lookups that answers "what was
//! abnormal in the last 10 minutes?". Written by the detectors (in the lookup tracker),
//! read by `GET /debug/anomalies?since=10m&kind=K` (JSON, newest first) and by
//! `dnslens anomalies`, which prints it as a table with an explanation of each kind.
//!
//! Config: `journal: {entries}` [10000]; the oldest entry goes when it is full.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::metrics::{QtypeLabel, RcodeLabel};
use crate::record::{Clock, Kind, LookupRecord};

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
    pub duration_ms: f64,
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
    /// More lookups of the same client, name and kinds within a second of this one, folded
    /// into it (a flood of one anomaly is one entry a second, not thousands).
    #[serde(default)]
    pub repeats: u32,
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
                    duration_ms: a
                        .query
                        .answered
                        .saturating_duration_since(a.query.received)
                        .as_secs_f64()
                        * 1e3,
                })
                .collect(),
            repeats: 0,
        }
    }
}

/// The ring, shared by its writer (the detectors) and its readers (the admin endpoint).
#[derive(Clone)]
pub struct Journal {
    entries: Arc<Mutex<VecDeque<Entry>>>,
    capacity: usize,
}

impl Journal {
    pub fn new(capacity: usize) -> Journal {
        Journal {
            entries: Arc::new(Mutex::new(VecDeque::new())),
            capacity: capacity.max(1),
        }
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

    /// Entries of the last `since` (of one kind, if given), newest first.
    pub fn query(&self, since: Duration, kind: Option<Kind>) -> Vec<Entry> {
        let cutoff = SystemTime::now()
            .checked_sub(since)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .rev()
            .filter(|e| e.time >= cutoff)
            .filter(|e| kind.is_none_or(|k| e.kinds.iter().any(|x| x == k.as_str())))
            .cloned()
            .collect()
    }
}
