//! When each open lookup is due to close, so that a tick closes what is due in O(closed · log
//! open) instead of scanning every open lookup (a node's tracker holds thousands).
//!
//! A lookup's closing time is its last activity plus a length that depends on its state,
//! and for two of the three states also on the upstream *grace* of the tick (the longest
//! upstream wait while queries are in flight, read anew on every tick):
//!
//! | state | closes at |
//! |---|---|
//! | finished (final answer and its twin) | last activity + linger |
//! | final answer, twin missing | last activity + linger + grace |
//! | no final answer | last activity + window + grace |
//!
//! The grace is the same for every lookup of a tick, so two min-heaps keep the order
//! without it: one of fixed times, one of times the grace is added to. Entries are never
//! updated in place. A lookup records the [`Due`] of its one live entry; when its state moves
//! its closing time earlier (or to the other heap), a new entry is pushed and the old one
//! becomes stale; when activity only moves it later, nothing is pushed — the old entry,
//! once due, is found early and pushed again at the lookup's real time. Stale entries (of
//! lookups closed, evicted or superseded) are skipped when popped and swept out once they
//! outnumber the open lookups (`retain`), so the heaps stay within a small multiple of the
//! open lookups.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use super::Key;

/// When a lookup is due: `at`, plus the tick's grace when `plus_grace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Due {
    pub at: Instant,
    pub plus_grace: bool,
}

impl Due {
    fn is_due(&self, now: Instant, grace: Duration) -> bool {
        let grace = if self.plus_grace {
            grace
        } else {
            Duration::ZERO
        };
        self.at + grace <= now
    }
}

/// One lookup's place in a heap; `seq` tells a lookup from a later one under the same key.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    at: Instant,
    seq: u64,
    key: Key,
}

#[derive(Default)]
pub(super) struct Deadlines {
    fixed: BinaryHeap<Reverse<Entry>>,
    graced: BinaryHeap<Reverse<Entry>>,
}

impl Deadlines {
    fn heap(&mut self, plus_grace: bool) -> &mut BinaryHeap<Reverse<Entry>> {
        if plus_grace {
            &mut self.graced
        } else {
            &mut self.fixed
        }
    }

    pub fn push(&mut self, due: Due, seq: u64, key: Key) {
        let at = due.at;
        self.heap(due.plus_grace)
            .push(Reverse(Entry { at, seq, key }));
    }

    /// The earliest entry due by `now` (with `grace` added to the graced ones), removed.
    pub fn pop_due(&mut self, now: Instant, grace: Duration) -> Option<(Due, u64, Key)> {
        let due_in = |heap: &BinaryHeap<Reverse<Entry>>, plus_grace| {
            heap.peek()
                .map(|Reverse(e)| Due {
                    at: e.at,
                    plus_grace,
                })
                .filter(|d| d.is_due(now, grace))
        };
        let (fixed, graced) = (due_in(&self.fixed, false), due_in(&self.graced, true));
        let due = match (fixed, graced) {
            (Some(f), Some(g)) if f.at <= g.at + grace => f,
            (_, Some(g)) => g,
            (Some(f), None) => f,
            (None, None) => return None,
        };
        let Reverse(entry) = self.heap(due.plus_grace).pop()?;
        Some((due, entry.seq, entry.key))
    }

    pub fn len(&self) -> usize {
        self.fixed.len() + self.graced.len()
    }

    /// Keeps only the entries `live` says still stand for their lookup.
    pub fn retain(&mut self, mut live: impl FnMut(Due, u64, &Key) -> bool) {
        for (heap, plus_grace) in [(&mut self.fixed, false), (&mut self.graced, true)] {
            heap.retain(|Reverse(e)| {
                live(
                    Due {
                        at: e.at,
                        plus_grace,
                    },
                    e.seq,
                    &e.key,
                )
            });
        }
    }
}
