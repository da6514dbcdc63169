//! Operations endpoints on `metrics_listen` (default `127.0.0.1:9253`, loopback so a pod's
//! neighbours cannot read it unless the operator says so):
//! - `GET /metrics`: every dnslens metric in the Prometheus/OpenMetrics text format;
//! - `GET /healthz`: 200 while the process serves HTTP at all;
//! - `GET /readyz`: 200 when the DNS listeners are bound and at least one upstream is in
//!   service, 503 otherwise.
//!
//! Anything else is 404; the server reads no request body.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::forward::Forwarder;

#[derive(Clone)]
struct AdminState {
    registry: Arc<Registry>,
    forwarder: Arc<Forwarder>,
}

/// Serves the endpoints on an already-bound listener until `stop`.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    forwarder: Arc<Forwarder>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AdminState {
            registry,
            forwarder,
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
