//! Pod identity (node-local): which pod, namespace and workload a client address belongs to,
//! so a node's lookups say who asked — CoreDNS's `pods verified`, without its per-query
//! API cost.
//!
//! dnslens watches the pods of its own node through the API server (`watch.rs`: a list,
//! then a watch from its resource version, field selector `spec.nodeName=NODE`) and keeps
//! client IP → [`PodIdentity`] in a table the lookup tracker reads when it reports a lookup
//! (and, with autopath on, the pipeline for a client's namespace). DNS never waits for the
//! API: a read is a read lock and a map lookup.
//!
//! - **Correct under IP reuse**: an address belongs to the last running pod that had it; a
//!   pod that ends (Succeeded, Failed, deleted) gives up only the addresses that are still
//!   its own, so a new pod on an old IP keeps its new identity whatever order events come in.
//! - **Relists** (start, after a failed watch, after the server's "too old" answer) replace
//!   the whole table at once, so pods deleted while the watch was down are dropped.
//! - **API unreachable**: identities stay as last known; after `stale_after` they are
//!   marked stale (a span attribute, a journal field) because an address may have passed
//!   to another pod meanwhile. `dnslens_pod_identity_watch_up` shows the watch state;
//!   readiness does not depend on it.
//! - **Bounded**: at most `max_pods` pods (the kubelet's default maximum is 110); more are
//!   not held, and counted. hostNetwork pods share the node's address and are not held.
//!
//! Config keys (`pod_identity:`): `enabled` [false], `node_name` [the `NODE_NAME`
//! variable, which the chart sets from the downward API], `kubeconfig` [in-cluster
//! ServiceAccount, else `KUBECONFIG` / `~/.kube/config`], `stale_after` [5m], `max_pods`
//! [1024].
//!
//! Metrics: `dnslens_pod_identity_watch_up` (1 while the watch is synced),
//! `dnslens_pod_identity_stale` (1 while identities are stale), `dnslens_pod_identity_pods`
//! (pods held), `dnslens_pod_identity_watch_failures_total`,
//! `dnslens_pod_identity_pods_not_held_total` (beyond `max_pods`).

pub mod watch;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;

use dnslens_yaml::invalid::{check, Invalid};

/// A pod as pod identity knows it: plain data, shared by every lookup of its client.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PodIdentity {
    pub namespace: String,
    pub pod: String,
    /// The controller the pod belongs to: `Deployment` (through its ReplicaSet),
    /// `StatefulSet`, `DaemonSet`, `Job`, `CronJob` (through its Job), another owner's kind,
    /// or `Pod` for a pod of its own.
    pub workload_kind: String,
    pub workload: String,
    pub uid: String,
}

/// The identity of a lookup's client and whether it may be out of date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub pod: std::sync::Arc<PodIdentity>,
    /// The watch on the API server has been down longer than `pod_identity.stale_after`:
    /// the address may have passed to another pod since.
    pub stale: bool,
}

/// The `pod_identity:` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PodIdentityConfig {
    pub enabled: bool,
    /// The node whose pods are watched; unset: the `NODE_NAME` environment variable.
    pub node_name: Option<String>,
    /// A kubeconfig file; unset: the in-cluster ServiceAccount, else the usual kubeconfig.
    pub kubeconfig: Option<PathBuf>,
    /// With the watch down this long, identities are marked stale.
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
    pub max_pods: usize,
}

impl Default for PodIdentityConfig {
    fn default() -> Self {
        PodIdentityConfig {
            enabled: false,
            node_name: None,
            kubeconfig: None,
            stale_after: Duration::from_secs(300),
            max_pods: 1024,
        }
    }
}

impl PodIdentityConfig {
    /// Checks the section on its own.
    pub fn validate(&self) -> Result<(), Invalid> {
        check(
            self.max_pods == 0,
            "pod_identity.max_pods",
            "must be above zero",
        )?;
        check(
            self.node_name.as_deref().is_some_and(str::is_empty),
            "pod_identity.node_name",
            "must not be empty (unset, it is read from NODE_NAME)",
        )
    }

    /// The node to watch: `node_name`, else `env("NODE_NAME")`.
    pub fn node(&self, env: impl Fn(&str) -> Option<String>) -> Option<String> {
        self.node_name
            .clone()
            .or_else(|| env("NODE_NAME"))
            .filter(|n| !n.is_empty())
    }
}

/// The pod identity metrics.
#[derive(Clone)]
pub struct IdentityMetrics {
    watch_up: Gauge,
    stale: Gauge,
    pods: Gauge,
    watch_failures: Counter,
    not_held: Counter,
}

impl IdentityMetrics {
    pub fn register(registry: &mut Registry) -> IdentityMetrics {
        let m = IdentityMetrics {
            watch_up: Gauge::default(),
            stale: Gauge::default(),
            pods: Gauge::default(),
            watch_failures: Counter::default(),
            not_held: Counter::default(),
        };
        registry.register(
            "pod_identity_watch_up",
            "1 while the watch on this node's pods is synced with the API server",
            m.watch_up.clone(),
        );
        registry.register(
            "pod_identity_stale",
            "1 while pod identities are stale (the watch down longer than pod_identity.stale_after)",
            m.stale.clone(),
        );
        registry.register(
            "pod_identity_pods",
            "Pods of this node held for naming clients",
            m.pods.clone(),
        );
        registry.register(
            "pod_identity_watch_failures",
            "Lists or watches of this node's pods that failed (retried with back-off)",
            m.watch_failures.clone(),
        );
        registry.register(
            "pod_identity_pods_not_held",
            "Pods not held because pod_identity.max_pods was reached",
            m.not_held.clone(),
        );
        m
    }
}

/// Addresses by pod, pods by address.
#[derive(Default)]
struct Table {
    by_ip: HashMap<IpAddr, Arc<PodIdentity>>,
    ips_by_uid: HashMap<String, Vec<IpAddr>>,
}

impl Table {
    /// Gives up the addresses `uid` still holds.
    fn remove(&mut self, uid: &str) {
        for ip in self.ips_by_uid.remove(uid).unwrap_or_default() {
            if self.by_ip.get(&ip).is_some_and(|p| p.uid == uid) {
                self.by_ip.remove(&ip);
            }
        }
    }

    /// Puts `pod` on `ips` (taking them from whoever had them); false when the table is
    /// full and `pod` is new.
    fn insert(&mut self, pod: PodIdentity, ips: Vec<IpAddr>, max_pods: usize) -> bool {
        if !self.ips_by_uid.contains_key(&pod.uid) && self.ips_by_uid.len() >= max_pods {
            return false;
        }
        self.remove(&pod.uid);
        let pod = Arc::new(pod);
        for ip in &ips {
            if let Some(previous) = self.by_ip.insert(*ip, pod.clone()) {
                if previous.uid != pod.uid {
                    if let Some(theirs) = self.ips_by_uid.get_mut(&previous.uid) {
                        theirs.retain(|i| i != ip);
                    }
                }
            }
        }
        self.ips_by_uid.insert(pod.uid.clone(), ips);
        true
    }
}

struct Inner {
    table: RwLock<Table>,
    /// The table a relist is building, swapped in when it is complete.
    relist: Mutex<Option<Table>>,
    /// Since when the watch has been failing, in ms after `epoch` (`SYNCED` while synced):
    /// an atomic, as the tracker reads it for every query.
    down_since_ms: AtomicU64,
    epoch: Instant,
    stale_after: Duration,
    max_pods: usize,
    metrics: IdentityMetrics,
}

/// `down_since_ms` while the watch is synced.
const SYNCED: u64 = u64::MAX;

/// The identity table: written by the watch, read by the lookup tracker. Cheap to clone.
#[derive(Clone)]
pub struct Identities {
    inner: Arc<Inner>,
}

impl Identities {
    pub fn new(config: &PodIdentityConfig, metrics: &IdentityMetrics) -> Identities {
        Identities {
            inner: Arc::new(Inner {
                table: RwLock::new(Table::default()),
                relist: Mutex::new(None),
                // Not synced yet: down since start (stale only once it was never synced
                // for stale_after, with nothing in the table anyway).
                down_since_ms: AtomicU64::new(0),
                epoch: Instant::now(),
                stale_after: config.stale_after,
                max_pods: config.max_pods,
                metrics: metrics.clone(),
            }),
        }
    }

    /// Who has `ip`, as last known, at `now`.
    pub fn of(&self, ip: IpAddr, now: Instant) -> Option<ClientIdentity> {
        let pod = self.inner.table.read().ok()?.by_ip.get(&ip)?.clone();
        let stale = self.is_stale(now);
        self.inner.metrics.stale.set(i64::from(stale));
        Some(ClientIdentity { pod, stale })
    }

    /// The namespace of the pod with `ip`, if it is known and not stale: the client's
    /// search list is then exact.
    pub fn namespace_of(&self, ip: IpAddr, now: Instant) -> Option<Arc<PodIdentity>> {
        let pod = self.inner.table.read().ok()?.by_ip.get(&ip)?.clone();
        (!self.is_stale(now)).then_some(pod)
    }

    fn is_stale(&self, now: Instant) -> bool {
        let since = self.inner.down_since_ms.load(Ordering::Relaxed);
        if since == SYNCED {
            return false;
        }
        let down_since = self.inner.epoch + Duration::from_millis(since);
        now.saturating_duration_since(down_since) >= self.inner.stale_after
    }

    /// Sets the stale gauge as of `now` (the watch loop calls it while the watch is down).
    pub fn refresh_stale(&self, now: Instant) {
        self.inner.metrics.stale.set(i64::from(self.is_stale(now)));
    }

    /// Pods held.
    pub fn len(&self) -> usize {
        self.inner.table.read().map_or(0, |t| t.ips_by_uid.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn write(&self, change: impl FnOnce(&mut Table)) {
        let mut table = self.inner.table.write().unwrap_or_else(|e| e.into_inner());
        change(&mut table);
        self.inner.metrics.pods.set(table.ips_by_uid.len() as i64);
    }

    /// A pod added or changed (a watch event).
    pub fn apply(&self, pod: &Pod) {
        let max_pods = self.inner.max_pods;
        let not_held = &self.inner.metrics.not_held;
        self.write(|table| match held(pod) {
            Some((identity, ips)) => {
                if !table.insert(identity, ips, max_pods) {
                    not_held.inc();
                }
            }
            None => table.remove(uid(pod)),
        });
    }

    /// A pod deleted (a watch event).
    pub fn delete(&self, pod: &Pod) {
        self.write(|table| table.remove(uid(pod)));
    }

    /// A relist begins: pods come in with [`Identities::relist_pod`] until
    /// [`Identities::relist_done`] replaces the table with them.
    pub fn relist_start(&self) {
        *self.inner.relist.lock().unwrap_or_else(|e| e.into_inner()) = Some(Table::default());
    }

    pub fn relist_pod(&self, pod: &Pod) {
        let mut relist = self.inner.relist.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(table), Some((identity, ips))) = (relist.as_mut(), held(pod)) {
            if !table.insert(identity, ips, self.inner.max_pods) {
                self.inner.metrics.not_held.inc();
            }
        }
    }

    pub fn relist_done(&self) {
        let relisted = self
            .inner
            .relist
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(relisted) = relisted {
            self.write(|table| *table = relisted);
        }
    }

    /// The watch is synced with the API server.
    pub fn watch_synced(&self) {
        self.inner.down_since_ms.store(SYNCED, Ordering::Relaxed);
        self.inner.metrics.watch_up.set(1);
        self.inner.metrics.stale.set(0);
    }

    /// A list or watch failed at `now`.
    pub fn watch_failed(&self, now: Instant) {
        self.inner.metrics.watch_failures.inc();
        self.inner.metrics.watch_up.set(0);
        let ms = now.saturating_duration_since(self.inner.epoch).as_millis();
        let ms = u64::try_from(ms).unwrap_or(SYNCED - 1).min(SYNCED - 1);
        // Only the first failure after a sync starts the clock.
        let _ = self.inner.down_since_ms.compare_exchange(
            SYNCED,
            ms,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        self.refresh_stale(now);
    }
}

fn uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or("")
}

/// The identity and addresses of `pod` when its addresses are its own: it has a UID and
/// addresses, is not on the host's network, and has not ended (an ended pod's addresses
/// go back to the pool).
pub fn held(pod: &Pod) -> Option<(PodIdentity, Vec<IpAddr>)> {
    let uid = pod.metadata.uid.clone()?;
    let spec = pod.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .chain(status.pod_ip.iter().filter_map(|ip| ip.parse().ok()))
        .collect();
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        return None;
    }
    let (workload_kind, workload) = workload_of(pod);
    Some((
        PodIdentity {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            pod: pod.metadata.name.clone().unwrap_or_default(),
            workload_kind,
            workload,
            uid,
        },
        ips,
    ))
}

/// The controller a pod belongs to, read from its owner and labels the way the controllers
/// name what they create (no API call): a ReplicaSet `NAME-HASH` whose hash is the pod's
/// `pod-template-hash` is Deployment `NAME`; a Job `NAME-SCHEDULE` (the CronJob's
/// scheduled time in minutes, eight digits or more) is CronJob `NAME`.
pub fn workload_of(pod: &Pod) -> (String, String) {
    let meta = &pod.metadata;
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    let Some(owner) = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or(owners.first())
    else {
        return ("Pod".into(), meta.name.clone().unwrap_or_default());
    };
    let name = owner.name.as_str();
    match owner.kind.as_str() {
        "ReplicaSet" => {
            let hash = meta
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash"));
            match hash.and_then(|h| name.strip_suffix(h.as_str())?.strip_suffix('-')) {
                Some(deployment) if !deployment.is_empty() => {
                    ("Deployment".into(), deployment.into())
                }
                _ => ("ReplicaSet".into(), name.into()),
            }
        }
        "Job" => match name.rsplit_once('-') {
            Some((cronjob, schedule))
                if !cronjob.is_empty()
                    && schedule.len() >= 8
                    && schedule.bytes().all(|b| b.is_ascii_digit()) =>
            {
                ("CronJob".into(), cronjob.into())
            }
            _ => ("Job".into(), name.into()),
        },
        kind => (kind.into(), name.into()),
    }
}

#[cfg(test)]
mod tests;
