//! Operations endpoints on `metrics_listen` (default `127.0.0.1:9253`, loopback so a pod's
//! neighbours cannot read it unless the operator says so):
//! - `GET /metrics`: every dnslens metric in the Prometheus/OpenMetrics text format;
//! - `GET /healthz`: 200 while the process serves HTTP at all;
//! - `GET /readyz`: 200 when the DNS listeners are bound and at least one upstream is in
//!   service, 503 otherwise;
//! - `GET /debug/anomalies?since=10m&kind=K`: the anomaly journal as JSON, newest first
//!   (`since` a duration, default 10m, or `from=`/`to=` in RFC 3339 or unix seconds; `kind`
//!   one of `record::Kind`); `?hints=1` gives the tuning hints instead (base names that
//!   walked the whole search list, most queries first); bad parameters get 400 with a
//!   one-line reason.
//!
//! Anything else is 404; the server reads no request body.

use std::sync::Arc;

use axum::extract::{Query, State};
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
use crate::record::Kind;

#[derive(Clone)]
struct AdminState {
    registry: Arc<Registry>,
    forwarder: Arc<Forwarder>,
    journal: Journal,
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
    registry: Arc<Registry>,
    forwarder: Arc<Forwarder>,
    journal: Journal,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/debug/anomalies", get(anomalies))
        .with_state(AdminState {
            registry,
            forwarder,
            journal,
        });
    axum::serve(listener, app)
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

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.forwarder.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no upstream in service\n")
    }
}

async fn anomalies(
    State(state): State<AdminState>,
    Query(params): Query<AnomalyParams>,
) -> impl IntoResponse {
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
