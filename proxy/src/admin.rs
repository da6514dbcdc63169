//! Operations endpoints on `admin.listen` (default `127.0.0.1:9253`, loopback so a pod's
//! neighbours cannot read it unless the operator says so; the top-level `metrics_listen`
//! still loads, with a deprecation warning):
//! - `GET /metrics`: every dnslens metric in the Prometheus/OpenMetrics text format;
//! - `GET /healthz`: 200 while the process serves HTTP at all;
//! - `GET /readyz`: 200 once the DNS listeners are bound and the config loaded, 503 while
//!   shutting down (the lameduck period after SIGTERM). Never upstream health: a cluster
//!   DNS outage must not take every pod's readiness (and every Service's endpoints) with
//!   it. `?verbose` adds one line per upstream (in service / put aside) and whether a
//!   forwarding loop was seen — read through [`DataPathHealth`], the one view of the data
//!   path this module has;
//! - `GET /debug/anomalies?since=10m&kind=K`: the anomaly journal as JSON, newest first
//!   (`since` a duration, default 10m, or `from=`/`to=` in RFC 3339 or unix seconds; `kind`
//!   one of `record::Kind`); `?hints=1` gives the tuning hints instead (base names that
//!   walked the whole search list, most queries first); bad parameters get 400 with a
//!   one-line reason. `/debug/*` shows query names and client addresses: it answers
//!   loopback clients and `admin.debug_allow` (CIDRs) only; others get 403.
//!
//!   Also `namespace=`, `workload=`, `name=` (exact). `scope=cluster` reads the window across
//!   every dnslens from the tracing backend of `ui.backend` instead (see `cluster`; 502 with
//!   one line when it cannot be read, 404 when no backend is set).
//! - `GET /ui/`: the anomaly timeline, one self-contained page (`admin/ui.html`: no external
//!   asset, air-gapped clusters) that reads `/debug/anomalies` for the window in its URL;
//!   the same clients as `/debug/*`.
//!
//! With `admin.probe_socket`, `/healthz` and `/readyz` are also served on that unix socket,
//! which only this process holds: node-local on the host's network shares the TCP port with
//! the other pod of a surge update (SO_REUSEPORT), so an HTTP probe there can be answered
//! by either process, while `dnslens probe ready --socket PATH` (an exec probe, the socket
//! in the pod's own emptyDir) asks this one.
//!
//! With `admin.pod_sockets: DIR` (node-local on the host's network), `/metrics?pod=NAME`
//! is answered by pod `NAME`'s process whichever process took the connection (see
//! [`pods`]); without it `pod` is ignored.
//!
//! Anything else is 404; the server reads no request body. `dnslens ui --backend URL`
//! serves only `/ui/` and `/debug/anomalies` (the cluster's window), from a workstation.
//!
//! Config: `admin: {listen}` — the address of these endpoints [127.0.0.1:9253];
//! `admin: {debug_allow}` — networks that may read `/debug/*` and `/ui/` besides
//! loopback [none]; `admin: {node_setup_status}` — `node-setup hold`'s status file, exported
//! as `dnslens_node_setup_repairs_total` and `dnslens_node_setup_last_check_timestamp_seconds`
//! [none]; `admin: {probe_socket}` — the probes' unix socket [none]; `admin: {pod_sockets}` —
//! the directory of the node's dnslens pods' sockets, this one's `$POD_NAME.sock` [none];
//! `admin: {ui: {...}}` (the top-level `ui:` still loads, deprecated): `trace_url` —
//! the page's link to a lookup's trace, `{trace_id}` replaced (e.g. `https://tempo.example/explore?traceId={trace_id}`) [none: the id is shown];
//! `backend` — `jaeger=URL`, the backend of the cluster-wide window [none];
//! `backend_service` — the `service.name` the instances export under [dnslens].

use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::anomaly::journal::{EntryFilter, Journal, Window};
use crate::cluster::ClusterView;
use crate::listen::AccessList;
use crate::record::Kind;

pub mod pods;

/// The `admin:` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The address of `/metrics`, the probes, `/debug/*` and `/ui/`.
    pub listen: std::net::SocketAddr,
    /// Client networks that may read `/debug/*` and `/ui/`, besides loopback.
    pub debug_allow: Vec<ipnet::IpNet>,
    /// `node-setup hold`'s status file (node-local on the link-local address): its repairs
    /// are exported with this process's metrics.
    pub node_setup_status: Option<std::path::PathBuf>,
    /// A unix socket serving `/healthz` and `/readyz` of this process alone (`dnslens probe`).
    pub probe_socket: Option<std::path::PathBuf>,
    /// A directory the node's dnslens pods share: this one serves on `$POD_NAME.sock` there,
    /// and `/metrics?pod=NAME` is relayed to `NAME`'s.
    pub pod_sockets: Option<std::path::PathBuf>,
    /// The timeline page.
    pub ui: UiConfig,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9253)),
            debug_allow: Vec::new(),
            node_setup_status: None,
            probe_socket: None,
            pod_sockets: None,
            ui: UiConfig::default(),
        }
    }
}

/// The `admin.ui:` section (the timeline page).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UiConfig {
    /// The link to a lookup's trace: `{trace_id}` is replaced by its 32 hex digits.
    pub trace_url: Option<String>,
    /// The tracing backend of the cluster-wide window (`jaeger=URL`).
    pub backend: Option<crate::cluster::BackendConfig>,
    /// The `service.name` the instances export under.
    pub backend_service: Option<String>,
}

impl UiConfig {
    /// The cluster-wide view of `backend`, if one is set.
    pub fn cluster_view(&self) -> Result<Option<ClusterView>, crate::cluster::BackendError> {
        self.backend
            .as_ref()
            .map(|b| {
                let service = self
                    .backend_service
                    .as_deref()
                    .unwrap_or(crate::cluster::DEFAULT_SERVICE);
                ClusterView::build(b, service)
            })
            .transpose()
    }
}

impl AdminConfig {
    /// Who may read `/debug/*`: loopback, and `debug_allow`.
    pub fn debug_access(&self) -> AccessList {
        let mut allowed = self.debug_allow.clone();
        allowed.extend(
            ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|n| n.parse::<ipnet::IpNet>().ok()),
        );
        AccessList::new(&allowed)
    }
}

/// The data path as the admin endpoints see it: nothing but what `/readyz?verbose` says.
pub trait DataPathHealth: Send + Sync {
    /// Each upstream of the forwarder serving now, and whether it is in service.
    fn upstreams(&self) -> Vec<(std::net::SocketAddr, bool)>;
    /// The loop probe's verdict: `None` before it came back or when off, else whether the
    /// upstreams lead back to dnslens.
    fn forwarding_loop(&self) -> Option<bool>;
}

/// What the endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    /// What `/readyz?verbose` reports of the data path.
    pub health: Arc<dyn DataPathHealth>,
    pub debug: DebugState,
    /// Cancelled when shutdown begins: `/readyz` turns 503.
    pub draining: CancellationToken,
    /// The node's dnslens pods' sockets (`admin.pod_sockets`).
    pub pods: Option<Arc<pods::PodSockets>>,
}

/// What `/debug/anomalies` and `/ui/` read: this instance's journal, the cluster's backend,
/// or both.
#[derive(Clone)]
pub struct DebugState {
    /// This instance's journal (none when serving the cluster's window only).
    pub journal: Option<Journal>,
    /// The cluster-wide window's backend (`ui.backend`).
    pub cluster: Option<ClusterView>,
    /// Who may read `/debug/*` and `/ui/`.
    pub allowed: Arc<AccessList>,
    /// The timeline page, its settings filled in.
    pub ui_page: Arc<str>,
}

#[derive(Debug, Deserialize)]
struct MetricsParams {
    pod: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ReadyParams {
    verbose: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AnomalyParams {
    since: Option<String>,
    from: Option<String>,
    to: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    workload: Option<String>,
    name: Option<String>,
    hints: Option<String>,
    scope: Option<String>,
}

/// Tuning hints served at most.
const HINTS_SERVED: usize = 50;

/// Serves the endpoints on an already-bound listener until `stop`.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state.clone())
        .merge(debug_router(state.debug));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(stop.cancelled_owned())
    .await
}

/// Binds a unix socket of this process (probes, pod socket) at `path`, replacing a socket a
/// previous run left there (anything else at the path is an error, not removed).
pub fn bind_unix_socket(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ))
        }
        Err(_) => {}
    }
    tokio::net::UnixListener::bind(path)
}

/// `/healthz`, `/readyz` and `/metrics` of this process alone on one of its unix sockets,
/// until `stop`.
pub async fn serve_unix(
    listener: tokio::net::UnixListener,
    state: AdminState,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(own_metrics))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

/// `/debug/anomalies` and `/ui/`: part of every dnslens's admin server, and all of
/// `dnslens ui`'s.
pub fn debug_router(state: DebugState) -> Router {
    Router::new()
        .route("/debug/anomalies", get(anomalies))
        .route("/ui/", get(ui))
        .route(
            "/ui",
            get(|| async { axum::response::Redirect::permanent("/ui/") }),
        )
        .with_state(state)
}

/// `dnslens ui`: the timeline page of the cluster's window, on `listener` until `stop`.
pub async fn serve_cluster_page(
    listener: TcpListener,
    config: &UiConfig,
    allowed: AccessList,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let cluster = config
        .cluster_view()?
        .ok_or_else(|| anyhow::anyhow!("no backend to read the cluster's window from"))?;
    let state = DebugState {
        journal: None,
        cluster: Some(cluster),
        allowed: Arc::new(allowed),
        ui_page: ui_page(config, Scope::ClusterOnly).into(),
    };
    axum::serve(
        listener,
        debug_router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(stop.cancelled_owned())
    .await?;
    Ok(())
}

/// This process's metrics, or with `?pod=NAME` those of pod `NAME`'s process.
async fn metrics(
    State(state): State<AdminState>,
    Query(params): Query<MetricsParams>,
) -> axum::response::Response {
    match (&state.pods, params.pod) {
        (Some(pods), Some(pod)) if !pods.is_own(&pod) => pods.relay_metrics(&pod).await,
        _ => own_metrics(State(state)).await.into_response(),
    }
}

async fn own_metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
        )
            .into_response(),
    }
}

async fn readyz(
    State(state): State<AdminState>,
    Query(params): Query<ReadyParams>,
) -> impl IntoResponse {
    let (status, mut body) = if state.draining.is_cancelled() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_string(),
        )
    } else {
        (StatusCode::OK, "ready\n".to_string())
    };
    if params.verbose.is_some() {
        for (upstream, in_service) in state.health.upstreams() {
            let health = if in_service {
                "in service"
            } else {
                "put aside"
            };
            body.push_str(&format!("upstream {upstream}: {health}\n"));
        }
        let forwarding_loop = state.health.forwarding_loop();
        if forwarding_loop == Some(true) {
            body.push_str(
                "forwarding loop: detected (the upstreams lead back to dnslens; see the log)\n",
            );
        } else if forwarding_loop == Some(false) {
            body.push_str("forwarding loop: none seen\n");
        }
    }
    (status, body)
}

/// Which windows the page offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// This instance's journal, and the cluster's when `ui.backend` is set.
    Instance,
    /// Only the cluster's (`dnslens ui`).
    ClusterOnly,
}

/// The timeline page with its settings — the trace link, what each kind means (from
/// `record::Kind` itself), which windows it can show — in place of its
/// `/*DNSLENS_SETTINGS*/` marker.
pub fn ui_page(config: &UiConfig, scope: Scope) -> String {
    let kinds: serde_json::Map<String, serde_json::Value> = Kind::ALL
        .iter()
        .map(|k| (k.as_str().to_string(), k.explain().into()))
        .collect();
    let settings = serde_json::json!({
        "trace_url": config.trace_url.clone().unwrap_or_default(),
        "kinds": kinds,
        "cluster": config.backend.as_ref().map(ToString::to_string),
        "instance": scope == Scope::Instance,
    });
    // `</` cannot end the script element from inside a string.
    let settings = settings.to_string().replace("</", "<\\/");
    include_str!("admin/ui.html").replace(
        "/*DNSLENS_SETTINGS*/",
        &format!("window.DNSLENS = {settings};"),
    )
}

async fn ui(
    State(state): State<DebugState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
) -> axum::response::Response {
    if !state.allowed.allows(peer.ip()) {
        return (
            StatusCode::FORBIDDEN,
            "/ui answers loopback clients only; allow others with admin.debug_allow\n",
        )
            .into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        state.ui_page.to_string(),
    )
        .into_response()
}

async fn anomalies(
    State(state): State<DebugState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Query(params): Query<AnomalyParams>,
) -> axum::response::Response {
    if !state.allowed.allows(peer.ip()) {
        return (
            StatusCode::FORBIDDEN,
            "/debug answers loopback clients only; allow others with admin.debug_allow\n",
        )
            .into_response();
    }
    let cluster_scope = params.scope.as_deref() == Some("cluster") || state.journal.is_none();
    if let Some(scope) = params
        .scope
        .as_deref()
        .filter(|s| !matches!(*s, "cluster" | "instance"))
    {
        let reason = format!("scope: '{scope}' is neither cluster nor instance\n");
        return (StatusCode::BAD_REQUEST, reason).into_response();
    }
    let hints = params
        .hints
        .as_deref()
        .is_some_and(|h| h != "0" && h != "false");
    if let (Some(journal), true) = (&state.journal, hints) {
        return Json(journal.hints(HINTS_SERVED)).into_response();
    }
    let window = match Window::parse(
        params.since.as_deref(),
        params.from.as_deref(),
        params.to.as_deref(),
    ) {
        Ok(window) => window,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let kind = match params.kind.as_deref().map(str::parse::<Kind>).transpose() {
        Ok(kind) => kind,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("kind: {e}\n")).into_response(),
    };
    let filter = EntryFilter {
        kind,
        namespace: params.namespace,
        workload: params.workload,
        name: params.name,
    };
    match (&state.journal, &state.cluster) {
        (Some(journal), _) if !cluster_scope => {
            Json(journal.query(&window, &filter)).into_response()
        }
        (_, Some(cluster)) => match cluster.anomalies(&window, &filter).await {
            Ok(found) => Json(found.entries).into_response(),
            Err(e) => (StatusCode::BAD_GATEWAY, format!("{e}\n")).into_response(),
        },
        (_, None) => (
            StatusCode::NOT_FOUND,
            "no cluster-wide window: set ui.backend (e.g. jaeger=http://jaeger-query:16686)\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod ui_tests {
    use super::*;

    #[test]
    fn the_page_carries_its_settings_and_every_kind_explained() {
        let page = ui_page(
            &UiConfig {
                trace_url: Some("https://tempo.example/trace/{trace_id}</script>".into()),
                ..Default::default()
            },
            Scope::Instance,
        );
        assert!(!page.contains("/*DNSLENS_SETTINGS*/"));
        assert!(page.contains(r#""trace_url":"https://tempo.example/trace/{trace_id}<\/script>""#));
        for kind in Kind::ALL {
            assert!(page.contains(kind.explain()), "{kind:?}");
        }
        // Self-contained: nothing loaded from elsewhere.
        for external in ["src=\"http", "href=\"http", "@import", "<link"] {
            assert!(!page.contains(external), "{external}");
        }
        assert_eq!(page.matches("</script>").count(), 1);
    }
}
