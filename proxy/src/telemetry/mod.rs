//! Trace export: one OpenTelemetry trace per lookup, sent over OTLP (gRPC or HTTP/protobuf).
//!
//! Span model (attribute names follow the OpenTelemetry semantic conventions where one
//! exists):
//! - `dns.lookup` (root): `dns.question.name` (the base name), `client.address`,
//!   `dns.lookup.attempts`, `dns.lookup.outcome` (answered / nxdomain / nodata / servfail /
//!   timeout), `dns.lookup.answered_by` (the suffix that answered, or `absolute`); status
//!   Error for servfail and timeout.
//! - `dns.query` (one per query received): `dns.question.name`, `dns.question.type`,
//!   `dns.search.suffix` (or `absolute`), `dns.search.index` (-1 for absolute),
//!   `dns.response_code` and `dns.answer.count` (as the upstream or cache answered),
//!   `dns.cache.hit`, `network.transport`, `client.address`, `client.port`; when a
//!   mitigation acted: `dns.cache.stale` (served stale), `dnslens.rewrite`
//!   (`empty_noerror_to_nxdomain`: the client got NXDOMAIN), `dnslens.autopath.name` (the
//!   client got a CNAME to this name).
//! - `dns.upstream` (one per upstream try): `server.address`, `server.port`,
//!   `network.transport`, `dns.upstream.try`, `dns.upstream.outcome`.
//!
//! Timestamps are the real receive/send instants, so a 5-second client retry shows as a gap.
//!
//! Why not `tracing-opentelemetry` spans on the hot path: the keep/drop decision needs the
//! lookup's outcome, known only when it ends. So the hot path records plain data (see
//! `lookup`), and kept lookups are turned into `SpanData` here and handed to the OTLP
//! exporter directly — the SDK's `SpanExporter` is the only OpenTelemetry piece used. With
//! tracing off (no endpoint) none of this runs.
//!
//! Sampling: every lookup with a timeout, SERVFAIL or anomaly (`dns.anomaly` on the root,
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
//! `tracing.queue` bounds the spans waiting for export; `tracing.export_timeout` bounds one
//! export call. A slow or absent collector costs dropped spans, never DNS latency. Kept
//! lookups go to the export thread (`dnslens-otlp`, under SCHED_IDLE) as records; spans are
//! built and sent there, 64 at a time, the thread stepping aside after every 100 µs of work
//! (see `background`), so a DNS worker sharing its core waits at most about that long.
//!
//! Metrics: `dnslens_spans_exported_total`, `dnslens_spans_dropped_total{reason}`
//! (`queue_full`, `export_failed`), `dnslens_lookups_sampled_out_total`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use opentelemetry_sdk::Resource;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::background::{run_as_idle_work, Pacer};
use crate::config::{OtlpProtocol, TracingConfig};
use crate::lookup::{FastHash, LookupObserver};
use crate::metrics::{QtypeLabel, RcodeLabel, ReasonCounters, ReasonLabels};
use crate::record::{Attempt, CacheUse, Clock, Kind, LookupOutcome, LookupRecord};

/// Spans that trigger an export before the flush interval. One export (converting,
/// encoding, sending) cannot be paced from inside, so it is kept short: 64 spans, against
/// 512 before, took p99 at 20k QPS with tracing on from ×3.8 of tracing off to ×0.97.
const MAX_BATCH: usize = 64;
/// Work the export thread does before it steps aside for the DNS workers (see `background`).
const WORK_BUDGET: Duration = Duration::from_micros(100);
const PAUSE: Duration = Duration::from_micros(20);
/// Longest time a kept span waits for export.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
const DEFAULT_SAMPLE_RATIO: f64 = 0.01;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter for {endpoint}: {message}")]
    Exporter { endpoint: String, message: String },
}

/// The effective export settings, after the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub sample_ratio: f64,
    pub keep_anomalous_per_second: u32,
    pub keep_anomalous_per_name_per_second: u32,
    pub queue: usize,
    pub export_timeout: Duration,
}

impl ExportSettings {
    /// `None` when no endpoint is configured anywhere: tracing is off. `env` reads one
    /// environment variable (a parameter so tests need not touch the process environment).
    pub fn resolve(
        config: &TracingConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Option<ExportSettings> {
        let endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .filter(|e| !e.is_empty())
            .or_else(|| config.endpoint.clone())?;
        let protocol = match env("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
            Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            Some("grpc") => OtlpProtocol::Grpc,
            _ => config.protocol.unwrap_or(OtlpProtocol::Grpc),
        };
        let env_ratio = match env("OTEL_TRACES_SAMPLER").as_deref() {
            Some("always_on" | "parentbased_always_on") => Some(1.0),
            Some("always_off" | "parentbased_always_off") => Some(0.0),
            Some("traceidratio" | "parentbased_traceidratio") => env("OTEL_TRACES_SAMPLER_ARG")
                .and_then(|a| a.parse::<f64>().ok())
                .filter(|r| (0.0..=1.0).contains(r)),
            _ => None,
        };
        Some(ExportSettings {
            endpoint,
            protocol,
            sample_ratio: env_ratio
                .or(config.sample_ratio)
                .unwrap_or(DEFAULT_SAMPLE_RATIO),
            keep_anomalous_per_second: config.keep_anomalous_per_second,
            keep_anomalous_per_name_per_second: config.keep_anomalous_per_name_per_second,
            queue: config.queue,
            export_timeout: config.export_timeout,
        })
    }
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

/// The service's resource: OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES, service.name
/// `dnslens` by default, and the Kubernetes attributes of the downward API.
pub fn resource(env: impl Fn(&str) -> Option<String>) -> Resource {
    let mut builder = Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none() {
        builder = builder.with_service_name("dnslens");
    }
    let k8s = [
        ("POD_NAME", "k8s.pod.name"),
        ("POD_NAMESPACE", "k8s.namespace.name"),
        ("NODE_NAME", "k8s.node.name"),
    ];
    builder
        .with_attributes(
            k8s.iter()
                .filter_map(|(var, key)| env(var).map(|v| KeyValue::new(*key, v))),
        )
        .build()
}

/// Starts the export thread and returns the observer that feeds it.
pub fn start(
    settings: &ExportSettings,
    resource: &Resource,
    metrics: &TelemetryMetrics,
    stop: CancellationToken,
) -> Result<OtlpObserver, TelemetryError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    spawn_exporter(
        settings.clone(),
        resource.clone(),
        rx,
        queued.clone(),
        metrics.clone(),
        stop,
    )?;
    Ok(OtlpObserver {
        tx,
        queued,
        capacity: settings.queue,
        sample_ratio: settings.sample_ratio,
        metrics: metrics.clone(),
        forced: ForcedBudget::new(
            settings.keep_anomalous_per_second,
            settings.keep_anomalous_per_name_per_second,
        ),
    })
}

/// A lookup kept for export, on its way to the export thread, which builds its spans.
struct Kept {
    lookup: LookupRecord,
    anomalies: Vec<Kind>,
}

/// How many spans [`lookup_spans`] makes of a lookup: the root, one per query, one per try.
fn span_count(lookup: &LookupRecord) -> usize {
    1 + lookup
        .attempts
        .iter()
        .map(|a| 1 + a.query.tries.len())
        .sum::<usize>()
}

/// Runs span building and the export loop on their own thread and runtime, under
/// SCHED_IDLE: building SpanData, encoding and sending a batch (protobuf, gRPC/HTTP) use
/// only CPU time no DNS worker and no tracker wants. Traces are sampled anyway: a proxy
/// saturated for long enough drops spans (counted, `queue_full`) rather than answers late.
/// Returns once the exporter is built (or failed to be).
fn spawn_exporter(
    settings: ExportSettings,
    resource: Resource,
    rx: mpsc::UnboundedReceiver<Kept>,
    queued: Arc<AtomicUsize>,
    metrics: TelemetryMetrics,
    stop: CancellationToken,
) -> Result<(), TelemetryError> {
    let failed = |message: String| TelemetryError::Exporter {
        endpoint: settings.endpoint.clone(),
        message,
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread_settings = settings.clone();
    std::thread::Builder::new()
        .name("dnslens-otlp".into())
        .spawn(move || {
            run_as_idle_work();
            let settings = thread_settings;
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(TelemetryError::Exporter {
                        endpoint: settings.endpoint.clone(),
                        message: format!("runtime: {e}"),
                    }));
                    return;
                }
            };
            runtime.block_on(async move {
                // Built inside this runtime: the gRPC channel's worker lives on it.
                let mut exporter = match build_exporter(&settings) {
                    Ok(exporter) => exporter,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                exporter.set_resource(&resource);
                let _ = ready_tx.send(Ok(()));
                export_loop(exporter, rx, queued, metrics, settings.export_timeout, stop).await;
            });
        })
        .map_err(|e| failed(format!("thread: {e}")))?;
    ready_rx
        .recv()
        .map_err(|_| failed("the export thread ended".into()))?
}

fn build_exporter(
    settings: &ExportSettings,
) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    let error = |e: &dyn std::fmt::Display| TelemetryError::Exporter {
        endpoint: settings.endpoint.clone(),
        message: e.to_string(),
    };
    match settings.protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(settings.export_timeout)
            .build()
            .map_err(|e| error(&e)),
        OtlpProtocol::HttpProtobuf => {
            let mut url = settings.endpoint.trim_end_matches('/').to_string();
            if !url.ends_with("/v1/traces") {
                url.push_str("/v1/traces");
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(url)
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(settings.export_timeout)
                .build()
                .map_err(|e| error(&e))
        }
    }
}

/// Sends spans in batches: when `MAX_BATCH` are waiting or every `FLUSH_EVERY`, so the
/// exporter's work (encoding, HTTP/2) happens about once a second, not per kept lookup.
async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::UnboundedReceiver<Kept>,
    queued: Arc<AtomicUsize>,
    metrics: TelemetryMetrics,
    timeout: Duration,
    stop: CancellationToken,
) {
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let clock = Clock::now();
    let scope = InstrumentationScope::builder("dnslens")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let spans_of = |kept: Kept| lookup_spans(&kept.lookup, &kept.anomalies, &clock, &scope);
    let mut pacer = Pacer::new(WORK_BUDGET, PAUSE);
    let mut batch = Vec::new();
    loop {
        let stopping = tokio::select! {
            received = rx.recv() => match received {
                Some(kept) => {
                    batch.extend(spans_of(kept));
                    pacer.checkpoint();
                    if batch.len() < MAX_BATCH {
                        continue;
                    }
                    false
                }
                None => true,
            },
            _ = flush.tick() => false,
            _ = stop.cancelled() => true,
        };
        if stopping {
            while let Ok(kept) = rx.try_recv() {
                batch.extend(spans_of(kept));
            }
        }
        if !batch.is_empty() {
            export(
                &exporter,
                std::mem::take(&mut batch),
                &queued,
                &metrics,
                timeout,
            )
            .await;
            pacer.checkpoint();
        }
        if stopping {
            return;
        }
    }
}

async fn export(
    exporter: &opentelemetry_otlp::SpanExporter,
    batch: Vec<SpanData>,
    queued: &AtomicUsize,
    metrics: &TelemetryMetrics,
    timeout: Duration,
) {
    let n = batch.len();
    queued.fetch_sub(n, Ordering::Relaxed);
    match tokio::time::timeout(timeout, exporter.export(batch)).await {
        Ok(Ok(())) => {
            metrics.exported.inc_by(n as u64);
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, spans = n, "span export failed");
            metrics.dropped.inc_by("export_failed", n as u64);
        }
        Err(_) => {
            tracing::debug!(spans = n, "span export timed out");
            metrics.dropped.inc_by("export_failed", n as u64);
        }
    }
}

/// Decides per finished lookup whether to export it, and queues its spans.
pub struct OtlpObserver {
    tx: mpsc::UnboundedSender<Kept>,
    /// Spans queued and not yet taken by the export thread; bounded by `capacity`.
    queued: Arc<AtomicUsize>,
    capacity: usize,
    sample_ratio: f64,
    metrics: TelemetryMetrics,
    forced: ForcedBudget,
}

impl OtlpObserver {
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
struct ForcedBudget {
    per_second: u32,
    per_name: u32,
    second: Instant,
    kept: u32,
    /// Lookups kept this second by hashed base name: at most `per_second` entries.
    by_name: HashMap<u64, u32, FastHash>,
}

impl ForcedBudget {
    fn new(per_second: u32, per_name: u32) -> ForcedBudget {
        ForcedBudget {
            per_second,
            per_name,
            second: Instant::now(),
            kept: 0,
            by_name: HashMap::default(),
        }
    }

    fn admit(&mut self, base: &str, now: Instant) -> bool {
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

/// Builds the spans of one trace.
struct TraceBuilder<'a> {
    trace_id: TraceId,
    scope: &'a InstrumentationScope,
    clock: &'a Clock,
}

impl TraceBuilder<'_> {
    fn span(
        &self,
        (span_id, parent): (SpanId, SpanId),
        name: &'static str,
        kind: SpanKind,
        (start, end): (Instant, Instant),
        attributes: Vec<KeyValue>,
    ) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                self.trace_id,
                span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: parent,
            parent_span_is_remote: false,
            span_kind: kind,
            name: Cow::Borrowed(name),
            start_time: self.clock.at(start),
            end_time: self.clock.at(end),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: self.scope.clone(),
        }
    }
}

fn suffix_text(attempt: &Attempt) -> Value {
    match &attempt.suffix {
        Some((_, suffix)) => Value::from(suffix.clone()),
        None => Value::from("absolute"),
    }
}

/// An address as an attribute value, made once per lookup (every query of a lookup comes
/// from one client; its tries go to a handful of upstreams).
#[derive(Default)]
struct AddressTexts(Vec<(IpAddr, Arc<str>)>);

impl AddressTexts {
    fn get(&mut self, ip: IpAddr) -> Value {
        if let Some((_, text)) = self.0.iter().find(|(known, _)| *known == ip) {
            return Value::from(text.clone());
        }
        let text: Arc<str> = ip.to_string().into();
        self.0.push((ip, text.clone()));
        Value::from(text)
    }
}

/// The spans of one lookup: the root, a `dns.query` per attempt, a `dns.upstream` per try.
pub fn lookup_spans(
    lookup: &LookupRecord,
    anomalies: &[Kind],
    clock: &Clock,
    scope: &InstrumentationScope,
) -> Vec<SpanData> {
    let trace = TraceBuilder {
        trace_id: TraceId::from(lookup.trace_id),
        scope,
        clock,
    };
    let root_id = SpanId::from_bytes(rand::random());
    let mut spans = Vec::with_capacity(span_count(lookup));
    let mut addresses = AddressTexts::default();
    let mut root_attributes = vec![
        KeyValue::new("dns.question.name", lookup.base.clone()),
        KeyValue::new("client.address", addresses.get(lookup.client)),
        KeyValue::new("dns.lookup.attempts", lookup.attempts.len() as i64),
        KeyValue::new("dns.lookup.outcome", lookup.outcome.as_str()),
    ];
    if let Some(attempt) = lookup.answered_by() {
        root_attributes.push(KeyValue::new(
            "dns.lookup.answered_by",
            suffix_text(attempt),
        ));
    }
    if lookup.evicted {
        root_attributes.push(KeyValue::new("dns.lookup.evicted", true));
    }
    if !anomalies.is_empty() {
        let kinds: Vec<&str> = anomalies.iter().map(|k| k.as_str()).collect();
        root_attributes.push(KeyValue::new("dns.anomaly", kinds.join(",")));
    }
    let mut root = trace.span(
        (root_id, SpanId::INVALID),
        "dns.lookup",
        SpanKind::Server,
        (lookup.start, lookup.end),
        root_attributes,
    );
    if matches!(
        lookup.outcome,
        LookupOutcome::ServFail | LookupOutcome::Timeout
    ) {
        root.status = Status::error(lookup.outcome.as_str());
    }
    spans.push(root);
    for attempt in &lookup.attempts {
        let q = &attempt.query;
        let query_id = SpanId::from_bytes(rand::random());
        let mut attributes = vec![
            KeyValue::new("dns.question.name", attempt.qname.clone()),
            KeyValue::new(
                "dns.question.type",
                QtypeLabel::from_qtype(q.qtype).as_str(),
            ),
            KeyValue::new("dns.search.suffix", suffix_text(attempt)),
            KeyValue::new(
                "dns.search.index",
                attempt.suffix.as_ref().map_or(-1, |(i, _)| *i as i64),
            ),
            KeyValue::new(
                "dns.response_code",
                RcodeLabel::from_rcode(q.rcode).as_str(),
            ),
            KeyValue::new("dns.answer.count", i64::from(q.answers)),
            KeyValue::new("dns.cache.hit", q.cache == CacheUse::Hit),
            KeyValue::new("network.transport", q.transport.as_str()),
            KeyValue::new("client.address", addresses.get(q.client.ip())),
            KeyValue::new("client.port", i64::from(q.client.port())),
        ];
        if q.cache == CacheUse::Stale {
            attributes.push(KeyValue::new("dns.cache.stale", true));
        }
        if q.rewritten {
            attributes.push(KeyValue::new(
                "dnslens.rewrite",
                "empty_noerror_to_nxdomain",
            ));
        }
        if let Some(name) = &q.autopath {
            attributes.push(KeyValue::new("dnslens.autopath.name", name.clone()));
        }
        spans.push(trace.span(
            (query_id, root_id),
            "dns.query",
            SpanKind::Internal,
            (q.received, q.answered),
            attributes,
        ));
        for (n, t) in q.tries.iter().enumerate() {
            spans.push(trace.span(
                (SpanId::from_bytes(rand::random()), query_id),
                "dns.upstream",
                SpanKind::Client,
                (t.start, t.end),
                vec![
                    KeyValue::new("server.address", addresses.get(t.upstream.ip())),
                    KeyValue::new("server.port", i64::from(t.upstream.port())),
                    KeyValue::new("network.transport", t.transport.as_str()),
                    KeyValue::new("dns.upstream.try", n as i64 + 1),
                    KeyValue::new("dns.upstream.outcome", t.outcome.as_str()),
                ],
            ));
        }
    }
    spans
}

#[cfg(test)]
mod tests;
