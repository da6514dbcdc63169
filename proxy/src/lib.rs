//! dnslens: a DNS forwarder for Kubernetes pods (sidecar) and nodes (node-local) that makes
//! DNS visible.
//!
//! Data path: `listen` (UDP/TCP sockets, access list) → `wire` (header + question) →
//! `pipeline` (`cache`, coalescing, the `mitigate` decisions) → `forward` (upstream pool,
//! matching, retries) → back through `pipeline` and `listen` to the client. Each answered
//! query is handed as plain data to `lookup`, which correlates lookups (with `search`) for
//! its observers: `anomaly` (counters, journal) and `telemetry` (OTLP traces). `admin`
//! serves the metrics each component registers and the journal; `demo` runs it all against
//! an embedded Kubernetes-like upstream; `inject` adds dnslens to pods (offline and as an
//! admission webhook). See ARCHITECTURE.md.

#![forbid(unsafe_code)]

pub mod admin;
pub mod anomaly;
pub mod background;
pub mod cache;
pub mod cli;
pub mod config;
pub mod demo;
pub mod forward;
#[cfg(test)]
mod fuzz_bytes;
pub mod inject;
pub mod invalid;
pub mod listen;
pub mod lookup;
pub mod metrics;
pub mod mitigate;
pub mod pipeline;
pub mod record;
pub mod request;
pub mod search;
pub mod telemetry;
#[cfg(test)]
pub(crate) mod test_messages;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use config::Config;
use forward::{ForwardParts, Forwarder};
use listen::ListenMetrics;
use lookup::{LookupMetrics, LookupObserver, Tracker};
use pipeline::{Pipeline, PipelineParts};
use search::SearchModel;
use telemetry::TelemetryMetrics;

/// Why the proxy could not start. Each message carries its cause itself (one line, printed
/// once): the I/O errors are fields, not `#[source]`s an error chain would print again.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {error}")]
    Listen { addr: String, error: std::io::Error },
    #[error("cannot open upstream sockets: {0}")]
    Upstream(std::io::Error),
    #[error("cannot serve metrics on {addr}: {error}")]
    Metrics {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Telemetry(#[from] telemetry::TelemetryError),
}

/// A running proxy. Dropping it does not stop it; call [`Proxy::shutdown`].
pub struct Proxy {
    /// The DNS addresses actually bound (port 0 in the config becomes a real port).
    pub dns_addrs: Vec<SocketAddr>,
    /// The address of /metrics, /healthz, /readyz and /debug/anomalies.
    pub metrics_addr: SocketAddr,
    /// The anomaly journal.
    pub journal: anomaly::journal::Journal,
    forwarder: Arc<Forwarder>,
    grace: std::time::Duration,
    /// How long DNS is still served after SIGTERM, with `/readyz` at 503.
    lameduck: std::time::Duration,
    /// Cancelled when the lameduck period begins.
    draining: CancellationToken,
    stop_listening: CancellationToken,
    stop_all: CancellationToken,
    listeners: JoinSet<()>,
    /// Tasks the data path spawned (TCP fetches, autopath, the shield's twin check).
    tasks: TaskTracker,
    admin: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Binds every socket, then starts serving. Must run inside a tokio runtime.
    pub async fn start(config: &Config) -> Result<Proxy, StartError> {
        Self::start_with_observers(config, Vec::new()).await
    }

    /// As [`Proxy::start`], with extra observers of finished lookups (the demo's console
    /// trees, tests), beside the anomaly detectors and the trace exporter.
    pub async fn start_with_observers(
        config: &Config,
        mut observers: Vec<Box<dyn LookupObserver>>,
    ) -> Result<Proxy, StartError> {
        // The root holds the standard process_* metrics; everything of dnslens's own is
        // under the `dnslens` prefix.
        let mut root = Registry::default();
        root.register_collector(Box::new(metrics::ProcessCollector));
        let registry = root.sub_registry_with_prefix("dnslens");
        metrics::register_build_info(registry);
        let stop_all = CancellationToken::new();
        let env = |key: &str| std::env::var(key).ok();
        let lookup_metrics = LookupMetrics::register(registry);
        let telemetry_metrics = TelemetryMetrics::register(registry);
        let export = telemetry::ExportSettings::resolve(&config.tracing, env);
        if let Some(settings) = &export {
            let resource = telemetry::resource(env);
            let otlp = telemetry::start(settings, &resource, &telemetry_metrics, stop_all.clone())?;
            observers.push(Box::new(otlp));
        }
        // The anomaly detectors always observe lookups, so correlation always runs.
        let journal = anomaly::journal::Journal::new(config.journal.entries);
        observers.push(Box::new(anomaly::Detectors::register(
            registry,
            journal.clone(),
        )));
        let model = SearchModel::build(&config.search_settings(), &config.resolv_conf);
        let tracker = Tracker::new(model, &config.lookup, &lookup_metrics, observers);
        let trace_sink = Some(
            tracker
                .spawn(config.lookup.queue, &lookup_metrics, stop_all.clone())
                .keeping_addresses(export.is_some()),
        );
        let listen_metrics = Arc::new(ListenMetrics::register(registry, trace_sink.clone()));
        let tasks = TaskTracker::new();
        let forwarder = Forwarder::build(
            &config.forward,
            ForwardParts {
                upstreams: config.upstreams.iter().map(|u| u.0).collect(),
                zones: config
                    .forward_zones
                    .iter()
                    .map(|z| forward::ZoneParts {
                        zone: z.zone.clone(),
                        upstreams: z.upstreams.iter().map(|u| u.0).collect(),
                        force_tcp: z.force_tcp,
                    })
                    .collect(),
                timeout: config.upstream_timeout,
                attempts: config.attempts,
                tasks: tasks.clone(),
            },
            registry,
        )
        .map_err(StartError::Upstream)?;
        let pipeline = Pipeline::build(
            &config.cache,
            &config.mitigations,
            config.forward.force_tcp,
            PipelineParts {
                forwarder: forwarder.clone(),
                search: SearchModel::build(&config.search_settings(), &config.resolv_conf),
                trace_sink,
                tasks: tasks.clone(),
            },
            registry,
        );
        let listen_error = |error| StartError::Listen {
            addr: config
                .listen
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            error,
        };
        let listeners = listen::bind(&config.listen, &config.listener, &listen_metrics.replies)
            .map_err(listen_error)?;
        let admin_listener =
            listen::tcp_listener(config.metrics_listen).map_err(|error| StartError::Metrics {
                addr: config.metrics_listen,
                error,
            })?;
        let metrics_addr = admin_listener
            .local_addr()
            .map_err(|error| StartError::Metrics {
                addr: config.metrics_listen,
                error,
            })?;
        let dns_addrs = listeners.local_addrs.clone();

        let stop_listening = CancellationToken::new();
        forwarder.spawn(stop_all.clone());
        let mut listener_tasks = JoinSet::new();
        listeners.spawn(
            &config.listener,
            pipeline,
            listen_metrics,
            stop_listening.clone(),
            &mut listener_tasks,
        );
        let draining = CancellationToken::new();
        let admin = tokio::spawn({
            let state = admin::AdminState {
                registry: Arc::new(root),
                forwarder: forwarder.clone(),
                journal: journal.clone(),
                debug: config.admin.debug_acl(),
                draining: draining.clone(),
            };
            let stop = stop_all.clone();
            async move {
                if let Err(e) = admin::serve(admin_listener, state, stop).await {
                    tracing::error!(error = %e, "metrics server failed");
                }
            }
        });
        info!(
            mode = config.mode.as_str(),
            listen = ?dns_addrs,
            upstreams = ?config.upstreams.iter().map(|u| u.0).collect::<Vec<_>>(),
            forward_zones = ?config
                .forward_zones
                .iter()
                .map(|z| format!(
                    "{} -> {}{}",
                    z.zone,
                    z.upstreams.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(","),
                    if z.force_tcp { " (tcp)" } else { "" }
                ))
                .collect::<Vec<_>>(),
            metrics = %metrics_addr,
            upstream_timeout = ?config.upstream_timeout,
            attempts = config.attempts,
            tracing = %export.as_ref().map_or("off".to_string(), |e| {
                format!("{} ({:?}, sample ratio {})", e.endpoint, e.protocol, e.sample_ratio)
            }),
            "dnslens serving"
        );
        Ok(Proxy {
            journal,
            dns_addrs,
            metrics_addr,
            forwarder,
            grace: config.shutdown_grace,
            lameduck: config.lameduck(),
            draining,
            stop_listening,
            stop_all,
            listeners: listener_tasks,
            tasks,
            admin,
        })
    }

    /// The stop after SIGTERM: `/readyz` turns 503 at once while DNS is still served for
    /// the lameduck period (endpoints and iptables rules catch up meanwhile), then
    /// [`Proxy::shutdown`].
    pub async fn stop_after_lameduck(self) {
        self.draining.cancel();
        if !self.lameduck.is_zero() {
            info!(lameduck = ?self.lameduck, "not ready; still answering for the lameduck period");
            tokio::time::sleep(self.lameduck).await;
        }
        self.shutdown().await;
    }

    /// Graceful stop: no new queries, in-flight ones answered and every task the data
    /// path spawned finished (within the grace period), then every task ends.
    pub async fn shutdown(mut self) {
        self.draining.cancel();
        self.stop_listening.cancel();
        self.tasks.close();
        let drained = async {
            while self.listeners.join_next().await.is_some() {}
            while self.forwarder.inflight() > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            self.tasks.wait().await;
        };
        if tokio::time::timeout(self.grace, drained).await.is_err() {
            tracing::warn!(
                inflight = self.forwarder.inflight(),
                "grace period over; dropping in-flight queries"
            );
        }
        self.stop_all.cancel();
        self.listeners.abort_all();
        let _ = self.admin.await;
    }
}

/// Runs the proxy until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn serve_until_signal(config: &Config) -> Result<(), StartError> {
    let proxy = Proxy::start(config).await?;
    wait_for_signal().await;
    info!("shutting down");
    proxy.stop_after_lameduck().await;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
