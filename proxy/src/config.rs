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
//! Keys (YAML, snake_case; defaults in brackets), each section owned by its component:
//! - `mode`: `sidecar` | `node-local` [sidecar]
//! - `listen`: list of `ADDR:PORT`, UDP and TCP on each [sidecar: `127.0.0.1:53`,
//!   node-local: `169.254.20.10:53`]
//! - `shutdown_grace`: how long in-flight queries may take after SIGTERM [5s]
//! - `lameduck`: how long DNS is still answered after SIGTERM while `/readyz` says 503
//!   [node-local: 5s; sidecar: 0s, the kubelet stops sidecars last]
//! - `forward:` `upstreams`: list of `ADDR[:PORT]`, port 53 by default [from
//!   `search.resolv_conf`]; `zones`: list of `{zone, upstreams, force_tcp}`, names under a
//!   zone to its upstreams, the longest zone winning (see `forward::zones`) [none];
//!   `cluster_dns`: `ADDR[:PORT]` of the cluster DNS Service — in node-local mode
//!   NodeLocal DNSCache's layout: `<cluster_domain>`, `in-addr.arpa` and `ip6.arpa` to it
//!   over TCP (each unless `zones` lists it), everything else to `upstreams` [none];
//!   `timeout` per try [2s]; `attempts` per query over all upstreams [2]; `udp_sockets` [4],
//!   `max_inflight` [16384], `socket_lifetime` [5m], `failure_threshold` [3], `backoff_min`
//!   [1s], `backoff_max` [30s], `tcp_idle_timeout` [20s], `tcp_connect_timeout` [1s],
//!   `force_tcp` [false]: every upstream query over TCP, `loop_check` [false]: a
//!   forwarding-loop probe at start and after each reload
//! - `search:` `list`, `ndots`, `cluster_domain` [cluster.local], `resolv_conf`
//!   [/etc/resolv.conf]: the search-path model (see `search`)
//! - `admin:` `listen`: `ADDR:PORT` of /metrics, /healthz, /readyz [`127.0.0.1:9253`];
//!   `debug_allow`: CIDRs that may read `/debug/*` and `/ui/` [loopback only];
//!   `probe_socket`, `pod_sockets`, `node_setup_status`; `ui:` `trace_url`, `backend`,
//!   `backend_service`: the timeline page (see `admin`)
//! - `listener:` `udp_workers` [0 = one per core], `tcp_max_connections` [1024],
//!   `tcp_idle_timeout` [10s], `tcp_max_inflight_per_connection` [64], `allow`: client CIDRs
//!   answered, others REFUSED [sidecar: loopback; node-local: required, the pod CIDRs]
//! - `cache:` `enabled` [false], `max_entries` [10000], `min_ttl` [0s], `max_ttl` [1h],
//!   `max_negative_ttl` [5m], `serve_stale` [false], `prefetch` [0 = off] (see `cache`)
//! - `mitigations:` `autopath` [false], `musl_shield` [false] (see `mitigate`)
//! - `lookup:` `window` [2s], `max_entries` [10000], `queue` [16384] (see `lookup`)
//! - `tracing:` `endpoint`, `protocol` (`grpc` | `http/protobuf`), `sample_ratio` [0.01],
//!   `keep_anomalous_per_second` [100], `keep_anomalous_per_name_per_second` [1; 0 = no limit],
//!   `queue` [8192], `export_timeout` [5s], `ca_file` (PEM CAs for an `https://` endpoint,
//!   besides the system's) (see `telemetry`)
//! - `journal:` `entries` [10000] (see `anomaly::journal`)
//! - `pod_identity:` `enabled` [false], `node_name` [$NODE_NAME], `kubeconfig` [in-cluster],
//!   `stale_after` [5m], `max_pods` [1024]: name node-local clients by pod (see `identity`)
//! - `dnstap:` (see `dnstap`)
//!
//! Old names, loaded for one release with a warning naming the new key (both set is an
//! error): `upstreams`, `forward_zones`, `cluster_dns`, `upstream_timeout`, `attempts` (now
//! in `forward:`, the last two as `timeout` and `attempts`, the zones as `zones`); `search`
//! as a list, `ndots`, `cluster_domain`, `resolv_conf` (now in `search:`, the list as
//! `list`); `metrics_listen` and `ui` (now `admin.listen` and `admin.ui`).
//!
//! Overrides: each flag and its `DNSLENS_*` variable is declared once, in [`Overrides`],
//! beside the key it sets.
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
pub use crate::search::{Mode, SearchConfig};
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
#[serde(try_from = "FileConfig")]
pub struct Config {
    pub mode: Mode,
    pub listen: Vec<SocketAddr>,
    pub shutdown_grace: Duration,
    /// Unset: by mode (see [`Config::lameduck`]).
    pub lameduck: Option<Duration>,
    pub admin: AdminConfig,
    pub listener: ListenerConfig,
    pub forward: ForwardConfig,
    pub search: SearchConfig,
    pub lookup: LookupConfig,
    pub tracing: TracingConfig,
    pub journal: JournalConfig,
    pub cache: CacheConfig,
    pub mitigations: MitigationsConfig,
    pub pod_identity: PodIdentityConfig,
    pub dnstap: crate::dnstap::DnstapConfig,
    /// Old key names the file used, each with the key that replaces it.
    pub deprecated: Vec<Deprecated>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::Sidecar,
            listen: Vec::new(),
            shutdown_grace: Duration::from_secs(5),
            lameduck: None,
            admin: AdminConfig::default(),
            listener: ListenerConfig::default(),
            forward: ForwardConfig::default(),
            search: SearchConfig::default(),
            lookup: LookupConfig::default(),
            tracing: TracingConfig::default(),
            journal: JournalConfig::default(),
            cache: CacheConfig::default(),
            mitigations: MitigationsConfig::default(),
            pod_identity: PodIdentityConfig::default(),
            dnstap: crate::dnstap::DnstapConfig::default(),
            deprecated: Vec::new(),
        }
    }
}

/// A key the file still spells the old way: it loads, and a warning names the new key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deprecated {
    pub old: &'static str,
    pub new: &'static str,
}

impl std::fmt::Display for Deprecated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "config key `{}` is deprecated: use `{}` (the old name stops loading in the next release)",
            self.old, self.new
        )
    }
}

/// The file as written: the sections, and the top-level keys that moved into them (one
/// release of grace). [`Config`] is built from it, each old key moved to its place.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    mode: Mode,
    listen: Vec<SocketAddr>,
    #[serde(with = "humantime_serde")]
    shutdown_grace: Option<Duration>,
    #[serde(with = "humantime_serde")]
    lameduck: Option<Duration>,
    admin: AdminConfig,
    listener: ListenerConfig,
    forward: ForwardConfig,
    search: SearchKey,
    lookup: LookupConfig,
    tracing: TracingConfig,
    journal: JournalConfig,
    cache: CacheConfig,
    mitigations: MitigationsConfig,
    pod_identity: PodIdentityConfig,
    dnstap: crate::dnstap::DnstapConfig,
    // Moved into `forward:`.
    upstreams: Option<Vec<UpstreamAddr>>,
    forward_zones: Option<Vec<ForwardZone>>,
    cluster_dns: Option<UpstreamAddr>,
    #[serde(with = "humantime_serde")]
    upstream_timeout: Option<Duration>,
    attempts: Option<u32>,
    // Moved into `search:`.
    ndots: Option<u32>,
    cluster_domain: Option<String>,
    resolv_conf: Option<PathBuf>,
    // Moved into `admin:`.
    metrics_listen: Option<SocketAddr>,
    ui: Option<UiConfig>,
}

/// `search:` — the section, or the list it used to be (deprecated: `search.list`).
#[derive(Default)]
enum SearchKey {
    #[default]
    Absent,
    Section(SearchConfig),
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for SearchKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = SearchKey;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map {list, ndots, cluster_domain, resolv_conf}")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<SearchKey, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(SearchKey::List)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<SearchKey, A::Error> {
                SearchConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(SearchKey::Section)
            }
        }
        d.deserialize_any(Either)
    }
}

/// Moves an old top-level key's value to its new place, noting the old name; both set is
/// an error (which one is meant cannot be guessed).
fn moved<T: PartialEq>(
    old: Option<T>,
    new: &mut T,
    default: T,
    names: Deprecated,
    deprecated: &mut Vec<Deprecated>,
) -> Result<(), String> {
    let Some(value) = old else {
        return Ok(());
    };
    if *new != default {
        return Err(format!(
            "both `{}` and `{}` are set: keep `{}`",
            names.old, names.new, names.new
        ));
    }
    *new = value;
    deprecated.push(names);
    Ok(())
}

impl TryFrom<FileConfig> for Config {
    type Error = String;

    fn try_from(file: FileConfig) -> Result<Config, String> {
        let defaults = Config::default();
        let mut deprecated = Vec::new();
        let mut forward = file.forward;
        let mut admin = file.admin;
        let mut search = match file.search {
            SearchKey::Absent => SearchConfig::default(),
            SearchKey::Section(section) => section,
            SearchKey::List(list) => {
                deprecated.push(Deprecated {
                    old: "search (a list)",
                    new: "search.list",
                });
                SearchConfig {
                    list,
                    ..SearchConfig::default()
                }
            }
        };
        let d = &mut deprecated;
        let names = |old, new| Deprecated { old, new };
        let (fd, sd, ad) = (&defaults.forward, &defaults.search, &defaults.admin);
        moved(
            file.upstreams,
            &mut forward.upstreams,
            fd.upstreams.clone(),
            names("upstreams", "forward.upstreams"),
            d,
        )?;
        moved(
            file.forward_zones,
            &mut forward.zones,
            fd.zones.clone(),
            names("forward_zones", "forward.zones"),
            d,
        )?;
        moved(
            file.cluster_dns.map(Some),
            &mut forward.cluster_dns,
            None,
            names("cluster_dns", "forward.cluster_dns"),
            d,
        )?;
        moved(
            file.upstream_timeout,
            &mut forward.timeout,
            fd.timeout,
            names("upstream_timeout", "forward.timeout"),
            d,
        )?;
        moved(
            file.attempts,
            &mut forward.attempts,
            fd.attempts,
            names("attempts", "forward.attempts"),
            d,
        )?;
        moved(
            file.ndots.map(Some),
            &mut search.ndots,
            None,
            names("ndots", "search.ndots"),
            d,
        )?;
        moved(
            file.cluster_domain,
            &mut search.cluster_domain,
            sd.cluster_domain.clone(),
            names("cluster_domain", "search.cluster_domain"),
            d,
        )?;
        moved(
            file.resolv_conf,
            &mut search.resolv_conf,
            sd.resolv_conf.clone(),
            names("resolv_conf", "search.resolv_conf"),
            d,
        )?;
        moved(
            file.metrics_listen,
            &mut admin.listen,
            ad.listen,
            names("metrics_listen", "admin.listen"),
            d,
        )?;
        moved(
            file.ui,
            &mut admin.ui,
            ad.ui.clone(),
            names("ui", "admin.ui"),
            d,
        )?;
        Ok(Config {
            mode: file.mode,
            listen: file.listen,
            shutdown_grace: file.shutdown_grace.unwrap_or(defaults.shutdown_grace),
            lameduck: file.lameduck,
            admin,
            listener: file.listener,
            forward,
            search,
            lookup: file.lookup,
            tracing: file.tracing,
            journal: file.journal,
            cache: file.cache,
            mitigations: file.mitigations,
            pod_identity: file.pod_identity,
            dnstap: file.dnstap,
            deprecated,
        })
    }
}

/// What the environment and the command line set over the file: each override declared
/// once, here — its flag, its `DNSLENS_*` variable (both through clap) and, in
/// [`Overrides::apply`], the key it sets.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    #[arg(long, env = "DNSLENS_MODE", value_enum)]
    pub mode: Option<Mode>,
    /// Address to serve DNS on, UDP and TCP (repeatable).
    #[arg(long = "listen", env = "DNSLENS_LISTEN", value_delimiter = ',')]
    pub listen: Vec<SocketAddr>,
    /// Upstream server ADDR[:PORT] (repeatable; port 53 by default) (`forward.upstreams`).
    #[arg(long = "upstream", env = "DNSLENS_UPSTREAMS", value_delimiter = ',')]
    pub upstreams: Vec<UpstreamAddr>,
    /// The cluster DNS Service ADDR[:PORT]: in node-local mode, the cluster domain and the
    /// reverse zones go to it over TCP (`forward.cluster_dns`).
    #[arg(long, env = "DNSLENS_CLUSTER_DNS")]
    pub cluster_dns: Option<UpstreamAddr>,
    /// Address of /metrics, /healthz and /readyz (`admin.listen`).
    #[arg(long, env = "DNSLENS_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Per-try upstream timeout, e.g. 2s or 500ms (`forward.timeout`).
    #[arg(long, env = "DNSLENS_UPSTREAM_TIMEOUT", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Option<Duration>,
    /// Tries per query across upstreams (`forward.attempts`).
    #[arg(long, env = "DNSLENS_ATTEMPTS")]
    pub attempts: Option<u32>,
    /// The pod's resolv.conf: its search list and ndots (sidecar), and its nameservers as
    /// upstreams when none is configured [/etc/resolv.conf] (`search.resolv_conf`).
    #[arg(long, env = "DNSLENS_RESOLV_CONF")]
    pub resolv_conf: Option<PathBuf>,
    /// Search domain (repeatable): the pod's list (sidecar) or host domains (node-local)
    /// (`search.list`).
    #[arg(long = "search", env = "DNSLENS_SEARCH", value_delimiter = ',')]
    pub search: Vec<String>,
    /// The pod's ndots (`search.ndots`).
    #[arg(long, env = "DNSLENS_NDOTS")]
    pub ndots: Option<u32>,
    /// The cluster's DNS domain [cluster.local] (`search.cluster_domain`).
    #[arg(long, env = "DNSLENS_CLUSTER_DOMAIN")]
    pub cluster_domain: Option<String>,
    /// Turn the answer cache on (`cache.enabled`).
    #[arg(long, env = "DNSLENS_CACHE")]
    pub cache: bool,
    /// Turn the musl shield on (`mitigations.musl_shield`).
    #[arg(long, env = "DNSLENS_MUSL_SHIELD")]
    pub musl_shield: bool,
    /// Turn autopath on (`mitigations.autopath`).
    #[arg(long, env = "DNSLENS_AUTOPATH")]
    pub autopath: bool,
}

/// `Some(value)` sets `key`; a list sets it when not empty; a switch can only turn on.
fn set<T>(key: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *key = value;
    }
}

fn set_list<T>(key: &mut Vec<T>, value: Vec<T>) {
    if !value.is_empty() {
        *key = value;
    }
}

impl Overrides {
    /// Sets each key an override was given for.
    pub fn apply(self, c: &mut Config) {
        set(&mut c.mode, self.mode);
        set_list(&mut c.listen, self.listen);
        set_list(&mut c.forward.upstreams, self.upstreams);
        set(&mut c.forward.cluster_dns, self.cluster_dns.map(Some));
        set(&mut c.admin.listen, self.metrics_listen);
        set(&mut c.forward.timeout, self.upstream_timeout);
        set(&mut c.forward.attempts, self.attempts);
        set(&mut c.search.resolv_conf, self.resolv_conf);
        set_list(&mut c.search.list, self.search);
        set(&mut c.search.ndots, self.ndots.map(Some));
        set(&mut c.search.cluster_domain, self.cluster_domain);
        c.cache.enabled |= self.cache;
        c.mitigations.musl_shield |= self.musl_shield;
        c.mitigations.autopath |= self.autopath;
    }
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
        let config = Config::from_yaml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        for old in &config.deprecated {
            tracing::warn!(file = %path.display(), "{old}");
        }
        Ok(config)
    }

    /// Parses YAML text; an empty document is the default configuration.
    pub fn from_yaml(text: &str) -> Result<Config, String> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        crate::yaml::from_str(text)
    }

    /// Applies environment/flag overrides on top of the file's values.
    pub fn apply(&mut self, overrides: Overrides) {
        overrides.apply(self);
    }

    /// Fills in what was left empty (listen addresses from the mode, upstreams from
    /// `resolv_conf`) and checks the result.
    pub fn finish(mut self) -> Result<Config, ConfigError> {
        if self.listen.is_empty() {
            self.listen.push(default_listen(self.mode));
        }
        if self.forward.upstreams.is_empty() {
            self.forward.upstreams =
                upstreams_from_resolv_conf(&self.search.resolv_conf, &self.listen)?;
        }
        if let (Mode::NodeLocal, Some(cluster_dns)) = (self.mode, self.forward.cluster_dns) {
            for zone in node_local_zones(&self.search.cluster_domain, cluster_dns) {
                let listed = self
                    .forward
                    .zones
                    .iter()
                    .any(|z| crate::forward::zones::normalize(&z.zone) == zone.zone);
                if !listed {
                    self.forward.zones.push(zone);
                }
            }
        }
        self.validate()?;
        Ok(self)
    }

    /// Every upstream address: the top-level ones, then each zone's.
    fn all_upstreams(&self) -> impl Iterator<Item = (&'static str, UpstreamAddr)> + '_ {
        let top = self
            .forward
            .upstreams
            .iter()
            .map(|u| ("forward.upstreams", *u));
        let zones = self
            .forward
            .zones
            .iter()
            .flat_map(|z| z.upstreams.iter().map(|u| ("forward.zones", *u)));
        let cluster = self
            .forward
            .cluster_dns
            .iter()
            .map(|u| ("forward.cluster_dns", *u));
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
        if self.forward.upstreams.is_empty() {
            return Err(ConfigError::invalid(
                "forward.upstreams",
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
        let mut distinct: Vec<SocketAddr> = self.all_upstreams().map(|(_, u)| u.0).collect();
        distinct.sort();
        distinct.dedup();
        if distinct.len() > MAX_UPSTREAMS {
            return Err(ConfigError::invalid(
                "forward.zones",
                format!(
                    "{} distinct upstreams; at most {MAX_UPSTREAMS}",
                    distinct.len()
                ),
            ));
        }
        // Each component checks its own section ...
        self.listener.validate()?;
        self.forward.validate()?;
        self.search.validate()?;
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
