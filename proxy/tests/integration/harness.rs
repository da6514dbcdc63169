//! The shared harness: an upstream, a proxy in front of it, and small DNS and HTTP clients.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dnslens::config::{Config, UpstreamAddr};
use dnslens::demo::{EmbeddedUpstream, ZONES};
use dnslens::Proxy;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Tests that saturate the CPU (floods, the soak, load at shutdown) and the namespace scenes,
/// whose verdicts rest on timing (a lookup's window, A and AAAA read together), each run
/// alone among themselves: beside them only the light in-process tests. On a 2-core runner a
/// flood beside a scene starved a musl walk for longer than the scene's lookup window and
/// split it in two (a false NXDOMAIN lookup), and three scenes at once did the same.
static CPU: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held for the whole of a test that saturates the CPU.
pub async fn cpu_alone() -> tokio::sync::MutexGuard<'static, ()> {
    CPU.lock().await
}

/// Held by a timing-sensitive scene (outside any runtime): no flood and no other scene runs
/// meanwhile.
pub fn scene_alone() -> tokio::sync::MutexGuard<'static, ()> {
    CPU.blocking_lock()
}

/// A config for tests: ephemeral loopback ports, short timeouts.
pub fn test_config(upstreams: &[SocketAddr]) -> Config {
    let mut config = Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        shutdown_grace: Duration::from_secs(2),
        ..Config::default()
    };
    config.forward.upstreams = upstreams.iter().map(|a| UpstreamAddr(*a)).collect();
    config.forward.timeout = Duration::from_millis(300);
    config.forward.attempts = 2;
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config.listener.udp_workers = 2;
    config
}

/// The demo world's upstream plus dnslens in front of it.
pub struct World {
    pub upstream: EmbeddedUpstream,
    pub proxy: Proxy,
}

impl World {
    pub async fn start() -> World {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> World {
        let upstream = EmbeddedUpstream::start("127.0.0.1:0".parse().unwrap(), &ZONES)
            .await
            .expect("embedded upstream");
        let mut config = test_config(&[upstream.addr]);
        tweak(&mut config);
        config.validate().expect("valid test config");
        let proxy = Proxy::start(&config).await.expect("proxy starts");
        World { upstream, proxy }
    }

    pub fn dns(&self) -> SocketAddr {
        self.proxy.dns_addrs[0]
    }

    pub async fn stop(self) {
        self.proxy.shutdown().await;
        self.upstream.stop().await;
    }
}

/// A query message as a stub resolver sends it (RD set).
pub fn query_bytes(name: &str, qtype: RecordType, id: u16, edns: Option<u16>) -> Vec<u8> {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        msg.set_edns(e);
    }
    msg.to_vec().unwrap()
}

/// Sends one datagram and waits for one answer, `None` on timeout.
pub async fn udp_exchange(server: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let local = if server.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let socket = UdpSocket::bind(local).await.unwrap();
    socket.send_to(packet, server).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    match tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
        Ok(Ok((len, _))) => Some(buf[..len].to_vec()),
        _ => None,
    }
}

pub async fn ask_udp(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    edns: Option<u16>,
) -> Message {
    let id = rand::random();
    let answer = udp_exchange(
        server,
        &query_bytes(name, qtype, id, edns),
        Duration::from_secs(3),
    )
    .await
    .unwrap_or_else(|| panic!("no UDP answer from {server} for {name} {qtype}"));
    let msg = Message::from_vec(&answer).expect("answer parses");
    assert_eq!(msg.metadata.id, id, "answer carries the client's ID");
    msg
}

/// Writes one length-prefixed message on a TCP stream.
pub async fn tcp_send(stream: &mut TcpStream, message: &[u8]) {
    let mut frame = (message.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(message);
    stream.write_all(&frame).await.unwrap();
}

/// Reads one length-prefixed message; `None` if the stream closed.
pub async fn tcp_recv(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.ok()?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut message).await.ok()?;
    Some(message)
}

pub async fn ask_tcp(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let id = rand::random();
    tcp_send(&mut stream, &query_bytes(name, qtype, id, None)).await;
    let answer = tokio::time::timeout(Duration::from_secs(3), tcp_recv(&mut stream))
        .await
        .expect("TCP answer in time")
        .expect("TCP answer");
    let msg = Message::from_vec(&answer).unwrap();
    assert_eq!(msg.metadata.id, id);
    msg
}

/// A plain HTTP/1.0 GET: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_raw(
        addr,
        format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes(),
    )
    .await
}

pub async fn http_raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    // A refused connection reads as status 0 (callers polling a starting server retry).
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let _ = stream.write_all(request).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    http_status_and_body(&response)
}

/// The status and body of a raw HTTP/1 response (status 0 when there is none).
pub fn http_status_and_body(response: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one series on `addr`'s /metrics. `series` is the name with its labels,
/// e.g. `dnslens_forward_failures_total{reason="exhausted"}`: the label set must match
/// exactly (any order), and a missing series fails the test — it is not 0.
pub async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    series_value(&body, series)
}

/// A series' name and label set, from `name{a="x",b="y"}` (an exposition line's first
/// field, or a series as a test names it).
pub fn parse_series(text: &str) -> Option<(String, std::collections::BTreeMap<String, String>)> {
    let (name, labels) = match text.split_once('{') {
        None => return Some((text.to_string(), Default::default())),
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
    };
    let mut set = std::collections::BTreeMap::new();
    let mut rest = labels;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => value.push(chars.next()?.1),
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        set.insert(key.to_string(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some((name.to_string(), set))
}

/// The value of the series exactly matching `series` in an exposition body, if present.
pub fn series_in(body: &str, series: &str) -> Option<f64> {
    let wanted = parse_series(series).unwrap_or_else(|| panic!("not a series: {series}"));
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            // `name{labels} value [# {exemplar} value]`; label values hold no spaces here.
            let mut fields = line.split_whitespace();
            let found = parse_series(fields.next()?)?;
            (found == wanted).then(|| fields.next()?.parse().ok())?
        })
}

/// As [`series_in`], failing the test (with the family's series) when it is absent.
pub fn series_value(body: &str, series: &str) -> f64 {
    series_in(body, series).unwrap_or_else(|| {
        let family = series.split('{').next().unwrap_or(series);
        let present: Vec<&str> = body.lines().filter(|l| l.starts_with(family)).collect();
        panic!(
            "no series {series} on /metrics; the family has:\n{}",
            present.join("\n")
        )
    })
}

/// The sum of every series of a family (a counter's name with `_total`); the family must
/// be registered (its `# TYPE` line present), though it may have no series yet.
pub fn series_sum(body: &str, family: &str) -> f64 {
    let base = family.strip_suffix("_total").unwrap_or(family);
    assert!(
        body.lines()
            .any(|l| l.starts_with(&format!("# TYPE {base} "))
                || l.starts_with(&format!("# TYPE {family} "))),
        "no metric family {family} on /metrics"
    );
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let (name, _) = parse_series(fields.next()?)?;
            (name == family).then(|| fields.next()?.parse::<f64>().ok())?
        })
        .sum()
}

/// The answer and authority sections and RCODE, the parts that must match the upstream.
pub fn essence(msg: &Message) -> (u8, Vec<String>, Vec<String>) {
    (
        msg.metadata.response_code.low(),
        msg.answers.iter().map(|r| r.to_string()).collect(),
        msg.authorities.iter().map(|r| r.to_string()).collect(),
    )
}

/// A port that was free a moment ago on 127.0.0.1 for both UDP and TCP.
pub fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "dnslens-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // DNSLENS_KEEP_TEMP=1 keeps a scene's files (logs, metric snapshots, spans) to read.
        if std::env::var_os("DNSLENS_KEEP_TEMP").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed and reaped on drop.
pub struct Child(pub std::process::Child);

impl Child {
    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM to {}", self.0.id());
    }

    /// The exit code, once the process has exited; fails the test if it is still running
    /// `within` from now (`what` says what was waited for).
    pub fn exit_code_within(&mut self, within: std::time::Duration, what: &str) -> Option<i32> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `script` with bash in a new network and mount namespace (mounts private to it), with
/// /usr/sbin and /sbin on PATH (knotd, iptables, ip); needs root and util-linux's unshare.
pub fn run_in_new_namespace(script: &str) -> std::process::ExitStatus {
    std::process::Command::new("unshare")
        .args(["-n", "-m", "--propagation", "private", "bash", "-c", script])
        .env(
            "PATH",
            format!(
                "{}:/usr/sbin:/sbin",
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .status()
        .expect("unshare (util-linux) is needed, as root; scripts/test.sh installs it")
}

/// Writes the demo zones and a Knot configuration serving them on 127.0.0.1:`port` into
/// `dir`; returns the configuration's path.
pub fn knot_config(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    knot_config_on(dir, &[format!("127.0.0.1@{port}")])
}

/// As [`knot_config`], listening on each of `listen` (Knot's `ADDR@PORT` form).
pub fn knot_config_on(dir: &std::path::Path, listen: &[String]) -> std::path::PathBuf {
    knot_config_with(dir, listen, &ZONES)
}

/// As [`knot_config_on`], serving `zones` (origin, zone file text).
pub fn knot_config_with(
    dir: &std::path::Path,
    listen: &[String],
    zones: &[(&str, &str)],
) -> std::path::PathBuf {
    let mut zone_list = String::new();
    for (origin, text) in zones {
        let file = if *origin == "." {
            "root.zone".to_string()
        } else {
            format!("{origin}zone")
        };
        std::fs::write(dir.join(&file), text).unwrap();
        let domain = origin
            .strip_suffix('.')
            .filter(|o| !o.is_empty())
            .unwrap_or(".");
        zone_list.push_str(&format!("  - domain: {domain}\n    file: {file}\n"));
    }
    let d = dir.display();
    let listen = listen.join(", ");
    let conf = format!(
        "server:\n  rundir: \"{d}\"\n  pidfile: \"{d}/knot.pid\"\n  listen: [{listen}]\n  udp-workers: 1\n  tcp-workers: 1\n  background-workers: 1\n\
         log:\n  - target: stderr\n    any: warning\n\
         database:\n  storage: \"{d}\"\n\
         template:\n  - id: default\n    storage: \"{d}\"\n    zonefile-load: whole\n    journal-content: none\n\
         zone:\n{zone_list}"
    );
    let path = dir.join("knot.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

/// Knot DNS serving the demo zones on a loopback port, as a real, independent upstream.
pub struct Knot {
    pub addr: SocketAddr,
    _child: Child,
    _dir: TempDir,
}

impl Knot {
    pub async fn start() -> Knot {
        Self::start_dual(false).await.0
    }

    /// Knot on 127.0.0.1 and, with `v6`, on [::1] at the same port: (knot, the IPv6
    /// address).
    pub async fn start_dual(v6: bool) -> (Knot, SocketAddr) {
        Self::start_serving(v6, &ZONES, "kubernetes.default.svc.cluster.local.").await
    }

    /// Knot serving `zones`, ready once it answers `probe` (a name it has) with NOERROR.
    pub async fn start_serving(
        v6: bool,
        zones: &[(&str, &str)],
        probe: &str,
    ) -> (Knot, SocketAddr) {
        let dir = TempDir::new("knot");
        let port = free_port();
        let mut listen = vec![format!("127.0.0.1@{port}")];
        if v6 {
            listen.push(format!("::1@{port}"));
        }
        let conf_path = knot_config_with(&dir.0, &listen, zones);
        let child = Child(
            std::process::Command::new("knotd")
                .arg("-c")
                .arg(&conf_path)
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect(
                    "knotd must be installed (apt-get install knot); scripts/test.sh installs it",
                ),
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let probe = query_bytes(probe, RecordType::A, 1, None);
        for _ in 0..100 {
            if let Some(answer) = udp_exchange(addr, &probe, Duration::from_millis(50)).await {
                if answer.len() > 12 && answer[3] & 0x0f == 0 {
                    let v6_addr = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
                    let knot = Knot {
                        addr,
                        _child: child,
                        _dir: dir,
                    };
                    return (knot, v6_addr);
                }
            }
        }
        panic!("knotd did not answer on {addr}");
    }
}

/// Runs `dig` with `args` against `server` and returns its output with the parts that
/// differ between two servers answering the same thing (ID, timing, server line) removed.
pub fn dig(server: SocketAddr, args: &[&str]) -> String {
    let output = std::process::Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args(["+time=2", "+tries=1", "+nocookie"])
        .args(args)
        .output()
        .expect("dig must be installed (bind9-dnsutils); scripts/test.sh installs it");
    assert!(
        output.status.success() || !output.stdout.is_empty(),
        "dig {args:?} failed"
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| {
            !(l.starts_with(";; Query time")
                || l.starts_with(";; SERVER")
                || l.starts_with(";; WHEN")
                || l.starts_with("; <<>> DiG")
                || l.starts_with(";; MSG SIZE"))
        })
        .map(|l| match l.find(", id: ") {
            Some(i) => format!("{}, id: X", &l[..i]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until a series reaches at least `min` (counters move after the event they count,
/// e.g. after the collector's answer), and returns its value; panics after 5 s.
pub async fn metric_at_least(addr: SocketAddr, series: &str, min: f64) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200);
        // Absent counts as not yet: a labelled series appears with its first event.
        let value = series_in(&body, series).unwrap_or(f64::NAN);
        if value >= min {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} stayed at {value}, below {min}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A counting relay: an upstream stand-in in front of a real one that holds every query for `delay` and counts
/// what it relays, over UDP and over TCP (pipelined, one task per query).
pub struct UpstreamRelay {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub seen: Arc<AtomicUsize>,
}

impl UpstreamRelay {
    pub async fn start(upstream: SocketAddr, delay: Duration) -> UpstreamRelay {
        let seen = Arc::new(AtomicUsize::new(0));
        let udp = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let udp_addr = udp.local_addr().unwrap();
        let count = seen.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            while let Ok((len, from)) = udp.recv_from(&mut buf).await {
                count.fetch_add(1, Ordering::SeqCst);
                let query = buf[..len].to_vec();
                let udp = udp.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if let Some(answer) =
                        udp_exchange(upstream, &query, Duration::from_secs(2)).await
                    {
                        let _ = udp.send_to(&answer, from).await;
                    }
                });
            }
        });
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp_addr = tcp.local_addr().unwrap();
        let count = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = tcp.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let (mut reader, writer) = stream.into_split();
                    let writer = Arc::new(tokio::sync::Mutex::new(writer));
                    loop {
                        let mut len = [0u8; 2];
                        if reader.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if reader.read_exact(&mut query).await.is_err() {
                            return;
                        }
                        count.fetch_add(1, Ordering::SeqCst);
                        let writer = writer.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let mut upstream = TcpStream::connect(upstream).await.unwrap();
                            tcp_send(&mut upstream, &query).await;
                            if let Some(answer) = tcp_recv(&mut upstream).await {
                                let mut frame = (answer.len() as u16).to_be_bytes().to_vec();
                                frame.extend_from_slice(&answer);
                                let _ = writer.lock().await.write_all(&frame).await;
                            }
                        });
                    }
                });
            }
        });
        UpstreamRelay {
            udp: udp_addr,
            tcp: tcp_addr,
            seen,
        }
    }
}

#[test]
fn series_matching_is_exact() {
    let body = "# TYPE dnslens_x counter\n\
                dnslens_x_total{a=\"1\",b=\"10\"} 7\n\
                dnslens_x_total{a=\"1\"} 3\n\
                dnslens_x_total{a=\"1\",b=\"1\"} 5 # {trace_id=\"ab\"} 1.0\n";
    assert_eq!(
        series_in(body, "dnslens_x_total{b=\"1\",a=\"1\"}"),
        Some(5.0)
    );
    assert_eq!(series_in(body, "dnslens_x_total{a=\"1\"}"), Some(3.0));
    assert_eq!(
        series_in(body, "dnslens_x_total{a=\"1\",b=\"10\"}"),
        Some(7.0)
    );
    assert_eq!(series_in(body, "dnslens_x_total{a=\"2\"}"), None);
    assert_eq!(series_in(body, "dnslens_x_total"), None);
    assert_eq!(series_sum(body, "dnslens_x_total"), 15.0);
    let missing = std::panic::catch_unwind(|| series_value(body, "dnslens_y_total"));
    assert!(missing.is_err(), "a missing series is an error, not 0");
}

/// Runs `cmd` with `input` on its stdin; its output.
pub fn output_with_stdin(cmd: &mut std::process::Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// The minimal valid answer to `query`: same ID and question, QR set, NOERROR, no records.
pub fn empty_answer(query: &[u8]) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    let mut answer = Message::response(msg.metadata.id, msg.metadata.op_code);
    answer.metadata.recursion_desired = msg.metadata.recursion_desired;
    for q in msg.queries {
        answer.add_query(q);
    }
    answer.to_vec().ok()
}

/// An upstream that answers every query after `delay`, while `on`.
pub struct DelayedUpstream {
    pub addr: SocketAddr,
    pub on: Arc<std::sync::atomic::AtomicBool>,
    /// The last query received, as it arrived.
    pub last_query: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl DelayedUpstream {
    pub async fn start(delay: Duration) -> DelayedUpstream {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = socket.local_addr().unwrap();
        let on = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let answering = on.clone();
        let last_query = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = last_query.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                *record.lock().unwrap() = buf[..len].to_vec();
                if !answering.load(std::sync::atomic::Ordering::Relaxed) {
                    continue;
                }
                let Some(answer) = empty_answer(&buf[..len]) else {
                    continue;
                };
                let socket = socket.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = socket.send_to(&answer, from).await;
                });
            }
        });
        DelayedUpstream {
            addr,
            on,
            last_query,
        }
    }
}
