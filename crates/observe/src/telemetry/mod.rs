//! Trace export: one OpenTelemetry trace per lookup, sent over OTLP (gRPC or HTTP/protobuf).
//!
//! Span model (attribute names follow the OpenTelemetry conventions where one exists —
//! `dns.question.name`, `dns.answers`, `error.type`, `client.*`, `server.*`,
//! `network.transport` — and everything else is under `dnslens.`):
//! - `dns.lookup` (root): `dns.question.name` (the base name as asked: case kept, the
//!   unprintable escaped), `dnslens.lookup.name` (the base name lower case: exact searches),
//!   `client.address`, `dns.answers` (up to 8 addresses), `error.type` when it got none
//!   (as `getaddrinfo` fails: `host_not_found` for NXDOMAIN and NODATA, `try_again` for
//!   SERVFAIL and timeouts), `dnslens.lookup.attempts` (questions, less
//!   retransmissions), `dnslens.lookup.outcome` (answered / nxdomain / nodata / servfail /
//!   timeout), `dnslens.lookup.answered_by` (the suffix that answered, or `absolute`),
//!   `dnslens.anomaly` (its kinds, a string array), `dnslens.anomalous` and one
//!   `dnslens.anomaly.<kind>` per kind (`true`: exact tag matches, e.g. Jaeger's search),
//!   `dnslens.lookup.waited_ms` (the client's wait before asking again),
//!   `dnslens.lookup.tail` (only re-asks of an ended lookup), `dnslens.lookup.evicted`;
//!   status Error for servfail and timeout.
//! - `dns.query` (one per query received): `dns.question.name` (as asked), `dns.answers` (up to 4),
//!   `dnslens.question.type`, `dnslens.search.suffix` (or `absolute`),
//!   `dnslens.search.index` (-1 for absolute), `dnslens.response_code` and
//!   `dnslens.answer.count` (as the upstream or cache answered), `dnslens.authority.soa`
//!   (with no answer records: whether an SOA came with them), `dnslens.offset_ms` (from
//!   the lookup's start), `dnslens.retransmission`, `dnslens.cache.hit`,
//!   `network.transport`, `client.address`, `client.port`; when a mitigation acted:
//!   `dnslens.cache.stale` (served stale), `dnslens.rewrite` (`empty_noerror_to_nxdomain`:
//!   the client got NXDOMAIN), `dnslens.autopath.name` (the client got a CNAME to this name).
//! - `dns.upstream` (one per upstream try): `server.address`, `server.port`,
//!   `network.transport`, `dnslens.upstream.try`, `dnslens.upstream.outcome`; `error.type`
//!   (`timeout`, `SERVFAIL`, `REFUSED`, `connection_error`, `send_error`) and status Error
//!   when the try brought no answer.
//!
//! Timestamps are the real receive/send instants, so a 5-second client retry shows as a gap.
//!
//! Why not `tracing-opentelemetry` spans on the hot path: the keep/drop decision needs the
//! lookup's outcome, known only when it ends. So the hot path records plain data (see
//! `lookup`), and kept lookups are turned into `SpanData` here and handed to the OTLP
//! exporter directly — the SDK's `SpanExporter` is the only OpenTelemetry piece used. With
//! tracing off (no endpoint) none of this runs.
//!
//! Sampling: every lookup with a timeout, SERVFAIL or anomaly (`dnslens.anomaly` on the root,
//! see `anomaly`) is exported, up to `keep_anomalous_per_second` [100] such lookups a second
//! and `keep_anomalous_per_name_per_second` [1] for any one base name (0: no per-name limit),
//! so a flood of one broken name yields an example trace a second, not a copy of the flood;
//! others with probability `sample_ratio` (default 0.01), decided per lookup (all its spans
//! or none).
//!
//! Settings, environment winning over config: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (`tracing.endpoint`), `OTEL_EXPORTER_OTLP_PROTOCOL`
//! (`tracing.protocol`: `grpc` | `http/protobuf`), `OTEL_TRACES_SAMPLER` +
//! `OTEL_TRACES_SAMPLER_ARG` (`tracing.sample_ratio`), `OTEL_SERVICE_NAME` [dnslens],
//! `OTEL_RESOURCE_ATTRIBUTES`; `k8s.pod.name`, `k8s.namespace.name`, `k8s.node.name` from
//! `POD_NAME`, `POD_NAMESPACE`, `NODE_NAME` (the chart sets them from the downward API).
//! An `https://` endpoint is TLS (both protocols), checked against the system's roots and
//! `OTEL_EXPORTER_OTLP_CERTIFICATE` (`tracing.ca_file`, PEM), see `tls`.
//! `tracing.queue` bounds the spans waiting for export; `tracing.export_timeout` bounds one
//! export call. A slow or absent collector costs dropped spans, never DNS latency. Kept
//! lookups go to the export thread (`dnslens-otlp`, under SCHED_IDLE) as records; spans are
//! built and sent there, 64 at a time, the thread stepping aside after every 100 µs of work
//! (see `background`), so a DNS worker sharing its core waits at most about that long.
//!
//! Metrics: `dnslens_spans_exported_total`, `dnslens_spans_dropped_total{reason}`
//! (`queue_full`, `export_failed`), `dnslens_lookups_sampled_out_total`.
//!
//! Parts: `settings` (config + `OTEL_*` → [`ExportSettings`], the resource), `sampling`
//! (the [`OtlpObserver`] in the tracker thread: which lookups are kept), `spans` (a record
//! as `SpanData`), `export` (the export thread: batches, pacing, the OTLP exporter), `tls`
//! (trusted roots for https endpoints).

mod export;
mod sampling;
mod settings;
mod spans;
mod tls;

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use opentelemetry_sdk::Resource;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::lookup::LookupObserver;
use dnslens_datapath::metrics::{ReasonCounters, ReasonLabels};
use dnslens_datapath::record::LookupRecord;
pub use sampling::OtlpObserver;
pub use settings::{resource, ExportSettings, OtlpProtocol, TracingConfig, CONTAINER};
pub use tls::{client_tls, trusted_roots};

/// The lookup span's attribute names that are searched for (see `cluster`).
pub mod span_names {
    pub use super::spans::{
        ANOMALOUS, ANOMALY, CLIENT_IDENTITY_STALE, CLIENT_NAMESPACE, CLIENT_POD, CLIENT_POD_UID,
        CLIENT_WORKLOAD, CLIENT_WORKLOAD_KIND, LOOKUP_NAME,
    };
}
pub use spans::lookup_spans;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter for {endpoint}: {message}")]
    Exporter { endpoint: String, message: String },
}

/// The exporter's metric handles.
#[derive(Clone)]
pub struct TelemetryMetrics {
    exported: Counter,
    dropped: Arc<ReasonCounters>,
    sampled_out: Counter,
}

impl TelemetryMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let exported = Counter::default();
        registry.register(
            "spans_exported",
            "Spans accepted by the OTLP collector",
            exported.clone(),
        );
        let dropped = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "spans_dropped",
            "Spans not exported, by reason",
            dropped.clone(),
        );
        let sampled_out = Counter::default();
        registry.register(
            "lookups_sampled_out",
            "Ordinary lookups not exported because of the sample ratio",
            sampled_out.clone(),
        );
        TelemetryMetrics {
            exported,
            dropped: Arc::new(ReasonCounters::new(
                &dropped,
                &["queue_full", "export_failed"],
            )),
            sampled_out,
        }
    }
}

/// Starts the export thread and returns the observer that feeds it, and what tells when the
/// thread has ended (after `stop`, its last export).
pub fn start(
    settings: &ExportSettings,
    resource: &Resource,
    metrics: &TelemetryMetrics,
    stop: CancellationToken,
) -> Result<(OtlpObserver, export::Finished), TelemetryError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let finished = export::spawn_exporter(
        settings.clone(),
        resource.clone(),
        rx,
        queued.clone(),
        metrics.clone(),
        stop,
    )?;
    Ok((
        OtlpObserver::new(settings, tx, queued, metrics.clone()),
        finished,
    ))
}

/// The trace exporter as the proxy holds it for its whole life: the tracker gets one
/// observer ([`TraceExport::observer`]) that forwards to whichever exporter runs now, and a
/// reload starts, replaces or stops that exporter ([`TraceExport::apply`]) without touching
/// the tracker. The lock is taken once per finished lookup, by the tracker thread alone,
/// and by a reload only to swap.
#[derive(Clone)]
pub struct TraceExport {
    current: Arc<Mutex<Option<Running>>>,
    metrics: TelemetryMetrics,
    stop_all: CancellationToken,
}

struct Running {
    settings: ExportSettings,
    observer: OtlpObserver,
    /// Ends this exporter's thread (after a last flush).
    stop: CancellationToken,
    finished: Arc<export::Finished>,
}

impl TraceExport {
    /// No exporter yet; every exporter started later stops with `stop_all` too.
    pub fn new(metrics: &TelemetryMetrics, stop_all: CancellationToken) -> TraceExport {
        TraceExport {
            current: Arc::new(Mutex::new(None)),
            metrics: metrics.clone(),
            stop_all,
        }
    }

    /// The observer to give the tracker.
    pub fn observer(&self) -> Box<dyn LookupObserver> {
        Box::new(ExportObserver(self.current.clone()))
    }

    /// Runs the exporter `settings` asks for (`None`: none). The same settings keep the
    /// running one; new ones start a new exporter first — a failure leaves the old one
    /// running — then stop the old one. Returns whether anything changed.
    pub fn apply(
        &self,
        settings: Option<&ExportSettings>,
        resource: &Resource,
    ) -> Result<bool, TelemetryError> {
        let same = |running: &Option<Running>| match (running, settings) {
            (Some(r), Some(s)) => r.settings == *s,
            (None, None) => true,
            _ => false,
        };
        if same(&lock(&self.current)) {
            return Ok(false);
        }
        let next = match settings {
            Some(settings) => {
                let stop = self.stop_all.child_token();
                let (observer, finished) = start(settings, resource, &self.metrics, stop.clone())?;
                Some(Running {
                    settings: settings.clone(),
                    observer,
                    stop,
                    finished: Arc::new(finished),
                })
            }
            None => None,
        };
        let previous = std::mem::replace(&mut *lock(&self.current), next);
        if let Some(previous) = previous {
            previous.stop.cancel();
        }
        Ok(true)
    }

    /// At shutdown, once `stop_all` is cancelled: waits (blocking, up to `timeout`) for the
    /// running exporter's last export, so the lookups of the last second reach the
    /// collector rather than die with the process. Whether it ended in time.
    pub fn wait_stopped(&self, timeout: std::time::Duration) -> bool {
        let finished = lock(&self.current).as_ref().map(|r| r.finished.clone());
        finished.is_none_or(|f| f.wait(timeout))
    }
}

/// The tracker's side of [`TraceExport`].
struct ExportObserver(Arc<Mutex<Option<Running>>>);

impl LookupObserver for ExportObserver {
    fn observe(&mut self, lookup: &LookupRecord) {
        if let Some(running) = lock(&self.0).as_mut() {
            running.observer.observe(lookup);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
