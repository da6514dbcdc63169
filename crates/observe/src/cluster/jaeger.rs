//! Jaeger's query API (`GET /api/traces`, the one its UI uses): the window's lookup spans
//! found by exact tags, and each trace turned back into a journal [`Entry`].
//!
//! Paging: Jaeger returns at most `limit` traces a search and has no cursor, so a search
//! that comes back full is split into the two halves of its window, each searched again,
//! until every part is below the limit (at most [`MAX_ENTRIES`] lookups, or an error that
//! says to narrow the window). Jaeger's window bounds are inclusive microseconds; entries
//! are kept to the asked window again on this side.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_http::HttpClient;
use serde::Deserialize;
use serde_json::Value;

use super::{BackendError, ClusterWindow};
use crate::anomaly::journal::{Entry, EntryFilter, EntryIdentity, EntryQuery, Window};
use crate::telemetry::span_names as names;
use dnslens_datapath::record::Kind;

/// Traces asked for per search (below Jaeger's in-memory store's smallest sensible
/// `max_traces`, and a response well under the client's 4 MiB body limit).
const SEARCH_LIMIT: usize = 100;

/// Lookups read for one window at most.
pub const MAX_ENTRIES: usize = 20_000;

/// Queries kept per entry, as in the local journal.
const MAX_QUERIES: usize = 12;

type Client = opentelemetry_http::hyper::HyperClient<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
>;

/// A Jaeger query service.
#[derive(Clone)]
pub struct Jaeger {
    base: url::Url,
    service: String,
    client: Client,
}

impl Jaeger {
    pub fn new(base: url::Url, service: &str, timeout: Duration) -> Result<Jaeger, BackendError> {
        // An https backend is checked against the system's roots (none needed for http).
        let roots = crate::telemetry::trusted_roots(None).map_err(BackendError::Client)?;
        let tls = crate::telemetry::client_tls(roots).map_err(BackendError::Client)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Jaeger {
            base,
            service: service.to_string(),
            client: Client::new(connector, timeout, None),
        })
    }

    fn name(&self) -> String {
        format!("Jaeger at {}", self.base)
    }

    /// The search's tags: the lookup span's exact attributes.
    pub(super) fn search_tags(filter: &EntryFilter) -> String {
        let mut tags = serde_json::Map::new();
        let mark = filter.kind.map_or(names::ANOMALOUS, Kind::span_attribute);
        tags.insert(mark.into(), "true".into());
        let exact = [
            (names::CLIENT_NAMESPACE, &filter.namespace),
            (names::CLIENT_WORKLOAD, &filter.workload),
            (
                names::LOOKUP_NAME,
                &filter.name.as_ref().map(|n| normalized_name(n)),
            ),
        ];
        for (key, value) in exact {
            if let Some(value) = value {
                tags.insert(key.into(), value.clone().into());
            }
        }
        Value::Object(tags).to_string()
    }

    /// The abnormal lookups of `window`, newest first.
    pub async fn anomalies(
        &self,
        window: &Window,
        filter: &EntryFilter,
    ) -> Result<ClusterWindow, BackendError> {
        let tags = Self::search_tags(filter);
        let from = (window.from * 1e6).ceil().max(0.0) as u64;
        let to = (window.to * 1e6).floor().max(0.0) as u64;
        let mut result = ClusterWindow::default();
        let mut seen = HashSet::new();
        let mut parts = vec![(from, to)];
        while let Some((start, end)) = parts.pop() {
            let traces = self.search(start, end, &tags).await?;
            result.requests += 1;
            if traces.len() >= SEARCH_LIMIT && end > start {
                let middle = start + (end - start) / 2;
                parts.push((start, middle));
                parts.push((middle + 1, end));
                continue;
            }
            for trace in &traces {
                if !seen.insert(trace.trace_id.clone()) {
                    continue;
                }
                match entry_of(trace) {
                    Some(e) if e.time >= window.from && e.time <= window.to => {
                        result.entries.push(e)
                    }
                    Some(_) => {}
                    None => result.skipped += 1,
                }
            }
            if result.entries.len() > MAX_ENTRIES {
                return Err(BackendError::TooMany {
                    backend: self.name(),
                    limit: MAX_ENTRIES,
                });
            }
        }
        // The filters the search could not say exactly (a workload's kind, a pod prefix).
        result.entries.retain(|e| filter.matches(e));
        result
            .entries
            .sort_by(|a, b| b.time.total_cmp(&a.time).then(a.trace_id.cmp(&b.trace_id)));
        Ok(result)
    }

    async fn search(&self, start: u64, end: u64, tags: &str) -> Result<Vec<Trace>, BackendError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| BackendError::Client(format!("{} cannot be a base URL", self.base)))?
            .pop_if_empty()
            .extend(["api", "traces"]);
        url.query_pairs_mut()
            .append_pair("service", &self.service)
            .append_pair("operation", "dns.lookup")
            .append_pair("start", &start.to_string())
            .append_pair("end", &end.to_string())
            .append_pair("limit", &SEARCH_LIMIT.to_string())
            .append_pair("tags", tags);
        let request = http::Request::get(url.as_str())
            .header(http::header::ACCEPT, "application/json")
            .body(Bytes::new())
            .map_err(|e| BackendError::Client(e.to_string()))?;
        let response =
            self.client
                .send_bytes(request)
                .await
                .map_err(|e| BackendError::Unreachable {
                    backend: self.name(),
                    reason: error_chain(e.as_ref()),
                })?;
        parse_search(response.status(), response.body()).map_err(|failure| match failure {
            SearchFailure::Refused(reason) => BackendError::Refused {
                backend: self.name(),
                reason,
            },
            SearchFailure::Garbage(reason) => BackendError::Garbage {
                backend: self.name(),
                reason,
            },
        })
    }
}

fn error_chain(mut e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    while let Some(source) = e.source() {
        let more = source.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        e = source;
    }
    text
}

pub(super) enum SearchFailure {
    Refused(String),
    Garbage(String),
}

/// A search response: its traces, or why not.
pub(super) fn parse_search(
    status: http::StatusCode,
    body: &[u8],
) -> Result<Vec<Trace>, SearchFailure> {
    let parsed: Result<SearchResponse, _> = serde_json::from_slice(body);
    match parsed {
        Ok(SearchResponse {
            errors: Some(errors),
            ..
        }) if !errors.is_empty() => {
            let reasons: Vec<String> = errors.into_iter().map(|e| e.msg).collect();
            Err(SearchFailure::Refused(format!(
                "HTTP {}: {}",
                status.as_u16(),
                reasons.join("; ")
            )))
        }
        Ok(response) if status.is_success() => Ok(response.data.unwrap_or_default()),
        Ok(_) => Err(SearchFailure::Refused(format!("HTTP {}", status.as_u16()))),
        Err(e) if status.is_success() => Err(SearchFailure::Garbage(e.to_string())),
        Err(_) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
            let text = text.trim();
            let sep = if text.is_empty() { "" } else { ": " };
            Err(SearchFailure::Refused(format!(
                "HTTP {}{sep}{text}",
                status.as_u16()
            )))
        }
    }
}

#[derive(Deserialize)]
struct SearchResponse {
    data: Option<Vec<Trace>>,
    errors: Option<Vec<SearchError>>,
}

#[derive(Deserialize)]
struct SearchError {
    #[serde(default)]
    msg: String,
}

#[derive(Deserialize)]
pub(super) struct Trace {
    #[serde(rename = "traceID")]
    trace_id: String,
    spans: Vec<Span>,
    #[serde(default)]
    processes: BTreeMap<String, Process>,
}

#[derive(Deserialize)]
struct Span {
    #[serde(rename = "spanID")]
    span_id: String,
    #[serde(rename = "operationName")]
    operation: String,
    #[serde(default)]
    references: Vec<Reference>,
    /// Unix microseconds.
    #[serde(rename = "startTime")]
    start: u64,
    /// Microseconds.
    duration: u64,
    #[serde(default)]
    tags: Vec<Tag>,
    #[serde(rename = "processID", default)]
    process: String,
}

#[derive(Deserialize)]
struct Reference {
    #[serde(rename = "spanID")]
    span_id: String,
}

#[derive(Deserialize)]
struct Process {
    #[serde(default)]
    tags: Vec<Tag>,
}

#[derive(Deserialize)]
struct Tag {
    key: String,
    value: Value,
}

/// A span's or process's tags, by key.
struct Tags<'a>(&'a [Tag]);

impl Tags<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|t| t.key == key).map(|t| &t.value)
    }

    fn text(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }

    fn number(&self, key: &str) -> Option<f64> {
        match self.get(key)? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    fn flag(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }
}

impl Span {
    fn parent(&self) -> Option<&str> {
        self.references.first().map(|r| r.span_id.as_str())
    }

    fn tags(&self) -> Tags<'_> {
        Tags(&self.tags)
    }
}

/// The dnslens that saw the lookup: `node/pod` (a sidecar's pod is its application's; a
/// node-local pod's name alone says little, its node much), else whichever of the two is
/// known, else its `service.instance.id`.
fn instance_of(process: Option<&Process>) -> Option<String> {
    let tags = Tags(process.map_or(&[][..], |p| &p.tags));
    match (tags.text("k8s.node.name"), tags.text("k8s.pod.name")) {
        (Some(node), Some(pod)) => Some(format!("{node}/{pod}")),
        (node, pod) => pod.or(node).or_else(|| tags.text("service.instance.id")),
    }
}

/// A trace id as 32 hex digits (Jaeger drops the high half when it is zero).
fn full_trace_id(id: &str) -> String {
    format!("{:0>32}", id.to_ascii_lowercase())
}

/// A dnslens lookup's trace as a journal entry; `None` when it is not one.
pub(super) fn entry_of(trace: &Trace) -> Option<Entry> {
    let root = trace
        .spans
        .iter()
        .find(|s| s.operation == "dns.lookup" && s.parent().is_none())?;
    let tags = root.tags();
    let kinds: Vec<String> = Kind::ALL
        .iter()
        .filter(|k| tags.flag(k.span_attribute()) == Some(true))
        .map(|k| k.as_str().to_string())
        .collect();
    let client_identity = tags.text(names::CLIENT_POD).map(|pod| EntryIdentity {
        namespace: tags.text(names::CLIENT_NAMESPACE).unwrap_or_default(),
        pod,
        workload_kind: tags.text(names::CLIENT_WORKLOAD_KIND).unwrap_or_default(),
        workload: tags.text(names::CLIENT_WORKLOAD).unwrap_or_default(),
        stale: tags.flag(names::CLIENT_IDENTITY_STALE).unwrap_or(false),
    });
    let mut query_spans: Vec<&Span> = trace
        .spans
        .iter()
        .filter(|s| s.operation == "dns.query" && s.parent() == Some(root.span_id.as_str()))
        .collect();
    query_spans.sort_by_key(|s| s.start);
    let queries = query_spans
        .iter()
        .take(MAX_QUERIES)
        .map(|q| query_of(q, trace))
        .collect();
    Some(Entry {
        time: root.start as f64 / 1e6,
        client: tags.text("client.address").unwrap_or_default(),
        // Before dnslens.lookup.name, the root's dns.question.name was the normalized name.
        base: tags
            .text(names::LOOKUP_NAME)
            .or_else(|| tags.text("dns.question.name"))
            .unwrap_or_default(),
        outcome: tags.text("dnslens.lookup.outcome").unwrap_or_default(),
        kinds,
        queries,
        waited_ms: tags.number("dnslens.lookup.waited_ms"),
        repeats: 0,
        trace_id: full_trace_id(&trace.trace_id),
        client_identity,
        instance: instance_of(trace.processes.get(&root.process)),
    })
}

/// A name as lookups are keyed: lower case, no trailing dot.
fn normalized_name(name: &str) -> String {
    let name = name.trim().to_ascii_lowercase();
    match name.trim_end_matches('.') {
        "" => ".".to_string(),
        trimmed => trimmed.to_string(),
    }
}

fn query_of(span: &Span, trace: &Trace) -> EntryQuery {
    let tags = span.tags();
    let mut tries: Vec<&Span> = trace
        .spans
        .iter()
        .filter(|s| s.operation == "dns.upstream" && s.parent() == Some(span.span_id.as_str()))
        .collect();
    tries.sort_by_key(|s| s.start);
    let upstreams = tries
        .iter()
        .map(|t| {
            let tags = t.tags();
            let address = tags.text("server.address").unwrap_or_default();
            let port = tags.text("server.port").unwrap_or_default();
            // As a socket address is written: [v6]:port.
            let address = if address.contains(':') {
                format!("[{address}]:{port}")
            } else {
                format!("{address}:{port}")
            };
            format!(
                "{address} {} {}",
                tags.text("network.transport").unwrap_or_default(),
                tags.text("dnslens.upstream.outcome").unwrap_or_default()
            )
        })
        .collect();
    let search = match tags.number("dnslens.search.index") {
        Some(i) if i >= 0.0 => format!("suffix {}", i as i64),
        _ => "absolute".to_string(),
    };
    EntryQuery {
        name: tags.text("dns.question.name").unwrap_or_default(),
        qtype: tags.text("dnslens.question.type").unwrap_or_default(),
        search,
        rcode: tags.text("dnslens.response_code").unwrap_or_default(),
        answers: tags.number("dnslens.answer.count").unwrap_or(0.0) as u16,
        // Older dnslens did not say: assume the answer was well formed.
        soa: tags.flag("dnslens.authority.soa").unwrap_or(true),
        upstreams,
        offset_ms: tags.number("dnslens.offset_ms").unwrap_or(0.0),
        duration_ms: span.duration as f64 / 1e3,
        retransmission: tags.flag("dnslens.retransmission").unwrap_or(false),
    }
}
