use std::collections::HashMap;
use std::net::SocketAddr;

use opentelemetry::Value;

use std::time::{Duration, Instant};

use opentelemetry::trace::SpanId;
use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::trace::SpanData;

use super::sampling::ForcedBudget;
use super::settings::DEFAULT_SAMPLE_RATIO;
use super::*;
use crate::lookup::LookupObserver;
use crate::telemetry::{OtlpProtocol, TracingConfig};
use dnslens_datapath::metrics::Transport;
use dnslens_datapath::record::{
    Attempt, Clock, LookupOutcome, LookupRecord, Outcome, QueryTrace, UpstreamTry,
};

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn tracing_is_off_without_an_endpoint() {
    assert_eq!(
        ExportSettings::resolve(&TracingConfig::default(), env(&[])),
        None
    );
}

#[test]
fn environment_wins_over_config() {
    let config = TracingConfig {
        endpoint: Some("http://collector:4317".into()),
        protocol: Some(OtlpProtocol::Grpc),
        sample_ratio: Some(0.5),
        ca_file: Some("/etc/dnslens/ca.pem".into()),
        ..TracingConfig::default()
    };
    let s = ExportSettings::resolve(&config, env(&[])).unwrap();
    assert_eq!(
        (s.endpoint.as_str(), s.protocol, s.sample_ratio),
        ("http://collector:4317", OtlpProtocol::Grpc, 0.5)
    );
    assert_eq!(s.ca_file, Some("/etc/dnslens/ca.pem".into()));
    let s = ExportSettings::resolve(
        &config,
        env(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", "/var/run/otel/ca.crt")]),
    )
    .unwrap();
    assert_eq!(s.ca_file, Some("/var/run/otel/ca.crt".into()));

    let s = ExportSettings::resolve(
        &config,
        env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ]),
    )
    .unwrap();
    assert_eq!(
        (s.endpoint.as_str(), s.protocol, s.sample_ratio),
        ("http://other:4318", OtlpProtocol::HttpProtobuf, 0.25)
    );

    let s = ExportSettings::resolve(
        &TracingConfig::default(),
        env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")]),
    )
    .unwrap();
    assert_eq!(s.sample_ratio, DEFAULT_SAMPLE_RATIO);
    let bad_ratio = env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
        ("OTEL_TRACES_SAMPLER", "traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "7"),
    ]);
    assert_eq!(
        ExportSettings::resolve(&TracingConfig::default(), bad_ratio)
            .unwrap()
            .sample_ratio,
        DEFAULT_SAMPLE_RATIO
    );
    let off = env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
        ("OTEL_TRACES_SAMPLER", "always_off"),
    ]);
    assert_eq!(
        ExportSettings::resolve(&TracingConfig::default(), off)
            .unwrap()
            .sample_ratio,
        0.0
    );
}

#[test]
fn resource_carries_service_and_kubernetes_attributes() {
    let r = resource(env(&[
        ("POD_NAME", "web-1"),
        ("POD_NAMESPACE", "team-a"),
        ("NODE_NAME", "node-7"),
    ]));
    let get = |k: &str| {
        r.get(&opentelemetry::Key::from(k.to_string()))
            .map(|v| v.to_string())
    };
    assert_eq!(get("k8s.pod.name").as_deref(), Some("web-1"));
    assert_eq!(get("k8s.namespace.name").as_deref(), Some("team-a"));
    assert_eq!(get("k8s.node.name").as_deref(), Some("node-7"));
    assert_eq!(
        get("service.version").as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        get("service.instance.id").as_deref(),
        Some("team-a.web-1.dnslens")
    );
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        assert_eq!(get("service.name").as_deref(), Some("dnslens"));
    }
    // Outside Kubernetes: a UUID, different per process; one given explicitly wins.
    let bare = resource(env(&[]));
    let id = bare
        .get(&opentelemetry::Key::from("service.instance.id"))
        .map(|v| v.to_string())
        .expect("an instance id");
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(&id[14..15], "4", "version 4: {id}");
    let given = resource(env(&[(
        "OTEL_RESOURCE_ATTRIBUTES",
        "k8s.cluster.name=prod,service.instance.id=mine",
    )]));
    assert_ne!(
        given
            .get(&opentelemetry::Key::from("service.instance.id"))
            .map(|v| v.to_string())
            .as_deref(),
        Some("team-a.web-1.dnslens")
    );
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

#[test]
fn a_lookup_becomes_a_root_with_queries_and_upstream_tries() {
    let t0 = Instant::now();
    let client: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    let upstream: SocketAddr = "127.0.0.1:53".parse().unwrap();
    let mut q = QueryTrace::new(client, Transport::Udp, &[0], 1, t0);
    q.answered = t0 + Duration::from_millis(5);
    q.rcode = 3;
    q.zone = Some("cluster.local".into());
    q.tries = vec![
        UpstreamTry {
            upstream,
            transport: Transport::Udp,
            outcome: Outcome::Timeout,
            start: t0,
            end: t0 + Duration::from_millis(2),
        },
        UpstreamTry {
            upstream,
            transport: Transport::Udp,
            outcome: Outcome::Answer,
            start: t0 + Duration::from_millis(2),
            end: t0 + Duration::from_millis(4),
        },
    ];
    let attempt = Attempt {
        qname: "alauda.cn.default.svc.cluster.local".into(),
        suffix: Some((0, "default.svc.cluster.local".into())),
        retransmission: false,
        query: q,
    };
    let lookup = LookupRecord {
        client: client.ip(),
        base: "alauda.cn".into(),
        attempts: vec![attempt],
        outcome: LookupOutcome::NxDomain,
        start: t0,
        end: t0 + Duration::from_millis(5),
        evicted: false,
        trace_id: 7,
        anomalies: Vec::new(),
        waited: None,
        client_identity: None,
    };
    let clock = Clock::now();
    let scope = InstrumentationScope::builder("test").build();
    let spans = lookup_spans(&lookup, &[], &clock, &scope);
    assert_eq!(
        spans.iter().map(|s| s.name.as_ref()).collect::<Vec<_>>(),
        ["dns.lookup", "dns.query", "dns.upstream", "dns.upstream"]
    );
    let trace_id = spans[0].span_context.trace_id();
    assert!(spans.iter().all(|s| s.span_context.trace_id() == trace_id));
    assert_eq!(spans[0].parent_span_id, SpanId::INVALID);
    assert_eq!(spans[1].parent_span_id, spans[0].span_context.span_id());
    assert_eq!(spans[2].parent_span_id, spans[1].span_context.span_id());
    assert_eq!(
        attr(&spans[0], "dns.question.name"),
        Some(&Value::from("alauda.cn"))
    );
    assert_eq!(
        attr(&spans[0], "dnslens.lookup.outcome"),
        Some(&Value::from("nxdomain"))
    );
    assert_eq!(
        attr(&spans[1], "dnslens.search.index"),
        Some(&Value::I64(0))
    );
    assert_eq!(
        attr(&spans[1], "dnslens.response_code"),
        Some(&Value::from("NXDOMAIN"))
    );
    assert_eq!(
        attr(&spans[1], "dnslens.forward.zone"),
        Some(&Value::from("cluster.local")),
        "the forward.zones zone that served it"
    );
    assert_eq!(
        attr(&spans[2], "dnslens.upstream.outcome"),
        Some(&Value::from("timeout"))
    );
    assert_eq!(
        attr(&spans[3], "dnslens.upstream.try"),
        Some(&Value::I64(2))
    );
    assert_eq!(
        spans[2]
            .end_time
            .duration_since(spans[2].start_time)
            .unwrap(),
        Duration::from_millis(2)
    );
    assert_eq!(
        spans[3].start_time, spans[2].end_time,
        "real instants, so gaps show"
    );
}

fn lookup_with(outcome: LookupOutcome, base: &str) -> LookupRecord {
    let t0 = Instant::now();
    LookupRecord {
        client: "10.0.0.1".parse().unwrap(),
        base: base.into(),
        attempts: Vec::new(),
        outcome,
        start: t0,
        end: t0,
        evicted: false,
        trace_id: 1,
        anomalies: Vec::new(),
        waited: None,
        client_identity: None,
    }
}

#[test]
fn failed_lookups_are_kept_up_to_the_per_second_budget_and_the_rest_by_ratio() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let metrics = TelemetryMetrics::register(&mut Registry::default());
    let mut observer = OtlpObserver {
        tx,
        queued: Arc::default(),
        capacity: 1_000,
        sample_ratio: 0.0,
        metrics: metrics.clone(),
        forced: ForcedBudget::new(3, 0),
    };
    for _ in 0..5 {
        observer.observe(&lookup_with(LookupOutcome::ServFail, "web"));
    }
    observer.observe(&lookup_with(LookupOutcome::Answered, "web"));
    let mut kept = 0;
    while rx.try_recv().is_ok() {
        kept += 1;
    }
    assert_eq!(
        kept, 3,
        "three failures a second, no ordinary lookup at ratio 0"
    );
    assert_eq!(
        metrics.sampled_out.get(),
        3,
        "two over budget, one ordinary"
    );

    observer.forced.second -= Duration::from_secs(1);
    observer.observe(&lookup_with(LookupOutcome::Timeout, "web"));
    assert!(rx.try_recv().is_ok(), "a new second, a new budget");
}

#[test]
fn a_flood_of_one_name_keeps_an_example_a_second_and_leaves_room_for_others() {
    let mut budget = ForcedBudget::new(3, 1);
    let now = Instant::now();
    assert!(budget.admit("alauda.cn", now));
    assert!(!budget.admit("alauda.cn", now), "one a second for one name");
    assert!(
        budget.admit("api.github.com", now),
        "another name still fits"
    );
    assert!(budget.admit("example.org", now));
    assert!(
        !budget.admit("fourth.example", now),
        "the overall budget is spent"
    );
    assert!(
        budget.admit("alauda.cn", now + Duration::from_secs(1)),
        "the next second"
    );
}

#[test]
fn the_traces_instance_id_names_the_container_the_injector_adds() {
    assert_eq!(super::CONTAINER, dnslens_k8s::inject::CONTAINER);
}
