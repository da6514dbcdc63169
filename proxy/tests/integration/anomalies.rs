//! Anomaly counters on /metrics from real traffic through dnslens: the musl trap (empty
//! NOERROR on a search expansion), a client retry with its gap, and a parallel A/AAAA pair
//! whose AAAA never arrived and then came alone on the same socket (the conntrack race as
//! a node-local proxy sees it).

use std::time::Duration;

use dnslens::demo::clients::{getaddrinfo, Libc};
use dnslens::demo::{NDOTS, SEARCH};
use hickory_proto::rr::RecordType;
use tokio::net::UdpSocket;

use crate::harness::*;

async fn world() -> World {
    World::start_with(|c| {
        c.search.list = SEARCH.iter().map(|s| s.to_string()).collect();
        c.search.ndots = Some(NDOTS as u32);
        c.lookup.window = Duration::from_millis(400);
    })
    .await
}

/// Sends `packet` from `socket` to `server` and waits for one answer.
async fn exchange_on(socket: &UdpSocket, server: std::net::SocketAddr, packet: &[u8]) -> Vec<u8> {
    socket.send_to(packet, server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
        .await
        .expect("answer in time")
        .unwrap();
    buf[..len].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_musl_trap_is_counted_as_empty_noerror_on_a_search_expansion() {
    let world = world().await;
    let result = getaddrinfo(world.dns(), "alauda.cn", &SEARCH, NDOTS, Libc::Musl).await;
    assert_eq!(result, Err("Name does not resolve"));
    let m = world.proxy.metrics_addr;
    // Knot-like well-formed NODATA: the SOA is there; the name was a search expansion.
    for qtype in ["A", "AAAA"] {
        let series = format!("dnslens_empty_noerror_total{{qtype=\"{qtype}\",search_expansion=\"true\",soa=\"true\"}}");
        assert_eq!(metric_at_least(m, &series, 1.0).await, 1.0, "{series}");
    }
    assert_eq!(
        metric(
            m,
            "dnslens_search_expansion_queries_total{outcome=\"nodata\"}"
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(m, "dnslens_lookups_total{outcome=\"nodata\"}").await,
        1.0
    );
    // What the client's getaddrinfo waited on DNS: one lookup, its walk's two queries
    // answered at once by the embedded upstream.
    assert_eq!(
        metric(
            m,
            "dnslens_lookup_duration_seconds_count{outcome=\"nodata\"}"
        )
        .await,
        1.0
    );
    let waited = metric(m, "dnslens_lookup_duration_seconds_sum{outcome=\"nodata\"}").await;
    assert!(waited > 0.0 && waited < 0.5, "{waited}");
    assert_eq!(
        metric(
            m,
            "dnslens_lookup_duration_seconds_bucket{le=\"10.0\",outcome=\"nodata\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            m,
            "dnslens_lookup_duration_seconds_count{outcome=\"answered\"}"
        )
        .await,
        0.0,
        "every outcome's series exists from the start"
    );
    assert_eq!(
        metric(m, "dnslens_parallel_queries_total").await,
        1.0,
        "musl sends A and AAAA together"
    );

    // The journal names it, as JSON and through `dnslens anomalies`.
    let (status, body) = http_get(m, "/debug/anomalies?since=1m").await;
    assert_eq!(status, 200);
    let entries: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(entries.len(), 1, "{body}");
    assert_eq!(entries[0]["base"], "alauda.cn");
    assert_eq!(
        entries[0]["kinds"],
        serde_json::json!(["empty_noerror_search"])
    );
    assert_eq!(entries[0]["queries"].as_array().unwrap().len(), 2);
    assert_eq!(
        entries[0]["queries"][0]["name"],
        "alauda.cn.default.svc.cluster.local"
    );
    assert_eq!(
        http_get(m, "/debug/anomalies?kind=parallel_race").await,
        (200, "[]".to_string())
    );
    assert_eq!(http_get(m, "/debug/anomalies?kind=bogus").await.0, 400);
    assert_eq!(http_get(m, "/debug/anomalies?since=yesterday").await.0, 400);
    // Explicit windows: one around the lookup has it, one that ends before it has nothing.
    let at = entries[0]["time"].as_f64().unwrap();
    let around = format!("/debug/anomalies?from={}&to={}", at - 5.0, at + 5.0);
    let (status, body) = http_get(m, &around).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&body)
            .unwrap()
            .len(),
        1
    );
    let before = format!("/debug/anomalies?from=2026-01-01T00:00:00Z&to={}", at - 1.0);
    assert_eq!(http_get(m, &before).await, (200, "[]".to_string()));
    assert_eq!(http_get(m, "/debug/anomalies?from=noon").await.0, 400);
    assert_eq!(
        http_get(m, &format!("/debug/anomalies?from={at}&to={}", at - 1.0))
            .await
            .0,
        400,
        "to before from"
    );
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_dnslens"))
            .arg("anomalies")
            .args(["--addr", &m.to_string()])
            .args(args)
            .output()
            .unwrap()
    };
    let out = cli(&["--since", "5m"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("alauda.cn.default.svc.cluster.local")
            && text.contains("empty_noerror_search: empty NOERROR on a search expansion"),
        "{text}"
    );
    assert_eq!(cli(&["--kind", "bogus"]).status.code(), Some(2));
    let closed = std::process::Command::new(env!("CARGO_BIN_EXE_dnslens"))
        .args(["anomalies", "--addr", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert_eq!(closed.status.code(), Some(1));

    // glibc walks on; its lookup is answered, and the walk is counted as search noise.
    getaddrinfo(world.dns(), "alauda.cn", &SEARCH, NDOTS, Libc::Glibc)
        .await
        .unwrap();
    metric_at_least(m, "dnslens_lookups_total{outcome=\"answered\"}", 1.0).await;
    assert_eq!(
        metric(
            m,
            "dnslens_search_expansion_queries_total{outcome=\"nxdomain\"}"
        )
        .await,
        4.0
    );
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_question_is_a_retry_with_its_gap() {
    let world = world().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let query = query_bytes("github.com.", RecordType::A, 0x5151, None);
    exchange_on(&socket, world.dns(), &query).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    exchange_on(&socket, world.dns(), &query).await;
    let m = world.proxy.metrics_addr;
    assert_eq!(
        metric_at_least(m, "dnslens_client_retries_total{qtype=\"A\"}", 1.0).await,
        1.0
    );
    assert_eq!(
        metric(m, "dnslens_client_retry_gap_seconds_bucket{le=\"0.9\"}").await,
        0.0
    );
    assert_eq!(
        metric(m, "dnslens_client_retry_gap_seconds_bucket{le=\"1.1\"}").await,
        1.0
    );
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aaaa_arriving_alone_after_its_a_is_a_suspected_race() {
    let world = world().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // The resolver sent A and AAAA together; only the A reached dnslens.
    exchange_on(
        &socket,
        world.dns(),
        &query_bytes("example.org.", RecordType::A, 1, None),
    )
    .await;
    // A resolver timeout later the AAAA comes again, alone, on the same socket.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    exchange_on(
        &socket,
        world.dns(),
        &query_bytes("example.org.", RecordType::AAAA, 2, None),
    )
    .await;
    let m = world.proxy.metrics_addr;
    assert_eq!(
        metric_at_least(m, "dnslens_parallel_query_race_suspected_total", 1.0).await,
        1.0
    );
    // A single-type client that never sends the twin is not flagged.
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    exchange_on(
        &other,
        world.dns(),
        &query_bytes("github.com.", RecordType::A, 3, None),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        metric(m, "dnslens_parallel_query_race_suspected_total").await,
        1.0
    );
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withheld_aaaa_answer_then_the_clients_resend_is_a_suspected_race() {
    // An upstream that answers everything except the first AAAA it sees.
    let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        let mut withheld = false;
        let mut buf = vec![0u8; 4096];
        while let Ok((len, from)) = upstream.recv_from(&mut buf).await {
            let Ok(query) = hickory_proto::op::Message::from_vec(&buf[..len]) else {
                continue;
            };
            if query.queries[0].query_type() == RecordType::AAAA && !withheld {
                withheld = true;
                continue;
            }
            let mut answer =
                hickory_proto::op::Message::response(query.metadata.id, query.metadata.op_code);
            answer.add_query(query.queries[0].clone());
            let _ = upstream.send_to(&answer.to_vec().unwrap(), from).await;
        }
    });
    let mut config = test_config(&[upstream_addr]);
    config.forward.timeout = Duration::from_millis(200);
    config.forward.attempts = 1;
    config.lookup.window = Duration::from_millis(400);
    let proxy = dnslens::Proxy::start(&config).await.unwrap();
    let dns = proxy.dns_addrs[0];

    // A and AAAA together from one socket, as glibc and musl send them.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&query_bytes("example.org.", RecordType::A, 1, None), dns)
        .await
        .unwrap();
    socket
        .send_to(&query_bytes("example.org.", RecordType::AAAA, 2, None), dns)
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
    }
    // The resolver sends the AAAA again after its timeout.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    exchange_on(
        &socket,
        dns,
        &query_bytes("example.org.", RecordType::AAAA, 2, None),
    )
    .await;
    let m = proxy.metrics_addr;
    assert_eq!(
        metric_at_least(m, "dnslens_parallel_query_race_suspected_total", 1.0).await,
        1.0
    );
    assert_eq!(
        metric(m, "dnslens_client_retries_total{qtype=\"AAAA\"}").await,
        1.0
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answering_nothing_without_soa_is_flagged() {
    // The test upstream answers NOERROR with no records and no SOA: a broken filter.
    let upstream = crate::harness::DelayedUpstream::start(Duration::ZERO).await;
    let proxy = dnslens::Proxy::start(&test_config(&[upstream.addr]))
        .await
        .unwrap();
    ask_udp(proxy.dns_addrs[0], "github.com.", RecordType::A, None).await;
    let m = proxy.metrics_addr;
    let series =
        "dnslens_empty_noerror_total{qtype=\"A\",search_expansion=\"false\",soa=\"false\"}";
    assert_eq!(metric_at_least(m, series, 1.0).await, 1.0);
    assert_eq!(
        metric_at_least(
            m,
            "dnslens_anomalies_total{kind=\"empty_noerror_no_soa\"}",
            1.0
        )
        .await,
        1.0
    );
    proxy.shutdown().await;
}
