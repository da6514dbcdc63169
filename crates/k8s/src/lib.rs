//! dnslens's Kubernetes pieces that run beside the proxy rather than in it:
//! - [`inject`]: sidecar injection — `dnslens inject` on YAML, and the mutating admission
//!   webhook (`inject::webhook`);
//! - [`node_setup`]: node-local mode's interface, addresses and NOTRACK rules
//!   (`dnslens node-setup up|down|hold`), and the status the serving process exports.
//!
//! The binary (`dnslens`, in `proxy/`) wires them to its command line and its signal
//! handling; nothing here depends on the proxy.

#![forbid(unsafe_code)]

pub mod inject;
pub mod node_setup;
