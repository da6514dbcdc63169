//! The detectors that need nothing but one lookup's record: pure functions.

use std::time::{Duration, Instant};

use dnslens_datapath::record::{Attempt, Kind, LookupOutcome, LookupRecord, Outcome};
use dnslens_wire::{Rcode, QTYPE_A, QTYPE_AAAA};

/// A and AAAA of one name from one socket this close together may be "sent in parallel".
pub(super) const PARALLEL_WINDOW: Duration = Duration::from_millis(50);
/// ...if the later one also arrived before the earlier one was answered, or this soon after.
/// UDP arrival times are the kernel's stamps (see `udp`), so a worker starved between the
/// two reads no longer separates a pair; the slack covers a cache answer sent before the
/// client's second send (microseconds apart) reached the socket, and TCP, timed when read.
/// A resolver asking one type after the other (`single-request`, dnspython) needs the
/// answer first, so it is told apart when it takes longer than this to ask again; a faster
/// one is counted as a pair (the race verdicts need a loss as well, so they are unaffected).
const QUEUED_SLACK: Duration = Duration::from_millis(5);

/// Whether `a` and `b` (an A/AAAA pair of one name) were sent together from one socket.
pub(super) fn sent_together(a: &Attempt, b: &Attempt) -> bool {
    let (first, later) = if a.query.received <= b.query.received {
        (a, b)
    } else {
        (b, a)
    };
    a.query.client == b.query.client
        && a.qname == b.qname
        && later.query.received - first.query.received <= PARALLEL_WINDOW
        && later.query.received <= first.query.answered + QUEUED_SLACK
}

pub(super) fn is_empty_noerror(a: &Attempt) -> bool {
    a.query.rcode == Rcode::NOERROR
        && a.query.answers == 0
        && matches!(a.query.qtype, QTYPE_A | QTYPE_AAAA)
}

/// An AAAA NODATA whose A twin (same name, same lookup) has data: an IPv4-only name.
fn is_ordinary_aaaa_nodata(a: &Attempt, lookup: &LookupRecord) -> bool {
    a.query.qtype == QTYPE_AAAA
        && lookup
            .attempts
            .iter()
            .any(|b| b.query.qtype == QTYPE_A && b.qname == a.qname && b.query.has_data())
}

/// Pairs (index of A, index of AAAA) sent in parallel from one socket (retransmissions of a
/// pair are not pairs of their own).
pub(super) fn parallel_pairs(lookup: &LookupRecord) -> Vec<(usize, usize)> {
    let mut pairs = Vec::new();
    for (i, a) in lookup
        .attempts
        .iter()
        .enumerate()
        .filter(|(_, a)| a.query.qtype == QTYPE_A && !a.retransmission)
    {
        let twin =
            lookup.attempts.iter().enumerate().find(|(_, b)| {
                b.query.qtype == QTYPE_AAAA && !b.retransmission && sent_together(a, b)
            });
        if let Some((j, _)) = twin {
            pairs.push((i, j));
        }
    }
    pairs
}

pub(super) fn abs_diff(a: Instant, b: Instant) -> Duration {
    a.saturating_duration_since(b)
        .max(b.saturating_duration_since(a))
}

/// The kinds one lookup shows on its own, sorted, without repeats: empty NOERROR answers and
/// upstream faults. Retries and races need memory across lookups ([`super::memory`]).
pub fn kinds(lookup: &LookupRecord) -> Vec<Kind> {
    let mut kinds = Vec::new();
    for a in &lookup.attempts {
        if is_empty_noerror(a) && !is_ordinary_aaaa_nodata(a, lookup) {
            if a.suffix.is_some() {
                kinds.push(Kind::EmptyNoerrorSearch);
            }
            if !a.query.authority_soa {
                kinds.push(Kind::EmptyNoerrorNoSoa);
            }
        }
        for t in &a.query.tries {
            match t.outcome {
                Outcome::Timeout => kinds.push(Kind::UpstreamTimeout),
                Outcome::ServFail | Outcome::Refused => kinds.push(Kind::UpstreamError),
                _ => {}
            }
        }
    }
    kinds.sort();
    kinds.dedup();
    kinds
}

/// A lookup that walked the search list and was answered by the absolute name: with a
/// lower ndots (or a trailing dot) it would have taken one query pair.
pub fn ndots_hint(lookup: &LookupRecord) -> bool {
    lookup.outcome == LookupOutcome::Answered
        && lookup.answered_by().is_some_and(|a| a.suffix.is_none())
        && lookup.attempts.iter().any(|a| a.suffix.is_some())
}
