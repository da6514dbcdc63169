//! Node-local pod identity against a real kube-apiserver (`control_plane`): pods of this
//! node and another with podIPs on loopback (the clients bind to them), their status set as
//! a kubelet would; each client's retried lookup (an anomaly, so it reaches the journal,
//! the counters and a trace) must name its pod, namespace and workload — the other node's
//! pod is not held; an IP reused by a new pod gets the new identity; with the API server
//! stopped DNS is answered, the watch metric goes down and identities turn stale; started
//! again, the watch resyncs. The cluster domain goes to the real CoreDNS (built from its
//! module, its kubernetes plugin watching the same API server) over TCP, as node-local does.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use dnslens::config::{PodIdentityConfig, UpstreamAddr};
use dnslens::search::Mode;
use dnslens::telemetry::OtlpProtocol;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use serde_json::{json, Value};

use crate::control_plane::ControlPlane;
use crate::harness::*;
use crate::otlp_receiver::Receiver;

/// A UDP socket on the pod's address `client`, as its resolver would have.
async fn pod_socket(client: &str) -> tokio::net::UdpSocket {
    tokio::net::UdpSocket::bind((client.parse::<IpAddr>().unwrap(), 0))
        .await
        .expect("bind the pod's address")
}

/// Sends A question `name` with `id` from `socket`; the answer, which must carry `id`.
async fn ask_on(
    socket: &tokio::net::UdpSocket,
    server: SocketAddr,
    name: &str,
    id: u16,
) -> Message {
    socket
        .send_to(&query_bytes(name, RecordType::A, id, None), server)
        .await
        .unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), socket.recv_from(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    let answer = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(answer.metadata.id, id);
    answer
}

/// Asks `name` from a socket bound to `client`, then asks it again with the same ID from
/// the same socket 300 ms later (a client retry: an anomaly); both must be answered with
/// CoreDNS's answer from the Service in the API server.
async fn retried_question(client: &str, server: SocketAddr, name: &str, id: u16) {
    let socket = pod_socket(client).await;
    for _ in 0..2 {
        let answer = ask_on(&socket, server, name, id).await;
        let addresses: Vec<String> = answer.answers.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(addresses, ["10.96.12.34"], "{name} from {client}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// One A question for `name` from a socket bound to `client`; the answer.
async fn ask_from(client: &str, server: SocketAddr, name: &str) -> Message {
    ask_on(&pod_socket(client).await, server, name, rand::random()).await
}

/// The journal's entries for `base` from `client`, once there are `count` of them.
async fn journal_entries(metrics: SocketAddr, client: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = http_get(metrics, "/debug/anomalies?since=5m").await;
        let entries: Vec<Value> = serde_json::from_str(&body).unwrap();
        let mine: Vec<Value> = entries
            .into_iter()
            .filter(|e| e["client"] == client)
            .collect();
        if mine.len() >= count {
            return mine;
        }
        assert!(Instant::now() < deadline, "journal: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_metric(metrics: SocketAddr, series: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = http_get(metrics, "/metrics").await;
        if series_in(&body, series) == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never {value}: {:?}",
            series_in(&body, series)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_local_lookups_carry_the_identity_of_the_pod_that_asked() {
    let cp = ControlPlane::start();
    cp.namespace("team-a", &[]);
    cp.namespace("team-b", &[]);
    let hash = json!({"pod-template-hash": "7d9c5b"});
    cp.running_pod(
        "team-a",
        "web-7d9c5b-x2x9q",
        "node-1",
        "127.0.0.11",
        Some(("ReplicaSet", "web-7d9c5b")),
        hash.clone(),
    );
    cp.running_pod(
        "team-b",
        "db-0",
        "node-1",
        "127.0.0.12",
        Some(("StatefulSet", "db")),
        json!({}),
    );
    cp.running_pod(
        "team-a",
        "elsewhere",
        "node-2",
        "127.0.0.13",
        None,
        json!({}),
    );

    // The real upstream of the mission: CoreDNS answering for the Services in the API server
    // (`kubernetes`, which the API server makes itself, and `web`).
    cp.service("default", "web", "10.96.12.34");
    let coredns = cp.coredns().await;

    let receiver = Receiver::start().await;
    let endpoint = format!("http://{}", receiver.grpc);
    let kubeconfig = cp.kubeconfig();
    let world = World::start_with(|c| {
        c.mode = Mode::NodeLocal;
        // As NodeLocal DNSCache: the cluster domain to the cluster DNS over TCP.
        c.forward.cluster_dns = Some(UpstreamAddr(coredns));
        c.forward.zones = dnslens::config::node_local_zones("cluster.local", UpstreamAddr(coredns));
        c.listener.allow = vec!["127.0.0.0/8".parse().unwrap()];
        c.lookup.window = Duration::from_millis(500);
        c.tracing.endpoint = Some(endpoint);
        c.tracing.protocol = Some(OtlpProtocol::Grpc);
        c.tracing.sample_ratio = Some(1.0);
        c.tracing.export_timeout = Duration::from_millis(500);
        c.mitigations.autopath = true;
        c.pod_identity = PodIdentityConfig {
            enabled: true,
            node_name: Some("node-1".into()),
            kubeconfig: Some(kubeconfig),
            stale_after: Duration::from_secs(2),
            max_pods: 1024,
        };
    })
    .await;
    let m = world.proxy.metrics_addr;
    // Synced: this node's two pods held, the other node's not.
    wait_metric(m, "dnslens_pod_identity_watch_up", 1.0).await;
    wait_metric(m, "dnslens_pod_identity_pods", 2.0).await;

    let name = "web.default.svc.cluster.local";
    retried_question("127.0.0.11", world.dns(), name, 0x1101).await;
    retried_question("127.0.0.12", world.dns(), name, 0x1201).await;
    retried_question("127.0.0.13", world.dns(), name, 0x1301).await;
    let web = &journal_entries(m, "127.0.0.11", 1).await[0];
    assert_eq!(web["kinds"], json!(["client_retry"]));
    assert_eq!(
        web["client_identity"],
        json!({"namespace": "team-a", "pod": "web-7d9c5b-x2x9q", "workload_kind": "Deployment", "workload": "web", "stale": false})
    );
    let db = &journal_entries(m, "127.0.0.12", 1).await[0];
    assert_eq!(
        db["client_identity"],
        json!({"namespace": "team-b", "pod": "db-0", "workload_kind": "StatefulSet", "workload": "db", "stale": false})
    );
    let elsewhere = &journal_entries(m, "127.0.0.13", 1).await[0];
    assert!(elsewhere.get("client_identity").is_none(), "{elsewhere}");

    // The counters name the workload; the unnamed client counts without it.
    let (_, body) = http_get(m, "/metrics").await;
    let retries = |labels: &str| {
        series_value(
            &body,
            &format!("dnslens_anomalies_total{{kind=\"client_retry\"{labels}}}"),
        )
    };
    assert_eq!(
        retries(",client_namespace=\"team-a\",client_workload=\"web\""),
        1.0
    );
    assert_eq!(
        retries(",client_namespace=\"team-b\",client_workload=\"db\""),
        1.0
    );
    assert_eq!(retries(""), 1.0);

    // Autopath serves the clients whose pod it verified, with their namespace's list: the
    // first expansion of `web.default` for a pod of team-b is answered with a CNAME to the
    // name CoreDNS has; the other node's pod (unverified) gets CoreDNS's NXDOMAIN and walks.
    let verified = ask_from(
        "127.0.0.12",
        world.dns(),
        "web.default.team-b.svc.cluster.local",
    )
    .await;
    assert_eq!(verified.metadata.response_code, ResponseCode::NoError);
    let records: Vec<String> = verified
        .answers
        .iter()
        .map(|r| format!("{} {}", r.record_type(), r.data))
        .collect();
    assert_eq!(
        records,
        ["CNAME web.default.svc.cluster.local.", "A 10.96.12.34"]
    );
    let unverified = ask_from(
        "127.0.0.13",
        world.dns(),
        "web.default.team-a.svc.cluster.local",
    )
    .await;
    assert_eq!(unverified.metadata.response_code, ResponseCode::NXDomain);
    assert!(unverified.answers.is_empty());
    assert_eq!(
        metric(m, "dnslens_autopath_total{result=\"answered\"}").await,
        1.0
    );

    // The lookup spans carry it too.
    let spans = receiver
        .wait_for(Duration::from_secs(10), |spans| {
            spans
                .iter()
                .filter(|s| s.name != "dns.query" && s.name != "dns.upstream")
                .filter(|s| s.attr("dnslens.anomaly").contains("client_retry"))
                .count()
                >= 3
        })
        .await;
    let root_of = |client: &str| {
        spans
            .iter()
            .find(|s| {
                s.attr("client.address") == client && s.attr("dnslens.anomaly") == "client_retry"
            })
            .unwrap_or_else(|| panic!("no lookup span from {client}"))
            .clone()
    };
    let web_span = root_of("127.0.0.11");
    assert_eq!(web_span.attr("dnslens.client.k8s.namespace.name"), "team-a");
    assert_eq!(
        web_span.attr("dnslens.client.k8s.pod.name"),
        "web-7d9c5b-x2x9q"
    );
    assert_eq!(
        web_span.attr("dnslens.client.k8s.workload.kind"),
        "Deployment"
    );
    assert_eq!(web_span.attr("dnslens.client.k8s.workload.name"), "web");
    assert_eq!(web_span.attr("dnslens.client.identity.stale"), "");
    assert_eq!(
        root_of("127.0.0.13").attr("dnslens.client.k8s.pod.name"),
        ""
    );

    // The web pod ends (deleted at once, as a kubelet confirms it) and its address passes to
    // a new pod in another namespace.
    cp.kubectl(
        &[
            "delete",
            "pod",
            "-n",
            "team-a",
            "web-7d9c5b-x2x9q",
            "--grace-period=0",
            "--force",
        ],
        "",
    );
    cp.running_pod(
        "team-b",
        "nightly-29100000-abcde",
        "node-1",
        "127.0.0.11",
        Some(("Job", "nightly-29100000")),
        json!({}),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut round = 0u16;
    let reused = loop {
        retried_question("127.0.0.11", world.dns(), name, 0x2100 + round).await;
        let entries = journal_entries(m, "127.0.0.11", 2 + round as usize).await;
        let newest = entries
            .iter()
            .max_by(|a, b| a["time"].as_f64().partial_cmp(&b["time"].as_f64()).unwrap())
            .unwrap()
            .clone();
        if newest["client_identity"]["pod"] != "web-7d9c5b-x2x9q" {
            break newest;
        }
        assert!(
            Instant::now() < deadline,
            "the new pod never took the address"
        );
        round += 1;
    };
    assert_eq!(
        reused["client_identity"],
        json!({"namespace": "team-b", "pod": "nightly-29100000-abcde", "workload_kind": "CronJob", "workload": "nightly", "stale": false})
    );

    // The timeline page filters by the client's namespace, workload and pod, and names
    // each client by its pod (headless Chromium runs the page's script).
    let browser = TempDir::new("pod-identity-ui");
    let dom = crate::ui::dump_dom(
        &format!("http://{m}/ui/?since=1h&namespace=team-b"),
        &browser.0,
    );
    assert_eq!(crate::ui::count(&dom, "<tr class=\"entry\""), 2, "{dom}");
    assert!(dom.contains("team-b/db-0 127.0.0.12"), "{dom}");
    assert!(
        dom.contains("team-b/nightly-29100000-abcde 127.0.0.11"),
        "{dom}"
    );
    assert!(!dom.contains("team-a/"), "{dom}");
    let dom = crate::ui::dump_dom(&format!("http://{m}/ui/?since=1h&workload=web"), &browser.0);
    let rows = crate::ui::count(&dom, "<tr class=\"entry\"");
    assert!(rows >= 1, "{dom}");
    assert_eq!(
        crate::ui::count(&dom, "team-a/web-7d9c5b-x2x9q 127.0.0.11"),
        rows,
        "{dom}"
    );
    let dom = crate::ui::dump_dom(&format!("http://{m}/ui/?since=1h&pod=db-"), &browser.0);
    assert_eq!(crate::ui::count(&dom, "<tr class=\"entry\""), 1, "{dom}");

    // The API server stops: DNS is still answered, the watch is down, and after
    // stale_after the last known identities are marked stale.
    cp.stop_apiserver();
    wait_metric(m, "dnslens_pod_identity_watch_up", 0.0).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let before = journal_entries(m, "127.0.0.12", 1).await.len();
    retried_question("127.0.0.12", world.dns(), name, 0x1202).await;
    let entries = journal_entries(m, "127.0.0.12", before + 1).await;
    let newest = entries
        .iter()
        .max_by(|a, b| a["time"].as_f64().partial_cmp(&b["time"].as_f64()).unwrap())
        .unwrap();
    assert_eq!(newest["client_identity"]["pod"], "db-0");
    assert_eq!(newest["client_identity"]["stale"], true);
    assert_eq!(
        metric(m, "dnslens_pod_identity_stale").await,
        1.0,
        "stale shows in a metric"
    );
    let (status, _) = http_get(m, "/readyz").await;
    assert_eq!(status, 200, "readiness does not depend on the API server");

    // Back: the watch relists and is up, identities fresh, and a pod made meanwhile is held.
    cp.start_apiserver();
    wait_metric(m, "dnslens_pod_identity_watch_up", 1.0).await;
    wait_metric(m, "dnslens_pod_identity_stale", 0.0).await;
    cp.running_pod(
        "team-a",
        "api-0",
        "node-1",
        "127.0.0.14",
        Some(("StatefulSet", "api")),
        json!({}),
    );
    wait_metric(m, "dnslens_pod_identity_pods", 3.0).await;
    retried_question("127.0.0.14", world.dns(), name, 0x1401).await;
    let api = &journal_entries(m, "127.0.0.14", 1).await[0];
    assert_eq!(api["client_identity"]["pod"], "api-0");
    assert_eq!(api["client_identity"]["stale"], false);
    world.stop().await;
}
