//! Integration tests, grouped by topic, sharing one harness. Only loopback addresses and
//! namespaces the tests create are ever sent traffic.
//!
//! Two tiers. The fast tier — `cargo test` on any machine, without root or system tools —
//! runs dnslens in process or as its binary against in-process upstreams (hickory-server
//! serving the demo zones, scripted UDP upstreams) and an in-process OTLP receiver. The
//! system tier (`--features dnslens/system-tests`: what `scripts/test.sh` and CI run) adds
//! the real components: Knot and dig, the resolvers in their own namespaces, iptables
//! faults, the control plane, kube-proxy, Prometheus, Jaeger, Chromium, the image under
//! runc, cargo-deny; a tool that is missing fails its test.
// The fast tier leaves the system tier's helpers unused.
#![cfg_attr(not(feature = "system-tests"), allow(dead_code, unused_imports))]

mod harness;
mod otlp_receiver;

// The fast tier.
mod admin;
mod anomalies;
mod bad_input;
mod cli;
mod faults;
mod forwarding;
mod reload;
mod tracing;

// The system tier.
macro_rules! system_tier {
    ($($module:ident)*) => {
        $(#[cfg(feature = "system-tests")] mod $module;)*
    };
}
system_tier! {
    alerts
    cache
    cluster
    cluster_view
    control_plane
    data_path
    differential
    dnstap
    flood
    fuzz_seeds
    image
    jaeger
    knot
    kubernetes
    lifecycle
    load_models
    namespaces
    node_setup
    pod_identity
    prometheus
    resolvers
    service_fallback
    supply_chain
    ui
    upstream_faults
    zones
}
