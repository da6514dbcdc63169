//! The cluster-wide view: "which lookups were abnormal in this window, and why?" across every
//! dnslens — every sidecar and every node — read back from the tracing backend they export
//! to, not from a home-made aggregator. Every anomalous lookup is always exported as a trace
//! (see `telemetry`), so the backend holds the cluster's journal; this module finds those
//! traces again and turns each into the journal's own [`Entry`], with an `instance` (the
//! dnslens that saw it: `node/pod`).
//!
//! Backends: Jaeger's query API (`jaeger=URL`, e.g. `jaeger=http://jaeger-query:16686`), see
//! `jaeger`. The lookup span's exact tags are what is searched: `dnslens.anomalous`,
//! `dnslens.anomaly.<kind>`, `dnslens.client.k8s.namespace.name`,
//! `dnslens.client.k8s.workload.name`, `dnslens.lookup.name` (the shapes are measured against a
//! real Jaeger by the integration tests).
//!
//! Used by `dnslens anomalies --backend jaeger=URL` and by the timeline page: `ui.backend`
//! (same syntax) lets a running dnslens's page show the cluster's window
//! (`/debug/anomalies?scope=cluster`), and `dnslens ui --backend jaeger=URL` serves the page
//! from a workstation. `ui.backend_service` / `--service` [dnslens] is the `service.name` the
//! instances export under.

mod jaeger;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use jaeger::Jaeger;

use crate::anomaly::journal::{Entry, EntryFilter, Window};

/// Where the cluster's traces are read from (`--backend` / `ui.backend`).
#[derive(Debug, Clone, PartialEq)]
pub enum BackendConfig {
    /// Jaeger's query service, its base URL (the UI's address).
    Jaeger(url::Url),
}

impl std::str::FromStr for BackendConfig {
    type Err = String;

    /// `jaeger=URL` (http or https).
    fn from_str(text: &str) -> Result<BackendConfig, String> {
        let Some((kind, url)) = text.split_once('=') else {
            return Err(format!(
                "'{text}' is not KIND=URL (e.g. jaeger=http://jaeger-query:16686)"
            ));
        };
        match kind {
            "jaeger" => {
                let url = url::Url::parse(url).map_err(|e| format!("'{url}': {e}"))?;
                if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                    return Err(format!("'{url}' is not an http(s) URL with a host"));
                }
                Ok(BackendConfig::Jaeger(url))
            }
            other => Err(format!("backend '{other}' is not known (jaeger)")),
        }
    }
}

impl<'de> serde::Deserialize<'de> for BackendConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for BackendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendConfig::Jaeger(url) => write!(f, "Jaeger at {url}"),
        }
    }
}

/// The `service.name` the instances export under, unless told otherwise.
pub const DEFAULT_SERVICE: &str = "dnslens";

/// One request to the backend, at most.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the cluster's window could not be read: one line each.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot reach {backend}: {reason}")]
    Unreachable { backend: String, reason: String },
    #[error("{backend} refused the search: {reason}")]
    Refused { backend: String, reason: String },
    #[error("{backend} answered something that is not a trace search result: {reason}")]
    Garbage { backend: String, reason: String },
    #[error(
        "more than {limit} abnormal lookups in this window at {backend}: narrow the window or filter by kind, namespace or name"
    )]
    TooMany { backend: String, limit: usize },
    #[error("the backend client: {0}")]
    Client(String),
}

/// The cluster's abnormal lookups of a window.
#[derive(Debug, Default)]
pub struct ClusterWindow {
    /// Newest first, each with its `instance`.
    pub entries: Vec<Entry>,
    /// Traces that matched the search but are not dnslens lookups (no `dns.lookup` root).
    pub skipped: usize,
    /// Requests made to the backend.
    pub requests: usize,
}

/// A backend to read the cluster's window from.
#[derive(Clone)]
pub struct ClusterView {
    jaeger: Jaeger,
}

impl ClusterView {
    pub fn build(config: &BackendConfig, service: &str) -> Result<ClusterView, BackendError> {
        match config {
            BackendConfig::Jaeger(url) => Ok(ClusterView {
                jaeger: Jaeger::new(url.clone(), service, REQUEST_TIMEOUT)?,
            }),
        }
    }

    /// The abnormal lookups of `window` across every instance, filtered, newest first.
    pub async fn anomalies(
        &self,
        window: &Window,
        filter: &EntryFilter,
    ) -> Result<ClusterWindow, BackendError> {
        self.jaeger.anomalies(window, filter).await
    }
}
