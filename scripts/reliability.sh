#!/usr/bin/env bash
# The long forms of the reliability checks, for the table in docs/reliability.md:
#   scripts/reliability.sh [FUZZ_SECONDS_PER_TARGET] [SOAK_SECONDS] [FLOOD_NAMES]
# (defaults 600, 3600, 1000000). Prints the figures as `reliability:` lines and keeps them
# in target/reliability.txt. The suite (scripts/test.sh) runs the same tests short: fuzz
# 15 s a target, a 120 s soak, a 100,000-name flood.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
fuzz_seconds=${1:-600}
soak_seconds=${2:-3600}
flood_names=${3:-1000000}
out=target/reliability.txt
mkdir -p target
{
  echo "# $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores: fuzz ${fuzz_seconds}s/target, soak ${soak_seconds}s, flood ${flood_names} names"
  scripts/fuzz.sh "$fuzz_seconds" | sed 's/^/reliability: fuzz /'
  DNSLENS_FLOOD_NAMES=$flood_names DNSLENS_SOAK_SECONDS=$soak_seconds \
    cargo test --locked -p dnslens --test integration -- --test-threads 1 --nocapture \
    flood:: faults:: lifecycle::sigterm 2>&1 | grep -E '^reliability:|^test |test result'
} | tee "$out"
