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
mod module_graph;
mod reload;
mod tracing;

// The system tier.
#[cfg(feature = "system-tests")]
mod alerts;
#[cfg(feature = "system-tests")]
mod cache;
#[cfg(feature = "system-tests")]
mod cluster;
#[cfg(feature = "system-tests")]
mod cluster_view;
#[cfg(feature = "system-tests")]
mod control_plane;
#[cfg(feature = "system-tests")]
mod data_path;
#[cfg(feature = "system-tests")]
mod differential;
#[cfg(feature = "system-tests")]
mod dnstap;
#[cfg(feature = "system-tests")]
mod flood;
#[cfg(feature = "system-tests")]
mod fuzz_seeds;
#[cfg(feature = "system-tests")]
mod image;
#[cfg(feature = "system-tests")]
mod jaeger;
#[cfg(feature = "system-tests")]
mod knot;
#[cfg(feature = "system-tests")]
mod kubernetes;
#[cfg(feature = "system-tests")]
mod lifecycle;
#[cfg(feature = "system-tests")]
mod load_models;
#[cfg(feature = "system-tests")]
mod namespaces;
#[cfg(feature = "system-tests")]
mod node_setup;
#[cfg(feature = "system-tests")]
mod pod_identity;
#[cfg(feature = "system-tests")]
mod prometheus;
#[cfg(feature = "system-tests")]
mod resolvers;
#[cfg(feature = "system-tests")]
mod service_fallback;
#[cfg(feature = "system-tests")]
mod supply_chain;
#[cfg(feature = "system-tests")]
mod ui;
#[cfg(feature = "system-tests")]
mod upstream_faults;
#[cfg(feature = "system-tests")]
mod zones;
