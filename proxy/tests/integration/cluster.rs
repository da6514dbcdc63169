//! The chart and the webhook in a real control plane (`control_plane`: etcd and
//! kube-apiserver built from their modules): every object of both modes and every exposure
//! accepted by server-side apply with strict field validation (the Prometheus Operator's
//! real CRDs installed, so PodMonitor and PrometheusRule are checked against their schemas
//! too), an upgrade with changed values, an uninstall that leaves nothing; the API server
//! calling the chart's MutatingWebhookConfiguration on pod creation, with the webhook up
//! and down; and what the chart's ServiceAccount may do, asked of the API server's own
//! authorizer with SubjectAccessReviews.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::control_plane::*;
use crate::harness::*;
use crate::kubernetes::{inject_cli, run_helm_template, yaml_documents};

/// The release name every render uses (see `run_helm_template`).
const RELEASE: &str = "dns";

/// Renders the chart for the control plane's Kubernetes version, without cert-manager (the
/// chart then makes its own CA), with the monitoring objects; the YAML.
fn render_for_cluster(namespace: &str, args: &[&str]) -> String {
    let version = built("kube-apiserver");
    let version = version
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("kube-apiserver-v"))
        .expect("the binary's name carries its version")
        .to_string();
    let mut all = vec![
        "--namespace",
        namespace,
        "--kube-version",
        &version,
        "--without-api",
        "cert-manager.io/v1",
        "--set",
        "metrics.podMonitor.enabled=true",
        "--set",
        "clusterDNS=10.96.0.10",
    ];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = run_helm_template(&repo().join("helm/dnslens"), &all);
    assert!(ok, "helm-template {args:?} failed:\n{stderr}");
    stdout
}

/// A control plane with the Prometheus Operator's CRDs: the chart's PodMonitors and
/// PrometheusRule are checked against their real schemas.
fn cluster() -> ControlPlane {
    let cp = ControlPlane::start();
    install_monitoring_crds(&cp);
    cp
}

fn install_monitoring_crds(cp: &ControlPlane) {
    let dir = built("crds");
    let mut yaml = String::new();
    for entry in std::fs::read_dir(&dir).expect("CRD directory") {
        yaml.push_str(&std::fs::read_to_string(entry.expect("entry").path()).expect("CRD"));
        yaml.push_str("\n---\n");
    }
    cp.apply_strict(&yaml)
        .expect("the Prometheus Operator's CRDs apply");
    cp.kubectl(
        &[
            "wait",
            "--for=condition=Established",
            "crd",
            "--all",
            "--timeout=60s",
        ],
        "",
    );
}

/// Every object of the release still in the cluster (any kind the server can list).
fn leftovers(cp: &ControlPlane) -> Vec<String> {
    let kinds = cp.kubectl(&["api-resources", "--verbs=list", "-o", "name"], "");
    let kinds: Vec<&str> = kinds
        .lines()
        .filter(|k| !k.is_empty() && *k != "events" && *k != "events.events.k8s.io")
        .collect();
    let selector = format!("app.kubernetes.io/instance={RELEASE}");
    cp.kubectl(
        &["get", &kinds.join(","), "-A", "-l", &selector, "-o", "name"],
        "",
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// `kind/name` of every object in a rendered manifest.
fn objects(yaml: &str) -> Vec<String> {
    let mut names: Vec<String> = yaml_documents(yaml)
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap_or("?").to_lowercase(),
                d["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    names.sort();
    names
}

#[test]
fn the_chart_applies_strictly_upgrades_and_uninstalls_in_both_modes_and_every_exposure() {
    let cp = cluster();
    cp.namespace("dnslens-system", &[]);
    // Every upgrade also turns tracing on, which shows in the config the pods read.
    let cases: [(&str, &str, &[&str], &[&str]); 4] = [
        (
            "sidecar",
            "dnslens-system",
            &["--set", "mode=sidecar"],
            &["--set", "sidecar.webhook.replicas=3"],
        ),
        (
            "node-local, Service exposure",
            "kube-system",
            &[
                "--set",
                "mode=node-local",
                "--set",
                "nodeLocal.exposure=service",
            ],
            &[
                "--set",
                "cache.maxEntries=5000",
                "--set",
                "nodeLocal.rateLimitPerClient=200",
                "--set",
                "dnstap.socket=tcp://vector.logging:6000",
            ],
        ),
        (
            "node-local, link-local",
            "kube-system",
            &[
                "--set",
                "mode=node-local",
                "--set",
                "nodeLocal.exposure=linkLocal",
            ],
            &[
                "--set",
                "cache.maxEntries=5000",
                "--set",
                "dnstap.socket=/var/run/dnstap/dnstap.sock",
                "--set",
                "tracing.backend=jaeger=http://jaeger-query.observability:16686",
                "--set",
                "nodeLocal.extraArgs[0]=--upstream-timeout",
                "--set",
                "nodeLocal.extraArgs[1]=1s",
                "--set",
                "nodeLocal.env[0].name=RUST_LOG",
                "--set",
                "nodeLocal.env[0].value=info",
                "--set",
                "nodeLocal.updateStrategy.rollingUpdate.maxSurge=25%",
                "--set",
                "tracing.resourceAttributes.k8s\\.cluster\\.name=prod",
            ],
        ),
        (
            "node-local, link-local intercepting the cluster DNS IP",
            "kube-system",
            &[
                "--set",
                "mode=node-local",
                "--set",
                "nodeLocal.exposure=linkLocal",
                "--set",
                "nodeLocal.linkLocal.interceptClusterDNS=true",
            ],
            &["--set", "nodeLocal.rateLimitPerClient=200"],
        ),
    ];
    for (case, namespace, install, upgrade) in cases {
        let first = render_for_cluster(namespace, install);
        cp.apply_strict(&first)
            .unwrap_or_else(|e| panic!("{case}: install refused:\n{e}"));
        // Every rendered object is in the cluster.
        let mut present: Vec<String> = cp
            .kubectl(&["get", "-f", "-", "-o", "name"], &first)
            .lines()
            .map(|l| {
                let (kind, name) = l.split_once('/').expect("kind/name");
                let kind = kind.split('.').next().unwrap_or(kind);
                format!("{kind}/{name}")
            })
            .collect();
        present.sort();
        assert_eq!(present, objects(&first), "{case}");

        let mut with_upgrade = install.to_vec();
        with_upgrade.extend_from_slice(upgrade);
        with_upgrade.extend(["--set", "tracing.endpoint=http://otel.observability:4317"]);
        let second = render_for_cluster(namespace, &with_upgrade);
        cp.apply_strict(&second)
            .unwrap_or_else(|e| panic!("{case}: upgrade refused:\n{e}"));
        let config = yaml_documents(&second)
            .into_iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["namespace"] == namespace)
            .expect("the chart's ConfigMap");
        let name = config["metadata"]["name"].as_str().expect("name");
        let live = cp.kubectl_json(&["get", "configmap", "-n", namespace, name], "");
        assert_eq!(live["data"], config["data"], "{case}: the upgrade's config");
        assert!(
            serde_json::to_string(&live["data"])
                .unwrap()
                .contains("otel.observability:4317"),
            "{case}"
        );

        cp.kubectl(&["delete", "-f", "-", "--wait=true"], &second);
        assert_eq!(leftovers(&cp), Vec::<String>::new(), "{case}: uninstall");
    }
}

/// A pod as a user or a ReplicaSet controller would create it.
fn app_pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "containers": [{
                "name": "app",
                "image": "registry.example/app:1",
                "command": ["sleep", "infinity"],
            }],
        },
    })
}

/// The webhook's config file and its `dnslens webhook` process on 127.0.0.1, with a
/// certificate for that address.
struct Webhook {
    port: u16,
    ca: std::path::PathBuf,
    config: std::path::PathBuf,
    process: Option<Child>,
    _dir: TempDir,
}

impl Webhook {
    fn start(inject_yaml: &str) -> Webhook {
        let dir = TempDir::new("webhook");
        let (ca, crt, key) = loopback_certificate(&dir.0);
        let config = dir.0.join("inject.yaml");
        std::fs::write(&config, inject_yaml).unwrap();
        let port = free_port();
        let process = Child(
            Command::new(env!("CARGO_BIN_EXE_dnslens"))
                .arg("webhook")
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .arg("--tls-cert")
                .arg(&crt)
                .arg("--tls-key")
                .arg(&key)
                .arg("--config")
                .arg(&config)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("dnslens webhook starts"),
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "webhook not listening"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Webhook {
            port,
            ca,
            config,
            process: Some(process),
            _dir: dir,
        }
    }

    /// `dnslens_webhook_requests_total{result}` from its /metrics.
    fn requests(&self, result: &str) -> f64 {
        let out = Command::new("curl")
            .args(["-fsS", "--cacert"])
            .arg(&self.ca)
            .arg(format!("https://127.0.0.1:{}/metrics", self.port))
            .output()
            .expect("curl must be installed");
        assert!(out.status.success(), "webhook /metrics");
        series_value(
            &String::from_utf8_lossy(&out.stdout),
            &format!("dnslens_webhook_requests_total{{result=\"{result}\"}}"),
        )
    }

    fn stop(&mut self) {
        self.process.take();
    }
}

/// Points the chart's webhook entries at the loopback webhook (the API server cannot reach
/// a Service here: there is no kube-proxy); everything else stays the chart's.
fn point_webhooks_at(cp: &ControlPlane, configuration: &Value, webhook: &Webhook) {
    use base64::Engine;
    let name = configuration["metadata"]["name"].as_str().expect("name");
    let ca = std::fs::read(&webhook.ca).unwrap();
    let ca = base64::engine::general_purpose::STANDARD.encode(ca);
    let patch: Vec<Value> = configuration["webhooks"]
        .as_array()
        .expect("webhooks")
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let path = entry["clientConfig"]["service"]["path"]
                .as_str()
                .expect("path");
            json!({
                "op": "replace",
                "path": format!("/webhooks/{i}/clientConfig"),
                "value": {"url": format!("https://127.0.0.1:{}{path}", webhook.port), "caBundle": ca},
            })
        })
        .collect();
    cp.kubectl(
        &[
            "patch",
            "mutatingwebhookconfiguration",
            name,
            "--type=json",
            "-p",
            &patch_json(&patch),
        ],
        "",
    );
}

fn patch_json(patch: &[Value]) -> String {
    serde_json::to_string(patch).expect("JSON")
}

/// What `dnslens inject` writes for `pod` in `namespace`, with the chart's injector config,
/// defaulted by the API server (a server-side dry run in a namespace the webhook leaves
/// alone) so it compares with what the webhook's pod became.
fn injected_by_the_cli(cp: &ControlPlane, pod: &Value, namespace: &str, config: &Path) -> Value {
    let yaml = dnslens::yaml::to_string(pod).unwrap();
    let (out, report) = inject_cli(
        &yaml,
        &[
            "--namespace",
            namespace,
            "--config",
            config.to_str().unwrap(),
        ],
    );
    assert!(report.contains("injected"), "{report}");
    cp.kubectl_json(
        &["create", "--dry-run=server", "-n", "plain", "-f", "-"],
        &out,
    )
}

/// The parts of a pod the injection writes (and the API server defaults).
fn injected_parts(pod: &Value) -> Value {
    let spec = &pod["spec"];
    json!({
        "initContainers": spec["initContainers"],
        "containers": spec["containers"],
        "volumes": spec["volumes"],
        "dnsConfig": spec["dnsConfig"],
        "dnsPolicy": spec["dnsPolicy"],
        "labels": pod["metadata"]["labels"],
        "annotations": pod["metadata"]["annotations"],
    })
}

#[test]
fn the_api_server_calls_the_charts_webhook_and_pods_come_back_injected_as_the_cli_writes_them() {
    let cp = cluster();
    cp.namespace("dnslens-system", &[]);
    let manifest = render_for_cluster("dnslens-system", &["--set", "mode=sidecar"]);
    cp.apply_strict(&manifest).expect("the chart applies");
    let docs = yaml_documents(&manifest);
    let config_map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["data"]["inject.yaml"].is_string())
        .expect("the injector's ConfigMap");
    let configuration = docs
        .iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .expect("the chart's MutatingWebhookConfiguration");
    let mut webhook = Webhook::start(config_map["data"]["inject.yaml"].as_str().unwrap());
    point_webhooks_at(&cp, configuration, &webhook);
    cp.namespace("app", &["dnslens.io/inject=enabled"]);
    cp.namespace("plain", &[]);
    cp.namespace(
        "strict",
        &["dnslens.io/inject=enabled", "dnslens.io/fail-closed=true"],
    );

    // A pod in an opted-in namespace: injected by the API server's call, exactly as the CLI.
    let pod = app_pod("web");
    let created = cp.kubectl_json(&["create", "-n", "app", "-f", "-"], &pod.to_string());
    let expected = injected_by_the_cli(&cp, &pod, "app", &webhook.config);
    assert_eq!(injected_parts(&created), injected_parts(&expected));
    assert_eq!(created["spec"]["initContainers"][0]["name"], "dnslens");
    assert_eq!(
        created["spec"]["dnsConfig"]["searches"][0],
        "app.svc.cluster.local"
    );
    assert_eq!(webhook.requests("injected"), 1.0);

    // A Deployment: accepted as it is (the webhook sees pods only); the pod its ReplicaSet
    // controller would create from the template comes back injected as the CLI writes it.
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "api"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "api"}},
            "template": {"metadata": {"labels": {"app": "api"}}, "spec": app_pod("api")["spec"]},
        },
    });
    let stored = cp.kubectl_json(&["create", "-n", "app", "-f", "-"], &deployment.to_string());
    assert!(stored["spec"]["template"]["spec"]["initContainers"].is_null());
    let uid = stored["metadata"]["uid"].as_str().expect("uid");
    let mut replica = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "api-5d8f-",
            "labels": {"app": "api"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-5d8f", "uid": uid, "controller": true}],
        },
        "spec": deployment["spec"]["template"]["spec"],
    });
    let created = cp.kubectl_json(&["create", "-n", "app", "-f", "-"], &replica.to_string());
    replica["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("ownerReferences");
    let expected = injected_by_the_cli(&cp, &replica, "app", &webhook.config);
    assert_eq!(injected_parts(&created), injected_parts(&expected));
    assert_eq!(webhook.requests("injected"), 2.0);

    // An unlabelled namespace: the API server never calls the webhook.
    let created = cp.kubectl_json(
        &["create", "-n", "plain", "-f", "-"],
        &app_pod("plain").to_string(),
    );
    assert!(created["spec"]["initContainers"].is_null());
    assert_eq!(created["spec"]["containers"].as_array().unwrap().len(), 1);

    // A server-side dry run is injected in its answer, and counted as a dry run only.
    let dry = cp.kubectl_json(
        &["create", "--dry-run=server", "-n", "app", "-f", "-"],
        &app_pod("dry").to_string(),
    );
    assert_eq!(dry["spec"]["initContainers"][0]["name"], "dnslens");
    assert_eq!(webhook.requests("dry_run"), 1.0);
    assert_eq!(webhook.requests("injected"), 2.0);

    // The fail-closed namespace injects too while the webhook is up.
    let created = cp.kubectl_json(
        &["create", "-n", "strict", "-f", "-"],
        &app_pod("strict-up").to_string(),
    );
    assert_eq!(created["spec"]["initContainers"][0]["name"], "dnslens");

    // The webhook down: opted-in pods are created without the sidecar (failurePolicy
    // Ignore), which the API server counts and DNSLensInjectionSkipped alerts on; the
    // fail-closed namespace refuses, saying why.
    webhook.stop();
    let fail_open = |cp: &ControlPlane| {
        series_in(
            &cp.apiserver_metrics(),
            "apiserver_admission_webhook_fail_open_count{name=\"inject.dnslens.io\",type=\"admit\"}",
        )
        .unwrap_or(0.0)
    };
    assert_eq!(fail_open(&cp), 0.0);
    let created = cp.kubectl_json(
        &["create", "-n", "app", "-f", "-"],
        &app_pod("while-down").to_string(),
    );
    assert!(created["spec"]["initContainers"].is_null());
    assert_eq!(fail_open(&cp), 1.0);
    let refused = cp.kubectl_output(
        &["create", "-n", "strict", "-f", "-"],
        &app_pod("strict-down").to_string(),
    );
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("failed calling webhook \"fail-closed.inject.dnslens.io\""),
        "{message}"
    );
    let missing = cp.kubectl_output(&["get", "pod", "-n", "strict", "strict-down"], "");
    assert!(!missing.status.success(), "the refused pod does not exist");
}

#[test]
fn the_charts_service_account_may_do_what_dnslens_needs_and_nothing_more() {
    let cp = cluster();
    for (mode, namespace) in [("sidecar", "dnslens-system"), ("node-local", "kube-system")] {
        if namespace != "kube-system" {
            cp.namespace(namespace, &[]);
        }
        let manifest = render_for_cluster(namespace, &["--set", &format!("mode={mode}")]);
        cp.apply_strict(&manifest).expect("the chart applies");
        let account = yaml_documents(&manifest)
            .into_iter()
            .find(|d| d["kind"] == "ServiceAccount")
            .expect("the chart's ServiceAccount");
        let user = format!(
            "system:serviceaccount:{namespace}:{}",
            account["metadata"]["name"].as_str().unwrap()
        );
        let may = |verb: &str, resource: &str, ns: Option<&str>| -> bool {
            let mut attributes = json!({"verb": verb, "resource": resource});
            if let Some(ns) = ns {
                attributes["namespace"] = json!(ns);
            }
            let review = json!({
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": user,
                    "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}"), "system:authenticated"],
                    "resourceAttributes": attributes,
                },
            });
            let answer = cp.kubectl_json(&["create", "-f", "-"], &review.to_string());
            answer["status"]["allowed"] == json!(true)
        };
        let needs = pod_identity_rules(mode);
        for (verb, resource) in needs {
            assert!(may(verb, resource, None), "{mode}: {verb} {resource}");
        }
        for (verb, resource, ns) in [
            ("get", "secrets", Some(namespace)),
            ("list", "secrets", None),
            ("create", "pods", Some("default")),
            ("delete", "pods", Some("default")),
            ("patch", "pods", Some("default")),
            ("update", "configmaps", Some(namespace)),
            ("list", "nodes", None),
            ("create", "mutatingwebhookconfigurations", None),
            ("list", "services", None),
        ] {
            assert!(!may(verb, resource, ns), "{mode} may {verb} {resource}");
        }
        if needs.is_empty() {
            assert!(!may("list", "pods", None), "{mode} may list pods");
            assert!(!may("watch", "pods", None), "{mode} may watch pods");
        }
        cp.kubectl(&["delete", "-f", "-", "--wait=true"], &manifest);
    }
}

/// What the chart's ServiceAccount needs per mode: node-local watches the pods of its node
/// (pod identity); a sidecar's webhook needs no API access.
fn pod_identity_rules(mode: &str) -> &'static [(&'static str, &'static str)] {
    match mode {
        "node-local" => &[("list", "pods"), ("watch", "pods"), ("get", "pods")],
        _ => &[],
    }
}

/// Prometheus's alerts in `state` named `alert`, from its API.
async fn alerts_in_state(api: std::net::SocketAddr, alert: &str, state: &str) -> Vec<Value> {
    let (_, body) = http_get(api, "/api/v1/alerts").await;
    let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    parsed["data"]["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["labels"]["alertname"] == alert && a["state"] == state)
        .collect()
}

/// A plain Prometheus (3.x, built from its module: Debian's has no Kubernetes discovery), as a
/// cluster runs it without the Operator: `config/prometheus-scrape.yaml`
/// (kubernetes_sd_configs, role pod, the pods' prometheus.io annotations) against the real
/// API server, and `config/alerts.yaml`. The chart's node-local DaemonSet (link-local, the
/// hostNetwork pods that declare no ports) is applied, two of its pods made from its
/// template on two nodes with podIPs on loopback where real dnslens processes serve their
/// metrics: Prometheus must discover and scrape both with the labels the alerts aggregate
/// by; the musl trap (a real musl client) makes the trap alert active for that namespace
/// and workload; a stopped
/// dnslens makes DNSLensDown active; with no dnslens pod left, DNSLensTargetsMissing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_prometheus_discovers_the_charts_node_local_pods_and_fires_the_alerts() {
    use dnslens::demo::{NDOTS, SEARCH};
    use std::time::Duration;

    let cp = cluster();
    let manifest = render_for_cluster(
        "kube-system",
        &[
            "--set",
            "mode=node-local",
            "--set",
            "nodeLocal.exposure=linkLocal",
        ],
    );
    cp.apply_strict(&manifest).expect("the chart applies");
    let daemonset = yaml_documents(&manifest)
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("the DaemonSet");
    let port = daemonset["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]
        .as_str()
        .expect("scrape annotations")
        .to_string();
    // Two of its pods, as the DaemonSet controller and the kubelets would make them, and a
    // real dnslens behind each podIP.
    let mut worlds = Vec::new();
    for (node, ip) in [("node-1", "127.0.0.21"), ("node-2", "127.0.0.22")] {
        let mut pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": daemonset["spec"]["template"]["metadata"],
            "spec": daemonset["spec"]["template"]["spec"],
        });
        pod["metadata"]["name"] = json!(format!("dns-{node}"));
        pod["metadata"]["namespace"] = json!("kube-system");
        pod["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "apps/v1", "kind": "DaemonSet", "name": daemonset["metadata"]["name"],
            "uid": "00000000-0000-0000-0000-000000000002", "controller": true,
        }]);
        pod["spec"]["nodeName"] = json!(node);
        cp.create_running(&pod, ip);
        let metrics: std::net::SocketAddr = format!("{ip}:{port}").parse().unwrap();
        worlds.push(
            World::start_with(|c| {
                c.admin.listen = metrics;
                // Port 53 on the pod's address: a real resolver (musl's) can only ask there.
                c.listen = vec![format!("{ip}:53").parse().unwrap()];
                c.search.list = SEARCH.iter().map(|s| s.to_string()).collect();
                c.search.ndots = Some(NDOTS as u32);
                c.lookup.window = Duration::from_millis(300);
            })
            .await,
        );
    }

    // Prometheus with the documented scrape job, pointed at this API server.
    let dir = TempDir::new("prometheus-sd");
    let mut jobs: Value = dnslens::yaml::from_str(
        &std::fs::read_to_string(repo().join("config/prometheus-scrape.yaml")).unwrap(),
    )
    .unwrap();
    for job in jobs.as_array_mut().expect("a list of scrape jobs") {
        job["scrape_interval"] = json!("1s");
        for sd in job["kubernetes_sd_configs"].as_array_mut().unwrap() {
            sd["api_server"] = json!(cp.env["KUBE_APISERVER"]);
            sd["tls_config"] = json!({
                "ca_file": cp.dir.0.join("pki/ca.crt"),
                "cert_file": cp.dir.0.join("pki/admin.crt"),
                "key_file": cp.dir.0.join("pki/admin.key"),
            });
        }
    }
    let config = json!({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [repo().join("config/alerts.yaml")],
        "scrape_configs": jobs,
    });
    std::fs::write(dir.0.join("prometheus.yml"), config.to_string()).unwrap();
    // Built from its module by control-plane.sh: Debian's Prometheus has no Kubernetes
    // service discovery.
    let (_prometheus, api) = crate::prometheus::start_prometheus(built("prometheus"), &dir.0);

    // Both pods discovered and scraped, labelled for the alerts.
    crate::prometheus::wait_until(Duration::from_secs(60), || async {
        let (_, body) = http_get(api, "/api/v1/targets?state=active").await;
        let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let up: Vec<&Value> = parsed["data"]["activeTargets"]
            .as_array()
            .map(|t| t.iter().filter(|t| t["health"] == "up").collect())
            .unwrap_or_default();
        up.len() == 2
    })
    .await;
    let (_, body) = http_get(api, "/api/v1/targets?state=active").await;
    let parsed: Value = serde_json::from_str(&body).unwrap();
    let mut targets: Vec<(String, String, String, String)> = parsed["data"]["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let l = &t["labels"];
            let s = |k: &str| l[k].as_str().unwrap_or("").to_string();
            (s("instance"), s("namespace"), s("workload"), s("node"))
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        [
            (
                format!("127.0.0.21:{port}"),
                "kube-system".into(),
                "dns".into(),
                "node-1".into()
            ),
            (
                format!("127.0.0.22:{port}"),
                "kube-system".into(),
                "dns".into(),
                "node-2".into()
            ),
        ]
    );

    // The musl trap through the first: its alert becomes active for that workload (pending:
    // it fires after its `for`, which the promtool tests cover).
    crate::prometheus::wait_until(Duration::from_secs(30), || async {
        let (_, body) = http_get(
            api,
            "/api/v1/query?query=dnslens_anomalies_total%7Bkind%3D%22empty_noerror_search%22%7D",
        )
        .await;
        body.matches("\"value\"").count() == 2
    })
    .await;
    // A real musl client (static getaddrinfo) with a pod's resolv.conf naming the first
    // dnslens, in a mount namespace of its own (the network is the test's: loopback).
    let client_dir = TempDir::new("musl-client");
    let musl = crate::namespaces::musl_client(&client_dir.0);
    let resolv = client_dir.0.join("resolv.conf");
    std::fs::write(
        &resolv,
        format!(
            "nameserver {}\nsearch {}\noptions ndots:{NDOTS}\n",
            worlds[0].dns().ip(),
            SEARCH.join(" ")
        ),
    )
    .unwrap();
    let lookup = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount --bind '{}' /etc/resolv.conf && '{}' alauda.cn",
            resolv.display(),
            musl.display()
        ))
        .output()
        .expect("unshare (util-linux) runs");
    let said = String::from_utf8_lossy(&lookup.stdout);
    assert_eq!(
        lookup.status.code(),
        Some(2),
        "musl falls into the trap: {said}"
    );
    assert!(said.contains("error:"), "{said}");
    crate::prometheus::wait_until(Duration::from_secs(30), || async {
        !alerts_in_state(api, "DNSLensEmptyNoerrorBreakingClients", "pending")
            .await
            .is_empty()
    })
    .await;
    let trap = alerts_in_state(api, "DNSLensEmptyNoerrorBreakingClients", "pending").await;
    assert_eq!(trap.len(), 1);
    assert_eq!(trap[0]["labels"]["namespace"], "kube-system");
    assert_eq!(trap[0]["labels"]["workload"], "dns");
    assert!(alerts_in_state(api, "DNSLensTargetsMissing", "pending")
        .await
        .is_empty());

    // The second dnslens stops: its target is down.
    let second = worlds.pop().unwrap();
    second.stop().await;
    crate::prometheus::wait_until(Duration::from_secs(30), || async {
        !alerts_in_state(api, "DNSLensDown", "pending")
            .await
            .is_empty()
    })
    .await;
    let down = alerts_in_state(api, "DNSLensDown", "pending").await;
    assert_eq!(down[0]["labels"]["namespace"], "kube-system");
    assert_eq!(
        down[0]["value"].as_str().map(|v| v.parse::<f64>().unwrap()),
        Some(1.0)
    );

    // No dnslens pod left to discover: nothing to be down, and the absence alerts.
    cp.kubectl(
        &[
            "delete",
            "pods",
            "-n",
            "kube-system",
            "--all",
            "--grace-period=0",
            "--force",
        ],
        "",
    );
    crate::prometheus::wait_until(Duration::from_secs(60), || async {
        !alerts_in_state(api, "DNSLensTargetsMissing", "pending")
            .await
            .is_empty()
    })
    .await;
    for world in worlds {
        world.stop().await;
    }
}
