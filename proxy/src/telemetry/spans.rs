//! A lookup record as OpenTelemetry spans: the `dns.lookup` root, a `dns.query` per query,
//! a `dns.upstream` per try (the span model is in the module doc of `telemetry`).

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::sampling::span_count;
use crate::metrics::{QtypeLabel, RcodeLabel};
use crate::record::{Attempt, CacheUse, Clock, Kind, LookupOutcome, LookupRecord};

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
        KeyValue::new("dns.question.name", lookup.base.clone()),
        KeyValue::new("client.address", addresses.get(lookup.client)),
        KeyValue::new("dns.lookup.attempts", lookup.attempts.len() as i64),
        KeyValue::new("dns.lookup.outcome", lookup.outcome.as_str()),
    ];
    if let Some(attempt) = lookup.answered_by() {
        root_attributes.push(KeyValue::new(
            "dns.lookup.answered_by",
            suffix_text(attempt),
        ));
    }
    if lookup.evicted {
        root_attributes.push(KeyValue::new("dns.lookup.evicted", true));
    }
    if !anomalies.is_empty() {
        let kinds: Vec<&str> = anomalies.iter().map(|k| k.as_str()).collect();
        root_attributes.push(KeyValue::new("dns.anomaly", kinds.join(",")));
    }
    let mut root = trace.span(
        (root_id, SpanId::INVALID),
        "dns.lookup",
        SpanKind::Server,
        (lookup.start, lookup.end),
        root_attributes,
    );
    if matches!(
        lookup.outcome,
        LookupOutcome::ServFail | LookupOutcome::Timeout
    ) {
        root.status = Status::error(lookup.outcome.as_str());
    }
    spans.push(root);
    for attempt in &lookup.attempts {
        let q = &attempt.query;
        let query_id = SpanId::from_bytes(rand::random());
        let mut attributes = vec![
            KeyValue::new("dns.question.name", attempt.qname.clone()),
            KeyValue::new(
                "dns.question.type",
                QtypeLabel::from_qtype(q.qtype).as_str(),
            ),
            KeyValue::new("dns.search.suffix", suffix_text(attempt)),
            KeyValue::new(
                "dns.search.index",
                attempt.suffix.as_ref().map_or(-1, |(i, _)| *i as i64),
            ),
            KeyValue::new(
                "dns.response_code",
                RcodeLabel::from_rcode(q.rcode).as_str(),
            ),
            KeyValue::new("dns.answer.count", i64::from(q.answers)),
            KeyValue::new("dns.cache.hit", q.cache == CacheUse::Hit),
            KeyValue::new("network.transport", q.transport.as_str()),
            KeyValue::new("client.address", addresses.get(q.client.ip())),
            KeyValue::new("client.port", i64::from(q.client.port())),
        ];
        if q.cache == CacheUse::Stale {
            attributes.push(KeyValue::new("dns.cache.stale", true));
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
        spans.push(trace.span(
            (query_id, root_id),
            "dns.query",
            SpanKind::Internal,
            (q.received, q.answered),
            attributes,
        ));
        for (n, t) in q.tries.iter().enumerate() {
            spans.push(trace.span(
                (SpanId::from_bytes(rand::random()), query_id),
                "dns.upstream",
                SpanKind::Client,
                (t.start, t.end),
                vec![
                    KeyValue::new("server.address", addresses.get(t.upstream.ip())),
                    KeyValue::new("server.port", i64::from(t.upstream.port())),
                    KeyValue::new("network.transport", t.transport.as_str()),
                    KeyValue::new("dns.upstream.try", n as i64 + 1),
                    KeyValue::new("dns.upstream.outcome", t.outcome.as_str()),
                ],
            ));
        }
    }
    spans
}
