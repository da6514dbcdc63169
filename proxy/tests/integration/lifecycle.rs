//! The binary as an orchestrator runs it: the lameduck period after SIGTERM (still
//! answering, not ready), and who may read `/debug/*`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dnslens::demo::{EmbeddedUpstream, ZONES};
use hickory_proto::op::Message;
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
    let code = child.exit_code_within(Duration::from_secs(5), "still running 5 s after SIGTERM");
    assert_eq!(code, Some(0));
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
        ("127.0.0.1", "127.0.0.1", "/ui/"),
        ("10.77.0.1", "10.77.0.1", "/ui/"),
    ];
    assert_eq!(
        statuses_in_namespace("", &requests),
        [
            "HTTP/1.0 200 OK",
            "HTTP/1.0 403 Forbidden",
            "HTTP/1.0 200 OK",
            "HTTP/1.0 200 OK",
            "HTTP/1.0 200 OK",
            "HTTP/1.0 403 Forbidden"
        ]
    );
    assert_eq!(
        statuses_in_namespace("admin:\n  debug_allow: [10.77.0.0/24]\n", &requests),
        ["HTTP/1.0 200 OK"; 6]
    );
}

/// Starts `dnslens serve` on `dns` (shared) with its own admin address; waits until ready.
pub async fn start_serving(
    config: &std::path::Path,
    dns: std::net::SocketAddr,
    upstream: std::net::SocketAddr,
    admin: std::net::SocketAddr,
) -> Child {
    start_serving_as(config, dns, upstream, admin, None).await
}

/// [`start_serving`] as pod `pod` (its `POD_NAME`).
pub async fn start_serving_as(
    config: &std::path::Path,
    dns: std::net::SocketAddr,
    upstream: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    pod: Option<&str>,
) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dnslens"));
    if let Some(pod) = pod {
        command.env("POD_NAME", pod);
    }
    let child = Child(
        command
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(["--listen", &dns.to_string()])
            .args(["--upstream", &upstream.to_string()])
            .args(["--metrics-listen", &admin.to_string()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(admin).is_err() || http_get(admin, "/readyz").await.0 != 200
    {
        assert!(
            Instant::now() < deadline,
            "dnslens on {admin} did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

/// A rolling update on one node: a second dnslens binds the same address beside the first
/// (SO_REUSEPORT, UDP and TCP), the first gets SIGTERM, answers through its lameduck period,
/// answers what its sockets still hold, and exits — while a steady client (fresh source port
/// per query, so both processes get queries; every tenth over TCP; no retries) loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_takes_over_the_address_without_a_failed_query() {
    let upstream = EmbeddedUpstream::start("127.0.0.1:0".parse().unwrap(), &ZONES)
        .await
        .unwrap();
    let dir = TempDir::new("handover");
    let config = dir.0.join("dnslens.yaml");
    std::fs::write(
        &config,
        "lameduck: 1s\nshutdown_grace: 2s\nlistener: {udp_workers: 2}\n",
    )
    .unwrap();
    let dns: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (old_admin, new_admin) = (
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
    );
    let mut old = start_serving(&config, dns, upstream.addr, old_admin).await;

    let stop_client = Instant::now() + Duration::from_secs(5);
    let clients: Vec<_> = (0..4)
        .map(|c| {
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, Vec::new());
                let mut n = 0u32;
                while Instant::now() < stop_client {
                    n += 1;
                    let over_tcp = n % 10 == c;
                    let answered = if over_tcp {
                        tokio::time::timeout(
                            Duration::from_secs(1),
                            tcp_ask_once(dns, "web.default.svc.cluster.local."),
                        )
                        .await
                        .ok()
                        .flatten()
                    } else {
                        let id = rand::random();
                        let query =
                            query_bytes("web.default.svc.cluster.local.", RecordType::A, id, None);
                        udp_exchange(dns, &query, Duration::from_secs(1)).await
                    };
                    match answered {
                        Some(a) if a.len() > 12 && a[3] & 0x0f == 0 => ok += 1,
                        _ => failed.push((n, over_tcp)),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (ok, failed)
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut new = start_serving(&config, dns, upstream.addr, new_admin).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, old_metrics) = http_get(old_admin, "/metrics").await;
    let kill = Command::new("kill")
        .args(["-TERM", &old.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let code = old.exit_code_within(Duration::from_secs(6), "the old process did not exit");
    assert_eq!(code, Some(0));

    let (mut ok, mut failed) = (0, Vec::new());
    for client in clients {
        let (o, f) = client.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "failed queries (n, over tcp): {failed:?}"
    );
    assert!(ok > 300, "only {ok} queries in 5 s");
    // Both served: the old one before the handover, the new one after.
    let (_, new_metrics) = http_get(new_admin, "/metrics").await;
    for (who, metrics) in [("old", &old_metrics), ("new", &new_metrics)] {
        let answered = series_sum(metrics, "dnslens_requests_total");
        assert!(answered > 20.0, "{who} answered {answered}");
    }
    let _ = Command::new("kill")
        .args(["-TERM", &new.0.id().to_string()])
        .status();
    let _ = new.0.wait();
    upstream.stop().await;
}

/// `dnslens probe CHECK --socket SOCKET`: its exit code and stderr.
fn probe(check: &str, socket: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dnslens"))
        .args(["probe", check, "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A surge update on the host's network shares the admin port too (SO_REUSEPORT), so an HTTP
/// probe there may reach either process. Each one's probe socket answers for it alone:
/// after SIGTERM the old one says 503 there (its lameduck) while the new one says ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_process_answers_its_own_probe_socket_during_a_handover() {
    let upstream = EmbeddedUpstream::start("127.0.0.1:0".parse().unwrap(), &ZONES)
        .await
        .unwrap();
    let dir = TempDir::new("probe-socket");
    let dns: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut pods = Vec::new();
    for pod in ["old", "new"] {
        let socket = dir.0.join(format!("{pod}.sock"));
        let config = dir.0.join(format!("{pod}.yaml"));
        std::fs::write(
            &config,
            format!(
                "lameduck: 2s\nshutdown_grace: 2s\nadmin: {{probe_socket: {}}}\n",
                socket.display()
            ),
        )
        .unwrap();
        let child = start_serving(&config, dns, upstream.addr, admin).await;
        pods.push((child, socket));
    }
    let (old_socket, new_socket) = (pods[0].1.clone(), pods[1].1.clone());
    // `start_serving` saw the shared port ready, which either process may have answered:
    // each one's own socket says when that one is.
    for socket in [&old_socket, &new_socket] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while probe("ready", socket).0 != 0 {
            assert!(Instant::now() < deadline, "{} never ready", socket.display());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pods[0].0.terminate();
    // The old process's lameduck shows on its own socket (proof the SIGTERM was handled)...
    let deadline = Instant::now() + Duration::from_secs(2);
    let (code, stderr) = loop {
        let (code, stderr) = probe("ready", &old_socket);
        if code != 0 || Instant::now() > deadline {
            break (code, stderr);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(code, 1, "the old process still says ready");
    assert!(stderr.contains("503"), "{stderr}");
    // ...while it is alive, and the new one is ready, each asked through its own socket.
    assert_eq!(probe("live", &old_socket).0, 0);
    assert_eq!(probe("ready", &new_socket), (0, String::new()));
    let code = pods[0]
        .0
        .exit_code_within(Duration::from_secs(8), "the old process did not exit");
    assert_eq!(code, Some(0));
    // Gone: its socket answers nothing; the new one still says ready.
    assert_eq!(probe("live", &old_socket).0, 1);
    assert_eq!(probe("ready", &new_socket).0, 0);
    pods[1].0.terminate();
    let _ = pods[1].0 .0.wait();
    upstream.stop().await;
}

/// `/metrics?pod=NAME` on the admin port two processes share during a surge handover (each
/// scrape a new connection, which the kernel gives to either) is answered by pod NAME's
/// process, through the pod sockets (`admin.pod_sockets`): every scrape of a pod gives the
/// same count, and the two add up to the queries sent. A pod that is gone is 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_naming_its_pod_is_answered_by_that_pod_during_a_handover() {
    let upstream = EmbeddedUpstream::start("127.0.0.1:0".parse().unwrap(), &ZONES)
        .await
        .unwrap();
    let dir = TempDir::new("pod-sockets");
    let sockets = dir.0.join("pods");
    std::fs::create_dir(&sockets).unwrap();
    let config = dir.0.join("dnslens.yaml");
    std::fs::write(
        &config,
        format!(
            "lameduck: 1s\nshutdown_grace: 2s\nadmin: {{pod_sockets: {}}}\n",
            sockets.display()
        ),
    )
    .unwrap();
    let dns: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ask = |n: u16| async move {
        let query = query_bytes("web.default.svc.cluster.local.", RecordType::A, n, None);
        let answer = udp_exchange(dns, &query, Duration::from_secs(2)).await;
        assert!(answer.is_some(), "query {n} not answered");
    };
    let mut old = start_serving_as(&config, dns, upstream.addr, admin, Some("dnslens-old")).await;
    for n in 0..7 {
        ask(n).await;
    }
    let mut new = start_serving_as(&config, dns, upstream.addr, admin, Some("dnslens-new")).await;
    // The shared port said ready, perhaps through the old process: wait for the new one's.
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_get(admin, "/metrics?pod=dnslens-new").await.0 != 200 {
        assert!(Instant::now() < deadline, "dnslens-new never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Fresh sockets: the kernel spreads these over both processes.
    for n in 7..57 {
        ask(n).await;
    }
    let requests = |pod: &'static str| async move {
        let (status, body) = http_get(admin, &format!("/metrics?pod={pod}")).await;
        assert_eq!(status, 200, "{pod}: {body}");
        series_sum(&body, "dnslens_requests_total")
    };
    let (old_count, new_count) = (requests("dnslens-old").await, requests("dnslens-new").await);
    assert!(old_count >= 7.0, "old answered {old_count}");
    assert_eq!(old_count + new_count, 57.0);
    // Twenty scrapes of each, each over a new connection: always that pod's own count.
    for _ in 0..20 {
        assert_eq!(requests("dnslens-old").await, old_count);
        assert_eq!(requests("dnslens-new").await, new_count);
    }
    // A pod that has no dnslens here, and a name that is no pod name.
    let (status, body) = http_get(admin, "/metrics?pod=dnslens-gone").await;
    assert_eq!((status, body.contains("no dnslens of that pod")), (404, true), "{body}");
    let (status, _) = http_get(admin, "/metrics?pod=..%2Fetc").await;
    assert_eq!(status, 400);

    old.terminate();
    let code = old.exit_code_within(Duration::from_secs(6), "the old process did not exit");
    assert_eq!(code, Some(0));
    assert!(!sockets.join("dnslens-old.sock").exists());
    let (status, _) = http_get(admin, "/metrics?pod=dnslens-old").await;
    assert_eq!(status, 404);
    assert_eq!(requests("dnslens-new").await, new_count);
    new.terminate();
    let _ = new.0.wait();
    upstream.stop().await;
}

/// `admin.pod_sockets` without the pod's name is a start-up error saying so.
#[test]
fn pod_sockets_without_a_pod_name_is_refused_at_start() {
    let dir = TempDir::new("pod-sockets-no-name");
    let config = dir.0.join("dnslens.yaml");
    std::fs::write(
        &config,
        format!("admin: {{pod_sockets: {}}}\n", dir.0.display()),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dnslens"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .env_remove("POD_NAME")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("admin.pod_sockets: needs POD_NAME"),
        "{stderr}"
    );
}

/// One query over a fresh TCP connection; the answer, if any.
async fn tcp_ask_once(server: std::net::SocketAddr, name: &str) -> Option<Vec<u8>> {
    let mut stream = tokio::net::TcpStream::connect(server).await.ok()?;
    let query = query_bytes(name, RecordType::A, rand::random(), None);
    tcp_send(&mut stream, &query).await;
    tcp_recv(&mut stream).await
}

/// SIGTERM under load, in a sidecar's settings (no lameduck): a client sends four queries
/// a millisecond from one socket to a dnslens whose upstream answers after 100 ms (so hundreds
/// are in flight at the signal). Every query whose send completed before the signal is
/// answered — the ones in flight and the ones still in the socket's queue — each with its
/// own ID and question, and dnslens exits 0 within its grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_every_query_received_before_it() {
    let _alone = crate::harness::cpu_alone().await;
    let upstream = crate::harness::DelayedUpstream::start(Duration::from_millis(100)).await;
    let dir = TempDir::new("sigterm");
    let config = dir.0.join("dnslens.yaml");
    std::fs::write(&config, "lameduck: 0s\nshutdown_grace: 3s\n").unwrap();
    let dns: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut proxy = start_serving(&config, dns, upstream.addr, admin).await;

    let socket = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let receiver = socket.clone();
    let answers = tokio::spawn(async move {
        let mut answered = std::collections::HashSet::new();
        let mut buf = vec![0u8; 4096];
        while let Ok(Ok((len, _))) =
            tokio::time::timeout(Duration::from_secs(2), receiver.recv_from(&mut buf)).await
        {
            let answer = Message::from_vec(&buf[..len]).expect("a well-formed answer");
            let id = answer.metadata.id;
            assert_eq!(
                answer.queries[0].name().to_ascii(),
                format!("n{id}.example.org."),
                "the answer to its own question"
            );
            assert!(answered.insert(id), "answered twice: {id}");
        }
        answered
    });
    let signal_at = Instant::now() + Duration::from_millis(1_000);
    let mut sent_before_signal = Vec::new();
    let mut signalled = false;
    let mut id = 0u16;
    while id < 10_000 {
        if !signalled && Instant::now() >= signal_at {
            let kill = Command::new("kill")
                .args(["-TERM", &proxy.0.id().to_string()])
                .status()
                .unwrap();
            assert!(kill.success());
            signalled = true;
        }
        // Four queries a millisecond (a timer tick).
        for _ in 0..4 {
            let query = query_bytes(&format!("n{id}.example.org."), RecordType::A, id, None);
            // After the signal the socket may be gone: a refused send is not a lost query.
            if socket.send_to(&query, dns).await.is_ok() && !signalled {
                sent_before_signal.push(id);
            }
            id += 1;
        }
        if signalled && proxy.0.try_wait().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let code = proxy.exit_code_within(
        Duration::from_secs(5),
        "dnslens did not exit within its grace",
    );
    assert_eq!(code, Some(0));
    let answered = answers.await.unwrap();
    let lost: Vec<u16> = sent_before_signal
        .iter()
        .copied()
        .filter(|id| !answered.contains(id))
        .collect();
    assert!(
        sent_before_signal.len() > 1_000,
        "only {} queries before the signal",
        sent_before_signal.len()
    );
    assert!(
        lost.is_empty(),
        "{} of {} queries sent before SIGTERM unanswered: {:?}",
        lost.len(),
        sent_before_signal.len(),
        &lost[..lost.len().min(20)]
    );
    eprintln!(
        "reliability: sigterm sent_before_signal={} answered={} lost=0",
        sent_before_signal.len(),
        answered.len()
    );
}
