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
