//! `dnslens webhook`: a mutating admission webhook (HTTPS, rustls) that injects the sidecar
//! into pods as they are created, with the same [`super::inject`] as `dnslens inject`, and
//! answers with a JSON patch.
//!
//! Endpoints: `POST /mutate` and `POST /mutate/fail-closed` (AdmissionReview
//! `admission.k8s.io/v1`; the API server refuses a query string in a webhook's service
//! path, so fail-closed is a path of its own; `/mutate?fail_closed=true` still works), `GET /healthz`,
//! `GET /metrics`. Never blocks pod creation because of dnslens: a request it cannot read
//! or a pod it cannot inject is allowed unchanged with a warning — unless the request came
//! through `/mutate/fail-closed`, which the chart's second webhook entry uses for
//! namespaces labelled `dnslens.io/fail-closed=true` (the webhook sees the namespace's
//! labels through the webhook configuration's selector, so it needs no API access).
//!
//! Flags: `--tls-cert`, `--tls-key` (PEM), `--listen` [0.0.0.0:8443], `--config` (the
//! [`super::InjectConfig`] YAML, from the chart's ConfigMap).
//!
//! A rotated certificate (the Secret volume updated by cert-manager or a `helm upgrade`) is
//! picked up without a restart: the files are read again every [`CERT_CHECK_EVERY`] and a
//! changed pair is loaded for new connections; a pair that does not load (half-written,
//! mismatched) is refused and the previous one keeps serving.
//!
//! Metrics: `dnslens_webhook_requests_total{result}`: `injected`, `unchanged` (already
//! injected, skipped on purpose, not a pod), `error` (allowed unchanged, or denied when
//! fail-closed), `dry_run` (a server-side dry run injected: answered, no pod created); `dnslens_webhook_certificate_reloads_total{result}`: `ok`, `error`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use kube_core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube_core::DynamicObject;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{inject, InjectConfig, Outcome};

/// How one admission request went (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReviewResult {
    Injected,
    Unchanged,
    Error,
    /// Injected in a dry run (`kubectl apply --dry-run=server`, a server-side validation):
    /// answered like any other, but no pod was created, so it is not counted as injected.
    DryRun,
}

impl ReviewResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewResult::Injected => "injected",
            ReviewResult::Unchanged => "unchanged",
            ReviewResult::Error => "error",
            ReviewResult::DryRun => "dry_run",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Answers one AdmissionReview body: the AdmissionReview to send back, and how it went.
/// `fail_closed` turns failures into denials.
pub fn review(body: &[u8], config: &InjectConfig, fail_closed: bool) -> (Value, ReviewResult) {
    let raw: Value = match serde_json::from_slice(body) {
        Ok(raw) => raw,
        Err(e) => return failure("", &format!("not JSON: {e}"), fail_closed),
    };
    let uid = raw
        .pointer("/request/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    // The response repeats the review's type, so only an AdmissionReview gets one.
    let api_version = raw.get("apiVersion").and_then(Value::as_str);
    if raw.get("kind").and_then(Value::as_str) != Some("AdmissionReview")
        || !matches!(
            api_version,
            Some("admission.k8s.io/v1" | "admission.k8s.io/v1beta1")
        )
    {
        return failure(
            &uid,
            "not an AdmissionReview (kind AdmissionReview, apiVersion admission.k8s.io/v1)",
            fail_closed,
        );
    }
    let request: AdmissionRequest<DynamicObject> =
        match serde_json::from_value::<AdmissionReview<DynamicObject>>(raw)
            .map_err(|e| e.to_string())
            .and_then(|r| r.try_into().map_err(|e| format!("{e}")))
        {
            Ok(request) => request,
            Err(e) => {
                return failure(
                    &uid,
                    &format!("not an AdmissionReview request: {e}"),
                    fail_closed,
                )
            }
        };
    let response = AdmissionResponse::from(&request);
    let Some(object) = &request.object else {
        return failure(&uid, "the request carries no object", fail_closed);
    };
    let mut original = match serde_json::to_value(object) {
        Ok(v) => v,
        Err(e) => return failure(&uid, &e.to_string(), fail_closed),
    };
    // The object may come without apiVersion/kind; the request says what it is.
    if original.get("kind").is_none() {
        original["kind"] = json!(request.kind.kind);
    }
    let mut mutated = original.clone();
    let namespace = request.namespace.as_deref().unwrap_or("default");
    match inject(&mut mutated, namespace, config) {
        Ok(Outcome::Injected) => {
            let patch = json_patch::diff(&original, &mutated);
            match response.with_patch(patch) {
                Ok(response) if request.dry_run => (to_json(response), ReviewResult::DryRun),
                Ok(response) => (to_json(response), ReviewResult::Injected),
                Err(e) => failure(&uid, &e.to_string(), fail_closed),
            }
        }
        Ok(_) => (to_json(response), ReviewResult::Unchanged),
        Err(e) => failure(&uid, &e.to_string(), fail_closed),
    }
}

/// The AdmissionReview JSON. kube-core serialises the patch bytes as an array of numbers;
/// the API server's `[]byte` field reads either form, but base64 is what Go writes and
/// a quarter of the size, so the patch goes out as base64.
fn to_json(response: AdmissionResponse) -> Value {
    use base64::Engine;
    let mut review = serde_json::to_value(response.into_review()).unwrap_or_else(|_| json!({}));
    if let Some(patch) = review.pointer_mut("/response/patch") {
        if let Some(bytes) = patch.as_array() {
            let bytes: Vec<u8> = bytes
                .iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            *patch = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
    }
    review
}

/// A request dnslens could not serve: allowed with a warning, or denied when fail-closed.
fn failure(uid: &str, message: &str, fail_closed: bool) -> (Value, ReviewResult) {
    tracing::warn!(uid, error = message, fail_closed, "sidecar not injected");
    let text = format!("dnslens: sidecar not injected: {message}");
    let response = if fail_closed {
        json!({"uid": uid, "allowed": false, "status": {"code": 400, "message": text}})
    } else {
        json!({"uid": uid, "allowed": true, "warnings": [text]})
    };
    (
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        }),
        ReviewResult::Error,
    )
}

struct WebhookState {
    config: InjectConfig,
    results: Vec<Counter>,
    registry: Registry,
}

#[derive(Deserialize)]
struct MutateParams {
    #[serde(default)]
    fail_closed: bool,
}

/// Largest AdmissionReview accepted (the API server's own request limit is 3 MiB).
const MAX_BODY: usize = 3 << 20;

/// How often the webhook reads its certificate files again, looking for a rotation.
pub const CERT_CHECK_EVERY: Duration = Duration::from_secs(10);

/// `dnslens_webhook_certificate_reloads_total`, by result.
#[derive(Clone)]
struct CertReloads {
    ok: Counter,
    error: Counter,
}

/// The webhook's routes (without TLS: the tests drive it directly too).
pub fn router(config: InjectConfig) -> Router {
    build(config).0
}

fn build(config: InjectConfig) -> (Router, CertReloads) {
    let mut registry = Registry::with_prefix("dnslens");
    let reload_family = Family::<ResultLabels, Counter>::default();
    registry.register(
        "webhook_certificate_reloads",
        "Rotated TLS certificates loaded (ok) or refused (error)",
        reload_family.clone(),
    );
    // One statement each: get_or_create's read guard lives to the end of its statement,
    // and a second get_or_create in the same one would wait for it forever.
    let ok = reload_family
        .get_or_create(&ResultLabels { result: "ok" })
        .clone();
    let error = reload_family
        .get_or_create(&ResultLabels { result: "error" })
        .clone();
    let reloads = CertReloads { ok, error };
    let family = Family::<ResultLabels, Counter>::default();
    registry.register(
        "webhook_requests",
        "Admission requests answered, by result",
        family.clone(),
    );
    let results = [
        ReviewResult::Injected,
        ReviewResult::Unchanged,
        ReviewResult::Error,
        ReviewResult::DryRun,
    ]
    .iter()
    .map(|r| {
        family
            .get_or_create(&ResultLabels { result: r.as_str() })
            .clone()
    })
    .collect();
    let state = Arc::new(WebhookState {
        config,
        results,
        registry,
    });
    let router = Router::new()
        .route("/mutate", post(mutate))
        .route("/mutate/fail-closed", post(mutate_fail_closed))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state);
    (router, reloads)
}

/// Reads the certificate and key files again every `every`, and loads a changed pair into
/// `tls` (new connections use it; open ones keep theirs).
async fn watch_certificate(
    tls: axum_server::tls_rustls::RustlsConfig,
    cert: PathBuf,
    key: PathBuf,
    every: Duration,
    reloads: CertReloads,
) {
    async fn read_pair(cert: &Path, key: &Path) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
        Ok((tokio::fs::read(cert).await?, tokio::fs::read(key).await?))
    }
    let mut loaded = read_pair(&cert, &key).await.ok();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        // A file missing for a moment (the volume's symlink swap) is looked at next time.
        let Ok(pair) = read_pair(&cert, &key).await else {
            continue;
        };
        if loaded.as_ref() == Some(&pair) {
            continue;
        }
        match tls.reload_from_pem(pair.0.clone(), pair.1.clone()).await {
            Ok(()) => {
                tracing::info!(cert = %cert.display(), "webhook certificate reloaded");
                reloads.ok.inc();
            }
            Err(e) => {
                tracing::warn!(cert = %cert.display(), error = %e,
                    "rotated webhook certificate refused; the previous one keeps serving");
                reloads.error.inc();
            }
        }
        // Tried once per change: a broken pair is not retried (and counted) every tick.
        loaded = Some(pair);
    }
}

async fn mutate(
    State(state): State<Arc<WebhookState>>,
    Query(params): Query<MutateParams>,
    body: Bytes,
) -> impl IntoResponse {
    answer(&state, &body, params.fail_closed)
}

async fn mutate_fail_closed(
    State(state): State<Arc<WebhookState>>,
    body: Bytes,
) -> impl IntoResponse {
    answer(&state, &body, true)
}

fn answer(state: &WebhookState, body: &[u8], fail_closed: bool) -> axum::Json<Value> {
    let (answer, result) = review(body, &state.config, fail_closed);
    state.results[result as usize].inc();
    axum::Json(answer)
}

async fn metrics(State(state): State<Arc<WebhookState>>) -> impl IntoResponse {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            e.to_string(),
        ),
    }
}

/// Where the webhook listens and with which certificate.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// How often to look for a rotated certificate ([`CERT_CHECK_EVERY`]).
    pub cert_check_every: Duration,
}

/// Serves until `stop` completes (the binary's SIGTERM/SIGINT), then drains for up to 5 s.
/// `bound` receives the address once listening (tests).
pub async fn serve(
    settings: WebhookSettings,
    config: InjectConfig,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context;
    // One process-wide crypto provider (ring: no C toolchain beyond cc, no cmake).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls =
        axum_server::tls_rustls::RustlsConfig::from_pem_file(&settings.tls_cert, &settings.tls_key)
            .await
            .with_context(|| {
                format!(
                    "TLS certificate {} / key {}",
                    settings.tls_cert.display(),
                    settings.tls_key.display()
                )
            })?;
    let handle = axum_server::Handle::new();
    let shutdown = handle.clone();
    tokio::spawn(async move {
        stop.await;
        shutdown.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
    });
    let announce = handle.clone();
    tokio::spawn(async move {
        if let Some(addr) = announce.listening().await {
            tracing::info!(%addr, "dnslens webhook serving");
            if let Some(bound) = bound {
                let _ = bound.send(addr);
            }
        }
    });
    let (router, reloads) = build(config);
    tokio::spawn(watch_certificate(
        tls.clone(),
        settings.tls_cert.clone(),
        settings.tls_key.clone(),
        settings.cert_check_every,
        reloads,
    ));
    axum_server::bind_rustls(settings.listen, tls)
        .handle(handle)
        .serve(router.into_make_service())
        .await
        .with_context(|| format!("webhook on {}", settings.listen))
}
