//! A real Kubernetes control plane for the cluster tests: etcd and kube-apiserver built from
//! their Go modules by `scripts/control-plane.sh build` (scripts/test.sh runs it; the
//! binaries are cached outside the clone) and started on loopback by `start`, one per test.
//! No controller-manager, no kubelet: tests create what those would (pods from a template,
//! pod status) themselves. A missing build fails the test with the command that makes it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::harness::{output_with_stdin, TempDir};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate sits in the workspace")
        .to_path_buf()
}

fn script() -> PathBuf {
    repo().join("scripts/control-plane.sh")
}

/// The cached path of a program (or the `crds` directory) the script builds.
pub fn built(name: &str) -> PathBuf {
    let out = Command::new(script())
        .args(["path", name])
        .output()
        .expect("scripts/control-plane.sh runs");
    assert!(out.status.success(), "control-plane.sh path {name} failed");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.exists(),
        "{} missing: run scripts/control-plane.sh build (scripts/test.sh does)",
        path.display()
    );
    path
}

/// etcd and kube-apiserver on loopback, stopped on drop.
pub struct ControlPlane {
    pub dir: TempDir,
    pub env: BTreeMap<String, String>,
}

impl ControlPlane {
    pub fn start() -> ControlPlane {
        built("kube-apiserver");
        built("etcd");
        let dir = TempDir::new("control-plane");
        let out = Command::new(script())
            .arg("start")
            .arg(&dir.0)
            .output()
            .expect("scripts/control-plane.sh runs");
        let mut plane = ControlPlane {
            env: BTreeMap::new(),
            dir,
        };
        assert!(
            out.status.success(),
            "control plane did not start:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(plane.dir.0.join("env")).expect("env written");
        plane.env = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        plane
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.0.join("kubeconfig")
    }

    /// Runs kubectl against this control plane with `stdin`; its output, whatever the exit.
    pub fn kubectl_output(&self, args: &[&str], stdin: &str) -> Output {
        output_with_stdin(
            Command::new(&self.env["KUBECTL"])
                .arg("--kubeconfig")
                .arg(self.kubeconfig())
                .args(args),
            stdin.as_bytes(),
        )
    }

    /// Runs kubectl and requires success; its stdout.
    pub fn kubectl(&self, args: &[&str], stdin: &str) -> String {
        let out = self.kubectl_output(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl with `-o json`, parsed.
    pub fn kubectl_json(&self, args: &[&str], stdin: &str) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&all, stdin)).expect("kubectl prints JSON")
    }

    /// Applies `yaml` as Helm would install it: server-side apply, strict field validation
    /// (an unknown or duplicate field is an error, not a warning).
    pub fn apply_strict(&self, yaml: &str) -> Result<String, String> {
        let out = self.kubectl_output(
            &[
                "apply",
                "--server-side",
                "--field-manager=helm",
                "--force-conflicts",
                "--validate=strict",
                "-f",
                "-",
            ],
            yaml,
        );
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        if out.status.success() {
            Ok(text(&out.stdout))
        } else {
            Err(text(&out.stderr))
        }
    }

    /// Creates namespace `name` with `labels` (`key=value`).
    pub fn namespace(&self, name: &str, labels: &[&str]) {
        self.kubectl(&["create", "namespace", name], "");
        if !labels.is_empty() {
            let mut args = vec!["label", "namespace", name];
            args.extend_from_slice(labels);
            self.kubectl(&args, "");
        }
    }

    /// A pod on `node` as the kubelet would report it: created, then its status (Running,
    /// `ip`) set through the status subresource. `owner` is (kind, name) of its controller.
    /// Returns its UID.
    pub fn running_pod(
        &self,
        namespace: &str,
        name: &str,
        node: &str,
        ip: &str,
        owner: Option<(&str, &str)>,
        labels: Value,
    ) -> String {
        let mut pod = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "app", "image": "registry.example/app:1"}],
            },
        });
        if let Some((kind, owner)) = owner {
            let api_version = if kind == "Job" { "batch/v1" } else { "apps/v1" };
            pod["metadata"]["ownerReferences"] = serde_json::json!([{
                "apiVersion": api_version, "kind": kind, "name": owner,
                "uid": "00000000-0000-0000-0000-000000000001", "controller": true,
            }]);
        }
        self.create_running(&pod, ip)
    }

    /// Creates `pod` (its namespace in its metadata) and reports it Running on `ip` as its
    /// kubelet would; its UID.
    pub fn create_running(&self, pod: &Value, ip: &str) -> String {
        let created = self.kubectl_json(&["create", "-f", "-"], &pod.to_string());
        let status = serde_json::json!({"status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
        }});
        let namespace = created["metadata"]["namespace"]
            .as_str()
            .expect("namespace");
        let name = created["metadata"]["name"].as_str().expect("name");
        self.kubectl(
            &[
                "patch",
                "pod",
                "-n",
                namespace,
                name,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ],
            "",
        );
        created["metadata"]["uid"]
            .as_str()
            .expect("uid")
            .to_string()
    }

    /// CoreDNS on 127.0.0.1 with its kubernetes plugin watching this API server (other
    /// names: NXDOMAIN); its address once it answers for `kubernetes.default` (the Service
    /// the API server makes itself), i.e. after its first sync.
    pub async fn coredns(&self) -> std::net::SocketAddr {
        let port = crate::harness::free_port();
        let out = Command::new(script())
            .arg("coredns")
            .arg(&self.dir.0)
            .arg(port.to_string())
            .output()
            .expect("scripts/control-plane.sh runs");
        assert!(
            out.status.success(),
            "CoreDNS did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let query = crate::harness::query_bytes(
                "kubernetes.default.svc.cluster.local",
                hickory_proto::rr::RecordType::A,
                7,
                None,
            );
            let answer =
                crate::harness::udp_exchange(addr, &query, std::time::Duration::from_millis(500))
                    .await;
            if answer.is_some_and(|a| a.len() > 3 && a[3] & 0x0f == 0) {
                return addr;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "CoreDNS never answered for the kubernetes Service: {}",
                std::fs::read_to_string(self.dir.0.join("coredns.log")).unwrap_or_default()
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// A ClusterIP Service `namespace/name` at `ip`.
    pub fn service(&self, namespace: &str, name: &str, ip: &str) {
        self.kubectl(
            &[
                "create",
                "service",
                "clusterip",
                name,
                "-n",
                namespace,
                "--tcp=443:443",
                &format!("--clusterip={ip}"),
            ],
            "",
        );
    }

    /// Stops kube-apiserver alone (etcd keeps the state).
    pub fn stop_apiserver(&self) {
        self.script_ok("stop-apiserver");
    }

    /// Starts kube-apiserver again on the same port; returns once it is ready.
    pub fn start_apiserver(&self) {
        self.script_ok("start-apiserver");
    }

    fn script_ok(&self, command: &str) {
        let out = Command::new(script())
            .arg(command)
            .arg(&self.dir.0)
            .output()
            .expect("scripts/control-plane.sh runs");
        assert!(
            out.status.success(),
            "control-plane.sh {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The API server's own /metrics, read with the admin certificate.
    pub fn apiserver_metrics(&self) -> String {
        self.kubectl(&["get", "--raw", "/metrics"], "")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(&self.dir.0).output();
    }
}

/// A CA and a serving certificate for 127.0.0.1 made with openssl in `dir`:
/// (ca.crt, tls.crt, tls.key).
pub fn loopback_certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl must be installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=webhook-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "tls.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    (dir.join("ca.crt"), dir.join("tls.crt"), dir.join("tls.key"))
}
