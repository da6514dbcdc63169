//! Metrics answered by the pod that is asked, on a port two processes share.
//!
//! Node-local on the host's network: during a surge update two pods of the DaemonSet run on
//! one node and share the admin port (SO_REUSEPORT), so a scrape of either pod's target
//! reaches either process at random — each switch a counter reset to Prometheus. With
//! `admin.pod_sockets: DIR` (a host directory the node's dnslens pods share), each process
//! also serves its admin endpoints on `DIR/$POD_NAME.sock`, and `/metrics?pod=NAME` on the
//! port is relayed to `NAME`'s socket when another process took the connection: the
//! scrape config sets `pod` from the target's pod name (the chart's ServiceMonitor does).
//! A pod with no socket there (its process has exited) is 404, a malformed name 400.
//!
//! The relay is one HTTP/1.0 GET over the unix socket ([`crate::http1`], as `dnslens probe`
//! asks): the answer is bounded in size and time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http1;

/// The most of a peer's metrics read (a node's dnslens with every workload label: a few MiB).
const MOST: u64 = 64 * 1024 * 1024;
/// How long a peer has to answer: under Prometheus's default scrape timeout.
const PEER_TIMEOUT: Duration = Duration::from_secs(8);

/// This process's name among the node's dnslens pods, and where their sockets are.
#[derive(Debug, Clone)]
pub struct PodSockets {
    dir: PathBuf,
    own: String,
}

/// Why a pod name cannot name a socket.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a pod name (lowercase letters, digits, '-' and '.', at most 253)")]
pub struct BadPodName(String);

impl PodSockets {
    /// `own` is this pod's name (`POD_NAME`).
    pub fn new(dir: &Path, own: &str) -> Result<PodSockets, BadPodName> {
        check_name(own)?;
        Ok(PodSockets {
            dir: dir.to_path_buf(),
            own: own.to_string(),
        })
    }

    /// This process's own socket.
    pub fn own_socket(&self) -> PathBuf {
        self.dir.join(format!("{}.sock", self.own))
    }

    pub fn is_own(&self, pod: &str) -> bool {
        pod == self.own
    }

    /// `pod`'s `/metrics`, as its own process answers it.
    pub async fn relay_metrics(&self, pod: &str) -> Response {
        if let Err(e) = check_name(pod) {
            return (StatusCode::BAD_REQUEST, format!("pod: {e}\n")).into_response();
        }
        let socket = self.dir.join(format!("{pod}.sock"));
        match tokio::time::timeout(PEER_TIMEOUT, get(&socket, "/metrics")).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) if is_gone(&e) => (
                StatusCode::NOT_FOUND,
                format!("pod {pod}: no dnslens of that pod on this node\n"),
            )
                .into_response(),
            Ok(Err(e)) => (StatusCode::BAD_GATEWAY, format!("pod {pod}: {e}\n")).into_response(),
            Err(_) => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("pod {pod}: no answer within {PEER_TIMEOUT:?}\n"),
            )
                .into_response(),
        }
    }
}

/// A Kubernetes object name (RFC 1123 subdomain): it never holds a `/`, so it names a file in
/// the directory and nothing outside it.
fn check_name(name: &str) -> Result<(), BadPodName> {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok = name.len() <= 253
        && edge_ok(name.chars().next())
        && edge_ok(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(BadPodName(name.chars().take(80).collect()))
    }
}

/// No process behind the path: never there, removed at exit, or left by a killed process.
fn is_gone(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    )
}

/// One GET over the unix socket at `socket`, its answer passed on (status, content type and
/// body).
async fn get(socket: &Path, path: &str) -> std::io::Result<Response> {
    let mut stream = tokio::net::UnixStream::connect(socket).await?;
    stream
        .write_all(http1::request(path, "localhost").as_bytes())
        .await?;
    let mut answer = Vec::new();
    stream.take(MOST).read_to_end(&mut answer).await?;
    let not_http = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the peer's answer is not HTTP",
        )
    };
    let answer = http1::parse(&answer).ok_or_else(not_http)?;
    let status = StatusCode::from_u16(answer.status).map_err(|_| not_http())?;
    let mut response = (status, answer.body.to_vec()).into_response();
    if let Some(value) = answer
        .content_type
        .and_then(|v| header::HeaderValue::from_str(v).ok())
    {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_are_kubernetes_names_and_nothing_else() {
        for good in ["dnslens-node-local-x7k2p", "a", "a.b-c", &"a".repeat(253)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "../etc",
            "a/b",
            "A",
            "-a",
            "a-",
            "a b",
            &"a".repeat(254),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
