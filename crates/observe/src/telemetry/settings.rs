//! The effective export settings: `tracing:` from the config, overridden by the `OTEL_*`
//! environment, and the service's resource.

use std::path::PathBuf;
use std::time::Duration;

use dnslens_yaml::invalid::{check, Invalid};
use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use serde::Deserialize;

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// Trace export (see `telemetry`). Off unless an endpoint is set here or in
/// `OTEL_EXPORTER_OTLP_ENDPOINT`; the `OTEL_*` variables override these keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    pub endpoint: Option<String>,
    pub protocol: Option<OtlpProtocol>,
    /// Share of ordinary lookups exported; lookups with a timeout, SERVFAIL or anomaly always are.
    pub sample_ratio: Option<f64>,
    /// Lookups with an anomaly, timeout or SERVFAIL exported per second at most (every one
    /// of them up to this rate; the rest are still counted and journaled).
    pub keep_anomalous_per_second: u32,
    /// ... and at most this many a second for any one base name (0: no per-name limit), so
    /// a flood of one broken name leaves room for the others.
    pub keep_anomalous_per_name_per_second: u32,
    /// Spans waiting for export; beyond it they are dropped (counted).
    pub queue: usize,
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
    /// CA certificates (PEM) trusted for an `https://` endpoint, besides the system's.
    pub ca_file: Option<PathBuf>,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            endpoint: None,
            protocol: None,
            sample_ratio: None,
            keep_anomalous_per_second: 100,
            keep_anomalous_per_name_per_second: 1,
            queue: 8_192,
            export_timeout: Duration::from_secs(5),
            ca_file: None,
        }
    }
}

impl TracingConfig {
    /// Checks the `tracing:` section on its own.
    pub fn validate(&self) -> Result<(), Invalid> {
        check(
            self.sample_ratio.is_some_and(|r| !(0.0..=1.0).contains(&r)),
            "tracing.sample_ratio",
            "must be within 0..=1",
        )?;
        check(self.queue == 0, "tracing.queue", "must be above zero")
    }
}

pub(super) const DEFAULT_SAMPLE_RATIO: f64 = 0.01;

/// The effective export settings, after the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub sample_ratio: f64,
    pub keep_anomalous_per_second: u32,
    pub keep_anomalous_per_name_per_second: u32,
    pub queue: usize,
    pub export_timeout: Duration,
    /// Extra CA certificates for an `https://` endpoint.
    pub ca_file: Option<PathBuf>,
}

impl ExportSettings {
    /// `None` when no endpoint is configured anywhere: tracing is off. `env` reads one
    /// environment variable (a parameter so tests need not touch the process environment).
    pub fn resolve(
        config: &TracingConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Option<ExportSettings> {
        let endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .filter(|e| !e.is_empty())
            .or_else(|| config.endpoint.clone())?;
        let protocol = match env("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
            Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            Some("grpc") => OtlpProtocol::Grpc,
            _ => config.protocol.unwrap_or(OtlpProtocol::Grpc),
        };
        let env_ratio = match env("OTEL_TRACES_SAMPLER").as_deref() {
            Some("always_on" | "parentbased_always_on") => Some(1.0),
            Some("always_off" | "parentbased_always_off") => Some(0.0),
            Some("traceidratio" | "parentbased_traceidratio") => env("OTEL_TRACES_SAMPLER_ARG")
                .and_then(|a| a.parse::<f64>().ok())
                .filter(|r| (0.0..=1.0).contains(r)),
            _ => None,
        };
        Some(ExportSettings {
            endpoint,
            protocol,
            sample_ratio: env_ratio
                .or(config.sample_ratio)
                .unwrap_or(DEFAULT_SAMPLE_RATIO),
            keep_anomalous_per_second: config.keep_anomalous_per_second,
            keep_anomalous_per_name_per_second: config.keep_anomalous_per_name_per_second,
            queue: config.queue,
            export_timeout: config.export_timeout,
            ca_file: env("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")
                .or_else(|| env("OTEL_EXPORTER_OTLP_CERTIFICATE"))
                .filter(|f| !f.is_empty())
                .map(PathBuf::from)
                .or_else(|| config.ca_file.clone()),
        })
    }
}

/// The name of dnslens's container in its pod (the chart's and the injector's,
/// `dnslens_k8s::inject::CONTAINER`; a unit test keeps them equal).
pub const CONTAINER: &str = "dnslens";

/// The service's resource: OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES, service.name
/// `dnslens` by default, `service.version`, `service.instance.id` (as the OpenTelemetry
/// Kubernetes conventions build it, `<namespace>.<pod>.<container>`, else a random UUID; one
/// in OTEL_RESOURCE_ATTRIBUTES wins), and the Kubernetes attributes of the downward API.
pub fn resource(env: impl Fn(&str) -> Option<String>) -> Resource {
    let mut builder = Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none() {
        builder = builder.with_service_name("dnslens");
    }
    builder = builder.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    let given = env("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
    if !given
        .split(',')
        .any(|kv| kv.trim().starts_with("service.instance.id="))
    {
        let instance = match (env("POD_NAMESPACE"), env("POD_NAME")) {
            (Some(namespace), Some(pod)) => {
                format!("{namespace}.{pod}.{CONTAINER}")
            }
            _ => random_uuid(),
        };
        builder = builder.with_attribute(KeyValue::new("service.instance.id", instance));
    }
    let k8s = [
        ("POD_NAME", "k8s.pod.name"),
        ("POD_NAMESPACE", "k8s.namespace.name"),
        ("NODE_NAME", "k8s.node.name"),
    ];
    builder
        .with_attributes(
            k8s.iter()
                .filter_map(|(var, key)| env(var).map(|v| KeyValue::new(*key, v))),
        )
        .build()
}

/// A version 4 UUID (RFC 9562), for a `service.instance.id` nothing else names.
fn random_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
