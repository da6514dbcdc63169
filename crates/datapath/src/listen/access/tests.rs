use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::ratelimit::{RateLimitConfig, RateLimitMetrics};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn an_empty_allow_list_is_loopback_only() {
    let access = AccessList::new(&[]);
    for client in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
        assert!(access.allows(ip(client)), "{client}");
    }
    for client in ["10.244.1.20", "::2", "192.168.0.1"] {
        assert!(!access.allows(ip(client)), "{client}");
    }
}

#[test]
fn allowed_networks_replace_loopback_and_mapped_ipv4_is_matched_as_ipv4() {
    let access = AccessList::new(&[
        "10.244.0.0/16".parse().unwrap(),
        "fd00::/8".parse().unwrap(),
    ]);
    assert!(access.allows(ip("10.244.7.9")));
    assert!(
        access.allows(ip("::ffff:10.244.7.9")),
        "a dual-stack socket's IPv4 client"
    );
    assert!(access.allows(ip("fd00::53")));
    assert!(!access.allows(ip("10.245.0.1")));
    assert!(
        !access.allows(ip("127.0.0.1")),
        "loopback only when nothing is listed"
    );
}

#[test]
fn the_policy_passes_everything_without_a_rate_limit_and_limits_with_one() {
    let unlimited = ClientPolicy {
        access: AccessList::new(&[]),
        rate_limit: None,
    };
    let now = Instant::now();
    for _ in 0..10_000 {
        assert_eq!(unlimited.rate(ip("127.0.0.1"), now), Verdict::Pass);
    }
    let config = RateLimitConfig {
        per_client_qps: 10,
        burst: 10,
        ..RateLimitConfig::default()
    };
    let metrics = RateLimitMetrics::register(&mut prometheus_client::registry::Registry::default());
    let limited = ClientPolicy {
        access: AccessList::new(&[]),
        rate_limit: RateLimiter::build(&config, &metrics),
    };
    let passed = (0..50)
        .filter(|_| limited.rate(ip("::ffff:127.0.0.1"), now) == Verdict::Pass)
        .count();
    assert_eq!(passed, 10, "the burst, then refused");
    assert_eq!(
        limited.rate(ip("127.0.0.1"), now),
        Verdict::Refuse,
        "the same client, mapped or not"
    );
    assert_eq!(
        limited.rate(ip("127.0.0.2"), now),
        Verdict::Pass,
        "another client has its own bucket"
    );
    assert_eq!(
        limited.rate(ip("127.0.0.1"), now + Duration::from_secs(1)),
        Verdict::Pass,
        "refilled a second later"
    );
}
