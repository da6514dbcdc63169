//! Every function that reads bytes from an upstream (or from a client) gets mutated real
//! messages and must neither panic nor loop: the wire readers, the cache's store and TTL
//! rewriting, the mitigations' readers, the trace's reading of an answer, and the reply
//! path's echo and truncation. Deterministic (xorshift), so a failure reproduces; the
//! coverage-guided fuzzing of issue 15 builds on the same seeds.

use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use prometheus_client::registry::Registry;

use crate::cache::CacheConfig;
use crate::cache::{Cache, CacheKey, CacheLookup};
use crate::metrics::Transport;
use crate::mitigate;
use crate::record::QueryTrace;
use crate::search::SearchModel;
use crate::test_messages::{a_answer, negative_answer, query, with_cookie};
use dnslens_wire as wire;

/// Seeds: queries and upstream answers of every shape the proxy handles.
fn seeds() -> Vec<Vec<u8>> {
    let name = "web.default.svc.cluster.local.";
    vec![
        query(name, RecordType::A, false),
        query(name, RecordType::AAAA, true),
        a_answer(name, &[30, 60, 5]),
        with_cookie(&a_answer(name, &[300])),
        negative_answer(name, RecordType::A, ResponseCode::NXDomain, Some((60, 30))),
        negative_answer(
            name,
            RecordType::AAAA,
            ResponseCode::NoError,
            Some((5, 300)),
        ),
        negative_answer(name, RecordType::A, ResponseCode::NoError, None),
        with_cookie(&negative_answer(
            name,
            RecordType::A,
            ResponseCode::NXDomain,
            Some((60, 30)),
        )),
    ]
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// One to four byte changes, sometimes a cut, sometimes a tail of junk.
fn mutate(seed: &[u8], rng: &mut XorShift) -> Vec<u8> {
    let mut m = seed.to_vec();
    for _ in 0..=(rng.next() % 4) {
        let r = rng.next();
        let pos = (r as usize) % m.len().max(1);
        if let Some(byte) = m.get_mut(pos) {
            *byte = (r >> 32) as u8;
        }
    }
    match rng.next() % 4 {
        0 => m.truncate((rng.next() as usize) % (seed.len() + 1)),
        1 => m.extend((0..rng.next() % 32).map(|i| i as u8 ^ 0xc0)),
        _ => {}
    }
    m
}

/// Every reader of upstream bytes, on one message; `query` is the question it answers.
fn read_everything(msg: &[u8], query: &[u8], cache: &Cache, key: &CacheKey, model: &SearchModel) {
    let _ = wire::parse_query(msg);
    if let Ok(info) = wire::parse_response(msg) {
        let _ = wire::same_question(query, info.question_end, msg, info.question_end);
        if let Some(question) = msg.get(wire::HEADER_LEN..info.question_end) {
            let _ = wire::question_name(question);
            let _ = mitigate::shield_candidate(model, question, wire::QTYPE_A, msg);
        }
    }
    if let Ok(sections) = wire::sections(msg) {
        let _ = wire::negative_ttl(msg, &sections);
        let _ = wire::without_edns_options(msg, &sections);
        let _ = sections.all().count();
    }
    let _ = wire::authority_has_soa(msg);
    let _ = wire::answer_count(msg);
    let _ = wire::rcode(msg);
    let _ = wire::id(msg);
    let _ = wire::checking_disabled(msg);
    let _ = wire::truncated_answer(msg);
    let _ = mitigate::is_empty_noerror(msg);
    let _ = mitigate::cname_answer(query, "web.default.svc.cluster.local", msg);
    if msg.len() >= wire::HEADER_LEN {
        let mut echoed = msg.to_vec();
        if let Ok(info) = wire::parse_query(query) {
            wire::echo_question(&mut echoed, query, info.question_end);
        }
        let mut rewritten = msg.to_vec();
        wire::set_rcode(&mut rewritten, wire::Rcode::NXDOMAIN);
        wire::set_id(&mut rewritten, 7);
    }
    let mut trace = QueryTrace::new(
        "127.0.0.1:5353".parse().expect("an address"),
        Transport::Udp,
        &[],
        1,
        Instant::now(),
    );
    trace.record_answer(msg);
    // The cache stores what it can parse and rewrites TTLs when it answers.
    let now = Instant::now();
    cache.store(key, msg, now);
    if let CacheLookup::Hit { answer, .. } = cache.get(key, now + Duration::from_secs(2)) {
        let _ = wire::sections(&answer);
    }
    let _ = cache.stale(key, now + Duration::from_secs(7200));
}

#[test]
fn mutated_messages_never_panic_any_reader() {
    let cache = Cache::build(
        &CacheConfig {
            enabled: true,
            serve_stale: true,
            ..CacheConfig::default()
        },
        &mut Registry::default(),
    );
    let model = SearchModel::Fixed {
        suffixes: vec![
            "default.svc.cluster.local".into(),
            "svc.cluster.local".into(),
            "cluster.local".into(),
        ],
        ndots: 5,
    };
    let query = query("web.default.svc.cluster.local.", RecordType::A, false);
    let info = wire::parse_query(&query).expect("a valid query");
    let key = CacheKey::of(&query, &info).expect("a key");
    let seeds = seeds();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for round in 0..8_000 {
        let seed = &seeds[round % seeds.len()];
        let msg = mutate(seed, &mut rng);
        read_everything(&msg, &query, &cache, &key, &model);
    }
    // The unmutated seeds go through every reader too.
    for seed in &seeds {
        read_everything(seed, &query, &cache, &key, &model);
    }
}
