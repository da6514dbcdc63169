//! A real Prometheus server scrapes dnslens, evaluates config/alerts.yaml, and the empty
//! NOERROR alert becomes active after a musl client falls into the trap (pending: it fires
//! after its `for: 5m`, which the promtool tests cover with simulated time).

use std::time::{Duration, Instant};

use dnslens::demo::clients::{getaddrinfo, Libc};
use dnslens::demo::{NDOTS, SEARCH};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_dnslens_and_the_empty_noerror_alert_becomes_active() {
    let world = World::start_with(|c| {
        c.search.list = SEARCH.iter().map(|s| s.to_string()).collect();
        c.search.ndots = Some(NDOTS as u32);
        c.lookup.window = Duration::from_millis(300);
    })
    .await;
    let dir = TempDir::new("prometheus");
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/alerts.yaml");
    std::fs::write(
        dir.0.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: dnslens\n    static_configs:\n      - targets: ['{}']\n",
            rules.display(),
            world.proxy.metrics_addr
        ),
    )
    .unwrap();
    let (_prometheus, api) = start_prometheus("prometheus", &dir.0);
    // Wait until the anomaly series has been scraped at 0.
    let query =
        "/api/v1/query?query=dnslens_anomalies_total%7Bkind%3D%22empty_noerror_search%22%7D";
    wait_until(Duration::from_secs(30), || async {
        http_get(api, query).await.1.contains("\"value\"")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let result = getaddrinfo(world.dns(), "alauda.cn", &SEARCH, NDOTS, Libc::Musl).await;
    assert_eq!(result, Err("Name does not resolve"));

    wait_until(Duration::from_secs(30), || async {
        let (_, body) = http_get(api, "/api/v1/alerts").await;
        body.contains("DNSLensEmptyNoerrorBreakingClients")
            && body.contains("\"state\":\"pending\"")
    })
    .await;
    world.stop().await;
}

pub async fn wait_until<F, Fut>(timeout: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A Prometheus server (`program`: Debian's, or one built by control-plane.sh) on a free
/// loopback port, reading `dir/prometheus.yml`, its data and log (`prometheus.log`) in
/// `dir`; stopped when the child drops.
pub fn start_prometheus(
    program: impl AsRef<std::ffi::OsStr>,
    dir: &std::path::Path,
) -> (Child, std::net::SocketAddr) {
    start_prometheus_with(program, dir, &[])
}

/// As [`start_prometheus`], with more flags (e.g. `--enable-feature=exemplar-storage`).
pub fn start_prometheus_with(
    program: impl AsRef<std::ffi::OsStr>,
    dir: &std::path::Path,
    flags: &[&str],
) -> (Child, std::net::SocketAddr) {
    let api: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = std::process::Command::new(program)
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={api}"))
        .args(flags)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("prometheus must be installed (Debian prometheus; scripts/test.sh installs it) or built (scripts/control-plane.sh build)");
    (Child(child), api)
}
