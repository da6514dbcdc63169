//! dnstap read by a real reader: Debian's `dnstap` (golang-dnstap's command, the reader
//! CoreDNS's docs use) listens on a unix socket or TCP and prints each message as JSON.
//! Every query and response of a scene arrives decoded, with its client address and port,
//! the DNS message and its time; the upstream side too when asked for. With the reader
//! stopped DNS is answered as before and the messages are counted as dropped; started
//! again, the stream reconnects. A reader that stops reading (SIGSTOP) fills the queue:
//! drops are counted, answers are not delayed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hickory_proto::rr::RecordType;
use serde_json::Value;

use crate::harness::*;

/// `dnstap` reading from `from` (`-u PATH` or `-l HOST:PORT`), JSON lines to `out`.
fn reader(args: [&str; 2], out: &Path) -> Child {
    assert!(
        Path::new("/usr/bin/dnstap").exists(),
        "the dnstap reader is not installed (apt-get install golang-github-dnstap-golang-dnstap-cli; scripts/test.sh does)"
    );
    let file = std::fs::File::create(out).unwrap();
    Child(
        Command::new("/usr/bin/dnstap")
            .args(args)
            .arg("-j")
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .expect("dnstap runs"),
    )
}

/// The messages the reader printed.
fn messages(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits until the reader printed `count` messages; them.
fn wait_messages(out: &Path, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let found = messages(out);
        if found.len() >= count {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "the reader printed {} messages, not {count}",
            found.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn wait_metric(addr: SocketAddr, series: &str, wanted: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = http_get(addr, "/metrics").await;
        if let Some(value) = series_in(&body, series).filter(|v| wanted(*v)) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{series}: {:?}",
            series_in(&body, series)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// RFC 3339 with nanoseconds, as the reader prints times, in unix seconds.
fn seconds(time: &Value) -> f64 {
    let text = time.as_str().expect("a time");
    humantime::parse_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn of_type<'a>(all: &'a [Value], kind: &str) -> Vec<&'a Value> {
    all.iter()
        .filter(|m| m["message"]["type"] == kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_and_answer_reaches_a_real_dnstap_reader() {
    let dir = TempDir::new("dnstap");
    let socket: PathBuf = dir.0.join("dnstap.sock");
    let out = dir.0.join("reader-1.json");
    let first_reader = reader(["-u", socket.to_str().unwrap()], &out);
    wait_socket(&socket);
    let path = socket.clone();
    let world = World::start_with(|c| {
        c.dnstap.socket = Some(path.display().to_string());
        c.dnstap.identity = Some("node-1".into());
        c.dnstap.queue = 64;
        c.dnstap.messages = vec![
            dnslens::dnstap::MessageKind::ClientQuery,
            dnslens::dnstap::MessageKind::ClientResponse,
            dnslens::dnstap::MessageKind::ForwarderQuery,
            dnslens::dnstap::MessageKind::ForwarderResponse,
        ];
    })
    .await;
    let m = world.proxy.metrics_addr;
    wait_metric(m, "dnslens_dnstap_connected", |v| v == 1.0).await;

    // The scene: three names over UDP, one over TCP.
    let start = unix_now();
    let names = [
        "example.org.",
        "kubernetes.default.svc.cluster.local.",
        "nosuch.example.org.",
    ];
    let mut asked = Vec::new();
    for name in names {
        let id: u16 = rand::random();
        let answer = udp_exchange(
            world.dns(),
            &query_bytes(name, RecordType::A, id, None),
            Duration::from_secs(3),
        )
        .await
        .expect("answered");
        asked.push((name, id, answer));
    }
    let over_tcp = ask_tcp(world.dns(), "example.org.", RecordType::AAAA).await;
    let end = unix_now();
    let all = wait_messages(&out, 16);
    assert_eq!(all.len(), 16, "{all:#?}");
    assert_eq!(
        dnslens_series(m, "dnslens_dnstap_messages_total").await,
        16.0
    );
    for message in &all {
        assert_eq!(message["identity"], "node-1");
        assert_eq!(
            message["version"],
            format!("dnslens {}", env!("CARGO_PKG_VERSION"))
        );
    }
    let queries = of_type(&all, "CLIENT_QUERY");
    let responses = of_type(&all, "CLIENT_RESPONSE");
    assert_eq!((queries.len(), responses.len()), (4, 4));
    assert_eq!(of_type(&all, "FORWARDER_QUERY").len(), 4);
    assert_eq!(of_type(&all, "FORWARDER_RESPONSE").len(), 4);
    for (name, id, answer) in &asked {
        let header = format!("id: {id}\n");
        let query = queries
            .iter()
            .find(|q| {
                let text = q["message"]["query_message"].as_str().unwrap_or("");
                text.contains(&header) && text.contains(name)
            })
            .unwrap_or_else(|| panic!("no CLIENT_QUERY for {name} id {id}: {queries:#?}"));
        let q = &query["message"];
        assert_eq!(q["socket_protocol"], "UDP");
        assert_eq!(q["socket_family"], "INET");
        assert_eq!(q["query_address"], "127.0.0.1");
        let time = seconds(&q["query_time"]);
        assert!(
            time >= start && time <= end,
            "{time} outside {start}..{end}"
        );
        // The response, as sent: the same id and rcode the client got.
        let rcode = match hickory_proto::op::Message::from_vec(answer)
            .unwrap()
            .metadata
            .response_code
        {
            hickory_proto::op::ResponseCode::NoError => "NOERROR",
            hickory_proto::op::ResponseCode::NXDomain => "NXDOMAIN",
            other => panic!("unexpected {other:?}"),
        };
        let response = responses
            .iter()
            .map(|r| &r["message"])
            .find(|r| r["query_port"] == q["query_port"])
            .unwrap_or_else(|| panic!("no CLIENT_RESPONSE to port {}", q["query_port"]));
        let text = response["response_message"].as_str().unwrap();
        assert!(text.contains(&header), "{text}");
        assert!(
            text.contains(&format!("status: {rcode},")),
            "{rcode}: {text}"
        );
        assert!(seconds(&response["response_time"]) >= time);
    }
    let tcp = queries
        .iter()
        .find(|q| q["message"]["socket_protocol"] == "TCP")
        .expect("the TCP query");
    assert!(tcp["message"]["query_message"]
        .as_str()
        .unwrap()
        .contains(&format!("id: {}\n", over_tcp.metadata.id)));
    for forwarded in of_type(&all, "FORWARDER_QUERY") {
        let upstream = &forwarded["message"];
        assert_eq!(upstream["response_address"], "127.0.0.1");
        assert_eq!(upstream["response_port"], world.upstream.addr.port());
    }

    // The reader stops: DNS is answered as before; the messages are counted as dropped.
    drop(first_reader);
    std::fs::remove_file(&socket).ok();
    for _ in 0..5 {
        ask_udp(world.dns(), "example.org.", RecordType::A, None).await;
    }
    wait_metric(m, "dnslens_dnstap_connected", |v| v == 0.0).await;
    for _ in 0..5 {
        ask_udp(world.dns(), "example.org.", RecordType::A, None).await;
    }
    wait_metric(
        m,
        "dnslens_dnstap_dropped_total{reason=\"no_reader\"}",
        |v| v > 0.0,
    )
    .await;
    wait_metric(m, "dnslens_dnstap_connect_failures_total", |v| v > 0.0).await;

    // It comes back on the same socket: reconnected (back-off at most 5 s), streaming again.
    let out2 = dir.0.join("reader-2.json");
    let second_reader = reader(["-u", socket.to_str().unwrap()], &out2);
    wait_socket(&socket);
    wait_metric(m, "dnslens_dnstap_connected", |v| v == 1.0).await;
    let id: u16 = rand::random();
    udp_exchange(
        world.dns(),
        &query_bytes("example.org.", RecordType::A, id, None),
        Duration::from_secs(3),
    )
    .await
    .expect("answered");
    let again = wait_messages(&out2, 4);
    assert!(again.iter().any(|m| m["message"]["query_message"]
        .as_str()
        .is_some_and(|t| t.contains(&format!("id: {id}\n")))));

    // A reader that stops reading: the socket's buffer and the 64-message queue fill,
    // further messages are dropped and counted, and every answer still comes at once.
    let pid = second_reader.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let before = dnslens_series(m, "dnslens_dnstap_dropped_total{reason=\"queue_full\"}").await;
    let mut slowest = Duration::ZERO;
    for i in 0..3000u32 {
        let asked = Instant::now();
        let answer = udp_exchange(
            world.dns(),
            &query_bytes(
                &format!("n{}.example.org.", i % 50),
                RecordType::A,
                i as u16,
                None,
            ),
            Duration::from_secs(3),
        )
        .await;
        assert!(answer.is_some(), "query {i} unanswered");
        slowest = slowest.max(asked.elapsed());
    }
    let dropped = dnslens_series(m, "dnslens_dnstap_dropped_total{reason=\"queue_full\"}").await;
    assert!(dropped > before + 1000.0, "{before} -> {dropped}");
    assert!(
        slowest < Duration::from_secs(1),
        "an answer took {slowest:?}"
    );
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(dnslens_series(m, "dnslens_dnstap_connected").await, 1.0);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_reader_gets_the_client_messages_by_default() {
    let dir = TempDir::new("dnstap-tcp");
    let port = free_port();
    let out = dir.0.join("reader.json");
    let _reader = reader(["-l", &format!("127.0.0.1:{port}")], &out);
    let world = World::start_with(|c| {
        c.dnstap.socket = Some(format!("tcp://127.0.0.1:{port}"));
    })
    .await;
    let m = world.proxy.metrics_addr;
    wait_metric(m, "dnslens_dnstap_connected", |v| v == 1.0).await;
    let answer = ask_udp(world.dns(), "example.org.", RecordType::A, None).await;
    let all = wait_messages(&out, 2);
    let kinds: Vec<&str> = all
        .iter()
        .map(|m| m["message"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["CLIENT_QUERY", "CLIENT_RESPONSE"]);
    assert!(all[1]["message"]["response_message"]
        .as_str()
        .unwrap()
        .contains(&format!("id: {}\n", answer.metadata.id)));
    // Prove the stream is idle, not behind: nothing more than the two.
    assert_eq!(
        dnslens_series(m, "dnslens_dnstap_messages_total").await,
        2.0
    );
    assert_eq!(messages(&out).len(), 2);
    world.stop().await;
}

/// A series' value, which must exist.
async fn dnslens_series(addr: SocketAddr, series: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").await;
    series_in(&body, series).unwrap_or_else(|| panic!("{series} missing"))
}
