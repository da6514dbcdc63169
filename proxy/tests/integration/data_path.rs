//! The data path's correctness against Knot: both address families at once, answers that
//! echo each asker, EDNS kept on truncated answers, TCP clients through the same pipeline as
//! UDP (coalescing, autopath), and the in-flight bound and shutdown covering TCP fetches.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dnslens::config::Config;
use dnslens::Proxy;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;

async fn proxy_with(upstreams: &[SocketAddr], tweak: impl FnOnce(&mut Config)) -> Proxy {
    let mut config = test_config(upstreams);
    tweak(&mut config);
    config.validate().expect("valid test config");
    Proxy::start(&config).await.expect("proxy starts")
}

/// `[::]` is both families (the chart's node-local Service mode, the sidecar's admin port):
/// clients of either family are answered over UDP and TCP, and the admin port answers both,
/// each client seen with its own address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ipv6_wildcard_serves_both_families() {
    let world = World::start_with(|c| {
        c.listen = vec!["[::]:0".parse().unwrap()];
        c.admin.listen = "[::]:0".parse().unwrap();
    })
    .await;
    let port = world.dns().port();
    for client in ["127.0.0.1", "::1"] {
        let dns = SocketAddr::new(client.parse().unwrap(), port);
        let udp = ask_udp(dns, "web.default.svc.cluster.local.", RecordType::A, None).await;
        assert_eq!(
            udp.metadata.response_code,
            ResponseCode::NoError,
            "{dns} udp"
        );
        assert_eq!(udp.answers.len(), 1, "{dns} udp");
        let tcp = ask_tcp(dns, "web.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(tcp.answers.len(), 1, "{dns} tcp");
        let admin = SocketAddr::new(client.parse().unwrap(), world.proxy.metrics_addr.port());
        assert_eq!(http_get(admin, "/readyz").await.0, 200, "{admin}");
    }
    // IPv4 clients arrive as ::ffff:127.0.0.1: the loopback-only access list knows them.
    let metrics = http_get(world.proxy.metrics_addr, "/metrics").await.1;
    assert_eq!(
        series_value(&metrics, "dnslens_acl_refused_total"),
        0.0,
        "{metrics}"
    );
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_and_ipv6_upstreams_both_answer() {
    let (knot, v6) = Knot::start_dual(true).await;
    let proxy = proxy_with(&[knot.addr, v6], |c| {
        c.forward.timeout = Duration::from_secs(2);
        c.forward.attempts = 1;
    })
    .await;
    let dns = proxy.dns_addrs[0];
    // Round-robin sends half of these to each upstream; with one try each, an IPv4 answer
    // dropped on the dual-stack pool socket would show as a SERVFAIL here.
    for i in 0..10 {
        let msg = ask_udp(dns, "web.default.svc.cluster.local.", RecordType::A, None).await;
        assert_eq!(
            msg.metadata.response_code,
            ResponseCode::NoError,
            "query {i}"
        );
        assert_eq!(msg.answers.len(), 1, "query {i}");
    }
    let m = proxy.metrics_addr;
    for upstream in [knot.addr, v6] {
        let answered = format!(
            "dnslens_upstream_requests_total{{upstream=\"{upstream}\",transport=\"udp\",outcome=\"answer\"}}"
        );
        assert_eq!(metric(m, &answered).await, 5.0, "{upstream}");
        let wrong_source = format!(
            "dnslens_responses_dropped_total{{upstream=\"{upstream}\",reason=\"wrong_source\"}}"
        );
        assert_eq!(metric(m, &wrong_source).await, 0.0, "{upstream}");
    }
    proxy.shutdown().await;
}

/// The question section of a message as sent, byte for byte.
fn question_bytes(msg: &[u8]) -> &[u8] {
    let info = dnslens::wire::parse_response(msg)
        .or_else(|_| {
            dnslens::wire::parse_query(msg).map(|q| dnslens::wire::ResponseInfo {
                id: q.id,
                truncated: false,
                rcode: 0,
                question_end: q.question_end,
            })
        })
        .expect("a message with one question");
    &msg[12..info.question_end]
}

/// A query with RD and CD as given.
fn query_with_bits(name: &str, id: u16, rd: bool, cd: bool) -> Vec<u8> {
    let mut q = query_bytes(name, RecordType::A, id, None);
    q[2] = (q[2] & !0x01) | u8::from(rd);
    q[3] = (q[3] & !0x10) | if cd { 0x10 } else { 0 };
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_echo_each_askers_question_and_flags() {
    let knot = Knot::start().await;
    let relay = UpstreamRelay::start(knot.addr, Duration::from_millis(300)).await;
    let proxy = proxy_with(&[relay.udp], |c| {
        c.cache.enabled = true;
        c.forward.timeout = Duration::from_secs(2);
    })
    .await;
    let dns = proxy.dns_addrs[0];
    // Concurrent askers of one question in four spellings: one leads, three wait for it.
    let spellings = [
        ("web.default.svc.cluster.local.", true, false),
        ("WEB.default.svc.cluster.local.", false, true),
        ("wEb.DeFaUlT.svc.cluster.local.", true, true),
        ("Web.Default.Svc.Cluster.Local.", false, false),
    ];
    let askers: Vec<_> = spellings
        .iter()
        .enumerate()
        .map(|(i, &(name, rd, cd))| {
            tokio::spawn(async move {
                let query = query_with_bits(name, 100 + i as u16, rd, cd);
                let answer = udp_exchange(dns, &query, Duration::from_secs(3))
                    .await
                    .expect("an answer");
                (query, answer)
            })
        })
        .collect();
    let mut exchanges = Vec::new();
    for asker in askers {
        exchanges.push(asker.await.unwrap());
    }
    // CD is part of the cache key (a validating upstream answers it differently): two
    // questions upstream, each with one waiter coalesced onto it.
    assert_eq!(
        relay.seen.load(Ordering::SeqCst),
        2,
        "the askers were coalesced"
    );
    assert_eq!(
        metric(proxy.metrics_addr, "dnslens_cache_coalesced_total").await,
        2.0
    );
    // Then from the warm cache, in yet other spellings.
    for (i, &(name, rd, cd)) in spellings.iter().enumerate().rev() {
        let query = query_with_bits(&name.to_uppercase(), 200 + i as u16, rd, cd);
        let answer = udp_exchange(dns, &query, Duration::from_secs(3))
            .await
            .expect("an answer");
        exchanges.push((query, answer));
    }
    assert_eq!(
        relay.seen.load(Ordering::SeqCst),
        2,
        "the rest came from the cache"
    );
    for (query, answer) in &exchanges {
        assert_eq!(answer[..2], query[..2], "ID");
        assert_eq!(
            question_bytes(answer),
            question_bytes(query),
            "question bytes"
        );
        assert_eq!(answer[2] & 0x01, query[2] & 0x01, "RD");
        assert_eq!(answer[3] & 0x10, query[3] & 0x10, "CD");
        let msg = Message::from_vec(answer).unwrap();
        assert_eq!(msg.answers.len(), 1);
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_answers_keep_the_opt_record() {
    let knot = Knot::start().await;
    let proxy = proxy_with(&[knot.addr], |_| {}).await;
    let dns = proxy.dns_addrs[0];
    for (edns, cache) in [(Some(512), "EDNS 512"), (None, "no EDNS")] {
        let query = query_bytes("big.example.org.", RecordType::TXT, 9, edns);
        let direct = udp_exchange(knot.addr, &query, Duration::from_secs(2))
            .await
            .map(|a| Message::from_vec(&a).unwrap())
            .expect("Knot answers");
        let via = udp_exchange(dns, &query, Duration::from_secs(2))
            .await
            .map(|a| Message::from_vec(&a).unwrap())
            .expect("dnslens answers");
        assert!(direct.metadata.truncation, "{cache}: Knot truncates");
        assert!(via.metadata.truncation, "{cache}: dnslens truncates");
        assert_eq!(
            via.edns.is_some(),
            edns.is_some(),
            "{cache}: OPT in the truncated answer exactly when the query had EDNS"
        );
        assert_eq!(
            via.edns.as_ref().map(|e| e.max_payload()),
            direct.edns.as_ref().map(|e| e.max_payload()),
            "{cache}: the payload size Knot advertises"
        );
    }
    assert_eq!(
        metric(proxy.metrics_addr, "dnslens_udp_truncated_total").await,
        2.0
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_clients_are_coalesced_and_cached_like_udp_ones() {
    let knot = Knot::start().await;
    // The relay's TCP side listens on a port of its own: force_tcp sends every upstream
    // query there (TCP clients would go over TCP anyway).
    let relay = UpstreamRelay::start(knot.addr, Duration::from_millis(300)).await;
    let proxy = proxy_with(&[relay.tcp], |c| {
        c.cache.enabled = true;
        c.forward.force_tcp = true;
        c.forward.timeout = Duration::from_secs(2);
    })
    .await;
    let dns = proxy.dns_addrs[0];
    let clients: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn(ask_tcp(
                dns,
                "web.default.svc.cluster.local.",
                RecordType::A,
            ))
        })
        .collect();
    for client in clients {
        let msg = client.await.unwrap();
        assert_eq!(msg.answers.len(), 1);
    }
    assert_eq!(relay.seen.load(Ordering::SeqCst), 1, "one upstream query");
    let m = proxy.metrics_addr;
    assert_eq!(metric(m, "dnslens_cache_coalesced_total").await, 9.0);
    let msg = ask_tcp(dns, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(msg.answers.len(), 1);
    assert_eq!(metric(m, "dnslens_cache_hits_total").await, 1.0);
    assert_eq!(
        relay.seen.load(Ordering::SeqCst),
        1,
        "the last one from the cache"
    );
    assert_eq!(
        metric(
            m,
            "dnslens_requests_total{transport=\"tcp\",qtype=\"A\",rcode=\"NOERROR\"}"
        )
        .await,
        11.0
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autopath_answers_tcp_clients_too() {
    let knot = Knot::start().await;
    let proxy = proxy_with(&[knot.addr], |c| {
        c.mitigations.autopath = true;
        c.search.list = vec![
            "default.svc.cluster.local".into(),
            "svc.cluster.local".into(),
            "cluster.local".into(),
        ];
        c.search.ndots = Some(5);
    })
    .await;
    let dns = proxy.dns_addrs[0];
    let msg = ask_tcp(dns, "github.com.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    let cname = msg
        .answers
        .iter()
        .find_map(|r| match &r.data {
            RData::CNAME(target) => Some(target.0.to_ascii()),
            _ => None,
        })
        .expect("a CNAME to the name that resolved");
    assert_eq!(cname, "github.com.");
    assert!(msg.answers.iter().any(|r| r.record_type() == RecordType::A));
    assert_eq!(
        metric(
            proxy.metrics_addr,
            "dnslens_autopath_total{result=\"answered\"}"
        )
        .await,
        1.0
    );
    proxy.shutdown().await;
}

/// A TCP upstream that accepts connections and reads queries but answers after `delay`
/// (never, with `None`).
async fn slow_tcp_upstream(
    knot: SocketAddr,
    delay: Option<Duration>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                while let Some(query) = tcp_recv(&mut stream).await {
                    count.fetch_add(1, Ordering::SeqCst);
                    let Some(delay) = delay else { continue };
                    tokio::time::sleep(delay).await;
                    let mut upstream = TcpStream::connect(knot).await.unwrap();
                    tcp_send(&mut upstream, &query).await;
                    if let Some(answer) = tcp_recv(&mut upstream).await {
                        tcp_send(&mut stream, &answer).await;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_inflight_counts_tcp_fetches() {
    let knot = Knot::start().await;
    let (upstream, seen) = slow_tcp_upstream(knot.addr, None).await;
    let proxy = proxy_with(&[upstream], |c| {
        c.forward.force_tcp = true;
        c.forward.max_inflight = 2;
        c.forward.timeout = Duration::from_secs(1);
        c.forward.attempts = 1;
    })
    .await;
    let dns = proxy.dns_addrs[0];
    let askers: Vec<_> = (0..5u16)
        .map(|i| {
            let name = format!("n{i}.example.org.");
            tokio::spawn(async move {
                let query = query_bytes(&name, RecordType::A, i, None);
                let started = std::time::Instant::now();
                let answer = udp_exchange(dns, &query, Duration::from_secs(3)).await;
                (
                    answer.map(|a| Message::from_vec(&a).unwrap()),
                    started.elapsed(),
                )
            })
        })
        .collect();
    let mut fast_servfails = 0;
    for asker in askers {
        let (answer, elapsed) = asker.await.unwrap();
        let answer = answer.expect("every client gets an answer");
        assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
        if elapsed < Duration::from_millis(500) {
            fast_servfails += 1;
        }
    }
    assert_eq!(
        fast_servfails, 3,
        "three over the bound are refused at once"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 2, "two reached the upstream");
    let m = proxy.metrics_addr;
    assert_eq!(
        metric(m, "dnslens_forward_failures_total{reason=\"overload\"}").await,
        3.0
    );
    assert_eq!(metric(m, "dnslens_inflight_queries").await, 0.0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_a_tcp_fetch_in_flight() {
    let knot = Knot::start().await;
    let (upstream, seen) = slow_tcp_upstream(knot.addr, Some(Duration::from_millis(400))).await;
    let port = free_port();
    let dns: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = TempDir::new("shutdown");
    let config = dir.0.join("dnslens.yaml");
    std::fs::write(&config, "forward:\n  force_tcp: true\nshutdown_grace: 5s\n").unwrap();
    let mut proxy = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_dnslens"))
            .args(["serve", "--listen", &dns.to_string()])
            .args(["--upstream", &upstream.to_string()])
            .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    // Ready when the listener takes a TCP connection.
    for _ in 0..100 {
        if TcpStream::connect(dns).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let asker = tokio::spawn(async move {
        udp_exchange(
            dns,
            &query_bytes("web.default.svc.cluster.local.", RecordType::A, 5, None),
            Duration::from_secs(3),
        )
        .await
    });
    // SIGTERM once the query has reached the upstream.
    for _ in 0..100 {
        if seen.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &proxy.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let answer = asker
        .await
        .unwrap()
        .expect("the query in flight is answered");
    assert_eq!(Message::from_vec(&answer).unwrap().answers.len(), 1);
    let exited = tokio::task::spawn_blocking(move || {
        let status = proxy.0.wait();
        (proxy, status)
    })
    .await
    .unwrap();
    assert!(exited.1.unwrap().success(), "a clean exit");
}
