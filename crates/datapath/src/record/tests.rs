//! The records the data path hands to observers: the bounded sink, the upstream grace the
//! tracker reads, what an outcome and an answer count as.

use std::thread;

use super::*;

#[test]
fn a_full_sink_drops_and_counts_and_never_blocks() {
    let dropped = Counter::default();
    // 32 in all: 2 for each sending thread's shard.
    let sink = TraceSink::new(32, dropped.clone());
    let client: SocketAddr = "10.0.0.1:5000".parse().expect("address");
    let sent = |sink: TraceSink, n: usize| {
        thread::spawn(move || {
            for _ in 0..n {
                sink.send(QueryTrace::new(
                    client,
                    Transport::Udp,
                    b"\0",
                    1,
                    Instant::now(),
                ));
            }
        })
        .join()
        .expect("sender");
    };
    sent(sink.clone(), 5);
    sent(sink.clone(), 1);
    let (mut out, mut spare) = (Vec::new(), Vec::new());
    sink.drain_into(&mut out, &mut spare);
    assert_eq!(
        out.len(),
        3,
        "two from the first thread, one from the second"
    );
    assert_eq!(dropped.get(), 3);
    assert!(spare.is_empty(), "the spare buffer goes back empty");
    // Drained: room again.
    sent(sink.clone(), 2);
    out.clear();
    sink.drain_into(&mut out, &mut spare);
    assert_eq!(out.len(), 2);
    assert_eq!(dropped.get(), 3);
}

#[test]
fn the_grace_is_the_longest_wait_only_while_queries_wait() {
    let queries = Gauge::default();
    let in_flight = InFlight::new(queries.clone());
    in_flight.set_longest(Duration::from_secs(4));
    assert_eq!(in_flight.grace(), Duration::ZERO, "nothing in flight");
    queries.set(3);
    assert_eq!(in_flight.grace(), Duration::from_secs(4));
    in_flight.set_longest(Duration::from_secs(6));
    assert_eq!(in_flight.grace(), Duration::from_secs(6));
    queries.set(0);
    assert_eq!(in_flight.grace(), Duration::ZERO);
}

#[test]
fn outcomes_by_rcode_and_which_show_an_upstream_alive() {
    assert_eq!(Outcome::of_rcode(Rcode::NOERROR), Outcome::Answer);
    assert_eq!(Outcome::of_rcode(Rcode::NXDOMAIN), Outcome::Answer);
    assert_eq!(Outcome::of_rcode(Rcode::SERVFAIL), Outcome::ServFail);
    assert_eq!(Outcome::of_rcode(Rcode::REFUSED), Outcome::Refused);
    let alive: Vec<_> = Outcome::ALL.iter().filter(|o| o.is_success()).collect();
    assert_eq!(
        alive,
        [
            &Outcome::Answer,
            &Outcome::ServFail,
            &Outcome::Refused,
            &Outcome::Truncated
        ]
    );
    let labels: Vec<_> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
    assert_eq!(
        labels,
        [
            "answer",
            "servfail",
            "refused",
            "timeout",
            "truncated",
            "error",
            "local_error"
        ]
    );
}

#[test]
fn data_is_noerror_with_an_answer() {
    let client: SocketAddr = "10.0.0.1:5000".parse().expect("address");
    let mut q = QueryTrace::new(client, Transport::Udp, b"\0", 1, Instant::now());
    assert!(!q.has_data(), "NOERROR without answers: NODATA");
    q.answers = 1;
    assert!(q.has_data());
    q.rcode = Rcode::NXDOMAIN;
    assert!(!q.has_data());
}
