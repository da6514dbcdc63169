use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use dnslens_datapath::metrics::Transport;
use dnslens_datapath::record::{Outcome, QueryTrace, UpstreamTry};

struct Q {
    at_ms: u64,
    port: u16,
    name: &'static str,
    suffix: Option<usize>,
    qtype: u16,
    rcode: u8,
    answers: u16,
    soa: bool,
}

#[allow(clippy::too_many_arguments)] // a table row, read positionally
fn q(
    at_ms: u64,
    port: u16,
    name: &'static str,
    suffix: Option<usize>,
    qtype: u16,
    rcode: u8,
    answers: u16,
    soa: bool,
) -> Q {
    Q {
        at_ms,
        port,
        name,
        suffix,
        qtype,
        rcode,
        answers,
        soa,
    }
}

/// What the tracker does with a finished lookup: the detectors annotate it, then observe it.
fn see(d: &mut Detectors, mut record: LookupRecord) -> LookupRecord {
    d.annotate(&mut record);
    d.observe(&record);
    record
}

fn lookup(queries: &[Q]) -> LookupRecord {
    let t0 = Instant::now();
    let attempts: Vec<Attempt> = queries
        .iter()
        .map(|x| {
            let client: SocketAddr = format!("127.0.0.1:{}", x.port).parse().unwrap();
            let received = t0 + Duration::from_millis(x.at_ms);
            let mut trace = QueryTrace::new(client, Transport::Udp, &[0], x.qtype, received);
            trace.answered = received + Duration::from_millis(1);
            trace.rcode = x.rcode;
            trace.answers = x.answers;
            trace.authority_soa = x.soa;
            if x.rcode == 2 {
                // dnslens's SERVFAIL: its upstream did not answer in time.
                trace.tries.push(UpstreamTry {
                    upstream: "127.0.0.1:53".parse().unwrap(),
                    transport: Transport::Udp,
                    outcome: Outcome::Timeout,
                    start: received,
                    end: trace.answered,
                });
            }
            // One ID per socket and question: a repeat from the same socket is a
            // retransmission, from another socket a new question.
            trace.id = x.port ^ x.qtype.rotate_left(8);
            Attempt {
                qname: x.name.to_string(),
                suffix: x.suffix.map(|i| (i, "suffix".to_string())),
                retransmission: false,
                query: trace,
            }
        })
        .collect();
    LookupRecord {
        client: "127.0.0.1".parse().unwrap(),
        base: "base".into(),
        attempts,
        outcome: LookupOutcome::Answered,
        start: t0,
        end: t0 + Duration::from_secs(1),
        evicted: false,
        trace_id: 7,
        anomalies: Vec::new(),
        waited: None,
        client_identity: None,
    }
}

#[test]
fn empty_noerror_on_a_search_expansion_is_the_musl_trap() {
    let l = lookup(&[
        q(
            0,
            1,
            "alauda.cn.default.svc.cluster.local",
            Some(0),
            QTYPE_A,
            0,
            0,
            true,
        ),
        q(
            0,
            1,
            "alauda.cn.default.svc.cluster.local",
            Some(0),
            QTYPE_AAAA,
            0,
            0,
            true,
        ),
    ]);
    assert_eq!(kinds(&l), [Kind::EmptyNoerrorSearch]);
    let no_soa = lookup(&[q(
        0,
        1,
        "alauda.cn.default.svc.cluster.local",
        Some(0),
        QTYPE_A,
        0,
        0,
        false,
    )]);
    assert_eq!(
        kinds(&no_soa),
        [Kind::EmptyNoerrorSearch, Kind::EmptyNoerrorNoSoa]
    );
    let absolute_no_soa = lookup(&[q(0, 1, "example.org", None, QTYPE_A, 0, 0, false)]);
    assert_eq!(kinds(&absolute_no_soa), [Kind::EmptyNoerrorNoSoa]);
}

#[test]
fn aaaa_nodata_beside_an_a_answer_is_ordinary() {
    let l = lookup(&[
        q(0, 1, "github.com", None, QTYPE_A, 0, 1, false),
        q(0, 1, "github.com", None, QTYPE_AAAA, 0, 0, true),
    ]);
    assert!(kinds(&l).is_empty());
    // NXDOMAIN walks are noise, not anomalies.
    let walk = lookup(&[
        q(
            0,
            1,
            "x.default.svc.cluster.local",
            Some(0),
            QTYPE_A,
            3,
            0,
            true,
        ),
        q(1, 2, "x", None, QTYPE_A, 0, 1, false),
    ]);
    assert!(kinds(&walk).is_empty());
}

#[test]
fn a_lost_aaaa_retried_after_five_seconds_is_a_suspected_race() {
    let l = lookup(&[
        q(0, 4000, "github.com", None, QTYPE_A, 0, 1, false),
        // Its answer withheld upstream: dnslens could only say SERVFAIL.
        q(0, 4000, "github.com", None, QTYPE_AAAA, 2, 0, false),
        q(5000, 4000, "github.com", None, QTYPE_AAAA, 0, 0, true),
    ]);
    assert_eq!(parallel_pairs(&l), [(0, 1)]);
    // Retries and races are the memory's: the pure per-lookup detectors see neither.
    assert_eq!(kinds(&l), [Kind::UpstreamTimeout]);
    let mut registry = Registry::with_prefix("dnslens");
    let mut d = Detectors::register(&mut registry, journal::Journal::new(100));
    let seen = see(&mut d, l);
    assert_eq!(
        seen.anomalies,
        [Kind::ParallelRace, Kind::ClientRetry, Kind::UpstreamTimeout]
    );
    assert_eq!(d.race_suspected.get(), 1);
    let aaaa = QtypeLabel::from_qtype(QTYPE_AAAA);
    assert_eq!(d.retries.get(aaaa.index(), || unreachable!()).get(), 1);
}

#[test]
fn pairs_need_one_socket_and_one_moment() {
    let other_ports = lookup(&[
        q(0, 1, "a", None, QTYPE_A, 0, 1, false),
        q(0, 2, "a", None, QTYPE_AAAA, 0, 1, false),
    ]);
    assert!(parallel_pairs(&other_ports).is_empty());
    let apart = lookup(&[
        q(0, 1, "a", None, QTYPE_A, 0, 1, false),
        q(200, 1, "a", None, QTYPE_AAAA, 0, 1, false),
    ]);
    assert!(parallel_pairs(&apart).is_empty());
    // Both retried: a plain retry (both lost, e.g. a dead upstream), not a race.
    let both = lookup(&[
        q(0, 1, "a", None, QTYPE_A, 2, 0, false),
        q(0, 1, "a", None, QTYPE_AAAA, 2, 0, false),
        q(5000, 1, "a", None, QTYPE_A, 0, 1, false),
        q(5000, 1, "a", None, QTYPE_AAAA, 0, 1, false),
    ]);
    let mut registry = Registry::with_prefix("dnslens");
    let mut d = Detectors::register(&mut registry, journal::Journal::new(100));
    let seen = see(&mut d, both);
    assert_eq!(seen.anomalies, [Kind::ClientRetry, Kind::UpstreamTimeout]);
    assert_eq!(d.race_suspected.get(), 0);
}

#[test]
fn the_same_name_from_another_socket_is_a_new_ask_not_a_retry() {
    let l = lookup(&[
        q(0, 1, "web", None, QTYPE_A, 0, 1, false),
        q(3, 2, "web", None, QTYPE_A, 0, 1, false),
    ]);
    let mut registry = Registry::with_prefix("dnslens");
    let mut d = Detectors::register(&mut registry, journal::Journal::new(100));
    assert!(see(&mut d, l).anomalies.is_empty());
}

#[test]
fn upstream_timeouts_and_errors_are_kinds() {
    let mut l = lookup(&[q(0, 1, "a", None, QTYPE_A, 0, 1, false)]);
    let t = l.attempts[0].query.received;
    let upstream: SocketAddr = "127.0.0.1:53".parse().unwrap();
    for outcome in [Outcome::Timeout, Outcome::ServFail, Outcome::Answer] {
        l.attempts[0].query.tries.push(UpstreamTry {
            upstream,
            transport: Transport::Udp,
            outcome,
            start: t,
            end: t,
        });
    }
    assert_eq!(kinds(&l), [Kind::UpstreamTimeout, Kind::UpstreamError]);
}

#[test]
fn detectors_count_into_their_families() {
    let mut registry = Registry::with_prefix("dnslens");
    let mut d = Detectors::register(&mut registry, journal::Journal::new(100));
    see(
        &mut d,
        lookup(&[
            q(
                0,
                1,
                "alauda.cn.default.svc.cluster.local",
                Some(0),
                QTYPE_A,
                0,
                0,
                false,
            ),
            q(
                0,
                1,
                "alauda.cn.default.svc.cluster.local",
                Some(0),
                QTYPE_AAAA,
                2, // withheld upstream, then asked again
                0,
                false,
            ),
            q(
                1000,
                1,
                "alauda.cn.default.svc.cluster.local",
                Some(0),
                QTYPE_AAAA,
                0,
                0,
                false,
            ),
        ]),
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "dnslens_empty_noerror_total{qtype=\"A\",search_expansion=\"true\",soa=\"false\"} 1",
        "dnslens_empty_noerror_total{qtype=\"AAAA\",search_expansion=\"true\",soa=\"false\"} 1",
        "dnslens_search_expansion_queries_total{outcome=\"nodata\"} 2",
        "dnslens_search_expansion_queries_total{outcome=\"servfail\"} 1",
        "dnslens_lookups_total{outcome=\"answered\"} 1",
        "dnslens_client_retries_total{qtype=\"AAAA\"} 1",
        "dnslens_parallel_queries_total 1",
        "dnslens_parallel_query_race_suspected_total 1",
        "dnslens_lookup_attempts_count 1",
        "dnslens_client_retry_gap_seconds_count 1",
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
}

#[test]
fn a_twin_arriving_alone_a_timeout_later_is_a_suspected_race() {
    let mut registry = Registry::with_prefix("dnslens");
    let mut d = Detectors::register(&mut registry, journal::Journal::new(100));
    let t0 = Instant::now();
    let mut first = lookup(&[q(0, 7000, "github.com", None, QTYPE_A, 0, 1, false)]);
    first.attempts[0].query.received = t0;
    let first = see(&mut d, first);
    assert_eq!(first.anomalies, Vec::<Kind>::new());
    let mut late = lookup(&[q(0, 7000, "github.com", None, QTYPE_AAAA, 0, 0, true)]);
    late.attempts[0].query.received = t0 + Duration::from_secs(5);
    let late = see(&mut d, late);
    assert_eq!(d.race_suspected.get(), 1);
    // Only memory across lookups sees it, and it is written on the record, so the lookup's
    // trace carries it as dnslens.anomaly (the exporter reads the record after the detectors).
    assert!(kinds(&late).is_empty());
    assert_eq!(late.anomalies, vec![Kind::ParallelRace]);
    // From another socket, or too soon, it is not.
    let mut other = lookup(&[q(0, 7001, "example.org", None, QTYPE_A, 0, 1, false)]);
    other.attempts[0].query.received = t0;
    see(&mut d, other.clone());
    let mut soon = lookup(&[q(0, 7001, "example.org", None, QTYPE_AAAA, 0, 1, false)]);
    soon.attempts[0].query.received = t0 + Duration::from_millis(100);
    see(&mut d, soon.clone());
    assert_eq!(d.race_suspected.get(), 1);
}

#[test]
fn a_new_pair_from_a_reused_port_is_no_late_twin() {
    // `dig` asks the A alone; seconds later a resolver's walk gets the same port and asks
    // the same name's A and AAAA together, with new message IDs: a new pair, not the A's
    // late twin (once seen in the full suite).
    let name = "kubernetes.default.svc.cluster.local";
    let mut d = detectors();
    let t0 = Instant::now();
    let mut dig = lookup(&[q(0, 40000, name, None, QTYPE_A, 0, 1, false)]);
    dig.attempts[0].query.received = t0;
    dig.attempts[0].query.id = 0x1111;
    assert_eq!(see(&mut d, dig).anomalies, Vec::<Kind>::new());
    let mut walk = lookup(&[
        q(0, 40000, name, Some(1), QTYPE_A, 0, 1, false),
        q(0, 40000, name, Some(1), QTYPE_AAAA, 0, 0, true),
    ]);
    for (a, id) in walk.attempts.iter_mut().zip([0x2222, 0x2223]) {
        a.query.received = t0 + Duration::from_millis(2600);
        a.query.answered = a.query.received + Duration::from_millis(1);
        a.query.id = id;
    }
    assert_eq!(see(&mut d, walk).anomalies, Vec::<Kind>::new());
    // dnspython: the A from a socket of its own, then the AAAA from one that got the port
    // `dig` used.
    let mut dig = lookup(&[q(0, 40002, name, None, QTYPE_A, 0, 1, false)]);
    dig.attempts[0].query.received = t0;
    see(&mut d, dig);
    let mut python = lookup(&[
        q(0, 40003, name, None, QTYPE_A, 0, 1, false),
        q(0, 40002, name, None, QTYPE_AAAA, 0, 0, true),
    ]);
    for (i, a) in python.attempts.iter_mut().enumerate() {
        a.query.received = t0 + Duration::from_millis(3000 + 40 * i as u64);
        a.query.answered = a.query.received + Duration::from_millis(1);
    }
    assert_eq!(see(&mut d, python).anomalies, Vec::<Kind>::new());
    assert_eq!(d.race_suspected.get(), 0);
    // The pair resent by the client keeps the A's ID: the AAAA is the late twin.
    let mut first = lookup(&[q(0, 40001, name, None, QTYPE_A, 0, 1, false)]);
    first.attempts[0].query.received = t0;
    first.attempts[0].query.id = 0x3333;
    see(&mut d, first);
    let mut resent = lookup(&[
        q(0, 40001, name, None, QTYPE_A, 0, 1, false),
        q(0, 40001, name, None, QTYPE_AAAA, 0, 0, true),
    ]);
    for (a, id) in resent.attempts.iter_mut().zip([0x3333, 0x3334]) {
        a.query.received = t0 + Duration::from_secs(5);
        a.query.answered = a.query.received + Duration::from_millis(1);
        a.query.id = id;
    }
    assert!(see(&mut d, resent).anomalies.contains(&Kind::ParallelRace));
    assert_eq!(d.race_suspected.get(), 1);
}

#[test]
fn the_lonely_query_memory_is_bounded() {
    let mut registry = Registry::with_prefix("dnslens");
    let mut d = Detectors::register(&mut registry, journal::Journal::new(100));
    let cap = memory::RECENT_CAP;
    let names: Vec<String> = (0..cap + 100)
        .map(|i| format!("n{i}.example.org"))
        .collect();
    for name in &names {
        let mut l = lookup(&[q(0, 1, "x", None, QTYPE_A, 0, 1, false)]);
        l.attempts[0].qname = name.clone();
        see(&mut d, l.clone());
    }
    let (asked, lonely) = d.memory.sizes();
    assert_eq!(lonely, (cap, cap));
    assert!(lonely.1 <= 2 * cap);
    assert_eq!(asked.0, cap);
    // Both memories (questions asked, lonely A queries) overflowed by 100.
    assert_eq!(d.memory.evicted(), 200);
}

#[test]
fn the_journal_folds_a_flood_of_one_anomaly_and_keeps_its_bound() {
    let j = journal::Journal::new(3);
    let clock = dnslens_datapath::record::Clock::now();
    let musl = lookup(&[q(
        0,
        1,
        "alauda.cn.default.svc.cluster.local",
        Some(0),
        QTYPE_A,
        0,
        0,
        true,
    )]);
    let found = kinds(&musl);
    for _ in 0..50 {
        j.record(&musl, &found, &clock);
    }
    let entries = j.query(
        &journal::Window::last(Duration::from_secs(600)),
        &Default::default(),
    );
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].repeats, 49);
    // Another outcome is another entry; the ring keeps the newest 3.
    let mut other = musl.clone();
    other.outcome = LookupOutcome::NoData;
    j.record(&other, &found, &clock);
    for i in 0..5 {
        let mut l = musl.clone();
        l.base = format!("n{i}");
        j.record(&l, &found, &clock);
    }
    let entries = j.query(
        &journal::Window::last(Duration::from_secs(600)),
        &Default::default(),
    );
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0].base, "n4", "newest first");
    assert!(j
        .query(
            &journal::Window::last(Duration::from_secs(600)),
            &journal::EntryFilter {
                kind: Some(Kind::ParallelRace),
                ..Default::default()
            },
        )
        .is_empty());
    assert!(entries[0].kinds.iter().any(|k| k == "empty_noerror_search"));
}

#[test]
fn a_walk_answered_by_the_absolute_name_is_a_tallied_hint_not_a_journal_entry() {
    let walk = || {
        lookup(&[
            q(
                0,
                1,
                "github.com.ns.svc.cluster.local",
                Some(0),
                QTYPE_A,
                3,
                0,
                true,
            ),
            q(
                1,
                2,
                "github.com.svc.cluster.local",
                Some(1),
                QTYPE_A,
                3,
                0,
                true,
            ),
            q(
                2,
                3,
                "github.com.cluster.local",
                Some(2),
                QTYPE_A,
                3,
                0,
                true,
            ),
            q(3, 4, "github.com", None, QTYPE_A, 0, 1, false),
        ])
    };
    assert!(ndots_hint(&walk()));
    assert!(kinds(&walk()).is_empty(), "a note, not an anomaly");
    // Answered by a suffix, or the absolute name asked first: no hint.
    assert!(!ndots_hint(&lookup(&[q(
        0,
        1,
        "web.ns.svc.cluster.local",
        Some(0),
        QTYPE_A,
        0,
        1,
        false
    )])));
    assert!(!ndots_hint(&lookup(&[q(
        0,
        1,
        "github.com",
        None,
        QTYPE_A,
        0,
        1,
        false
    )])));

    let mut registry = Registry::with_prefix("dnslens");
    let journal = journal::Journal::new(100);
    let mut d = Detectors::register(&mut registry, journal.clone());
    for k in 0..3u16 {
        // Three calls: new message IDs each time.
        let mut l = walk();
        for a in &mut l.attempts {
            a.query.id = a.query.id.wrapping_add(100 * k);
        }
        see(&mut d, l);
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("dnslens_ndots_hints_total 3"), "{text}");
    assert!(
        !text.contains("kind=\"ndots_hint\""),
        "not an anomaly series"
    );
    let window = journal::Window::last(Duration::from_secs(600));
    assert!(
        journal
            .query(&window, &Default::default())
            .iter()
            .all(|e| e.kinds.iter().all(|k| k.parse::<Kind>().is_ok())),
        "the journal holds anomalies only"
    );
    assert_eq!(
        journal.hints(10),
        [journal::Hint {
            base: "base".into(),
            lookups: 3,
            queries: 12,
        }]
    );
}

#[test]
fn the_hint_tally_is_bounded() {
    let journal = journal::Journal::new(10);
    journal.note_hint("popular", 8);
    journal.note_hint("popular", 8);
    for i in 0..5000 {
        journal.note_hint(&format!("n{i}"), 8);
    }
    let hints = journal.hints(usize::MAX);
    assert!(hints.len() <= 4096, "{}", hints.len());
    assert_eq!(
        hints[0].base, "popular",
        "names seen more than once outlive a flood"
    );
}

fn detectors() -> Detectors {
    let mut registry = Registry::with_prefix("dnslens");
    Detectors::register(&mut registry, journal::Journal::new(100))
}

#[test]
fn a_lost_first_aaaa_resent_alone_within_the_lookup_is_a_race_with_its_wait() {
    // glibc: the first AAAA never reached dnslens; a second later glibc resends it alone
    // (single-request after its timeout), then walks on from new sockets.
    let sfx = "alauda.cn.default.svc.cluster.local";
    let l = lookup(&[
        q(0, 1, sfx, Some(0), QTYPE_A, 3, 0, true),
        q(1000, 1, sfx, Some(0), QTYPE_AAAA, 3, 0, true),
        q(
            1001,
            2,
            "alauda.cn.svc.cluster.local",
            Some(1),
            QTYPE_A,
            3,
            0,
            true,
        ),
        q(
            1001,
            2,
            "alauda.cn.svc.cluster.local",
            Some(1),
            QTYPE_AAAA,
            3,
            0,
            true,
        ),
        q(1002, 3, "alauda.cn", None, QTYPE_A, 0, 1, false),
        q(1002, 3, "alauda.cn", None, QTYPE_AAAA, 0, 1, false),
    ]);
    let mut d = detectors();
    let seen = see(&mut d, l);
    assert_eq!(seen.anomalies, [Kind::ParallelRace]);
    assert_eq!(d.race_suspected.get(), 1);
    assert_eq!(seen.waited, Some(Duration::from_millis(999)));
    // musl with timeout:1 resends the missing AAAA half a second later: the same verdict.
    let l = lookup(&[
        q(0, 9, sfx, Some(0), QTYPE_A, 3, 0, true),
        q(500, 9, sfx, Some(0), QTYPE_AAAA, 3, 0, true),
    ]);
    assert_eq!(see(&mut d, l).anomalies, [Kind::ParallelRace]);
    assert_eq!(d.race_suspected.get(), 2);
}

#[test]
fn one_type_after_the_other_and_two_socket_pairs_are_no_race() {
    let mut d = detectors();
    // glibc single-request, or dnspython asked for both types: the AAAA right after the A
    // was answered, from the same socket.
    let sequential = lookup(&[
        q(0, 1, "web", None, QTYPE_A, 0, 1, false),
        q(30, 1, "web", None, QTYPE_AAAA, 0, 0, true),
    ]);
    // Go: A and AAAA together from two sockets, every step.
    let go = lookup(&[
        q(0, 2, "api", Some(0), QTYPE_AAAA, 3, 0, true),
        q(0, 3, "api", Some(0), QTYPE_A, 3, 0, true),
        q(2, 4, "api", None, QTYPE_AAAA, 0, 1, false),
        q(2, 5, "api", None, QTYPE_A, 0, 1, false),
    ]);
    // A second later Go's next lookup asks the AAAA from a new socket that got the port the
    // A used (ports are reused): not that A's late twin.
    let reused_port = lookup(&[q(1000, 3, "api", Some(0), QTYPE_AAAA, 3, 0, true)]);
    // dnspython on a loaded machine: the A answered, its AAAA from a new socket 40 ms later
    // (past the pair window); a later lookup's AAAA from a socket that got the A's port is
    // not that A's late twin either.
    let python = lookup(&[
        q(0, 6, "db", None, QTYPE_A, 0, 1, false),
        q(40, 7, "db", None, QTYPE_AAAA, 0, 0, true),
    ]);
    let python_reused_port = lookup(&[q(2000, 6, "db", None, QTYPE_AAAA, 0, 0, true)]);
    for l in [sequential, go, reused_port, python, python_reused_port] {
        assert_eq!(see(&mut d, l).anomalies, Vec::<Kind>::new());
    }
    assert_eq!(d.race_suspected.get(), 0);
    assert_eq!(d.parallel.get(), 0);
}

#[test]
fn an_answer_lost_on_its_way_back_is_a_retry_not_a_race() {
    // dnslens answered the A; the client never got it and asked again a second later.
    let l = lookup(&[
        q(0, 5, "web", Some(0), QTYPE_A, 0, 1, false),
        q(0, 5, "web", Some(0), QTYPE_AAAA, 0, 1, false),
        q(1000, 5, "web", Some(0), QTYPE_A, 0, 1, false),
    ]);
    let mut d = detectors();
    assert_eq!(see(&mut d, l).anomalies, [Kind::ClientRetry]);
    assert_eq!(d.race_suspected.get(), 0);
}

#[test]
fn a_lookup_of_nothing_but_re_asks_is_the_tail_of_the_last_one() {
    let mut d = detectors();
    let first = lookup(&[
        q(0, 5, "web", Some(0), QTYPE_A, 0, 1, false),
        q(0, 5, "web", Some(0), QTYPE_AAAA, 0, 1, false),
    ]);
    see(&mut d, first);
    // The A's answer was lost: the client asks again after the lookup had ended.
    let mut tail = lookup(&[q(0, 5, "web", Some(0), QTYPE_A, 0, 1, false)]);
    tail.attempts[0].query.received += Duration::from_secs(1);
    let tail = see(&mut d, tail);
    assert!(tail.attempts[0].retransmission && tail.is_tail());
    assert_eq!(tail.anomalies, [Kind::ClientRetry]);
    assert_eq!(
        d.lookups[LookupOutcome::Answered as usize].get(),
        1,
        "one lookup"
    );
    let retries = d
        .retries
        .get(QtypeLabel::from_qtype(QTYPE_A).index(), || unreachable!());
    assert_eq!(retries.get(), 1);
}

#[test]
fn a_tail_does_not_count_again_what_its_lookup_was_counted_for() {
    let mut d = detectors();
    // The upstream timed out: SERVFAIL; the client's re-ask came after the lookup ended.
    see(
        &mut d,
        lookup(&[q(0, 6, "web", Some(0), QTYPE_A, 2, 0, false)]),
    );
    let mut tail = lookup(&[q(0, 6, "web", Some(0), QTYPE_A, 2, 0, false)]);
    tail.attempts[0].query.received += Duration::from_secs(1);
    let tail = see(&mut d, tail);
    assert!(tail.is_tail());
    assert_eq!(
        tail.anomalies,
        [Kind::ClientRetry],
        "upstream_timeout was counted"
    );
    // A second re-ask: nothing new to count.
    let mut again = lookup(&[q(0, 6, "web", Some(0), QTYPE_A, 2, 0, false)]);
    again.attempts[0].query.received += Duration::from_secs(2);
    assert_eq!(see(&mut d, again).anomalies, Vec::<Kind>::new());
    let timeouts = &d.anomalies.unnamed[Kind::UpstreamTimeout as usize];
    assert_eq!(timeouts.get().0, 1);
}

#[test]
fn the_same_question_over_tcp_after_udp_is_the_truncation_fallback_not_a_retry() {
    let mut l = lookup(&[
        q(0, 7, "big", None, 16, 0, 1, false),
        q(3, 7, "big", None, 16, 0, 8, false),
    ]);
    l.attempts[1].query.transport = Transport::Tcp;
    let mut d = detectors();
    assert_eq!(see(&mut d, l).anomalies, Vec::<Kind>::new());
}

/// Node-local client workloads get series of their own, at 0 from their first lookup, up
/// to the cap; beyond it they count as `other`/`other`.
#[test]
fn client_workloads_are_counted_apart_up_to_the_cap_then_as_other() {
    let family = Family::<KindLabels, AnomalyCounter>::default();
    let mut counters = AnomalyCounters::new(family.clone());
    let mut record = lookup(&[]);
    let named = |ns: &str, wl: &str| dnslens_datapath::record::ClientIdentity {
        pod: std::sync::Arc::new(dnslens_datapath::record::PodIdentity {
            namespace: ns.into(),
            pod: format!("{wl}-0"),
            workload_kind: "StatefulSet".into(),
            workload: wl.into(),
            uid: format!("uid-{ns}-{wl}"),
        }),
        stale: false,
    };
    for i in 0..MAX_CLIENT_WORKLOADS + 3 {
        record.client_identity = Some(named("team-a", &format!("w{i}")));
        counters.of(&record)[Kind::ClientRetry as usize].inc_by(1, None, None);
        // Seen again: the same series, nothing new made.
        counters.of(&record)[Kind::ClientRetry as usize].inc_by(1, None, None);
    }
    let mut text = String::new();
    let mut registry = Registry::default();
    registry.register("anomalies", "", family);
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let series = |labels: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("anomalies_total{{{labels}}}")))
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
    };
    let retry = "kind=\"client_retry\"";
    assert_eq!(
        series(&format!(
            "{retry},client_namespace=\"team-a\",client_workload=\"w0\""
        ))
        .as_deref(),
        Some("2")
    );
    assert_eq!(
        series(&format!(
            "{retry},client_namespace=\"team-a\",client_workload=\"w255\""
        ))
        .as_deref(),
        Some("2")
    );
    assert_eq!(
        series(&format!(
            "{retry},client_namespace=\"team-a\",client_workload=\"w256\""
        )),
        None
    );
    assert_eq!(
        series(&format!(
            "{retry},client_namespace=\"other\",client_workload=\"other\""
        ))
        .as_deref(),
        Some("6")
    );
    // A workload's other kinds exist at 0 from its first lookup.
    assert_eq!(
        series("kind=\"parallel_race\",client_namespace=\"team-a\",client_workload=\"w7\"")
            .as_deref(),
        Some("0")
    );
    // Unnamed clients keep the plain `{kind}` series.
    assert_eq!(series(retry).as_deref(), Some("0"));
}
