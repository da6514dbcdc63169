//! One upstream server: its address, health (consecutive failures, back-off), its TCP
//! connection and its metric handles, resolved once when the forwarder is built.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use super::tcp_pool::TcpUpstream;
use crate::config::ForwardConfig;
use crate::metrics::Transport;
use crate::record::Outcome;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UpstreamTryLabels {
    pub upstream: String,
    pub transport: Transport,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UpstreamTransportLabels {
    pub upstream: String,
    pub transport: Transport,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

/// The forwarder's per-upstream metric families.
#[derive(Clone)]
pub struct UpstreamFamilies {
    pub tries: Family<UpstreamTryLabels, Counter>,
    pub duration: Family<UpstreamTransportLabels, Histogram>,
    pub healthy: Family<UpstreamLabels, Gauge>,
}

struct Health {
    consecutive_failures: u32,
    down_until: Option<Instant>,
    backoff: Duration,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub tcp: TcpUpstream,
    health: Mutex<Health>,
    failure_threshold: u32,
    backoff_min: Duration,
    backoff_max: Duration,
    /// `[transport][outcome]`
    tries: [[Counter; Outcome::ALL.len()]; 2],
    /// `[transport]`
    duration: [Histogram; 2],
    healthy: Gauge,
}

impl Upstream {
    pub fn new(addr: SocketAddr, config: &ForwardConfig, families: &UpstreamFamilies) -> Self {
        let name = addr.to_string();
        let tries = Transport::ALL.map(|transport| {
            Outcome::ALL.map(|outcome| {
                families
                    .tries
                    .get_or_create(&UpstreamTryLabels {
                        upstream: name.clone(),
                        transport,
                        outcome,
                    })
                    .clone()
            })
        });
        let duration = Transport::ALL.map(|transport| {
            families
                .duration
                .get_or_create(&UpstreamTransportLabels {
                    upstream: name.clone(),
                    transport,
                })
                .clone()
        });
        let healthy = families
            .healthy
            .get_or_create(&UpstreamLabels { upstream: name })
            .clone();
        healthy.set(1);
        Upstream {
            addr,
            tcp: TcpUpstream::new(addr, config.tcp_connect_timeout, config.tcp_idle_timeout),
            health: Mutex::new(Health {
                consecutive_failures: 0,
                down_until: None,
                backoff: config.backoff_min,
            }),
            failure_threshold: config.failure_threshold,
            backoff_min: config.backoff_min,
            backoff_max: config.backoff_max,
            tries,
            duration,
            healthy,
        }
    }

    /// Whether queries may go here now: healthy, or its back-off has passed (the next query
    /// is the probe that brings it back or puts it aside for longer).
    pub fn available(&self, now: Instant) -> bool {
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        health.down_until.is_none_or(|until| until <= now)
    }

    /// Records how a try ended, its duration (for answers) and what it says about health.
    pub fn record(&self, transport: Transport, outcome: Outcome, elapsed: Duration) {
        self.tries[transport as usize][outcome as usize].inc();
        if outcome != Outcome::Timeout {
            self.duration[transport as usize].observe(elapsed.as_secs_f64());
        }
        if outcome.is_success() {
            self.succeeded();
        } else {
            self.failed();
        }
    }

    fn succeeded(&self) {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if health.consecutive_failures == 0 && health.down_until.is_none() {
            return;
        }
        health.consecutive_failures = 0;
        health.down_until = None;
        health.backoff = self.backoff_min;
        self.healthy.set(1);
    }

    fn failed(&self) {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        health.consecutive_failures = health.consecutive_failures.saturating_add(1);
        if health.consecutive_failures >= self.failure_threshold {
            let now = Instant::now();
            // A failed probe (back-off already over) doubles the back-off.
            if health.down_until.is_some_and(|until| until <= now) {
                health.backoff = (health.backoff * 2).min(self.backoff_max);
            }
            if health.down_until.is_none_or(|until| until <= now) {
                health.down_until = Some(now + health.backoff);
                tracing::warn!(upstream = %self.addr, backoff = ?health.backoff, "upstream put aside");
            }
            self.healthy.set(0);
        }
    }
}
