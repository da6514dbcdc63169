//! Operations endpoints on `metrics_listen` (default `127.0.0.1:9253`, loopback so a pod's
//! neighbours cannot read it unless the operator says so):
//! - `GET /metrics`: every dnslens metric in the Prometheus/OpenMetrics text format;
//! - `GET /healthz`: 200 while the process serves HTTP at all;
//! - `GET /readyz`: 200 once the DNS listeners are bound and the config loaded, 503 while
//!   shutting down (the lameduck period after SIGTERM). Never upstream health: a cluster
//!   DNS outage must not take every pod's readiness (and every Service's endpoints) with
//!   it. `?verbose` adds one line per upstream (in service / put aside) and whether a
//!   forwarding loop was seen (see `pipeline::LoopGuard`);
//! - `GET /debug/anomalies?since=10m&kind=K`: the anomaly journal as JSON, newest first
//!   (`since` a duration, default 10m, or `from=`/`to=` in RFC 3339 or unix seconds; `kind`
//!   one of `record::Kind`); `?hints=1` gives the tuning hints instead (base names that
//!   walked the whole search list, most queries first); bad parameters get 400 with a
//!   one-line reason. `/debug/*` shows query names and client addresses: it answers
//!   loopback clients and `admin.debug_allow` (CIDRs) only; others get 403.
//!
//! - `GET /ui/`: the anomaly timeline, one self-contained page (`admin/ui.html`: no external
//!   asset, air-gapped clusters) that reads `/debug/anomalies` for the window in its URL;
//!   the same clients as `/debug/*`.
//!
//! Anything else is 404; the server reads no request body.
//!
//! Config: `admin: {debug_allow}` — networks that may read `/debug/*` and `/ui/` besides
//! loopback [none]; `ui: {trace_url}` — the page's link to a lookup's trace, `{trace_id}`
//! replaced (e.g. `https://tempo.example/explore?traceId={trace_id}`) [none: the id is shown].

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

use crate::anomaly::journal::{Journal, Window};
use crate::forward::Forwarder;
use crate::listen::Acl;
use crate::record::Kind;

/// The `admin:` section.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Client networks that may read `/debug/*` and `/ui/`, besides loopback.
    pub debug_allow: Vec<ipnet::IpNet>,
}

/// The `ui:` section (the timeline page).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UiConfig {
    /// The link to a lookup's trace: `{trace_id}` is replaced by its 32 hex digits.
    pub trace_url: Option<String>,
}

impl AdminConfig {
    /// Who may read `/debug/*`: loopback, and `debug_allow`.
    pub fn debug_acl(&self) -> Acl {
        let mut allowed = self.debug_allow.clone();
        allowed.extend(
            ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|n| n.parse::<ipnet::IpNet>().ok()),
        );
        Acl::new(&allowed)
    }
}

/// What the endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    /// The forwarder serving now (a reload replaces it).
    pub forwarder: Arc<arc_swap::ArcSwap<Forwarder>>,
    /// Whether dnslens's loop probe came back (`?verbose`).
    pub loop_guard: Arc<crate::pipeline::LoopGuard>,
    pub journal: Journal,
    /// Who may read `/debug/*` and `/ui/`.
    pub debug: Arc<Acl>,
    /// The timeline page, its settings filled in.
    pub ui_page: Arc<str>,
    /// Cancelled when shutdown begins: `/readyz` turns 503.
    pub draining: CancellationToken,
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
    hints: Option<String>,
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
        .route("/debug/anomalies", get(anomalies))
        .route("/ui/", get(ui))
        .route(
            "/ui",
            get(|| async { axum::response::Redirect::permanent("/ui/") }),
        )
        .with_state(state);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(stop.cancelled_owned())
    .await
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
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
        for (upstream, in_service) in state.forwarder.load().upstream_states() {
            let health = if in_service {
                "in service"
            } else {
                "put aside"
            };
            body.push_str(&format!("upstream {upstream}: {health}\n"));
        }
        if state.loop_guard.detected() {
            body.push_str(
                "forwarding loop: detected (the upstreams lead back to dnslens; see the log)\n",
            );
        } else if state.loop_guard.probed() {
            body.push_str("forwarding loop: none seen\n");
        }
    }
    (status, body)
}

/// The timeline page with its settings — the trace link and what each kind means, from
/// `record::Kind` itself — in place of its `/*DNSLENS_SETTINGS*/` marker.
pub fn ui_page(config: &UiConfig) -> String {
    let kinds: serde_json::Map<String, serde_json::Value> = Kind::ALL
        .iter()
        .map(|k| (k.as_str().to_string(), k.explain().into()))
        .collect();
    let settings = serde_json::json!({
        "trace_url": config.trace_url.clone().unwrap_or_default(),
        "kinds": kinds,
    });
    // `</` cannot end the script element from inside a string.
    let settings = settings.to_string().replace("</", "<\\/");
    include_str!("admin/ui.html").replace(
        "/*DNSLENS_SETTINGS*/",
        &format!("window.DNSLENS = {settings};"),
    )
}

async fn ui(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
) -> axum::response::Response {
    if !state.debug.allows(peer.ip()) {
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
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Query(params): Query<AnomalyParams>,
) -> impl IntoResponse {
    if !state.debug.allows(peer.ip()) {
        return (
            StatusCode::FORBIDDEN,
            "/debug answers loopback clients only; allow others with admin.debug_allow\n",
        )
            .into_response();
    }
    if params
        .hints
        .as_deref()
        .is_some_and(|h| h != "0" && h != "false")
    {
        return Json(state.journal.hints(HINTS_SERVED)).into_response();
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
    Json(state.journal.query(&window, kind)).into_response()
}

#[cfg(test)]
mod ui_tests {
    use super::*;

    #[test]
    fn the_page_carries_its_settings_and_every_kind_explained() {
        let page = ui_page(&UiConfig {
            trace_url: Some("https://tempo.example/trace/{trace_id}</script>".into()),
        });
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
