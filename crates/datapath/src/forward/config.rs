//! `forward:` and the upstream addresses: what the forwarder is built from.
//!
//! Keys: `upstreams` [the nameservers of `search.resolv_conf`], `zones` (`{zone, upstreams,
//! force_tcp}`), `cluster_dns`, `timeout` [2s], `attempts` [2], and the tuning below. The
//! top-level `upstreams`, `forward_zones`, `cluster_dns`, `upstream_timeout` and `attempts`
//! still load, with a deprecation warning.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use dnslens_yaml::invalid::{check, Invalid};

/// The DNS port: upstreams and listeners without one use it.
pub const DNS_PORT: u16 = 53;

/// An upstream address: `ADDR[:PORT]`, IPv6 as `[ADDR]:PORT` or bare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamAddr(pub SocketAddr);

impl FromStr for UpstreamAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(UpstreamAddr(addr));
        }
        if s.starts_with("$(") && s.ends_with(')') {
            // Kubernetes leaves `$(VAR)` as it is when the variable does not exist: a service
            // variable exists only in the Service's own namespace.
            return Err(format!(
                "'{s}' is a Kubernetes variable that was not set: its Service is not in this \
                 pod's namespace; give the address itself (the chart value clusterDNS)"
            ));
        }
        let bare = s.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>()
            .map(|ip| UpstreamAddr(SocketAddr::new(ip, DNS_PORT)))
            .map_err(|_| format!("'{s}' is not an IP address with an optional port"))
    }
}

impl<'de> Deserialize<'de> for UpstreamAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The `forward:` section: where queries go, and upstream-side tuning.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// Upstream servers `ADDR[:PORT]` (port 53 by default); none: `search.resolv_conf`'s.
    pub upstreams: Vec<UpstreamAddr>,
    /// Names under a zone go to its upstreams, the longest zone winning (see `zones`).
    pub zones: Vec<super::zones::ForwardZone>,
    /// The cluster DNS Service: in node-local mode the cluster domain and the reverse zones
    /// go to it over TCP (each unless `zones` lists that zone itself).
    pub cluster_dns: Option<UpstreamAddr>,
    /// One try's wait.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Tries per query over all upstreams.
    pub attempts: u32,
    /// Persistent UDP sockets towards the upstreams (each on its own random source port).
    pub udp_sockets: usize,
    /// Queries waiting for an upstream answer, all sockets together; beyond it, SERVFAIL.
    pub max_inflight: usize,
    /// A UDP socket is replaced by one on a fresh random port after this long.
    #[serde(with = "humantime_serde")]
    pub socket_lifetime: Duration,
    /// Consecutive failures that put an upstream aside.
    pub failure_threshold: u32,
    #[serde(with = "humantime_serde")]
    pub backoff_min: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    #[serde(with = "humantime_serde")]
    pub tcp_idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub tcp_connect_timeout: Duration,
    /// Send every upstream query over TCP (pooled, pipelined), as node-cache's
    /// `force_tcp` does: no UDP flow for conntrack to race on.
    pub force_tcp: bool,
    /// Ask the upstreams dnslens's loop probe at start and after each reload (see
    /// `pipeline::LoopGuard`); opt-in, as CoreDNS's `loop` plugin (the chart's node-local
    /// config turns it on: a node's resolv.conf naming the node-local address is the loop
    /// that happens).
    pub loop_check: bool,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            upstreams: Vec::new(),
            zones: Vec::new(),
            cluster_dns: None,
            timeout: Duration::from_secs(2),
            attempts: 2,
            udp_sockets: 4,
            max_inflight: 16_384,
            socket_lifetime: Duration::from_secs(300),
            failure_threshold: 3,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            tcp_idle_timeout: Duration::from_secs(20),
            tcp_connect_timeout: Duration::from_secs(1),
            force_tcp: false,
            loop_check: false,
        }
    }
}

impl ForwardConfig {
    /// Checks the `forward:` section on its own.
    pub fn validate(&self) -> Result<(), Invalid> {
        super::zones::validate(&self.zones)?;
        check(
            self.timeout.is_zero(),
            "forward.timeout",
            "must be above zero",
        )?;
        check(
            !(1..=10).contains(&self.attempts),
            "forward.attempts",
            format!("{} is not within 1..=10", self.attempts),
        )?;
        check(
            !(1..=64).contains(&self.udp_sockets),
            "forward.udp_sockets",
            format!("{} is not within 1..=64", self.udp_sockets),
        )?;
        check(
            self.max_inflight == 0,
            "forward.max_inflight",
            "must be above zero",
        )?;
        check(
            self.failure_threshold == 0,
            "forward.failure_threshold",
            "must be above zero",
        )?;
        check(
            self.backoff_min.is_zero() || self.backoff_max < self.backoff_min,
            "forward.backoff_max",
            "backoff_min must be above zero and not above backoff_max",
        )?;
        check(
            self.socket_lifetime < Duration::from_secs(1),
            "forward.socket_lifetime",
            "must be at least 1s",
        )
    }
}
