//! Answers through dnslens equal the upstream's own, over UDP and TCP.

use std::time::Duration;

use hickory_proto::op::{Edns, Message};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::RecordType;
use tokio::net::TcpStream;

use crate::harness::*;

const QUESTIONS: &[(&str, RecordType)] = &[
    ("kubernetes.default.svc.cluster.local.", RecordType::A),
    ("web.default.svc.cluster.local.", RecordType::AAAA),
    ("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV),
    ("db.team-a.svc.cluster.local.", RecordType::A),
    ("www.example.org.", RecordType::A),
    ("github.com.", RecordType::MX),
    ("txt.example.org.", RecordType::TXT),
    ("nosuch.example.org.", RecordType::A),
    ("alauda.cn.default.svc.cluster.local.", RecordType::A),
    ("Kubernetes.DEFAULT.svc.cluster.local.", RecordType::A),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_and_tcp_answers_match_the_upstream() {
    let world = World::start().await;
    for (name, qtype) in QUESTIONS {
        let direct = ask_udp(world.upstream.addr, name, *qtype, Some(1232)).await;
        let via_udp = ask_udp(world.dns(), name, *qtype, Some(1232)).await;
        let via_tcp = ask_tcp(world.dns(), name, *qtype).await;
        assert_eq!(
            essence(&via_udp),
            essence(&direct),
            "{name} {qtype} over UDP"
        );
        assert_eq!(
            essence(&via_tcp),
            essence(&direct),
            "{name} {qtype} over TCP"
        );
    }
    let nx = ask_udp(world.dns(), "nosuch.example.org.", RecordType::A, None).await;
    assert_eq!(nx.metadata.response_code.low(), 3);
    assert_eq!(nx.authorities.len(), 1, "NXDOMAIN keeps its SOA");
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_reaches_the_upstream_byte_for_byte_but_the_id() {
    let upstream = crate::harness::DelayedUpstream::start(Duration::ZERO).await;
    let proxy = dnslens::Proxy::start(&test_config(&[upstream.addr]))
        .await
        .unwrap();
    let mut msg =
        Message::from_vec(&query_bytes("Example.org.", RecordType::AAAA, 0x4242, None)).unwrap();
    msg.metadata.checking_disabled = true;
    msg.metadata.authentic_data = true;
    let mut edns = Edns::new();
    edns.set_max_payload(1400);
    edns.set_dnssec_ok(true);
    edns.options_mut()
        .insert(EdnsOption::Unknown(65001, vec![1, 2, 3, 4]));
    msg.set_edns(edns);
    let sent = msg.to_vec().unwrap();
    let answer = udp_exchange(proxy.dns_addrs[0], &sent, Duration::from_secs(2))
        .await
        .expect("answer");
    assert_eq!(
        Message::from_vec(&answer).unwrap().metadata.id,
        0x4242,
        "the client's ID restored"
    );

    let received = upstream.last_query.lock().unwrap().clone();
    assert_eq!(received.len(), sent.len());
    assert_ne!(received[..2], sent[..2], "a fresh ID upstream");
    assert_eq!(
        received[2..],
        sent[2..],
        "flags, question, EDNS payload, DO and options untouched"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answers_are_truncated_for_small_udp_clients_and_whole_over_tcp() {
    let world = World::start().await;
    let direct = ask_tcp(world.upstream.addr, "big.example.org.", RecordType::TXT).await;
    assert_eq!(direct.answers.len(), 8);

    // No EDNS: 512 bytes at most, TC set, no records.
    let id = 0x0bad;
    let raw = udp_exchange(
        world.dns(),
        &query_bytes("big.example.org.", RecordType::TXT, id, None),
        Duration::from_secs(3),
    )
    .await
    .expect("answer");
    assert!(raw.len() <= 512, "{} bytes", raw.len());
    let small = Message::from_vec(&raw).unwrap();
    assert!(small.metadata.truncation);
    assert_eq!(small.metadata.id, id);
    assert!(small.answers.is_empty());

    // EDNS 4096: the whole answer over UDP.
    let big = ask_udp(world.dns(), "big.example.org.", RecordType::TXT, Some(4096)).await;
    assert!(!big.metadata.truncation);
    assert_eq!(essence(&big), essence(&direct));

    // TCP: whole.
    let tcp = ask_tcp(world.dns(), "big.example.org.", RecordType::TXT).await;
    assert_eq!(essence(&tcp), essence(&direct));
    assert!(metric(world.proxy.metrics_addr, "dnslens_udp_truncated_total").await >= 1.0);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_queries_are_pipelined_on_one_connection() {
    let world = World::start().await;
    let mut stream = TcpStream::connect(world.dns()).await.unwrap();
    let names = [
        "kubernetes.default.svc.cluster.local.",
        "github.com.",
        "example.org.",
        "nosuch.example.org.",
    ];
    for (i, name) in names.iter().enumerate() {
        tcp_send(
            &mut stream,
            &query_bytes(name, RecordType::A, 100 + i as u16, None),
        )
        .await;
    }
    let mut ids = Vec::new();
    for _ in names {
        let answer = tokio::time::timeout(Duration::from_secs(3), tcp_recv(&mut stream))
            .await
            .unwrap()
            .expect("answer");
        let msg = Message::from_vec(&answer).unwrap();
        let i = usize::from(msg.metadata.id - 100);
        assert_eq!(msg.queries[0].name().to_ascii(), names[i]);
        ids.push(msg.metadata.id);
    }
    ids.sort();
    assert_eq!(ids, [100, 101, 102, 103]);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_clients_all_get_their_own_answers() {
    let world = World::start().await;
    let dns = world.dns();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200u16 {
        tasks.spawn(async move {
            let (name, expect) = if i % 2 == 0 {
                ("kubernetes.default.svc.cluster.local.", "10.96.0.1")
            } else {
                ("github.com.", "203.0.113.20")
            };
            let msg = ask_udp(dns, name, RecordType::A, None).await;
            assert_eq!(msg.answers[0].data.to_string(), expect);
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let answered = metric(
        world.proxy.metrics_addr,
        "dnslens_requests_total{transport=\"udp\",qtype=\"A\",rcode=\"NOERROR\"}",
    )
    .await;
    assert_eq!(answered, 200.0);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_what_is_in_flight() {
    // An upstream that answers only after 400 ms; shutdown starts while the query waits.
    let slow = crate::harness::DelayedUpstream::start(Duration::from_millis(400)).await;
    let mut config = test_config(&[slow.addr]);
    config.forward.timeout = Duration::from_secs(2);
    let proxy = dnslens::Proxy::start(&config).await.unwrap();
    let dns = proxy.dns_addrs[0];
    let pending = tokio::spawn(async move {
        udp_exchange(
            dns,
            &query_bytes("example.org.", RecordType::A, 7, None),
            Duration::from_secs(3),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.shutdown().await;
    let answer = pending
        .await
        .unwrap()
        .expect("in-flight query answered during shutdown");
    assert_eq!(
        Message::from_vec(&answer)
            .unwrap()
            .metadata
            .response_code
            .low(),
        0
    );
    // After shutdown nothing listens.
    assert!(udp_exchange(
        dns,
        &query_bytes("example.org.", RecordType::A, 8, None),
        Duration::from_millis(300)
    )
    .await
    .is_none());
}

/// Upstreams that lead back to dnslens (a relay that hands every query it gets to
/// dnslens's own listener: a node whose resolv.conf names the node-local address, in
/// miniature): the loop probe comes back, dnslens says so in `/readyz?verbose`, counts it,
/// and answers the looping question SERVFAIL instead of letting it circle; a proxy in front
/// of a real upstream sees no loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarding_loop_is_detected_by_its_probe() {
    // dnslens takes its port first (port 0: no other test can share it), then a reload
    // points it at the relay — the probe goes out with each new configuration.
    let unused: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut config = test_config(&[unused]);
    let mut proxy = dnslens::Proxy::start(&config).await.unwrap();
    let relay = UpstreamRelay::start(proxy.dns_addrs[0], Duration::ZERO).await;
    config.forward.upstreams = vec![dnslens::config::UpstreamAddr(relay.udp)];
    config.forward.loop_check = true;
    proxy.reload(config).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while metric(proxy.metrics_addr, "dnslens_forwarding_loop_detected_total").await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the probe never came back through the relay"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The first probe did it: sent on forwarder sockets opened a moment before (a send
    // that once failed locally until tokio's reactor had seen the socket).
    assert_eq!(relay.seen.load(std::sync::atomic::Ordering::SeqCst), 1);
    let local_errors = format!(
        "dnslens_upstream_requests_total{{upstream=\"{}\",transport=\"udp\",outcome=\"local_error\"}}",
        relay.udp
    );
    assert_eq!(metric(proxy.metrics_addr, &local_errors).await, 0.0);
    let (_, verbose) = http_get(proxy.metrics_addr, "/readyz?verbose").await;
    assert!(verbose.contains("forwarding loop: detected"), "{verbose}");
    proxy.shutdown().await;

    let world = World::start_with(|c| c.forward.loop_check = true).await;
    ask_udp(
        world.dns(),
        "web.default.svc.cluster.local.",
        RecordType::A,
        None,
    )
    .await;
    let (_, verbose) = http_get(world.proxy.metrics_addr, "/readyz?verbose").await;
    assert!(verbose.contains("forwarding loop: none seen"), "{verbose}");
    let (_, metrics) = http_get(world.proxy.metrics_addr, "/metrics").await;
    assert_eq!(
        series_in(&metrics, "dnslens_forwarding_loop_detected_total"),
        Some(0.0)
    );
    world.stop().await;
}
