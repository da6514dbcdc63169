//! Which upstream a query tries next: pure functions of the upstreams' states, the rotation
//! and what this query already tried, so the rules are unit-tested without sockets or
//! timeouts (`select/tests.rs`).
//!
//! A query's tried upstreams are a bitset ([`Tried`]): one bit per upstream, which is why a
//! forwarder has at most [`MAX_UPSTREAMS`] of them (checked when the config loads).

use std::time::Instant;

/// At most this many distinct upstreams (one bit each in [`Tried`]).
pub const MAX_UPSTREAMS: usize = 64;

/// The upstreams a query has tried, by index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tried(pub u64);

impl Tried {
    pub fn contains(self, index: usize) -> bool {
        self.0 & bit(index) != 0
    }

    pub fn with(self, index: usize) -> Tried {
        Tried(self.0 | bit(index))
    }
}

fn bit(index: usize) -> u64 {
    1u64.checked_shl(index as u32).unwrap_or(0)
}

/// An upstream as selection sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamState {
    /// In service (or its back-off is over).
    pub available: bool,
    /// When a put-aside upstream is due back (`None`: in service).
    pub back_at: Option<Instant>,
}

/// The next upstream among `members` (indices, in rotation order from `start`): the first
/// available one this query has not tried; else the first available one; with every one
/// put aside, still one — untried first, then the one due back first — as CoreDNS's
/// `forward` does, so DNS comes back with the first query after the upstream does instead
/// of after its back-off. `None` only without members.
pub fn pick(
    members: &[usize],
    start: usize,
    tried: Tried,
    state: impl Fn(usize) -> UpstreamState,
) -> Option<usize> {
    let n = members.len();
    let in_rotation = (0..n).map(|i| members[(start + i) % n]);
    let mut tried_but_available = None;
    for i in in_rotation.clone() {
        if !state(i).available {
            continue;
        }
        if !tried.contains(i) {
            return Some(i);
        }
        tried_but_available.get_or_insert(i);
    }
    tried_but_available
        .or_else(|| in_rotation.min_by_key(|i| (tried.contains(*i), state(*i).back_at)))
}

/// What follows a try that brought no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Another try (`attempts` not used up).
    Retry,
    /// SERVFAIL to the client, counted as `exhausted`.
    Exhausted,
}

/// After `tries` tries of at most `attempts`.
pub fn after_failure(tries: u32, attempts: u32) -> AfterFailure {
    if tries < attempts {
        AfterFailure::Retry
    } else {
        AfterFailure::Exhausted
    }
}

/// Why an answer that matches no pending query is dropped: `late` when its ID is one whose
/// try timed out recently (within the late window) and it comes from the upstream that try
/// went to; else `unknown_id` (spoofed, or older than the window).
pub fn unmatched_reason(
    timed_out_to: Option<std::net::SocketAddr>,
    from: std::net::SocketAddr,
) -> &'static str {
    match timed_out_to {
        Some(upstream) if upstream == from => "late",
        _ => "unknown_id",
    }
}

#[cfg(test)]
mod tests;
