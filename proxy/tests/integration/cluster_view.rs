//! The cluster-wide view, against a real Jaeger (`jaeger`): three dnslens processes — two
//! sidecars with their own resource attributes, one node-local with pod identity watching a
//! real kube-apiserver — export to it; the musl trap, the lost-AAAA race and a client retry
//! are played through different ones, ordinary lookups through all three (every one
//! sampled), and anomalies just before and after the window. `dnslens anomalies --backend`
//! and the page `dnslens ui` serves (headless Chromium) list exactly the window's three,
//! each with its instance and client; the filters narrow it; with Jaeger stopped the CLI
//! fails with one line and DNS is unaffected. A second test reads a window of more lookups
//! than one Jaeger search returns; a third follows an anomaly counter's exemplar, as a real
//! Prometheus with exemplar storage kept it, to its trace in Jaeger.

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dnslens::demo::clients::{getaddrinfo, Libc};
use dnslens::demo::{EmbeddedUpstream, NDOTS, SEARCH, ZONES};
use hickory_proto::rr::RecordType;
use serde_json::{json, Value};
use tokio::net::UdpSocket;

use crate::control_plane::ControlPlane;
use crate::harness::*;
use crate::jaeger::Jaeger;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A `dnslens serve` process with its config file and environment.
struct Instance {
    _child: Child,
    dns: SocketAddr,
    metrics: SocketAddr,
}

async fn spawn_dnslens(dir: &TempDir, name: &str, config: &str, env: &[(&str, &str)]) -> Instance {
    let dns: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let file = dir.0.join(format!("{name}.yaml"));
    let text = format!("listen: [\"{dns}\"]\n{config}");
    std::fs::write(&file, text).unwrap();
    let log = std::fs::File::create(dir.0.join(format!("{name}.log"))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_dnslens"))
        .args(["serve", "--metrics-listen", &metrics.to_string(), "--config"])
        .arg(&file)
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .env_remove("NODE_NAME")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("dnslens runs");
    let child = Child(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get_status(metrics, "/readyz").await != Some(200) {
        assert!(
            Instant::now() < deadline,
            "{name} not ready: {}",
            std::fs::read_to_string(dir.0.join(format!("{name}.log"))).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Instance {
        _child: child,
        dns,
        metrics,
    }
}

async fn http_get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    tokio::net::TcpStream::connect(addr).await.ok()?;
    Some(http_get(addr, path).await.0)
}

/// Sends `packet` from `socket` and waits for its answer.
async fn exchange_on(socket: &UdpSocket, server: SocketAddr, packet: &[u8]) {
    socket.send_to(packet, server).await.unwrap();
    let mut buf = [0u8; 1500];
    tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
        .await
        .expect("answered")
        .unwrap();
}

/// A stub resolver's retry: `name` asked from a socket on `client`, then the same question
/// with the same ID 300 ms later; both answered.
async fn client_retry(server: SocketAddr, client: &str, name: &str) {
    let socket = UdpSocket::bind((client.parse::<IpAddr>().unwrap(), 0))
        .await
        .unwrap();
    let packet = query_bytes(name, RecordType::A, rand::random(), None);
    for _ in 0..2 {
        exchange_on(&socket, server, &packet).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The conntrack race as dnslens sees it: A and AAAA sent together, only the A arrived;
/// a resolver timeout later the AAAA comes again, alone, from the same socket.
async fn lost_aaaa(server: SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for (qtype, pause) in [(RecordType::A, 1000), (RecordType::AAAA, 0)] {
        let packet = query_bytes("example.org.", qtype, rand::random(), None);
        exchange_on(&socket, server, &packet).await;
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// `dnslens anomalies` with `args`: (exit code, stdout, stderr).
fn anomalies_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dnslens"))
        .arg("anomalies")
        .args(args)
        .output()
        .expect("dnslens runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn anomalies_json(args: &[&str]) -> Vec<Value> {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = anomalies_cli(&all);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// What identifies an entry here: (instance, name, kinds, client's pod or "").
fn summary(entries: &[Value]) -> Vec<(String, String, Value, String)> {
    let mut rows: Vec<_> = entries
        .iter()
        .map(|e| {
            (
                e["instance"].as_str().unwrap_or("").to_string(),
                e["base"].as_str().unwrap_or("").to_string(),
                e["kinds"].clone(),
                e["client_identity"]["pod"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_windows_abnormal_lookups_of_every_instance_are_found_again_in_jaeger() {
    let jaeger = Jaeger::start();
    let cp = ControlPlane::start();
    cp.namespace("team-a", &[]);
    cp.running_pod(
        "team-a",
        "web-7d9c5b-x2x9q",
        "node-1",
        "127.0.0.31",
        Some(("ReplicaSet", "web-7d9c5b")),
        json!({"pod-template-hash": "7d9c5b"}),
    );
    let upstream = EmbeddedUpstream::start("127.0.0.1:0".parse().unwrap(), &ZONES)
        .await
        .expect("embedded upstream");
    let dir = TempDir::new("cluster-view");
    let backend = format!("jaeger={}", jaeger.query);
    let common = format!(
        "forward: {{upstreams: [\"{}\"], timeout: 300ms}}\nlookup:\n  window: 400ms\n\
         tracing:\n  endpoint: {}\n  protocol: grpc\n  sample_ratio: 1.0\n  export_timeout: 500ms\n\
         admin:\n  ui:\n    backend: {backend}\n",
        upstream.addr, jaeger.otlp_grpc
    );
    let sidecar = format!(
        "{common}search: {{list: [{}], ndots: {NDOTS}}}\n",
        SEARCH.join(", ")
    );
    let web = spawn_dnslens(
        &dir,
        "web",
        &sidecar,
        &[
            ("POD_NAME", "web-a-1"),
            ("POD_NAMESPACE", "team-a"),
            ("NODE_NAME", "node-2"),
        ],
    )
    .await;
    let api = spawn_dnslens(
        &dir,
        "api",
        &sidecar,
        &[
            ("POD_NAME", "api-b-1"),
            ("POD_NAMESPACE", "team-b"),
            ("NODE_NAME", "node-3"),
        ],
    )
    .await;
    let node_local = format!(
        "{common}mode: node-local\nlistener:\n  allow: [127.0.0.0/8]\n\
         pod_identity:\n  enabled: true\n  node_name: node-1\n  kubeconfig: {}\n",
        cp.kubeconfig().display()
    );
    let node = spawn_dnslens(
        &dir,
        "node",
        &node_local,
        &[("POD_NAME", "dnslens-node-7kq2p"), ("NODE_NAME", "node-1")],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(node.metrics, "dnslens_pod_identity_pods").await != 1.0 {
        assert!(Instant::now() < deadline, "pod identity never synced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Just before the window: a retry through api.
    client_retry(api.dns, "127.0.0.1", "example.org.").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let from = unix_now();
    // The window: the musl trap through web, the race through api, a pod's retry through
    // the node-local one; an ordinary lookup through each.
    let musl = getaddrinfo(web.dns, "alauda.cn", &SEARCH, NDOTS, Libc::Musl).await;
    assert_eq!(musl, Err("Name does not resolve"));
    lost_aaaa(api.dns).await;
    client_retry(node.dns, "127.0.0.31", "example.org.").await;
    for instance in [&web, &api, &node] {
        let answer = ask_udp(instance.dns, "example.org.", RecordType::A, None).await;
        assert_eq!(answer.answers.len(), 1);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let to = unix_now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Just after it: a retry through web.
    client_retry(web.dns, "127.0.0.1", "example.org.").await;

    // Everything reached Jaeger — the five abnormal lookups and the ordinary ones of the
    // window — before anything is said to be absent.
    let everything = (from - 60.0, unix_now() + 60.0);
    jaeger.wait_for(
        everything.0,
        everything.1,
        r#"{"dnslens.anomalous":"true"}"#,
        5,
    );
    let ordinary = jaeger.wait_for(from, to, r#"{"dnslens.lookup.outcome":"answered"}"#, 3);
    assert!(ordinary.len() >= 3);

    let (f, t) = (format!("{from:.6}"), format!("{to:.6}"));
    let window = [
        "--backend",
        backend.as_str(),
        "--from",
        f.as_str(),
        "--to",
        t.as_str(),
    ];
    let found = anomalies_json(&window);
    let expected = vec![
        (
            "node-1/dnslens-node-7kq2p".to_string(),
            "example.org".to_string(),
            json!(["client_retry"]),
            "web-7d9c5b-x2x9q".to_string(),
        ),
        (
            "node-2/web-a-1".to_string(),
            "alauda.cn".to_string(),
            json!(["empty_noerror_search"]),
            String::new(),
        ),
        (
            "node-3/api-b-1".to_string(),
            "example.org".to_string(),
            json!(["parallel_race"]),
            String::new(),
        ),
    ];
    assert_eq!(summary(&found), expected, "{found:#?}");
    for entry in &found {
        let time = entry["time"].as_f64().unwrap();
        assert!(time >= from && time <= to, "{entry}");
        assert_eq!(entry["trace_id"].as_str().unwrap().len(), 32);
    }
    let pod = found
        .iter()
        .find(|e| e["instance"] == "node-1/dnslens-node-7kq2p")
        .unwrap();
    assert_eq!(
        pod["client_identity"],
        json!({"namespace": "team-a", "pod": "web-7d9c5b-x2x9q", "workload_kind": "Deployment", "workload": "web", "stale": false})
    );
    assert_eq!(pod["client"], "127.0.0.31");
    // The musl trap's walk, query by query, from its trace.
    let trap = found.iter().find(|e| e["base"] == "alauda.cn").unwrap();
    let walk: Vec<(&str, &str, &str)> = trap["queries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            (
                q["name"].as_str().unwrap(),
                q["qtype"].as_str().unwrap(),
                q["search"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        walk,
        [
            ("alauda.cn.default.svc.cluster.local", "A", "suffix 0"),
            ("alauda.cn.default.svc.cluster.local", "AAAA", "suffix 0")
        ]
    );
    assert_eq!(trap["queries"][0]["rcode"], "NOERROR");
    assert_eq!(trap["queries"][0]["soa"], true);

    // The filters, each exact.
    let narrowed = |extra: &[&str]| {
        let mut args = window.to_vec();
        args.extend_from_slice(extra);
        summary(&anomalies_json(&args))
    };
    assert_eq!(
        narrowed(&["--kind", "parallel_race"]),
        vec![expected[2].clone()]
    );
    assert_eq!(
        narrowed(&["--namespace", "team-a"]),
        vec![expected[0].clone()]
    );
    assert_eq!(narrowed(&["--workload", "web"]), vec![expected[0].clone()]);
    assert_eq!(
        narrowed(&["--name", "alauda.cn"]),
        vec![expected[1].clone()]
    );
    assert_eq!(narrowed(&["--kind", "upstream_error"]), vec![]);
    // The table, with its instance column.
    let (code, table, _) = anomalies_cli(&window);
    assert_eq!(code, 0);
    assert_eq!(table.matches(" ago  ").count(), 3, "{table}");
    assert!(
        table.contains(" ago  node-1/dnslens-node-7kq2p  127.0.0.31 team-a/web-7d9c5b-x2x9q"),
        "{table}"
    );
    // A wider window has the lookups on either side too.
    let wide = anomalies_json(&["--backend", &backend, "--since", "10m"]);
    assert_eq!(wide.len(), 5, "{wide:#?}");

    // A running dnslens's own page reads the same window with scope=cluster; without it,
    // its own journal.
    let query = format!("/debug/anomalies?from={f}&to={t}");
    let (status, body) = http_get(web.metrics, &format!("{query}&scope=cluster")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        summary(&serde_json::from_str::<Vec<Value>>(&body).unwrap()),
        expected
    );
    let (_, own) = http_get(web.metrics, &query).await;
    let own: Vec<Value> = serde_json::from_str(&own).unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(own[0]["base"], "alauda.cn");

    // The page from a workstation: `dnslens ui`.
    let page_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let trace_url = format!("{}/trace/{{trace_id}}", jaeger.query);
    let _ui = Child(
        Command::new(env!("CARGO_BIN_EXE_dnslens"))
            .args([
                "ui",
                "--backend",
                &backend,
                "--listen",
                &page_addr.to_string(),
            ])
            .args(["--trace-url", &trace_url])
            .stderr(Stdio::null())
            .spawn()
            .expect("dnslens ui runs"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get_status(page_addr, "/ui/").await != Some(200) {
        assert!(Instant::now() < deadline, "dnslens ui never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!(
        "http://{page_addr}/ui/?from={}&to={}&lookup={}",
        from.floor(),
        to.ceil(),
        pod["trace_id"].as_str().unwrap()
    );
    let dom = crate::ui::dump_dom(&url, &dir.0);
    assert!(dom.contains("data-ready=\"1\""), "{dom}");
    assert_eq!(dom.matches("<tr class=\"entry").count(), 3, "{dom}");
    for instance in [
        "node-1/dnslens-node-7kq2p",
        "node-2/web-a-1",
        "node-3/api-b-1",
    ] {
        assert!(
            dom.contains(&format!("<td class=\"instance\">{instance}</td>")),
            "{instance}"
        );
    }
    assert!(dom.contains("across the cluster"), "{dom}");
    // The opened lookup's waterfall, from its trace, with the link to it in Jaeger.
    assert!(dom.contains("seen by node-1/dnslens-node-7kq2p"), "{dom}");
    assert!(
        dom.contains(&format!(
            "{}/trace/{}",
            jaeger.query,
            pod["trace_id"].as_str().unwrap()
        )),
        "{dom}"
    );

    // Jaeger gone: one line and a failure exit; DNS answers as before.
    jaeger.stop();
    let (code, out, err) = anomalies_cli(&window);
    assert_eq!(code, 1, "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("dnslens: cannot reach Jaeger at {}", jaeger.query)),
        "{err}"
    );
    let (status, body) = http_get(web.metrics, &format!("{query}&scope=cluster")).await;
    assert_eq!(status, 502, "{body}");
    client_retry(web.dns, "127.0.0.1", "example.org.").await;
    let answer = ask_udp(web.dns, "example.org.", RecordType::A, None).await;
    assert_eq!(answer.answers.len(), 1);
    upstream.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_of_more_lookups_than_one_search_returns_is_read_whole() {
    let jaeger = Jaeger::start();
    // An upstream that never answers: every lookup times out (an anomaly), one per name.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let endpoint = jaeger.otlp_grpc.clone();
    let world = World::start_with(|c| {
        c.forward.upstreams = vec![dnslens::config::UpstreamAddr(silent.local_addr().unwrap())];
        c.forward.timeout = Duration::from_millis(200);
        c.forward.attempts = 1;
        c.lookup.window = Duration::from_millis(300);
        c.tracing.endpoint = Some(endpoint);
        c.tracing.protocol = Some(dnslens::telemetry::OtlpProtocol::Grpc);
        c.tracing.keep_anomalous_per_second = 1000;
    })
    .await;
    let from = unix_now();
    let lookups = 250;
    let mut asked = tokio::task::JoinSet::new();
    for i in 0..lookups {
        let dns = world.dns();
        asked.spawn(async move {
            let packet = query_bytes(&format!("n{i}.example.org."), RecordType::A, i as u16, None);
            udp_exchange(dns, &packet, Duration::from_secs(3)).await
        });
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    while let Some(answer) = asked.join_next().await {
        assert!(answer.unwrap().is_some(), "SERVFAIL expected");
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let to = unix_now();
    jaeger.wait_for(
        from,
        to,
        r#"{"dnslens.anomaly.upstream_timeout":"true"}"#,
        lookups,
    );
    let backend = format!("jaeger={}", jaeger.query);
    let (f, t) = (format!("{from:.6}"), format!("{to:.6}"));
    let found = anomalies_json(&["--backend", &backend, "--from", &f, "--to", &t]);
    let mut names: Vec<&str> = found.iter().map(|e| e["base"].as_str().unwrap()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), lookups, "each lookup once");
    assert_eq!(found.len(), lookups);
    assert!(found
        .windows(2)
        .all(|w| w[0]["time"].as_f64() >= w[1]["time"].as_f64()));
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anomaly_counters_exemplar_kept_by_prometheus_opens_its_trace_in_jaeger() {
    use crate::prometheus::{start_prometheus_with, wait_until};
    let jaeger = Jaeger::start();
    let endpoint = jaeger.otlp_grpc.clone();
    let world = World::start_with(|c| {
        c.search.list = SEARCH.iter().map(|s| s.to_string()).collect();
        c.search.ndots = Some(NDOTS as u32);
        c.lookup.window = Duration::from_millis(300);
        c.tracing.endpoint = Some(endpoint);
        c.tracing.protocol = Some(dnslens::telemetry::OtlpProtocol::Grpc);
    })
    .await;
    let dir = TempDir::new("exemplars");
    std::fs::write(
        dir.0.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: dnslens\n    static_configs:\n      - targets: ['{}']\n",
            world.proxy.metrics_addr
        ),
    )
    .unwrap();
    let (_prometheus, api) =
        start_prometheus_with("prometheus", &dir.0, &["--enable-feature=exemplar-storage"]);
    let series = "dnslens_anomalies_total%7Bkind%3D%22empty_noerror_search%22%7D";
    wait_until(Duration::from_secs(30), || async {
        let (_, body) = http_get(api, &format!("/api/v1/query?query={series}")).await;
        body.contains("\"value\"")
    })
    .await;

    let result = getaddrinfo(world.dns(), "alauda.cn", &SEARCH, NDOTS, Libc::Musl).await;
    assert_eq!(result, Err("Name does not resolve"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let journal = loop {
        let (_, body) = http_get(world.proxy.metrics_addr, "/debug/anomalies").await;
        let journal: Vec<Value> = serde_json::from_str(&body).unwrap();
        if !journal.is_empty() {
            break journal;
        }
        assert!(Instant::now() < deadline, "the lookup never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(journal.len(), 1);
    let trace_id = journal[0]["trace_id"].as_str().unwrap().to_string();

    // Prometheus keeps the exemplar of the scrape after the lookup ...
    let (start, end) = (unix_now() - 120.0, unix_now() + 120.0);
    let query = format!("/api/v1/query_exemplars?query={series}&start={start}&end={end}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let exemplars: Vec<String> = loop {
        let (_, body) = http_get(api, &query).await;
        let body: Value = serde_json::from_str(&body).unwrap();
        let found: Vec<String> = body["data"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["exemplars"].as_array().cloned().unwrap_or_default())
            .map(|e| e["labels"]["trace_id"].as_str().unwrap_or("").to_string())
            .collect();
        if !found.is_empty() {
            break found;
        }
        assert!(Instant::now() < deadline, "no exemplar: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(exemplars, std::slice::from_ref(&trace_id));
    // ... and Jaeger returns the trace it names: the lookup, its kind, its walk.
    let deadline = Instant::now() + Duration::from_secs(20);
    let trace = loop {
        let out = Command::new("curl")
            .args(["-sS", &format!("{}/api/traces/{trace_id}", jaeger.query)])
            .output()
            .expect("curl runs");
        let body: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if let Some(trace) = body["data"].as_array().and_then(|d| d.first()) {
            break trace.clone();
        }
        assert!(Instant::now() < deadline, "Jaeger never had {trace_id}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let spans = trace["spans"].as_array().unwrap();
    let root = spans
        .iter()
        .find(|s| s["operationName"] == "dns.lookup")
        .unwrap();
    let tag = |key: &str| {
        root["tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["key"] == key)
            .map(|t| t["value"].clone())
    };
    assert_eq!(tag("dns.question.name"), Some(json!("alauda.cn")));
    assert_eq!(
        tag("dnslens.anomaly.empty_noerror_search"),
        Some(json!(true))
    );
    assert_eq!(
        spans
            .iter()
            .filter(|s| s["operationName"] == "dns.query")
            .count(),
        2
    );
    world.stop().await;
}
