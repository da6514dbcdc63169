//! What a run measured: counts, failures by reason, and lookup and query latency as HDR
//! histograms (µs, 3 significant digits), printed as a table and written as JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::model::{Lookup, Outcome};

/// Counts and histograms, filled as lookups end.
pub struct Stats {
    pub lookups: u64,
    pub queries: u64,
    pub failures: BTreeMap<&'static str, u64>,
    /// Open loop: lookups not started because `--max-inflight` were already waiting.
    pub dropped: u64,
    pub lookup_latency: Histogram<u64>,
    pub query_latency: Histogram<u64>,
}

impl Stats {
    pub fn new() -> Stats {
        let histogram = || {
            // 1 µs .. 1 h, 3 significant digits.
            Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
        };
        Stats {
            lookups: 0,
            queries: 0,
            failures: Outcome::FAILURES.iter().map(|o| (o.as_str(), 0)).collect(),
            dropped: 0,
            lookup_latency: histogram(),
            query_latency: histogram(),
        }
    }

    /// A finished lookup; `latency` from its scheduled start (open loop) or its start.
    pub fn record(&mut self, lookup: &Lookup, latency: Duration) {
        self.lookups += 1;
        self.queries += u64::from(lookup.queries);
        if let Some(outcome) = lookup.outcome.filter(|o| *o != Outcome::Answered) {
            *self.failures.entry(outcome.as_str()).or_default() += 1;
        }
        self.lookup_latency.saturating_record(micros(latency));
        for q in &lookup.query_latencies {
            self.query_latency.saturating_record(micros(*q));
        }
    }

    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    pub fn report(&self, run: RunInfo) -> Report {
        let cdf = [
            0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 99.0, 99.5, 99.9,
            99.95, 99.99, 100.0,
        ]
        .iter()
        .map(|p| (*p, self.lookup_latency.value_at_percentile(*p)))
        .collect();
        Report {
            run,
            lookups: self.lookups,
            queries: self.queries,
            failed_lookups: self.failed(),
            failures: self
                .failures
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            dropped_lookups: self.dropped,
            lookup_latency_us: Percentiles::of(&self.lookup_latency),
            query_latency_us: Percentiles::of(&self.query_latency),
            lookup_latency_cdf_us: cdf,
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// How the run was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub model: String,
    pub server: String,
    /// `open` (a fixed rate) or `closed` (a concurrency).
    pub mode: String,
    pub rate: Option<f64>,
    pub concurrency: Option<usize>,
    pub duration_s: f64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        Percentiles {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// The `--json` output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub run: RunInfo,
    pub lookups: u64,
    pub queries: u64,
    pub failed_lookups: u64,
    pub failures: BTreeMap<String, u64>,
    pub dropped_lookups: u64,
    pub lookup_latency_us: Percentiles,
    pub query_latency_us: Percentiles,
    /// (percentile, µs) points of the lookup latency distribution, for plots.
    pub lookup_latency_cdf_us: Vec<(f64, u64)>,
}

impl Report {
    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let r = &self.run;
        let load = match (r.rate, r.concurrency) {
            (Some(rate), _) => format!("open loop at {rate} lookups/s"),
            (_, Some(n)) => format!("closed loop, {n} at a time"),
            _ => String::new(),
        };
        let per = if self.lookups > 0 {
            self.queries as f64 / self.lookups as f64
        } else {
            0.0
        };
        let failures: Vec<String> = self
            .failures
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let row = |name: &str, p: &Percentiles| {
            format!(
                "{name:<8}{:>10}{:>10}{:>10}{:>10}{:>10}\n",
                p.p50, p.p90, p.p99, p.p999, p.max
            )
        };
        format!(
            "dnslens-load: {} model, {load}, {:.0} s, against {}\n\
             lookups {} ({:.0}/s), queries {} ({per:.1} per lookup), failed {} ({}){}\n\
             µs      {:>10}{:>10}{:>10}{:>10}{:>10}\n{}{}",
            r.model,
            r.duration_s,
            r.server,
            self.lookups,
            self.lookups as f64 / r.duration_s.max(0.001),
            self.queries,
            self.failed_lookups,
            failures.join(", "),
            if self.dropped_lookups > 0 {
                format!(
                    ", not started (generator overloaded) {}",
                    self.dropped_lookups
                )
            } else {
                String::new()
            },
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            row("lookup", &self.lookup_latency_us),
            row("query", &self.query_latency_us),
        )
    }
}
