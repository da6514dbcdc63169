//! Who dnslens answers: the client networks of `listener.allow` ([`AccessList`]; empty
//! means loopback only, so dnslens is never an open resolver) and, within them, the
//! per-client rate limit of `listener.rate_limit` ([`crate::ratelimit`]), held together as
//! a [`ClientPolicy`] by the listeners. The admin server's `/debug/*` uses an
//! [`AccessList`] of its own (`admin.debug_allow`).

use std::net::IpAddr;
use std::time::Instant;

use crate::ratelimit::{RateLimiter, Verdict};

/// Client networks allowed. A dual-stack socket reports IPv4 clients as `::ffff:a.b.c.d`:
/// they are matched as the IPv4 address they are.
pub struct AccessList {
    allowed: Vec<ipnet::IpNet>,
}

impl AccessList {
    /// `allow` from the config; empty means loopback only.
    pub fn new(allow: &[ipnet::IpNet]) -> AccessList {
        let loopback = ["127.0.0.0/8", "::1/128"]
            .iter()
            .filter_map(|net| net.parse().ok())
            .collect();
        AccessList {
            allowed: if allow.is_empty() {
                loopback
            } else {
                allow.to_vec()
            },
        }
    }

    pub fn allows(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        self.allowed.iter().any(|net| net.contains(&client))
    }
}

/// What the listeners check for every query: the access list, then the rate limit.
pub struct ClientPolicy {
    pub access: AccessList,
    pub rate_limit: Option<RateLimiter>,
}

impl ClientPolicy {
    pub fn allows(&self, client: IpAddr) -> bool {
        self.access.allows(client)
    }

    /// Whether this query from `client` (already allowed) stays within its rate.
    pub fn rate(&self, client: IpAddr, now: Instant) -> Verdict {
        self.rate_limit
            .as_ref()
            .map_or(Verdict::Pass, |l| l.check(client.to_canonical(), now))
    }
}

#[cfg(test)]
mod tests;
