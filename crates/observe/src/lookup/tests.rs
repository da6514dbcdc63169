use std::sync::{Arc, Mutex};

use hickory_proto::rr::{Name, RecordType};
use hickory_proto::serialize::binary::BinEncodable;

use super::*;
use dnslens_datapath::metrics::Transport;
use dnslens_datapath::record::UpstreamTry;

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

static NEXT_ID: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);

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
    // Every call is a new question, as a resolver's IDs are; `resend` repeats one.
    q.id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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

/// glibc's walk while its second step waits on an upstream that lost the first try: the
/// step is answered 2.1 s later (after dnslens's own retry), past the 2 s window. The walk
/// stays one lookup while a query is in flight; nothing in flight, the window alone closes it.
#[test]
fn a_walk_waiting_on_a_slow_upstream_is_not_cut_by_the_window() {
    let (t, collect, _) = tracker(100);
    let queries = Gauge::default();
    let in_flight = InFlight::new(queries.clone());
    in_flight.set_longest(Duration::from_secs(4));
    let mut t = t.with_in_flight(in_flight);
    let t0 = Instant::now();
    let c = "127.0.0.1:41100";
    let first = "alauda.cn.default.svc.cluster.local";
    t.add(query(t0, 0, c, first, RecordType::A, 3, 0));
    t.add(query(t0, 0, c, first, RecordType::AAAA, 3, 0));
    queries.set(2); // the next step's A and AAAA wait on the upstream
    t.expire(t0 + Duration::from_millis(2050));
    assert!(
        collect.0.lock().unwrap().is_empty(),
        "cut while its next step waits"
    );
    let second = "alauda.cn.svc.cluster.local";
    t.add(query(t0, 2100, c, second, RecordType::A, 3, 0));
    t.add(query(t0, 2100, c, second, RecordType::AAAA, 3, 0));
    t.add(query(t0, 2102, c, "alauda.cn", RecordType::A, 0, 1));
    t.add(query(t0, 2102, c, "alauda.cn", RecordType::AAAA, 0, 0));
    queries.set(0);
    t.expire(t0 + Duration::from_millis(2500));
    let closed = collect.0.lock().unwrap().clone();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].outcome, LookupOutcome::Answered);
    assert_eq!(closed[0].attempts.len(), 6);

    // A walk that stops (the client gave up) with queries of others in flight: closed once
    // the longest wait is over too; with nothing in flight, at its window.
    let other = "127.0.0.1:41101";
    t.add(query(t0, 3000, other, first, RecordType::A, 3, 0));
    queries.set(1);
    t.expire(t0 + Duration::from_millis(5100));
    assert_eq!(t.open_lookups(), 1);
    t.expire(t0 + Duration::from_millis(9100));
    assert_eq!(t.open_lookups(), 0);
    t.add(query(t0, 10_000, other, first, RecordType::A, 3, 0));
    queries.set(0);
    t.expire(t0 + Duration::from_millis(12_100));
    assert_eq!(t.open_lookups(), 0);
    assert_eq!(collect.0.lock().unwrap().len(), 3);
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
fn a_client_hammering_one_name_gets_a_lookup_per_question_and_bounded_lookups() {
    let (mut t, collect, _) = tracker(10);
    let t0 = Instant::now();
    // A new question each time (a load generator, a hot loop): a lookup each.
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
    assert_eq!(collect.0.lock().unwrap().len(), 99);
    collect.0.lock().unwrap().clear();
    // One question resent without end: lookups of bounded size.
    let q = query(t0, 200, "127.0.0.1:2", "gitlab.com", RecordType::A, 2, 0);
    for i in 0..100 {
        t.add(resend(&q, t0, 200 + i));
    }
    let closed = collect.0.lock().unwrap();
    assert_eq!(
        closed.len(),
        3,
        "100 queries: three full lookups closed, one open"
    );
    assert!(closed.iter().all(|l| l.attempts.len() == MAX_ATTEMPTS));
}

/// `q` sent again by its client `at_ms` after `t0`: same socket, ID and question.
fn resend(q: &QueryTrace, t0: Instant, at_ms: u64) -> QueryTrace {
    let mut again = q.clone();
    again.received = t0 + Duration::from_millis(at_ms);
    again.answered = again.received + Duration::from_micros(300);
    again
}

const FIRST: &str = "alauda.cn.default.svc.cluster.local";

/// One glibc `getaddrinfo("alauda.cn")` starting `at_ms` after `t0`: A+AAAA per step from a
/// new socket per step, NXDOMAIN for each suffix, the absolute name answered.
fn glibc_walk(t: &mut Tracker, t0: Instant, at_ms: u64) {
    let steps = [
        FIRST,
        "alauda.cn.svc.cluster.local",
        "alauda.cn.cluster.local",
        "alauda.cn",
    ];
    for (i, name) in steps.iter().enumerate() {
        let (at, client) = (
            at_ms + i as u64,
            format!("127.0.0.1:{}", 40000 + at_ms + i as u64),
        );
        let (rcode, answers) = if i == 3 { (0, 1) } else { (3, 0) };
        t.add(query(t0, at, &client, name, RecordType::A, rcode, answers));
        t.add(query(
            t0,
            at,
            &client,
            name,
            RecordType::AAAA,
            rcode,
            answers,
        ));
    }
}

fn shapes(collect: &Collect) -> Vec<(usize, &'static str)> {
    collect
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|l| (l.attempts.len(), l.outcome.as_str()))
        .collect()
}

#[test]
fn back_to_back_walks_of_one_name_are_one_lookup_each() {
    let (mut t, collect, _) = tracker(10);
    let t0 = Instant::now();
    // glibc, then musl (stopped by an empty NOERROR on the first suffix), then glibc again,
    // each starting right after the last answer: no quiet time between them.
    glibc_walk(&mut t, t0, 0);
    let musl = "127.0.0.1:41000";
    t.add(query(t0, 5, musl, FIRST, RecordType::A, 0, 0));
    t.add(query(t0, 5, musl, FIRST, RecordType::AAAA, 0, 0));
    glibc_walk(&mut t, t0, 6);
    // musl once more: the same question again under new IDs.
    t.add(query(t0, 11, musl, FIRST, RecordType::A, 0, 0));
    t.add(query(t0, 11, musl, FIRST, RecordType::AAAA, 0, 0));
    t.expire(t0 + Duration::from_secs(3));
    assert_eq!(
        shapes(&collect),
        [
            (8, "answered"),
            (2, "nodata"),
            (8, "answered"),
            (2, "nodata")
        ]
    );
}

#[test]
fn one_question_per_call_resolvers_get_a_lookup_per_call() {
    let (mut t, collect, _) = tracker(10);
    let t0 = Instant::now();
    // dnspython: A only, found at the first suffix; a new socket per query, 20 calls.
    for i in 0..20 {
        let client = format!("127.0.0.1:{}", 42000 + i);
        t.add(query(
            t0,
            i,
            &client,
            "web.default.svc.cluster.local",
            RecordType::A,
            0,
            1,
        ));
    }
    // Go: AAAA and A from two sockets per step, the walk ended by the absolute name; twice.
    for round in 0..2 {
        for (i, name) in [
            FIRST,
            "alauda.cn.svc.cluster.local",
            "alauda.cn.cluster.local",
            "alauda.cn",
        ]
        .iter()
        .enumerate()
        {
            let at = 100 + round * 10 + i as u64;
            let (rcode, answers) = if i == 3 { (0, 1) } else { (3, 0) };
            t.add(query(
                t0,
                at,
                &format!("127.0.0.2:{}", 43000 + at * 2),
                name,
                RecordType::AAAA,
                rcode,
                answers,
            ));
            t.add(query(
                t0,
                at,
                &format!("127.0.0.2:{}", 43001 + at * 2),
                name,
                RecordType::A,
                rcode,
                answers,
            ));
        }
    }
    t.expire(t0 + Duration::from_secs(3));
    let got = shapes(&collect);
    assert_eq!(got.len(), 22, "{got:?}");
    assert_eq!(got.iter().filter(|s| **s == (1, "answered")).count(), 20);
    assert_eq!(got.iter().filter(|s| **s == (8, "answered")).count(), 2);
}

#[test]
fn a_retransmission_stays_in_its_lookup_and_is_no_new_question() {
    let (mut t, collect, _) = tracker(10);
    let t0 = Instant::now();
    let c = "127.0.0.1:44000";
    let a = query(t0, 0, c, FIRST, RecordType::A, 3, 0);
    t.add(a.clone());
    // The AAAA was lost before dnslens; glibc resends the pair's missing question a second
    // later and the A's answer was lost on the way back, so the A comes again too.
    t.add(query(t0, 1000, c, FIRST, RecordType::AAAA, 3, 0));
    t.add(resend(&a, t0, 1000));
    for (i, name) in ["alauda.cn.svc.cluster.local", "alauda.cn.cluster.local"]
        .iter()
        .enumerate()
    {
        let c = format!("127.0.0.1:{}", 44001 + i);
        t.add(query(t0, 1001 + i as u64, &c, name, RecordType::A, 3, 0));
        t.add(query(t0, 1001 + i as u64, &c, name, RecordType::AAAA, 3, 0));
    }
    t.add(query(t0, 1003, c, "alauda.cn", RecordType::A, 0, 1));
    t.add(query(t0, 1003, c, "alauda.cn", RecordType::AAAA, 0, 1));
    // Finished: a new question (another type) is the next lookup.
    t.expire(t0 + Duration::from_millis(1050));
    assert!(collect.0.lock().unwrap().is_empty(), "lingering");
    t.add(query(t0, 1004, c, "alauda.cn", RecordType::MX, 0, 1));
    t.expire(t0 + Duration::from_secs(4));
    let lookups = collect.0.lock().unwrap();
    assert_eq!(lookups.len(), 2);
    let l = &lookups[0];
    assert_eq!(l.attempts.len(), 9);
    assert_eq!(l.questions(), 8);
    let resent: Vec<bool> = l.attempts.iter().map(|a| a.retransmission).collect();
    assert_eq!(resent.iter().filter(|r| **r).count(), 1);
    assert!(resent[2]);
    assert_eq!(l.offset(&l.attempts[2]), Duration::from_millis(1000));
    assert_eq!(
        lookups[1].attempts[0].query.qtype,
        u16::from(RecordType::MX)
    );
}

#[test]
fn a_missing_twin_gets_its_linger_and_then_the_next_query_is_a_new_lookup() {
    let (mut t, collect, _) = tracker(10);
    let t0 = Instant::now();
    let c = "127.0.0.1:45000";
    // Final answer without its twin: still open, so the late twin joins.
    t.add(query(
        t0,
        0,
        c,
        "web.default.svc.cluster.local",
        RecordType::A,
        0,
        1,
    ));
    t.add(query(
        t0,
        50,
        c,
        "web.default.svc.cluster.local",
        RecordType::AAAA,
        0,
        0,
    ));
    // Now finished: the next A (a new ID) is the next lookup, closing this one at once.
    t.add(query(
        t0,
        60,
        c,
        "web.default.svc.cluster.local",
        RecordType::A,
        0,
        1,
    ));
    assert_eq!(shapes(&collect), [(2, "answered")]);
    t.expire(t0 + Duration::from_millis(500));
    assert_eq!(shapes(&collect), [(2, "answered"), (1, "answered")]);
}

/// Go asks A and AAAA at once from two sockets; the AAAA's upstream answers 600 ms after
/// the A (a loaded node). The lookup stays open for its twin while a query is in flight, so
/// it is one lookup, not an A lookup and an AAAA lookup; nothing in flight, the linger alone.
#[test]
fn a_twin_waiting_on_a_slow_upstream_joins_its_lookup() {
    let (t, collect, _) = tracker(10);
    let queries = Gauge::default();
    let in_flight = InFlight::new(queries.clone());
    in_flight.set_longest(Duration::from_secs(4));
    let mut t = t.with_in_flight(in_flight);
    let t0 = Instant::now();
    let (go_a, go_aaaa) = ("127.0.0.1:45100", "127.0.0.1:45101");
    let name = "web.default.svc.cluster.local";
    t.add(query(t0, 0, go_a, name, RecordType::A, 0, 1));
    queries.set(1); // the AAAA waits on the upstream
    t.expire(t0 + Duration::from_millis(500));
    assert_eq!(t.open_lookups(), 1, "closed while its twin waits");
    t.add(query(t0, 0, go_aaaa, name, RecordType::AAAA, 0, 0));
    queries.set(0);
    t.expire(t0 + Duration::from_millis(700));
    assert_eq!(shapes(&collect), [(2, "answered")]);

    // Nothing in flight: the missing twin gets the linger only.
    t.add(query(t0, 1000, go_a, name, RecordType::A, 0, 1));
    t.expire(t0 + Duration::from_millis(1300));
    assert_eq!(shapes(&collect), [(2, "answered"), (1, "answered")]);
}

#[test]
fn outcomes_are_listed_in_declaration_order() {
    for (i, outcome) in LookupOutcome::ALL.iter().enumerate() {
        assert_eq!(*outcome as usize, i, "{outcome:?}");
    }
}

/// Issue 22's measured defect: a process of the pod asks `kubernetes.default.svc.cluster.local`
/// itself (dig, a health check), then resolvers walk `kubernetes.default` at once. The asked
/// name reads three ways; the one the walk continues must win, or every walk is cut into a
/// false NXDOMAIN lookup and an answered one.
#[test]
fn a_service_namespace_walk_right_after_the_full_name_was_asked_is_one_lookup() {
    let (mut t, collect, _) = tracker(100);
    let t0 = Instant::now();
    let c = "127.0.0.1:40000";
    let full = "kubernetes.default.svc.cluster.local";
    for round in 0..10u64 {
        let at = round * 10;
        // dig: one A for the full name, answered.
        t.add(query(t0, at, c, full, RecordType::A, 0, 1));
        // glibc: A+AAAA under the first suffix (NXDOMAIN), then under the second (data).
        let first = "kubernetes.default.default.svc.cluster.local";
        t.add(query(t0, at + 1, c, first, RecordType::A, 3, 0));
        t.add(query(t0, at + 1, c, first, RecordType::AAAA, 3, 0));
        t.add(query(t0, at + 2, c, full, RecordType::A, 0, 1));
        t.add(query(t0, at + 2, c, full, RecordType::AAAA, 0, 0));
        // Go: AAAA first from its own socket, both steps.
        t.add(query(t0, at + 3, c, first, RecordType::AAAA, 3, 0));
        t.add(query(t0, at + 3, c, first, RecordType::A, 3, 0));
        t.add(query(t0, at + 4, c, full, RecordType::AAAA, 0, 0));
        t.add(query(t0, at + 4, c, full, RecordType::A, 0, 1));
    }
    t.expire(t0 + Duration::from_secs(10));
    // 20 walks of 4 queries, 10 dig lookups.
    assert_walks_answered(&collect, "kubernetes.default", 20, 30);
}

/// The same in node-local mode (the Kubernetes convention, namespaces read off the names):
/// a pod of `team-a` asks `kubernetes.default.svc.cluster.local` itself, then walks
/// `kubernetes.default` (`kubernetes.default.team-a.svc.cluster.local` first). Without pod
/// identity the full name reads as `kubernetes` under the first suffix of a pod in
/// `default`; the walk must still be one answered lookup each round.
#[test]
fn a_node_local_service_namespace_walk_after_the_full_name_is_one_lookup() {
    let mut registry = Registry::default();
    let metrics = LookupMetrics::register(&mut registry);
    let collect = Collect::default();
    let model = SearchModel::Kubernetes {
        cluster_domain: "cluster.local".into(),
        host_suffixes: Vec::new(),
        ndots: 5,
    };
    let config = LookupConfig {
        window: Duration::from_secs(2),
        max_entries: 100,
        queue: 16,
    };
    let mut t = Tracker::new(model, &config, &metrics, vec![Box::new(collect.clone())]);
    let t0 = Instant::now();
    let c = "10.244.1.7:40000";
    let full = "kubernetes.default.svc.cluster.local";
    let first = "kubernetes.default.team-a.svc.cluster.local";
    for round in 0..10u64 {
        let at = round * 10;
        t.add(query(t0, at, c, full, RecordType::A, 0, 1));
        t.add(query(t0, at + 1, c, first, RecordType::A, 3, 0));
        t.add(query(t0, at + 1, c, first, RecordType::AAAA, 3, 0));
        t.add(query(t0, at + 2, c, full, RecordType::A, 0, 1));
        t.add(query(t0, at + 2, c, full, RecordType::AAAA, 0, 0));
    }
    t.expire(t0 + Duration::from_secs(10));
    assert_walks_answered(&collect, "kubernetes.default", 10, 20);
}

/// Every lookup `collect` holds answered (no false NXDOMAIN lookup), `walks` lookups of
/// `base` of 4 queries each (A and AAAA under two suffixes), `total` lookups in all.
fn assert_walks_answered(collect: &Collect, base: &str, walks: usize, total: usize) {
    let lookups = collect.0.lock().unwrap();
    let outcomes: Vec<(&str, usize, LookupOutcome)> = lookups
        .iter()
        .map(|l| (l.base.as_str(), l.attempts.len(), l.outcome))
        .collect();
    assert!(
        lookups.iter().all(|l| l.outcome == LookupOutcome::Answered),
        "a false NXDOMAIN lookup: {outcomes:?}"
    );
    let sizes: Vec<usize> = lookups
        .iter()
        .filter(|l| l.base == base)
        .map(|l| l.attempts.len())
        .collect();
    assert_eq!(sizes, vec![4; walks], "{outcomes:?}");
    assert_eq!(lookups.len(), total, "{outcomes:?}");
}

#[test]
fn a_tick_closes_what_is_due_in_closing_order_and_leaves_the_rest_open() {
    let (mut t, collect, _) = tracker(10_000);
    let t0 = Instant::now();
    // 3,000 clients, one unanswered lookup each, 1 ms apart: due at their window (2 s).
    for i in 0..3000u32 {
        let client = format!("10.{}.{}.{}:5000", i >> 16, (i >> 8) & 255, i & 255);
        t.add(query(
            t0,
            u64::from(i),
            &client,
            "a.example.org",
            RecordType::A,
            2,
            0,
        ));
    }
    // Half of them are active again later (a next step of their walk): due later.
    for i in (0..3000u32).step_by(2) {
        let client = format!("10.{}.{}.{}:5000", i >> 16, (i >> 8) & 255, i & 255);
        let at = 3000 + u64::from(i);
        t.add(query(
            t0,
            at,
            &client,
            "a.example.org",
            RecordType::AAAA,
            2,
            0,
        ));
    }
    // At 3.5 s: the odd ones of the first 1,500 ms are due (their window ended at 2–3.5 s).
    t.expire(t0 + Duration::from_millis(3500));
    let closed: Vec<_> = collect.0.lock().unwrap().drain(..).collect();
    assert_eq!(closed.len(), 750);
    assert!(closed.iter().all(|l| l.attempts.len() == 1));
    let starts: Vec<_> = closed.iter().map(|l| l.start).collect();
    assert!(
        starts.windows(2).all(|w| w[0] < w[1]),
        "closed in closing order"
    );
    assert_eq!(t.open_lookups(), 2250);
    // Every one is closed by 8 s, each once, the active ones with both queries.
    t.expire(t0 + Duration::from_millis(8000));
    let closed: Vec<_> = collect.0.lock().unwrap().drain(..).collect();
    assert_eq!(closed.len(), 2250);
    assert_eq!(
        closed.iter().filter(|l| l.attempts.len() == 2).count(),
        1500
    );
    assert_eq!(t.open_lookups(), 0);
}

#[test]
fn the_closing_index_stays_bounded_when_lookups_end_before_they_are_due() {
    let (mut t, collect, _) = tracker(10_000);
    let t0 = Instant::now();
    // One client asking a new question every millisecond, each one a lookup of its own
    // that the next closes at once: each leaves an index entry behind.
    for i in 0..20_000u64 {
        t.add(query(
            t0,
            i,
            "10.0.0.1:5000",
            "x.example.org",
            RecordType::A,
            0,
            1,
        ));
        if i % 100 == 99 {
            t.expire(t0 + Duration::from_millis(i));
            assert!(t.deadlines.len() <= 2 * t.open_lookups() + 1024 + 100);
        }
    }
    t.expire(t0 + Duration::from_secs(60));
    assert_eq!(collect.0.lock().unwrap().len(), 20_000);
    assert_eq!(t.open_lookups(), 0);
    assert_eq!(t.deadlines.len(), 0);
}
