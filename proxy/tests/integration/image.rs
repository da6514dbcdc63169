//! The container image as shipped: `scripts/build-image.sh` builds it without a daemon
//! (buildah), and Debian's `runc` runs it the way a strict runtime runs the injected
//! sidecar — user 65532, `no_new_privs`, no effective capability (containerd 1.7 gives a
//! non-root process none of `capabilities.add`), a read-only root filesystem — inside a
//! network namespace of the test's own with Knot as the upstream. What makes :53 bindable
//! there is the pod's namespaced sysctl `net.ipv4.ip_unprivileged_port_start`, which the
//! injector sets: with it the image answers, without it the bind is refused. Tracing over
//! https is on, as with a collector behind a public CA: the image carries the CA bundle.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::harness::*;

/// `scripts/build-image.sh` on the test build's binary: the archive at
/// `dir/dnslens-oci.tar`, its SBOM beside it.
fn build_image(dir: &Path) -> std::path::PathBuf {
    let archive = dir.join("dnslens-oci.tar");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = Command::new(repo.join("scripts/build-image.sh"))
        .arg(env!("CARGO_BIN_EXE_dnslens"))
        .arg(&archive)
        .output()
        .expect("scripts/build-image.sh runs");
    assert!(
        built.status.success(),
        "build-image.sh: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    archive
}

/// Builds the image from the test build's binary and unpacks it into an OCI bundle at
/// `dir/bundle`, with the container's process set as the injected sidecar runs.
fn bundle(dir: &Path) {
    let archive = build_image(dir);
    let oci = format!("oci:{}:latest", dir.join("oci").display());
    let copied = Command::new("skopeo")
        .args(["copy", "-q"])
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(&oci)
        .status()
        .expect("skopeo is needed (scripts/test.sh installs it)");
    assert!(copied.success());
    let unpacked = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:latest", dir.join("oci").display()))
        .arg(dir.join("bundle"))
        .output()
        .expect("umoci is needed (scripts/test.sh installs it)");
    assert!(unpacked.status.success());
    // The system's CA bundle, as Debian ships it.
    let bundle_ca = "etc/ssl/certs/ca-certificates.crt";
    assert_eq!(
        std::fs::read(dir.join("bundle/rootfs").join(bundle_ca)).expect("a CA bundle in the image"),
        std::fs::read(Path::new("/").join(bundle_ca)).unwrap()
    );
    let path = dir.join("bundle/config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    // The image's own user and entrypoint, as built.
    assert_eq!(config["process"]["user"]["uid"], 65532);
    assert_eq!(config["process"]["args"][0], "/dnslens");
    let process = &mut config["process"];
    process["args"] = json!([
        "/dnslens",
        "serve",
        "--listen",
        "127.0.0.1:53",
        "--upstream",
        "127.0.0.1:5300",
        "--metrics-listen",
        "127.0.0.1:9253",
        "--search",
        "default.svc.cluster.local"
    ]);
    // Traces over https to a collector with a public CA's certificate: the exporter needs the
    // system's CA bundle in the image, or dnslens refuses to start (no trusted CA).
    let env = process["env"].as_array_mut().unwrap();
    env.push(json!("OTEL_EXPORTER_OTLP_ENDPOINT=https://127.0.0.1:4318"));
    env.push(json!("OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"));
    process["terminal"] = json!(false);
    process["noNewPrivileges"] = json!(true);
    // A non-root process under a strict runtime: `add: [NET_BIND_SERVICE]` reaches the
    // bounding set only.
    process["capabilities"] = json!({
        "bounding": ["CAP_NET_BIND_SERVICE"],
        "effective": [], "permitted": [], "inheritable": [], "ambient": []
    });
    config["root"]["readonly"] = json!(true);
    // The pod's network namespace is the test's; cgroups are the runtime's business.
    let linux = config["linux"].as_object_mut().unwrap();
    linux.remove("resources");
    let namespaces = linux["namespaces"].as_array_mut().unwrap();
    namespaces.retain(|n| n["type"] != "network");
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

/// Runs the bundle in a fresh network namespace with `ip_unprivileged_port_start` set to
/// `port_start`; returns (dig's answer, the process's /proc status lines, the log).
fn run_bundle(dir: &Path, port_start: u16) -> (String, String, String) {
    let d = dir.display();
    let state = dir.join(format!("runc-{port_start}"));
    let id = format!("dnslens-image-test-{}-{port_start}", std::process::id());
    knot_config(dir, 5300);
    let script = format!(
        r#"set -u
cd "{d}"
ip link set lo up
knotd -c knot.conf >knot.log 2>&1 & knot=$!
sysctl -qw net.ipv4.ip_unprivileged_port_start={port_start}
runc --root "{state}" run -d --bundle bundle {id} >container.log 2>&1
for i in $(seq 50); do
  dig @127.0.0.1 +time=1 +tries=1 +short web.default.svc.cluster.local A >answer.txt 2>/dev/null && grep -q . answer.txt && break
  sleep 0.1
done
pid=$(runc --root "{state}" state {id} 2>/dev/null | sed -n 's/.*"pid": \([0-9]*\).*/\1/p')
[ -n "$pid" ] && [ "$pid" != 0 ] && grep -E '^(Uid|CapEff|CapPrm|NoNewPrivs)' /proc/$pid/status >status.txt
runc --root "{state}" kill {id} TERM 2>/dev/null
sleep 0.3
runc --root "{state}" delete -f {id} 2>/dev/null
kill $knot
wait $knot 2>/dev/null
true
"#,
        state = state.display(),
    );
    let status = run_in_new_namespace(&script);
    assert!(status.success());
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    (
        read("answer.txt"),
        read("status.txt"),
        read("container.log"),
    )
}

#[test]
fn the_image_serves_port_53_as_the_injected_sidecar_runs_it() {
    let dir = TempDir::new("image");
    bundle(&dir.0);
    // As injected: the pod's sysctl lets an unprivileged process bind :53.
    let (answer, status, log) = run_bundle(&dir.0, 53);
    assert_eq!(answer.trim(), "10.96.12.34", "container log:\n{log}");
    for line in [
        "Uid:\t65532\t65532\t65532\t65532",
        "CapPrm:\t0000000000000000",
        "CapEff:\t0000000000000000",
        "NoNewPrivs:\t1",
    ] {
        assert!(status.contains(line), "{line} in\n{status}");
    }
    // Without it — what a strict runtime gives the old securityContext — the bind fails,
    // with a one-line reason: the failure the sysctl exists for.
    let (answer, _, log) = run_bundle(&dir.0, 1024);
    assert!(!answer.contains("10.96.12.34"), "{answer}");
    assert!(
        log.contains("cannot listen on 127.0.0.1:53: Permission denied"),
        "{log}"
    );
    assert_eq!(
        log.matches("Permission denied").count(),
        1,
        "said once: {log}"
    );
}

/// The Dockerfile's base images are pinned by digest (a tag alone moves under a rebuild).
#[test]
fn every_base_image_of_the_dockerfile_is_pinned_by_digest() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dockerfile = std::fs::read_to_string(repo.join("Dockerfile")).unwrap();
    let bases: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    assert_eq!(bases.len(), 2, "{dockerfile}");
    for image in bases {
        let digest = image.split_once("@sha256:").map(|(_, d)| d).unwrap_or("");
        assert!(
            digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "{image} is not pinned by digest"
        );
    }
}

/// The image's SBOM (`scripts/sbom.sh`, written by `scripts/build-image.sh`): every crate
/// linked into the binary with its Cargo.lock version and checksum, nothing Cargo.lock does
/// not have, and the Debian packages whose files the image carries, at the versions
/// installed.
#[test]
fn the_image_comes_with_an_sbom_of_its_crates_and_debian_packages() {
    let dir = TempDir::new("image-sbom");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    build_image(&dir.0);
    let sbom: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.0.join("dnslens-oci.cdx.json")).expect("the SBOM"),
    )
    .unwrap();
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    assert_eq!(sbom["specVersion"], "1.5");
    assert_eq!(sbom["metadata"]["component"]["name"], "dnslens");
    let components = sbom["components"].as_array().unwrap();
    let field = |c: &Value, k: &str| c[k].as_str().unwrap_or("").to_string();

    // Cargo.lock: name, version -> checksum.
    let lock = std::fs::read_to_string(repo.join("Cargo.lock")).unwrap();
    let mut locked = std::collections::HashMap::new();
    for package in lock.split("[[package]]").skip(1) {
        let value = |key: &str| {
            package
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key} = \"")))
                .map(|v| v.trim_end_matches('"').to_string())
        };
        if let (Some(name), Some(version)) = (value("name"), value("version")) {
            locked.insert((name, version), value("checksum"));
        }
    }
    let crates: Vec<&Value> = components
        .iter()
        .filter(|c| field(c, "purl").starts_with("pkg:cargo/"))
        .collect();
    for c in &crates {
        let key = (field(c, "name"), field(c, "version"));
        let checksum = locked
            .get(&key)
            .unwrap_or_else(|| panic!("{key:?} is not in Cargo.lock"));
        match checksum {
            Some(sum) => {
                assert_eq!(c["hashes"][0]["content"].as_str(), Some(sum.as_str()), "{key:?}");
                assert_eq!(c["hashes"][0]["alg"], "SHA-256");
            }
            // The workspace's own crates (dnslens-wire) come from this source tree.
            None => assert!(key.0.starts_with("dnslens"), "{key:?} has no checksum"),
        }
    }
    // Every crate linked into the binary is listed.
    let tree = Command::new(env!("CARGO"))
        .current_dir(&repo)
        .args([
            "tree",
            "-p",
            "dnslens",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .output()
        .expect("cargo tree");
    assert!(
        tree.status.success(),
        "{}",
        String::from_utf8_lossy(&tree.stderr)
    );
    let listed: std::collections::HashSet<(String, String)> = crates
        .iter()
        .map(|c| (field(c, "name"), field(c, "version")))
        .collect();
    let mut linked = 0;
    for line in String::from_utf8_lossy(&tree.stdout).lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        // Registry crates only: the workspace's own crates carry their path.
        if parts.len() < 2 || parts.get(2).is_some_and(|p| p.starts_with("(/")) {
            continue;
        }
        let key = (
            parts[0].to_string(),
            parts[1].trim_start_matches('v').to_string(),
        );
        assert!(listed.contains(&key), "{key:?} linked but not in the SBOM");
        linked += 1;
    }
    assert!(linked > 100, "cargo tree listed {linked} crates");
    // The Debian packages of the image's other files, at the versions installed here.
    for package in ["libc6", "libgcc-s1", "ca-certificates"] {
        let installed = Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", package])
            .output()
            .unwrap();
        let version = String::from_utf8_lossy(&installed.stdout).to_string();
        let listed = components
            .iter()
            .find(|c| {
                field(c, "name") == package && field(c, "purl").starts_with("pkg:deb/debian/")
            })
            .unwrap_or_else(|| panic!("{package} not in the SBOM"));
        assert_eq!(field(listed, "version"), version, "{package}");
    }
}
