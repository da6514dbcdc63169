//! TLS for `https://` OTLP endpoints (gRPC and HTTP/protobuf alike): the server is checked
//! against the system's trusted roots (the OS store; `SSL_CERT_FILE` / `SSL_CERT_DIR` as
//! OpenSSL reads them) plus the CA certificates of `tracing.ca_file` or
//! `OTEL_EXPORTER_OTLP_CERTIFICATE` — a collector behind an in-cluster CA.
//!
//! gRPC uses the exporter's own tonic TLS; HTTP uses the exporter's hyper client over a
//! rustls connector (the default hyper client speaks plain HTTP only).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The extra CA certificates, as PEM, checked to hold at least one certificate.
pub(super) fn read_ca_file(path: &Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("CA file {}: {e}", path.display()))?;
    let count = CertificateDer::pem_slice_iter(&pem)
        .map(|c| c.map_err(|e| format!("CA file {}: {e}", path.display())))
        .collect::<Result<Vec<_>, _>>()?
        .len();
    if count == 0 {
        return Err(format!(
            "CA file {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(pem)
}

/// gRPC: the system's roots and `extra_ca`.
pub(super) fn grpc_tls(extra_ca: Option<&[u8]>) -> ClientTlsConfig {
    let config = ClientTlsConfig::new().with_native_roots();
    match extra_ca {
        Some(pem) => config.ca_certificate(Certificate::from_pem(pem)),
        None => config,
    }
}

/// HTTP/protobuf over https: the exporter's hyper client on a rustls connector trusting the
/// system's roots and `extra_ca`.
pub(super) fn https_client(
    extra_ca: Option<&[u8]>,
    timeout: Duration,
) -> Result<impl opentelemetry_http::HttpClient + 'static, String> {
    let roots = trusted_roots(extra_ca)?;
    if roots.is_empty() {
        return Err("no trusted CA certificate: the system has none and no CA file is set".into());
    }
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_tls(roots)?)
        .https_only()
        .enable_http1()
        .build();
    Ok(opentelemetry_http::hyper::HyperClient::new(
        connector, timeout, None,
    ))
}

/// The system's trusted roots (unreadable ones skipped, as OpenSSL does) and `extra_ca`.
pub fn trusted_roots(extra_ca: Option<&[u8]>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(system.certs);
    if let Some(pem) = extra_ca {
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("CA certificate: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("CA certificate: {e}"))?;
        }
    }
    Ok(roots)
}

/// A TLS client configuration trusting `roots` (also used to read traces back from a
/// tracing backend, see `cluster`).
pub fn client_tls(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, String> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
}
