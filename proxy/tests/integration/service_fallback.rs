//! Node-local Service exposure when the node's dnslens is down, through a real kube-proxy
//! (iptables mode, built from its Go module with the control plane) in a network namespace
//! of the test's own, with the API server inside it on that namespace's loopback.
//!
//! One "node" (node-1) holds kube-proxy, a client pod's address, its own dnslens
//! (10.244.1.10) and — standing in for another node's pod, reachable as it would be —
//! node-2's dnslens (10.244.2.10). The chart's Service is applied as rendered; the test plays
//! the EndpointSlice controller (both endpoints ready, each hinted for its node, as the
//! controller hints them for PreferSameNode). node-1's dnslens is then stopped and its
//! endpoint marked not ready; once kube-proxy's rules no longer lead to it:
//! - `routing: PreferSameNode` — the client is answered by node-2's dnslens;
//! - `routing: Local` (internalTrafficPolicy Local) — the client gets no answer at all.

use std::path::Path;

use crate::control_plane::built;
use crate::harness::*;
use crate::kubernetes::{run_helm_template, yaml_documents};

const CLIENT: &str = "10.244.1.20";
const NODE1_DNSLENS: &str = "10.244.1.10";
const NODE2_DNSLENS: &str = "10.244.2.10";
const CLUSTER_IP: &str = "10.96.0.11";

/// The chart's node-local Service for `routing`, rendered for Kubernetes 1.36.
fn chart_service(routing: &str) -> serde_json::Value {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (ok, stdout, stderr) = run_helm_template(
        &repo.join("helm/dnslens"),
        &[
            "--set",
            "mode=node-local,nodeLocal.clientCIDRs={10.244.0.0/16},clusterDNS=10.96.0.10",
            "--set",
            &format!(
                "nodeLocal.service.clusterIP={CLUSTER_IP},nodeLocal.service.routing={routing}"
            ),
            "--kube-version",
            "1.36.0",
        ],
    );
    assert!(ok, "helm-template: {stderr}");
    yaml_documents(&stdout)
        .into_iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "dns")
        .expect("the chart's node-local Service")
}

/// The EndpointSlice the controller would write: both dnslens pods, node-1's `node1_ready`.
fn endpoint_slice(namespace: &str, node1_ready: bool) -> serde_json::Value {
    let endpoint = |address: &str, node: &str, ready: bool| {
        serde_json::json!({
            "addresses": [address],
            "conditions": {"ready": ready, "serving": ready, "terminating": false},
            "nodeName": node,
            "hints": {"forNodes": [{"name": node}]},
        })
    };
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "dns-test",
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": "dns",
                "endpointslice.kubernetes.io/managed-by": "dnslens-test",
            },
        },
        "addressType": "IPv4",
        "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        ],
        "endpoints": [
            endpoint(NODE1_DNSLENS, "node-1", node1_ready),
            endpoint(NODE2_DNSLENS, "node-2", true),
        ],
    })
}

/// What a run saw: answers before and after node-1's dnslens went, each dnslens's queries
/// answered in each phase, and kube-proxy's rules once it had processed the change.
struct Run {
    before: Vec<String>,
    after: Vec<String>,
    node1_before: f64,
    node2_before: f64,
    node2_after: f64,
    rules_after: String,
    log: String,
}

fn run(routing: &str) -> Run {
    let dir = TempDir::new(&format!("service-fallback-{}", routing.to_lowercase()));
    let d = &dir.0;
    knot_config(d, 5300);
    let mut service = chart_service(routing);
    let namespace = service["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    service["metadata"]["namespace"] = namespace.clone().into();
    let nodes = ["node-1", "node-2"]
        .map(|n| serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}}));
    let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
    let objects = [
        &ns,
        &nodes[0],
        &nodes[1],
        &service,
        &endpoint_slice(&namespace, true),
    ]
    .iter()
    .map(|o| serde_json::to_string(o).unwrap())
    .collect::<Vec<_>>()
    .join("\n---\n");
    std::fs::write(d.join("objects.yaml"), objects).unwrap();
    std::fs::write(
        d.join("slice-down.yaml"),
        serde_json::to_string(&endpoint_slice(&namespace, false)).unwrap(),
    )
    .unwrap();
    std::fs::write(
        d.join("dnslens.yaml"),
        "mode: node-local\nlistener: {allow: [10.244.0.0/16]}\nlameduck: 0s\n",
    )
    .unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = format!(
        r#"set -u
cd "{d}"
ip link set lo up
# The pods' addresses on the namespace's loopback (no dummy interfaces on every kernel);
# Service addresses are routed there too, from the client pod's address.
for a in {NODE1_DNSLENS} {NODE2_DNSLENS} {CLIENT}; do ip addr add $a/32 dev lo; done
ip route add 10.96.0.0/16 dev lo src {CLIENT}
"{cp}" start cp >cp.log 2>&1 || {{ echo "control plane did not start" >>log.txt; exit 0; }}
K="{kubectl} --kubeconfig cp/kubeconfig"
knotd -c knot.conf >knot.log 2>&1 & knot=$!
"{dnslens}" serve --config dnslens.yaml --listen {NODE1_DNSLENS}:53 --upstream 127.0.0.1:5300 --metrics-listen 127.0.0.1:9301 2>node1.log & node1=$!
"{dnslens}" serve --config dnslens.yaml --listen {NODE2_DNSLENS}:53 --upstream 127.0.0.1:5300 --metrics-listen 127.0.0.1:9302 2>node2.log & node2=$!
$K apply -f objects.yaml >>log.txt 2>&1
"{kube_proxy}" --kubeconfig cp/kubeconfig --hostname-override node-1 --proxy-mode iptables \
  --cluster-cidr 10.244.0.0/16 --conntrack-max-per-core 0 \
  --conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0 \
  --healthz-bind-address 127.0.0.1:10256 --metrics-bind-address 127.0.0.1:10249 \
  >kube-proxy.log 2>&1 & proxy=$!
ask() {{ dig -b {CLIENT} @{CLUSTER_IP} +time=2 +tries=1 +short web.default.svc.cluster.local A; }}
answered() {{ curl -s 127.0.0.1:$1/metrics | awk '$1 ~ /^dnslens_requests_total/ {{s += $2}} END {{print s + 0}}'; }}
for i in $(seq 60); do ask 2>/dev/null | grep -qx 10.96.12.34 && break; sleep 0.5; done
n1=$(answered 9301); n2=$(answered 9302)
for i in $(seq 10); do ask >>before.txt 2>&1 || true; done
echo "$(( $(answered 9301) - n1 )) $(( $(answered 9302) - n2 ))" >counts-before.txt
# node-1's dnslens goes: stopped, its endpoint not ready (its readiness, as the controller
# reports it). kube-proxy has processed that once no rule leads to it any more.
kill $node1; wait $node1 2>/dev/null
$K apply -f slice-down.yaml >>log.txt 2>&1
for i in $(seq 60); do iptables-save -t nat | grep -q 'to-destination {NODE1_DNSLENS}:53' || break; sleep 0.5; done
iptables-save >rules-after.txt
n2=$(answered 9302)
for i in $(seq 5); do ask >>after.txt 2>&1 || true; done
echo "$(( $(answered 9302) - n2 ))" >counts-after.txt
kill $proxy $node2 $knot 2>/dev/null
wait $proxy $node2 $knot 2>/dev/null
"{cp}" stop cp >>cp.log 2>&1
true
"#,
        d = d.display(),
        cp = repo.join("scripts/control-plane.sh").display(),
        kubectl = built("kubectl").display(),
        kube_proxy = built("kube-proxy").display(),
        dnslens = env!("CARGO_BIN_EXE_dnslens"),
    );
    assert!(run_in_new_namespace(&script).success());
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
    let numbers = |f: &str| -> Vec<f64> {
        read(f)
            .split_whitespace()
            .map(|n| n.parse().unwrap_or(f64::NAN))
            .collect()
    };
    let (before, after) = (numbers("counts-before.txt"), numbers("counts-after.txt"));
    let log = format!(
        "log:\n{}\nkube-proxy:\n{}\ncontrol plane:\n{}",
        read("log.txt"),
        read("kube-proxy.log"),
        read("cp.log")
    );
    assert_eq!(before.len(), 2, "no counts: {log}");
    assert_eq!(after.len(), 1, "no counts after: {log}");
    Run {
        before: read("before.txt").lines().map(str::to_string).collect(),
        after: read("after.txt").lines().map(str::to_string).collect(),
        node1_before: before[0],
        node2_before: before[1],
        node2_after: after[0],
        rules_after: read("rules-after.txt"),
        log,
    }
}

/// Both routings serve from the node's own dnslens while it is ready; only PreferSameNode
/// keeps the node's pods answered once it is not.
#[test]
fn prefer_same_node_falls_back_to_another_nodes_dnslens_and_local_does_not() {
    built("kube-proxy");
    // Every query of the first phase must be answered in time: no flood beside it.
    let _alone = scene_alone();
    for routing in ["PreferSameNode", "Local"] {
        let run = run(routing);
        let log = &run.log;
        // While node-1's dnslens is ready, every query stays on the node.
        assert_eq!(run.before, vec!["10.96.12.34"; 10], "{routing}: {log}");
        assert_eq!(
            (run.node1_before, run.node2_before),
            (10.0, 0.0),
            "{routing}: {log}"
        );
        // kube-proxy processed the change: no rule leads to node-1's dnslens any more.
        let rules = &run.rules_after;
        assert!(
            !rules.contains(&format!("--to-destination {NODE1_DNSLENS}:53")),
            "{routing}: {rules}"
        );
        match routing {
            "PreferSameNode" => {
                assert!(
                    rules.contains(&format!("--to-destination {NODE2_DNSLENS}:53")),
                    "{routing}: {rules}"
                );
                assert_eq!(run.after, vec!["10.96.12.34"; 5], "{routing}: {log}");
                assert_eq!(run.node2_after, 5.0, "{routing}: {log}");
            }
            _ => {
                assert!(
                    rules.contains("has no local endpoints"),
                    "{routing}: {rules}"
                );
                assert!(
                    run.after.iter().all(|l| !l.contains("10.96.12.34")),
                    "{routing}: answered {:?}",
                    run.after
                );
                assert_eq!(run.node2_after, 0.0, "{routing}: {log}");
            }
        }
    }
}
