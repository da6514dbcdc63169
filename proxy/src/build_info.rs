//! Which build runs: `dnslens_build_info{version,revision}` (value 1) and the revision the
//! `--version` line prints, stamped by `build.rs`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    revision: &'static str,
}

/// The source revision this binary was built from (see `build.rs`).
pub const REVISION: &str = env!("DNSLENS_REVISION");

/// `dnslens_build_info{version,revision}` 1: which build runs where.
pub fn register(registry: &mut prometheus_client::registry::Registry) {
    let info = Family::<BuildLabels, prometheus_client::metrics::gauge::Gauge>::default();
    info.get_or_create(&BuildLabels {
        version: env!("CARGO_PKG_VERSION"),
        revision: REVISION,
    })
    .set(1);
    registry.register("build_info", "The running build (value 1)", info);
}
