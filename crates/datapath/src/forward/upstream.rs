//! One upstream server: its address, health (consecutive failures, back-off), its TCP
//! connection and its metric handles, resolved once when the forwarder is built.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use super::select::UpstreamState;
use super::tcp_pool::TcpUpstream;
use super::ForwardConfig;
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

/// Health as the hot path reads it: plain atomics, no lock. Only a failure that may put
/// the upstream aside takes `transition` (rare: at most a few per back-off).
struct Health {
    consecutive_failures: AtomicU32,
    /// Nanoseconds after `epoch` until which the upstream is put aside; 0 when in service.
    down_until: AtomicU64,
    backoff: Mutex<Duration>,
    epoch: Instant,
}

impl Health {
    fn down_until(&self) -> Option<Instant> {
        match self.down_until.load(Ordering::Acquire) {
            0 => None,
            nanos => Some(self.epoch + Duration::from_nanos(nanos)),
        }
    }

    fn set_down_until(&self, until: Option<Instant>) {
        let nanos = until.map_or(0, |t| {
            u64::try_from(t.duration_since(self.epoch).as_nanos())
                .unwrap_or(u64::MAX)
                .max(1)
        });
        self.down_until.store(nanos, Ordering::Release);
    }
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub tcp: TcpUpstream,
    health: Health,
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
            health: Health {
                consecutive_failures: AtomicU32::new(0),
                down_until: AtomicU64::new(0),
                backoff: Mutex::new(config.backoff_min),
                epoch: Instant::now(),
            },
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
        self.state(now).available
    }

    /// Available or not, and when it is due back (`None`: in service): one atomic load.
    pub fn state(&self, now: Instant) -> UpstreamState {
        let back_at = self.health.down_until();
        UpstreamState {
            available: back_at.is_none_or(|until| until <= now),
            back_at,
        }
    }

    /// Records how a try ended, its duration (for answers) and what it says about health:
    /// nothing, for a local error (the query never left).
    pub fn record(&self, transport: Transport, outcome: Outcome, elapsed: Duration) {
        self.tries[transport as usize][outcome as usize].inc();
        if !matches!(outcome, Outcome::Timeout | Outcome::LocalError) {
            self.duration[transport as usize].observe(elapsed.as_secs_f64());
        }
        if outcome.is_success() {
            self.succeeded();
        } else if outcome != Outcome::LocalError {
            self.failed();
        }
    }

    fn succeeded(&self) {
        let health = &self.health;
        if health.consecutive_failures.load(Ordering::Relaxed) == 0
            && health.down_until.load(Ordering::Relaxed) == 0
        {
            return;
        }
        health.consecutive_failures.store(0, Ordering::Relaxed);
        health.set_down_until(None);
        *lock(&health.backoff) = self.backoff_min;
        self.healthy.set(1);
    }

    fn failed(&self) {
        let health = &self.health;
        let failures = health
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if failures < self.failure_threshold {
            return;
        }
        let mut backoff = lock(&health.backoff);
        let now = Instant::now();
        let down_until = health.down_until();
        // A failed probe (back-off already over) doubles the back-off.
        if down_until.is_some_and(|until| until <= now) {
            *backoff = (*backoff * 2).min(self.backoff_max);
        }
        if down_until.is_none_or(|until| until <= now) {
            health.set_down_until(Some(now + *backoff));
            tracing::warn!(upstream = %self.addr, backoff = ?*backoff, "upstream put aside");
        }
        self.healthy.set(0);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
