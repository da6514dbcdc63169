//! The Jaeger search response as a real Jaeger (v1.75, all-in-one) wrote it for a lookup
//! dnslens exported (`jaeger_search.json`), and the ways a search can fail.

use http::StatusCode;
use serde_json::{json, Value};

use super::jaeger::{entry_of, parse_search, SearchFailure, Trace};
use super::BackendConfig;
use crate::anomaly::journal::EntryFilter;

const RECORDED: &str = include_str!("jaeger_search.json");

fn traces(body: &str) -> Vec<Trace> {
    match parse_search(StatusCode::OK, body.as_bytes()) {
        Ok(traces) => traces,
        Err(SearchFailure::Refused(e) | SearchFailure::Garbage(e)) => panic!("{e}"),
    }
}

#[test]
fn a_recorded_search_becomes_the_journal_entry_it_was() {
    let found = traces(RECORDED);
    assert_eq!(found.len(), 1);
    let entry = entry_of(&found[0]).expect("a dnslens lookup");
    assert_eq!(entry.base, "foo.example.org");
    assert_eq!(entry.client, "127.0.0.1");
    assert_eq!(entry.outcome, "timeout");
    assert_eq!(entry.kinds, vec!["upstream_timeout"]);
    assert_eq!(entry.trace_id, "ae76ec9f2d350ea3648496c88df78bc9");
    assert_eq!(entry.instance.as_deref(), Some("web-abc"));
    assert_eq!(entry.time, 1_796_622_246.322_146);
    assert_eq!(entry.queries.len(), 1);
    let q = &entry.queries[0];
    assert_eq!(
        (q.name.as_str(), q.qtype.as_str(), q.search.as_str()),
        ("foo.example.org", "A", "absolute")
    );
    assert_eq!((q.rcode.as_str(), q.answers, q.soa), ("SERVFAIL", 0, false));
    assert_eq!(q.upstreams, vec!["127.0.0.1:9 udp timeout"]);
    assert_eq!(q.duration_ms, 310.021);
    assert!(!q.retransmission);
    assert!(entry.client_identity.is_none());
}

/// The recorded trace with its root's and process's tags changed.
fn edited(edit: impl FnOnce(&mut Value)) -> Trace {
    let mut body: Value = serde_json::from_str(RECORDED).expect("json");
    edit(&mut body["data"][0]);
    traces(&body.to_string()).remove(0)
}

fn push_tag(tags: &mut Value, key: &str, value: Value) {
    tags.as_array_mut()
        .expect("tags")
        .push(json!({"key": key, "type": "string", "value": value}));
}

#[test]
fn a_node_local_lookup_names_its_client_pod_and_its_node() {
    let trace = edited(|t| {
        let root = &mut t["spans"][0]["tags"];
        push_tag(root, "dnslens.client.k8s.namespace.name", json!("team-a"));
        push_tag(root, "dnslens.client.k8s.pod.name", json!("web-1"));
        push_tag(
            root,
            "dnslens.client.k8s.workload.kind",
            json!("Deployment"),
        );
        push_tag(root, "dnslens.client.k8s.workload.name", json!("web"));
        push_tag(root, "dnslens.anomaly.client_retry", json!(true));
        push_tag(root, "dnslens.lookup.waited_ms", json!(5003.5));
        let process = t["processes"]["p1"]["tags"].as_array_mut().expect("tags");
        process.retain(|tag| tag["key"] != "k8s.pod.name");
        push_tag(
            &mut t["processes"]["p1"]["tags"],
            "k8s.node.name",
            json!("node-1"),
        );
    });
    let entry = entry_of(&trace).expect("a lookup");
    assert_eq!(entry.instance.as_deref(), Some("node-1"));
    let id = entry.client_identity.expect("identity");
    assert_eq!(
        (id.namespace.as_str(), id.pod.as_str(), id.workload.as_str()),
        ("team-a", "web-1", "web")
    );
    assert_eq!(id.workload_kind, "Deployment");
    // Kinds in the order of `Kind::ALL`, whatever the order of the tags.
    assert_eq!(entry.kinds, vec!["client_retry", "upstream_timeout"]);
    assert_eq!(entry.waited_ms, Some(5003.5));
}

#[test]
fn a_trace_that_is_not_a_dnslens_lookup_is_skipped() {
    let trace = edited(|t| {
        for span in t["spans"].as_array_mut().expect("spans") {
            span["operationName"] = json!("GET /");
        }
    });
    assert!(entry_of(&trace).is_none());
}

#[test]
fn a_short_trace_id_is_widened_to_32_hex_digits() {
    let trace = edited(|t| t["traceID"] = json!("48496C88DF78BC9"));
    let entry = entry_of(&trace).expect("a lookup");
    assert_eq!(entry.trace_id, "0000000000000000048496c88df78bc9");
}

#[test]
fn a_refused_or_unreadable_search_says_why_in_one_line() {
    let refused = br#"{"data":null,"errors":[{"code":400,"msg":"unable to parse param 'start'"}]}"#;
    match parse_search(StatusCode::BAD_REQUEST, refused) {
        Err(SearchFailure::Refused(e)) => {
            assert_eq!(e, "HTTP 400: unable to parse param 'start'")
        }
        _ => panic!("not refused"),
    }
    match parse_search(StatusCode::NOT_FOUND, b"404 page not found\n") {
        Err(SearchFailure::Refused(e)) => assert_eq!(e, "HTTP 404: 404 page not found"),
        _ => panic!("not refused"),
    }
    match parse_search(StatusCode::OK, b"<html>a login page</html>") {
        Err(SearchFailure::Garbage(e)) => assert!(e.contains("expected value"), "{e}"),
        _ => panic!("not garbage"),
    }
    match parse_search(StatusCode::OK, br#"{"data":[{"traceID":7}]}"#) {
        Err(SearchFailure::Garbage(e)) => assert!(e.contains("expected a string"), "{e}"),
        _ => panic!("not garbage"),
    }
    assert!(matches!(
        parse_search(StatusCode::OK, br#"{"data":null,"errors":null}"#),
        Ok(t) if t.is_empty()
    ));
}

#[test]
fn backends_are_named_kind_equals_url() {
    let ok: BackendConfig = "jaeger=https://jaeger.example:16686/jaeger"
        .parse()
        .expect("valid");
    assert_eq!(
        ok.to_string(),
        "Jaeger at https://jaeger.example:16686/jaeger"
    );
    for (text, reason) in [
        ("http://jaeger:16686", "is not KIND=URL"),
        ("tempo=http://tempo:3200", "backend 'tempo' is not known"),
        ("jaeger=jaeger:16686", "is not an http(s) URL"),
        ("jaeger=not a url", "relative URL without a base"),
    ] {
        let e = text.parse::<BackendConfig>().expect_err(text);
        assert!(e.contains(reason), "{text}: {e}");
    }
}

#[test]
fn the_search_asks_for_the_exact_tags_of_the_filter() {
    use super::jaeger::Jaeger;
    let all = Jaeger::search_tags(&EntryFilter::default());
    assert_eq!(all, r#"{"dnslens.anomalous":"true"}"#);
    let narrow = Jaeger::search_tags(&EntryFilter {
        kind: Some(dnslens_datapath::record::Kind::ParallelRace),
        namespace: Some("team-a".into()),
        workload: Some("web".into()),
        name: Some("API.Example.com.".into()),
    });
    assert_eq!(
        narrow,
        r#"{"dnslens.anomaly.parallel_race":"true","dnslens.client.k8s.namespace.name":"team-a","dnslens.client.k8s.workload.name":"web","dnslens.lookup.name":"api.example.com"}"#
    );
}
