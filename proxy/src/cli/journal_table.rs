//! The anomaly journal as a terminal table (`dnslens anomalies`, and the demo's closing
//! report): newest first, each lookup's queries under it, then one line per kind that
//! appears saying what it means.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::anomaly::journal::{Entry, Hint};
use crate::record::Kind;

/// The journal as a table, newest first, then one line per kind that appears.
pub fn render(entries: &[Entry]) -> String {
    if entries.is_empty() {
        return "no anomalies in this window\n".to_string();
    }
    let mut out = String::new();
    let mut seen: Vec<&str> = Vec::new();
    // Read across the cluster: which dnslens saw each lookup, in a column of its own.
    let instance_width = entries
        .iter()
        .filter_map(|e| e.instance.as_ref().map(String::len))
        .max();
    for e in entries {
        let age = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |now| now.as_secs_f64() - e.time)
            .max(0.0);
        let repeats = if e.repeats > 0 {
            format!("  (and {} more like it within 1 s)", e.repeats)
        } else {
            String::new()
        };
        let waited = e.waited_ms.map_or(String::new(), |w| {
            format!("  (client waited {:.2} s)", w / 1e3)
        });
        // A node-local client is named by its pod (pod identity), else by its address.
        let client = e.client_identity.as_ref().map_or_else(
            || e.client.clone(),
            |id| format!("{} {}", e.client, id.label()),
        );
        let instance = instance_width.map_or(String::new(), |width| {
            format!("{:<width$}  ", e.instance.as_deref().unwrap_or("-"))
        });
        out.push_str(&format!(
            "{:>7} ago  {instance}{:<15} {:<28} {:<9} {}{}{}\n",
            humantime::format_duration(Duration::from_secs(age as u64)).to_string(),
            client,
            e.base,
            e.outcome,
            e.kinds.join(", "),
            waited,
            repeats
        ));
        for q in &e.queries {
            out.push_str(&format!(
                "  {:>+8.1} ms {}{:<5} {:<45} [{}] {} {} answer(s){}  {}\n",
                q.offset_ms,
                if q.retransmission { "resent " } else { "" },
                q.qtype,
                q.name,
                q.search,
                q.rcode,
                q.answers,
                if q.rcode == "NOERROR" && q.answers == 0 && !q.soa {
                    ", no SOA"
                } else {
                    ""
                },
                q.upstreams.join("; ")
            ));
        }
        for k in &e.kinds {
            if !seen.contains(&k.as_str()) {
                seen.push(k);
            }
        }
    }
    out.push_str("\nKinds:\n");
    for k in seen {
        let meaning = k.parse::<Kind>().map_or("unknown kind", Kind::explain);
        out.push_str(&format!("  {k}: {meaning}\n"));
    }
    out
}

/// The tuning hints as a table: names that walked the whole search list before the name
/// itself answered, most queries first, with the advice.
pub fn render_hints(hints: &[Hint]) -> String {
    if hints.is_empty() {
        return "no tuning hints: no lookup walked the whole search list before its name answered\n"
            .to_string();
    }
    let mut out = format!("{:<40} {:>8} {:>8}\n", "name", "lookups", "queries");
    for h in hints {
        out.push_str(&format!(
            "{:<40} {:>8} {:>8}\n",
            h.base, h.lookups, h.queries
        ));
    }
    out.push_str(
        "\nEach of these lookups tried every search suffix before the name itself answered: end\n\
         these names with a dot (\"github.com.\") or lower ndots (options ndots:2) for the pods\n\
         that ask them, and each lookup takes one A/AAAA pair instead of a walk.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::journal::EntryQuery;

    fn entry(kinds: &[&str]) -> Entry {
        Entry {
            time: 0.0,
            client: "10.0.0.7".into(),
            base: "alauda.cn".into(),
            outcome: "nodata".into(),
            kinds: kinds.iter().map(|k| k.to_string()).collect(),
            repeats: 2,
            waited_ms: Some(1003.0),
            trace_id: String::new(),
            queries: vec![EntryQuery {
                name: "alauda.cn.default.svc.cluster.local".into(),
                qtype: "AAAA".into(),
                search: "suffix 0".into(),
                rcode: "NXDOMAIN".into(),
                answers: 0,
                soa: true,
                upstreams: Vec::new(),
                offset_ms: 1003.5,
                duration_ms: 0.2,
                retransmission: true,
            }],
            client_identity: None,
            instance: None,
        }
    }

    #[test]
    fn a_node_local_client_is_named_by_its_pod() {
        let mut named = entry(&["client_retry"]);
        named.client_identity = Some(crate::anomaly::journal::EntryIdentity {
            namespace: "team-a".into(),
            pod: "web-7d9c5b-x2x9q".into(),
            workload_kind: "Deployment".into(),
            workload: "web".into(),
            stale: true,
        });
        let table = render(&[named]);
        assert!(
            table.contains("10.0.0.7 team-a/web-7d9c5b-x2x9q (stale)"),
            "{table}"
        );
    }

    #[test]
    fn lookups_read_across_the_cluster_say_which_instance_saw_them() {
        let mut sidecar = entry(&["client_retry"]);
        sidecar.instance = Some("web-7d9c5b-x2x9q".into());
        let mut node = entry(&["parallel_race"]);
        node.instance = Some("node-1".into());
        let table = render(&[sidecar, node]);
        assert!(
            table.contains(" ago  web-7d9c5b-x2x9q  10.0.0.7 "),
            "{table}"
        );
        assert!(
            table.contains(" ago  node-1            10.0.0.7 "),
            "{table}"
        );
        assert!(!render(&[entry(&["client_retry"])]).contains(" ago  -"));
    }

    #[test]
    fn each_kind_that_appears_is_explained_once() {
        let table = render(&[
            entry(&["empty_noerror_search"]),
            entry(&["empty_noerror_search", "client_retry"]),
        ]);
        assert!(table.contains("alauda.cn"), "{table}");
        assert!(table.contains("(and 2 more like it within 1 s)"), "{table}");
        assert!(table.contains("(client waited 1.00 s)"), "{table}");
        assert!(
            table.contains("  +1003.5 ms resent AAAA  alauda.cn.default.svc.cluster.local"),
            "{table}"
        );
        assert_eq!(
            table.matches("empty_noerror_search: ").count(),
            1,
            "{table}"
        );
        assert!(table.contains("musl/Alpine clients stop here"), "{table}");
        assert!(table.contains("asked the same question again"), "{table}");
        assert_eq!(render(&[]), "no anomalies in this window\n");
    }

    #[test]
    fn hints_are_listed_with_the_advice() {
        let table = render_hints(&[Hint {
            base: "github.com".into(),
            lookups: 3,
            queries: 24,
        }]);
        assert!(table.contains("github.com"), "{table}");
        assert!(table.contains("       3       24"), "{table}");
        assert!(table.contains("lower ndots"), "{table}");
        assert!(render_hints(&[]).starts_with("no tuning hints"));
    }
}
