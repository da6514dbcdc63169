//! The cache, coalescing, the access list and force_tcp, against Knot as the upstream.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use dnslens::config::Config;
use dnslens::Proxy;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

use crate::harness::*;

async fn proxy_in_front_of(upstream: SocketAddr, tweak: impl FnOnce(&mut Config)) -> Proxy {
    let mut config = test_config(&[upstream]);
    config.cache.enabled = true;
    tweak(&mut config);
    config.validate().expect("valid test config");
    Proxy::start(&config).await.expect("proxy starts")
}

#[tokio::test]
async fn ttls_count_down_for_answers_and_negative_answers() {
    let knot = Knot::start().await;
    let proxy = proxy_in_front_of(knot.addr, |_| {}).await;
    let dns = proxy.dns_addrs[0];
    let name = "web.default.svc.cluster.local.";
    let first = ask_udp(dns, name, RecordType::A, None).await;
    assert_eq!(first.answers[0].ttl, 30, "Knot's TTL on the first answer");
    let missing = "nothing-here.example.org.";
    let first_nx = ask_udp(dns, missing, RecordType::A, None).await;
    assert_eq!(first_nx.metadata.response_code, ResponseCode::NXDomain);
    let soa_ttl = first_nx.authorities[0].ttl;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let cached = ask_udp(dns, name, RecordType::A, None).await;
    assert!(
        (27..=28).contains(&cached.answers[0].ttl),
        "counted down: {}",
        cached.answers[0].ttl
    );
    assert_eq!(essence(&cached).1.len(), 1);
    let cached_nx = ask_udp(dns, missing, RecordType::A, None).await;
    assert_eq!(cached_nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(
        cached_nx.authorities[0].ttl <= soa_ttl - 2,
        "negative TTL counted down from {soa_ttl}: {}",
        cached_nx.authorities[0].ttl
    );
    let m = proxy.metrics_addr;
    assert_eq!(metric(m, "dnslens_cache_hits_total").await, 2.0);
    assert_eq!(metric(m, "dnslens_cache_misses_total").await, 2.0);
    assert_eq!(metric(m, "dnslens_cache_entries").await, 2.0);
    // Over TCP the same entries answer.
    let tcp = ask_tcp(dns, name, RecordType::A).await;
    assert!(tcp.answers[0].ttl < 30);
    assert_eq!(metric(m, "dnslens_cache_hits_total").await, 3.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn capacity_is_kept_by_evicting() {
    let knot = Knot::start().await;
    let proxy = proxy_in_front_of(knot.addr, |c| c.cache.max_entries = 8).await;
    let dns = proxy.dns_addrs[0];
    for i in 0..40 {
        let msg = ask_udp(dns, &format!("n{i}.example.org."), RecordType::A, None).await;
        assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain);
    }
    let m = proxy.metrics_addr;
    let entries = metric(m, "dnslens_cache_entries").await;
    assert!((1.0..=8.0).contains(&entries), "{entries} entries");
    assert!(metric(m, "dnslens_cache_evictions_total").await >= 32.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn identical_questions_in_flight_share_one_upstream_query() {
    let knot = Knot::start().await;
    let relay = UpstreamRelay::start(knot.addr, Duration::from_millis(300)).await;
    let proxy = proxy_in_front_of(relay.udp, |c| {
        c.forward.timeout = Duration::from_secs(2);
    })
    .await;
    let dns = proxy.dns_addrs[0];
    let clients: Vec<_> = (0..20u16)
        .map(|i| {
            tokio::spawn(async move {
                let id = 1000 + i;
                let query = query_bytes("web.default.svc.cluster.local.", RecordType::A, id, None);
                let answer = udp_exchange(dns, &query, Duration::from_secs(3))
                    .await
                    .expect("an answer");
                let msg = Message::from_vec(&answer).unwrap();
                assert_eq!(msg.metadata.id, id, "each client gets its own ID back");
                assert_eq!(msg.answers.len(), 1);
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(relay.seen.load(Ordering::SeqCst), 1, "one upstream query");
    let m = proxy.metrics_addr;
    assert_eq!(metric(m, "dnslens_cache_coalesced_total").await, 19.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn stale_answers_are_served_when_the_upstream_is_gone() {
    let knot = Knot::start().await;
    let proxy = proxy_in_front_of(knot.addr, |c| {
        c.cache.serve_stale = true;
        c.cache.max_ttl = Duration::from_secs(1);
        c.forward.timeout = Duration::from_millis(200);
    })
    .await;
    let dns = proxy.dns_addrs[0];
    let name = "api.team-a.svc.cluster.local.";
    let fresh = ask_udp(dns, name, RecordType::A, None).await;
    assert_eq!(fresh.answers.len(), 1);
    drop(knot); // knotd killed
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stale = ask_udp(dns, name, RecordType::A, None).await;
    assert_eq!(stale.metadata.response_code, ResponseCode::NoError);
    assert_eq!(stale.answers[0].data, fresh.answers[0].data);
    assert_eq!(stale.answers[0].ttl, 30, "RFC 8767's stale TTL");
    let m = proxy.metrics_addr;
    assert_eq!(metric(m, "dnslens_cache_stale_served_total").await, 1.0);
    // A name never seen still fails.
    let unknown = ask_udp(dns, "web.default.svc.cluster.local.", RecordType::A, None).await;
    assert_eq!(unknown.metadata.response_code, ResponseCode::ServFail);
    proxy.shutdown().await;
}

#[tokio::test]
async fn clients_outside_the_access_list_are_refused() {
    let knot = Knot::start().await;
    let proxy = proxy_in_front_of(knot.addr, |c| {
        c.listener.allow = vec!["10.0.0.0/8".parse().unwrap()];
    })
    .await;
    let dns = proxy.dns_addrs[0];
    let udp = ask_udp(dns, "web.default.svc.cluster.local.", RecordType::A, None).await;
    assert_eq!(udp.metadata.response_code, ResponseCode::Refused);
    assert!(udp.answers.is_empty());
    let tcp = ask_tcp(dns, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(tcp.metadata.response_code, ResponseCode::Refused);
    let m = proxy.metrics_addr;
    assert_eq!(metric(m, "dnslens_acl_refused_total").await, 2.0);
    let (_, body) = http_get(m, "/metrics").await;
    assert_eq!(
        series_sum(&body, "dnslens_upstream_requests_total"),
        0.0,
        "nothing was forwarded"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn force_tcp_sends_every_upstream_query_over_tcp() {
    let knot = Knot::start().await;
    let proxy = proxy_in_front_of(knot.addr, |c| {
        c.cache.enabled = false;
        c.forward.force_tcp = true;
    })
    .await;
    let dns = proxy.dns_addrs[0];
    for name in [
        "web.default.svc.cluster.local.",
        "github.com.",
        "nope.example.org.",
    ] {
        let via_proxy = ask_udp(dns, name, RecordType::A, None).await;
        let direct = Message::from_vec(
            &udp_exchange(
                knot.addr,
                &query_bytes(name, RecordType::A, 7, None),
                Duration::from_secs(2),
            )
            .await
            .unwrap(),
        )
        .unwrap();
        assert_eq!(essence(&via_proxy), essence(&direct), "{name}");
    }
    let m = proxy.metrics_addr;
    let up = format!(
        "dnslens_upstream_requests_total{{upstream=\"{}\",transport=",
        knot.addr
    );
    assert_eq!(
        metric(m, &format!("{up}\"tcp\",outcome=\"answer\"}}")).await,
        3.0
    );
    assert_eq!(
        metric(m, &format!("{up}\"udp\",outcome=\"answer\"}}")).await,
        0.0
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn popular_entries_are_refreshed_before_they_expire() {
    let knot = Knot::start().await;
    let relay = UpstreamRelay::start(knot.addr, Duration::ZERO).await;
    let proxy = proxy_in_front_of(relay.udp, |c| {
        c.cache.prefetch = 2;
        c.cache.max_ttl = Duration::from_secs(4);
    })
    .await;
    let dns = proxy.dns_addrs[0];
    let name = "web.default.svc.cluster.local.";
    let start = std::time::Instant::now();
    for _ in 0..3 {
        ask_udp(dns, name, RecordType::A, None).await;
    }
    assert_eq!(relay.seen.load(Ordering::SeqCst), 1);
    // Less than a tenth of the 4 s lifetime left: this hit is answered and triggers a refresh.
    tokio::time::sleep_until((start + Duration::from_millis(3750)).into()).await;
    ask_udp(dns, name, RecordType::A, None).await;
    let m = proxy.metrics_addr;
    metric_at_least(m, "dnslens_cache_prefetches_total", 1.0).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(relay.seen.load(Ordering::SeqCst), 2, "one refresh upstream");
    // Past the first entry's expiry the refreshed one answers: no miss.
    tokio::time::sleep_until((start + Duration::from_millis(4500)).into()).await;
    ask_udp(dns, name, RecordType::A, None).await;
    assert_eq!(metric(m, "dnslens_cache_misses_total").await, 1.0);
    assert_eq!(metric(m, "dnslens_cache_hits_total").await, 4.0);
    assert_eq!(relay.seen.load(Ordering::SeqCst), 2);
    proxy.shutdown().await;
}
