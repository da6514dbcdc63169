//! Mitigations: fixes for the failure patterns the anomaly detectors name. Each is off by
//! default (but `minimal_any`), counted, and marked on the query's trace. The decisions are pure functions
//! here; [`crate::pipeline`] runs them.
//!
//! - **`musl_shield`**: musl's `getaddrinfo` sends A and AAAA for each search suffix and
//!   stops its walk — failing the lookup — when both come back NOERROR without records
//!   (only an NXDOMAIN lets it try the next suffix). So when an A or AAAA for a search
//!   expansion comes back empty NOERROR, dnslens asks the other of the two types for the
//!   same name (from the cache, or sharing the client's own in-flight twin); if that has no
//!   records either, the name holds no address at all and the answer goes to the client as
//!   NXDOMAIN. An AAAA NODATA of an IPv4-only name (its A has data) is left alone: turning
//!   it into NXDOMAIN would make musl skip a name that resolves.
//!   `dnslens_rewrites_total{kind="empty_noerror_to_nxdomain"}`; span attribute
//!   `dnslens.rewrite`.
//! - **`autopath`** (server-side search, as CoreDNS's autopath plugin): when a query is the
//!   first search expansion of a name (`name.<first suffix>`) and comes back NXDOMAIN,
//!   dnslens walks the rest of the pod's search list and then the absolute name itself,
//!   stops at the first answer that is not NXDOMAIN, and answers the client's first query
//!   with a CNAME from the asked name to the name that resolved plus its records: one round
//!   trip instead of up to ten. If nothing resolves, or an upstream fails on the way, the
//!   client gets the first answer and walks on as usual. It needs the client's exact search
//!   list: a sidecar has it (its own pod's resolv.conf); a node-local proxy serves pods with
//!   different lists, and a CNAME built from a guessed list would send a pod to a name its
//!   own resolver would never have tried — so in node-local mode autopath needs
//!   `pod_identity` and serves only clients whose pod it verified (a known address on this
//!   node, not stale: CoreDNS's `pods verified`), with the list of their namespace plus the
//!   host domains; everyone else walks on their own. (A pod with a custom `dnsConfig` search
//!   list is still read by the convention: keep autopath off where pods set their own.)
//!   `dnslens_autopath_total{result}`: `answered` (CNAME to another name), `first` (the
//!   asked name itself was not NXDOMAIN), `not_found`, `failed`; span attribute
//!   `dnslens.autopath.name`.
//! - **`minimal_any`** — the one on by default, an abuse limit rather than a fix: an ANY
//!   query is answered with RFC 8482's single synthesized HINFO record ("RFC8482") instead
//!   of being forwarded, so dnslens cannot be used to amplify (ANY answers are the largest
//!   an upstream gives). `dnslens_rewrites_total{kind="minimal_any"}`.
//! - **`force_tcp`** (under `forward:`) is in [`crate::forward`].
//!
//! Config keys (`mitigations:`): `autopath`, `musl_shield`.

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::rdata::CNAME;
use hickory_proto::rr::{Name, RData, Record};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::search::SearchModel;
use dnslens_wire::{self as wire, Rcode, HEADER_LEN};
use serde::Deserialize;

/// Fixes for the failure patterns dnslens detects (see `mitigate`); off by default but for
/// `minimal_any`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MitigationsConfig {
    /// Server-side search: walk the pod's search list on the first expansion and answer
    /// with a CNAME to the name that resolved. Needs a known search list (sidecar mode).
    pub autopath: bool,
    /// Answer an empty NOERROR for a search expansion (no A nor AAAA at that name) as
    /// NXDOMAIN, so musl continues its search walk.
    pub musl_shield: bool,
    /// Answer ANY queries with RFC 8482's one HINFO record, without asking upstream (on by
    /// default: an abuse limit, not a workaround).
    pub minimal_any: bool,
}

impl Default for MitigationsConfig {
    fn default() -> Self {
        MitigationsConfig {
            autopath: false,
            musl_shield: false,
            minimal_any: true,
        }
    }
}

/// How an autopath walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AutopathResult {
    Answered,
    First,
    NotFound,
    Failed,
}

impl AutopathResult {
    const ALL: [AutopathResult; 4] = [
        AutopathResult::Answered,
        AutopathResult::First,
        AutopathResult::NotFound,
        AutopathResult::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AutopathResult::Answered => "answered",
            AutopathResult::First => "first",
            AutopathResult::NotFound => "not_found",
            AutopathResult::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone)]
pub struct MitigationMetrics {
    empty_noerror_rewrites: Counter,
    minimal_any: Counter,
    autopath: Vec<Counter>,
}

impl MitigationMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let rewrites = Family::<KindLabels, Counter>::default();
        registry.register(
            "rewrites",
            "Answers dnslens changed on their way to the client, by kind",
            rewrites.clone(),
        );
        let autopath = Family::<ResultLabels, Counter>::default();
        registry.register(
            "autopath",
            "Server-side search walks, by result",
            autopath.clone(),
        );
        let empty_noerror_rewrites = rewrites
            .get_or_create(&KindLabels {
                kind: "empty_noerror_to_nxdomain",
            })
            .clone();
        let minimal_any = rewrites
            .get_or_create(&KindLabels {
                kind: "minimal_any",
            })
            .clone();
        MitigationMetrics {
            empty_noerror_rewrites,
            minimal_any,
            autopath: AutopathResult::ALL
                .iter()
                .map(|r| {
                    autopath
                        .get_or_create(&ResultLabels { result: r.as_str() })
                        .clone()
                })
                .collect(),
        }
    }

    pub fn rewrote_empty_noerror(&self) {
        self.empty_noerror_rewrites.inc();
    }

    pub fn answered_any_minimally(&self) {
        self.minimal_any.inc();
    }

    pub fn autopath(&self, result: AutopathResult) {
        self.autopath[result as usize].inc();
    }
}

/// NOERROR with no answer records.
pub fn is_empty_noerror(answer: &[u8]) -> bool {
    wire::rcode(answer) == Rcode::NOERROR && wire::answer_count(answer) == 0
}

/// Whether the shield should look at this answer: an empty NOERROR to an A/AAAA question
/// (`question` is the raw question section) whose name reads as a search expansion.
pub fn shield_candidate(model: &SearchModel, question: &[u8], qtype: u16, answer: &[u8]) -> bool {
    wire::address_twin(qtype).is_some()
        && is_empty_noerror(answer)
        && wire::question_name(question).is_some_and(|name| model.candidates(&name).len() > 1)
}

/// The names autopath tries after `qname` when `qname` is a first search expansion
/// (`base.<suffix 0>`): the remaining suffixes in order, then the absolute base name.
/// `None` when `qname` is not a first expansion in `model` (only a fixed list qualifies).
pub fn autopath_walk(model: &SearchModel, qname: &str) -> Option<Vec<String>> {
    let SearchModel::Fixed { suffixes, .. } = model else {
        return None;
    };
    walk_after_first(suffixes, qname)
}

/// As [`autopath_walk`] for a node-local client whose namespace pod identity verified: its
/// search list is the Kubernetes convention for that namespace, then the host domains.
pub fn autopath_walk_in(model: &SearchModel, namespace: &str, qname: &str) -> Option<Vec<String>> {
    let SearchModel::Kubernetes {
        cluster_domain,
        host_suffixes,
        ..
    } = model
    else {
        return autopath_walk(model, qname);
    };
    let suffixes: Vec<String> = [
        format!("{namespace}.svc.{cluster_domain}"),
        format!("svc.{cluster_domain}"),
        cluster_domain.clone(),
    ]
    .into_iter()
    .chain(host_suffixes.iter().cloned())
    .collect();
    walk_after_first(&suffixes, qname)
}

/// The names after `qname` = `base.<suffixes[0]>`: `base` under each later suffix, then
/// `base` itself.
fn walk_after_first(suffixes: &[String], qname: &str) -> Option<Vec<String>> {
    let first = suffixes.first()?;
    let base = qname.strip_suffix(first.as_str())?.strip_suffix('.')?;
    if base.is_empty() {
        return None;
    }
    let mut walk: Vec<String> = suffixes[1..]
        .iter()
        .map(|suffix| format!("{base}.{suffix}"))
        .collect();
    walk.push(base.to_string());
    Some(walk)
}

/// The answer autopath sends for `client_query`: `found_answer` (the answer for the name
/// `found`) under the client's question, with a CNAME from the asked name to `found` first.
/// The CNAME's TTL is the smallest TTL of the answer (of the SOA for a NODATA), so a client
/// caches the alias no longer than what it points to.
pub fn cname_answer(client_query: &[u8], found: &str, found_answer: &[u8]) -> Option<Vec<u8>> {
    let mut decoder = BinDecoder::new(client_query.get(HEADER_LEN..)?);
    let asked = Query::read(&mut decoder).ok()?;
    let mut message = Message::from_vec(found_answer).ok()?;
    let target = Name::from_ascii(found)
        .ok()?
        .append_domain(&Name::root())
        .ok()?;
    let ttl = message
        .answers
        .iter()
        .chain(&message.authorities)
        .map(|r| r.ttl)
        .min()
        .unwrap_or(0);
    let alias = Record::from_rdata(asked.name().clone(), ttl, RData::CNAME(CNAME(target)));
    message.queries = vec![asked];
    message.answers.insert(0, alias);
    message.metadata.authoritative = false;
    message.to_vec().ok()
}

#[cfg(test)]
mod tests;
