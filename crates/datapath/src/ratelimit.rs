//! Per-client rate limit: a token bucket per client address, checked by the listeners
//! after the access list, off unless `listener.rate_limit.per_client_qps` is set.
//!
//! Config keys (`listener.rate_limit`):
//! - `per_client_qps` (0 = off): tokens a client earns per second.
//! - `burst` (0 = the same as `per_client_qps`): what a quiet client may send at once.
//! - `action`: `refuse` (answer REFUSED: a resolver gives up at once instead of retrying
//!   into the limit; the answer is no larger than the query, so nothing is amplified) or
//!   `drop` (answer nothing).
//! - `max_clients` (65,536): addresses tracked at once (about 40 bytes each). When the
//!   table is full, idle clients (bucket full again) are forgotten — a shard is swept at most
//!   once per refill time, so a flood of spoofed sources costs a lookup a packet, not a scan;
//!   if none is idle, a new client is limited rather than let through, so spoofed sources
//!   cannot buy a way around it.
//!
//! Metrics: `dnslens_rate_limited_total{action}` (queries refused or dropped),
//! `dnslens_rate_limit_table_full_total` (new clients limited because the table was full).
//!
//! Why hand-written: the bucket is three numbers behind one shard lock; a crate (governor)
//! would add a keyed store of its own without a bound on its size.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Deserialize;

use dnslens_yaml::invalid::{check, Invalid};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub per_client_qps: u32,
    pub burst: u32,
    pub action: LimitAction,
    pub max_clients: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            per_client_qps: 0,
            burst: 0,
            action: LimitAction::Refuse,
            max_clients: 65_536,
        }
    }
}

impl RateLimitConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        check(
            self.per_client_qps > 0 && self.max_clients == 0,
            "listener.rate_limit.max_clients",
            "must be above zero",
        )?;
        check(
            self.max_clients > 16_777_216,
            "listener.rate_limit.max_clients",
            "at most 16777216",
        )
    }
}

/// What happens to a query over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitAction {
    Refuse,
    Drop,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

/// The limiter's counters, registered once and kept across reloads.
#[derive(Clone)]
pub struct RateLimitMetrics {
    refused: Counter,
    dropped: Counter,
    table_full: Counter,
}

impl RateLimitMetrics {
    pub fn register(registry: &mut Registry) -> RateLimitMetrics {
        let limited = Family::<ActionLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Client queries over listener.rate_limit, by what was done with them",
            limited.clone(),
        );
        let table_full = Counter::default();
        registry.register(
            "rate_limit_table_full",
            "New clients limited because listener.rate_limit.max_clients were tracked",
            table_full.clone(),
        );
        let counter = |action| limited.get_or_create(&ActionLabels { action }).clone();
        let (refused, dropped) = (counter("refuse"), counter("drop"));
        RateLimitMetrics {
            refused,
            dropped,
            table_full,
        }
    }
}

/// One client's bucket: tokens left and when they were counted.
#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Shards of the table: a power of two, above the number of listener workers.
const SHARDS: usize = 16;

pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    action: LimitAction,
    per_shard: usize,
    shards: Box<[Mutex<Shard>]>,
    metrics: RateLimitMetrics,
}

/// One shard of the table, and when its idle clients were last forgotten: a full table is
/// swept at most once per refill time, so a flood of new (spoofed) sources costs a lookup
/// per packet, not a scan.
#[derive(Default)]
struct Shard {
    buckets: HashMap<IpAddr, Bucket, foldhash::fast::RandomState>,
    swept: Option<Instant>,
}

/// The verdict on one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Refuse,
    Drop,
}

impl RateLimiter {
    /// The limiter for `config`, or `None` when it is off.
    pub fn build(config: &RateLimitConfig, metrics: &RateLimitMetrics) -> Option<RateLimiter> {
        if config.per_client_qps == 0 {
            return None;
        }
        let burst = if config.burst == 0 {
            config.per_client_qps
        } else {
            config.burst
        };
        Some(RateLimiter {
            per_second: f64::from(config.per_client_qps),
            burst: f64::from(burst),
            action: config.action,
            per_shard: config.max_clients.div_ceil(SHARDS).max(1),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            metrics: metrics.clone(),
        })
    }

    /// Takes a token from `client`'s bucket, or says what to do with the query.
    pub fn check(&self, client: IpAddr, now: Instant) -> Verdict {
        let shard = &self.shards[self.shard_of(client)];
        let mut shard = match shard.lock() {
            Ok(shard) => shard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let refill = self.burst / self.per_second;
        let Shard { buckets, swept } = &mut *shard;
        if buckets.len() >= self.per_shard && !buckets.contains_key(&client) {
            // Forget the clients whose buckets have filled up again: they lose nothing.
            if swept.is_none_or(|at| now.duration_since(at).as_secs_f64() >= refill) {
                buckets.retain(|_, b| now.duration_since(b.at).as_secs_f64() < refill);
                *swept = Some(now);
            }
            if buckets.len() >= self.per_shard {
                drop(shard);
                self.metrics.table_full.inc();
                return self.limited();
            }
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let earned = now.duration_since(bucket.at).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + earned).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Verdict::Pass;
        }
        drop(shard);
        self.limited()
    }

    fn limited(&self) -> Verdict {
        match self.action {
            LimitAction::Refuse => {
                self.metrics.refused.inc();
                Verdict::Refuse
            }
            LimitAction::Drop => {
                self.metrics.dropped.inc();
                Verdict::Drop
            }
        }
    }

    fn shard_of(&self, client: IpAddr) -> usize {
        use std::hash::BuildHasher;
        // A fixed seed: the shard only spreads lock contention.
        let hash = foldhash::fast::FixedState::with_seed(0x6d6e_736c_656e_7321).hash_one(client);
        (hash as usize) % SHARDS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limiter(qps: u32, burst: u32, max_clients: usize) -> (RateLimiter, Registry) {
        let mut registry = Registry::default();
        let metrics = RateLimitMetrics::register(&mut registry);
        let config = RateLimitConfig {
            per_client_qps: qps,
            burst,
            max_clients,
            ..RateLimitConfig::default()
        };
        (RateLimiter::build(&config, &metrics).unwrap(), registry)
    }

    #[test]
    fn a_client_gets_its_burst_then_its_rate() {
        let (limiter, _) = limiter(10, 5, 100);
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        let passed = (0..8)
            .filter(|_| limiter.check(client, t0) == Verdict::Pass)
            .count();
        assert_eq!(passed, 5, "the burst");
        // 10 per second: one more token every 100 ms.
        assert_eq!(
            limiter.check(client, t0 + Duration::from_millis(100)),
            Verdict::Pass
        );
        assert_eq!(
            limiter.check(client, t0 + Duration::from_millis(110)),
            Verdict::Refuse
        );
        // Another client has its own bucket.
        assert_eq!(
            limiter.check("10.0.0.2".parse().unwrap(), t0),
            Verdict::Pass
        );
        assert_eq!(limiter.metrics.refused.get(), 4);
    }

    #[test]
    fn a_full_table_forgets_idle_clients_and_limits_new_ones_while_all_are_busy() {
        // One slot per shard: 16 clients at most.
        let (limiter, _) = limiter(1, 1, 16);
        let t0 = Instant::now();
        let clients: Vec<IpAddr> = (0..=255u8).map(|i| IpAddr::from([10, 1, 0, i])).collect();
        let verdicts: Vec<Verdict> = clients.iter().map(|c| limiter.check(*c, t0)).collect();
        let passed = verdicts.iter().filter(|v| **v == Verdict::Pass).count();
        assert_eq!(passed, 16, "one client per shard of a 16-client table");
        assert_eq!(limiter.metrics.table_full.get(), 240);
        // A second later every bucket is full again: the busy ones are forgotten.
        let later = t0 + Duration::from_secs(1);
        let again = clients
            .iter()
            .filter(|c| limiter.check(**c, later) == Verdict::Pass)
            .count();
        assert_eq!(again, 16);
    }

    #[test]
    fn off_unless_a_rate_is_set() {
        let metrics = RateLimitMetrics::register(&mut Registry::default());
        assert!(RateLimiter::build(&RateLimitConfig::default(), &metrics).is_none());
    }
}
