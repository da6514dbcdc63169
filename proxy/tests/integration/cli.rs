//! The binary's command line: configuration errors exit 2 with one line, check-config, env
//! overrides, graceful exit on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

fn dnslens() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dnslens"));
    cmd.env_remove("RUST_LOG");
    for (key, _) in std::env::vars() {
        if key.starts_with("DNSLENS_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn config_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
}

#[test]
fn example_configs_pass_check_config() {
    for file in ["sidecar.yaml", "node-local.yaml"] {
        let (code, out, err) = run(dnslens()
            .args(["check-config", "--config"])
            .arg(config_dir().join(file)));
        assert_eq!(code, 0, "{file}: {err}");
        assert!(out.contains("ok"));
    }
}

/// A key that moved into a section still loads, for one release, with a warning naming the
/// key to use; the example configs use none.
#[test]
fn old_key_names_load_with_a_warning_naming_the_new_key() {
    let dir = TempDir::new("cli-deprecated");
    let path = dir.0.join("c.yaml");
    std::fs::write(
        &path,
        "upstreams: [10.0.0.1]\nmetrics_listen: '127.0.0.1:9999'\n",
    )
    .unwrap();
    let (code, out, err) = run(dnslens().args(["check-config", "--config"]).arg(&path));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok"), "{out}");
    let all = format!("{out}{err}");
    for (old, new) in [
        ("upstreams", "forward.upstreams"),
        ("metrics_listen", "admin.listen"),
    ] {
        assert!(
            all.contains(&format!("config key `{old}` is deprecated: use `{new}`")),
            "{all}"
        );
    }
    for file in ["sidecar.yaml", "node-local.yaml"] {
        let (_, out, err) = run(dnslens()
            .args(["check-config", "--config"])
            .arg(config_dir().join(file)));
        assert!(
            !format!("{out}{err}").contains("deprecated"),
            "{file}: {err}"
        );
    }
}

#[test]
fn bad_configs_exit_2_with_one_line_naming_the_culprit() {
    let dir = TempDir::new("cli");
    let cases = [
        (
            "unknown key",
            "listen: ['127.0.0.1:53']\nforward: {upstreams: [10.96.0.10]}\ncahce: {}\n",
            "cahce",
        ),
        (
            "bad address",
            "forward: {upstreams: ['10.96.0.300']}\n",
            "10.96.0.300",
        ),
        (
            "loop",
            "listen: ['127.0.0.1:5300']\nforward: {upstreams: ['127.0.0.1:5300']}\n",
            "forwarding loop",
        ),
        ("bad yaml", "listen: [\n", "config file"),
        (
            "bad duration",
            "forward: {timeout: forever}\n",
            "forward.timeout",
        ),
    ];
    for (what, yaml, needle) in cases {
        let path = dir.0.join("c.yaml");
        std::fs::write(&path, yaml).unwrap();
        for sub in [
            &["check-config", "--config"][..],
            &["serve", "--config"][..],
        ] {
            let (code, _, err) = run(dnslens().args(sub).arg(&path));
            assert_eq!(code, 2, "{what} ({sub:?}): {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err}");
            assert!(err.contains(needle), "{what}: {err}");
        }
    }
    let (code, _, err) = run(dnslens()
        .args(["serve", "--config"])
        .arg(dir.0.join("missing.yaml")));
    assert_eq!(code, 2);
    assert!(err.contains("missing.yaml"), "{err}");
    let (code, _, _) = run(dnslens().args(["serve", "--upstream", "nope"]));
    assert_eq!(code, 2);
    let (code, _, _) = run(dnslens().args(["serve", "--mode", "cluster"]));
    assert_eq!(code, 2);
}

#[test]
fn environment_overrides_the_file_and_flags_override_the_environment() {
    let dir = TempDir::new("cli-env");
    let path = dir.0.join("c.yaml");
    std::fs::write(
        &path,
        "listen: ['127.0.0.1:5301']\nforward: {upstreams: ['10.0.0.1']}\n",
    )
    .unwrap();
    // The environment's upstream equals the file's listen address: the loop proves it was used.
    let (code, _, err) = run(dnslens()
        .args(["serve", "--config"])
        .arg(&path)
        .env("DNSLENS_UPSTREAMS", "127.0.0.1:5301"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("forwarding loop"), "{err}");
    // A flag beats the environment: no loop, so it starts; stop it right away.
    let port = free_port();
    let mut child = Child(
        dnslens()
            .args(["serve", "--config"])
            .arg(&path)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .env("DNSLENS_UPSTREAMS", "127.0.0.1:5301")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.0.try_wait().unwrap().is_none(), "serving");
}

#[test]
fn sigterm_exits_0() {
    let port = free_port();
    let mut child = Child(
        dnslens()
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--upstream",
                "127.0.0.1:9",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Wait until it listens.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "dnslens did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.terminate();
    let code = child.exit_code_within(Duration::from_secs(5), "no exit after SIGTERM");
    assert_eq!(code, Some(0));
}

#[test]
fn inject_requires_the_cluster_dns_address_instead_of_guessing() {
    let out = output_with_stdin(
        dnslens().arg("inject"),
        b"apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: a, image: a}]}\n",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("upstream: none given: pass --upstream with the cluster DNS Service's IP"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// The first log line `serve` writes to a pipe, with `format` (None: the default).
fn first_log_line(format: Option<&str>) -> String {
    use std::io::BufRead;
    let port = free_port();
    let mut cmd = dnslens();
    cmd.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--upstream",
        "127.0.0.1:9",
        "--metrics-listen",
        "127.0.0.1:0",
        "--search",
        "svc.cluster.local",
    ])
    .stderr(Stdio::piped());
    if let Some(format) = format {
        cmd.env("DNSLENS_LOG_FORMAT", format);
    }
    let mut child = Child(cmd.spawn().unwrap());
    let stderr = child.0.stderr.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stderr)
        .read_line(&mut line)
        .unwrap();
    line
}

#[test]
fn logs_are_plain_off_a_terminal_and_json_on_request() {
    let text = first_log_line(None);
    assert!(
        text.contains("INFO") && text.contains("dnslens serving"),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "no colour codes in a pipe: {text:?}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&first_log_line(Some("json"))).expect("one JSON object per line");
    assert_eq!(json["level"], "INFO");
    assert_eq!(json["fields"]["message"], "dnslens serving");
    assert_eq!(json["fields"]["mode"], "sidecar");
}
