//! Micro-benchmarks of the hot path's pieces (criterion): parsing a client query, reading
//! an upstream answer, the search-path classifier, a cache hit, and the lookup tracker's
//! correlation of one query. `cargo bench -p dnslens` runs them; the test script compiles
//! them (`cargo bench --no-run`). Whole-proxy figures are loadtest/compare.sh's.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{rdata, Name, RData, Record, RecordType};
use prometheus_client::registry::Registry;

use dnslens::cache::{Cache, CacheConfig, CacheKey, KeyBuf};
use dnslens::config::{LookupConfig, PodIdentityConfig};
use dnslens::identity::{Identities, IdentityMetrics};
use dnslens::lookup::{LookupMetrics, Tracker};
use dnslens::metrics::Transport;
use dnslens::record::QueryTrace;
use dnslens::search::{Mode, SearchConfig, SearchModel};
use dnslens::wire;

fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

fn answer(name: &str) -> Vec<u8> {
    let mut m = Message::new(0x1234, MessageType::Response, OpCode::Query);
    m.metadata.response_code = ResponseCode::NoError;
    let name = Name::from_ascii(name).unwrap();
    m.add_query(Query::query(name.clone(), RecordType::A));
    m.add_answer(Record::from_rdata(
        name,
        30,
        RData::A(rdata::A::new(10, 96, 0, 1)),
    ));
    m.to_vec().unwrap()
}

fn model() -> SearchModel {
    SearchModel::build(
        Mode::Sidecar,
        &SearchConfig {
            list: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
                "cluster.local".into(),
            ],
            ndots: Some(5),
            cluster_domain: "cluster.local".into(),
            resolv_conf: "/nonexistent".into(),
        },
    )
}

fn hot_path(c: &mut Criterion) {
    let q = query("kubernetes.default.svc.cluster.local.", RecordType::A);
    c.bench_function("parse_query", |b| {
        b.iter(|| wire::parse_query(black_box(&q)))
    });

    let a = answer("kubernetes.default.svc.cluster.local.");
    c.bench_function("parse_response", |b| {
        b.iter(|| wire::parse_response(black_box(&a)))
    });

    let search = model();
    c.bench_function("search_classify", |b| {
        b.iter(|| {
            search
                .candidates(black_box("github.com.default.svc.cluster.local"))
                .len()
        })
    });

    let cache = Cache::build(
        &CacheConfig {
            enabled: true,
            ..CacheConfig::default()
        },
        &mut Registry::default(),
    );
    let info = wire::parse_query(&q).unwrap();
    let key = CacheKey::of(&q, &info).unwrap();
    cache.store(&key, &a, Instant::now());
    c.bench_function("cache_hit", |b| {
        b.iter(|| {
            let key = KeyBuf::of(black_box(&q), &info).unwrap();
            matches!(
                cache.get(&key, Instant::now()),
                dnslens::cache::CacheLookup::Hit { .. }
            )
        })
    });

    let mut registry = Registry::default();
    let metrics = LookupMetrics::register(&mut registry);
    let mut tracker = Tracker::new(model(), &LookupConfig::default(), &metrics, Vec::new());
    let walk: Vec<Vec<u8>> = [
        "github.com.default.svc.cluster.local.",
        "github.com.svc.cluster.local.",
        "github.com.cluster.local.",
        "github.com.",
    ]
    .iter()
    .map(|n| query(n, RecordType::A))
    .collect();
    let client = "10.244.1.7:40000".parse().unwrap();
    let track = |tracker: &mut Tracker| {
        let now = Instant::now();
        for q in &walk {
            let info = wire::parse_query(q).unwrap();
            let question = &q[wire::HEADER_LEN..info.question_end];
            tracker.add(QueryTrace::new(client, Transport::Udp, question, 1, now));
        }
        tracker.expire(now + std::time::Duration::from_secs(60));
    };
    c.bench_function("lookup_track_walk_of_4", |b| b.iter(|| track(&mut tracker)));
    // Node-local, without and with pod identity: 110 pods held (the kubelet's maximum), the
    // client one of them, so every query reads its namespace and every lookup its pod.
    let node_local = || {
        let model = SearchModel::Kubernetes {
            cluster_domain: "cluster.local".into(),
            host_suffixes: Vec::new(),
            ndots: 5,
        };
        Tracker::new(model, &LookupConfig::default(), &metrics, Vec::new())
    };
    let mut unnamed = node_local();
    c.bench_function("lookup_track_walk_of_4_node_local", |b| {
        b.iter(|| track(&mut unnamed))
    });
    let mut named = node_local().with_identities(identities_of_110_pods());
    c.bench_function("lookup_track_walk_of_4_node_local_pod_identity", |b| {
        b.iter(|| track(&mut named))
    });

    // The same walk and a tick after it, with 1,000 to 100,000 other lookups open (a busy
    // node's clients, each in the middle of a walk): closing what is due must not cost more
    // with more lookups open.
    for open in [1_000u32, 10_000, 100_000] {
        let config = LookupConfig {
            max_entries: 200_000,
            ..LookupConfig::default()
        };
        let mut busy = Tracker::new(model(), &config, &metrics, Vec::new());
        let later = Instant::now() + std::time::Duration::from_secs(86_400);
        let q = query("api.example.org.default.svc.cluster.local.", RecordType::A);
        let info = wire::parse_query(&q).unwrap();
        let question = &q[wire::HEADER_LEN..info.question_end];
        for i in 0..open {
            let client = std::net::SocketAddr::from((
                [10, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8],
                5353,
            ));
            busy.add(QueryTrace::new(client, Transport::Udp, question, 1, later));
        }
        assert_eq!(busy.open_lookups(), open as usize);
        c.bench_function(&format!("lookup_track_walk_of_4_with_{open}_open"), |b| {
            b.iter(|| track(&mut busy))
        });
        assert_eq!(
            busy.open_lookups(),
            open as usize,
            "the busy lookups stay open"
        );
    }
}

/// A pod identity table as a full node has it: 110 running pods of `default` (the walk's
/// namespace), 10.244.1.1 to .110.
fn identities_of_110_pods() -> Identities {
    let config = PodIdentityConfig {
        enabled: true,
        ..PodIdentityConfig::default()
    };
    let identities = Identities::new(
        &config,
        &IdentityMetrics::register(&mut Registry::default()),
    );
    for i in 1..=110 {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("web-7d9c5b-{i}"), "namespace": "default",
                         "uid": format!("uid-{i}"), "labels": {"pod-template-hash": "7d9c5b"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": "web-7d9c5b", "uid": "o", "controller": true}]},
            "spec": {"containers": [{"name": "app"}], "nodeName": "node-1"},
            "status": {"phase": "Running", "podIP": format!("10.244.1.{i}")},
        }))
        .unwrap();
        identities.apply(&pod);
    }
    identities.watch_synced();
    identities
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
