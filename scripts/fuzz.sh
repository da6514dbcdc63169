#!/usr/bin/env bash
# Builds the fuzz targets in fuzz/ and runs each for a while with libFuzzer.
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 30 s, every target)
# The build instruments dnslens as `cargo fuzz build --sanitizer none` does — libFuzzer's
# coverage through stable rustc flags — so no nightly toolchain and no cargo-fuzz install
# is needed (with cargo-fuzz installed, `cargo fuzz run TARGET` works as well).
# No AddressSanitizer: dnslens is `#![forbid(unsafe_code)]`; what the fuzzer looks for is
# panics, hangs, unbounded memory and the invariants the targets assert.
# Each run starts from the committed seed corpus fuzz/seeds/TARGET (real queries and
# answers captured from dig, glibc, musl, Go and dnspython against Knot: fuzz/capture-seeds.sh)
# and the inputs of every crash found so far (fuzz/regressions/TARGET: each also a test
# where it was a dnslens bug), and keeps what it finds in target/fuzz/corpus/TARGET; a
# crash lands in target/fuzz/artifacts/TARGET and fails the run. Prints one line per target:
#   TARGET executions=N crashes=0 seconds=S
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(client_datagram tcp_stream upstream_response search cache config webhook)

host=$(rustc -vV | sed -n 's/^host: //p')
# The instrumentation goes on dnslens and the targets only (fuzz/rustc-wrapper.sh).
export RUSTC_WRAPPER=$(pwd)/fuzz/rustc-wrapper.sh
cargo build --locked --release --manifest-path fuzz/Cargo.toml --target "$host" \
  --target-dir target/fuzz/build --bins

report=target/fuzz/report.txt
: >"$report"
status=0
for target in "${targets[@]}"; do
  corpus=target/fuzz/corpus/$target artifacts=target/fuzz/artifacts/$target/
  mkdir -p "$corpus" "$artifacts"
  log=target/fuzz/$target.log
  set +e
  regressions=()
  [[ -d fuzz/regressions/$target ]] && regressions=("fuzz/regressions/$target")
  "target/fuzz/build/$host/release/$target" "$corpus" "fuzz/seeds/$target" "${regressions[@]}" \
    -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -max_len=4096 \
    -artifact_prefix="$artifacts" -print_final_stats=1 >"$log" 2>&1
  code=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  crashes=$(find "$artifacts" -type f | wc -l)
  line="$target executions=${runs:-0} crashes=$crashes seconds=$seconds"
  echo "$line" | tee -a "$report"
  if [[ $code -ne 0 || $crashes -ne 0 ]]; then
    tail -40 "$log" >&2
    status=1
  fi
done
exit $status
