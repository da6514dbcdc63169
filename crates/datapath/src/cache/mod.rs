//! The answer cache: what NodeLocal DNSCache is for, plus in-flight coalescing.
//!
//! - **Key**: the question (name lower-cased, type, class) and the flags that change an
//!   answer: EDNS present, DO, CD. Two clients that differ only in those get separate entries.
//! - **What is stored**: the upstream's answer with its EDNS options removed (a cookie or a
//!   client-subnet option belongs to one client), and where its TTL fields are.
//!   - NOERROR with records: lifetime = the smallest record TTL, clamped to
//!     `min_ttl..=max_ttl`.
//!   - NXDOMAIN and NODATA (RFC 2308 §5): lifetime = min(SOA TTL, SOA MINIMUM), capped by
//!     `max_negative_ttl`; without an SOA the answer is not cached.
//!   - Anything else (SERVFAIL, REFUSED, truncated) is not cached.
//! - **Served**: every TTL counted down by the entry's age (never above what is left of the
//!   entry's lifetime, never below `min_ttl`'s floor).
//! - **Bounds**: `max_entries` answers of up to 512 bytes (a larger answer counts as
//!   several), evicted by `quick_cache`'s S3-FIFO (chosen over moka: no background
//!   threads, ~half the per-entry memory, and a lock-striped `get` without allocation).
//!   Expired entries are dropped when next asked for, or kept up to a day when
//!   `serve_stale` is on.
//! - **Serve-stale** (RFC 8767): when the answer about to be sent is SERVFAIL (every try
//!   failed, or the upstream said so), an expired entry up to 1 day old is sent instead with
//!   TTL 30 s.
//! - **Prefetch**: an entry asked `prefetch` times or more is refreshed in the background
//!   when a tenth of its lifetime is left, once per entry.
//! - **Coalescing** ([`Coalescer`]): while a question is waiting on an upstream, identical
//!   questions wait for the same answer instead of being sent again (at most 256 waiters
//!   per question; more are forwarded on their own).
//!
//! Config keys (`cache:`): `enabled`, `max_entries`, `min_ttl`, `max_ttl`,
//! `max_negative_ttl`, `serve_stale`, `prefetch`.
//!
//! Metrics: `dnslens_cache_hits_total`, `dnslens_cache_misses_total`,
//! `dnslens_cache_evictions_total`, `dnslens_cache_entries`, `dnslens_cache_stale_served_total`,
//! `dnslens_cache_coalesced_total`, `dnslens_cache_prefetches_total`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use quick_cache::Lifecycle;

use dnslens_wire::{self as wire, QueryInfo, Rcode, HEADER_LEN, RTYPE_OPT};
use dnslens_yaml::invalid::{check, Invalid};
use serde::Deserialize;

/// The answer cache (see `cache`). Off by default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub enabled: bool,
    /// Answers kept; beyond it the cache evicts (S3-FIFO, `quick_cache`).
    pub max_entries: usize,
    /// TTL clamps for positive answers.
    #[serde(with = "humantime_serde")]
    pub min_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Cap on the RFC 2308 negative TTL (SOA minimum) of NXDOMAIN/NODATA answers.
    #[serde(with = "humantime_serde")]
    pub max_negative_ttl: Duration,
    /// Answer from an expired entry (TTL 30 s, up to a day old) when upstreams fail (RFC 8767).
    pub serve_stale: bool,
    /// Refresh an entry asked this many times when a tenth of its TTL is left; 0 = never.
    pub prefetch: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: false,
            max_entries: 10_000,
            min_ttl: Duration::ZERO,
            max_ttl: Duration::from_secs(3600),
            max_negative_ttl: Duration::from_secs(300),
            serve_stale: false,
            prefetch: 0,
        }
    }
}

impl CacheConfig {
    /// Checks the `cache:` section on its own.
    pub fn validate(&self) -> Result<(), Invalid> {
        check(
            self.enabled && (self.max_entries == 0 || self.max_ttl < self.min_ttl),
            "cache",
            "max_entries must be above zero and min_ttl not above max_ttl",
        )
    }
}

/// TTL of an answer served stale (RFC 8767 §4 recommends 30 s).
const STALE_ANSWER_TTL: u32 = 30;
/// How long past expiry an entry may still be served stale (RFC 8767 suggests 1-3 days).
const MAX_STALENESS: Duration = Duration::from_secs(24 * 3600);
/// Bytes of answer one unit of `max_entries` stands for.
const WEIGHT_UNIT: usize = 512;
/// Waiters per coalesced question.
const MAX_WAITERS: usize = 256;

type FastHash = foldhash::fast::RandomState;

/// Longest key: a 255-byte name, type, class and the flags byte.
const MAX_KEY: usize = 255 + 4 + 1;

/// What identifies an answer: the lower-cased question and a flags byte. Stored keys live
/// on the heap; lookups use a [`KeyBuf`] on the stack (no allocation on a hit).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(Box<[u8]>);

/// A key built on the stack. Hashes like the [`CacheKey`] it equals (both hash as `[u8]`).
pub struct KeyBuf {
    bytes: [u8; MAX_KEY],
    len: usize,
}

/// A borrowed key, for lookups.
#[derive(Hash)]
pub struct KeyRef<'a>(&'a [u8]);

/// Either kind of key, for lookups.
pub trait AsKey {
    fn key_ref(&self) -> KeyRef<'_>;
}

impl AsKey for KeyBuf {
    fn key_ref(&self) -> KeyRef<'_> {
        KeyRef(&self.bytes[..self.len])
    }
}

impl AsKey for CacheKey {
    fn key_ref(&self) -> KeyRef<'_> {
        KeyRef(&self.0)
    }
}

impl quick_cache::Equivalent<CacheKey> for KeyRef<'_> {
    fn equivalent(&self, key: &CacheKey) -> bool {
        self.0 == &*key.0
    }
}

impl KeyBuf {
    /// The key of a parsed query; `None` for a question too short or too long to be one.
    pub fn of(query: &[u8], info: &QueryInfo) -> Option<KeyBuf> {
        let question = query.get(HEADER_LEN..info.question_end)?;
        let name_len = question.len().checked_sub(4)?;
        let mut key = KeyBuf {
            bytes: [0; MAX_KEY],
            len: question.len() + 1,
        };
        let out = key.bytes.get_mut(..key.len)?;
        // Length bytes are below 64, so lower-casing the whole name touches only letters.
        for (o, b) in out.iter_mut().zip(&question[..name_len]) {
            *o = b.to_ascii_lowercase();
        }
        out[name_len..name_len + 4].copy_from_slice(&question[name_len..]);
        out[name_len + 4] = u8::from(info.edns)
            | u8::from(info.dnssec_ok) << 1
            | u8::from(wire::checking_disabled(query)) << 2;
        Some(key)
    }

    /// The key as stored (and as coalescing uses it).
    pub fn to_key(&self) -> CacheKey {
        CacheKey(self.bytes[..self.len].into())
    }
}

impl CacheKey {
    /// The key of a parsed query; `None` for a question too short or too long to be one.
    pub fn of(query: &[u8], info: &QueryInfo) -> Option<CacheKey> {
        KeyBuf::of(query, info).map(|k| k.to_key())
    }
}

/// One stored answer.
struct Entry {
    /// The upstream's answer, EDNS options removed.
    answer: Box<[u8]>,
    /// (offset, TTL as received) of every TTL field but the OPT record's.
    ttls: Box<[(u32, u32)]>,
    stored: Instant,
    lifetime: Duration,
    hits: AtomicU32,
    refreshing: AtomicBool,
}

impl Entry {
    /// The answer with its TTLs counted down to `now`.
    fn render(&self, now: Instant, min_ttl: u32) -> Vec<u8> {
        let age = now.saturating_duration_since(self.stored).as_secs();
        let left = self.lifetime.as_secs().saturating_sub(age);
        let mut out = self.answer.to_vec();
        for &(at, ttl) in self.ttls.iter() {
            let ttl = u64::from(ttl.max(min_ttl)).min(left) as u32;
            write_ttl(&mut out, at as usize, ttl);
        }
        out
    }

    fn render_stale(&self) -> Vec<u8> {
        let mut out = self.answer.to_vec();
        for &(at, ttl) in self.ttls.iter() {
            write_ttl(&mut out, at as usize, ttl.min(STALE_ANSWER_TTL));
        }
        out
    }

    fn expires(&self) -> Instant {
        self.stored + self.lifetime
    }
}

fn write_ttl(msg: &mut [u8], at: usize, ttl: u32) {
    if let Some(field) = msg.get_mut(at..at + 4) {
        field.copy_from_slice(&ttl.to_be_bytes());
    }
}

/// Entries weigh one unit per started 512 bytes, so `max_entries` bounds memory too.
#[derive(Clone)]
struct Weight;

impl quick_cache::Weighter<CacheKey, Arc<Entry>> for Weight {
    fn weight(&self, key: &CacheKey, entry: &Arc<Entry>) -> u64 {
        (entry.answer.len() + key.0.len()).div_ceil(WEIGHT_UNIT) as u64
    }
}

/// Counts evictions.
#[derive(Clone)]
struct Evictions(Counter);

impl Lifecycle<CacheKey, Arc<Entry>> for Evictions {
    type RequestState = ();
    fn on_evict(&self, _: &mut (), _: CacheKey, _: Arc<Entry>) {
        self.0.inc();
    }
}

/// A cache lookup's result.
pub enum CacheLookup {
    /// A fresh answer; `prefetch` says the caller should refresh it in the background.
    Hit {
        answer: Vec<u8>,
        prefetch: bool,
    },
    Miss,
}

/// The cache's series, registered once: a cache built after a reload counts on them.
#[derive(Clone)]
pub struct CacheMetrics {
    evictions: Counter,
    hits: Counter,
    misses: Counter,
    entries: Gauge,
    stale: Counter,
    coalesced: Counter,
    prefetches: Counter,
}

impl CacheMetrics {
    pub fn register(registry: &mut Registry) -> CacheMetrics {
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let hits = counter(registry, "cache_hits", "Queries answered from the cache");
        let misses = counter(
            registry,
            "cache_misses",
            "Queries the cache could not answer",
        );
        let evictions = counter(
            registry,
            "cache_evictions",
            "Entries evicted to stay within cache.max_entries",
        );
        let stale = counter(
            registry,
            "cache_stale_served",
            "Expired answers served because upstreams failed (RFC 8767)",
        );
        let coalesced = counter(
            registry,
            "cache_coalesced",
            "Queries that waited for an identical question already sent upstream",
        );
        let prefetches = counter(
            registry,
            "cache_prefetches",
            "Popular entries refreshed before they expired",
        );
        let entries = Gauge::default();
        registry.register("cache_entries", "Answers in the cache", entries.clone());
        CacheMetrics {
            evictions,
            hits,
            misses,
            entries,
            stale,
            coalesced,
            prefetches,
        }
    }
}

pub struct Cache {
    entries: quick_cache::sync::Cache<CacheKey, Arc<Entry>, Weight, FastHash, Evictions>,
    min_ttl: Duration,
    max_ttl: Duration,
    max_negative_ttl: Duration,
    serve_stale: bool,
    prefetch: u32,
    metrics: CacheMetrics,
}

impl Cache {
    /// A cache with its own series (tests; the proxy registers [`CacheMetrics`] once).
    pub fn build(config: &CacheConfig, registry: &mut Registry) -> Cache {
        Cache::new(config, &CacheMetrics::register(registry))
    }

    /// An empty cache of `config`'s size and rules, counting on `metrics`.
    pub fn new(config: &CacheConfig, metrics: &CacheMetrics) -> Cache {
        let metrics = metrics.clone();
        metrics.entries.set(0);
        Cache {
            entries: quick_cache::sync::Cache::with(
                config.max_entries,
                config.max_entries as u64,
                Weight,
                FastHash::default(),
                Evictions(metrics.evictions.clone()),
            ),
            min_ttl: config.min_ttl,
            max_ttl: config.max_ttl,
            max_negative_ttl: config.max_negative_ttl,
            serve_stale: config.serve_stale,
            prefetch: config.prefetch,
            metrics,
        }
    }

    /// A fresh answer for `key`, TTLs counted down, or a miss (counted either way).
    pub fn get(&self, key: &impl AsKey, now: Instant) -> CacheLookup {
        let key = key.key_ref();
        let Some(entry) = self.entries.get(&key) else {
            self.metrics.misses.inc();
            return CacheLookup::Miss;
        };
        if entry.expires() <= now {
            if !self.serve_stale || entry.expires() + MAX_STALENESS <= now {
                self.entries.remove_if(&key, |e| Arc::ptr_eq(e, &entry));
                self.metrics.entries.set(self.entries.len() as i64);
            }
            self.metrics.misses.inc();
            return CacheLookup::Miss;
        }
        self.metrics.hits.inc();
        let min_ttl = self.min_ttl.as_secs() as u32;
        let prefetch = self.prefetch > 0
            && entry.hits.fetch_add(1, Ordering::Relaxed) + 1 >= self.prefetch
            && entry.expires().saturating_duration_since(now) * 10 <= entry.lifetime
            && !entry.refreshing.swap(true, Ordering::Relaxed);
        if prefetch {
            self.metrics.prefetches.inc();
        }
        CacheLookup::Hit {
            answer: entry.render(now, min_ttl),
            prefetch,
        }
    }

    /// An expired answer for `key` (serve-stale on, at most a day past expiry), TTL 30 s.
    pub fn stale(&self, key: &CacheKey, now: Instant) -> Option<Vec<u8>> {
        if !self.serve_stale {
            return None;
        }
        let entry = self.entries.peek(key)?;
        if entry.expires() + MAX_STALENESS <= now {
            return None;
        }
        self.metrics.stale.inc();
        Some(entry.render_stale())
    }

    /// Stores `answer` if it may be cached (see the module comment).
    pub fn store(&self, key: &CacheKey, answer: &[u8], now: Instant) {
        if let Some(entry) = self.entry_for(answer, now) {
            self.entries.insert(key.clone(), Arc::new(entry));
            self.metrics.entries.set(self.entries.len() as i64);
        }
    }

    fn entry_for(&self, answer: &[u8], now: Instant) -> Option<Entry> {
        let info = wire::parse_response(answer).ok()?;
        if info.truncated {
            return None;
        }
        let sections = wire::sections(answer).ok()?;
        let lifetime = match info.rcode {
            Rcode::NOERROR if !sections.answers.is_empty() => {
                let smallest = sections
                    .answers
                    .iter()
                    .chain(&sections.authorities)
                    .map(|r| r.ttl)
                    .min()?;
                Duration::from_secs(smallest.into()).clamp(self.min_ttl, self.max_ttl)
            }
            Rcode::NOERROR | Rcode::NXDOMAIN => {
                Duration::from_secs(wire::negative_ttl(answer, &sections)?.into())
                    .min(self.max_negative_ttl)
            }
            _ => return None,
        };
        if lifetime.is_zero() {
            return None;
        }
        let stored = wire::without_edns_options(answer, &sections);
        // Stripping moves whatever follows the OPT record: read the TTL offsets afresh.
        let sections = wire::sections(&stored).ok()?;
        let ttls = sections
            .all()
            .filter(|r| r.rtype != RTYPE_OPT)
            .map(|r| (r.ttl_at as u32, r.ttl))
            .collect();
        let mut stored = stored.into_boxed_slice();
        wire::set_id(&mut stored, 0);
        Some(Entry {
            answer: stored,
            ttls,
            stored: now,
            lifetime,
            hits: AtomicU32::new(0),
            refreshing: AtomicBool::new(false),
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn count_coalesced(&self) {
        self.metrics.coalesced.inc();
    }
}

/// Questions waiting on an upstream, and the identical questions waiting with them. The map
/// is split into shards by the key's hash, so two workers coalescing different questions
/// rarely take the same lock.
pub struct Coalescer<W> {
    shards: Box<[Mutex<Waiting<W>>]>,
    hasher: FastHash,
}

/// One shard: each question asked upstream and who waits for its answer.
type Waiting<W> = HashMap<CacheKey, Vec<W>, FastHash>;

/// Shards of the [`Coalescer`]: a power of two, well above the number of DNS workers.
const COALESCER_SHARDS: usize = 16;

/// What became of a question offered to the [`Coalescer`].
pub enum Join<W> {
    /// Nobody was asking: the caller sends it upstream and must [`Coalescer::release`] the key.
    Lead(W),
    /// It waits for the leader's answer.
    Waiting,
    /// Too many already wait: the caller sends it on its own, and does not release.
    Alone(W),
}

impl<W> Default for Coalescer<W> {
    fn default() -> Self {
        Coalescer {
            shards: (0..COALESCER_SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            hasher: FastHash::default(),
        }
    }
}

impl<W> Coalescer<W> {
    fn shard(
        &self,
        key: &CacheKey,
    ) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Vec<W>, FastHash>> {
        use std::hash::BuildHasher;
        let index = self.hasher.hash_one(key) as usize % self.shards.len();
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn join(&self, key: &CacheKey, waiter: W) -> Join<W> {
        let mut waiting = self.shard(key);
        match waiting.get_mut(key) {
            None => {
                waiting.insert(key.clone(), Vec::new());
                Join::Lead(waiter)
            }
            Some(list) if list.len() < MAX_WAITERS => {
                list.push(waiter);
                Join::Waiting
            }
            Some(_) => Join::Alone(waiter),
        }
    }

    /// Ends the leader's turn: everyone who waited for `key`.
    pub fn release(&self, key: &CacheKey) -> Vec<W> {
        self.shard(key).remove(key).unwrap_or_default()
    }

    /// Whether a question is being asked upstream right now.
    pub fn is_waiting(&self, key: &CacheKey) -> bool {
        self.shard(key).contains_key(key)
    }
}

#[cfg(test)]
mod tests;
