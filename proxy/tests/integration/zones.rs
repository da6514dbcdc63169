//! Per-zone forwarding against two real upstreams, as NodeLocal DNSCache lays it out: the
//! cluster domain and the reverse zones to the "cluster DNS" (one Knot) over TCP, everything
//! else to the "node's resolver" (another Knot). Both serve `cluster.local` with different
//! addresses, so a name sent to the wrong one gets the wrong answer.

use hickory_proto::rr::{RData, RecordType};

use crate::harness::*;

const CLUSTER_ZONE: &str = "$ORIGIN cluster.local.\n$TTL 30\n\
@ IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 30\n\
@ IN NS ns.dns.cluster.local.\n\
ns.dns IN A 10.96.0.10\n\
kubernetes.default.svc IN A 10.96.0.1\n";
const REVERSE_ZONE: &str = "$ORIGIN 10.in-addr.arpa.\n$TTL 30\n\
@ IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 30\n\
@ IN NS ns.dns.cluster.local.\n\
1.0.96 IN PTR kubernetes.default.svc.cluster.local.\n";
/// The node's resolver: a different `cluster.local` (what a misrouted name would get).
const WRONG_CLUSTER_ZONE: &str = "$ORIGIN cluster.local.\n$TTL 30\n\
@ IN SOA ns.example.org. hostmaster.example.org. 1 7200 1800 86400 30\n\
@ IN NS ns.example.org.\n\
kubernetes.default.svc IN A 192.0.2.99\n";
const EXAMPLE_ZONE: &str = "$ORIGIN example.org.\n$TTL 30\n\
@ IN SOA ns.example.org. hostmaster.example.org. 1 7200 1800 86400 30\n\
@ IN NS ns.example.org.\n\
ns IN A 203.0.113.53\n\
www IN A 203.0.113.80\n";

fn addresses(answer: &hickory_proto::op::Message) -> Vec<String> {
    answer
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.to_string(),
            RData::PTR(p) => p.to_string(),
            other => format!("{other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_names_go_to_the_cluster_dns_over_tcp_and_the_rest_to_the_node_resolver() {
    let (cluster_dns, _) = Knot::start_serving(
        false,
        &[
            ("cluster.local.", CLUSTER_ZONE),
            ("10.in-addr.arpa.", REVERSE_ZONE),
        ],
        "kubernetes.default.svc.cluster.local.",
    )
    .await;
    let (node_resolver, _) = Knot::start_serving(
        false,
        &[
            ("cluster.local.", WRONG_CLUSTER_ZONE),
            ("example.org.", EXAMPLE_ZONE),
        ],
        "www.example.org.",
    )
    .await;
    let mut config = test_config(&[node_resolver.addr]);
    config.forward.zones = dnslens::config::node_local_zones(
        "cluster.local",
        dnslens::config::UpstreamAddr(cluster_dns.addr),
    );
    config.validate().unwrap();
    let proxy = dnslens::Proxy::start(&config).await.unwrap();
    let dns = proxy.dns_addrs[0];

    let cases = [
        (
            "kubernetes.default.svc.cluster.local.",
            RecordType::A,
            "10.96.0.1",
        ),
        (
            "KUBERNETES.default.svc.Cluster.Local.",
            RecordType::A,
            "10.96.0.1",
        ),
        (
            "1.0.96.10.in-addr.arpa.",
            RecordType::PTR,
            "kubernetes.default.svc.cluster.local.",
        ),
        ("www.example.org.", RecordType::A, "203.0.113.80"),
    ];
    for (name, qtype, want) in cases {
        let answer = ask_udp(dns, name, qtype, None).await;
        assert_eq!(addresses(&answer), [want], "{name} {qtype}");
    }
    // Over TCP from the client too: same routing.
    let answer = ask_tcp(dns, "kubernetes.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(addresses(&answer), ["10.96.0.1"]);

    let (_, metrics) = http_get(proxy.metrics_addr, "/metrics").await;
    let cluster = cluster_dns.addr.to_string();
    let node = node_resolver.addr.to_string();
    for (series, want) in [
        (
            format!("dnslens_upstream_requests_total{{upstream=\"{cluster}\",transport=\"tcp\",outcome=\"answer\"}}"),
            4.0,
        ),
        (
            format!("dnslens_upstream_requests_total{{upstream=\"{node}\",transport=\"udp\",outcome=\"answer\"}}"),
            1.0,
        ),
        ("dnslens_forward_zone_queries_total{zone=\"cluster.local\"}".into(), 3.0),
        ("dnslens_forward_zone_queries_total{zone=\"in-addr.arpa\"}".into(), 1.0),
        ("dnslens_forward_zone_queries_total{zone=\"ip6.arpa\"}".into(), 0.0),
        ("dnslens_forward_zone_queries_total{zone=\".\"}".into(), 1.0),
    ] {
        assert_eq!(series_in(&metrics, &series), Some(want), "{series}");
    }
    // The cluster DNS never saw UDP (force_tcp), the node's resolver never saw TCP.
    for series in [
        format!("dnslens_upstream_requests_total{{upstream=\"{cluster}\",transport=\"udp\",outcome=\"answer\"}}"),
        format!("dnslens_upstream_requests_total{{upstream=\"{node}\",transport=\"tcp\",outcome=\"answer\"}}"),
    ] {
        assert!(
            series_in(&metrics, &series).unwrap_or(0.0) == 0.0,
            "{series}"
        );
    }
    proxy.shutdown().await;
}
