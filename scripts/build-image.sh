#!/usr/bin/env bash
# Builds the dnslens container image without a Docker daemon, from a dnslens binary built
# here (default: target/release/dnslens; `cargo build --release -p dnslens` first), and
# writes it as an OCI archive to target/image/dnslens-oci.tar, and its SBOM (CycloneDX JSON,
# scripts/sbom.sh) to target/image/dnslens-oci.cdx.json. Push it with
#   skopeo copy oci-archive:target/image/dnslens-oci.tar docker://REGISTRY/dnslens:TAG
# The image is the one the Dockerfile describes: the binary (stripped), the C runtime it
# links (as `ldd` lists it) and the system's CA bundle, nothing else; user 65532; the binary
# as entrypoint.
# Needs buildah (Debian: buildah; vfs storage, so no overlay or daemon is needed).
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:-target/release/dnslens}
out=${2:-target/image/dnslens-oci.tar}
[[ -x "$binary" ]] || { echo "build-image: $binary missing: cargo build --release -p dnslens" >&2; exit 2; }
command -v buildah >/dev/null || { echo "build-image: buildah is needed (apt-get install buildah)" >&2; exit 2; }

work=$(mktemp -d)
trap 'buildah --storage-driver vfs --root "$work/storage" --runroot "$work/run" rm --all >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
mkdir -p "$work/rootfs"
strip -o "$work/rootfs/dnslens" "$binary"
# The shared libraries the binary needs, at the paths the loader looks for them.
ldd "$binary" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u | while read -r lib; do
  [[ -f "$lib" ]] || continue
  mkdir -p "$work/rootfs$(dirname "$lib")"
  cp -L "$lib" "$work/rootfs$lib"
done
# The system's CA bundle (Debian's ca-certificates), where rustls-native-certs looks: OTLP
# over https to a collector with a public CA's certificate needs it.
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[[ -s "$ca_bundle" ]] || { echo "build-image: $ca_bundle missing (apt-get install ca-certificates)" >&2; exit 2; }
mkdir -p "$work/rootfs/etc/ssl/certs"
cp -L "$ca_bundle" "$work/rootfs$ca_bundle"
# /tmp for nothing at all (the root filesystem is read-only in the pod); a passwd entry so
# tools inside name the user.
mkdir -p "$work/rootfs/etc" "$work/rootfs/tmp"
printf 'nonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' >"$work/rootfs/etc/passwd"
printf 'nonroot:x:65532:\n' >"$work/rootfs/etc/group"

b="buildah --storage-driver vfs --root $work/storage --runroot $work/run"
ctr=$($b from --quiet scratch)
$b copy --quiet "$ctr" "$work/rootfs/" / >/dev/null
$b config --user 65532:65532 --entrypoint '["/dnslens"]' --cmd serve \
  --label org.opencontainers.image.title=dnslens \
  --label "org.opencontainers.image.version=$("$binary" --version 2>/dev/null | awk '{print $2}')" \
  "$ctr"
mkdir -p "$(dirname "$out")"
rm -f "$out"
$b commit --quiet --format oci "$ctr" "oci-archive:$out" >/dev/null
# Its software bill of materials beside it (scripts/sbom.sh): the crates and the Debian
# packages in the image.
scripts/sbom.sh "$binary" "${out%.tar}.cdx.json"
echo "$out"
