//! What the detectors remember across lookups: a client's retransmission, or the twin of a
//! parallel A/AAAA pair arriving alone a resolver timeout later, comes seconds after the
//! first lookup ended. The one place retries and suspected races are found (a lookup's own
//! repeats included: its questions are remembered in arrival order).

use std::collections::HashMap;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use super::detect::{abs_diff, PARALLEL_WINDOW};
use crate::record::{Attempt, Kind, LookupRecord};
use crate::wire::{self, Rcode};

/// What the detectors remember across lookups, keyed by (client socket, name, qtype):
/// a retry or a late twin arrives seconds later, after the first lookup has ended. Bounded:
/// at most `RECENT_CAP` entries, oldest evicted and counted; entries older than
/// `RECENT_WINDOW` no longer match.
/// (client socket, hash of the name, qtype): a 64-bit hash rather than the name keeps the
/// per-query work allocation-free; a collision could at worst pair two names once.
type QuestionKey = (std::net::SocketAddr, u64, u16);

fn question_key(a: &Attempt, qtype: u16) -> QuestionKey {
    use std::hash::BuildHasher;
    (a.query.client, NAME_HASH.hash_one(a.qname.as_str()), qtype)
}

/// A fixed-seed hasher, so equal names hash equally across lookups.
const NAME_HASH: foldhash::fast::FixedState =
    foldhash::fast::FixedState::with_seed(0x0064_6e73_6c65_6e73);
/// (when it was asked, the client's message ID)
type Asked = (std::time::Instant, u16);

struct Recent {
    seen: HashMap<QuestionKey, Asked, foldhash::fast::RandomState>,
    order: std::collections::VecDeque<(QuestionKey, Asked)>,
    evicted: Counter,
}

pub(super) const RECENT_CAP: usize = 4096;
const RECENT_WINDOW: Duration = Duration::from_secs(12);
/// A twin arriving sooner than this is not "late": resolvers time out after 1 s at least.
const LATE_TWIN: Duration = Duration::from_millis(500);

impl Recent {
    fn new(evicted: Counter) -> Recent {
        Recent {
            seen: HashMap::default(),
            order: std::collections::VecDeque::new(),
            evicted,
        }
    }

    /// Forgets and returns how long ago `qtype` for `a`'s socket and name was remembered
    /// (and the message ID it had then), if within the window.
    fn take(&mut self, a: &Attempt, qtype: u16) -> Option<(Duration, u16)> {
        let key = question_key(a, qtype);
        let (at, id) = self.seen.remove(&key)?;
        let gap = a.query.received.saturating_duration_since(at);
        (gap <= RECENT_WINDOW).then_some((gap, id))
    }

    fn remember(&mut self, a: &Attempt, qtype: u16) {
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
        let value = (a.query.received, a.query.id);
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
    /// Suspected races (a retried query whose twin was answered, or a late twin).
    pub races: u64,
}

/// Whether the lookup holds `a`'s A/AAAA twin from the same socket sent again with `a`
/// (and not the twin of its first ask, at `first`).
fn twin_resent_with(a: &Attempt, first: Option<std::time::Instant>, lookup: &LookupRecord) -> bool {
    let Some(twin) = wire::address_twin(a.query.qtype) else {
        return false;
    };
    lookup.attempts.iter().any(|b| {
        b.query.qtype == twin
            && b.qname == a.qname
            && b.query.client == a.query.client
            && abs_diff(b.query.received, a.query.received) <= PARALLEL_WINDOW
            && first.is_none_or(|first| abs_diff(b.query.received, first) > PARALLEL_WINDOW)
    })
}

/// The bounded memory of recent questions.
pub(super) struct Memory {
    /// Every question asked, for retries.
    asked: Recent,
    /// A/AAAA questions whose twin did not come with them, keyed by the missing qtype.
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

    /// Whether the A/AAAA twin of `a` was asked from the same socket within the parallel
    /// window of `first` (when `a` was first asked) and has not been asked again since.
    fn twin_sent_with(&self, a: &Attempt, first: Option<std::time::Instant>) -> bool {
        let Some(twin) = wire::address_twin(a.query.qtype) else {
            return false;
        };
        let (Some(first), Some((twin_at, _))) =
            (first, self.asked.seen.get(&question_key(a, twin)))
        else {
            return false;
        };
        abs_diff(*twin_at, first) <= PARALLEL_WINDOW
    }

    /// Retries and late twins, which span lookups: found against what was remembered,
    /// then this lookup's questions (and its lonely A/AAAA) are remembered.
    pub(super) fn across_lookups(&mut self, lookup: &LookupRecord) -> Findings {
        let mut found = Findings::default();
        for a in &lookup.attempts {
            // A retransmission repeats the message ID; a new question with another ID from a
            // long-lived socket (a load generator, a caching stub) is not a retry.
            if let Some((gap, _)) = self
                .asked
                .take(a, a.query.qtype)
                .filter(|(_, id)| *id == a.query.id)
            {
                found.kinds.push(Kind::ClientRetry);
                found.retries.push(Retry {
                    qtype: a.query.qtype,
                    gap,
                });
                // Retried, while its twin sent with it was not: one of a parallel pair lost.
                // Both sent again together is a plain retry (a dead upstream, say).
                let first = a.query.received.checked_sub(gap);
                if self.twin_sent_with(a, first) && !twin_resent_with(a, first, lookup) {
                    found.kinds.push(Kind::ParallelRace);
                    found.races += 1;
                }
            }
            self.asked.remember(a, a.query.qtype);
            if wire::address_twin(a.query.qtype).is_some()
                && self
                    .lonely
                    .take(a, a.query.qtype)
                    .is_some_and(|(gap, _)| gap >= LATE_TWIN)
            {
                found.kinds.push(Kind::ParallelRace);
                found.races += 1;
            }
        }
        for a in &lookup.attempts {
            let Some(twin) = wire::address_twin(a.query.qtype) else {
                continue;
            };
            // A twin that got no real answer (SERVFAIL: its answer was withheld or lost
            // upstream) counts as missing: the client will send it again.
            let has_twin = lookup.attempts.iter().any(|b| {
                b.query.qtype == twin
                    && b.qname == a.qname
                    && b.query.client == a.query.client
                    && b.query.rcode != Rcode::SERVFAIL
            });
            if !has_twin {
                self.lonely.remember(a, twin);
            }
        }
        found
    }
}
