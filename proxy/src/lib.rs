//! dnslens: a DNS forwarder for Kubernetes pods (sidecar) and nodes (node-local) that makes
//! DNS visible. This crate is the binary and what composes the others: the command line,
//! the config file, the admin endpoints and page, the demo, and `Proxy` (start, reload,
//! drain, stop).
//!
//! Data path (`dnslens-datapath`): `listen` (UDP/TCP sockets, access list) → `wire` (header + question) →
//! `pipeline` (`cache`, coalescing, the `mitigate` decisions) → `forward` (upstream pool,
//! matching, retries) → back through `pipeline` and `listen` to the client. Each answered
//! query is handed as plain data to `lookup`, which correlates lookups (with `search`) for
//! its observers: `anomaly` (counters, journal) and `telemetry` (OTLP traces). `admin`
//! serves the metrics each component registers and the journal; `demo` runs it all against
//! an embedded Kubernetes-like upstream; `inject` adds dnslens to pods (offline and as an
//! admission webhook). See ARCHITECTURE.md.

#![forbid(unsafe_code)]

pub mod admin;
pub mod build_info;
pub mod cli;
pub mod config;
pub mod demo;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
pub mod http1;

/// The data path (`crates/datapath`): listeners, pipeline, cache, forwarder, and the plain
/// records it hands to observers.
pub use dnslens_datapath::{
    cache, dnstap, forward, listen, metrics, mitigate, pipeline, ratelimit, record, request,
    search, udp,
};
/// Sidecar injection, node setup and pod identity (`crates/k8s`).
pub use dnslens_k8s::{identity, inject, node_setup};
/// Observation (`crates/observe`): lookups, anomalies and their journal, traces, the
/// cluster's window.
pub use dnslens_observe::{anomaly, background, cluster, lookup, telemetry};
/// The wire format, a crate of its own below everything here (`crates/wire`).
pub use dnslens_wire as wire;
/// YAML in and out (`crates/yaml`), shared with the injector; `Invalid` with it.
pub use dnslens_yaml as yaml;
pub use dnslens_yaml::invalid;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use arc_swap::ArcSwap;
use config::Config;
use forward::{ForwardMetrics, ForwardParts, Forwarder};
use listen::ListenMetrics;
use lookup::{LookupMetrics, LookupObserver, Tracker};
use pipeline::{Pipeline, PipelineMetrics, PipelineParts};
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
    #[error("admin.{key} {path}: {error}")]
    AdminSocket {
        key: &'static str,
        path: String,
        error: std::io::Error,
    },
    #[error("admin.pod_sockets: {0}")]
    PodSockets(String),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Telemetry(#[from] telemetry::TelemetryError),
    #[error(transparent)]
    PodIdentity(#[from] identity::watch::WatchSetupError),
    #[error("ui.backend: {0}")]
    Backend(cluster::BackendError),
}

/// A running proxy. Dropping it does not stop it; call [`Proxy::shutdown`].
pub struct Proxy {
    /// The DNS addresses actually bound (port 0 in the config becomes a real port).
    pub dns_addrs: Vec<SocketAddr>,
    /// The address of /metrics, /healthz, /readyz and /debug/anomalies.
    pub metrics_addr: SocketAddr,
    /// The anomaly journal.
    pub journal: anomaly::journal::Journal,
    /// What the running configuration built; a reload replaces it.
    current: Generation,
    /// Generations a reload replaced, finishing what they took in.
    retiring: JoinSet<()>,
    shared: Shared,
    /// The forwarder `/readyz?verbose` reports on.
    forwarder_now: Arc<ArcSwap<Forwarder>>,
    /// Cancelled when the lameduck period begins.
    draining: CancellationToken,
    admin: tokio::task::JoinHandle<()>,
}

/// What a reload rebuilds: the forwarder, the pipeline around it, the listeners in front.
struct Generation {
    config: Config,
    forwarder: Arc<Forwarder>,
    pipeline: Arc<Pipeline>,
    dns_addrs: Vec<SocketAddr>,
    listeners: JoinSet<()>,
    stop_listening: CancellationToken,
    /// Ends the forwarder's receive tasks and sweeper once nothing waits on it.
    stop_forwarding: CancellationToken,
}

/// What lives as long as the process and every generation uses: the metric families, the
/// lookup tracker's sink, the trace exporter, the task tracker.
struct Shared {
    forward_metrics: ForwardMetrics,
    pipeline_metrics: PipelineMetrics,
    listen_metrics: Arc<ListenMetrics>,
    trace_sink: record::TraceSink,
    trace_export: telemetry::TraceExport,
    resource: opentelemetry_sdk::Resource,
    reloads: ReloadMetrics,
    loop_guard: Arc<pipeline::LoopGuard>,
    /// Tasks the data path spawned (TCP fetches, autopath, the shield's twin check).
    tasks: TaskTracker,
    /// Node-local pod identity, when on (started once; a reload keeps it).
    identities: Option<identity::Identities>,
    /// The dnstap stream, when on (started once; a reload keeps it).
    dnstap: Option<dnstap::Dnstap>,
    /// Writers that outlive the data path and finish after it (dnstap's), awaited briefly
    /// at the end of shutdown.
    writers: TaskTracker,
    stop_all: CancellationToken,
}

/// `dnslens_config_reloads_total{result}` and the time of the last good load.
#[derive(Clone)]
struct ReloadMetrics {
    ok: prometheus_client::metrics::counter::Counter,
    error: prometheus_client::metrics::counter::Counter,
    last_success: prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

impl ReloadMetrics {
    fn register(registry: &mut Registry) -> ReloadMetrics {
        let family = prometheus_client::metrics::family::Family::<
            ResultLabels,
            prometheus_client::metrics::counter::Counter,
        >::default();
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP or a changed file), by result",
            family.clone(),
        );
        let last_success = prometheus_client::metrics::gauge::Gauge::default();
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "When the running configuration was loaded (start or reload), unix seconds",
            last_success.clone(),
        );
        let ok = family.get_or_create(&ResultLabels { result: "ok" }).clone();
        let error = family
            .get_or_create(&ResultLabels { result: "error" })
            .clone();
        let metrics = ReloadMetrics {
            ok,
            error,
            last_success,
        };
        metrics.loaded();
        metrics
    }

    fn loaded(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_success.set(now);
    }
}

/// Why a reload was refused; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Start(#[from] StartError),
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
        build_info::register(registry);
        if let Some(file) = &config.admin.node_setup_status {
            registry.register_collector(Box::new(node_setup::StatusCollector(file.clone())));
        }
        let stop_all = CancellationToken::new();
        let env = |key: &str| std::env::var(key).ok();
        let lookup_metrics = LookupMetrics::register(registry);
        let telemetry_metrics = TelemetryMetrics::register(registry);
        let trace_export = telemetry::TraceExport::new(&telemetry_metrics, stop_all.clone());
        let resource = telemetry::resource(env);
        let export = telemetry::ExportSettings::resolve(&config.tracing, env);
        trace_export.apply(export.as_ref(), &resource)?;
        observers.push(trace_export.observer());
        // The anomaly detectors always observe lookups, so correlation always runs.
        let journal = anomaly::journal::Journal::new(config.journal.entries);
        observers.push(Box::new(anomaly::Detectors::register(
            registry,
            journal.clone(),
        )));
        let model = SearchModel::build(config.mode, &config.search);
        let forward_metrics = ForwardMetrics::register(registry);
        let mut tracker = Tracker::new(model, &config.lookup, &lookup_metrics, observers)
            .with_in_flight(forward_metrics.waiting_on_upstreams());
        let identities = if config.pod_identity.enabled {
            // The client is built here (a bad kubeconfig fails the start); the watch runs in
            // the background and nothing waits for it.
            let metrics = identity::IdentityMetrics::register(registry);
            let identities = identity::Identities::new(&config.pod_identity, &metrics);
            let (client, selector) = identity::watch::client(&config.pod_identity, env).await?;
            tokio::spawn(identity::watch::run(
                client,
                selector,
                identities.clone(),
                stop_all.clone(),
            ));
            tracker = tracker.with_identities(identities.clone());
            Some(identities)
        } else {
            None
        };
        let trace_sink = tracker.spawn(config.lookup.queue, &lookup_metrics, stop_all.clone());
        let writers = TaskTracker::new();
        let dnstap = dnstap::Dnstap::start(
            &config.dnstap,
            &dnstap::DnstapMetrics::register(registry),
            &writers,
            stop_all.clone(),
        )
        .map_err(|message| config::ConfigError::Invalid {
            key: "dnstap",
            message,
        })?;
        let shared = Shared {
            forward_metrics,
            pipeline_metrics: PipelineMetrics::register(registry),
            listen_metrics: Arc::new(ListenMetrics::register(
                registry,
                Some(trace_sink.clone()),
                dnstap.clone(),
            )),
            dnstap,
            writers,
            trace_sink,
            trace_export,
            resource,
            reloads: ReloadMetrics::register(registry),
            loop_guard: Arc::new(pipeline::LoopGuard::register(registry)),
            tasks: TaskTracker::new(),
            identities,
            stop_all,
        };
        let current = Generation::build(config, &shared, None, export.is_some())?;
        let admin_listener =
            listen::tcp_listener(config.admin.listen).map_err(|error| StartError::Metrics {
                addr: config.admin.listen,
                error,
            })?;
        let metrics_addr = admin_listener
            .local_addr()
            .map_err(|error| StartError::Metrics {
                addr: config.admin.listen,
                error,
            })?;
        let bind_unix = |key, path: &std::path::Path| {
            admin::bind_unix_socket(path).map_err(|error| StartError::AdminSocket {
                key,
                path: path.display().to_string(),
                error,
            })
        };
        let probe_listener = config
            .admin
            .probe_socket
            .as_deref()
            .map(|path| bind_unix("probe_socket", path))
            .transpose()?;
        let pods = config
            .admin
            .pod_sockets
            .as_deref()
            .map(|dir| {
                let own = std::env::var("POD_NAME").map_err(|_| {
                    StartError::PodSockets("needs POD_NAME, the pod's name (downward API)".into())
                })?;
                admin::pods::PodSockets::new(dir, &own)
                    .map_err(|e| StartError::PodSockets(format!("POD_NAME: {e}")))
            })
            .transpose()?;
        let pod_listener = pods
            .as_ref()
            .map(|pods| bind_unix("pod_sockets", &pods.own_socket()))
            .transpose()?;
        let forwarder_now = Arc::new(ArcSwap::new(current.forwarder.clone()));
        let draining = CancellationToken::new();
        let admin = tokio::spawn({
            let state = admin::AdminState {
                registry: Arc::new(root),
                health: Arc::new(Health {
                    forwarder: forwarder_now.clone(),
                    loop_guard: shared.loop_guard.clone(),
                }),
                debug: admin::DebugState {
                    journal: Some(journal.clone()),
                    cluster: config
                        .admin
                        .ui
                        .cluster_view()
                        .map_err(StartError::Backend)?,
                    allowed: Arc::new(config.admin.debug_access()),
                    ui_page: admin::ui_page(&config.admin.ui, admin::Scope::Instance).into(),
                },
                draining: draining.clone(),
                pods: pods.clone().map(Arc::new),
            };
            let stop = shared.stop_all.clone();
            async move {
                let unix_servers: Vec<_> = [probe_listener, pod_listener]
                    .into_iter()
                    .flatten()
                    .map(|listener| {
                        let (state, stop) = (state.clone(), stop.clone());
                        tokio::spawn(async move {
                            if let Err(e) = admin::serve_unix(listener, state, stop).await {
                                tracing::error!(error = %e, "admin unix socket server failed");
                            }
                        })
                    })
                    .collect();
                if let Err(e) = admin::serve(admin_listener, state, stop).await {
                    tracing::error!(error = %e, "metrics server failed");
                }
                for server in unix_servers {
                    let _ = server.await;
                }
                // Gone at once for the node's other dnslens: a relayed scrape is 404.
                if let Some(pods) = pods {
                    let _ = std::fs::remove_file(pods.own_socket());
                }
            }
        });
        info!(
            mode = config.mode.as_str(),
            listen = ?current.dns_addrs,
            upstreams = ?upstream_list(config),
            forward_zones = ?zone_list(config),
            metrics = %metrics_addr,
            upstream_timeout = ?config.forward.timeout,
            attempts = config.forward.attempts,
            tracing = %export.as_ref().map_or("off".to_string(), |e| {
                format!("{} ({:?}, sample ratio {})", e.endpoint, e.protocol, e.sample_ratio)
            }),
            "dnslens serving"
        );
        Ok(Proxy {
            journal,
            dns_addrs: current.dns_addrs.clone(),
            metrics_addr,
            current,
            retiring: JoinSet::new(),
            shared,
            forwarder_now,
            draining,
            admin,
        })
    }

    /// Applies `config` without dropping a query: a new forwarder, pipeline (the cache kept
    /// when `cache:` is unchanged) and listeners bound beside the old ones (SO_REUSEPORT;
    /// the same addresses stay the same ports), then the old listeners stop, answering what
    /// they hold, and the old forwarder finishes the queries it has. Tracing is restarted
    /// when its settings changed. Refused, with everything as it was, when `config` is
    /// invalid or cannot be started. Returns the keys that changed but take effect only at
    /// the next start (the lookup tracker's and the admin server's).
    pub async fn reload(&mut self, config: Config) -> Result<Vec<&'static str>, ReloadError> {
        config.validate()?;
        let env = |key: &str| std::env::var(key).ok();
        let export = telemetry::ExportSettings::resolve(&config.tracing, env);
        let before = telemetry::ExportSettings::resolve(&self.current.config.tracing, env);
        let resource = &self.shared.resource;
        let tracing_changed = self
            .shared
            .trace_export
            .apply(export.as_ref(), resource)
            .map_err(StartError::from)?;
        let next =
            match Generation::build(&config, &self.shared, Some(&self.current), export.is_some()) {
                Ok(next) => next,
                Err(e) => {
                    if tracing_changed {
                        let _ = self.shared.trace_export.apply(before.as_ref(), resource);
                    }
                    return Err(e.into());
                }
            };
        let restart_only = restart_only_changes(&self.current.config, &config);
        let old = std::mem::replace(&mut self.current, next);
        self.forwarder_now.store(self.current.forwarder.clone());
        self.shared
            .forward_metrics
            .forget(&old.forwarder, &self.current.forwarder);
        self.dns_addrs = self.current.dns_addrs.clone();
        self.retiring.spawn(old.retire());
        self.shared.reloads.loaded();
        Ok(restart_only)
    }

    /// [`Proxy::reload`] with its outcome logged and counted
    /// (`dnslens_config_reloads_total{result}`): one line naming the key at fault when
    /// refused. `load` is what the running configuration was loaded with.
    pub async fn reload_from(&mut self, load: impl Fn() -> Result<Config, config::ConfigError>) {
        let result = match load() {
            Ok(config) => self.reload(config).await,
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(restart_only) => {
                self.shared.reloads.ok.inc();
                if restart_only.is_empty() {
                    info!(listen = ?self.dns_addrs, "configuration reloaded");
                } else {
                    tracing::warn!(keys = ?restart_only,
                        "configuration reloaded; these keys take effect at the next restart");
                }
            }
            Err(e) => {
                self.shared.reloads.error.inc();
                tracing::error!(error = %e, "configuration refused; the running one stays");
            }
        }
    }

    /// The stop after SIGTERM: `/readyz` turns 503 at once while DNS is still served for
    /// the lameduck period (endpoints and iptables rules catch up meanwhile), then
    /// [`Proxy::shutdown`].
    pub async fn stop_after_lameduck(self) {
        self.draining.cancel();
        let lameduck = self.current.config.lameduck();
        if !lameduck.is_zero() {
            info!(lameduck = ?lameduck, "not ready; still answering for the lameduck period");
            tokio::time::sleep(lameduck).await;
        }
        self.shutdown().await;
    }

    /// Graceful stop: no new queries, in-flight ones answered and every task the data
    /// path spawned finished (within the grace period), then every task ends.
    pub async fn shutdown(mut self) {
        self.draining.cancel();
        self.current.stop_listening.cancel();
        self.shared.tasks.close();
        let inflight = self.shared.forward_metrics.clone();
        let tasks = self.shared.tasks.clone();
        let listeners = &mut self.current.listeners;
        let drained = async {
            while listeners.join_next().await.is_some() {}
            while inflight.inflight_queries() > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            tasks.wait().await;
        };
        if tokio::time::timeout(self.current.config.shutdown_grace, drained)
            .await
            .is_err()
        {
            tracing::warn!(
                inflight = self.shared.forward_metrics.inflight_queries(),
                "grace period over; dropping in-flight queries"
            );
        }
        self.shared.stop_all.cancel();
        // The exporter's last batch (the lookups of the last second) before the process ends.
        let export = self.shared.trace_export.clone();
        let export_wait =
            self.current.config.tracing.export_timeout + std::time::Duration::from_secs(1);
        if !tokio::task::spawn_blocking(move || export.wait_stopped(export_wait))
            .await
            .unwrap_or(false)
        {
            tracing::warn!("the trace exporter did not finish its last export in time");
        }
        self.shared.writers.close();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            self.shared.writers.wait(),
        )
        .await;
        self.current.listeners.abort_all();
        self.retiring.abort_all();
        let _ = self.admin.await;
    }
}

impl Generation {
    /// Builds and starts what `config` asks for. With `previous`, listen addresses it
    /// already had keep their bound ports and an unchanged `cache:` keeps its cache.
    fn build(
        config: &Config,
        shared: &Shared,
        previous: Option<&Generation>,
        tracing_on: bool,
    ) -> Result<Generation, StartError> {
        let forwarder = Forwarder::build(
            &config.forward,
            ForwardParts {
                tasks: shared.tasks.clone(),
                dnstap: shared.dnstap.clone(),
            },
            &shared.forward_metrics,
        )
        .map_err(StartError::Upstream)?;
        let kept_cache = previous
            .filter(|p| p.config.cache == config.cache)
            .and_then(|p| p.pipeline.cache());
        let pipeline = Pipeline::build(
            &config.cache,
            &config.mitigations,
            PipelineParts {
                forwarder: forwarder.clone(),
                search: SearchModel::build(config.mode, &config.search),
                trace_sink: Some(shared.trace_sink.clone().keeping_addresses(tracing_on)),
                tasks: shared.tasks.clone(),
                cache: kept_cache,
                loop_guard: shared.loop_guard.clone(),
                identities: shared.identities.clone(),
            },
            &shared.pipeline_metrics,
        );
        let addrs = match previous {
            Some(p) if p.config.listen == config.listen => p.dns_addrs.clone(),
            _ => config.listen.clone(),
        };
        let listeners = listen::bind(&addrs, &config.listener, &shared.listen_metrics.replies)
            .map_err(|error| StartError::Listen {
                addr: addrs
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                error,
            })?;
        let dns_addrs = listeners.local_addrs.clone();
        let stop_forwarding = shared.stop_all.child_token();
        forwarder.spawn(stop_forwarding.clone());
        let stop_listening = CancellationToken::new();
        let mut listener_tasks = JoinSet::new();
        listeners.spawn(
            &config.listener,
            pipeline.clone(),
            shared.listen_metrics.clone(),
            stop_listening.clone(),
            &mut listener_tasks,
        );
        if config.forward.loop_check {
            pipeline.probe_for_loops(stop_listening.clone());
        }
        Ok(Generation {
            config: config.clone(),
            forwarder,
            pipeline,
            dns_addrs,
            listeners: listener_tasks,
            stop_listening,
            stop_forwarding,
        })
    }

    /// Stops listening (the listeners answer what they hold), lets the forwarder finish
    /// every query it took — each has `attempts` tries of `upstream_timeout` at most — then
    /// ends its tasks.
    async fn retire(mut self) {
        self.stop_listening.cancel();
        while self.listeners.join_next().await.is_some() {}
        let last_answer = self.config.forward.timeout * self.config.forward.attempts
            + std::time::Duration::from_secs(1);
        tokio::time::sleep(last_answer).await;
        self.stop_forwarding.cancel();
    }
}

/// Changed keys a reload does not apply: the lookup tracker, the journal and the admin
/// server are built once.
/// The data path's health as `admin` reads it: the forwarder serving now (a reload swaps
/// it) and the loop probe.
struct Health {
    forwarder: Arc<ArcSwap<Forwarder>>,
    loop_guard: Arc<pipeline::LoopGuard>,
}

impl admin::DataPathHealth for Health {
    fn upstreams(&self) -> Vec<(SocketAddr, bool)> {
        self.forwarder.load().upstream_states()
    }

    fn forwarding_loop(&self) -> Option<bool> {
        if self.loop_guard.detected() {
            Some(true)
        } else {
            self.loop_guard.probed().then_some(false)
        }
    }
}

fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut changed = |key: &'static str, differs: bool| {
        if differs {
            keys.push(key);
        }
    };
    changed("mode", old.mode != new.mode);
    changed("admin", old.admin != new.admin);
    changed("search", old.search != new.search);
    changed("lookup", old.lookup != new.lookup);
    changed("journal", old.journal != new.journal);
    keys
}

fn upstream_list(config: &Config) -> Vec<SocketAddr> {
    config.forward.upstreams.iter().map(|u| u.0).collect()
}

fn zone_list(config: &Config) -> Vec<String> {
    config
        .forward
        .zones
        .iter()
        .map(|z| {
            let upstreams: Vec<String> = z.upstreams.iter().map(|u| u.to_string()).collect();
            let tcp = if z.force_tcp { " (tcp)" } else { "" };
            format!("{} -> {}{tcp}", z.zone, upstreams.join(","))
        })
        .collect()
}

/// How often the config file is read again, looking for a change (a ConfigMap update
/// swaps the file; reading it is cheaper than watching every way it can be replaced).
pub const CONFIG_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs the proxy until SIGTERM or SIGINT, then shuts down gracefully. SIGHUP, and a
/// change of `watch` (the config file), reload the configuration with `load`.
pub async fn serve_until_signal(
    load: impl Fn() -> Result<Config, config::ConfigError>,
    watch: Option<std::path::PathBuf>,
) -> Result<(), StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let config = load()?;
    let mut proxy = Proxy::start(&config).await?;
    let mut hangup = signal(SignalKind::hangup()).ok();
    let mut check = tokio::time::interval(CONFIG_CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let read = |path: &std::path::Path| std::fs::read(path).ok();
    let mut seen = watch.as_deref().and_then(read);
    let stop = wait_for_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => {
                info!("SIGHUP: reloading the configuration");
                seen = watch.as_deref().and_then(read);
                proxy.reload_from(&load).await;
            }
            _ = check.tick(), if watch.is_some() => {
                let now = watch.as_deref().and_then(read);
                // A file missing for a moment (a ConfigMap's symlink swap) is no change.
                if now.is_some() && now != seen {
                    info!("the configuration file changed: reloading");
                    seen = now;
                    proxy.reload_from(&load).await;
                }
            }
        }
    }
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
