#!/usr/bin/env bash
# The container image's software bill of materials, CycloneDX 1.5 JSON:
#   scripts/sbom.sh BINARY OUT
# - the dnslens binary's crates as cargo-cyclonedx reads them from Cargo.lock: name,
#   version, crates.io SHA-256, licence expression, purl (pkg:cargo/…); crates used only
#   to build are left out;
# - the Debian packages whose files the image carries beside it (scripts/build-image.sh):
#   the shared libraries BINARY links and the CA bundle (pkg:deb/debian/…, with the
#   versions installed here).
# cargo-cyclonedx is built from crates.io by scripts/install-test-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:?binary} out=${2:?output file}
cdx=target/tools/bin/cargo-cyclonedx
[[ -x $cdx ]] || { echo "sbom: $cdx missing (scripts/install-test-deps.sh builds it)" >&2; exit 2; }
# It writes NAME_bin.cdx.json beside each binary's Cargo.toml in the workspace: one run at
# a time (two image builds at once would take each other's file).
mkdir -p target
exec 9>target/sbom.lock
flock 9
"$cdx" cyclonedx --manifest-path proxy/Cargo.toml --format json --describe binaries \
  --spec-version 1.5 --no-build-deps --quiet
trap 'rm -f proxy/dnslens_bin.cdx.json loadtest/*_bin.cdx.json' EXIT
# Debian packages: the owner of each library the binary links, and ca-certificates.
packages=$(ldd "$binary" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' |
  while read -r lib; do dpkg -S "$(readlink -f "$lib")" 2>/dev/null || dpkg -S "$lib"; done |
  cut -d: -f1 | sort -u)
packages="$packages ca-certificates"
mkdir -p "$(dirname "$out")"
python3 - proxy/dnslens_bin.cdx.json "$out" $packages <<'PY'
import json, subprocess, sys
bom_path, out, packages = sys.argv[1], sys.argv[2], sys.argv[3:]
bom = json.load(open(bom_path))
arch = subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True,
                      text=True).stdout.strip()
for name in sorted(set(packages)):
    version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", name],
                             check=True, capture_output=True, text=True).stdout
    bom["components"].append({
        "type": "library",
        "bom-ref": f"pkg:deb/debian/{name}@{version}",
        "name": name,
        "version": version,
        "purl": f"pkg:deb/debian/{name}@{version}?arch={arch}",
    })
json.dump(bom, open(out, "w"), indent=1)
PY
