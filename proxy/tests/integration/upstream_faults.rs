//! Upstreams that are dead, slow, flaky or hostile: retries, back-off, SERVFAIL, spoofing.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use tokio::net::UdpSocket;

use crate::harness::*;

/// A bound UDP port that never answers (its packets are never read).
async fn black_hole() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_put_aside_is_still_asked_and_dns_is_back_with_the_first_query() {
    let upstream = DelayedUpstream::start(Duration::ZERO).await;
    upstream.on.store(false, Ordering::Relaxed);
    let dead = upstream.addr;
    let mut config = test_config(&[dead]);
    config.forward.timeout = Duration::from_millis(200);
    config.forward.attempts = 2;
    config.forward.failure_threshold = 2;
    config.forward.backoff_min = Duration::from_secs(30);
    config.forward.backoff_max = Duration::from_secs(30);
    let proxy = dnslens::Proxy::start(&config).await.unwrap();
    let dns = proxy.dns_addrs[0];

    let started = Instant::now();
    let answer = ask_udp(dns, "example.org.", RecordType::A, None).await;
    let took = started.elapsed();
    assert_eq!(answer.metadata.response_code.low(), 2, "SERVFAIL");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    let series = format!("dnslens_upstream_requests_total{{upstream=\"{dead}\",transport=\"udp\",outcome=\"timeout\"}}");
    assert_eq!(metric(proxy.metrics_addr, &series).await, 2.0);
    let exhausted = "dnslens_forward_failures_total{reason=\"exhausted\"}";
    assert_eq!(metric(proxy.metrics_addr, exhausted).await, 1.0);

    // Two consecutive failures put it aside for 30 s; readiness does not follow it (a
    // cluster DNS outage must not empty every Service), /readyz?verbose says it.
    let healthy = format!("dnslens_upstream_healthy{{upstream=\"{dead}\"}}");
    assert_eq!(metric(proxy.metrics_addr, &healthy).await, 0.0);
    assert_eq!(http_get(proxy.metrics_addr, "/readyz").await.0, 200);
    let (status, body) = http_get(proxy.metrics_addr, "/readyz?verbose").await;
    assert_eq!(status, 200);
    assert!(
        body.ends_with(&format!("ready\nupstream {dead}: put aside\n")),
        "{body}"
    );
    // Still asked while aside (CoreDNS's forward does the same): a query waits out its
    // tries instead of getting SERVFAIL without anyone being asked...
    let answer = ask_udp(dns, "example.org.", RecordType::A, None).await;
    assert_eq!(answer.metadata.response_code.low(), 2);
    assert_eq!(metric(proxy.metrics_addr, &series).await, 4.0);
    // ...so the first query after the upstream is back gets its answer, 30 s early.
    upstream.on.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let answer = ask_udp(dns, "example.org.", RecordType::A, None).await;
    assert_eq!(answer.metadata.response_code.low(), 0, "NOERROR");
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(metric(proxy.metrics_addr, &healthy).await, 1.0);
    assert_eq!(metric(proxy.metrics_addr, exhausted).await, 2.0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_is_skipped_for_a_live_one() {
    let (_hole, dead) = black_hole().await;
    let live = DelayedUpstream::start(Duration::ZERO).await;
    let mut config = test_config(&[dead, live.addr]);
    config.forward.timeout = Duration::from_millis(200);
    config.forward.failure_threshold = 2;
    config.forward.backoff_min = Duration::from_secs(30);
    let proxy = dnslens::Proxy::start(&config).await.unwrap();
    let dns = proxy.dns_addrs[0];
    for _ in 0..6 {
        let answer = ask_udp(dns, "example.org.", RecordType::A, None).await;
        assert_eq!(
            answer.metadata.response_code.low(),
            0,
            "answered by the live upstream"
        );
    }
    // Once the dead one is aside, answers come without waiting for its timeout.
    let started = Instant::now();
    for _ in 0..4 {
        ask_udp(dns, "example.org.", RecordType::A, None).await;
    }
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(http_get(proxy.metrics_addr, "/readyz").await.0, 200);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_put_aside_is_probed_and_comes_back() {
    let flaky = DelayedUpstream::start(Duration::ZERO).await;
    flaky.on.store(false, Ordering::Relaxed);
    let mut config = test_config(&[flaky.addr]);
    config.forward.timeout = Duration::from_millis(100);
    config.forward.attempts = 1;
    config.forward.failure_threshold = 1;
    config.forward.backoff_min = Duration::from_millis(300);
    let proxy = dnslens::Proxy::start(&config).await.unwrap();
    let dns = proxy.dns_addrs[0];
    let healthy = format!("dnslens_upstream_healthy{{upstream=\"{}\"}}", flaky.addr);

    assert_eq!(
        ask_udp(dns, "example.org.", RecordType::A, None)
            .await
            .metadata
            .response_code
            .low(),
        2
    );
    assert_eq!(metric(proxy.metrics_addr, &healthy).await, 0.0);
    flaky.on.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        ask_udp(dns, "example.org.", RecordType::A, None)
            .await
            .metadata
            .response_code
            .low(),
        0
    );
    assert_eq!(metric(proxy.metrics_addr, &healthy).await, 1.0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_and_mismatched_responses_are_dropped_and_counted() {
    // A hostile upstream: for every query it first sends an answer to another question, an
    // answer with another ID, and an answer from another port, then the real answer.
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = socket.local_addr().unwrap();
    let impostor = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let query = &buf[..len];
            let Some(real) = empty_answer(query) else {
                continue;
            };
            let mut other_question = Message::from_vec(&real).unwrap();
            other_question.queries[0].set_query_type(RecordType::MX);
            let _ = socket
                .send_to(&other_question.to_vec().unwrap(), from)
                .await;
            let mut other_id = real.clone();
            other_id[0] ^= 0xff;
            let _ = socket.send_to(&other_id, from).await;
            let _ = impostor.send_to(&real, from).await;
            let _ = socket.send_to(&[0xde, 0xad], from).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = socket.send_to(&real, from).await;
        }
    });
    let proxy = dnslens::Proxy::start(&test_config(&[addr])).await.unwrap();
    let answer = ask_udp(proxy.dns_addrs[0], "example.org.", RecordType::A, None).await;
    assert_eq!(answer.metadata.response_code.low(), 0);
    assert_eq!(answer.queries[0].query_type(), RecordType::A);
    // Counted against the upstream they came from; the impostor's port is "other".
    for (source, reason) in [
        (addr.to_string(), "question_mismatch"),
        (addr.to_string(), "unknown_id"),
        ("other".to_string(), "wrong_source"),
        (addr.to_string(), "malformed"),
    ] {
        let series =
            format!("dnslens_responses_dropped_total{{upstream=\"{source}\",reason=\"{reason}\"}}");
        assert_eq!(metric(proxy.metrics_addr, &series).await, 1.0, "{reason}");
    }
    let elsewhere =
        format!("dnslens_responses_dropped_total{{upstream=\"{addr}\",reason=\"wrong_source\"}}");
    assert_eq!(metric(proxy.metrics_addr, &elsewhere).await, 0.0);
    proxy.shutdown().await;
}

/// A send the kernel refuses (here a firewall's EPERM, in the test's own network namespace)
/// is dnslens's side, not the upstream's: the query goes to the other upstream, the refused
/// one is counted as `local_error` and never put aside.
#[test]
fn a_local_send_error_does_not_put_the_upstream_aside() {
    let dir = TempDir::new("localerr");
    let d = &dir.0;
    knot_config(d, 5300);
    let script = format!(
        r#"set -eu
cd "{d}"
ip link set lo up
iptables -A OUTPUT -o lo -p udp --dport 5301 -j DROP
knotd -c knot.conf >knot.log 2>&1 & knot=$!
"{dnslens}" serve --listen 127.0.0.1:53 --upstream 127.0.0.1:5301 --upstream 127.0.0.1:5300 \
  --attempts 2 --upstream-timeout 2s --metrics-listen 127.0.0.1:9253 2>dnslens.log & proxy=$!
for i in $(seq 100); do
  dig @127.0.0.1 +time=1 +tries=1 +short example.org A 2>/dev/null | grep -q 203.0.113.30 && break
  sleep 0.05
done
for i in $(seq 10); do
  dig @127.0.0.1 +time=3 +tries=1 +short web.default.svc.cluster.local A >>answers.txt
done
exec 3<>/dev/tcp/127.0.0.1/9253
printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
cat <&3 >metrics.txt
kill $proxy $knot
wait $proxy $knot 2>/dev/null || true
"#,
        d = d.display(),
        dnslens = env!("CARGO_BIN_EXE_dnslens"),
    );
    let status = run_in_new_namespace(&script);
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
    assert!(status.success(), "script failed: {}", read("dnslens.log"));
    let answers = read("answers.txt");
    assert_eq!(
        answers.lines().filter(|l| *l == "10.96.12.34").count(),
        10,
        "every query answered:\n{answers}\n{}",
        read("dnslens.log")
    );
    let metrics = read("metrics.txt");
    let blocked = "upstream=\"127.0.0.1:5301\"";
    let local = series_value(
        &metrics,
        &format!("dnslens_upstream_requests_total{{{blocked},transport=\"udp\",outcome=\"local_error\"}}"),
    );
    assert!(local >= 3.0, "refused sends counted: {local}");
    for outcome in ["error", "timeout"] {
        let series = format!(
            "dnslens_upstream_requests_total{{{blocked},transport=\"udp\",outcome=\"{outcome}\"}}"
        );
        assert_eq!(series_value(&metrics, &series), 0.0, "{series}");
    }
    assert_eq!(
        series_value(&metrics, &format!("dnslens_upstream_healthy{{{blocked}}}")),
        1.0,
        "the upstream is still in service"
    );
    assert_eq!(
        series_value(
            &metrics,
            "dnslens_forward_failures_total{reason=\"exhausted\"}"
        ),
        0.0
    );
}
