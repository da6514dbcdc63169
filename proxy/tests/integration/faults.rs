//! The fault table (README "Reliability"): each fault against a running dnslens, what the
//! client sees, and proof that no client got an answer to a question it did not ask —
//! every client here checks the ID and the question of every datagram it receives, and
//! keeps listening after its answer for anything more.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use crate::harness::DelayedUpstream;
use crate::harness::*;

/// Asks `name` from a fresh socket; returns the answer's rcode and how long it took, after
/// checking that the only datagram that came (within `linger` after the answer) is the
/// answer to this very question.
async fn ask_and_watch(dns: SocketAddr, name: &str, id: u16, linger: Duration) -> (u8, Duration) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let query = query_bytes(name, RecordType::A, id, None);
    let started = Instant::now();
    socket.send_to(&query, dns).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    let (len, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    let took = started.elapsed();
    let answer = Message::from_vec(&buf[..len]).expect("a well-formed answer");
    assert_eq!(answer.metadata.id, id);
    assert_eq!(answer.queries.len(), 1);
    assert_eq!(answer.queries[0].name().to_ascii(), name);
    assert_eq!(answer.queries[0].query_type(), RecordType::A);
    let more = tokio::time::timeout(linger, socket.recv_from(&mut buf)).await;
    assert!(more.is_err(), "a second datagram for one question");
    (answer.metadata.response_code.low(), took)
}

/// A TCP listener that accepts every connection and never reads or answers.
async fn black_hole_tcp() -> SocketAddr {
    let hole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = hole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = hole.accept().await {
            held.push(stream);
        }
    });
    addr
}

fn dropped(upstream: SocketAddr, reason: &str) -> String {
    format!("dnslens_responses_dropped_total{{upstream=\"{upstream}\",reason=\"{reason}\"}}")
}

/// An upstream slower than the timeout: the client gets SERVFAIL after `attempts` tries;
/// the answers that come later are dropped and counted `late`, never delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_answers_of_a_slow_upstream_are_dropped_as_late_and_never_delivered() {
    let slow = DelayedUpstream::start(Duration::from_millis(400)).await;
    let mut config = test_config(&[slow.addr]);
    config.forward.timeout = Duration::from_millis(150);
    config.forward.attempts = 2;
    let proxy = dnslens::Proxy::start(&config).await.unwrap();
    let (rcode, took) = ask_and_watch(
        proxy.dns_addrs[0],
        "example.org.",
        0x5101,
        Duration::from_millis(800),
    )
    .await;
    assert_eq!(rcode, 2, "SERVFAIL once both tries timed out");
    assert!(
        took < Duration::from_millis(400),
        "{took:?}: before any late answer"
    );
    let m = proxy.metrics_addr;
    assert_eq!(metric(m, &dropped(slow.addr, "late")).await, 2.0);
    assert_eq!(metric(m, &dropped(slow.addr, "unknown_id")).await, 0.0);
    proxy.shutdown().await;
}

/// Forged answers racing the real one: for every query, 500 answers with random IDs (an
/// off-path attacker guessing) reach dnslens's upstream socket first. None is accepted;
/// each is counted; the real answer gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_answers_is_never_accepted() {
    let _alone = crate::harness::cpu_alone().await;
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = socket.local_addr().unwrap();
    let forged_sent = Arc::new(AtomicUsize::new(0));
    let sent = forged_sent.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let query = buf[..len].to_vec();
            let real_id = u16::from_be_bytes([query[0], query[1]]);
            // A forged answer: the right question, a guessed ID, an address of the attacker's.
            let mut forged = Message::from_vec(&query).unwrap();
            forged.metadata.message_type = hickory_proto::op::MessageType::Response;
            forged.add_answer(hickory_proto::rr::Record::from_rdata(
                forged.queries[0].name().clone(),
                3600,
                hickory_proto::rr::RData::A("6.6.6.6".parse().unwrap()),
            ));
            let mut forged = forged.to_vec().unwrap();
            for _ in 0..500 {
                let guess: u16 = rand::random();
                if guess == real_id {
                    continue;
                }
                forged[..2].copy_from_slice(&guess.to_be_bytes());
                if socket.send_to(&forged, from).await.is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            let mut real = Message::from_vec(&query).unwrap();
            real.metadata.message_type = hickory_proto::op::MessageType::Response;
            real.add_answer(hickory_proto::rr::Record::from_rdata(
                real.queries[0].name().clone(),
                60,
                hickory_proto::rr::RData::A("192.0.2.7".parse().unwrap()),
            ));
            let _ = socket.send_to(&real.to_vec().unwrap(), from).await;
        }
    });
    let mut config = test_config(&[addr]);
    config.cache.enabled = true;
    let proxy = dnslens::Proxy::start(&config).await.unwrap();
    for (i, name) in ["a.example.org.", "b.example.org.", "c.example.org."]
        .iter()
        .enumerate()
    {
        let answer = ask_udp(proxy.dns_addrs[0], name, RecordType::A, None).await;
        assert_eq!(answer.answers.len(), 1, "{name}");
        assert_eq!(
            answer.answers[0].data.to_string(),
            "192.0.2.7",
            "{name} (try {i})"
        );
    }
    // Asked again: the cache holds the real answer, not a forged one.
    let again = ask_udp(proxy.dns_addrs[0], "b.example.org.", RecordType::A, None).await;
    assert_eq!(again.answers[0].data.to_string(), "192.0.2.7");
    // Every forged datagram that was sent is counted (the socket's 4 MiB buffer holds them).
    let sent = forged_sent.load(Ordering::Relaxed) as f64;
    assert!(sent >= 1_400.0, "{sent}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let counted = metric(proxy.metrics_addr, &dropped(addr, "unknown_id")).await;
        if counted == sent {
            break;
        }
        assert!(Instant::now() < deadline, "counted {counted} of {sent}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.shutdown().await;
}

/// A TCP upstream that accepts and never answers, and one that closes in the middle of
/// its answer: the client gets SERVFAIL within the tries' timeouts, each try is counted
/// (`timeout`, `error`), and nothing else reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_upstreams_that_hang_or_close_mid_message_end_in_servfail() {
    let silent_addr = black_hole_tcp().await;
    // Answers with a length prefix of 100 and 10 bytes, then closes.
    let torn = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let torn_addr = torn.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = torn.accept().await {
            tokio::spawn(async move {
                let mut len = [0u8; 2];
                if stream.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if stream.read_exact(&mut query).await.is_err() {
                    return;
                }
                let mut partial = vec![0, 100];
                partial.extend_from_slice(&query[..10.min(query.len())]);
                let _ = stream.write_all(&partial).await;
            });
        }
    });
    for (upstream, outcome) in [(silent_addr, "timeout"), (torn_addr, "error")] {
        let mut config = test_config(&[upstream]);
        config.forward.force_tcp = true;
        config.forward.timeout = Duration::from_millis(300);
        config.forward.attempts = 2;
        let proxy = dnslens::Proxy::start(&config).await.unwrap();
        let (rcode, took) = ask_and_watch(
            proxy.dns_addrs[0],
            "example.org.",
            0x7c01,
            Duration::from_millis(300),
        )
        .await;
        assert_eq!(rcode, 2, "{outcome}: SERVFAIL");
        assert!(took < Duration::from_millis(1_500), "{outcome}: {took:?}");
        let tries = format!(
            "dnslens_upstream_requests_total{{upstream=\"{upstream}\",transport=\"tcp\",outcome=\"{outcome}\"}}"
        );
        assert_eq!(metric(proxy.metrics_addr, &tries).await, 2.0, "{outcome}");
        proxy.shutdown().await;
    }
}

/// An OTLP collector that accepts connections and never answers (a black hole): DNS is
/// answered as fast as without tracing; the spans that cannot go are dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_collector_never_slows_dns() {
    let collector = black_hole_tcp().await;
    let world = World::start_with(|c| {
        c.tracing.endpoint = Some(format!("http://{collector}"));
        c.tracing.sample_ratio = Some(1.0);
        c.tracing.export_timeout = Duration::from_millis(500);
        c.tracing.queue = 64;
        c.lookup.window = Duration::from_millis(50);
    })
    .await;
    let started = Instant::now();
    for i in 0..300u16 {
        let name = format!("n{i}.bulk.example.org.");
        let answer = ask_udp(world.dns(), &name, RecordType::A, None).await;
        assert_eq!(answer.answers.len(), 1, "{name}");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "300 lookups took {took:?}");
    // The queue (64) holds what the black hole does not take; the rest is dropped, counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = http_get(world.proxy.metrics_addr, "/metrics").await;
        let dropped = series_in(
            &metrics,
            "dnslens_spans_dropped_total{reason=\"queue_full\"}",
        )
        .expect("the queue_full series");
        if dropped > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no span counted as dropped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    world.stop().await;
}

/// The lookup tracker's queue full (a burst faster than it drains): DNS is answered, the
/// finished queries it could not take are counted, and none is lost silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_tracker_queue_drops_records_not_answers() {
    let world = World::start_with(|c| {
        c.lookup.queue = 16;
    })
    .await;
    let dns = world.dns();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..400u16 {
        tasks.spawn(async move {
            let name = format!("q{i}.bulk.example.org.");
            let answer = ask_udp(dns, &name, RecordType::A, None).await;
            assert_eq!(answer.answers.len(), 1, "{name}");
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
    let m = world.proxy.metrics_addr;
    let dropped = metric(m, "dnslens_lookup_records_dropped_total").await;
    let answered = metric(
        m,
        "dnslens_requests_total{transport=\"udp\",qtype=\"A\",rcode=\"NOERROR\"}",
    )
    .await;
    assert_eq!(answered, 400.0);
    assert!(dropped > 0.0, "a 16-record queue took a 400-query burst");
    world.stop().await;
}
