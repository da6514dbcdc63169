#!/usr/bin/env bash
# Installs what the tests and benchmarks need on a Debian machine, if it is missing:
# musl-gcc, golang-go (Go's own resolver) and python3-dnspython (Python's) and iproute2 for
# the resolver-in-a-namespace tests; iptables for faults injected
# inside a test's own namespace; promtool (prometheus) for the
# alert rules; buildah, skopeo, umoci and runc to build the container image without a daemon
# and run it as a strict runtime would; python3 with venv for helm-template (shared/tools),
# which renders the chart; chromium (headless) for the timeline page's browser test;
# Knot DNS (the real upstream), dig (the real client); openssl and curl for the control
# plane's certificates (scripts/control-plane.sh builds etcd, kube-apiserver and CoreDNS
# with the machine's Go); the dnstap reader (golang-github-dnstap-golang-dnstap-cli) that
# decodes dnslens's dnstap stream; with --bench also dnsperf and the
# peers compared in loadtest/compare.sh (dnsdist, Unbound, dnsmasq) and valgrind (its
# instructions-per-query column).
# cargo-deny and cargo-cyclonedx are built from crates.io (see below).
# Services that the packages would start are kept from starting (policy-rc.d): tests start
# their own on loopback ports.
set -euo pipefail

need=(knotd:knot dig:bind9-dnsutils musl-gcc:musl-tools go:golang-go ip:iproute2 unshare:util-linux promtool:prometheus iptables:iptables buildah:buildah skopeo:skopeo umoci:umoci runc:runc chromium:chromium openssl:openssl curl:curl dnstap:golang-github-dnstap-golang-dnstap-cli)
if [[ "${1:-}" == "--bench" ]]; then
  need+=(dnsperf:dnsperf dnsdist:dnsdist unbound:unbound dnsmasq:dnsmasq-base callgrind_control:valgrind)
fi

missing=()
for pair in "${need[@]}"; do
  cmd=${pair%%:*} pkg=${pair##*:}
  PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
# c-ares (gRPC's C core and Node resolve with it): the headers and library the resolver
# scenes' small ares_getaddrinfo program is built against.
if [[ ! -e /usr/include/ares.h ]]; then
  missing+=(libc-ares-dev)
fi
# The CA bundle scripts/build-image.sh puts into the image.
if [[ ! -s /etc/ssl/certs/ca-certificates.crt ]]; then
  missing+=(ca-certificates)
fi
# dnspython for Debian's own python3 (the tests run /usr/bin/python3, not a virtualenv's).
if ! /usr/bin/python3 -c 'import dns.resolver' >/dev/null 2>&1; then
  missing+=(python3-dnspython)
fi
# dnslens-load plot draws its text with a TrueType font (benchmarks only).
if [[ "${1:-}" == "--bench" && ! -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]]; then
  missing+=(fonts-dejavu-core)
fi
# helm-template builds a virtualenv on first use: python3 with venv and ensurepip.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  missing+=(python3 python3-venv)
fi
install_packages() {
  echo "installing: ${missing[*]}" >&2
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  created_policy=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [[ -n "$created_policy" ]]; then $sudo rm -f /usr/sbin/policy-rc.d; fi
}
[[ ${#missing[@]} -eq 0 ]] || install_packages

# Cargo tools, each built from its crates.io source with the versions its own Cargo.lock
# pins (--locked; crates.io checks every crate's checksum), as the invoking user, cached
# outside the clone beside the control plane's binaries (a cold build takes 2 to 4 minutes
# on 2 cores, then it is reused), and linked into target/tools/bin:
# cargo-deny (licenses, bans, sources: scripts/test.sh) and cargo-cyclonedx (the image's
# SBOM: scripts/sbom.sh).
tools_cache=${DNSLENS_TOOLS_CACHE:-$HOME/.cache/dnslens-tools}
tools_bin="$(dirname "$0")/../target/tools/bin"
mkdir -p "$tools_bin"
cargo_tool() {
  local name=$1 version=$2 root="$tools_cache/$1-$2"
  if [[ ! -x "$root/bin/$name" ]]; then
    echo "building $name $version from crates.io (cached in $root)" >&2
    rm -rf "$root.tmp"
    cargo install --quiet --locked --version "$version" --root "$root.tmp" "$name"
    rm -rf "$root"
    mv "$root.tmp" "$root"
  fi
  ln -sfn "$root/bin/$name" "$tools_bin/$name"
}
cargo_tool cargo-deny 0.20.2
cargo_tool cargo-cyclonedx 0.5.9
