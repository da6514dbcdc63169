//! Entry points of the coverage-guided fuzz targets in `fuzz/` (`scripts/fuzz.sh` builds and
//! runs them; `tests/integration/fuzz_seeds.rs` replays every seed and past crash). Each takes the fuzzer's bytes, drives real
//! dnslens code with them, and panics only on a broken promise — a panic inside dnslens,
//! or an invariant the entry point checks:
//!
//! | target | what it drives | what it asserts |
//! |---|---|---|
//! | `client_datagram` | a datagram sent to a running proxy's UDP listener (ACL, parse, cache, forwarder to a real upstream socket, reply path) | an answer exactly when the datagram is a query (or deserves FORMERR/NOTIMP), with its ID and question, within the client's UDP size; no other datagram |
//! | `tcp_stream` | bytes written on a TCP connection to the proxy, then half-close | every reply is a framed answer to a query that was framed in the input |
//! | `upstream_response` | the upstream's answers to a forwarded query: the bytes as they are, then with the query's ID | the client gets one answer, to the question it asked, then the same from the cache |
//! | `search` | the lookup tracker and the search model on a run of queries from a few clients | (no panic; bounded) |
//! | `cache` | the cache's store, TTL rewriting, stale reads and every wire reader on one message | (no panic) |
//! | `config` | YAML, then `DNSLENS_*`-style overrides, then the final checks | (no panic; errors are values) |
//! | `webhook` | the admission webhook's review of a request body | the response is an AdmissionReview with the request's uid |

mod net;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use prometheus_client::registry::Registry;

use crate::cache::{Cache, CacheConfig, CacheKey, CacheLookup};
use crate::config::Config;
use crate::lookup::{LookupConfig, LookupMetrics, Tracker};
use crate::metrics::Transport;
use crate::record::QueryTrace;
use crate::search::SearchModel;
use crate::wire;

pub use net::{client_datagram, tcp_stream, upstream_response};

/// Configuration: the input is YAML, optionally followed by a line `---env` and
/// `NAME=VALUE` lines, each handed to the command line parser as the matching `serve`
/// flag (the environment variables and the flags share their value parsers).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (yaml, env) = text.split_once("\n---env\n").unwrap_or((text, ""));
    let Ok(mut config) = Config::from_yaml(yaml) else {
        return;
    };
    let mut args = vec!["dnslens".to_string(), "serve".to_string()];
    for line in env.lines() {
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let flag = name
            .trim_start_matches("DNSLENS_")
            .to_ascii_lowercase()
            .replace('_', "-");
        // Files are not the fuzzer's to choose: a path could name a device.
        if matches!(flag.as_str(), "config" | "resolv-conf") {
            continue;
        }
        args.push(format!("--{flag}={value}"));
    }
    if let Ok(cli) = crate::cli::Cli::try_parse_from(&args) {
        if let crate::cli::Command::Serve(serve) = cli.command {
            config.apply(serve.overrides);
        }
    }
    config.search.resolv_conf = "/dev/null".into();
    let _ = config.finish();
}

/// The admission webhook's request body.
pub fn webhook(data: &[u8]) {
    let config = crate::inject::InjectConfig {
        upstreams: vec!["10.96.0.10".into()],
        ..Default::default()
    };
    for fail_closed in [false, true] {
        let (response, _) = crate::inject::webhook::review(data, &config, fail_closed);
        assert_eq!(response["kind"], "AdmissionReview", "{response}");
        let uid = serde_json::from_slice::<serde_json::Value>(data)
            .ok()
            .and_then(|body| body["request"]["uid"].as_str().map(str::to_owned));
        if let Some(uid) = uid {
            assert_eq!(response["response"]["uid"], uid.as_str(), "{response}");
        }
    }
}

/// The lookup tracker (the search-path classifier): the input is a run of queries, each
/// `[client, qtype, name length, name bytes...]`, from one of four clients, with a pod's
/// search list.
pub fn search(data: &[u8]) {
    let model = SearchModel::Fixed {
        suffixes: vec![
            "default.svc.cluster.local".into(),
            "svc.cluster.local".into(),
            "cluster.local".into(),
            "ec2.internal".into(),
        ],
        ndots: 5,
    };
    let config = LookupConfig {
        max_entries: 64,
        ..LookupConfig::default()
    };
    let metrics = LookupMetrics::register(&mut Registry::default());
    let mut tracker = Tracker::new(model.clone(), &config, &metrics, Vec::new());
    let start = Instant::now();
    let mut rest = data;
    let mut step = 0u32;
    while let [client, qtype, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (name, next) = tail.split_at(len);
        rest = next;
        step += 1;
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        let _ = model.candidates(name.trim_end_matches('.'));
        let Some(question) = question_bytes(&name, if qtype % 2 == 0 { 1 } else { 28 }) else {
            continue;
        };
        let client = SocketAddr::from(([10, 0, 0, client % 4], 40_000 + u16::from(*client)));
        let at = start + Duration::from_millis(u64::from(step) * u64::from(*qtype % 16));
        let mut trace = QueryTrace::new(client, Transport::Udp, &question, 1, at);
        trace.rcode = qtype >> 4 & 0x3;
        tracker.add(trace);
        if step.is_multiple_of(8) {
            tracker.expire(at);
        }
    }
    assert!(tracker.open_lookups() <= config.max_entries);
    tracker.expire(start + Duration::from_secs(3600));
    assert_eq!(tracker.open_lookups(), 0);
}

/// A question section for `name` (labels split on dots), or `None` when it cannot be one.
fn question_bytes(name: &str, qtype: u16) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(name.len() + 6);
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    if out.len() > 255 {
        return None;
    }
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    Some(out)
}

/// The cache and every reader of upstream bytes, on one message answering a fixed query.
pub fn cache(data: &[u8]) {
    thread_local! {
        static CACHE: Cache = Cache::build(
            &CacheConfig { enabled: true, serve_stale: true, max_entries: 1024, ..CacheConfig::default() },
            &mut Registry::default(),
        );
    }
    let query = net::query_bytes("web.default.svc.cluster.local.", 1, 0x1234);
    let Ok(info) = wire::parse_query(&query) else {
        return;
    };
    let Some(key) = CacheKey::of(&query, &info) else {
        return;
    };
    let _ = wire::parse_query(data);
    if let Ok(response) = wire::parse_response(data) {
        let _ = wire::same_question(&query, info.question_end, data, response.question_end);
        if let Some(question) = data.get(wire::HEADER_LEN..response.question_end) {
            let _ = wire::question_name(question);
        }
    }
    if let Ok(sections) = wire::sections(data) {
        let _ = wire::negative_ttl(data, &sections);
        let _ = wire::without_edns_options(data, &sections);
        let _ = sections.all().count();
    }
    let _ = wire::truncated_answer(data);
    let _ = crate::mitigate::is_empty_noerror(data);
    let mut trace = QueryTrace::new(
        SocketAddr::from(([127, 0, 0, 1], 5353)),
        Transport::Udp,
        &[],
        1,
        Instant::now(),
    );
    trace.record_answer(data);
    CACHE.with(|cache| {
        let now = Instant::now();
        cache.store(&key, data, now);
        for later in [0, 2, 7_200] {
            let at = now + Duration::from_secs(later);
            if let CacheLookup::Hit { answer, .. } = cache.get(&key, at) {
                let _ = wire::sections(&answer);
            }
            if let Some(stale) = cache.stale(&key, at) {
                let _ = wire::sections(&stale);
            }
        }
    });
}
