//! dnslens's data path: from a client's datagram or TCP frame to its answer.
//!
//! `listen` (UDP/TCP sockets, access list, rate limit) → `pipeline` (`cache`, coalescing,
//! the `mitigate` decisions, autopath) → `forward` (upstream pool, matching, retries) →
//! `request::Replies` back to the client. Each answered query leaves as plain data
//! (`record::QueryTrace`) through a `record::TraceSink`; what reads it (the lookup tracker
//! and its observers, in `dnslens-observe`) is out of reach of this crate. `search` is the
//! search-path model both sides read; `metrics` the bounded label types and counter tables.
//!
//! Below it: `dnslens-wire` (bytes), `dnslens-yaml` (`Invalid`), `dnslens-k8s` (the pod
//! identity table). See ARCHITECTURE.md.

#![forbid(unsafe_code)]

pub mod cache;
pub mod dnstap;
pub mod forward;
#[cfg(test)]
mod fuzz_bytes;
pub mod listen;
pub mod metrics;
pub mod mitigate;
pub mod pipeline;
pub mod ratelimit;
pub mod record;
pub mod request;
pub mod search;
#[cfg(test)]
pub(crate) mod test_messages;
pub mod udp;
