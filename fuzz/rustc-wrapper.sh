#!/usr/bin/env bash
# RUSTC_WRAPPER for scripts/fuzz.sh: libFuzzer's coverage instrumentation (the flags
# `cargo fuzz build --sanitizer none` gives every crate) on dnslens and the fuzz targets
# only. Instrumenting the whole dependency tree took over 25 minutes to build on 2 cores;
# the fuzzer is after dnslens's own code.
rustc=$1
shift
crate=""
prev=""
for arg in "$@"; do
  [[ "$prev" == "--crate-name" ]] && crate=$arg
  prev=$arg
done
case "$crate" in
  dnslens | client_datagram | tcp_stream | upstream_response | search | cache | config | webhook)
    exec "$rustc" "$@" -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
      -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
      -Cllvm-args=-sanitizer-coverage-pc-table \
      -Cllvm-args=-sanitizer-coverage-trace-compares \
      --cfg fuzzing -Cdebug-assertions -Coverflow-checks
    ;;
esac
exec "$rustc" "$@"
