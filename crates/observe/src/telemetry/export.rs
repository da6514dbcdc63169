//! The export thread: builds the spans of kept lookups and sends them to the collector, in
//! batches of 64, on its own current-thread runtime under SCHED_IDLE, stepping aside after
//! every 100 µs of work.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::sampling::Kept;
use super::settings::ExportSettings;
use super::settings::OtlpProtocol;
use super::spans::lookup_spans;
use super::{TelemetryError, TelemetryMetrics};
use crate::background::{run_as_idle_work, Pacer};
use dnslens_datapath::record::Clock;

/// Spans that trigger an export before the flush interval. One export (converting,
/// encoding, sending) cannot be paced from inside, so it is kept short: 64 spans, against
/// 512 before, took p99 at 20k QPS with tracing on from ×3.8 of tracing off to ×0.97.
const MAX_BATCH: usize = 64;
/// Work the export thread does before it steps aside for the DNS workers (see `background`).
const WORK_BUDGET: Duration = Duration::from_micros(100);
const PAUSE: Duration = Duration::from_micros(20);
/// Longest time a kept span waits for export.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Runs span building and the export loop on their own thread and runtime, under
/// SCHED_IDLE: building SpanData, encoding and sending a batch (protobuf, gRPC/HTTP) use
/// only CPU time no DNS worker and no tracker wants. Traces are sampled anyway: a proxy
/// saturated for long enough drops spans (counted, `queue_full`) rather than answers late.
/// Returns once the exporter is built (or failed to be), with what tells when its thread has
/// ended — after its last export once `stop` is cancelled.
pub(super) fn spawn_exporter(
    settings: ExportSettings,
    resource: Resource,
    rx: mpsc::UnboundedReceiver<Kept>,
    queued: Arc<AtomicUsize>,
    metrics: TelemetryMetrics,
    stop: CancellationToken,
) -> Result<Finished, TelemetryError> {
    let failed = |message: String| TelemetryError::Exporter {
        endpoint: settings.endpoint.clone(),
        message,
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (ended_tx, ended_rx) = std::sync::mpsc::channel::<()>();
    let thread_settings = settings.clone();
    std::thread::Builder::new()
        .name("dnslens-otlp".into())
        .spawn(move || {
            // Dropped when the thread ends, whichever way: `Finished` sees the channel close.
            let _ended = ended_tx;
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
        .map_err(|_| failed("the export thread ended".into()))??;
    Ok(Finished(std::sync::Mutex::new(ended_rx)))
}

/// Tells when an export thread has ended.
pub struct Finished(std::sync::Mutex<std::sync::mpsc::Receiver<()>>);

impl Finished {
    /// Blocks until the thread has ended, or `timeout`; whether it ended.
    pub fn wait(&self, timeout: Duration) -> bool {
        let ended = self.0.lock().unwrap_or_else(|e| e.into_inner());
        matches!(
            ended.recv_timeout(timeout),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) | Ok(())
        )
    }
}

fn build_exporter(
    settings: &ExportSettings,
) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    use opentelemetry_otlp::{WithHttpConfig, WithTonicConfig};
    let error = |e: &dyn std::fmt::Display| TelemetryError::Exporter {
        endpoint: settings.endpoint.clone(),
        message: e.to_string(),
    };
    let https = settings.endpoint.starts_with("https://");
    let extra_ca = match &settings.ca_file {
        Some(path) => Some(super::tls::read_ca_file(path).map_err(|e| error(&e))?),
        None => None,
    };
    match settings.protocol {
        OtlpProtocol::Grpc => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(settings.endpoint.clone())
                .with_timeout(settings.export_timeout);
            if https {
                builder = builder.with_tls_config(super::tls::grpc_tls(extra_ca.as_deref()));
            }
            builder.build().map_err(|e| error(&e))
        }
        OtlpProtocol::HttpProtobuf => {
            let mut url = settings.endpoint.trim_end_matches('/').to_string();
            if !url.ends_with("/v1/traces") {
                url.push_str("/v1/traces");
            }
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(url)
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(settings.export_timeout);
            if https {
                let client = super::tls::https_client(extra_ca.as_deref(), settings.export_timeout)
                    .map_err(|e| error(&e))?;
                builder = builder.with_http_client(client);
            }
            builder.build().map_err(|e| error(&e))
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
