//! Reload without a restart: a new configuration switches upstreams under a steady client
//! with no failed query, a broken one is refused while the old one serves, and the binary
//! reloads on a changed config file and on SIGHUP.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dnslens::demo::EmbeddedUpstream;
use hickory_proto::op::Message;
use hickory_proto::rr::{RData, RecordType};

use crate::harness::*;

/// An upstream serving `reload.test.` with `who.reload.test A address`.
async fn upstream_answering(address: &str) -> EmbeddedUpstream {
    let zone = format!(
        "$ORIGIN reload.test.\n$TTL 30\n\
         @ IN SOA ns.reload.test. hostmaster.reload.test. 1 7200 1800 86400 30\n\
         @ IN NS ns.reload.test.\nns IN A 192.0.2.53\nwho IN A {address}\n"
    );
    EmbeddedUpstream::start("127.0.0.1:0".parse().unwrap(), &[("reload.test.", &zone)])
        .await
        .unwrap()
}

fn address_in(answer: &[u8]) -> Option<String> {
    let msg = Message::from_vec(answer).ok()?;
    msg.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(a.to_string()),
        _ => None,
    })
}

/// Asks `who.reload.test` every 5 ms from fresh sockets until `until`; the answers in order
/// (`None` for a query that got nothing within a second).
async fn steady_client(dns: SocketAddr, until: Instant) -> Vec<Option<String>> {
    let mut seen = Vec::new();
    while Instant::now() < until {
        let query = query_bytes("who.reload.test.", RecordType::A, rand::random(), None);
        let answer = udp_exchange(dns, &query, Duration::from_secs(1)).await;
        seen.push(answer.as_deref().and_then(address_in));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_switches_upstreams_under_a_steady_client_and_a_broken_config_is_refused() {
    let (first, second) = (
        upstream_answering("10.0.0.1").await,
        upstream_answering("10.0.0.2").await,
    );
    let mut config = test_config(&[first.addr]);
    config.cache.enabled = true;
    config.cache.max_ttl = Duration::ZERO; // every query reaches an upstream
    config.lookup.window = Duration::from_millis(100);
    let mut proxy = dnslens::Proxy::start(&config).await.unwrap();
    let dns = proxy.dns_addrs[0];
    let client = tokio::spawn(steady_client(dns, Instant::now() + Duration::from_secs(3)));

    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut next = config.clone();
    next.forward.upstreams = vec![dnslens::config::UpstreamAddr(second.addr)];
    proxy.reload_from(|| Ok(next.clone())).await;
    assert_eq!(proxy.dns_addrs, [dns], "the same address and port");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A broken config: refused, the running one stays.
    proxy
        .reload_from(|| {
            let mut broken = next.clone();
            broken.forward.attempts = 0;
            Ok(broken)
        })
        .await;

    let seen = client.await.unwrap();
    let failed = seen.iter().filter(|a| a.is_none()).count();
    assert_eq!(failed, 0, "{seen:?}");
    // First the first upstream, then the second, and never back.
    let switch = seen
        .iter()
        .position(|a| a.as_deref() == Some("10.0.0.2"))
        .expect("the second upstream answered");
    assert!(switch > 20, "{switch}");
    assert!(seen[..switch]
        .iter()
        .all(|a| a.as_deref() == Some("10.0.0.1")));
    assert!(seen[switch..]
        .iter()
        .all(|a| a.as_deref() == Some("10.0.0.2")));

    let (_, metrics) = http_get(proxy.metrics_addr, "/metrics").await;
    assert_eq!(
        series_in(&metrics, "dnslens_config_reloads_total{result=\"ok\"}"),
        Some(1.0)
    );
    assert_eq!(
        series_in(&metrics, "dnslens_config_reloads_total{result=\"error\"}"),
        Some(1.0)
    );
    // The removed upstream's series are gone (no stale dnslens_upstream_healthy).
    let gone = format!("dnslens_upstream_healthy{{upstream=\"{}\"}}", first.addr);
    assert_eq!(series_in(&metrics, &gone), None, "{metrics}");
    let now = format!("dnslens_upstream_healthy{{upstream=\"{}\"}}", second.addr);
    assert_eq!(series_in(&metrics, &now), Some(1.0));
    let (_, verbose) = http_get(proxy.metrics_addr, "/readyz?verbose").await;
    assert!(verbose.contains(&second.addr.to_string()), "{verbose}");
    assert!(!verbose.contains(&first.addr.to_string()), "{verbose}");
    proxy.shutdown().await;
}

/// The cache survives a reload that leaves `cache:` alone, and a new listen address is
/// bound (and the old one let go).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_cache_and_rebinds_a_changed_listen_address() {
    let upstream = upstream_answering("10.0.0.7").await;
    let mut config = test_config(&[upstream.addr]);
    config.cache.enabled = true;
    let mut proxy = dnslens::Proxy::start(&config).await.unwrap();
    let old_dns = proxy.dns_addrs[0];
    ask_udp(old_dns, "who.reload.test.", RecordType::A, None).await;
    // Another address (a port picked by the kernel: no race with other tests for it).
    let mut next = config.clone();
    next.listen = vec!["127.0.0.2:0".parse().unwrap()];
    next.mitigations.musl_shield = true;
    let restart_only = proxy.reload(next).await.unwrap();
    assert!(restart_only.is_empty(), "{restart_only:?}");
    let new_dns = proxy.dns_addrs[0];
    assert_eq!(new_dns.ip().to_string(), "127.0.0.2");
    assert_ne!(new_dns.port(), 0);
    let answer = ask_udp(new_dns, "who.reload.test.", RecordType::A, None).await;
    assert_eq!(answer.answers.len(), 1);
    let (_, metrics) = http_get(proxy.metrics_addr, "/metrics").await;
    assert_eq!(
        series_in(&metrics, "dnslens_cache_hits_total"),
        Some(1.0),
        "answered from the cache the first generation filled"
    );
    // The old address is let go once its listeners have answered what they held.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let query = query_bytes("who.reload.test.", RecordType::A, 7, None);
    assert!(udp_exchange(old_dns, &query, Duration::from_millis(300))
        .await
        .is_none());
    proxy.shutdown().await;
}

/// The binary: a changed config file is applied within a few seconds; a broken one is
/// refused with one log line naming the key; SIGHUP reloads too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reloads_a_changed_file_and_on_sighup() {
    let (first, second) = (
        upstream_answering("10.0.0.1").await,
        upstream_answering("10.0.0.2").await,
    );
    let dir = TempDir::new("reload");
    let file = dir.0.join("dnslens.yaml");
    let dns: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let yaml = |upstream: SocketAddr, attempts: u32| {
        format!(
            "listen: ['{dns}']\nadmin: {{listen: '{admin}'}}\nforward: {{upstreams: ['{upstream}'], attempts: {attempts}}}\n"
        )
    };
    std::fs::write(&file, yaml(first.addr, 2)).unwrap();
    let log = dir.0.join("dnslens.log");
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_dnslens"))
            .arg("serve")
            .arg("--config")
            .arg(&file)
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap(),
    );
    let answer_of = || async {
        let query = query_bytes("who.reload.test.", RecordType::A, rand::random(), None);
        udp_exchange(dns, &query, Duration::from_millis(500))
            .await
            .as_deref()
            .and_then(address_in)
    };
    let wait_for = |want: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            if answer_of().await.as_deref() == Some(want) {
                return;
            }
            assert!(Instant::now() < deadline, "never answered {want}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    wait_for("10.0.0.1").await;
    std::fs::write(&file, yaml(second.addr, 2)).unwrap();
    wait_for("10.0.0.2").await;
    std::fs::write(&file, yaml(first.addr, 0)).unwrap();
    let errors = "dnslens_config_reloads_total{result=\"error\"}";
    metric_at_least(admin, errors, 1.0).await;
    assert_eq!(
        answer_of().await.as_deref(),
        Some("10.0.0.2"),
        "the running config stays"
    );
    let kill = Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    metric_at_least(admin, errors, 2.0).await;
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(
        series_in(&metrics, "dnslens_config_reloads_total{result=\"ok\"}"),
        Some(1.0)
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    let _ = child.0.wait();
    let log = std::fs::read_to_string(&log).unwrap();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("configuration refused"))
        .collect();
    assert_eq!(refused.len(), 2, "{log}");
    assert!(refused[0].contains("attempts"), "{log}");
}
