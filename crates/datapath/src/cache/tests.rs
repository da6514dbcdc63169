use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use prometheus_client::registry::Registry;

use super::*;
use crate::cache::CacheConfig;
use crate::test_messages::{a_answer, negative_answer, query, ttls, with_cookie};

fn cache(config: CacheConfig) -> Cache {
    Cache::build(
        &CacheConfig {
            enabled: true,
            ..config
        },
        &mut Registry::default(),
    )
}

fn key(qname: &str, qtype: RecordType, edns: bool) -> CacheKey {
    let q = query(qname, qtype, edns);
    let info = wire::parse_query(&q).unwrap();
    CacheKey::of(&q, &info).unwrap()
}

fn hit(cache: &Cache, key: &CacheKey, at: Instant) -> Option<Vec<u8>> {
    match cache.get(key, at) {
        CacheLookup::Hit { answer, .. } => Some(answer),
        CacheLookup::Miss => None,
    }
}

#[test]
fn keys_ignore_case_and_tell_flags_apart() {
    assert_eq!(
        key("Example.ORG.", RecordType::A, false),
        key("example.org.", RecordType::A, false)
    );
    assert_ne!(
        key("example.org.", RecordType::A, false),
        key("example.org.", RecordType::AAAA, false)
    );
    assert_ne!(
        key("example.org.", RecordType::A, false),
        key("example.org.", RecordType::A, true)
    );
    let mut cd = query("example.org.", RecordType::A, false);
    cd[3] |= 0x10;
    let info = wire::parse_query(&cd).unwrap();
    assert_ne!(
        CacheKey::of(&cd, &info).unwrap(),
        key("example.org.", RecordType::A, false)
    );
}

#[test]
fn ttls_count_down_and_the_entry_expires() {
    let cache = cache(CacheConfig::default());
    let k = key("web.example.org.", RecordType::A, false);
    let t0 = Instant::now();
    cache.store(&k, &a_answer("web.example.org.", &[300, 60]), t0);
    let answer = hit(&cache, &k, t0 + Duration::from_secs(20)).unwrap();
    // Every record counts down; none outlives the entry (the smallest TTL, 60 s).
    assert_eq!(ttls(&answer), vec![40, 40]);
    assert_eq!(wire::id(&answer), Some(0));
    assert!(hit(&cache, &k, t0 + Duration::from_secs(60)).is_none());
    assert!(
        cache.is_empty(),
        "an expired entry is dropped without serve_stale"
    );
}

#[test]
fn ttl_clamps_apply() {
    let cache = cache(CacheConfig {
        min_ttl: Duration::from_secs(30),
        max_ttl: Duration::from_secs(100),
        ..CacheConfig::default()
    });
    let short = key("short.example.", RecordType::A, false);
    let long = key("long.example.", RecordType::A, false);
    let t0 = Instant::now();
    cache.store(&short, &a_answer("short.example.", &[5]), t0);
    cache.store(&long, &a_answer("long.example.", &[86_400]), t0);
    // Kept 30 s although the record said 5; answered with the floor while it lasts.
    assert_eq!(
        ttls(&hit(&cache, &short, t0 + Duration::from_secs(10)).unwrap()),
        vec![20]
    );
    assert!(hit(&cache, &short, t0 + Duration::from_secs(31)).is_none());
    assert_eq!(
        ttls(&hit(&cache, &long, t0 + Duration::from_secs(1)).unwrap()),
        vec![99]
    );
    assert!(hit(&cache, &long, t0 + Duration::from_secs(101)).is_none());
}

#[test]
fn negative_answers_live_for_the_soa_minimum() {
    let cache = cache(CacheConfig {
        max_negative_ttl: Duration::from_secs(600),
        ..CacheConfig::default()
    });
    let t0 = Instant::now();
    let nx = key("nope.cluster.local.", RecordType::A, false);
    // SOA TTL 3600, MINIMUM 30: RFC 2308 takes the smaller.
    let answer = negative_answer(
        "nope.cluster.local.",
        RecordType::A,
        ResponseCode::NXDomain,
        Some((3600, 30)),
    );
    cache.store(&nx, &answer, t0);
    let cached = hit(&cache, &nx, t0 + Duration::from_secs(10)).unwrap();
    assert_eq!(wire::rcode(&cached), 3);
    assert_eq!(ttls(&cached), vec![20]);
    assert!(hit(&cache, &nx, t0 + Duration::from_secs(30)).is_none());

    // NODATA too; capped by max_negative_ttl.
    let nodata = key("v4only.example.", RecordType::AAAA, false);
    let answer = negative_answer(
        "v4only.example.",
        RecordType::AAAA,
        ResponseCode::NoError,
        Some((7200, 7200)),
    );
    cache.store(&nodata, &answer, t0);
    assert!(hit(&cache, &nodata, t0 + Duration::from_secs(599)).is_some());
    assert!(hit(&cache, &nodata, t0 + Duration::from_secs(600)).is_none());
}

#[test]
fn what_must_not_be_cached_is_not() {
    let cache = cache(CacheConfig::default());
    let t0 = Instant::now();
    let k = key("x.example.", RecordType::A, false);
    // Negative without SOA (RFC 2308 §5), SERVFAIL, truncated, zero TTL, garbage.
    cache.store(
        &k,
        &negative_answer("x.example.", RecordType::A, ResponseCode::NoError, None),
        t0,
    );
    cache.store(
        &k,
        &negative_answer("x.example.", RecordType::A, ResponseCode::ServFail, None),
        t0,
    );
    let mut truncated = a_answer("x.example.", &[300]);
    truncated[2] |= 0x02;
    cache.store(&k, &truncated, t0);
    cache.store(&k, &a_answer("x.example.", &[0]), t0);
    cache.store(&k, &[0xff; 40], t0);
    cache.store(&k, &[], t0);
    assert!(cache.is_empty());
}

#[test]
fn edns_options_are_not_shared() {
    let cache = cache(CacheConfig::default());
    let t0 = Instant::now();
    let k = key("web.example.", RecordType::A, true);
    let answer = with_cookie(&a_answer("web.example.", &[300]));
    cache.store(&k, &answer, t0);
    let cached = hit(&cache, &k, t0).unwrap();
    let msg = hickory_proto::op::Message::from_vec(&cached).unwrap();
    let edns = msg.edns.expect("the OPT record stays");
    assert_eq!(edns.max_payload(), 1232);
    assert!(edns.options().as_ref().is_empty(), "the cookie is gone");
    assert_eq!(cached.len(), answer.len() - 28);
}

#[test]
fn capacity_evicts_and_bounds_big_answers() {
    let cache = cache(CacheConfig {
        max_entries: 100,
        ..CacheConfig::default()
    });
    let t0 = Instant::now();
    for i in 0..1000 {
        let name = format!("n{i}.example.");
        cache.store(
            &key(&name, RecordType::A, false),
            &a_answer(&name, &[300]),
            t0,
        );
    }
    assert!(cache.len() <= 100, "{} entries", cache.len());
    assert!(cache.len() >= 50, "{} entries", cache.len());
    // An answer of ~40 records (~650 bytes) weighs two units.
    let big = a_answer("big.example.", &[300; 40]);
    assert!(big.len() > 512);
    let weight = quick_cache::Weighter::weight(
        &Weight,
        &key("big.example.", RecordType::A, false),
        &Arc::new(cache.entry_for(&big, t0).unwrap()),
    );
    assert_eq!(weight, 2);
}

#[test]
fn serve_stale_only_when_enabled_and_within_a_day() {
    let t0 = Instant::now();
    let k = key("web.example.", RecordType::A, false);
    let answer = a_answer("web.example.", &[60]);
    let off = cache(CacheConfig::default());
    off.store(&k, &answer, t0);
    assert!(off.stale(&k, t0 + Duration::from_secs(120)).is_none());

    let on = cache(CacheConfig {
        serve_stale: true,
        ..CacheConfig::default()
    });
    on.store(&k, &answer, t0);
    assert!(hit(&on, &k, t0 + Duration::from_secs(120)).is_none());
    let stale = on.stale(&k, t0 + Duration::from_secs(120)).unwrap();
    assert_eq!(ttls(&stale), vec![30]);
    assert!(on
        .stale(&k, t0 + MAX_STALENESS + Duration::from_secs(61))
        .is_none());
}

#[test]
fn prefetch_fires_once_for_popular_entries_near_expiry() {
    let cache = cache(CacheConfig {
        prefetch: 3,
        ..CacheConfig::default()
    });
    let t0 = Instant::now();
    let k = key("popular.example.", RecordType::A, false);
    cache.store(&k, &a_answer("popular.example.", &[100]), t0);
    let prefetch = |at: u64| match cache.get(&k, t0 + Duration::from_secs(at)) {
        CacheLookup::Hit { prefetch, .. } => prefetch,
        CacheLookup::Miss => panic!("miss"),
    };
    assert!(!prefetch(10));
    assert!(!prefetch(20));
    assert!(
        !prefetch(50),
        "asked three times, but more than a tenth is left"
    );
    assert!(prefetch(95));
    assert!(!prefetch(96), "one refresh per entry");
}

#[test]
fn coalescer_leads_waits_and_caps() {
    let coalescer = Coalescer::<u32>::default();
    let k = key("web.example.", RecordType::A, false);
    assert!(matches!(coalescer.join(&k, 0), Join::Lead(0)));
    for i in 1..=MAX_WAITERS as u32 {
        assert!(matches!(coalescer.join(&k, i), Join::Waiting));
    }
    assert!(matches!(coalescer.join(&k, 9999), Join::Alone(9999)));
    assert!(coalescer.is_waiting(&k));
    let waiters = coalescer.release(&k);
    assert_eq!(waiters.len(), MAX_WAITERS);
    assert!(!coalescer.is_waiting(&k));
    assert!(coalescer.release(&k).is_empty());
}
