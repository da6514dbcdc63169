//! A lookup record as OpenTelemetry spans: the `dns.lookup` root, a `dns.query` per query,
//! a `dns.upstream` per try (the span model is in the module doc of `telemetry`).

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::sampling::span_count;
use dnslens_datapath::metrics::{QtypeLabel, RcodeLabel};
use dnslens_datapath::record::{
    AnswerAddresses, Attempt, CacheUse, Clock, Kind, LookupOutcome, LookupRecord, Outcome,
};
use dnslens_wire as wire;

/// Builds the spans of one trace.
struct TraceBuilder<'a> {
    trace_id: TraceId,
    scope: &'a InstrumentationScope,
    clock: &'a Clock,
}

impl TraceBuilder<'_> {
    fn span(
        &self,
        (span_id, parent): (SpanId, SpanId),
        name: &'static str,
        kind: SpanKind,
        (start, end): (Instant, Instant),
        attributes: Vec<KeyValue>,
    ) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                self.trace_id,
                span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: parent,
            parent_span_is_remote: false,
            span_kind: kind,
            name: Cow::Borrowed(name),
            start_time: self.clock.at(start),
            end_time: self.clock.at(end),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: self.scope.clone(),
        }
    }
}

fn suffix_text(attempt: &Attempt) -> Value {
    match &attempt.suffix {
        Some((_, suffix)) => Value::from(suffix.clone()),
        None => Value::from("absolute"),
    }
}

/// An address as an attribute value, made once per lookup (every query of a lookup comes
/// from one client; its tries go to a handful of upstreams).
#[derive(Default)]
struct AddressTexts(Vec<(IpAddr, Arc<str>)>);

impl AddressTexts {
    fn get(&mut self, ip: IpAddr) -> Value {
        if let Some((_, text)) = self.0.iter().find(|(known, _)| *known == ip) {
            return Value::from(text.clone());
        }
        let text: Arc<str> = ip.to_string().into();
        self.0.push((ip, text.clone()));
        Value::from(text)
    }
}

/// The lookup span's anomaly kinds (a string array) and its mark that it has any.
pub const ANOMALY: &str = "dnslens.anomaly";
pub const ANOMALOUS: &str = "dnslens.anomalous";

/// The lookup span's base name as dnslens correlates it (lower case; `dns.question.name`
/// keeps the client's case): what searches by name match exactly.
pub const LOOKUP_NAME: &str = "dnslens.lookup.name";

/// The lookup span's attributes naming the client's pod (node-local pod identity).
pub const CLIENT_NAMESPACE: &str = "dnslens.client.k8s.namespace.name";
pub const CLIENT_POD: &str = "dnslens.client.k8s.pod.name";
pub const CLIENT_POD_UID: &str = "dnslens.client.k8s.pod.uid";
pub const CLIENT_WORKLOAD_KIND: &str = "dnslens.client.k8s.workload.kind";
pub const CLIENT_WORKLOAD: &str = "dnslens.client.k8s.workload.name";
pub const CLIENT_IDENTITY_STALE: &str = "dnslens.client.identity.stale";

/// The spans of one lookup: the root, a `dns.query` per attempt, a `dns.upstream` per try.
pub fn lookup_spans(
    lookup: &LookupRecord,
    anomalies: &[Kind],
    clock: &Clock,
    scope: &InstrumentationScope,
) -> Vec<SpanData> {
    let trace = TraceBuilder {
        trace_id: TraceId::from(lookup.trace_id),
        scope,
        clock,
    };
    let root_id = SpanId::from_bytes(rand::random());
    let mut spans = Vec::with_capacity(span_count(lookup));
    let mut addresses = AddressTexts::default();
    let mut root_attributes = vec![
        KeyValue::new("dns.question.name", base_as_asked(lookup)),
        KeyValue::new(LOOKUP_NAME, lookup.base.clone()),
        KeyValue::new("client.address", addresses.get(lookup.client)),
        KeyValue::new("dnslens.lookup.attempts", lookup.questions() as i64),
        KeyValue::new("dnslens.lookup.outcome", lookup.outcome.as_str()),
    ];
    if let Some(attempt) = lookup.answered_by() {
        root_attributes.push(KeyValue::new(
            "dnslens.lookup.answered_by",
            suffix_text(attempt),
        ));
    }
    let answers = lookup_answers(lookup);
    if !answers.is_empty() {
        root_attributes.push(KeyValue::new("dns.answers", address_list(answers.iter())));
    }
    if let Some(error) = error_type(lookup.outcome) {
        root_attributes.push(KeyValue::new("error.type", error));
    }
    if lookup.is_tail() {
        // Only re-asks of questions of a lookup that had ended: that lookup's tail.
        root_attributes.push(KeyValue::new("dnslens.lookup.tail", true));
    }
    if lookup.evicted {
        root_attributes.push(KeyValue::new("dnslens.lookup.evicted", true));
    }
    if !anomalies.is_empty() {
        // Three shapes of one fact, each for a kind of query (see the module doc): the kinds
        // as a string array (TraceQL, array-aware backends), one `true` per kind and
        // `dnslens.anomalous` (exact tag matches: Jaeger, Zipkin-style searches).
        let kinds: Vec<StringValue> = anomalies.iter().map(|k| k.as_str().into()).collect();
        root_attributes.push(KeyValue::new(ANOMALY, Value::Array(Array::String(kinds))));
        root_attributes.push(KeyValue::new(ANOMALOUS, true));
        root_attributes.extend(
            anomalies
                .iter()
                .map(|k| KeyValue::new(k.span_attribute(), true)),
        );
    }
    if let Some(client) = &lookup.client_identity {
        // The client's pod (node-local pod identity). The OpenTelemetry `k8s.*` names
        // describe the resource that emits the span — dnslens itself — so the client's
        // identity has names of its own.
        let pod = &client.pod;
        root_attributes.extend([
            KeyValue::new(CLIENT_NAMESPACE, pod.namespace.clone()),
            KeyValue::new(CLIENT_POD, pod.pod.clone()),
            KeyValue::new(CLIENT_POD_UID, pod.uid.clone()),
            KeyValue::new(CLIENT_WORKLOAD_KIND, pod.workload_kind.clone()),
            KeyValue::new(CLIENT_WORKLOAD, pod.workload.clone()),
        ]);
        if client.stale {
            root_attributes.push(KeyValue::new(CLIENT_IDENTITY_STALE, true));
        }
    }
    if let Some(waited) = lookup.waited {
        root_attributes.push(KeyValue::new(
            "dnslens.lookup.waited_ms",
            waited.as_secs_f64() * 1e3,
        ));
    }
    let mut root = trace.span(
        (root_id, SpanId::INVALID),
        "dns.lookup",
        SpanKind::Server,
        (lookup.start, lookup.end),
        root_attributes,
    );
    if lookup.outcome.is_failure() {
        root.status = Status::error(lookup.outcome.as_str());
    }
    spans.push(root);
    for attempt in &lookup.attempts {
        let q = &attempt.query;
        let query_id = SpanId::from_bytes(rand::random());
        let mut attributes = vec![
            KeyValue::new(
                "dns.question.name",
                wire::question_name_as_asked(&q.question, None)
                    .unwrap_or_else(|| attempt.qname.clone()),
            ),
            KeyValue::new(
                "dnslens.question.type",
                QtypeLabel::from_qtype(q.qtype).as_str(),
            ),
            KeyValue::new("dnslens.search.suffix", suffix_text(attempt)),
            KeyValue::new(
                "dnslens.search.index",
                attempt.position().map_or(-1, |i| i as i64),
            ),
            KeyValue::new(
                "dnslens.response_code",
                RcodeLabel::from_rcode(q.rcode).as_str(),
            ),
            KeyValue::new("dnslens.answer.count", i64::from(q.answers)),
            KeyValue::new(
                "dnslens.offset_ms",
                lookup.offset(attempt).as_secs_f64() * 1e3,
            ),
            KeyValue::new("dnslens.cache.hit", q.cache == CacheUse::Hit),
            KeyValue::new("network.transport", q.transport.as_str()),
            KeyValue::new("client.address", addresses.get(q.client.ip())),
            KeyValue::new("client.port", i64::from(q.client.port())),
        ];
        if !q.addresses.as_slice().is_empty() {
            attributes.push(KeyValue::new(
                "dns.answers",
                address_list(q.addresses.as_slice().iter()),
            ));
        }
        if attempt.retransmission {
            attributes.push(KeyValue::new("dnslens.retransmission", true));
        }
        if q.answers == 0 {
            // NODATA or NXDOMAIN said properly, or the "nothing" of a broken upstream.
            attributes.push(KeyValue::new("dnslens.authority.soa", q.authority_soa));
        }
        if q.cache == CacheUse::Stale {
            attributes.push(KeyValue::new("dnslens.cache.stale", true));
        }
        if q.rewritten {
            attributes.push(KeyValue::new(
                "dnslens.rewrite",
                "empty_noerror_to_nxdomain",
            ));
        }
        if let Some(name) = &q.autopath {
            attributes.push(KeyValue::new("dnslens.autopath.name", name.clone()));
        }
        if let Some(zone) = &q.zone {
            attributes.push(KeyValue::new("dnslens.forward.zone", zone.to_string()));
        }
        spans.push(trace.span(
            (query_id, root_id),
            "dns.query",
            SpanKind::Internal,
            (q.received, q.answered),
            attributes,
        ));
        for (n, t) in q.tries.iter().enumerate() {
            let mut attributes = vec![
                KeyValue::new("server.address", addresses.get(t.upstream.ip())),
                KeyValue::new("server.port", i64::from(t.upstream.port())),
                KeyValue::new("network.transport", t.transport.as_str()),
                KeyValue::new("dnslens.upstream.try", n as i64 + 1),
                KeyValue::new("dnslens.upstream.outcome", t.outcome.as_str()),
            ];
            // A try that brought no usable answer (truncation goes on over TCP: not an error).
            let failed = !matches!(t.outcome, Outcome::Answer | Outcome::Truncated);
            if failed {
                attributes.push(KeyValue::new("error.type", try_error_type(t.outcome)));
            }
            let mut span = trace.span(
                (SpanId::from_bytes(rand::random()), query_id),
                "dns.upstream",
                SpanKind::Client,
                (t.start, t.end),
                attributes,
            );
            if failed {
                span.status = Status::error(t.outcome.as_str());
            }
            spans.push(span);
        }
    }
    spans
}

/// The lookup's base name as the client asked it (case kept): the base's labels of its first
/// query's name (the base itself where they differ in more than case: escaped bytes).
fn base_as_asked(lookup: &LookupRecord) -> String {
    let labels = if lookup.base == "." {
        0
    } else {
        lookup.base.split('.').count()
    };
    lookup
        .attempts
        .first()
        .and_then(|a| wire::question_name_as_asked(&a.query.question, Some(labels)))
        .filter(|asked| asked.eq_ignore_ascii_case(&lookup.base))
        .unwrap_or_else(|| lookup.base.clone())
}

/// `error.type` of a lookup that did not get an address: the error `getaddrinfo` gives the
/// client, in the well-known words the OpenTelemetry DNS conventions use (.NET's
/// `SocketError` names for `EAI_*`): NXDOMAIN and NODATA are `EAI_NONAME`/`EAI_NODATA`
/// (`host_not_found`), SERVFAIL and no answer at all `EAI_AGAIN` (`try_again`). Which of
/// them it was is `dnslens.lookup.outcome`. None for an answered lookup.
fn error_type(outcome: LookupOutcome) -> Option<&'static str> {
    match outcome {
        LookupOutcome::Answered => None,
        LookupOutcome::NxDomain | LookupOutcome::NoData => Some("host_not_found"),
        LookupOutcome::ServFail | LookupOutcome::Timeout => Some("try_again"),
    }
}

/// `error.type` of an upstream try that brought no usable answer: `timeout` as in the
/// OpenTelemetry network conventions, the response code's name for an answer that refused
/// or failed (as HTTP client spans use the status code), else what went wrong.
fn try_error_type(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::ServFail => "SERVFAIL",
        Outcome::Refused => "REFUSED",
        Outcome::Timeout => "timeout",
        Outcome::Error => "connection_error",
        Outcome::LocalError => "send_error",
        Outcome::Answer | Outcome::Truncated => "_OTHER",
    }
}

/// Addresses shown on a lookup's root: those of its answered queries, at most this many.
const ROOT_ANSWERS: usize = 2 * AnswerAddresses::MAX;

fn lookup_answers(lookup: &LookupRecord) -> Vec<IpAddr> {
    let mut answers: Vec<IpAddr> = Vec::new();
    for a in lookup.attempts.iter().filter(|a| !a.retransmission) {
        for address in a.query.addresses.as_slice() {
            if answers.len() < ROOT_ANSWERS && !answers.contains(address) {
                answers.push(*address);
            }
        }
    }
    answers
}

/// A string array attribute of addresses.
fn address_list<'a>(addresses: impl Iterator<Item = &'a IpAddr>) -> Value {
    let texts = addresses
        .map(|a| StringValue::from(a.to_string()))
        .collect();
    Value::Array(Array::String(texts))
}
