#!/usr/bin/env bash
# Every test dnslens has, from a fresh Debian machine: installs the real components the
# tests use (Knot, dig, a Kubernetes control plane), then formatting, lints, licenses (cargo deny), unit and
# integration tests, a short run of every fuzz target, and the benchmarks' build.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
# The control plane the cluster tests start (etcd, kube-apiserver, kubectl, CoreDNS,
# Prometheus with Kubernetes discovery, the Prometheus Operator's CRDs), built from Go
# modules and cached outside the clone: ~19 min cold on 2 cores, a second warm
# (scripts/control-plane.sh).
scripts/control-plane.sh build
export PATH="$PATH:/usr/sbin:/sbin"   # knotd lives in /usr/sbin
# The chart tests render with the real Helm library through helm-template: the team's
# shared/tools copy when this checkout sits beside it, else the copy in scripts/vendor.
if [[ -z "${HELM_TEMPLATE:-}" ]]; then
  HELM_TEMPLATE=$(pwd)/scripts/vendor/helm-template
  [[ -x ../shared/tools/helm-template ]] && HELM_TEMPLATE=$(cd ../shared/tools && pwd)/helm-template
fi
export HELM_TEMPLATE

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked --features dnslens/system-tests -- -D warnings
echo "== cargo deny (licenses, bans, sources: deny.toml)"
target/tools/bin/cargo-deny check licenses bans sources
# Advisories need the RustSec database, which is a git repository on GitHub: checked against
# a local copy when there is one (no fetch), else said plainly.
advisory_dbs=${CARGO_HOME:-$HOME/.cargo}/advisory-dbs
if compgen -G "$advisory_dbs/advisory-db-*" >/dev/null; then
  echo "== cargo deny advisories (the local copy in $advisory_dbs)"
  target/tools/bin/cargo-deny --offline check advisories
else
  echo "== cargo deny advisories: NOT CHECKED — no local copy of the RustSec advisory database in $advisory_dbs (run \`cargo deny fetch\` where GitHub is reachable)"
fi
echo "== cargo test (both tiers: --features dnslens/system-tests)"
cargo test --workspace --locked --features dnslens/system-tests
echo "== fuzz: every target 15 s from the committed seeds (long runs: scripts/reliability.sh)"
scripts/fuzz.sh 15
echo "== cargo bench --no-run (the criterion benchmarks compile; run them with cargo bench -p dnslens)"
cargo bench --no-run --locked --profile dev -p dnslens
