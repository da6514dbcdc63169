#!/usr/bin/env bash
# Side-by-side benchmark: Knot direct vs dnslens (tracing off and on) vs dnsdist, Unbound and dnsmasq as
# forwarders to the same Knot, cache off and on. Prints one Markdown table (medians of
# interleaved rounds; instructions per query from a callgrind run of each server).
# Loopback only. Usage: loadtest/compare.sh [--rounds N] [--seconds S] [--no-instructions]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh --bench
export PATH="$PATH:/usr/sbin:/sbin"
cargo build --release --locked -q -p dnslens --bin dnslens --example otlp_sink
exec python3 loadtest/compare.py --dnslens target/release/dnslens --otlp-sink target/release/examples/otlp_sink "$@"
