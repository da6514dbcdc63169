//! The Helm chart, the injector and the webhook, without a cluster: the chart is rendered by
//! the real Helm library (`helm-template`, see shared/tools) and every object is validated
//! against the Kubernetes 1.31 schemas; the injector's output on the chart's example
//! workloads is validated the same way; the rendered PrometheusRule goes through
//! `promtool check rules`; the dashboard's queries are checked against a live /metrics; the
//! webhook answers real AdmissionReviews over HTTPS.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::harness::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The renderer: `HELM_TEMPLATE` (scripts/test.sh sets it), else the team's shared copy
/// beside this checkout, else the one vendored in scripts/vendor.
fn helm_template() -> PathBuf {
    let tool = std::env::var_os("HELM_TEMPLATE")
        .map(PathBuf::from)
        .or_else(|| {
            let shared = repo().join("../shared/tools/helm-template");
            shared.exists().then_some(shared)
        })
        .unwrap_or_else(|| repo().join("scripts/vendor/helm-template"));
    assert!(tool.exists(), "{} missing", tool.display());
    tool
}

/// Runs helm-template on `chart` with `args` (namespace dnslens-system unless they name
/// one); (exit success, stdout, stderr).
pub(crate) fn run_helm_template(chart: &Path, args: &[&str]) -> (bool, String, String) {
    let namespace = if args.contains(&"--namespace") {
        &[][..]
    } else {
        &["--namespace", "dnslens-system"][..]
    };
    let out = Command::new(helm_template())
        .arg(chart)
        .args(["--release", "dns"])
        .args(namespace)
        .args(args)
        .output()
        .expect("helm-template runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(crate) fn yaml_documents(text: &str) -> Vec<Value> {
    dnslens::yaml::from_documents(text).expect("rendered YAML parses")
}

/// Renders the chart with `args`, validated against Kubernetes 1.31; the objects.
fn render(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--validate", "1.31.0"];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = run_helm_template(&repo().join("helm/dnslens"), &all);
    assert!(ok, "helm-template {args:?} failed:\n{stderr}");
    yaml_documents(&stdout)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            let have: Vec<String> = docs
                .iter()
                .map(|d| format!("{} {}", d["kind"], d["metadata"]["name"]))
                .collect();
            panic!("no {kind} {name} among {have:?}")
        })
}

fn kinds(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().unwrap_or("").to_string())
        .collect()
}

fn assert_locked_down(container: &Value) {
    let sc = &container["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true, "{container}");
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["capabilities"]["add"], json!(["NET_BIND_SERVICE"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
}

/// config/alerts.yaml's rule groups, as JSON.
fn alert_groups() -> Value {
    let text = std::fs::read_to_string(repo().join("config/alerts.yaml")).unwrap();
    let rules: Value = dnslens::yaml::from_str(&text).unwrap();
    rules["groups"].clone()
}

#[test]
fn sidecar_mode_renders_the_webhook_with_cert_manager() {
    let docs = render(&["--set", "metrics.podMonitor.enabled=true"]);
    // Scrapes every injected pod by the label the injector sets, on the sidecar's port.
    let monitor = find(&docs, "PodMonitor", "dns");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["dnslens.io/injected"],
        "true"
    );
    assert_eq!(
        monitor["spec"]["podMetricsEndpoints"][0]["port"],
        "dnslens-metrics"
    );
    // `workload` (the alerts aggregate by it): a ReplicaSet's pods are their Deployment.
    let relabel = &monitor["spec"]["podMetricsEndpoints"][0]["relabelings"];
    assert!(
        relabel
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["regex"] == "ReplicaSet;(.+)-[a-z0-9]+" && r["targetLabel"] == "workload"),
        "{relabel}"
    );
    // The injector is scraped too, over HTTPS against its own CA.
    let webhook = &find(&docs, "PodMonitor", "dns-webhook")["spec"]["podMetricsEndpoints"][0];
    assert_eq!(webhook["scheme"], "https");
    assert_eq!(
        webhook["tlsConfig"]["ca"]["secret"]["name"],
        "dns-webhook-tls"
    );
    let kinds = kinds(&docs);
    assert!(
        !kinds
            .iter()
            .any(|k| k.contains("Role") || k == "ClusterRoleBinding"),
        "no RBAC: dnslens needs no API access ({kinds:?})"
    );
    let hook = find(&docs, "MutatingWebhookConfiguration", "dns-dnslens-system");
    assert_eq!(
        hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "dnslens-system/dns-webhook"
    );
    let webhooks = hook["webhooks"].as_array().unwrap();
    assert_eq!(webhooks.len(), 2);
    let (open, closed) = (&webhooks[0], &webhooks[1]);
    assert_eq!(open["failurePolicy"], "Ignore");
    assert_eq!(closed["failurePolicy"], "Fail");
    assert_eq!(
        closed["clientConfig"]["service"]["path"],
        "/mutate/fail-closed"
    );
    for w in webhooks {
        assert_eq!(w["sideEffects"], "None");
        assert_eq!(w["timeoutSeconds"], 5);
        assert_eq!(w["rules"][0]["resources"], json!(["pods"]));
        let selector = w["namespaceSelector"]["matchExpressions"].to_string();
        assert!(selector.contains("dnslens.io/inject"), "{selector}");
        assert!(
            selector.contains("dnslens-system"),
            "never its own namespace"
        );
    }
    find(&docs, "Certificate", "dns-webhook");
    let deployment = find(&docs, "Deployment", "dns-webhook");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["args"][0], "webhook");
    assert_locked_down(container);
    assert!(
        deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            .as_str()
            .is_some_and(|c| c.len() == 64)
    );
    // The injector's settings: what `dnslens webhook --config` reads.
    let config = find(&docs, "ConfigMap", "dns");
    let inject: dnslens::inject::InjectConfig =
        dnslens::yaml::from_str(config["data"]["inject.yaml"].as_str().unwrap())
            .expect("inject.yaml is an InjectConfig");
    assert!(
        inject.upstreams.is_empty(),
        "no clusterDNS and no cluster to look it up in: the webhook's own nameserver"
    );
    assert_eq!(inject.kube_version, "1.31");
    inject.check_kube_version().expect("1.29 or newer");
    // The alert rules are config/alerts.yaml, not a copy.
    let rule = find(&docs, "PrometheusRule", "dns");
    assert_eq!(rule["spec"]["groups"], alert_groups());
    let dashboard = find(&docs, "ConfigMap", "dns-dashboard");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value =
        serde_json::from_str(dashboard["data"]["dnslens.json"].as_str().unwrap()).unwrap();
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("helm/dnslens/dashboards/dnslens.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(shipped, file);
}

#[test]
fn sidecar_mode_without_cert_manager_makes_its_own_certificate() {
    let docs = render(&[
        "--without-api",
        "cert-manager.io/v1",
        "--set",
        "sidecar.webhook.failurePolicy=Fail,sidecar.webhook.replicas=1",
        "--kube-version",
        "1.29.0",
    ]);
    assert!(!kinds(&docs).iter().any(|k| k == "Certificate"));
    assert!(
        !kinds(&docs).iter().any(|k| k == "PodDisruptionBudget"),
        "one replica: no PDB"
    );
    let secret = find(&docs, "Secret", "dns-webhook-tls");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let hook = find(&docs, "MutatingWebhookConfiguration", "dns-dnslens-system");
    let ca = secret["data"]["ca.crt"].as_str().unwrap();
    assert!(!ca.is_empty());
    for w in hook["webhooks"].as_array().unwrap() {
        assert_eq!(w["clientConfig"]["caBundle"], ca);
        assert_eq!(w["failurePolicy"], "Fail");
    }
    let config = find(&docs, "ConfigMap", "dns");
    let inject: dnslens::inject::InjectConfig =
        dnslens::yaml::from_str(config["data"]["inject.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(inject.kube_version, "1.29");
    inject.check_kube_version().expect("1.29 or newer");
}

/// Service exposure's routing: PreferSameNode (another node's dnslens answers while this
/// node's is not ready; `service_fallback.rs` shows kube-proxy doing it) where the cluster
/// serves it (1.34+), internalTrafficPolicy Local before; PreferSameNode asked of an older
/// cluster is refused with the reason.
#[test]
fn service_routing_prefers_the_same_node_where_the_cluster_serves_it() {
    let node_local = "mode=node-local,nodeLocal.clientCIDRs={10.244.0.0/16},clusterDNS=10.96.0.10";
    for (kube, routing, expect_local) in [
        ("1.31.0", "auto", true),
        ("1.34.0", "auto", false),
        ("1.36.0", "Local", true),
        ("1.36.0", "PreferSameNode", false),
    ] {
        let routing_value = format!("nodeLocal.service.routing={routing}");
        let (ok, stdout, stderr) = run_helm_template(
            &repo().join("helm/dnslens"),
            &[
                "--set",
                node_local,
                "--set",
                &routing_value,
                "--kube-version",
                kube,
            ],
        );
        assert!(ok, "{kube} {routing}: {stderr}");
        let docs = yaml_documents(&stdout);
        let spec = &find(&docs, "Service", "dns")["spec"];
        if expect_local {
            assert_eq!(spec["internalTrafficPolicy"], "Local", "{kube} {routing}");
            assert!(
                spec.get("trafficDistribution").is_none(),
                "{kube} {routing}"
            );
        } else {
            assert_eq!(
                spec["trafficDistribution"], "PreferSameNode",
                "{kube} {routing}"
            );
            assert!(
                spec.get("internalTrafficPolicy").is_none(),
                "{kube} {routing}"
            );
        }
    }
    let (ok, _, stderr) = run_helm_template(
        &repo().join("helm/dnslens"),
        &[
            "--set",
            node_local,
            "--set",
            "nodeLocal.service.routing=PreferSameNode",
            "--kube-version",
            "1.33.0",
        ],
    );
    assert!(!ok, "PreferSameNode rendered for 1.33");
    assert!(
        stderr.contains("nodeLocal.service.routing=PreferSameNode needs Kubernetes 1.34 or newer"),
        "{stderr}"
    );
}

/// Kubernetes 1.29+ or a clear refusal: the chart will not render for an older cluster, and
/// `dnslens inject` will not inject for one (a sidecar in a regular container would keep a
/// Job's pod from ever completing).
#[test]
fn clusters_before_1_29_are_refused_with_the_reason() {
    for mode in ["sidecar", "node-local"] {
        // Helm sees the cluster: the chart's kubeVersion refuses it.
        let (ok, _, stderr) = run_helm_template(
            &repo().join("helm/dnslens"),
            &[
                "--set",
                &format!("mode={mode}"),
                "--set",
                "clusterDNS=10.96.0.10",
                "--kube-version",
                "1.28.0",
            ],
        );
        assert!(!ok, "{mode} rendered for 1.28");
        assert!(
            stderr.contains(
                "requires kubeVersion: >=1.29.0-0 which is incompatible with Kubernetes v1.28.0"
            ),
            "{stderr}"
        );
        // The version given by hand (rendered away from the cluster): refused with the reason.
        let (ok, _, stderr) = run_helm_template(
            &repo().join("helm/dnslens"),
            &[
                "--set",
                &format!("mode={mode}"),
                "--set",
                "clusterDNS=10.96.0.10",
                "--set",
                "sidecar.kubeVersion=1.28",
            ],
        );
        assert!(!ok, "{mode} rendered for 1.28");
        assert!(
            stderr.contains(
                "dnslens needs Kubernetes 1.29 or newer (native sidecars); this cluster is 1.28"
            ),
            "{stderr}"
        );
    }
    let out = output_with_stdin(
        Command::new(env!("CARGO_BIN_EXE_dnslens")).args([
            "inject",
            "--upstream",
            "10.96.0.10",
            "--kube-version",
            "1.28",
        ]),
        b"apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: app, image: nginx}]}\n",
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("needs 1.29 or newer"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn node_local_service_mode_never_leaves_a_node_without_dns() {
    let docs = render(&[
        "--set",
        "mode=node-local,nodeLocal.clientCIDRs={10.244.0.0/16},nodeLocal.service.clusterIP=10.96.0.11,clusterDNS=10.96.0.10",
        "--set",
        "nodeLocal.forwardZones[0].zone=corp.example,nodeLocal.forwardZones[0].upstreams[0]=10.1.0.53,nodeLocal.forwardZones[0].forceTCP=true",
    ]);
    let ds = find(&docs, "DaemonSet", "dns");
    let strategy = &ds["spec"]["updateStrategy"]["rollingUpdate"];
    assert_eq!(strategy["maxUnavailable"], 0);
    assert_eq!(strategy["maxSurge"], "10%");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert!(pod.get("hostNetwork").is_none());
    let container = &pod["containers"][0];
    assert_locked_down(container);
    assert_eq!(
        pod["securityContext"]["sysctls"],
        json!([{"name": "net.ipv4.ip_unprivileged_port_start", "value": "53"}]),
        "non-root binds :53 without a capability"
    );
    assert_eq!(
        container["args"],
        json!([
            "serve",
            "--config",
            "/etc/dnslens/dnslens.yaml",
            "--cluster-dns",
            "10.96.0.10"
        ])
    );
    assert_eq!(
        pod["dnsPolicy"], "Default",
        "other names: the node's resolvers"
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    let env = container["env"].to_string();
    for var in ["POD_NAME", "POD_NAMESPACE", "NODE_NAME"] {
        assert!(env.contains(var), "{var} in {env}");
    }
    let service = find(&docs, "Service", "dns");
    assert_eq!(service["spec"]["internalTrafficPolicy"], "Local");
    assert_eq!(service["spec"]["ipFamilyPolicy"], "PreferDualStack");
    assert_eq!(service["spec"]["clusterIP"], "10.96.0.11");
    assert_eq!(
        find(&docs, "PodDisruptionBudget", "dns")["spec"]["maxUnavailable"],
        1
    );
    assert!(!kinds(&docs).contains(&"MutatingWebhookConfiguration".to_string()));
    // The proxy's configuration loads as dnslens reads it.
    let config = find(&docs, "ConfigMap", "dns");
    let text = config["data"]["dnslens.yaml"].as_str().unwrap();
    let mut parsed = dnslens::config::Config::from_yaml(text).expect("dnslens.yaml parses");
    assert!(
        parsed.forward.upstreams.is_empty(),
        "the node's resolvers, read at start"
    );
    let zone = &parsed.forward.zones[0];
    assert_eq!(
        (
            zone.zone.as_str(),
            zone.upstreams[0].to_string(),
            zone.force_tcp
        ),
        ("corp.example", "10.1.0.53:53".to_string(), true)
    );
    parsed.forward.upstreams = vec!["10.0.0.2".parse().unwrap()];
    parsed.forward.cluster_dns = Some("10.96.0.10".parse().unwrap());
    parsed
        .validate()
        .expect("dnslens.yaml with the flag is valid");
    // Both families of the pod, where it has them.
    assert_eq!(parsed.listen, ["[::]:53".parse().unwrap()]);
    assert_eq!(parsed.admin.listen, "[::]:9253".parse().unwrap());
    assert_eq!(parsed.listener.allow.len(), 2, "the pod CIDR and loopback");
    assert!(parsed.cache.enabled && parsed.mitigations.musl_shield);
}

#[test]
fn node_local_link_local_mode_sets_up_the_address_as_node_cache_does() {
    let dir = TempDir::new("values");
    let values = dir.0.join("values.yaml");
    std::fs::write(
        &values,
        "mode: node-local\nnodeLocal:\n  exposure: linkLocal\n  clientCIDRs: [10.244.0.0/16, 192.168.0.0/24]\n  linkLocal:\n    interceptClusterDNS: true\nclusterDNS: 10.96.0.10\ntracing:\n  endpoint: http://otel.observability:4317\n  backend: jaeger=http://jaeger-query.observability:16686\ndnstap:\n  socket: /var/run/dnstap/dnstap.sock\n  messages: [client_query, client_response, forwarder_query]\n",
    )
    .unwrap();
    let docs = render(&["-f", values.to_str().unwrap()]);
    let ds = find(&docs, "DaemonSet", "dns");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "Default");
    // The node setup is dnslens's own (`node-setup hold`, a native sidecar: set up before
    // dnslens starts, torn down after it), run in the setup image with the binary copied in.
    let install = &pod["initContainers"][0];
    assert_eq!(
        install["args"],
        json!(["install-binary", "/opt/dnslens/dnslens"])
    );
    let setup = &pod["initContainers"][1];
    assert_eq!(setup["restartPolicy"], "Always");
    assert_eq!(
        setup["command"],
        json!([
            "/opt/dnslens/dnslens",
            "node-setup",
            "hold",
            "--ready-file",
            "/opt/dnslens/ready",
            "--check-every",
            "60s",
            "--status-file",
            "/opt/dnslens/node-setup-status"
        ])
    );
    assert_eq!(
        setup["args"],
        json!(["--address", "169.254.20.10", "--address", "10.96.0.10"])
    );
    assert_eq!(
        setup["startupProbe"]["exec"]["command"],
        json!(["test", "-f", "/opt/dnslens/ready"])
    );
    assert_eq!(
        setup["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    // iptables -w takes the host's xtables lock, the one kube-proxy takes.
    assert!(setup["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "xtables-lock" && m["mountPath"] == "/run/xtables.lock"));
    let lock = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "xtables-lock")
        .expect("the xtables lock volume");
    assert_eq!(
        lock["hostPath"],
        json!({"path": "/run/xtables.lock", "type": "FileOrCreate"})
    );
    // The new pod binds beside the old one (SO_REUSEPORT): no gap, no host ports.
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"],
        "10%"
    );
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    assert!(pod["containers"][0].get("ports").is_none());
    // On the host's network: root with NET_BIND_SERVICE as its only capability.
    let sc = &pod["containers"][0]["securityContext"];
    assert_eq!(sc["runAsUser"], 0);
    assert_eq!(sc["runAsNonRoot"], false);
    assert_eq!(
        sc["capabilities"],
        json!({"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]})
    );
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert!(
        pod["securityContext"].get("sysctls").is_none(),
        "not on hostNetwork"
    );
    let args = pod["containers"][0]["args"].to_string();
    assert!(args.contains("$(DNS_UPSTREAM_SERVICE_HOST)"), "{args}");
    let upstream = find(&docs, "Service", "dns-upstream");
    assert_eq!(upstream["spec"]["selector"]["k8s-app"], "kube-dns");
    let text = find(&docs, "ConfigMap", "dns")["data"]["dnslens.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    let parsed = dnslens::config::Config::from_yaml(&text).unwrap();
    assert_eq!(parsed.deprecated, [], "the chart writes no old key names");
    assert_eq!(
        parsed.listen,
        [
            "169.254.20.10:53".parse().unwrap(),
            "10.96.0.10:53".parse().unwrap()
        ]
    );
    assert!(parsed.forward.upstreams.is_empty(), "the upstream comes as a flag");
    // The probes ask this pod's process over its own socket (the TCP port is shared with the
    // other pod of a surge), in a writable emptyDir of the pod.
    let dnslens = &pod["containers"][0];
    let socket = "/run/dnslens/probe.sock";
    assert_eq!(
        parsed.admin.probe_socket.as_deref(),
        Some(std::path::Path::new(socket))
    );
    for (probe, check) in [("readinessProbe", "ready"), ("livenessProbe", "live")] {
        assert_eq!(
            dnslens[probe]["exec"]["command"],
            json!(["/dnslens", "probe", check, "--socket", socket]),
            "{probe}"
        );
        assert!(dnslens[probe].get("httpGet").is_none());
    }
    let mounts = dnslens["volumeMounts"].as_array().unwrap();
    let probe_mount = mounts.iter().find(|m| m["name"] == "probe").unwrap();
    assert_eq!(probe_mount["mountPath"], "/run/dnslens");
    assert!(probe_mount.get("readOnly").is_none());
    let volumes = pod["volumes"].as_array().unwrap();
    let probe_volume = volumes.iter().find(|v| v["name"] == "probe").unwrap();
    assert_eq!(probe_volume["emptyDir"]["medium"], "Memory");
    assert_eq!(
        parsed.tracing.endpoint.as_deref(),
        Some("http://otel.observability:4317")
    );
    assert_eq!(
        parsed.admin.ui.backend.map(|b| b.to_string()),
        Some("Jaeger at http://jaeger-query.observability:16686/".to_string())
    );
    assert_eq!(
        parsed.dnstap.target(),
        Ok(Some(dnslens::dnstap::Target::Unix(
            "/var/run/dnstap/dnstap.sock".into()
        )))
    );
    assert_eq!(parsed.dnstap.messages.len(), 3);
    // The setup's repairs, read from the status file the hold writes.
    assert_eq!(
        parsed.admin.node_setup_status.as_deref(),
        Some(std::path::Path::new("/opt/dnslens/node-setup-status"))
    );
    // The node's dnslens pods share a directory of the host for their sockets, and the
    // ServiceMonitor names the pod in each scrape: during a surge that pod's process
    // answers on the shared port.
    assert_eq!(
        parsed.admin.pod_sockets.as_deref(),
        Some(std::path::Path::new("/run/dnslens-pods"))
    );
    let pod_mount = mounts.iter().find(|m| m["name"] == "pod-sockets").unwrap();
    assert_eq!(pod_mount["mountPath"], "/run/dnslens-pods");
    let pod_volume = volumes.iter().find(|v| v["name"] == "pod-sockets").unwrap();
    assert_eq!(
        pod_volume["hostPath"],
        json!({"path": "/run/dnslens/dnslens-system-dns", "type": "DirectoryOrCreate"})
    );
    let with_operator = render(&[
        "-f",
        values.to_str().unwrap(),
        "--set",
        "metrics.podMonitor.enabled=true",
        "--api-versions",
        "monitoring.coreos.com/v1",
    ]);
    let relabelings = &find(&with_operator, "ServiceMonitor", "dns")["spec"]["endpoints"][0]
        ["relabelings"];
    assert!(
        relabelings.as_array().unwrap().contains(&json!({
            "sourceLabels": ["__meta_kubernetes_pod_name"],
            "targetLabel": "__param_pod"
        })),
        "{relabelings}"
    );
    // The reader's socket directory is the node's.
    let dnstap_volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "dnstap")
        .expect("the dnstap volume");
    assert_eq!(dnstap_volume["hostPath"]["path"], "/var/run/dnstap");
    // And the binary accepts it.
    let file = dir.0.join("dnslens.yaml");
    std::fs::write(&file, &text).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_dnslens"))
        .arg("check-config")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn only_mode_set_renders_valid_manifests_in_both_modes_with_placement_values() {
    // Node-local goes where kube-dns is (as NodeLocal DNSCache); rendered without a cluster
    // it forwards to kube-dns's service variable, which Kubernetes expands there.
    for (mode, namespace) in [("sidecar", "dnslens-system"), ("node-local", "kube-system")] {
        let docs = render(&["--set", &format!("mode={mode}"), "--namespace", namespace]);
        let workload = docs
            .iter()
            .find(|d| d["kind"] == "DaemonSet" || d["kind"] == "Deployment")
            .unwrap_or_else(|| panic!("{mode}: no workload"));
        let spec = &workload["spec"]["template"]["spec"];
        assert_eq!(spec["nodeSelector"]["kubernetes.io/os"], "linux", "{mode}");
        if mode == "node-local" {
            assert_eq!(spec["tolerations"][0]["operator"], "Exists", "every node");
            let config = find(&docs, "ConfigMap", "dns")["data"]["dnslens.yaml"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(
                config.contains("- 10.0.0.0/8") && config.contains("- fc00::/7"),
                "{config}"
            );
            let args = &spec["containers"][0]["args"];
            assert_eq!(args[3], "--cluster-dns", "{args}");
            assert_eq!(args[4], "$(KUBE_DNS_SERVICE_HOST)", "{args}");
        }
    }
    // The usual pod values reach the pod, and the PodMonitor carries the labels its
    // Prometheus selects on.
    let docs = render(&[
        "--set", "mode=node-local,clusterDNS=10.96.0.10",
        "--set", "podLabels.team=dns",
        "--set", "podAnnotations.owner=platform",
        "--set", "imagePullSecrets[0].name=regcred",
        "--set", "tolerations[0].key=dedicated",
        "--set", "tolerations[0].operator=Exists",
        "--set", "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=pool",
        "--set", "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
        "--set", "metrics.podMonitor.enabled=true",
        "--set", "metrics.podMonitor.labels.release=kube-prometheus-stack",
        "--api-versions", "monitoring.coreos.com/v1",
    ]);
    let pod = &find(&docs, "DaemonSet", "dns")["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["team"], "dns");
    assert_eq!(pod["metadata"]["annotations"]["owner"], "platform");
    assert_eq!(pod["spec"]["imagePullSecrets"][0]["name"], "regcred");
    assert_eq!(pod["spec"]["tolerations"][0]["key"], "dedicated");
    assert!(pod["spec"]["affinity"]["nodeAffinity"].is_object());
    let monitor = find(&docs, "PodMonitor", "dns");
    assert_eq!(
        monitor["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
}

#[test]
fn bad_values_fail_at_install_with_a_clear_message() {
    let chart = repo().join("helm/dnslens");
    for (set, expect) in [
        ("mode=nodelocal", "mode"),
        ("nodeLocal.clientCIDRs[0]=everyone", "clientCIDRs"),
        ("tracing.sampleRatio=2", "sampleRatio"),
        ("nodeLocal.exposure=hostPort", "exposure"),
        ("cache.maxTTL=forever", "maxTTL"),
        ("sidecar.webhook.failurePolicy=Maybe", "failurePolicy"),
        ("clusterDNS=kube-dns", "clusterDNS"),
        // Node-local away from kube-dns, with no address and no cluster to look it up in.
        ("mode=node-local", "set clusterDNS to your cluster DNS Service's ClusterIP"),
        (
            "mode=node-local,nodeLocal.exposure=linkLocal,nodeLocal.linkLocal.interceptClusterDNS=true",
            "interceptClusterDNS binds the cluster DNS address",
        ),
    ] {
        let (ok, _, stderr) = run_helm_template(&chart, &["--set", set]);
        assert!(!ok, "{set} must fail");
        assert!(stderr.contains(expect), "{set}: {stderr}");
    }
}

#[test]
fn the_rendered_alert_rules_pass_promtool() {
    let docs = render(&[]);
    let rule = find(&docs, "PrometheusRule", "dns");
    let dir = TempDir::new("rules");
    let file = dir.0.join("rules.yaml");
    std::fs::write(
        &file,
        dnslens::yaml::to_string(&json!({"groups": rule["spec"]["groups"]})).unwrap(),
    )
    .unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool (prometheus) is installed by scripts/test.sh");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the `dnslens inject` binary on `input`; (stdout, stderr).
pub(crate) fn inject_cli(input: &str, args: &[&str]) -> (String, String) {
    let out = output_with_stdin(
        Command::new(env!("CARGO_BIN_EXE_dnslens"))
            .arg("inject")
            .args(args),
        input.as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Validates Kubernetes YAML against the `version` schemas with the same tool, by wrapping
/// it in a throwaway chart.
fn validate_manifests(yaml: &str, version: &str) {
    let dir = TempDir::new("chart");
    std::fs::create_dir_all(dir.0.join("templates")).unwrap();
    std::fs::write(
        dir.0.join("Chart.yaml"),
        "apiVersion: v2\nname: injected\nversion: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(dir.0.join("templates/injected.yaml"), yaml).unwrap();
    let (ok, _, stderr) = run_helm_template(&dir.0, &["--validate", version]);
    assert!(ok, "injected manifests invalid for {version}:\n{stderr}");
}

#[test]
fn the_injector_output_on_the_example_workloads_is_valid_kubernetes() {
    let docs = render(&["--set", "examples.enabled=true"]);
    let workloads: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "CronJob")
        .filter(|d| d["metadata"]["namespace"] == "dnslens-demo")
        .collect();
    assert_eq!(workloads.len(), 2);
    let input: String = workloads
        .iter()
        .map(|w| dnslens::yaml::to_string(w).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    for kube in ["1.29.0", "1.31.0"] {
        let (out, report) = inject_cli(
            &input,
            &["--upstream", "10.96.0.10", "--kube-version", &kube[..4]],
        );
        assert_eq!(
            report.lines().collect::<Vec<_>>(),
            [
                "Deployment alpine-lookups: injected",
                "CronJob nightly-fetch: injected"
            ]
        );
        let injected = yaml_documents(&out);
        let deployment = &injected[0]["spec"]["template"]["spec"];
        assert_eq!(deployment["initContainers"][0]["name"], "dnslens", "{kube}");
        assert_eq!(deployment["initContainers"][0]["restartPolicy"], "Always");
        assert_eq!(
            deployment["dnsConfig"]["searches"][0],
            "dnslens-demo.svc.cluster.local"
        );
        validate_manifests(&out, kube);
        // Injecting the output again changes nothing.
        let (again, _) = inject_cli(
            &out,
            &["--upstream", "10.96.0.10", "--kube-version", &kube[..4]],
        );
        assert_eq!(again, out);
    }
}

/// Metric family names in a /metrics body (`# TYPE name kind`).
fn exported_families(metrics: &str) -> std::collections::BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Every `dnslens_*` name in `text`, as its family name.
fn referenced_families(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("dnslens_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // Part of a longer name (kube-state-metrics' label_dnslens_io_inject) is not ours.
        if rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            rest = &tail[end..];
            continue;
        }
        let mut name = &tail[..end];
        for suffix in ["_total", "_bucket", "_count", "_sum", "_created"] {
            name = name.strip_suffix(suffix).unwrap_or(name);
        }
        names.insert(name.to_string());
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn the_dashboard_and_alerts_query_only_metrics_dnslens_exports() {
    let world = World::start_with(|c| {
        c.cache.enabled = true;
        c.mitigations.musl_shield = true;
    })
    .await;
    ask_udp(
        world.dns(),
        "github.com.",
        hickory_proto::rr::RecordType::A,
        None,
    )
    .await;
    let (_, metrics) = http_get(world.proxy.metrics_addr, "/metrics").await;
    let mut exported = exported_families(&metrics);
    // The injector's own /metrics (checked by the webhook test below).
    exported.insert("dnslens_webhook_requests".to_string());
    assert!(exported.contains("dnslens_cache_hits"), "{exported:?}");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("helm/dnslens/dashboards/dnslens.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 12);
    let mut queries = String::new();
    for panel in panels {
        assert!(panel["title"].as_str().is_some_and(|t| !t.is_empty()));
        for target in panel["targets"].as_array().unwrap() {
            queries.push_str(target["expr"].as_str().unwrap());
            queries.push('\n');
        }
    }
    let alerts = std::fs::read_to_string(repo().join("config/alerts.yaml")).unwrap();
    for (what, text) in [("dashboard", &queries), ("alerts", &alerts)] {
        let referenced = referenced_families(text);
        assert!(referenced.len() >= 5, "{what}: {referenced:?}");
        let unknown: Vec<_> = referenced.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{what} queries metrics dnslens does not export: {unknown:?}"
        );
    }
    // The panels the operators asked for are there.
    for wanted in [
        "dnslens_search_expansion_queries_total",
        "dnslens_client_retry_gap_seconds_bucket",
        "dnslens_empty_noerror_total",
        "dnslens_parallel_query_race_suspected_total",
        "dnslens_upstream_duration_seconds_bucket",
        "dnslens_cache_hits_total",
    ] {
        assert!(queries.contains(wanted), "{wanted}");
    }
    assert!(queries.contains("exemplar") || dashboard.to_string().contains("\"exemplar\":true"));
    world.stop().await;
}

/// One HTTPS request to the webhook, trusting `ca`; (status, body).
async fn https_request(
    addr: std::net::SocketAddr,
    ca: &rcgen::Certificate,
    request: String,
) -> (u16, String) {
    try_https(addr, ca, request).await.expect("TLS handshake")
}

/// One HTTPS request, or the handshake's error.
async fn try_https(
    addr: std::net::SocketAddr,
    ca: &rcgen::Certificate,
    request: String,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(request.as_bytes()).await.unwrap();
    // Read until the server closes, or until a response has sat complete for a while (a
    // server refusing a body it did not read may keep the connection open).
    let mut response = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while let Ok(Ok(n)) =
        tokio::time::timeout(std::time::Duration::from_secs(2), tls.read(&mut chunk)).await
    {
        if n == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..n]);
    }
    Ok(http_status_and_body(&response))
}

fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn the_webhook_serves_admission_reviews_over_https() {
    let dir = TempDir::new("tls");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_file, key_file) = (dir.0.join("tls.crt"), dir.0.join("tls.key"));
    std::fs::write(&cert_file, certified.cert.pem()).unwrap();
    std::fs::write(&key_file, certified.signing_key.serialize_pem()).unwrap();
    let (bound, listening) = tokio::sync::oneshot::channel();
    let settings = dnslens::inject::webhook::WebhookSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_cert: cert_file.clone(),
        tls_key: key_file.clone(),
        cert_check_every: std::time::Duration::from_millis(100),
    };
    let config = dnslens::inject::InjectConfig {
        upstreams: vec!["10.96.0.10".into()],
        ..Default::default()
    };
    tokio::spawn(dnslens::inject::webhook::serve(
        settings,
        config,
        Some(bound),
        std::future::pending(),
    ));
    let addr = tokio::time::timeout(std::time::Duration::from_secs(5), listening)
        .await
        .expect("webhook listens")
        .unwrap();
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]},
    });
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "b7f1c0de-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE", "userInfo": {"username": "alice"},
            "object": pod,
        }
    });
    let (status, body) =
        https_request(addr, &certified.cert, post("/mutate", &review.to_string())).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let response = &answer["response"];
    assert_eq!(response["uid"], "b7f1c0de-0000-4000-8000-000000000001");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    use base64::Engine;
    let patch: json_patch::Patch = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    let spec = &patched["spec"];
    assert_eq!(spec["initContainers"][0]["name"], "dnslens");
    assert_eq!(spec["dnsPolicy"], "None");
    assert_eq!(spec["dnsConfig"]["searches"][0], "shop.svc.cluster.local");
    assert_eq!(spec["containers"][0]["image"], "nginx:1.27");
    // Garbage is allowed with a warning; fail-closed denies it.
    let (_, body) = https_request(addr, &certified.cert, post("/mutate", "{\"nope\": 1}")).await;
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"]["warnings"][0]
        .as_str()
        .unwrap()
        .contains("not injected"));
    let (_, body) = https_request(
        addr,
        &certified.cert,
        post("/mutate/fail-closed", "{\"nope\": 1}"),
    )
    .await;
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], false);
    // An oversized body is refused (checked on the router itself: over a socket the server
    // closes mid-upload and the client sees a reset instead of the 413).
    {
        use tower::ServiceExt;
        let request = axum::http::Request::post("/mutate")
            .body(axum::body::Body::from(vec![b'x'; 4 << 20]))
            .unwrap();
        let router = dnslens::inject::webhook::router(dnslens::inject::InjectConfig {
            upstreams: vec!["10.96.0.10".into()],
            ..Default::default()
        });
        let response = router.oneshot(request).await.unwrap();
        assert_eq!(response.status(), 413);
    }
    let (status, metrics) = https_request(
        addr,
        &certified.cert,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("dnslens_webhook_requests_total{result=\"injected\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dnslens_webhook_requests_total{result=\"error\"} 2"),
        "{metrics}"
    );

    // A rotation: a broken pair is refused (the old certificate keeps serving), then a new
    // valid pair is served without a restart.
    std::fs::write(&key_file, "not a key").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (status, _) = https_request(addr, &certified.cert, get_healthz()).await;
    assert_eq!(status, 200, "the previous certificate still serves");
    let rotated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(&cert_file, rotated.cert.pem()).unwrap();
    std::fs::write(&key_file, rotated.signing_key.serialize_pem()).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (status, metrics) = https_request(
        addr,
        &rotated.cert,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert_eq!(status, 200, "the rotated certificate serves");
    for series in [
        "dnslens_webhook_certificate_reloads_total{result=\"ok\"} 1",
        "dnslens_webhook_certificate_reloads_total{result=\"error\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
    assert!(
        try_https(addr, &certified.cert, get_healthz())
            .await
            .is_err(),
        "the old certificate is no longer presented"
    );
}

fn get_healthz() -> String {
    "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into()
}

/// The chart's README lists every value (a leaf of values.yaml, or a whole `resources` or
/// `nodeSelector` map), so a new value cannot go undocumented.
#[test]
fn the_chart_readme_documents_every_value() {
    let chart = repo().join("helm/dnslens");
    let values: Value =
        dnslens::yaml::from_str(&std::fs::read_to_string(chart.join("values.yaml")).unwrap())
            .unwrap();
    let readme = std::fs::read_to_string(chart.join("README.md")).unwrap();
    fn leaves(value: &Value, path: &str, out: &mut Vec<String>) {
        match value {
            Value::Object(map)
                if !map.is_empty() && !path.ends_with("resources") && path != "nodeSelector" =>
            {
                for (key, child) in map {
                    let child_path = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    leaves(child, &child_path, out);
                }
            }
            _ => out.push(path.to_string()),
        }
    }
    let mut paths = Vec::new();
    leaves(&values, "", &mut paths);
    assert!(paths.len() > 50, "{paths:?}");
    let missing: Vec<&String> = paths
        .iter()
        .filter(|p| !readme.contains(&format!("| `{p}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "values missing from helm/dnslens/README.md: {missing:?}"
    );
}

/// The knobs a platform team expects from the CoreDNS chart: updates that surge on a tenth of
/// the nodes at once, extra env and args, replaceable security contexts, a name override, an
/// image pinned by digest, resources on every container, the webhook spread over nodes.
#[test]
fn chart_knobs_as_in_the_coredns_chart() {
    // The defaults.
    let docs = render(&["--set", "mode=node-local", "--set", "clusterDNS=10.96.0.10"]);
    let ds = find(&docs, "DaemonSet", "dns");
    assert_eq!(
        ds["spec"]["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "10%"}})
    );
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["securityContext"]["sysctls"][0]["name"],
        "net.ipv4.ip_unprivileged_port_start"
    );
    assert_eq!(
        pod["containers"][0]["securityContext"]["runAsNonRoot"],
        true
    );

    // Every knob set.
    let digest = format!("sha256:{}", "ab".repeat(32));
    let docs = render(&[
        "--set",
        "mode=node-local",
        "--set",
        "clusterDNS=10.96.0.10",
        "--set",
        "nodeLocal.exposure=linkLocal",
        "--set",
        "fullnameOverride=node-dns",
        "--set",
        &format!("image.digest={digest}"),
        "--set",
        "nodeLocal.updateStrategy.rollingUpdate.maxSurge=25%",
        "--set",
        "nodeLocal.extraArgs[0]=--upstream-timeout",
        "--set",
        "nodeLocal.extraArgs[1]=1s",
        "--set",
        "nodeLocal.env[0].name=RUST_LOG",
        "--set",
        "nodeLocal.env[0].value=debug",
        "--set",
        "nodeLocal.securityContext.runAsUser=0",
        "--set",
        "nodeLocal.podSecurityContext.fsGroup=2000",
    ]);
    let ds = find(&docs, "DaemonSet", "node-dns");
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"],
        "25%"
    );
    let pod = &ds["spec"]["template"]["spec"];
    let dnslens = &pod["containers"][0];
    assert_eq!(
        dnslens["image"],
        format!("ghcr.io/dnslens/dnslens@{digest}")
    );
    let args = dnslens["args"].as_array().unwrap();
    assert_eq!(
        &args[args.len() - 2..],
        [json!("--upstream-timeout"), json!("1s")]
    );
    assert!(dnslens["env"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": "RUST_LOG", "value": "debug"})));
    assert_eq!(dnslens["securityContext"], json!({"runAsUser": 0}));
    assert_eq!(pod["securityContext"], json!({"fsGroup": 2000}));
    // Resources on every container, the setup containers too.
    for container in pod["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(pod["containers"].as_array().unwrap())
    {
        assert!(
            container["resources"]["requests"]["memory"].is_string(),
            "{}",
            container["name"]
        );
        assert!(container["resources"]["limits"]["memory"].is_string());
    }
    find(&docs, "ConfigMap", "node-dns");
    find(&docs, "ServiceAccount", "node-dns");

    // The webhook's replicas spread over nodes by default.
    let docs = render(&["--set", "clusterDNS=10.96.0.10"]);
    let webhook = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("the webhook Deployment");
    let spread = &webhook["spec"]["template"]["spec"]["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(spread["whenUnsatisfiable"], "ScheduleAnyway");
    assert_eq!(
        spread["labelSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "webhook"
    );
    // The chart's pull secrets reach the injected pods through the injector's settings.
    let docs = render(&[
        "--set",
        "clusterDNS=10.96.0.10",
        "--set",
        "imagePullSecrets[0].name=regcred",
    ]);
    let inject: dnslens::inject::InjectConfig = dnslens::yaml::from_str(
        find(&docs, "ConfigMap", "dns")["data"]["inject.yaml"]
            .as_str()
            .unwrap(),
    )
    .expect("inject.yaml is an InjectConfig");
    assert_eq!(inject.image_pull_secrets, ["regcred"]);
    // A digest that is not one is refused by the schema.
    let (ok, _, stderr) = run_helm_template(
        &repo().join("helm/dnslens"),
        &[
            "--set",
            "image.digest=latest",
            "--set",
            "clusterDNS=10.96.0.10",
        ],
    );
    assert!(!ok && stderr.contains("digest"), "{stderr}");
}
