//! Integration tests, grouped by topic, sharing one harness. In-process tests run dnslens
//! (the library) in front of a real authoritative server (hickory-server serving the demo
//! zones); `knot` and `cli` run the real binary against Knot DNS with `dig` as the client.
//! Only loopback addresses are ever queried.

mod control_plane;
mod harness;
mod image;
mod jaeger;
mod otlp_receiver;

mod admin;
mod alerts;
mod anomalies;
mod bad_input;
mod cache;
mod cli;
mod cluster;
mod cluster_view;
mod data_path;
mod differential;
mod dnstap;
mod faults;
mod flood;
mod forwarding;
mod fuzz_seeds;
mod knot;
mod kubernetes;
mod lifecycle;
mod load_models;
mod module_graph;
mod namespaces;
mod node_setup;
mod pod_identity;
mod prometheus;
mod reload;
mod resolvers;
mod service_fallback;
mod supply_chain;
mod tracing;
mod ui;
mod upstream_faults;
mod zones;
