#!/usr/bin/env bash
# Where an idle `dnslens serve` keeps its resident memory: /proc/PID/smaps summed by kind of
# mapping (the binary's code, its read-only data, its writable data, shared libraries, the
# heap, anonymous mappings — thread stacks and allocator arenas —, the main stack), after
# start-up and a few queries, with the thread count.
# Usage: loadtest/rss.sh [--dnslens BIN] [--config FILE] [--queries N]
# Loopback only: the upstream is a port nothing answers on unless --config names one.
set -u
BIN=target/release/dnslens CONFIG="" QUERIES=20 P=15990
while [ $# -gt 0 ]; do case $1 in
  --dnslens) BIN=$2; shift 2;; --config) CONFIG=$2; shift 2;; --queries) QUERIES=$2; shift 2;;
  *) echo "unknown argument $1" >&2; exit 2;; esac; done
BIN=$(realpath "$BIN")
W=$(mktemp -d /tmp/rss.XXXXXX)
[ -n "$CONFIG" ] || { printf 'forward:\n  upstreams: ["127.0.0.1:%s"]\n' $((P + 1)) >"$W/c.yaml"; CONFIG=$W/c.yaml; }
"$BIN" serve --config "$CONFIG" --listen 127.0.0.1:$P --metrics-listen 127.0.0.1:$((P + 2)) >"$W/log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
for i in $(seq 100); do curl -sf "http://127.0.0.1:$((P + 2))/readyz" >/dev/null && break; sleep 0.1; done
for i in $(seq "$QUERIES"); do dig @127.0.0.1 -p $P +tries=1 +time=1 "q$i.example.org" A >/dev/null 2>&1; done
sleep 2
echo "threads: $(awk '/^Threads:/ { print $2 }' /proc/$PID/status); VmRSS: $(awk '/^VmRSS:/ { print $2, $3 }' /proc/$PID/status)"
echo "| mapping | mappings | Rss KiB | Private_Dirty KiB |"
echo "|---|---:|---:|---:|"
awk -v bin="$BIN" '
  /^[0-9a-f]+-[0-9a-f]+ / { perms = $2; path = (NF >= 6 ? $6 : "")
    if (path == bin) kind = "binary " (perms ~ /x/ ? "code" : perms ~ /w/ ? "writable data" : "read-only data")
    else if (path ~ /\.so/) kind = "shared libraries"
    else if (path == "[heap]") kind = "heap (brk)"
    else if (path == "[stack]") kind = "main thread stack"
    else if (path ~ /^\[/) kind = "kernel (" path ")"
    else if (path == "") kind = "anonymous (thread stacks, allocator arenas)"
    else kind = "other files"
    n[kind]++; next }
  /^Rss:/ { rss[kind] += $2 }
  /^Private_Dirty:/ { dirty[kind] += $2 }
  END { for (k in n) { printf "| %s | %d | %d | %d |\n", k, n[k], rss[k], dirty[k]; t += rss[k]; d += dirty[k] }
        printf "| **total** | | %d | %d |\n", t, d }' /proc/$PID/smaps | sort -t'|' -k4 -rn
