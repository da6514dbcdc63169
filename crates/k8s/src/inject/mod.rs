//! Sidecar injection: adds dnslens to a pod (or a workload's pod template) and points the
//! pod's DNS at it. One function, [`inject`], serves both `dnslens inject` (offline, on
//! YAML) and `dnslens webhook` (a mutating admission webhook, see [`webhook`]).
//!
//! What an injected pod gets:
//! - a `dnslens` container on 127.0.0.1:53, upstream the cluster DNS service, with the
//!   pod's search list and ndots (for lookup correlation and traces), tracing settings, the
//!   downward-API variables behind the `k8s.*` resource attributes, a readiness probe on
//!   `/readyz`, small resources, and a locked-down securityContext (non-root, only
//!   `NET_BIND_SERVICE`, read-only root filesystem, no privilege escalation, seccomp
//!   RuntimeDefault). A native sidecar: an init container with `restartPolicy: Always`,
//!   started before and stopped after the app — so Kubernetes 1.29+ (`kube_version`) is
//!   required: before it the sidecar would be a regular container and a Job's pod would
//!   never complete, so injection for an older cluster is refused, not done wrong.
//! - the pod sysctl `net.ipv4.ip_unprivileged_port_start: "53"` (merged with its own): a
//!   strict runtime gives a non-root container no effective capability from `add`, and
//!   `no_new_privs` voids file capabilities, so this is what lets the sidecar bind :53
//!   (tested with the image under runc in `tests/integration/image.rs`).
//! - `dnsPolicy: None` and a `dnsConfig` reproducing what `ClusterFirst` gives —
//!   nameserver 127.0.0.1, searches `<ns>.svc.<cluster_domain> svc.<cluster_domain>
//!   <cluster_domain>`, `ndots:5` — plus whatever `dnsConfig` the pod already had (its
//!   nameservers after 127.0.0.1, its searches after ours, its options kept).
//! - the annotation and label `dnslens.io/injected: "true"` (the chart's PodMonitor selects
//!   the label).
//!
//! Skipped, with the reason: pods annotated `dnslens.io/inject: disabled`, `hostNetwork`
//! pods (they use the node's DNS, and 127.0.0.1:53 is the node's), pods with
//! `dnsPolicy: Default` or `None` (they do not use cluster DNS). Injecting twice changes
//! nothing. Per-pod annotations override the config: `dnslens.io/upstream` (comma-separated
//! IPs), `dnslens.io/tracing-endpoint`, `dnslens.io/sample-ratio`, `dnslens.io/cache`,
//! `dnslens.io/musl-shield`, `dnslens.io/autopath` (`"true"`/`"false"`).
//!
//! Config keys ([`InjectConfig`], YAML for `--config`, or flags): `image`,
//! `image_pull_policy`, `image_pull_secrets`, `upstreams` (the cluster DNS Service's IP — never guessed:
//! `dnslens inject` requires it, `dnslens webhook` falls back to its own pod's resolv.conf,
//! which is the cluster DNS under `ClusterFirst`), `cluster_domain`, `kube_version`, `tracing_endpoint`,
//! `sample_ratio`, `resource_attributes`, `cache`, `musl_shield`, `autopath`, `metrics_port`, `run_as_user`,
//! `resources`. No metrics (the webhook's are in [`webhook`]).

pub mod webhook;

use serde::Deserialize;
use serde_json::{json, Map, Value};

pub const CONTAINER: &str = "dnslens";
pub const ANNOTATION_INJECT: &str = "dnslens.io/inject";
pub const ANNOTATION_INJECTED: &str = "dnslens.io/injected";
/// The first Kubernetes minor version with native sidecars on by default.
const NATIVE_SIDECAR_MINOR: u32 = 29;

/// Why injection failed (the input is not what Kubernetes would accept).
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("{kind} {name}: {message}")]
    Invalid {
        kind: String,
        name: String,
        message: String,
    },
    #[error("input is not Kubernetes YAML: {0}")]
    Yaml(String),
    #[error("kube_version '{0}' is not MAJOR.MINOR")]
    KubeVersion(String),
    #[error(
        "Kubernetes {0} has no native sidecars: dnslens needs 1.29 or newer (a sidecar in a regular container would keep Jobs from completing)"
    )]
    KubeTooOld(String),
}

/// What became of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    /// It already has the sidecar: left unchanged.
    AlreadyInjected,
    /// Left unchanged on purpose, for this reason.
    Skipped(String),
    /// Not a pod or a workload with a pod template.
    NotAWorkload,
}

/// Container resources (Kubernetes quantities).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    pub requests_cpu: String,
    pub requests_memory: String,
    pub limits_cpu: Option<String>,
    pub limits_memory: String,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            requests_cpu: "10m".into(),
            requests_memory: "16Mi".into(),
            limits_cpu: None,
            limits_memory: "128Mi".into(),
        }
    }
}

/// How to inject: plain data, from `--config` YAML (webhook ConfigMap) and flags.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InjectConfig {
    pub image: String,
    pub image_pull_policy: String,
    /// Secrets the kubelet needs to pull `image` (the chart's `imagePullSecrets`), added to
    /// each injected pod's own.
    pub image_pull_secrets: Vec<String>,
    /// The cluster DNS service (kube-dns ClusterIP), the sidecar's upstream.
    pub upstreams: Vec<String>,
    pub cluster_domain: String,
    /// The target cluster's version, MAJOR.MINOR: native sidecars from 1.29.
    pub kube_version: String,
    pub tracing_endpoint: Option<String>,
    pub sample_ratio: Option<f64>,
    /// Extra resource attributes of exported traces (`OTEL_RESOURCE_ATTRIBUTES`, e.g.
    /// `k8s.cluster.name=prod`).
    pub resource_attributes: Option<String>,
    pub cache: bool,
    pub musl_shield: bool,
    pub autopath: bool,
    pub metrics_port: u16,
    pub run_as_user: i64,
    pub resources: Resources,
}

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig {
            image: concat!("ghcr.io/dnslens/dnslens:", env!("CARGO_PKG_VERSION")).into(),
            image_pull_policy: "IfNotPresent".into(),
            image_pull_secrets: Vec::new(),
            // No guess: `dnslens inject` requires it, the webhook reads its own resolv.conf.
            upstreams: Vec::new(),
            cluster_domain: "cluster.local".into(),
            kube_version: "1.31".into(),
            tracing_endpoint: None,
            sample_ratio: None,
            resource_attributes: None,
            cache: true,
            musl_shield: true,
            autopath: false,
            metrics_port: 9253,
            run_as_user: 65532,
            resources: Resources::default(),
        }
    }
}

impl InjectConfig {
    /// Checks that the target cluster runs native sidecars (Kubernetes 1.29+).
    pub fn check_kube_version(&self) -> Result<(), InjectError> {
        let bad = || InjectError::KubeVersion(self.kube_version.clone());
        let version = self.kube_version.trim_start_matches('v');
        let mut parts = version.split('.');
        let major: u32 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let minor: u32 = parts
            .next()
            .and_then(|p| p.trim_end_matches('+').parse().ok())
            .ok_or_else(bad)?;
        if major > 1 || (major == 1 && minor >= NATIVE_SIDECAR_MINOR) {
            Ok(())
        } else {
            Err(InjectError::KubeTooOld(self.kube_version.clone()))
        }
    }

    /// This config with a pod's `dnslens.io/*` annotations applied.
    fn for_pod(&self, annotations: &Map<String, Value>) -> InjectConfig {
        let mut config = self.clone();
        let get = |key: &str| annotations.get(key).and_then(Value::as_str);
        if let Some(upstreams) = get("dnslens.io/upstream") {
            config.upstreams = upstreams.split(',').map(|s| s.trim().to_string()).collect();
        }
        if let Some(endpoint) = get("dnslens.io/tracing-endpoint") {
            config.tracing_endpoint = Some(endpoint.to_string());
        }
        if let Some(ratio) = get("dnslens.io/sample-ratio").and_then(|r| r.parse().ok()) {
            config.sample_ratio = Some(ratio);
        }
        let flag = |key: &str, value: &mut bool| {
            if let Some(v) = get(key).and_then(|v| v.parse().ok()) {
                *value = v;
            }
        };
        flag("dnslens.io/cache", &mut config.cache);
        flag("dnslens.io/musl-shield", &mut config.musl_shield);
        flag("dnslens.io/autopath", &mut config.autopath);
        config
    }
}

/// Injects the sidecar into `object` (a Pod, or a Deployment, StatefulSet, DaemonSet,
/// ReplicaSet, Job or CronJob's pod template). `namespace` is used when the object does
/// not name its own (as in an admission request, or a manifest applied with `-n`).
pub fn inject(
    object: &mut Value,
    namespace: &str,
    config: &InjectConfig,
) -> Result<Outcome, InjectError> {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or(namespace)
        .to_string();
    let template = match kind.as_str() {
        "Pod" => Some(object),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            object.pointer_mut("/spec/template")
        }
        "CronJob" => object.pointer_mut("/spec/jobTemplate/spec/template"),
        _ => return Ok(Outcome::NotAWorkload),
    };
    let invalid = |message: &str| InjectError::Invalid {
        kind: kind.clone(),
        name: name.clone(),
        message: message.to_string(),
    };
    let template = template
        .and_then(Value::as_object_mut)
        .ok_or_else(|| invalid("has no pod template"))?;
    inject_template(template, &namespace, config).map_err(|m| invalid(&m))
}

/// Injects into a pod (or pod template): `metadata` and `spec`.
fn inject_template(
    pod: &mut Map<String, Value>,
    namespace: &str,
    config: &InjectConfig,
) -> Result<Outcome, String> {
    let metadata = pod
        .entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or("metadata is not a map")?;
    let annotations = metadata
        .get("annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if annotations.get(ANNOTATION_INJECT).and_then(Value::as_str) == Some("disabled") {
        return Ok(Outcome::Skipped(format!(
            "annotated {ANNOTATION_INJECT}: disabled"
        )));
    }
    let spec = pod
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .ok_or("has no pod spec")?;
    if has_sidecar(spec) {
        return Ok(Outcome::AlreadyInjected);
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Outcome::Skipped(
            "hostNetwork: the pod uses the node's DNS, and 127.0.0.1:53 is the node's".into(),
        ));
    }
    match spec.get("dnsPolicy").and_then(Value::as_str) {
        None | Some("ClusterFirst") => {}
        Some(policy) => {
            return Ok(Outcome::Skipped(format!(
                "dnsPolicy {policy}: the pod does not use cluster DNS"
            )))
        }
    }
    let config = config.for_pod(&annotations);
    if config.upstreams.is_empty() {
        // Without one the sidecar would read the pod's resolv.conf: itself.
        return Err("no upstream configured (the cluster DNS Service's IP)".into());
    }
    config.check_kube_version().map_err(|e| e.to_string())?;
    let dns = pod_dns_config(spec, namespace, &config.cluster_domain);
    let sidecar = sidecar_container(&config, &dns);
    let containers = spec
        .entry("initContainers")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or("initContainers is not a list")?;
    containers.insert(0, sidecar);
    spec.insert("dnsPolicy".into(), json!("None"));
    spec.insert("dnsConfig".into(), dns.to_value());
    allow_unprivileged_port_53(spec)?;
    add_image_pull_secrets(spec, &config.image_pull_secrets)?;
    let metadata = pod
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or("metadata is not a map")?;
    for field in ["annotations", "labels"] {
        // The label lets a PodMonitor find injected pods; the annotation says it for humans.
        metadata
            .entry(field)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| format!("{field} is not a map"))?
            .insert(ANNOTATION_INJECTED.into(), json!("true"));
    }
    Ok(Outcome::Injected)
}

/// The secrets that pull the sidecar's image, added to the pod's `imagePullSecrets` (those it
/// has already are kept, none twice): a private registry for dnslens must not stop the pod.
fn add_image_pull_secrets(spec: &mut Map<String, Value>, names: &[String]) -> Result<(), String> {
    if names.is_empty() {
        return Ok(());
    }
    let secrets = spec
        .entry("imagePullSecrets")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or("imagePullSecrets is not a list")?;
    for name in names {
        let present = secrets
            .iter()
            .any(|s| s.get("name").and_then(Value::as_str) == Some(name.as_str()));
        if !present {
            secrets.push(json!({ "name": name }));
        }
    }
    Ok(())
}

/// The pod's sysctl that lets the non-root sidecar bind :53 without any capability:
/// `net.ipv4.ip_unprivileged_port_start` (namespaced, one of Kubernetes' "safe" sysctls,
/// allowed under the restricted Pod Security standard). Needed where the runtime gives a
/// non-root process no effective capability from `capabilities.add` (containerd 1.7,
/// CRI-O) and `no_new_privs` voids file capabilities. Merged into the pod's own sysctls;
/// a lower value the pod already sets is kept.
fn allow_unprivileged_port_53(spec: &mut Map<String, Value>) -> Result<(), String> {
    const SYSCTL: &str = "net.ipv4.ip_unprivileged_port_start";
    let sysctls = spec
        .entry("securityContext")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or("securityContext is not a map")?
        .entry("sysctls")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or("securityContext.sysctls is not a list")?;
    match sysctls
        .iter_mut()
        .find(|s| s.get("name").and_then(Value::as_str) == Some(SYSCTL))
    {
        Some(existing) => {
            let value = existing.get("value").and_then(Value::as_str);
            if value
                .and_then(|v| v.parse::<u32>().ok())
                .is_none_or(|v| v > 53)
            {
                existing["value"] = json!("53");
            }
        }
        None => sysctls.push(json!({"name": SYSCTL, "value": "53"})),
    }
    Ok(())
}

fn has_sidecar(spec: &Map<String, Value>) -> bool {
    ["containers", "initContainers"].iter().any(|list| {
        spec.get(*list).and_then(Value::as_array).is_some_and(|c| {
            c.iter()
                .any(|c| c.get("name").and_then(Value::as_str) == Some(CONTAINER))
        })
    })
}

/// The pod's DNS settings after injection.
#[derive(Debug, Clone, PartialEq)]
struct PodDns {
    nameservers: Vec<String>,
    searches: Vec<String>,
    /// (name, value) in order; ndots among them.
    options: Vec<(String, Option<String>)>,
    ndots: String,
}

impl PodDns {
    fn to_value(&self) -> Value {
        let options: Vec<Value> = self
            .options
            .iter()
            .map(|(name, value)| match value {
                Some(v) => json!({"name": name, "value": v}),
                None => json!({"name": name}),
            })
            .collect();
        json!({
            "nameservers": self.nameservers,
            "searches": self.searches,
            "options": options,
        })
    }
}

/// What `ClusterFirst` gives a pod in `namespace`, then the pod's own `dnsConfig` merged in.
fn pod_dns_config(spec: &Map<String, Value>, namespace: &str, cluster_domain: &str) -> PodDns {
    let cd = cluster_domain.trim_end_matches('.');
    let own = spec.get("dnsConfig");
    let strings = |key: &str| -> Vec<String> {
        own.and_then(|d| d.get(key))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut nameservers = vec!["127.0.0.1".to_string()];
    for ns in strings("nameservers") {
        // The resolver reads at most three.
        if !nameservers.contains(&ns) && nameservers.len() < 3 {
            nameservers.push(ns);
        }
    }
    let mut searches = vec![
        format!("{namespace}.svc.{cd}"),
        format!("svc.{cd}"),
        cd.to_string(),
    ];
    for s in strings("searches") {
        if !searches.contains(&s) {
            searches.push(s);
        }
    }
    let mut options: Vec<(String, Option<String>)> = own
        .and_then(|d| d.get("options"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|o| {
                    let name = o.get("name")?.as_str()?.to_string();
                    let value = o.get("value").and_then(Value::as_str).map(str::to_string);
                    Some((name, value))
                })
                .collect()
        })
        .unwrap_or_default();
    let ndots = match options.iter().find(|(name, _)| name == "ndots") {
        Some((_, Some(value))) => value.clone(),
        _ => {
            options.retain(|(name, _)| name != "ndots");
            options.insert(0, ("ndots".into(), Some("5".into())));
            "5".into()
        }
    };
    PodDns {
        nameservers,
        searches,
        options,
        ndots,
    }
}

fn sidecar_container(config: &InjectConfig, dns: &PodDns) -> Value {
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:53".into(),
        "--metrics-listen".into(),
        // Both families: the kubelet probes and Prometheus scrape the pod's primary IP,
        // IPv6 in an IPv6-first cluster.
        format!("[::]:{}", config.metrics_port),
        "--cluster-domain".into(),
        config.cluster_domain.clone(),
        "--ndots".into(),
        dns.ndots.clone(),
    ];
    for upstream in &config.upstreams {
        args.extend(["--upstream".into(), upstream.clone()]);
    }
    for search in &dns.searches {
        args.extend(["--search".into(), search.clone()]);
    }
    for (on, flag) in [
        (config.cache, "--cache"),
        (config.musl_shield, "--musl-shield"),
        (config.autopath, "--autopath"),
    ] {
        if on {
            args.push(flag.into());
        }
    }
    // The downward API behind the k8s.* resource attributes of exported traces.
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let mut env = vec![
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("NODE_NAME", "spec.nodeName"),
    ];
    if let Some(endpoint) = &config.tracing_endpoint {
        env.push(json!({"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": endpoint}));
    }
    if let Some(ratio) = config.sample_ratio {
        env.push(json!({"name": "OTEL_TRACES_SAMPLER", "value": "traceidratio"}));
        env.push(json!({"name": "OTEL_TRACES_SAMPLER_ARG", "value": ratio.to_string()}));
    }
    if let Some(attributes) = config
        .resource_attributes
        .as_ref()
        .filter(|a| !a.is_empty())
    {
        env.push(json!({"name": "OTEL_RESOURCE_ATTRIBUTES", "value": attributes}));
    }
    let mut limits = json!({"memory": config.resources.limits_memory});
    if let Some(cpu) = &config.resources.limits_cpu {
        limits["cpu"] = json!(cpu);
    }
    let mut container = json!({
        "name": CONTAINER,
        "image": config.image,
        "imagePullPolicy": config.image_pull_policy,
        "args": args,
        "env": env,
        "ports": [
            {"name": "dnslens-dns", "containerPort": 53, "protocol": "UDP"},
            {"name": "dnslens-dnstcp", "containerPort": 53, "protocol": "TCP"},
            {"name": "dnslens-metrics", "containerPort": config.metrics_port, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": config.metrics_port},
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
        "resources": {
            "requests": {
                "cpu": config.resources.requests_cpu,
                "memory": config.resources.requests_memory,
            },
            "limits": limits,
        },
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": config.run_as_user,
            "runAsGroup": config.run_as_user,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    });
    container["restartPolicy"] = json!("Always");
    // A native sidecar's startup probe gates the app containers' start.
    container["startupProbe"] = json!({
        "httpGet": {"path": "/healthz", "port": config.metrics_port},
        "periodSeconds": 1,
        "failureThreshold": 30,
    });
    container
}

/// A file of Kubernetes YAML documents, each injected; the report says what became of
/// each (kind/name and the outcome), for stderr.
pub fn inject_yaml(
    text: &str,
    namespace: &str,
    config: &InjectConfig,
) -> Result<(String, Vec<String>), InjectError> {
    let mut out = String::new();
    let mut report = Vec::new();
    let documents: Vec<Value> = dnslens_yaml::from_documents(text).map_err(InjectError::Yaml)?;
    for mut object in documents {
        if object.is_null() {
            continue;
        }
        let outcome = inject(&mut object, namespace, config)?;
        let what = format!(
            "{} {}",
            object.get("kind").and_then(Value::as_str).unwrap_or("?"),
            object
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("?")
        );
        report.push(match outcome {
            Outcome::Injected => format!("{what}: injected"),
            Outcome::AlreadyInjected => format!("{what}: already injected, unchanged"),
            Outcome::Skipped(why) => format!("{what}: skipped ({why})"),
            Outcome::NotAWorkload => format!("{what}: not a workload, unchanged"),
        });
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&dnslens_yaml::to_string(&object).map_err(InjectError::Yaml)?);
    }
    Ok((out, report))
}

#[cfg(test)]
mod tests;
