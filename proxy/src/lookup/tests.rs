use std::sync::{Arc, Mutex};

use hickory_proto::rr::{Name, RecordType};
use hickory_proto::serialize::binary::BinEncodable;

use super::*;
use crate::metrics::Transport;
use crate::record::UpstreamTry;

fn model() -> SearchModel {
    SearchModel::Fixed {
        suffixes: vec![
            "default.svc.cluster.local".into(),
            "svc.cluster.local".into(),
            "cluster.local".into(),
        ],
        ndots: 5,
    }
}

/// Collects finished lookups for inspection.
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<LookupRecord>>>);

impl LookupObserver for Collect {
    fn observe(&mut self, lookup: &LookupRecord) {
        self.0.lock().unwrap().push(lookup.clone());
    }
}

fn tracker(max_entries: usize) -> (Tracker, Collect, LookupMetrics) {
    let mut registry = Registry::default();
    let metrics = LookupMetrics::register(&mut registry);
    let collect = Collect::default();
    let config = LookupConfig {
        window: Duration::from_secs(2),
        max_entries,
        queue: 16,
    };
    (
        Tracker::new(model(), &config, &metrics, vec![Box::new(collect.clone())]),
        collect,
        metrics,
    )
}

fn question(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut q = Name::from_ascii(name).unwrap().to_bytes().unwrap();
    q.extend_from_slice(&u16::from(qtype).to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

/// A finished query `at_ms` after `t0`, from `client`, answered with `rcode` and `answers`.
fn query(
    t0: Instant,
    at_ms: u64,
    client: &str,
    name: &str,
    qtype: RecordType,
    rcode: u8,
    answers: u16,
) -> QueryTrace {
    let received = t0 + Duration::from_millis(at_ms);
    let mut q = QueryTrace::new(
        client.parse().unwrap(),
        Transport::Udp,
        &question(name, qtype),
        u16::from(qtype),
        received,
    );
    q.answered = received + Duration::from_micros(300);
    q.rcode = rcode;
    q.answers = answers;
    q
}

#[test]
fn a_glibc_search_walk_is_one_lookup_answered_by_the_absolute_name() {
    let (mut t, collect, _) = tracker(100);
    let t0 = Instant::now();
    let c = "127.0.0.1:40000";
    // glibc: A+AAAA per suffix (a new port per name), NXDOMAIN, NODATA, NXDOMAIN, then absolute.
    let walk = [
        (
            "alauda.cn.default.svc.cluster.local",
            3,
            0,
            "127.0.0.1:40001",
        ),
        ("alauda.cn.svc.cluster.local", 3, 0, "127.0.0.1:40002"),
        ("alauda.cn.cluster.local", 3, 0, "127.0.0.1:40003"),
        ("alauda.cn", 0, 1, c),
    ];
    for (i, (name, rcode, answers, client)) in walk.iter().enumerate() {
        let at = i as u64 * 2;
        t.add(query(t0, at, client, name, RecordType::A, *rcode, *answers));
        t.add(query(t0, at, client, name, RecordType::AAAA, *rcode, 0));
    }
    assert_eq!(t.open_lookups(), 1);
    t.expire(t0 + Duration::from_millis(50));
    assert!(
        collect.0.lock().unwrap().is_empty(),
        "still lingering for late twins"
    );
    t.expire(t0 + Duration::from_millis(300));
    let lookups = collect.0.lock().unwrap();
    assert_eq!(lookups.len(), 1);
    let l = &lookups[0];
    assert_eq!(l.base, "alauda.cn");
    assert_eq!(l.attempts.len(), 8);
    assert_eq!(l.outcome, LookupOutcome::Answered);
    assert_eq!(l.answered_by().unwrap().suffix, None);
    let suffixes: Vec<Option<usize>> = l
        .attempts
        .iter()
        .map(|a| a.suffix.as_ref().map(|s| s.0))
        .collect();
    assert_eq!(
        suffixes,
        [
            Some(0),
            Some(0),
            Some(1),
            Some(1),
            Some(2),
            Some(2),
            None,
            None
        ]
    );
}

#[test]
fn a_musl_walk_stopped_by_empty_noerror_is_nodata() {
    let (mut t, collect, _) = tracker(100);
    let t0 = Instant::now();
    let c = "127.0.0.1:41000";
    t.add(query(
        t0,
        0,
        c,
        "alauda.cn.default.svc.cluster.local",
        RecordType::A,
        0,
        0,
    ));
    t.add(query(
        t0,
        0,
        c,
        "alauda.cn.default.svc.cluster.local",
        RecordType::AAAA,
        0,
        0,
    ));
    // Nothing else comes: the lookup ends with the window.
    t.expire(t0 + Duration::from_millis(1500));
    assert!(collect.0.lock().unwrap().is_empty());
    t.expire(t0 + Duration::from_millis(2100));
    let l = collect.0.lock().unwrap()[0].clone();
    assert_eq!(l.outcome, LookupOutcome::NoData);
    assert_eq!(l.base, "alauda.cn");
    assert_eq!(l.attempts.len(), 2);
}

#[test]
fn first_suffix_answers_and_absolute_first_orders_join_too() {
    let (mut t, collect, _) = tracker(100);
    let t0 = Instant::now();
    // "web" answered by its first suffix.
    t.add(query(
        t0,
        0,
        "127.0.0.1:1",
        "web.default.svc.cluster.local",
        RecordType::A,
        0,
        1,
    ));
    // A name with enough dots: absolute first (NXDOMAIN), then the first suffix.
    t.add(query(
        t0,
        0,
        "127.0.0.2:1",
        "a.b.c.d.e.f",
        RecordType::A,
        3,
        0,
    ));
    t.add(query(
        t0,
        1,
        "127.0.0.2:1",
        "a.b.c.d.e.f.default.svc.cluster.local",
        RecordType::A,
        3,
        0,
    ));
    t.expire(t0 + Duration::from_secs(3));
    let mut lookups = collect.0.lock().unwrap().clone();
    lookups.sort_by(|a, b| a.base.cmp(&b.base));
    assert_eq!(lookups.len(), 2);
    assert_eq!(lookups[0].base, "a.b.c.d.e.f");
    assert_eq!(lookups[0].attempts.len(), 2);
    assert_eq!(lookups[0].outcome, LookupOutcome::NxDomain);
    assert_eq!(lookups[1].base, "web");
    assert_eq!(
        lookups[1]
            .answered_by()
            .as_ref()
            .unwrap()
            .suffix
            .as_ref()
            .unwrap()
            .0,
        0
    );
}

#[test]
fn servfail_after_timeouts_is_a_timeout_outcome() {
    let (mut t, collect, _) = tracker(100);
    let t0 = Instant::now();
    let mut q = query(t0, 0, "127.0.0.1:1", "github.com", RecordType::A, 2, 0);
    q.tries.push(UpstreamTry {
        upstream: "127.0.0.1:53".parse().unwrap(),
        transport: Transport::Udp,
        outcome: Outcome::Timeout,
        start: q.received,
        end: q.answered,
    });
    t.add(q);
    t.add(query(
        t0,
        0,
        "127.0.0.3:1",
        "example.org",
        RecordType::A,
        2,
        0,
    ));
    t.expire(t0 + Duration::from_secs(3));
    let mut outcomes: Vec<&str> = collect
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|l| l.outcome.as_str())
        .collect();
    outcomes.sort();
    assert_eq!(outcomes, ["servfail", "timeout"]);
}

#[test]
fn a_flood_of_unique_names_stays_bounded_and_counts_evictions() {
    let (mut t, collect, metrics) = tracker(50);
    let t0 = Instant::now();
    for i in 0..1000 {
        t.add(query(
            t0,
            0,
            "127.0.0.1:1",
            &format!("n{i}.example.org"),
            RecordType::A,
            3,
            0,
        ));
        assert!(t.open_lookups() <= 50);
        assert!(t.order.len() <= 100, "eviction order compacted");
    }
    assert_eq!(metrics.evicted.get(), 950);
    let evicted = collect.0.lock().unwrap();
    assert_eq!(evicted.len(), 950, "evicted lookups are still reported");
    assert!(evicted.iter().all(|l| l.evicted));
    assert_eq!(evicted[0].base, "n0.example.org", "oldest first");
}

#[test]
fn undecodable_questions_are_ignored() {
    let (mut t, collect, _) = tracker(10);
    let mut q = query(
        Instant::now(),
        0,
        "127.0.0.1:1",
        "x.org",
        RecordType::A,
        0,
        1,
    );
    q.question = vec![63, b'x'];
    t.add(q);
    assert_eq!(t.open_lookups(), 0);
    assert!(collect.0.lock().unwrap().is_empty());
}

#[test]
fn a_client_hammering_one_name_gets_lookups_of_bounded_size() {
    let (mut t, collect, _) = tracker(10);
    let t0 = Instant::now();
    for i in 0..100 {
        t.add(query(
            t0,
            i,
            "127.0.0.1:1",
            "github.com",
            RecordType::A,
            0,
            1,
        ));
    }
    assert_eq!(t.open_lookups(), 1);
    let closed = collect.0.lock().unwrap();
    assert_eq!(
        closed.len(),
        3,
        "100 queries: three full lookups closed, one open"
    );
    assert!(closed.iter().all(|l| l.attempts.len() == MAX_ATTEMPTS));
}
