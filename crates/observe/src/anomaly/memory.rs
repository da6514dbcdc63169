//! What the detectors remember across lookups: a client's retransmission, or the twin of a
//! parallel A/AAAA pair arriving alone a resolver timeout later, comes seconds after the
//! first lookup ended. The one place retries and suspected races are found (a lookup's own
//! repeats included: its questions are remembered in arrival order).

use std::collections::HashMap;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use super::detect::{abs_diff, sent_together, PARALLEL_WINDOW};
use dnslens_datapath::metrics::Transport;
use dnslens_datapath::record::{Attempt, Kind, LookupRecord};
use dnslens_wire::{self as wire, Rcode};

/// What the detectors remember, keyed by (client, hash of the name, qtype): a retry or a
/// late twin arrives seconds later, often after the first lookup has ended. A 64-bit hash
/// rather than the name keeps the per-query work allocation-free; a collision could at worst
/// pair two names once. Bounded: at most `RECENT_CAP` entries, oldest evicted and counted;
/// entries older than `RECENT_WINDOW` no longer match.
type QuestionKey = (std::net::SocketAddr, u64, u16);

/// Both memories are per socket: across lookups, the same question with the same ID from
/// another socket of the same address is too often a coincidence (a pod asking one name a
/// hundred times in 12 s from new sockets, random 16-bit IDs: a 7% chance of a collision; a
/// load generator's sequential IDs: many). Within a lookup the tracker finds re-asks from a
/// new socket (`original_in`). The race is a property of one 5-tuple anyway.
fn question_key(a: &Attempt, qtype: u16) -> QuestionKey {
    use std::hash::BuildHasher;
    (a.query.client, NAME_HASH.hash_one(a.qname.as_str()), qtype)
}

/// A fixed-seed hasher, so equal names hash equally across lookups.
const NAME_HASH: foldhash::fast::FixedState =
    foldhash::fast::FixedState::with_seed(0x0064_6e73_6c65_6e73);

/// What is remembered of a question: when (received, for a question asked; answered, for a
/// lonely twin's partner), the client's message ID and source port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Asked {
    at: std::time::Instant,
    id: u16,
    port: u16,
    /// When dnslens answered it with a real answer (not SERVFAIL), if it did.
    answered: Option<std::time::Instant>,
    /// Asked over UDP: the same question again over TCP is the fallback after a truncated
    /// answer, not a retry.
    udp: bool,
    /// The kinds already counted for the lookup that asked it ([`kind_mask`]): a tail of
    /// re-asks does not count them again.
    kinds: u8,
}

impl Asked {
    fn of(a: &Attempt, at: std::time::Instant, kinds: u8) -> Asked {
        Asked {
            at,
            id: a.query.id,
            port: a.query.client.port(),
            answered: (a.query.rcode != Rcode::SERVFAIL).then_some(a.query.answered),
            udp: a.query.transport == Transport::Udp,
            kinds,
        }
    }
}

/// The attempt of `lookup` that its attempt `index` re-asks, when the tracker found it a
/// retransmission (same client address, ID and question).
fn original_in(lookup: &LookupRecord, index: usize) -> Option<&Attempt> {
    let a = &lookup.attempts[index];
    if !a.retransmission {
        return None;
    }
    lookup.attempts[..index].iter().find(|o| {
        !o.retransmission
            && o.query.id == a.query.id
            && o.query.qtype == a.query.qtype
            && o.qname == a.qname
    })
}

/// A set of kinds as bits.
pub(super) fn kind_mask(kinds: &[Kind]) -> u8 {
    kinds.iter().fold(0, |mask, k| mask | 1 << (*k as u8))
}

struct Recent {
    seen: HashMap<QuestionKey, Asked, foldhash::fast::RandomState>,
    order: std::collections::VecDeque<(QuestionKey, Asked)>,
    evicted: Counter,
}

pub(super) const RECENT_CAP: usize = 4096;
const RECENT_WINDOW: Duration = Duration::from_secs(12);
/// A twin arriving this long after its partner was answered is "late": a resolver timeout
/// (glibc 1-5 s; musl resends every timeout/attempts, 0.5 s with `timeout:1`). Sooner is a
/// resolver asking one type after the other (`single-request`, dnspython).
const LATE_TWIN: Duration = Duration::from_millis(250);

impl Recent {
    fn new(evicted: Counter) -> Recent {
        Recent {
            seen: HashMap::default(),
            order: std::collections::VecDeque::new(),
            evicted,
        }
    }

    /// Forgets and returns how long before `a` arrived `qtype` for its client and name was
    /// remembered (and what was remembered), if within the window.
    fn take(&mut self, a: &Attempt, qtype: u16) -> Option<(Duration, Asked)> {
        let key = question_key(a, qtype);
        let asked = self.seen.remove(&key)?;
        let gap = a.query.received.saturating_duration_since(asked.at);
        (gap <= RECENT_WINDOW).then_some((gap, asked))
    }

    fn get(&self, a: &Attempt, qtype: u16) -> Option<&Asked> {
        self.seen.get(&question_key(a, qtype))
    }

    /// Remembers `qtype` for `a`'s client and name, as of `at`, asked by a lookup whose
    /// `kinds` were counted.
    fn remember(&mut self, a: &Attempt, qtype: u16, at: std::time::Instant, kinds: u8) {
        let key = question_key(a, qtype);
        if self.seen.len() >= RECENT_CAP && !self.seen.contains_key(&key) {
            while let Some((old, at)) = self.order.pop_front() {
                if self.seen.get(&old) == Some(&at) {
                    self.seen.remove(&old);
                    self.evicted.inc();
                    break;
                }
            }
        }
        let value = Asked::of(a, at, kinds);
        self.seen.insert(key, value);
        self.order.push_back((key, value));
        if self.order.len() > 2 * RECENT_CAP {
            let seen = &self.seen;
            self.order.retain(|(k, at)| seen.get(k) == Some(at));
        }
    }
}

/// A retransmission found: its question type and the gap since the first ask.
pub(super) struct Retry {
    pub qtype: u16,
    pub gap: Duration,
}

/// What the memory found in one lookup.
#[derive(Default)]
pub(super) struct Findings {
    pub kinds: Vec<Kind>,
    pub retries: Vec<Retry>,
    /// Indexes of the lookup's attempts that were retransmissions.
    pub retransmissions: Vec<usize>,
    /// Suspected races (a retried query whose twin was answered, or a late twin).
    pub races: u64,
    /// The longest wait a retry or a late twin shows (the client's timeout, seen by dnslens).
    pub longest_gap: Option<Duration>,
    /// Kinds already counted for the lookups whose questions were asked again here.
    pub counted_before: u8,
}

impl Findings {
    fn race(&mut self, gap: Duration) {
        self.kinds.push(Kind::ParallelRace);
        self.races += 1;
        self.gap(gap);
    }

    fn gap(&mut self, gap: Duration) {
        self.longest_gap = Some(self.longest_gap.map_or(gap, |g| g.max(gap)));
    }
}

/// Whether `lookup` holds `a`'s A/AAAA twin sent together with it, with a real answer (a
/// twin answered SERVFAIL — its answer withheld or lost upstream — will be asked again: it
/// counts as missing).
fn twin_answered_beside(a: &Attempt, lookup: &LookupRecord) -> bool {
    twin_beside(a, lookup, |b| b.query.rcode != Rcode::SERVFAIL)
}

/// Whether `lookup` holds `a`'s A/AAAA twin asked at the same moment, or from another
/// socket at any time (Go asks A and AAAA from a socket each; dnspython asks the AAAA from a
/// new socket once the A is answered, which a loaded client may take more than the pair
/// window to do): the twin came, so `a` is no lonely partner — and its socket's port, reused
/// by the next query of some later lookup, must not pair with it. (A twin lost on `a`'s own
/// socket comes back on that socket, where the lonely memory waits for it.)
fn twin_asked_elsewhere(
    a: &Attempt,
    lookup: &LookupRecord,
    also: impl Fn(&Attempt) -> bool,
) -> bool {
    let Some(twin) = wire::address_twin(a.query.qtype) else {
        return false;
    };
    lookup.attempts.iter().any(|b| {
        b.query.qtype == twin
            && b.qname == a.qname
            && (abs_diff(a.query.received, b.query.received) <= PARALLEL_WINDOW
                || b.query.client != a.query.client)
            && also(b)
    })
}

/// Whether `lookup` holds `a`'s A/AAAA twin sent together with it (and `also` holds).
fn twin_beside(a: &Attempt, lookup: &LookupRecord, also: impl Fn(&Attempt) -> bool) -> bool {
    let Some(twin) = wire::address_twin(a.query.qtype) else {
        return false;
    };
    lookup
        .attempts
        .iter()
        .any(|b| b.query.qtype == twin && sent_together(a, b) && also(b))
}

/// The bounded memory of recent questions.
pub(super) struct Memory {
    /// Every question asked, per socket, for retries.
    asked: Recent,
    /// A/AAAA questions whose twin did not come with them, per socket, keyed by the missing
    /// qtype and remembered as of the partner's answer.
    lonely: Recent,
}

impl Memory {
    pub(super) fn new(evicted: Counter) -> Memory {
        Memory {
            asked: Recent::new(evicted.clone()),
            lonely: Recent::new(evicted),
        }
    }

    /// (entries, eviction-order length) of the asked and the lonely memories.
    #[cfg(test)]
    pub(super) fn sizes(&self) -> ((usize, usize), (usize, usize)) {
        let size = |r: &Recent| (r.seen.len(), r.order.len());
        (size(&self.asked), size(&self.lonely))
    }

    /// Entries evicted from both memories.
    #[cfg(test)]
    pub(super) fn evicted(&self) -> u64 {
        self.lonely.evicted.get()
    }

    /// Retries and late twins, within the lookup and across lookups: each question, in
    /// arrival order, is checked against what was remembered, then remembered.
    pub(super) fn findings(&mut self, lookup: &LookupRecord) -> Findings {
        let mut found = Findings::default();
        for (index, a) in lookup.attempts.iter().enumerate() {
            let mut raced = None;
            let mut inherited = 0;
            // A retransmission repeats the message ID from the same socket; a new question
            // with another ID from a long-lived socket (a load generator, a caching stub) is
            // not a retry. Within a lookup the tracker also knows re-asks from a new socket
            // (dnspython, glibc's reopen): the original is then in the lookup.
            let remembered = self.asked.take(a, a.query.qtype).filter(|(_, first)| {
                first.id == a.query.id && (a.query.transport == Transport::Udp || !first.udp)
            });
            let original = original_in(lookup, index);
            let retry = remembered.or_else(|| {
                original.map(|o| {
                    let gap = a.query.received.saturating_duration_since(o.query.received);
                    (gap, Asked::of(o, o.query.received, 0))
                })
            });
            if let Some((gap, first)) = retry {
                found.kinds.push(Kind::ClientRetry);
                found.retransmissions.push(index);
                found.counted_before |= first.kinds;
                inherited = first.kinds;
                found.retries.push(Retry {
                    qtype: a.query.qtype,
                    gap,
                });
                found.gap(gap);
                // Retried before dnslens had answered it (its answer withheld or lost
                // upstream), while its twin sent with it (same socket, same moment) was not
                // asked again now: one of a parallel pair lost. Both sent again together is
                // a plain retry (a dead upstream, say); so is a question answered before the
                // client asked again (the answer lost on its way back: no query was lost).
                let first_at = a.query.received.checked_sub(gap);
                let unanswered = first.answered.is_none_or(|at| at > a.query.received);
                if let (true, Some(first_at), Some(twin)) =
                    (unanswered, first_at, wire::address_twin(a.query.qtype))
                {
                    let twin_was_beside = match original {
                        Some(o) => twin_beside(o, lookup, |_| true),
                        None => self.asked.get(a, twin).is_some_and(|t| {
                            t.port == first.port && abs_diff(t.at, first_at) <= PARALLEL_WINDOW
                        }),
                    };
                    if twin_was_beside && !twin_beside(a, lookup, |_| true) {
                        raced = Some(gap);
                    }
                }
            }
            self.asked
                .remember(a, a.query.qtype, a.query.received, inherited);
            let Some(twin) = wire::address_twin(a.query.qtype) else {
                continue;
            };
            // The twin that never came with its partner, arriving alone a timeout later.
            // Not when its lookup asked it with a new partner: the socket's port was reused
            // by a new lookup (a resolver's walk after `dig` asked the A alone from that
            // port), and a client resending the pair keeps the partner's message ID.
            if let Some((gap, _)) = self.lonely.take(a, a.query.qtype).filter(|(gap, partner)| {
                *gap >= LATE_TWIN && !twin_asked_elsewhere(a, lookup, |b| b.query.id != partner.id)
            }) {
                raced = raced.or(Some(gap));
            }
            if let Some(gap) = raced {
                found.race(gap);
            }
            // A partner that failed too is no pair one of which was lost (both retried
            // together is a plain retry).
            let answered = a.query.rcode != Rcode::SERVFAIL;
            if answered
                && !a.retransmission
                && !twin_answered_beside(a, lookup)
                && !twin_asked_elsewhere(a, lookup, |_| true)
            {
                self.lonely.remember(a, twin, a.query.answered, 0);
            }
        }
        found
    }

    /// Notes that `kinds` were counted for `lookup`, on the questions it asked: a later
    /// tail of re-asks of them does not count those kinds again.
    pub(super) fn counted(&mut self, lookup: &LookupRecord, kinds: u8) {
        for a in &lookup.attempts {
            let key = question_key(a, a.query.qtype);
            if let Some(asked) = self.asked.seen.get_mut(&key) {
                asked.kinds |= kinds;
            }
        }
    }
}
