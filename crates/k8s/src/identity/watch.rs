//! The watch on this node's pods: list (field selector `spec.nodeName=NODE`), then watch
//! from the list's resource version with bookmarks, re-watching from the last version when
//! the server ends a watch, and relisting after a failure or a "too old" (410) answer. A
//! failure is retried with back-off (0.5 s doubling to 10 s); the table keeps the last
//! known pods meanwhile. The kube client is built once (in-cluster ServiceAccount, or the
//! `pod_identity.kubeconfig` file), with rustls.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::Client;
use tokio_util::sync::CancellationToken;

use super::{Identities, PodIdentityConfig};

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A watch is renewed at least this often (the server's own limit is longer).
const WATCH_TIMEOUT_SECONDS: u32 = 290;

/// Why the watch cannot start at all (a configuration error, said once at start).
#[derive(Debug, thiserror::Error)]
pub enum WatchSetupError {
    #[error("pod_identity: no node name (set pod_identity.node_name or NODE_NAME)")]
    NoNode,
    #[error("pod_identity: kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("pod_identity: no Kubernetes client configuration: {0}")]
    Infer(String),
    #[error("pod_identity: cannot build the Kubernetes client: {0}")]
    Client(String),
}

/// Builds the client and the field selector for `config`.
pub async fn client(
    config: &PodIdentityConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Client, String), WatchSetupError> {
    let node = config.node(env).ok_or(WatchSetupError::NoNode)?;
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let error = |message: String| WatchSetupError::Kubeconfig {
                path: path.display().to_string(),
                message,
            };
            let file =
                kube::config::Kubeconfig::read_from(path).map_err(|e| error(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(|e| error(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| WatchSetupError::Infer(e.to_string()))?,
    };
    let client =
        Client::try_from(kube_config).map_err(|e| WatchSetupError::Client(e.to_string()))?;
    Ok((client, format!("spec.nodeName={node}")))
}

/// Keeps `identities` in step with the pods of the node until `stop`.
pub async fn run(
    client: Client,
    selector: String,
    identities: Identities,
    stop: CancellationToken,
) {
    let api: Api<Pod> = Api::all(client);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = list_and_watch(&api, &selector, &identities) => outcome,
        };
        match outcome {
            Ok(()) => backoff = FIRST_BACKOFF,
            Err(e) => {
                identities.watch_failed(Instant::now());
                tracing::warn!(error = %e, retry_in = ?backoff, "pod identity: watch failed; identities kept as last known");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                identities.refresh_stale(Instant::now());
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One list and the watches that follow it; returns `Ok` when a relist is due (410).
async fn list_and_watch(
    api: &Api<Pod>,
    selector: &str,
    identities: &Identities,
) -> Result<(), kube::Error> {
    let list = api.list(&ListParams::default().fields(selector)).await?;
    identities.relist_start();
    for pod in &list.items {
        identities.relist_pod(pod);
    }
    identities.relist_done();
    identities.watch_synced();
    tracing::info!(pods = identities.len(), "pod identity: synced");
    let mut version = list.metadata.resource_version.unwrap_or_default();
    let params = WatchParams::default()
        .fields(selector)
        .timeout(WATCH_TIMEOUT_SECONDS); // bookmarks on, kube's default
    loop {
        let events = api.watch(&params, &version).await?;
        identities.watch_synced();
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event? {
                WatchEvent::Added(pod) | WatchEvent::Modified(pod) => {
                    identities.apply(&pod);
                    version = pod.metadata.resource_version.unwrap_or(version);
                }
                WatchEvent::Deleted(pod) => {
                    identities.delete(&pod);
                    version = pod.metadata.resource_version.unwrap_or(version);
                }
                WatchEvent::Bookmark(bookmark) => version = bookmark.metadata.resource_version,
                WatchEvent::Error(status) if status.code == 410 => return Ok(()),
                WatchEvent::Error(status) => return Err(kube::Error::Api(status)),
            }
        }
    }
}
