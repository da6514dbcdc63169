//! A real OTLP trace receiver: the OpenTelemetry protocol's generated gRPC service (tonic +
//! opentelemetry-proto) and its HTTP/protobuf endpoint (`POST /v1/traces`), keeping every
//! span it receives. Used in-process by the tests and, as `examples/otlp_sink.rs`, as a
//! process inside test namespaces and by the benchmark.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;

/// One received span, flattened.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: BTreeMap<String, String>,
    pub resource: BTreeMap<String, String>,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map(String::as_str).unwrap_or("")
    }

    /// One line: name, ids and attributes (the sink's output format).
    pub fn to_line(&self) -> String {
        let attrs: Vec<String> = self
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            self.trace_id,
            self.span_id,
            self.parent_span_id,
            self.name,
            self.start_unix_nanos,
            self.end_unix_nanos,
            attrs.join(";")
        )
    }

    pub fn from_line(line: &str) -> Option<ReceivedSpan> {
        let mut f = line.split('\t');
        let (trace_id, span_id, parent, name) = (f.next()?, f.next()?, f.next()?, f.next()?);
        let start = f.next()?.parse().ok()?;
        let end = f.next()?.parse().ok()?;
        let attributes = f
            .next()
            .unwrap_or("")
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(ReceivedSpan {
            trace_id: trace_id.into(),
            span_id: span_id.into(),
            parent_span_id: parent.into(),
            name: name.into(),
            start_unix_nanos: start,
            end_unix_nanos: end,
            attributes,
            resource: BTreeMap::new(),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                // A string array as its items joined by commas (`dns.answers`).
                Some(Value::ArrayValue(items)) => items
                    .values
                    .iter()
                    .map(|v| match &v.value {
                        Some(Value::StringValue(s)) => s.clone(),
                        other => format!("{other:?}"),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// What the receiver keeps: every span, flattened, or (for the benchmark, where the
/// collector must cost next to nothing) only how many arrived.
#[derive(Default)]
struct Store {
    spans: Mutex<Vec<ReceivedSpan>>,
    count_only: bool,
    counted: AtomicU64,
}

type Shared = Arc<Store>;

fn store(store: &Store, request: ExportTraceServiceRequest) {
    if store.count_only {
        let n: usize = request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        store.counted.fetch_add(n as u64, Ordering::Relaxed);
        return;
    }
    let mut out = store.spans.lock().unwrap();
    for rs in request.resource_spans {
        let resource = rs
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(ReceivedSpan {
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    name: s.name,
                    start_unix_nanos: s.start_time_unix_nano,
                    end_unix_nanos: s.end_time_unix_nano,
                    attributes: attributes(&s.attributes),
                    resource: resource.clone(),
                });
            }
        }
    }
}

struct Service(Shared);

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        store(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The receiver: gRPC on `grpc`, HTTP/protobuf on `http`.
pub struct Receiver {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    spans: Shared,
}

impl Receiver {
    /// Binds both endpoints on `ip` (port 0 picks free ports, or the given ones).
    pub async fn start_on(grpc: SocketAddr, http: SocketAddr) -> Receiver {
        Self::start_keeping(grpc, http, false).await
    }

    /// Like `start_on`, but only counts the spans (see [`Receiver::counted`]).
    pub async fn start_counting(grpc: SocketAddr, http: SocketAddr) -> Receiver {
        Self::start_keeping(grpc, http, true).await
    }

    async fn start_keeping(grpc: SocketAddr, http: SocketAddr, count_only: bool) -> Receiver {
        let spans = Arc::new(Store {
            count_only,
            ..Store::default()
        });
        let grpc_listener = tokio::net::TcpListener::bind(grpc)
            .await
            .expect("bind OTLP gRPC");
        let grpc = grpc_listener.local_addr().unwrap();
        let service = TraceServiceServer::new(Service(spans.clone()));
        tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        let http_listener = tokio::net::TcpListener::bind(http)
            .await
            .expect("bind OTLP HTTP");
        let http = http_listener.local_addr().unwrap();
        let http_spans = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(request) => {
                        store(&http_spans, request);
                        (
                            axum::http::StatusCode::OK,
                            [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                            ExportTraceServiceResponse::default().encode_to_vec(),
                        )
                    }
                    Err(_) => (
                        axum::http::StatusCode::BAD_REQUEST,
                        [(axum::http::header::CONTENT_TYPE, "text/plain")],
                        b"bad protobuf".to_vec(),
                    ),
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(http_listener, app).await;
        });
        Receiver { grpc, http, spans }
    }

    pub async fn start() -> Receiver {
        Self::start_on(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.spans.lock().unwrap().clone()
    }

    /// Removes and returns what was received so far.
    pub fn take(&self) -> Vec<ReceivedSpan> {
        std::mem::take(&mut *self.spans.spans.lock().unwrap())
    }

    /// Spans received by a counting receiver.
    pub fn counted(&self) -> u64 {
        self.spans.counted.load(Ordering::Relaxed)
    }

    /// Waits until `done` holds for the spans received, or panics after `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "OTLP receiver: condition not met; got {} spans: {:#?}",
                spans.len(),
                spans
                    .iter()
                    .map(|s| (&s.name, s.attributes.get("dns.question.name")))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
