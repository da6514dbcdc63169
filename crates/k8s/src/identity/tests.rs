use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::*;

fn metrics() -> IdentityMetrics {
    IdentityMetrics::register(&mut Registry::default())
}

fn table(max_pods: usize) -> Identities {
    let config = PodIdentityConfig {
        enabled: true,
        max_pods,
        stale_after: Duration::from_secs(60),
        ..PodIdentityConfig::default()
    };
    Identities::new(&config, &metrics())
}

/// A pod as the API server returns it; `owner` is (kind, name).
fn pod(name: &str, uid: &str, ip: &str, phase: &str, owner: Option<(&str, &str)>) -> Pod {
    let mut value = json!({
        "metadata": {"name": name, "namespace": "team-a", "uid": uid,
                     "labels": {"pod-template-hash": "7d9c5b"}},
        "spec": {"containers": [{"name": "app"}], "nodeName": "node-1"},
        "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]},
    });
    if let Some((kind, owner)) = owner {
        value["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "apps/v1", "kind": kind, "name": owner, "uid": "o", "controller": true,
        }]);
    }
    serde_json::from_value(value).unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn who(ids: &Identities, address: &str) -> Option<String> {
    ids.of(ip(address), Instant::now())
        .map(|c| format!("{}/{}", c.pod.namespace, c.pod.pod))
}

#[test]
fn workloads_are_read_from_owners_as_the_controllers_name_them() {
    let cases = [
        (Some(("ReplicaSet", "web-7d9c5b")), ("Deployment", "web")),
        (
            Some(("ReplicaSet", "web-other")),
            ("ReplicaSet", "web-other"),
        ),
        (Some(("StatefulSet", "db")), ("StatefulSet", "db")),
        (Some(("DaemonSet", "agent")), ("DaemonSet", "agent")),
        (
            Some(("Job", "nightly-fetch-29012345")),
            ("CronJob", "nightly-fetch"),
        ),
        (Some(("Job", "migrate-1")), ("Job", "migrate-1")),
        (None, ("Pod", "p")),
    ];
    for (owner, (kind, name)) in cases {
        let p = pod("p", "u", "10.0.0.1", "Running", owner);
        assert_eq!(
            workload_of(&p),
            (kind.to_string(), name.to_string()),
            "{owner:?}"
        );
    }
}

#[test]
fn an_address_belongs_to_the_last_pod_that_had_it_whatever_order_events_come_in() {
    let ids = table(10);
    let old = pod("old", "u1", "10.0.0.5", "Running", None);
    let new = pod("new", "u2", "10.0.0.5", "Running", None);
    ids.apply(&old);
    assert_eq!(who(&ids, "10.0.0.5").as_deref(), Some("team-a/old"));
    // The new pod got the address before the old one's deletion reached us.
    ids.apply(&new);
    ids.delete(&old);
    assert_eq!(who(&ids, "10.0.0.5").as_deref(), Some("team-a/new"));
    // An ended pod gives its address up, but only its own.
    ids.apply(&pod("old", "u1", "10.0.0.5", "Succeeded", None));
    assert_eq!(who(&ids, "10.0.0.5").as_deref(), Some("team-a/new"));
    ids.apply(&pod("new", "u2", "10.0.0.5", "Failed", None));
    assert_eq!(who(&ids, "10.0.0.5"), None);
    assert_eq!(ids.len(), 0);
}

#[test]
fn a_relist_replaces_the_table_and_drops_pods_deleted_meanwhile() {
    let ids = table(10);
    ids.apply(&pod("a", "ua", "10.0.0.1", "Running", None));
    ids.apply(&pod("b", "ub", "10.0.0.2", "Running", None));
    ids.relist_start();
    ids.relist_pod(&pod("b", "ub", "10.0.0.2", "Running", None));
    // Until the relist is complete, the last known table answers.
    assert_eq!(who(&ids, "10.0.0.1").as_deref(), Some("team-a/a"));
    ids.relist_done();
    assert_eq!(who(&ids, "10.0.0.1"), None);
    assert_eq!(who(&ids, "10.0.0.2").as_deref(), Some("team-a/b"));
}

#[test]
fn host_network_pending_and_ended_pods_are_not_held_and_the_table_is_bounded() {
    let ids = table(2);
    let mut host: serde_json::Value =
        serde_json::to_value(pod("h", "uh", "10.0.0.9", "Running", None)).unwrap();
    host["spec"]["hostNetwork"] = json!(true);
    ids.apply(&serde_json::from_value(host).unwrap());
    let mut pending: serde_json::Value =
        serde_json::to_value(pod("p", "up", "10.0.0.8", "Pending", None)).unwrap();
    pending["status"] = json!({"phase": "Pending"});
    ids.apply(&serde_json::from_value(pending).unwrap());
    assert_eq!(ids.len(), 0);
    ids.apply(&pod("a", "ua", "10.0.0.1", "Running", None));
    ids.apply(&pod("b", "ub", "10.0.0.2", "Running", None));
    ids.apply(&pod("c", "uc", "10.0.0.3", "Running", None));
    assert_eq!(ids.len(), 2);
    assert_eq!(who(&ids, "10.0.0.3"), None);
    assert_eq!(ids.inner.metrics.not_held.get(), 1);
    // A pod already held may still change.
    ids.apply(&pod("b", "ub", "10.0.0.4", "Running", None));
    assert_eq!(who(&ids, "10.0.0.4").as_deref(), Some("team-a/b"));
    assert_eq!(who(&ids, "10.0.0.2"), None);
}

#[test]
fn identities_stay_as_last_known_and_turn_stale_after_the_bound() {
    let ids = table(10);
    ids.apply(&pod("a", "ua", "10.0.0.1", "Running", None));
    ids.watch_synced();
    let t0 = Instant::now();
    assert!(!ids.of(ip("10.0.0.1"), t0).unwrap().stale);
    ids.watch_failed(t0);
    assert!(
        !ids.of(ip("10.0.0.1"), t0 + Duration::from_secs(59))
            .unwrap()
            .stale
    );
    // A second failure does not restart the clock.
    ids.watch_failed(t0 + Duration::from_secs(30));
    let late = ids
        .of(ip("10.0.0.1"), t0 + Duration::from_secs(60))
        .unwrap();
    assert!(late.stale);
    assert_eq!(late.pod.pod, "a");
    assert!(ids
        .namespace_of(ip("10.0.0.1"), t0 + Duration::from_secs(60))
        .is_none());
    ids.watch_synced();
    assert!(
        !ids.of(ip("10.0.0.1"), t0 + Duration::from_secs(61))
            .unwrap()
            .stale
    );
}

#[test]
fn the_table_for_110_pods_costs_under_a_mebibyte() {
    // The kubelet's default maximum: 110 pods, dual-stack, realistic names.
    let ids = table(1024);
    for i in 0..110u32 {
        let mut p = pod(
            &format!("checkout-api-7d9c5b8f6-{i:05}"),
            &format!("5f0c8a52-3f8e-4d7a-9d2b-{i:012}"),
            &format!("10.244.{}.{}", i / 250, i % 250 + 1),
            "Running",
            Some(("ReplicaSet", "checkout-api-7d9c5b")),
        );
        let status = p.status.as_mut().unwrap();
        status
            .pod_ips
            .as_mut()
            .unwrap()
            .push(k8s_openapi::api::core::v1::PodIP {
                ip: format!("fd00::{i:x}"),
            });
        ids.apply(&p);
    }
    assert_eq!(ids.len(), 110);
    // What the table holds: per pod its identity strings and two addresses in two maps.
    let table = ids.inner.table.read().unwrap();
    let strings: usize = table
        .ips_by_uid
        .keys()
        .map(|uid| {
            let pod = table.by_ip.values().find(|p| &p.uid == uid).unwrap();
            pod.namespace.capacity()
                + pod.pod.capacity()
                + pod.workload_kind.capacity()
                + pod.workload.capacity()
                + pod.uid.capacity() * 2
        })
        .sum();
    let entries = table.by_ip.capacity()
        * (std::mem::size_of::<IpAddr>() + std::mem::size_of::<Arc<PodIdentity>>() + 1)
        + table.ips_by_uid.capacity()
            * (std::mem::size_of::<String>() + std::mem::size_of::<Vec<IpAddr>>() + 1)
        + 110 * (2 * std::mem::size_of::<IpAddr>() + std::mem::size_of::<PodIdentity>() + 16);
    let total = strings + entries;
    assert!(total < 1 << 20, "{total} bytes");
    assert!(total > 10_000, "{total} bytes: the count missed something");
}
