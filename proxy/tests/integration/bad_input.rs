//! Malformed, oversized and hostile client input: a clear answer or a silent drop, a
//! counter, and the proxy keeps serving.

use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::harness::*;

const WAIT: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_udp_queries_are_answered_or_dropped_and_counted() {
    let world = World::start().await;
    let dns = world.dns();
    let good = query_bytes("example.org.", RecordType::A, 0x1111, None);

    // Runts and stray responses: no answer (answering would make dnslens a reflector).
    assert!(udp_exchange(dns, &[], WAIT).await.is_none());
    assert!(udp_exchange(dns, &good[..5], WAIT).await.is_none());
    let mut response = good.clone();
    response[2] |= 0x80;
    assert!(udp_exchange(dns, &response, WAIT).await.is_none());

    // Zero or two questions, a question cut short, a label running off the end: FORMERR.
    let mut zero = good.clone();
    zero[5] = 0;
    let mut two = good.clone();
    two[5] = 2;
    let cut = good[..good.len() - 3].to_vec();
    let mut bad_label = good.clone();
    bad_label[12] = 60;
    let mut pointer_loop = good[..12].to_vec();
    pointer_loop.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    for (what, packet) in [
        ("zero questions", zero),
        ("two questions", two),
        ("cut", cut),
        ("label", bad_label),
        ("pointer loop", pointer_loop),
    ] {
        let answer = udp_exchange(dns, &packet, WAIT)
            .await
            .unwrap_or_else(|| panic!("{what}: no FORMERR"));
        assert_eq!(&answer[..2], &[0x11, 0x11], "{what}: ID echoed");
        assert_eq!(answer[3] & 0x0f, 1, "{what}: FORMERR");
        assert!(
            answer.len() <= packet.len().max(12),
            "{what}: never amplified"
        );
    }

    // An opcode dnslens does not forward (UPDATE): NOTIMP.
    let mut update = good.clone();
    update[2] = (update[2] & 0x87) | (5 << 3);
    let answer = udp_exchange(dns, &update, WAIT).await.expect("NOTIMP");
    assert_eq!(answer[3] & 0x0f, 4);

    // The largest datagram there is, all noise.
    let noise: Vec<u8> = (0..65_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let _ = udp_exchange(dns, &noise, WAIT).await;

    let counted = |reason: &str| format!("dnslens_requests_dropped_total{{reason=\"{reason}\"}}");
    let m = world.proxy.metrics_addr;
    let mut total = 0.0;
    for (reason, at_least) in [
        ("too_short", 2.0),
        ("not_a_query", 1.0),
        ("question_count", 2.0),
        ("malformed", 3.0),
        ("not_implemented", 1.0),
    ] {
        let n = metric(m, &counted(reason)).await;
        assert!(n >= at_least, "{reason}: {n}");
        total += n;
    }
    assert_eq!(
        total, 10.0,
        "every bad datagram counted once, the noise included"
    );

    // And a normal query is still answered.
    let msg = ask_udp(dns, "example.org.", RecordType::A, None).await;
    assert_eq!(msg.answers.len(), 1);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tcp_streams_are_closed_and_counted() {
    let world = World::start().await;
    let dns = world.dns();

    // A length prefix shorter than a header: the connection is closed.
    let mut s = TcpStream::connect(dns).await.unwrap();
    s.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
    assert!(tcp_recv(&mut s).await.is_none());

    // A 65535-byte length prefix with a few bytes behind it, then EOF: closed, nothing kept.
    let mut s = TcpStream::connect(dns).await.unwrap();
    s.write_all(&[0xff, 0xff, 1, 2, 3]).await.unwrap();
    s.shutdown().await.unwrap();
    assert!(tcp_recv(&mut s).await.is_none());

    // A valid frame holding garbage: FORMERR on the same connection, which stays usable.
    let mut s = TcpStream::connect(dns).await.unwrap();
    let mut garbage = vec![0x22, 0x22, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    garbage.extend_from_slice(&[63, b'x']);
    tcp_send(&mut s, &garbage).await;
    let answer = tcp_recv(&mut s).await.expect("FORMERR");
    assert_eq!(answer[3] & 0x0f, 1);
    tcp_send(&mut s, &query_bytes("github.com.", RecordType::A, 9, None)).await;
    let answer = Message::from_vec(&tcp_recv(&mut s).await.expect("answer")).unwrap();
    assert_eq!(answer.answers.len(), 1);

    // A stream of stray responses: no answers, connection survives until closed.
    let mut response = query_bytes("github.com.", RecordType::A, 10, None);
    response[2] |= 0x80;
    tcp_send(&mut s, &response).await;
    tcp_send(
        &mut s,
        &query_bytes("example.org.", RecordType::A, 11, None),
    )
    .await;
    let answer = Message::from_vec(&tcp_recv(&mut s).await.expect("answer")).unwrap();
    assert_eq!(answer.metadata.id, 11);

    let m = world.proxy.metrics_addr;
    assert_eq!(
        metric(
            m,
            "dnslens_requests_dropped_total{reason=\"tcp_bad_length\"}"
        )
        .await,
        2.0
    );
    let msg = ask_udp(dns, "example.org.", RecordType::A, None).await;
    assert_eq!(msg.answers.len(), 1);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_beyond_the_cap_are_refused_and_counted() {
    let world = World::start_with(|c| c.listener.tcp_max_connections = 2).await;
    let dns = world.dns();
    let _a = TcpStream::connect(dns).await.unwrap();
    let _b = TcpStream::connect(dns).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = TcpStream::connect(dns).await.unwrap();
    tcp_send(&mut c, &query_bytes("github.com.", RecordType::A, 1, None)).await;
    assert!(
        tcp_recv(&mut c).await.is_none(),
        "third connection closed unanswered"
    );
    let m = world.proxy.metrics_addr;
    assert_eq!(
        metric(
            m,
            "dnslens_requests_dropped_total{reason=\"tcp_connection_limit\"}"
        )
        .await,
        1.0
    );
    drop(_a);
    world.stop().await;
}

/// `listener.rate_limit`: a client over its rate gets REFUSED (or nothing, with `drop`),
/// counted; the first `burst` queries and other clients are served as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_is_refused_or_dropped_and_counted() {
    for (action, expect_answer) in [("refuse", true), ("drop", false)] {
        let world = World::start_with(|c| {
            c.listener.rate_limit.per_client_qps = 1;
            c.listener.rate_limit.burst = 10;
            c.listener.rate_limit.action = if action == "refuse" {
                dnslens::ratelimit::LimitAction::Refuse
            } else {
                dnslens::ratelimit::LimitAction::Drop
            };
        })
        .await;
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // All at once (well within a second: one token a second comes back meanwhile at most).
        for id in 0..30u16 {
            let query = query_bytes("example.org.", RecordType::A, id, None);
            socket.send_to(&query, world.dns()).await.unwrap();
        }
        let (mut noerror, mut refused, mut answered) = (0, 0, std::collections::HashSet::new());
        let mut buf = [0u8; 512];
        while let Ok(Ok((len, _))) =
            tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf)).await
        {
            let answer = Message::from_vec(&buf[..len]).unwrap();
            assert!(answered.insert(answer.metadata.id), "one answer per query");
            match answer.metadata.response_code.low() {
                0 => noerror += 1,
                5 => refused += 1,
                other => panic!("rcode {other}"),
            }
        }
        let silent = 30 - answered.len();
        assert_eq!(noerror, 10, "{action}: the burst");
        if expect_answer {
            assert_eq!((refused, silent), (20, 0), "{action}");
        } else {
            assert_eq!((refused, silent), (0, 20), "{action}");
        }
        let counted = format!("dnslens_rate_limited_total{{action=\"{action}\"}}");
        assert_eq!(metric(world.proxy.metrics_addr, &counted).await, 20.0);
        // Another client (127.0.0.2, inside the loopback ACL) has a bucket of its own.
        let other = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
        let query = query_bytes("example.org.", RecordType::A, 77, None);
        other.send_to(&query, world.dns()).await.unwrap();
        let (len, _) = tokio::time::timeout(Duration::from_secs(2), other.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            Message::from_vec(&buf[..len])
                .unwrap()
                .metadata
                .response_code
                .low(),
            0
        );
        world.stop().await;
    }
}

/// RFC 8482: an ANY query gets one synthesized HINFO record ("RFC8482") and is not
/// forwarded — dnslens is no amplifier — unless `mitigations.minimal_any` is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_queries_get_the_minimal_answer_of_rfc_8482() {
    let world = World::start().await;
    let m = world.proxy.metrics_addr;
    let asked_before = series_sum(
        &http_get(m, "/metrics").await.1,
        "dnslens_upstream_requests_total",
    );
    for edns in [None, Some(1232)] {
        let answer = ask_udp(world.dns(), "example.org.", RecordType::ANY, edns).await;
        assert_eq!(answer.metadata.response_code.low(), 0);
        assert_eq!(answer.queries[0].query_type(), RecordType::ANY);
        assert_eq!(answer.answers.len(), 1);
        assert_eq!(answer.answers[0].record_type(), RecordType::HINFO);
        assert_eq!(
            answer.answers[0].data.to_string(),
            "RFC8482 ",
            "CPU RFC8482, OS empty"
        );
        assert_eq!(answer.answers[0].ttl, 3600);
        assert_eq!(
            answer.edns.is_some(),
            edns.is_some(),
            "OPT as the query had it"
        );
    }
    let (_, metrics) = http_get(m, "/metrics").await;
    assert_eq!(
        series_sum(&metrics, "dnslens_upstream_requests_total"),
        asked_before
    );
    assert_eq!(
        series_in(&metrics, "dnslens_rewrites_total{kind=\"minimal_any\"}"),
        Some(2.0)
    );
    world.stop().await;

    let world = World::start_with(|c| c.mitigations.minimal_any = false).await;
    let answer = ask_udp(world.dns(), "example.org.", RecordType::ANY, None).await;
    assert!(
        answer
            .answers
            .iter()
            .all(|r| r.record_type() != RecordType::HINFO),
        "forwarded: the upstream's own answer"
    );
    world.stop().await;
}
