//! dnslens's Kubernetes pieces:
//! - [`identity`]: pod identity (node-local) — a watch on this node's pods through the API
//!   server and the client IP → pod table the lookup tracker and autopath read;
//! - [`inject`]: sidecar injection — `dnslens inject` on YAML, and the mutating admission
//!   webhook (`inject::webhook`);
//! - [`node_setup`]: node-local mode's interface, addresses and NOTRACK rules
//!   (`dnslens node-setup up|down|hold`), and the status the serving process exports.
//!
//! The binary (`dnslens`, in `proxy/`) wires them to its command line and its signal
//! handling; nothing here depends on the proxy (the data path depends on `identity`'s
//! plain types and table, not the other way).

#![forbid(unsafe_code)]

pub mod identity;
pub mod inject;
pub mod node_setup;
