//! The binary as an orchestrator runs it: the lameduck period after SIGTERM (still
//! answering, not ready), and who may read `/debug/*`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dnslens::demo::{EmbeddedUpstream, ZONES};
use hickory_proto::rr::RecordType;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_dns_is_answered_for_the_lameduck_period_while_not_ready() {
    let upstream = EmbeddedUpstream::start("127.0.0.1:0".parse().unwrap(), &ZONES)
        .await
        .unwrap();
    let dir = TempDir::new("lameduck");
    let config = dir.0.join("dnslens.yaml");
    std::fs::write(&config, "lameduck: 1500ms\nshutdown_grace: 1s\n").unwrap();
    let (dns_port, admin_port) = (free_port(), free_port());
    let dns: std::net::SocketAddr = format!("127.0.0.1:{dns_port}").parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_dnslens"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(["--listen", &dns.to_string()])
            .args(["--upstream", &upstream.addr.to_string()])
            .args(["--metrics-listen", &admin.to_string()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(admin).is_err() {
        assert!(Instant::now() < deadline, "dnslens did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(http_get(admin, "/readyz").await.0, 200);
    let kill = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let signalled = Instant::now();
    // Not ready at once, so endpoints and iptables rules move away...
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        let (status, body) = http_get(admin, "/readyz").await;
        if status == 503 {
            assert_eq!(body, "shutting down\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {status} after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...while clients that still come are answered, over UDP and TCP.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let answer = ask_udp(dns, "web.default.svc.cluster.local.", RecordType::A, None).await;
    assert_eq!(answer.metadata.response_code.low(), 0);
    assert_eq!(answer.answers.len(), 1);
    let answer = ask_tcp(dns, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(answer.answers.len(), 1);
    assert!(signalled.elapsed() < Duration::from_millis(1500));
    // Then it drains and exits 0.
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running 5 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() >= Duration::from_millis(1500),
        "left before the lameduck period ended: {:?}",
        signalled.elapsed()
    );
    upstream.stop().await;
}

/// `GET path` from `from` to `to` inside a network namespace with a second, non-loopback
/// address: the HTTP status line of each, for the given dnslens config.
fn statuses_in_namespace(yaml: &str, requests: &[(&str, &str, &str)]) -> Vec<String> {
    let dir = TempDir::new("debug-acl");
    let d = &dir.0;
    std::fs::write(d.join("dnslens.yaml"), yaml).unwrap();
    let fetches: String = requests
        .iter()
        .map(|(from, to, path)| {
            // bash's /dev/tcp cannot pick a source: the kernel uses the destination's own
            // address for a local destination, so "from" is the address connected to.
            assert_eq!(from, to, "a local connection comes from the address it goes to");
            format!(
                "exec 3<>/dev/tcp/{to}/9253; printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3; head -1 <&3 | tr -d '\\r' >>statuses.txt; exec 3<&-\n"
            )
        })
        .collect();
    let script = format!(
        r#"set -eu
cd "{d}"
ip link set lo up
ip addr add 10.77.0.1/32 dev lo   # a second, non-loopback address of this namespace
"{dnslens}" serve --config dnslens.yaml --listen 127.0.0.1:53 --upstream 127.0.0.1:5300 \
  --metrics-listen 0.0.0.0:9253 2>dnslens.log & proxy=$!
for i in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/9253) 2>/dev/null && break
  sleep 0.05
done
{fetches}kill $proxy
wait $proxy || true
"#,
        d = d.display(),
        dnslens = env!("CARGO_BIN_EXE_dnslens"),
    );
    let status = Command::new("unshare")
        .args(["-n", "bash", "-c", &script])
        .status()
        .expect("unshare (util-linux) is needed, as root");
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(d.join("dnslens.log")).unwrap_or_default()
    );
    std::fs::read_to_string(d.join("statuses.txt"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn debug_endpoints_answer_loopback_only_unless_allowed() {
    let requests = [
        ("127.0.0.1", "127.0.0.1", "/debug/anomalies"),
        ("10.77.0.1", "10.77.0.1", "/debug/anomalies"),
        ("10.77.0.1", "10.77.0.1", "/metrics"),
        ("10.77.0.1", "10.77.0.1", "/readyz"),
    ];
    assert_eq!(
        statuses_in_namespace("", &requests),
        [
            "HTTP/1.0 200 OK",
            "HTTP/1.0 403 Forbidden",
            "HTTP/1.0 200 OK",
            "HTTP/1.0 200 OK"
        ]
    );
    assert_eq!(
        statuses_in_namespace("admin:\n  debug_allow: [10.77.0.0/24]\n", &requests),
        [
            "HTTP/1.0 200 OK",
            "HTTP/1.0 200 OK",
            "HTTP/1.0 200 OK",
            "HTTP/1.0 200 OK"
        ]
    );
}
