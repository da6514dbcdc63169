//! The forwarder's metric families, registered once and shared by every forwarder a reload
//! builds (see the `forward` module doc for the names).

use std::net::SocketAddr;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::upstream::{self, UpstreamFamilies};
use super::{canonical, Forwarder, RESPONSE_DROP_REASONS};
use crate::metrics::{ReasonLabels, Transport};
use crate::record::{InFlight, Outcome};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct ZoneLabels {
    pub(super) zone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct DropLabels {
    upstream: String,
    reason: &'static str,
}

/// `dnslens_responses_dropped_total` handles: a row per configured upstream, and one for
/// every other source, each with every reason; all created up front.
pub(super) struct ResponseDrops {
    counters: Vec<Counter>,
    upstreams: Vec<SocketAddr>,
}

impl ResponseDrops {
    pub(super) fn new(family: &Family<DropLabels, Counter>, upstreams: Vec<SocketAddr>) -> Self {
        let rows = upstreams
            .iter()
            .map(|u| u.to_string())
            .chain(std::iter::once("other".to_string()));
        let counters = rows
            .flat_map(|upstream| {
                RESPONSE_DROP_REASONS.iter().map(move |reason| {
                    family
                        .get_or_create(&DropLabels {
                            upstream: upstream.clone(),
                            reason,
                        })
                        .clone()
                })
            })
            .collect();
        ResponseDrops {
            counters,
            upstreams,
        }
    }

    /// Counts a response from `from` dropped for `reason` (one of the known reasons).
    pub(super) fn inc(&self, from: SocketAddr, reason: &str) {
        let row = self
            .upstreams
            .iter()
            .position(|u| *u == canonical(from))
            .unwrap_or(self.upstreams.len());
        let column = RESPONSE_DROP_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.counters[row * RESPONSE_DROP_REASONS.len() + column].inc();
    }
}

/// The forwarder's metric families, registered once: every forwarder built from them (a
/// reload builds a new one) shares them, and series of upstreams and zones no longer
/// configured are removed ([`ForwardMetrics::forget`]).
#[derive(Clone)]
pub struct ForwardMetrics {
    pub(super) families: UpstreamFamilies,
    pub(super) responses_dropped: Family<DropLabels, Counter>,
    pub(super) failures: Family<ReasonLabels, Counter>,
    /// `dnslens_inflight_queries`.
    pub(super) inflight_queries: Gauge,
    /// The same count with the longest wait, as the lookup tracker reads it.
    pub(super) waiting_on_upstreams: InFlight,
    pub(super) zone_queries: Family<ZoneLabels, Counter>,
}

impl ForwardMetrics {
    pub fn register(registry: &mut Registry) -> ForwardMetrics {
        let families = UpstreamFamilies {
            tries: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 16))
            }),
            healthy: Family::default(),
        };
        registry.register(
            "upstream_requests",
            "Tries sent to upstreams, by upstream, transport and outcome",
            families.tries.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time from sending a try to its upstream answer",
            families.duration.clone(),
        );
        registry.register(
            "upstream_healthy",
            "1 while the upstream is in service, 0 while it is put aside",
            families.healthy.clone(),
        );
        let responses_dropped = Family::<DropLabels, Counter>::default();
        registry.register(
            "responses_dropped",
            "Upstream responses discarded, by the upstream they came from (or other) and reason",
            responses_dropped.clone(),
        );
        let failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "forward_failures",
            "Queries answered SERVFAIL by dnslens itself, by reason",
            failures.clone(),
        );
        let inflight = Gauge::default();
        registry.register(
            "inflight_queries",
            "Queries waiting on an upstream",
            inflight.clone(),
        );
        let zone_queries = Family::<ZoneLabels, Counter>::default();
        registry.register(
            "forward_zone_queries",
            "Queries routed to each zone's upstreams (. is forward.upstreams)",
            zone_queries.clone(),
        );
        ForwardMetrics {
            families,
            responses_dropped,
            failures,
            waiting_on_upstreams: InFlight::new(inflight.clone()),
            inflight_queries: inflight,
            zone_queries,
        }
    }

    /// Queries waiting on an upstream, over every forwarder built from these metrics.
    pub fn inflight_queries(&self) -> i64 {
        self.inflight_queries.get()
    }

    /// The in-flight count and longest wait, for the lookup tracker; every forwarder built
    /// from these metrics sets the longest wait to its own.
    pub fn waiting_on_upstreams(&self) -> InFlight {
        self.waiting_on_upstreams.clone()
    }

    /// Removes the series of the upstreams and zones `old` had and `new` does not: a
    /// removed upstream must not stay `dnslens_upstream_healthy 0` (an alert) forever.
    pub fn forget(&self, old: &Forwarder, new: &Forwarder) {
        for upstream in &old.upstreams {
            if new.upstreams.iter().any(|u| u.addr == upstream.addr) {
                continue;
            }
            let name = upstream.addr.to_string();
            for transport in Transport::ALL {
                for outcome in Outcome::ALL {
                    self.families.tries.remove(&upstream::UpstreamTryLabels {
                        upstream: name.clone(),
                        transport,
                        outcome,
                    });
                }
                self.families
                    .duration
                    .remove(&upstream::UpstreamTransportLabels {
                        upstream: name.clone(),
                        transport,
                    });
            }
            self.families.healthy.remove(&upstream::UpstreamLabels {
                upstream: name.clone(),
            });
            for reason in RESPONSE_DROP_REASONS {
                self.responses_dropped.remove(&DropLabels {
                    upstream: name.clone(),
                    reason,
                });
            }
        }
        let zones_now: Vec<&str> = if new.pools.len() > 1 {
            new.pools.iter().map(|p| &*p.name).collect()
        } else {
            Vec::new()
        };
        for pool in &old.pools {
            if !zones_now.contains(&&*pool.name) {
                self.zone_queries.remove(&ZoneLabels {
                    zone: pool.name.to_string(),
                });
            }
        }
    }
}
