//! Per-zone forwarding (`forward.zones`): names under a zone go to that zone's upstreams,
//! the longest matching zone winning; every other name goes to `forward.upstreams`.
//! NodeLocal DNSCache's layout is the model: the cluster domain and the reverse zones to the
//! cluster DNS over TCP, everything else to the node's own resolvers.
//!
//! Config keys (each entry): `zone` (a domain name; matching ignores case and a trailing
//! dot), `upstreams` (`ADDR[:PORT]`, at least one), `force_tcp` [false].
//!
//! Matching runs on the question's wire form: the zone is compared, case-insensitively,
//! with the name's tail at each label boundary — no allocation, a few comparisons per
//! zone. With no zones configured nothing is matched at all.

use std::sync::Arc;

use serde::Deserialize;

use super::UpstreamAddr;
use dnslens_yaml::invalid::{check, Invalid};

/// One `forward.zones` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardZone {
    pub zone: String,
    pub upstreams: Vec<UpstreamAddr>,
    #[serde(default)]
    pub force_tcp: bool,
}

/// Zone names as they are compared and labelled: lower case, no trailing dot.
pub fn normalize(zone: &str) -> String {
    zone.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Checks the zone names of `forward.zones` (one zone once; names valid, not the root).
pub fn validate(zones: &[ForwardZone]) -> Result<(), Invalid> {
    let mut seen: Vec<String> = Vec::new();
    for entry in zones {
        let name = normalize(&entry.zone);
        check(
            name.is_empty(),
            "forward.zones",
            format!(
                "'{}' is the root: forward.upstreams serve every name no zone holds",
                entry.zone
            ),
        )?;
        check(
            name.len() > 253
                || name.split('.').any(|label| {
                    label.is_empty()
                        || label.len() > 63
                        || !label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                }),
            "forward.zones",
            format!("'{}' is not a domain name", entry.zone),
        )?;
        check(
            seen.contains(&name),
            "forward.zones",
            format!("zone '{name}' is listed twice"),
        )?;
        check(
            entry.upstreams.is_empty(),
            "forward.zones",
            format!("zone '{name}' has no upstreams"),
        )?;
        seen.push(name);
    }
    Ok(())
}

/// A zone as the forwarder routes by it.
#[derive(Debug)]
pub(super) struct Pool {
    /// The zone's name (`.` for the top-level upstreams), the `zone` label.
    pub name: Arc<str>,
    /// The zone in wire form, lower case (`\x07cluster\x05local\x00`); empty for `.`.
    wire: Vec<u8>,
    /// Indexes into the forwarder's upstreams, in the configured order.
    pub members: Vec<usize>,
    pub force_tcp: bool,
}

impl Pool {
    pub fn new(name: &str, members: Vec<usize>, force_tcp: bool) -> Pool {
        let name = normalize(name);
        let mut wire = Vec::new();
        if !name.is_empty() {
            for label in name.split('.') {
                wire.push(label.len() as u8);
                wire.extend_from_slice(label.as_bytes());
            }
            wire.push(0);
        }
        Pool {
            name: if name.is_empty() {
                ".".into()
            } else {
                name.into()
            },
            wire,
            members,
            force_tcp,
        }
    }

    /// Whether the wire-form name `qname` (ending in the root label) is this zone or under it.
    fn holds(&self, qname: &[u8]) -> bool {
        let mut at = 0;
        while at < qname.len() {
            let tail = &qname[at..];
            if tail.len() < self.wire.len() {
                return false;
            }
            if tail.len() == self.wire.len() {
                return tail.eq_ignore_ascii_case(&self.wire);
            }
            let len = usize::from(qname[at]);
            if len == 0 || len > 63 {
                return false;
            }
            at += 1 + len;
        }
        false
    }
}

/// The pool for a question section (`msg[HEADER_LEN..question_end]`): the longest zone
/// holding its name, else pool 0 (the top-level upstreams).
pub(super) fn route(pools: &[Pool], question: &[u8]) -> usize {
    if pools.len() == 1 {
        return 0;
    }
    let Some(qname) = question.get(..question.len().saturating_sub(4)) else {
        return 0;
    };
    pools
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(_, pool)| pool.holds(qname))
        .max_by_key(|(_, pool)| pool.wire.len())
        .map_or(0, |(index, _)| index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question(name: &str) -> Vec<u8> {
        let mut q = Vec::new();
        for label in name
            .trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
        {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&[0, 1, 0, 1]);
        q
    }

    #[test]
    fn the_longest_zone_wins_and_everything_else_is_the_default() {
        let pools = [
            Pool::new(".", vec![0], false),
            Pool::new("cluster.local.", vec![1], true),
            Pool::new("svc.cluster.local", vec![2], false),
            Pool::new("in-addr.arpa", vec![1], true),
        ];
        for (name, want) in [
            ("kubernetes.default.svc.cluster.local", 2),
            ("KUBERNETES.Default.SVC.Cluster.Local", 2),
            ("svc.cluster.local", 2),
            ("pod.cluster.local", 1),
            ("cluster.local", 1),
            ("10.0.96.10.in-addr.arpa", 3),
            ("github.com", 0),
            ("notcluster.local", 0),
            ("local", 0),
            (".", 0),
        ] {
            assert_eq!(route(&pools, &question(name)), want, "{name}");
        }
        // No zones: the default without looking.
        assert_eq!(route(&pools[..1], &question("a.cluster.local")), 0);
        // A malformed name falls to the default.
        assert_eq!(route(&pools, &[0x40, b'x', 0, 0, 1, 0, 1]), 0);
    }

    #[test]
    fn zones_are_checked() {
        let zone = |name: &str, upstreams: &[&str]| ForwardZone {
            zone: name.into(),
            upstreams: upstreams.iter().map(|u| u.parse().unwrap()).collect(),
            force_tcp: false,
        };
        assert!(validate(&[zone("cluster.local", &["10.96.0.10"])]).is_ok());
        for (zones, culprit) in [
            (vec![zone(".", &["10.0.0.1"])], "the root"),
            (
                vec![zone("bad name.local", &["10.0.0.1"])],
                "not a domain name",
            ),
            (vec![zone("a..b", &["10.0.0.1"])], "not a domain name"),
            (
                vec![
                    zone("Cluster.Local.", &["10.0.0.1"]),
                    zone("cluster.local", &["10.0.0.2"]),
                ],
                "listed twice",
            ),
            (vec![zone("cluster.local", &[])], "no upstreams"),
        ] {
            let e = validate(&zones).unwrap_err().to_string();
            assert!(e.contains(culprit) && e.contains("forward.zones"), "{e}");
        }
    }
}
