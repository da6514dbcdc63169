//! `dnslens demo`: the whole product on a machine with no network and no config.
//!
//! Starts, in one process, an embedded authoritative upstream (hickory-server serving the
//! zone files beside this module: a Kubernetes-like `cluster.local` and a small "internet"
//! under a root zone, including the incident's misbehaviour — NOERROR with no address for
//! the search-expanded `alauda.cn.default.svc.cluster.local`), then the proxy in front of it
//! on `127.0.0.1:5353`, and serves until Ctrl-C. The same zones are the upstream of the
//! integration tests ([`EmbeddedUpstream`]) and are served by Knot in the end-to-end suite.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::Name;
use hickory_proto::serialize::txt::Parser;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use hickory_server::Server;

use crate::config::{Config, Mode, UpstreamAddr};
use crate::lookup::console::ConsoleTree;

pub mod clients;

/// The demo pod's search list and ndots, as Kubernetes writes them for namespace `default`.
pub const SEARCH: [&str; 3] = [
    "default.svc.cluster.local",
    "svc.cluster.local",
    "cluster.local",
];
pub const NDOTS: usize = 5;

/// The demo world's zone files: (origin, text).
pub const ZONES: [(&str, &str); 2] = [
    ("cluster.local.", include_str!("cluster.local.zone")),
    (".", include_str!("root.zone")),
];

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("zone {origin}: {message}")]
    Zone { origin: String, message: String },
    #[error("embedded upstream: {0}")]
    Io(#[from] std::io::Error),
}

/// An authoritative DNS server on a loopback port, UDP and TCP, serving zone files.
pub struct EmbeddedUpstream {
    pub addr: SocketAddr,
    server: Server<Catalog>,
}

impl EmbeddedUpstream {
    /// Serves `zones` (origin, zone-file text) on `addr` (port 0 picks one).
    pub async fn start(addr: SocketAddr, zones: &[(&str, &str)]) -> Result<Self, DemoError> {
        let mut catalog = Catalog::new();
        for (origin, text) in zones {
            let zone_error = |message: String| DemoError::Zone {
                origin: origin.to_string(),
                message,
            };
            let origin_name = Name::from_ascii(origin).map_err(|e| zone_error(e.to_string()))?;
            let (name, records) = Parser::new(*text, None, Some(origin_name))
                .parse()
                .map_err(|e| zone_error(e.to_string()))?;
            let handler = InMemoryZoneHandler::<TokioRuntimeProvider>::new(
                name.clone(),
                records,
                ZoneType::Primary,
                AxfrPolicy::Deny,
            )
            .map_err(zone_error)?;
            catalog.upsert(name.into(), vec![Arc::new(handler)]);
        }
        let (udp, tcp) = bind_udp_and_tcp(addr).await?;
        let addr = udp.local_addr()?;
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64);
        Ok(EmbeddedUpstream { addr, server })
    }

    pub async fn stop(mut self) {
        let _ = self.server.shutdown_gracefully().await;
    }
}

/// A UDP socket and a TCP listener on one address. With port 0 the UDP socket picks the
/// port, and another process may hold that port for TCP: then it tries another port.
async fn bind_udp_and_tcp(
    addr: SocketAddr,
) -> std::io::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let mut tries_left = if addr.port() == 0 { 16 } else { 1 };
    loop {
        let udp = tokio::net::UdpSocket::bind(addr).await?;
        tries_left -= 1;
        match tokio::net::TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries_left > 0 => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Runs the demo until SIGINT/SIGTERM. `config` carries the proxy's listen and metrics
/// addresses; its upstreams are replaced by the embedded server.
pub async fn run(
    mut config: Config,
    render_journal: fn(&[crate::anomaly::journal::Entry]) -> String,
) -> anyhow::Result<()> {
    let upstream = EmbeddedUpstream::start("127.0.0.1:0".parse()?, &ZONES).await?;
    config.forward.upstreams = vec![UpstreamAddr(upstream.addr)];
    config.mode = Mode::Sidecar;
    config.search.list = SEARCH.iter().map(|s| s.to_string()).collect();
    config.search.ndots = Some(NDOTS as u32);
    config.lookup.window = Duration::from_secs(1);
    config.validate()?;
    let trees: Box<dyn crate::lookup::LookupObserver> =
        Box::new(ConsoleTree::new(std::io::stdout()));
    let proxy = crate::Proxy::start_with_observers(&config, vec![trees]).await?;
    let dns = proxy.dns_addrs[0];
    let (ip, port) = (dns.ip(), dns.port());
    println!(
        "\ndnslens demo: proxy on {dns} (UDP+TCP) in front of an embedded Kubernetes-like upstream on {}\n\
         The pod's resolv.conf would say: search {} / options ndots:{NDOTS}\n\
         Every lookup through the proxy is printed below as a tree (the same shape is exported\n\
         as an OpenTelemetry trace when OTEL_EXPORTER_OTLP_ENDPOINT is set).\n",
        upstream.addr,
        SEARCH.join(" "),
    );
    simulated_clients(dns, &proxy.journal, render_journal).await;
    fixes(&config, upstream.addr).await?;
    println!(
        "Try:\n  \
         dig @{ip} -p {port} kubernetes.default.svc.cluster.local\n  \
         dig @{ip} -p {port} web.default.svc.cluster.local AAAA\n  \
         dig @{ip} -p {port} www.example.org                      # CNAME chain\n  \
         dig @{ip} -p {port} big.example.org TXT +noedns          # truncated over UDP; dig retries over TCP\n  \
         dig @{ip} -p {port} alauda.cn.default.svc.cluster.local  # NOERROR, no address: the musl trap\n  \
         dig @{ip} -p {port} nosuch.example.org                   # NXDOMAIN\n\n\
         Metrics: curl -s http://{0}/metrics | grep ^dnslens_\n\
         Anomalies: dnslens anomalies --addr {0}   (or cargo run -p dnslens -- anomalies --addr {0})\n\
         Timeline:  http://{0}/ui/?since=15m   (the incident above, in a browser)\n\
         Ctrl-C stops.\n",
        proxy.metrics_addr
    );
    crate::wait_for_signal().await;
    proxy.shutdown().await;
    upstream.stop().await;
    Ok(())
}

/// Lookups as pods would make them, one after another so their trees print in order, then
/// the incident's other two patterns, then the anomaly journal.
async fn simulated_clients(
    dns: SocketAddr,
    journal: &crate::anomaly::journal::Journal,
    render_journal: fn(&[crate::anomaly::journal::Entry]) -> String,
) {
    use clients::{getaddrinfo, Libc};
    let cases = [
        (
            "web",
            Libc::Glibc,
            "a service in the pod's namespace: the first suffix answers",
        ),
        (
            "alauda.cn",
            Libc::Glibc,
            "an external name, glibc: walks past the empty NOERROR to the absolute name",
        ),
        (
            "alauda.cn",
            Libc::Musl,
            "the same name, musl (Alpine): stops at the empty NOERROR and fails",
        ),
        (
            "nosuch.example.org",
            Libc::Glibc,
            "a name that does not exist: every attempt NXDOMAIN",
        ),
    ];
    for (name, libc, what) in cases {
        println!("== getaddrinfo(\"{name}\") with {libc:?}: {what}");
        // Let each lookup end before the next starts, so its tree prints right here: a lookup
        // that got its answer ends after a short linger, an abandoned one after the window.
        match getaddrinfo(dns, name, &SEARCH, NDOTS, libc).await {
            Ok(addrs) => {
                println!("   -> {addrs:?}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => {
                println!("   -> error: {e}");
                tokio::time::sleep(Duration::from_millis(1300)).await;
            }
        }
    }
    let wait = Duration::from_secs(1);
    println!("== an old-kernel node: A and AAAA sent together, the AAAA lost in conntrack and re-sent alone {wait:?} later (5 s in real life)");
    report(clients::lost_twin(dns, "github.com.", wait).await);
    println!("== an answer lost on the way back: the client asks again {wait:?} later");
    report(clients::repeated_question(dns, "example.org.", wait).await);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    println!("== what was abnormal in the last 10 minutes (`dnslens anomalies`):\n");
    print!(
        "{}",
        render_journal(&journal.query(
            &crate::anomaly::journal::Window::last(Duration::from_secs(600)),
            &Default::default()
        ))
    );
    println!();
}

/// The opt-in fixes on a second proxy in front of the same upstream: the musl shield lets
/// musl walk past the empty NOERROR, autopath answers a search walk in one round trip, the
/// cache answers a repeat.
async fn fixes(config: &Config, upstream: SocketAddr) -> anyhow::Result<()> {
    use clients::{getaddrinfo, Libc};
    let mut fixed = config.clone();
    fixed.listen = vec!["127.0.0.1:0".parse()?];
    fixed.admin.listen = "127.0.0.1:0".parse()?;
    fixed.forward.upstreams = vec![UpstreamAddr(upstream)];
    fixed.cache.enabled = true;
    fixed.mitigations.musl_shield = true;
    fixed.mitigations.autopath = true;
    fixed.validate()?;
    let trees: Box<dyn crate::lookup::LookupObserver> =
        Box::new(ConsoleTree::new(std::io::stdout()));
    let proxy = crate::Proxy::start_with_observers(&fixed, vec![trees]).await?;
    let dns = proxy.dns_addrs[0];
    println!(
        "== the fixes, opt-in: a second dnslens on {dns} with cache, musl_shield and autopath on\n"
    );
    let cases = [
        (
            "alauda.cn",
            Libc::Musl,
            "musl again: the shield turns the empty NOERROR into NXDOMAIN, musl walks on",
        ),
        (
            "github.com",
            Libc::Glibc,
            "glibc: autopath answers the first query with a CNAME, 2 queries instead of 8",
        ),
        (
            "github.com",
            Libc::Glibc,
            "the same again: autopath's walk is answered from the cache",
        ),
    ];
    for (name, libc, what) in cases {
        println!("== getaddrinfo(\"{name}\") with {libc:?}: {what}");
        match getaddrinfo(dns, name, &SEARCH, NDOTS, libc).await {
            Ok(addrs) => println!("   -> {addrs:?}"),
            Err(e) => println!("   -> error: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    proxy.shutdown().await;
    Ok(())
}

fn report(result: Result<(), &'static str>) {
    if let Err(e) = result {
        println!("   -> error: {e}");
    }
}
