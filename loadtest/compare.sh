#!/usr/bin/env bash
# Side-by-side benchmark: Knot direct vs dnslens (tracing off and on) vs dnsdist, Unbound and dnsmasq as
# forwarders to the same Knot, cache off and on: dnsperf for query throughput and latency,
# dnslens-load (glibc and musl models) for lookup latency at a fixed rate. Prints one Markdown
# table (medians of interleaved rounds; instructions per query from a callgrind run of each
# server) and writes it with its JSON to loadtest/results/DATE.{md,json}, and the pictures
# (dnslens-load plot) to loadtest/results/DATE/.
# Loopback only. Usage: loadtest/compare.sh [--rounds N] [--seconds S] [--no-instructions] [--names 0]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh --bench
export PATH="$PATH:/usr/sbin:/sbin"
cargo build --release --locked -q -p dnslens --bin dnslens --example otlp_sink
cargo build --release --locked -q -p dnslens-load
results="loadtest/results/$(date +%Y-%m-%d)"
mkdir -p loadtest/results
python3 loadtest/compare.py --dnslens target/release/dnslens --otlp-sink target/release/examples/otlp_sink \
  --load target/release/dnslens-load --results "$results" "$@"
target/release/dnslens-load plot "$results.json" --out "$results"
