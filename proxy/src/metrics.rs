//! Metric plumbing shared by the components: the registry they register into, the bounded
//! label values they use, and a table of counter handles resolved once.
//!
//! Each component declares its own metric families next to the code that updates them
//! (`listen::ListenMetrics`, `forward::upstream::UpstreamFamilies`, …) and registers them here under the
//! `dnslens` prefix. Labels are closed enums, never a query name, so series stay bounded.
//! On the hot path a counter is one array index and one atomic add: [`CounterTable`] creates
//! the labelled series on first use and keeps the handle.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Transport a message travelled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Transport::Udp, Transport::Tcp];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// Record types worth a series of their own; everything else is `OTHER`.
const QTYPES: [(u16, &str); 14] = [
    (1, "A"),
    (2, "NS"),
    (5, "CNAME"),
    (6, "SOA"),
    (12, "PTR"),
    (15, "MX"),
    (16, "TXT"),
    (28, "AAAA"),
    (33, "SRV"),
    (35, "NAPTR"),
    (64, "SVCB"),
    (65, "HTTPS"),
    (255, "ANY"),
    (0, "OTHER"),
];

/// A QTYPE folded into the bounded set above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QtypeLabel(u8);

impl QtypeLabel {
    pub const COUNT: usize = QTYPES.len();

    pub fn from_qtype(qtype: u16) -> Self {
        let index = QTYPES
            .iter()
            .position(|(code, _)| *code == qtype)
            .unwrap_or(QTYPES.len() - 1);
        QtypeLabel(index as u8)
    }

    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    pub fn as_str(self) -> &'static str {
        QTYPES[self.index()].1
    }
}

/// RCODE names (RFC 1035, 2136 and 6895); codes above 10 are `OTHER`.
const RCODES: [&str; 12] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
    "NXRRSET", "NOTAUTH", "NOTZONE", "OTHER",
];

/// A 4-bit header RCODE as a bounded label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RcodeLabel(u8);

impl RcodeLabel {
    pub const COUNT: usize = RCODES.len();

    pub fn from_rcode(rcode: u8) -> Self {
        RcodeLabel(rcode.min((RCODES.len() - 1) as u8))
    }

    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    pub fn as_str(self) -> &'static str {
        RCODES[self.index()]
    }
}

/// Implements `EncodeLabelValue` for types with an `as_str` method (closed label sets).
macro_rules! label_value_from_as_str {
    ($($t:ty),*) => {$(
        impl ::prometheus_client::encoding::EncodeLabelValue for $t {
            fn encode(
                &self,
                encoder: &mut ::prometheus_client::encoding::LabelValueEncoder<'_>,
            ) -> ::std::fmt::Result {
                ::std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    )*};
}
pub(crate) use label_value_from_as_str;
label_value_from_as_str!(Transport, QtypeLabel, RcodeLabel);

/// A reason label: a static string from a closed set chosen by the code that counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Counter handles of one family, indexed by a dense key, created on first use and kept.
pub struct CounterTable<L> {
    family: Family<L, Counter>,
    cells: Box<[OnceLock<Counter>]>,
}

impl<L> CounterTable<L>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    pub fn new(family: Family<L, Counter>, size: usize) -> Self {
        CounterTable {
            family,
            cells: (0..size).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The counter at `index`, labelled by `labels()` the first time it is used.
    pub fn get(&self, index: usize, labels: impl FnOnce() -> L) -> &Counter {
        self.cells[index].get_or_init(|| self.family.get_or_create(&labels()).clone())
    }
}

/// Reason-labelled drop counters for a fixed list of reasons.
pub struct ReasonCounters {
    reasons: &'static [&'static str],
    counters: Vec<Counter>,
}

impl ReasonCounters {
    pub fn new(family: &Family<ReasonLabels, Counter>, reasons: &'static [&'static str]) -> Self {
        let counters = reasons
            .iter()
            .map(|reason| family.get_or_create(&ReasonLabels { reason }).clone())
            .collect();
        ReasonCounters { reasons, counters }
    }

    /// Counts one drop. An unknown reason is a programming error; it is counted under the
    /// first reason rather than lost.
    pub fn inc(&self, reason: &str) {
        self.inc_by(reason, 1);
    }

    pub fn inc_by(&self, reason: &str, n: u64) {
        self.counters[self.index(reason)].inc_by(n);
    }

    /// The counter of one reason, to count on without the lookup.
    pub fn handle(&self, reason: &str) -> Counter {
        self.counters[self.index(reason)].clone()
    }

    fn index(&self, reason: &str) -> usize {
        self.reasons.iter().position(|r| *r == reason).unwrap_or(0)
    }
}
