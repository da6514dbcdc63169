//! Which lookups become traces: every failed or anomalous one (within per-second and
//! per-name budgets), others by `sample_ratio`, all spans of a lookup or none. The observer
//! runs in the tracker thread and hands kept lookups to the export thread.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::settings::ExportSettings;
use super::TelemetryMetrics;
use crate::lookup::{FastHash, LookupObserver};
use dnslens_datapath::record::{Kind, LookupRecord};

/// A lookup kept for export, on its way to the export thread, which builds its spans.
pub(super) struct Kept {
    pub(super) lookup: LookupRecord,
    pub(super) anomalies: Vec<Kind>,
}

/// How many spans [`lookup_spans`] makes of a lookup: the root, one per query, one per try.
pub(super) fn span_count(lookup: &LookupRecord) -> usize {
    1 + lookup
        .attempts
        .iter()
        .map(|a| 1 + a.query.tries.len())
        .sum::<usize>()
}

/// Decides per finished lookup whether to export it, and queues its spans.
pub struct OtlpObserver {
    pub(super) tx: mpsc::UnboundedSender<Kept>,
    /// Spans queued and not yet taken by the export thread; bounded by `capacity`.
    pub(super) queued: Arc<AtomicUsize>,
    pub(super) capacity: usize,
    pub(super) sample_ratio: f64,
    pub(super) metrics: TelemetryMetrics,
    pub(super) forced: ForcedBudget,
}

impl OtlpObserver {
    /// The observer feeding the export thread through `tx`; `queued` counts the spans on
    /// their way (the export thread takes them off).
    pub(super) fn new(
        settings: &ExportSettings,
        tx: mpsc::UnboundedSender<Kept>,
        queued: Arc<AtomicUsize>,
        metrics: TelemetryMetrics,
    ) -> OtlpObserver {
        OtlpObserver {
            tx,
            queued,
            capacity: settings.queue,
            sample_ratio: settings.sample_ratio,
            metrics,
            forced: ForcedBudget::new(
                settings.keep_anomalous_per_second,
                settings.keep_anomalous_per_name_per_second,
            ),
        }
    }

    /// Lookups that went wrong are kept within their budget; the rest by ratio.
    fn keep(&mut self, lookup: &LookupRecord, anomalies: &[Kind]) -> bool {
        if (lookup.outcome.is_failure() || !anomalies.is_empty())
            && self.forced.admit(&lookup.base, Instant::now())
        {
            return true;
        }
        self.sample_ratio > 0.0 && rand::random::<f64>() < self.sample_ratio
    }
}

/// The budget of lookups kept because they went wrong: `per_second` in all, and `per_name`
/// a second for any one base name (0: no such limit). A flood of one broken name then
/// leaves room for the others, and its traces are examples rather than a copy of the flood;
/// the counters and the journal still see every one.
pub(super) struct ForcedBudget {
    pub(super) per_second: u32,
    pub(super) per_name: u32,
    pub(super) second: Instant,
    pub(super) kept: u32,
    /// Lookups kept this second by hashed base name: at most `per_second` entries.
    pub(super) by_name: HashMap<u64, u32, FastHash>,
}

impl ForcedBudget {
    pub(super) fn new(per_second: u32, per_name: u32) -> ForcedBudget {
        ForcedBudget {
            per_second,
            per_name,
            second: Instant::now(),
            kept: 0,
            by_name: HashMap::default(),
        }
    }

    pub(super) fn admit(&mut self, base: &str, now: Instant) -> bool {
        if now.duration_since(self.second) >= Duration::from_secs(1) {
            self.second = now;
            self.kept = 0;
            self.by_name.clear();
        }
        if self.kept >= self.per_second {
            return false;
        }
        if self.per_name > 0 {
            let hash = self.by_name.hasher().hash_one(base);
            let kept_for_name = self.by_name.entry(hash).or_insert(0);
            if *kept_for_name >= self.per_name {
                return false;
            }
            *kept_for_name += 1;
        }
        self.kept += 1;
        true
    }
}

impl LookupObserver for OtlpObserver {
    fn observe(&mut self, lookup: &LookupRecord) {
        // The detectors' verdict (with retries and late twins seen across lookups).
        let anomalies: &[Kind] = &lookup.anomalies;
        if !self.keep(lookup, anomalies) {
            self.metrics.sampled_out.inc();
            return;
        }
        let n = span_count(lookup);
        if self.queued.load(Ordering::Relaxed) + n > self.capacity {
            self.metrics.dropped.inc_by("queue_full", n as u64);
            return;
        }
        self.queued.fetch_add(n, Ordering::Relaxed);
        let kept = Kept {
            lookup: lookup.clone(),
            anomalies: anomalies.to_vec(),
        };
        if self.tx.send(kept).is_err() {
            self.queued.fetch_sub(n, Ordering::Relaxed);
        }
    }
}
