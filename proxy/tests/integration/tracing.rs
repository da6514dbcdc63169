//! Traces through a real OTLP receiver (gRPC and HTTP/protobuf): one trace per lookup, a
//! `dns.query` per search attempt, a `dns.upstream` per try; sampling keeps failures; a
//! collector that is down costs spans, never DNS answers.

use std::time::{Duration, Instant};

use dnslens::config::OtlpProtocol;
use dnslens::demo::clients::{getaddrinfo, Libc};
use dnslens::demo::{NDOTS, SEARCH};
use hickory_proto::rr::RecordType;

use crate::harness::*;
use crate::otlp_receiver::{ReceivedSpan, Receiver};

fn traced(
    config: &mut dnslens::config::Config,
    endpoint: String,
    protocol: OtlpProtocol,
    ratio: f64,
) {
    config.tracing.endpoint = Some(endpoint);
    config.tracing.protocol = Some(protocol);
    config.tracing.sample_ratio = Some(ratio);
    config.tracing.export_timeout = Duration::from_millis(500);
    config.search.list = SEARCH.iter().map(|s| s.to_string()).collect();
    config.search.ndots = Some(NDOTS as u32);
    config.lookup.window = Duration::from_millis(500);
}

/// The root span of the lookup of `base`, and its children in start order.
pub fn lookup_tree(
    spans: &[ReceivedSpan],
    base: &str,
) -> Option<(ReceivedSpan, Vec<ReceivedSpan>, Vec<ReceivedSpan>)> {
    let root = spans
        .iter()
        .find(|s| s.name == "dns.lookup" && s.attr("dnslens.lookup.name") == base)?
        .clone();
    let mut queries: Vec<ReceivedSpan> = spans
        .iter()
        .filter(|s| s.name == "dns.query" && s.parent_span_id == root.span_id)
        .cloned()
        .collect();
    queries.sort_by_key(|s| s.start_unix_nanos);
    let upstream: Vec<ReceivedSpan> = spans
        .iter()
        .filter(|s| {
            s.name == "dns.upstream" && queries.iter().any(|q| q.span_id == s.parent_span_id)
        })
        .cloned()
        .collect();
    Some((root, queries, upstream))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_glibc_search_walk_is_one_trace_over_grpc() {
    let receiver = Receiver::start().await;
    let endpoint = format!("http://{}", receiver.grpc);
    let world = World::start_with(|c| traced(c, endpoint, OtlpProtocol::Grpc, 1.0)).await;
    // Asked in mixed case: spans show the name as asked, correlation goes by lower case.
    let addrs = getaddrinfo(world.dns(), "Alauda.CN", &SEARCH, NDOTS, Libc::Glibc)
        .await
        .unwrap();
    assert_eq!(addrs, ["203.0.113.10".parse::<std::net::IpAddr>().unwrap()]);

    let spans = receiver
        .wait_for(Duration::from_secs(5), |s| {
            lookup_tree(s, "alauda.cn").is_some_and(|(_, q, u)| q.len() == 8 && u.len() == 8)
        })
        .await;
    let (root, queries, upstream) = lookup_tree(&spans, "alauda.cn").unwrap();
    assert_eq!(root.attr("dnslens.lookup.outcome"), "answered");
    assert_eq!(root.attr("dnslens.lookup.answered_by"), "absolute");
    assert_eq!(root.attr("dnslens.lookup.attempts"), "8");
    assert_eq!(root.attr("dns.question.name"), "Alauda.CN");
    assert_eq!(
        root.attr("error.type"),
        "",
        "an answered lookup has no error.type"
    );
    assert_eq!(
        root.resource.get("service.name").map(String::as_str),
        Some("dnslens")
    );
    let walk: Vec<(String, String, String)> = queries
        .iter()
        .map(|q| {
            (
                q.attr("dns.question.name").to_string(),
                q.attr("dnslens.search.index").to_string(),
                q.attr("dnslens.response_code").to_string(),
            )
        })
        .collect();
    let expect = |name: &str, index: &str, rcode: &str| {
        (name.to_string(), index.to_string(), rcode.to_string())
    };
    // A and AAAA of one name may arrive in either order; compare each pair as a set.
    let mut pairs: Vec<Vec<(String, String, String)>> =
        walk.chunks(2).map(|c| c.to_vec()).collect();
    for p in &mut pairs {
        p.sort();
    }
    assert_eq!(
        pairs,
        [
            vec![expect("Alauda.CN.default.svc.cluster.local", "0", "NOERROR"); 2],
            vec![expect("Alauda.CN.svc.cluster.local", "1", "NXDOMAIN"); 2],
            vec![expect("Alauda.CN.cluster.local", "2", "NXDOMAIN"); 2],
            vec![expect("Alauda.CN", "-1", "NOERROR"); 2],
        ]
    );
    let qtypes: Vec<&str> = queries
        .iter()
        .map(|q| q.attr("dnslens.question.type"))
        .collect();
    assert_eq!(qtypes.iter().filter(|t| **t == "A").count(), 4);
    assert!(queries
        .iter()
        .all(|q| q.start_unix_nanos >= root.start_unix_nanos
            && q.end_unix_nanos <= root.end_unix_nanos));
    for u in &upstream {
        assert_eq!(u.attr("server.address"), "127.0.0.1");
        assert_eq!(
            u.attr("server.port"),
            world.upstream.addr.port().to_string()
        );
        assert_eq!(u.attr("dnslens.upstream.outcome"), "answer");
        assert_eq!(u.attr("network.transport"), "udp");
        assert_eq!(u.attr("dnslens.upstream.try"), "1");
    }
    metric_at_least(
        world.proxy.metrics_addr,
        "dnslens_spans_exported_total",
        17.0,
    )
    .await;
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_musl_walk_stopped_by_empty_noerror_over_http_protobuf() {
    let receiver = Receiver::start().await;
    let endpoint = format!("http://{}", receiver.http);
    let world = World::start_with(|c| traced(c, endpoint, OtlpProtocol::HttpProtobuf, 1.0)).await;
    let result = getaddrinfo(world.dns(), "alauda.cn", &SEARCH, NDOTS, Libc::Musl).await;
    assert_eq!(result, Err("Name does not resolve"));
    let spans = receiver
        .wait_for(Duration::from_secs(5), |s| {
            lookup_tree(s, "alauda.cn").is_some_and(|(_, q, _)| q.len() == 2)
        })
        .await;
    let (root, queries, _) = lookup_tree(&spans, "alauda.cn").unwrap();
    assert_eq!(root.attr("dnslens.lookup.outcome"), "nodata");
    for q in &queries {
        assert_eq!(
            q.attr("dns.question.name"),
            "alauda.cn.default.svc.cluster.local"
        );
        assert_eq!(q.attr("dnslens.response_code"), "NOERROR");
        assert_eq!(q.attr("dnslens.answer.count"), "0");
    }
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_lookups_are_sampled_but_failures_are_always_exported() {
    let receiver = Receiver::start().await;
    let endpoint = format!("http://{}", receiver.grpc);
    let world = World::start_with(|c| traced(c, endpoint.clone(), OtlpProtocol::Grpc, 0.0)).await;
    for _ in 0..5 {
        getaddrinfo(world.dns(), "web", &SEARCH, NDOTS, Libc::Glibc)
            .await
            .unwrap();
    }
    // A proxy whose only upstream never answers: every lookup fails, and each is exported.
    let hole = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut config = test_config(&[hole.local_addr().unwrap()]);
    traced(&mut config, endpoint, OtlpProtocol::Grpc, 0.0);
    config.forward.timeout = Duration::from_millis(100);
    config.forward.attempts = 1;
    let failing = dnslens::Proxy::start(&config).await.unwrap();
    let answer = ask_udp(failing.dns_addrs[0], "github.com.", RecordType::A, None).await;
    assert_eq!(answer.metadata.response_code.low(), 2);

    let spans = receiver
        .wait_for(Duration::from_secs(5), |s| {
            lookup_tree(s, "github.com").is_some()
        })
        .await;
    let (root, queries, upstream) = lookup_tree(&spans, "github.com").unwrap();
    assert_eq!(root.attr("dnslens.lookup.outcome"), "timeout");
    assert_eq!(queries.len(), 1);
    assert_eq!(upstream[0].attr("dnslens.upstream.outcome"), "timeout");
    // What getaddrinfo tells the client (EAI_AGAIN), and the try's own error.
    assert_eq!(root.attr("error.type"), "try_again");
    assert_eq!(upstream[0].attr("error.type"), "timeout");
    // Let the sampled-out lookups end, then check none of them was exported.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(lookup_tree(&receiver.spans(), "web").is_none());
    assert!(
        metric(
            world.proxy.metrics_addr,
            "dnslens_lookups_sampled_out_total"
        )
        .await
            >= 1.0
    );
    failing.shutdown().await;
    world.stop().await;
}

/// At shutdown the exporter's last batch goes out before the proxy stops: a lookup that
/// ended just before SIGTERM reaches the collector (the exporter sends once a second; the
/// lookups of that second used to die with the process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_lookups_are_exported_at_shutdown() {
    let receiver = Receiver::start().await;
    let endpoint = format!("http://{}", receiver.grpc);
    let world = World::start_with(|c| traced(c, endpoint, OtlpProtocol::Grpc, 1.0)).await;
    getaddrinfo(world.dns(), "alauda.cn", &SEARCH, NDOTS, Libc::Glibc)
        .await
        .unwrap();
    // The lookup has ended (its window) and was judged; then stop at once.
    let admin = world.proxy.metrics_addr;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, metrics) = http_get(admin, "/metrics").await;
        if metrics.contains("dnslens_lookups_open 0")
            && metrics.contains("dnslens_lookups_total{outcome=\"answered\"} 1")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lookup never ended:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    world.stop().await;
    let spans = receiver.spans();
    assert!(
        lookup_tree(&spans, "alauda.cn").is_some_and(|(_, q, _)| q.len() == 8),
        "the last lookup's trace was not exported before the proxy stopped: {} spans",
        spans.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_never_slows_dns() {
    let closed = free_port();
    let world = World::start_with(|c| {
        traced(
            c,
            format!("http://127.0.0.1:{closed}"),
            OtlpProtocol::Grpc,
            1.0,
        );
        c.tracing.queue = 20;
        c.lookup.window = Duration::from_millis(100);
    })
    .await;
    let started = Instant::now();
    for i in 0..200 {
        let answer = ask_udp(
            world.dns(),
            &format!("n{i}.example.org."),
            RecordType::A,
            None,
        )
        .await;
        assert_eq!(answer.metadata.response_code.low(), 3);
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "200 queries took {took:?}");
    let m = world.proxy.metrics_addr;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let failed = metric(m, "dnslens_spans_dropped_total{reason=\"export_failed\"}").await;
        let full = metric(m, "dnslens_spans_dropped_total{reason=\"queue_full\"}").await;
        if failed > 0.0 && full > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "drops not counted: export_failed={failed} queue_full={full}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    world.stop().await;
}

/// A collector behind TLS: a CA made for the test signs a certificate for 127.0.0.1 and
/// localhost; connections are decrypted and relayed to `backend` (the plain receiver).
/// ALPN says `h2` for gRPC. Returns the front's address and the CA as PEM.
async fn tls_front(backend: std::net::SocketAddr, alpn: &[u8]) -> (std::net::SocketAddr, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![alpn.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    (addr, ca_cert.pem())
}

/// OTLP over TLS, both protocols: an `https://` endpoint whose certificate a private CA
/// signed receives the traces when `tracing.ca_file` names that CA, and nothing (the
/// spans are counted as failed exports; DNS is answered as ever) when it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_collector_behind_a_private_ca_receives_traces_over_both_protocols() {
    let dir = TempDir::new("otlp-tls");
    for (protocol, alpn) in [
        (OtlpProtocol::Grpc, &b"h2"[..]),
        (OtlpProtocol::HttpProtobuf, &b"http/1.1"[..]),
    ] {
        for trusted in [true, false] {
            let receiver = Receiver::start().await;
            let backend = match protocol {
                OtlpProtocol::Grpc => receiver.grpc,
                OtlpProtocol::HttpProtobuf => receiver.http,
            };
            let (front, ca_pem) = tls_front(backend, alpn).await;
            let ca_file = dir.0.join("ca.pem");
            std::fs::write(&ca_file, &ca_pem).unwrap();
            let world = World::start_with(|c| {
                traced(c, format!("https://{front}"), protocol, 1.0);
                c.tracing.ca_file = trusted.then(|| ca_file.clone());
            })
            .await;
            let answer = ask_udp(world.dns(), "alauda.cn.", RecordType::A, None).await;
            assert_eq!(answer.answers.len(), 1, "{protocol:?}: DNS answered");
            let m = world.proxy.metrics_addr;
            if trusted {
                receiver
                    .wait_for(Duration::from_secs(10), |s| {
                        s.iter().any(|s| {
                            s.name == "dns.lookup" && s.attr("dns.question.name") == "alauda.cn"
                        })
                    })
                    .await;
                metric_at_least(m, "dnslens_spans_exported_total", 3.0).await;
            } else {
                metric_at_least(
                    m,
                    "dnslens_spans_dropped_total{reason=\"export_failed\"}",
                    3.0,
                )
                .await;
                assert!(
                    receiver.spans().is_empty(),
                    "{protocol:?}: an untrusted collector got spans"
                );
            }
            world.stop().await;
        }
    }
}
