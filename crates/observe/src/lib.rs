//! dnslens's observation: what the data path's answered queries mean.
//!
//! `lookup::Tracker` (its own thread) correlates `record::QueryTrace`s into lookups with the
//! `search` model and hands each finished `record::LookupRecord` to its observers: `anomaly`
//! (the detectors, their counters and the journal) and `telemetry` (OTLP traces). `cluster`
//! reads the cluster's window back from a tracing backend. `background` is the scheduling
//! policy of the tracker's and exporter's threads, so they never preempt a DNS worker.
//!
//! Depends on `dnslens-datapath` for its plain vocabulary only; the data path cannot name
//! anything here. See ARCHITECTURE.md.

#![forbid(unsafe_code)]

pub mod anomaly;
pub mod background;
pub mod cluster;
pub mod lookup;
pub mod telemetry;
