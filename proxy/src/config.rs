//! Configuration: one serde tree, its defaults, the file/env/flag merge, and the rules that
//! span sections, with one-line errors. Each section's type, defaults and own checks live
//! with the component that reads it (`ListenerConfig` in `listen`, `ForwardConfig` in
//! `forward`, `CacheConfig` in `cache`, …); this module assembles them.
//!
//! Sources, later wins: the YAML file (`--config FILE`), then `DNSLENS_*` environment
//! variables, then command-line flags (the last two are merged by `cli`, which calls
//! [`Config::apply`]). With no upstream anywhere, upstreams come from `/etc/resolv.conf`,
//! excluding the proxy's own listen addresses.
//!
//! Keys (YAML, snake_case; defaults in brackets):
//! - `mode`: `sidecar` | `node-local` [sidecar]
//! - `listen`: list of `ADDR:PORT`, UDP and TCP on each [sidecar: `127.0.0.1:53`,
//!   node-local: `169.254.20.10:53`]
//! - `upstreams`: list of `ADDR[:PORT]`, port 53 by default [from /etc/resolv.conf]
//! - `forward_zones`: list of `{zone, upstreams, force_tcp}`: names under a zone go to its
//!   upstreams, the longest zone winning (see `forward::zones`) [none]
//! - `cluster_dns`: `ADDR[:PORT]` of the cluster DNS Service. In node-local mode it gives
//!   NodeLocal DNSCache's layout: `<cluster_domain>`, `in-addr.arpa` and `ip6.arpa` to it
//!   over TCP (each unless `forward_zones` lists that zone itself), everything else to
//!   `upstreams` (by default the node's resolv.conf nameservers) [none]
//! - `metrics_listen`: `ADDR:PORT` of /metrics, /healthz, /readyz [`127.0.0.1:9253`]
//! - `upstream_timeout`: per-try timeout [2s]; `attempts`: tries per query over all upstreams [2]
//! - `shutdown_grace`: how long in-flight queries may take after SIGTERM [5s]
//! - `lameduck`: how long DNS is still answered after SIGTERM while `/readyz` says 503
//!   [node-local: 5s; sidecar: 0s, the kubelet stops sidecars last]
//! - `admin:` `debug_allow`: CIDRs that may read `/debug/*` and `/ui/` [loopback only];
//!   `ui:` `trace_url`: the timeline page's link to a trace, `{trace_id}` replaced (see `admin`)
//! - `listener:` `udp_workers` [0 = one per core], `tcp_max_connections` [1024],
//!   `tcp_idle_timeout` [10s], `tcp_max_inflight_per_connection` [64], `allow`: client CIDRs
//!   answered, others REFUSED [sidecar: loopback; node-local: required, the pod CIDRs]
//! - `forward:` `udp_sockets` [4], `max_inflight` [16384], `socket_lifetime` [5m],
//!   `failure_threshold` [3], `backoff_min` [1s], `backoff_max` [30s], `tcp_idle_timeout` [20s],
//!   `tcp_connect_timeout` [1s], `force_tcp` [false]: every upstream query over TCP,
//!   `loop_check` [false]: a forwarding-loop probe at start and after each reload
//! - `cache:` `enabled` [false], `max_entries` [10000], `min_ttl` [0s], `max_ttl` [1h],
//!   `max_negative_ttl` [5m], `serve_stale` [false], `prefetch` [0 = off] (see `cache`)
//! - `mitigations:` `autopath` [false], `musl_shield` [false] (see `mitigate`)
//! - `search`, `ndots`, `cluster_domain` [cluster.local], `resolv_conf` [/etc/resolv.conf]:
//!   the search-path model (see `search`)
//! - `lookup:` `window` [2s], `max_entries` [10000], `queue` [16384] (see `lookup`)
//! - `tracing:` `endpoint`, `protocol` (`grpc` | `http/protobuf`), `sample_ratio` [0.01],
//!   `keep_anomalous_per_second` [100], `keep_anomalous_per_name_per_second` [1; 0 = no limit],
//!   `queue` [8192], `export_timeout` [5s], `ca_file` (PEM CAs for an `https://` endpoint,
//!   besides the system's) (see `telemetry`)
//! - `journal:` `entries` [10000] (see `anomaly::journal`)
//! - `pod_identity:` `enabled` [false], `node_name` [$NODE_NAME], `kubeconfig` [in-cluster],
//!   `stale_after` [5m], `max_pods` [1024]: name node-local clients by pod (see `identity`)
//!
//! Every error is one line naming the key or value at fault; the binary exits 2 on it. A
//! reload (SIGHUP, a changed file) loads the same way; see `Proxy::reload` for which keys it
//! applies.

// Distinct upstream addresses over `upstreams` and every zone: one bit each in the set of
// upstreams a query tried.
use crate::forward::select::MAX_UPSTREAMS;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::admin::{AdminConfig, UiConfig};
pub use crate::anomaly::journal::JournalConfig;
pub use crate::cache::CacheConfig;
pub use crate::forward::zones::ForwardZone;
pub use crate::forward::ForwardConfig;
pub use crate::identity::PodIdentityConfig;
use crate::invalid::Invalid;
pub use crate::listen::ListenerConfig;
pub use crate::lookup::LookupConfig;
pub use crate::mitigate::MitigationsConfig;
pub use crate::search::{Mode, SearchSettings};
pub use crate::telemetry::{OtlpProtocol, TracingConfig};

/// Default DNS port for upstreams given without one.
pub use crate::forward::{UpstreamAddr, DNS_PORT};

/// A configuration error: one line, names the key or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl From<Invalid> for ConfigError {
    fn from(invalid: Invalid) -> Self {
        ConfigError::Invalid {
            key: invalid.key,
            message: invalid.reason,
        }
    }
}

impl ConfigError {
    fn invalid(key: &'static str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key,
            message: message.into(),
        }
    }
}

/// Listen address when none is configured: loopback for a sidecar, NodeLocal DNSCache's
/// link-local convention for node-local.
fn default_listen(mode: Mode) -> SocketAddr {
    match mode {
        Mode::Sidecar => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DNS_PORT),
        Mode::NodeLocal => SocketAddr::new(IpAddr::V4(Ipv4Addr::new(169, 254, 20, 10)), DNS_PORT),
    }
}

/// The whole configuration tree.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub mode: Mode,
    pub listen: Vec<SocketAddr>,
    pub upstreams: Vec<UpstreamAddr>,
    pub forward_zones: Vec<ForwardZone>,
    pub cluster_dns: Option<UpstreamAddr>,
    pub metrics_listen: SocketAddr,
    #[serde(with = "humantime_serde")]
    pub upstream_timeout: Duration,
    pub attempts: u32,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Unset: by mode (see [`Config::lameduck`]).
    #[serde(with = "humantime_serde")]
    pub lameduck: Option<Duration>,
    pub admin: AdminConfig,
    pub ui: UiConfig,
    pub listener: ListenerConfig,
    pub forward: ForwardConfig,
    /// Search domains: the pod's list (sidecar) or host domains after the Kubernetes ones
    /// (node-local). Empty in a sidecar: read from `resolv_conf`.
    pub search: Vec<String>,
    /// The pod's ndots; from `resolv_conf` when unset in a sidecar, else 5.
    pub ndots: Option<u32>,
    pub cluster_domain: String,
    /// The pod's resolv.conf: search list and ndots (sidecar), upstreams when none is given.
    pub resolv_conf: PathBuf,
    pub lookup: LookupConfig,
    pub tracing: TracingConfig,
    pub journal: JournalConfig,
    pub cache: CacheConfig,
    pub mitigations: MitigationsConfig,
    pub pod_identity: PodIdentityConfig,
    pub dnstap: crate::dnstap::DnstapConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::Sidecar,
            listen: Vec::new(),
            upstreams: Vec::new(),
            forward_zones: Vec::new(),
            cluster_dns: None,
            metrics_listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9253),
            upstream_timeout: Duration::from_secs(2),
            attempts: 2,
            shutdown_grace: Duration::from_secs(5),
            lameduck: None,
            admin: AdminConfig::default(),
            ui: UiConfig::default(),
            listener: ListenerConfig::default(),
            forward: ForwardConfig::default(),
            search: Vec::new(),
            ndots: None,
            cluster_domain: "cluster.local".to_string(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            lookup: LookupConfig::default(),
            tracing: TracingConfig::default(),
            journal: JournalConfig::default(),
            cache: CacheConfig::default(),
            mitigations: MitigationsConfig::default(),
            pod_identity: PodIdentityConfig::default(),
            dnstap: crate::dnstap::DnstapConfig::default(),
        }
    }
}

/// Values from the environment and the command line that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub mode: Option<Mode>,
    pub listen: Vec<SocketAddr>,
    pub upstreams: Vec<UpstreamAddr>,
    pub cluster_dns: Option<UpstreamAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub upstream_timeout: Option<Duration>,
    pub attempts: Option<u32>,
    pub search: Vec<String>,
    pub ndots: Option<u32>,
    pub cluster_domain: Option<String>,
    pub resolv_conf: Option<PathBuf>,
    /// Switches that can only turn a feature on.
    pub cache: bool,
    pub musl_shield: bool,
    pub autopath: bool,
}

impl Config {
    /// How long DNS is still answered after SIGTERM: the `lameduck` key, else 5 s in
    /// node-local mode (clients are switched away by iptables/endpoint updates that take a
    /// moment) and none in a sidecar (the kubelet stops sidecars after the app).
    pub fn lameduck(&self) -> Duration {
        self.lameduck.unwrap_or(match self.mode {
            Mode::NodeLocal => Duration::from_secs(5),
            Mode::Sidecar => Duration::ZERO,
        })
    }

    /// Reads and parses a YAML file. Unknown keys are errors.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Config::from_yaml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses YAML text; an empty document is the default configuration.
    pub fn from_yaml(text: &str) -> Result<Config, String> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        crate::yaml::from_str(text)
    }

    /// Applies environment/flag overrides on top of the file's values.
    pub fn apply(&mut self, o: Overrides) {
        if let Some(mode) = o.mode {
            self.mode = mode;
        }
        if !o.listen.is_empty() {
            self.listen = o.listen;
        }
        if !o.upstreams.is_empty() {
            self.upstreams = o.upstreams;
        }
        if o.cluster_dns.is_some() {
            self.cluster_dns = o.cluster_dns;
        }
        if let Some(addr) = o.metrics_listen {
            self.metrics_listen = addr;
        }
        if let Some(t) = o.upstream_timeout {
            self.upstream_timeout = t;
        }
        if let Some(a) = o.attempts {
            self.attempts = a;
        }
        if !o.search.is_empty() {
            self.search = o.search;
        }
        if let Some(n) = o.ndots {
            self.ndots = Some(n);
        }
        if let Some(d) = o.cluster_domain {
            self.cluster_domain = d;
        }
        if let Some(p) = o.resolv_conf {
            self.resolv_conf = p;
        }
        self.cache.enabled |= o.cache;
        self.mitigations.musl_shield |= o.musl_shield;
        self.mitigations.autopath |= o.autopath;
    }

    /// Fills in what was left empty (listen addresses from the mode, upstreams from
    /// `resolv_conf`) and checks the result.
    pub fn finish(mut self) -> Result<Config, ConfigError> {
        if self.listen.is_empty() {
            self.listen.push(default_listen(self.mode));
        }
        if self.upstreams.is_empty() {
            self.upstreams = upstreams_from_resolv_conf(&self.resolv_conf, &self.listen)?;
        }
        if let (Mode::NodeLocal, Some(cluster_dns)) = (self.mode, self.cluster_dns) {
            for zone in node_local_zones(&self.cluster_domain, cluster_dns) {
                let listed = self
                    .forward_zones
                    .iter()
                    .any(|z| crate::forward::zones::normalize(&z.zone) == zone.zone);
                if !listed {
                    self.forward_zones.push(zone);
                }
            }
        }
        self.validate()?;
        Ok(self)
    }

    /// Every upstream address: the top-level ones, then each zone's.
    fn all_upstreams(&self) -> impl Iterator<Item = (&'static str, UpstreamAddr)> + '_ {
        let top = self.upstreams.iter().map(|u| ("upstreams", *u));
        let zones = self
            .forward_zones
            .iter()
            .flat_map(|z| z.upstreams.iter().map(|u| ("forward_zones", *u)));
        let cluster = self.cluster_dns.iter().map(|u| ("cluster_dns", *u));
        top.chain(zones).chain(cluster)
    }

    /// Checks a finished configuration: addresses present, and every value workable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(ConfigError::invalid(
                "listen",
                "at least one address is needed",
            ));
        }
        if self.upstreams.is_empty() {
            return Err(ConfigError::invalid(
                "upstreams",
                "at least one upstream is needed",
            ));
        }
        self.check_values()
    }

    /// Checks values that parse but cannot work. Empty `listen`/`upstreams` pass here: at
    /// start they come from the mode and from resolv.conf (`check-config` uses this).
    pub fn check_values(&self) -> Result<(), ConfigError> {
        for (key, upstream) in self.all_upstreams() {
            if upstream.0.port() == 0 || upstream.0.ip().is_unspecified() {
                return Err(ConfigError::invalid(
                    key,
                    format!("{upstream} cannot be sent to"),
                ));
            }
            if let Some(listen) = self.listen.iter().find(|l| is_loop(**l, upstream.0)) {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "{upstream} is the proxy's own listen address {listen}: a forwarding loop"
                    ),
                ));
            }
        }
        crate::forward::zones::validate(&self.forward_zones)?;
        let mut distinct: Vec<SocketAddr> = self.all_upstreams().map(|(_, u)| u.0).collect();
        distinct.sort();
        distinct.dedup();
        if distinct.len() > MAX_UPSTREAMS {
            return Err(ConfigError::invalid(
                "forward_zones",
                format!(
                    "{} distinct upstreams; at most {MAX_UPSTREAMS}",
                    distinct.len()
                ),
            ));
        }
        if self.upstream_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "upstream_timeout",
                "must be above zero",
            ));
        }
        if !(1..=10).contains(&self.attempts) {
            return Err(ConfigError::invalid(
                "attempts",
                format!("{} is not within 1..=10", self.attempts),
            ));
        }
        if self.ndots.is_some_and(|n| n > 15) {
            return Err(ConfigError::invalid(
                "ndots",
                "at most 15 (the resolver's own limit)",
            ));
        }
        if self.cluster_domain.trim_end_matches('.').is_empty() {
            return Err(ConfigError::invalid("cluster_domain", "must not be empty"));
        }
        if let Some(bad) = self
            .search
            .iter()
            .find(|d| d.trim_end_matches('.').is_empty() || d.contains(char::is_whitespace))
        {
            return Err(ConfigError::invalid(
                "search",
                format!("'{bad}' is not a domain"),
            ));
        }
        // Each component checks its own section ...
        self.listener.validate()?;
        self.forward.validate()?;
        self.cache.validate()?;
        self.lookup.validate()?;
        self.tracing.validate()?;
        self.pod_identity.validate()?;
        self.dnstap
            .validate()
            .map_err(|e| ConfigError::invalid("dnstap", e))?;
        // ... and the rules that span sections are here.
        if self.mode == Mode::NodeLocal && self.listener.allow.is_empty() {
            return Err(ConfigError::invalid(
                "listener.allow",
                "node-local mode needs the client networks (the pod CIDRs): dnslens is never an open resolver",
            ));
        }
        if self.mitigations.autopath && self.mode == Mode::NodeLocal && !self.pod_identity.enabled {
            return Err(ConfigError::invalid(
                "mitigations.autopath",
                "needs the client's exact search list: in node-local mode turn on pod_identity (autopath then serves the clients whose pod it verified)",
            ));
        }
        Ok(())
    }

    /// The search-path model's settings (top-level keys: `mode`, `search`, `ndots`,
    /// `cluster_domain`).
    pub fn search_settings(&self) -> SearchSettings {
        SearchSettings {
            mode: self.mode,
            search: self.search.clone(),
            ndots: self.ndots,
            cluster_domain: self.cluster_domain.clone(),
        }
    }
}

/// NodeLocal DNSCache's zones: the cluster domain and the reverse zones to the cluster DNS
/// over TCP (node-cache's `force_tcp`: no UDP flow for conntrack to race on).
pub fn node_local_zones(cluster_domain: &str, cluster_dns: UpstreamAddr) -> Vec<ForwardZone> {
    [cluster_domain, "in-addr.arpa", "ip6.arpa"]
        .iter()
        .map(|zone| ForwardZone {
            zone: crate::forward::zones::normalize(zone),
            upstreams: vec![cluster_dns],
            force_tcp: true,
        })
        .collect()
}

/// True when sending to `upstream` would reach the proxy's own listener `listen`.
fn is_loop(listen: SocketAddr, upstream: SocketAddr) -> bool {
    if listen.port() != upstream.port() {
        return false;
    }
    listen.ip() == upstream.ip() || (listen.ip().is_unspecified() && upstream.ip().is_loopback())
}

/// Nameservers of a resolv.conf file, port 53, minus the proxy's own listen addresses.
pub fn upstreams_from_resolv_conf(
    path: &Path,
    listen: &[SocketAddr],
) -> Result<Vec<UpstreamAddr>, ConfigError> {
    let text = std::fs::read(path).map_err(|e| {
        ConfigError::invalid(
            "upstreams",
            format!("none given, and {} cannot be read: {e}", path.display()),
        )
    })?;
    let parsed = resolv_conf::Config::parse(&text).map_err(|e| {
        ConfigError::invalid(
            "upstreams",
            format!("none given, and {}: {e}", path.display()),
        )
    })?;
    let upstreams: Vec<UpstreamAddr> = parsed
        .nameservers
        .iter()
        .map(|ns| UpstreamAddr(SocketAddr::new(IpAddr::from(ns.clone()), DNS_PORT)))
        .filter(|u| !listen.iter().any(|l| is_loop(*l, u.0)))
        .collect();
    if upstreams.is_empty() {
        return Err(ConfigError::invalid(
            "upstreams",
            format!(
                "none given, and {} lists no nameserver besides dnslens itself",
                path.display()
            ),
        ));
    }
    Ok(upstreams)
}

#[cfg(test)]
mod tests;
