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

pub use dnslens_wire::Transport;

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
#[macro_export]
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
label_value_from_as_str!(QtypeLabel, RcodeLabel);

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
#[derive(Clone)]
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

/// The standard `process_*` metrics (as every Prometheus client library exports them:
/// `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
/// `process_start_time_seconds`, `process_threads`), read from `/proc/self` at each scrape.
/// prometheus-client has no such collector; `procfs` reads the files. Unprefixed: registered
/// on the root registry, beside the `dnslens` sub-registry. A file that cannot be read
/// leaves its series out of that scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use procfs::WithCurrentSystemInfo;
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;

        let Ok(me) = procfs::process::Process::myself() else {
            return Ok(());
        };
        let mut gauge = |name: &str, help: &str, value: f64| -> Result<(), std::fmt::Error> {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
        };
        if let Ok(stat) = me.stat() {
            let ticks = procfs::ticks_per_second() as f64;
            gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                stat.rss_bytes().get() as f64,
            )?;
            gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                stat.vsize as f64,
            )?;
            gauge(
                "process_threads",
                "Number of OS threads in the process.",
                stat.num_threads as f64,
            )?;
            if let Ok(boot) = procfs::boot_time_secs() {
                gauge(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    boot as f64 + stat.starttime as f64 / ticks,
                )?;
            }
            let cpu = ConstCounter::new((stat.utime + stat.stime) as f64 / ticks);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                cpu.metric_type(),
            )?)?;
        }
        let mut gauge = |name: &str, help: &str, value: f64| -> Result<(), std::fmt::Error> {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
        };
        if let Ok(fds) = me.fd_count() {
            gauge(
                "process_open_fds",
                "Number of open file descriptors.",
                fds as f64,
            )?;
        }
        if let Ok(limits) = me.limits() {
            if let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit {
                gauge(
                    "process_max_fds",
                    "Maximum number of open file descriptors.",
                    max as f64,
                )?;
            }
        }
        Ok(())
    }
}
