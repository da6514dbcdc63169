#!/usr/bin/env bash
# System calls per answered query, dnslens beside dnsdist, counted by the kernel's syscall
# tracepoints (`perf stat`, attached to the server's threads: no slow-down, unlike strace,
# whose stops let datagrams pile up and so flatter a server that reads until EAGAIN) for one
# pass of the walk mix of ../shared/bench (the same zones in Knot, the same 26,012 queries)
# at a fixed rate.
# Usage: loadtest/syscalls.sh [--cache] [--dnslens BIN] [--qps N] [--base-port P] [--profile DIR]
# Prints a Markdown table: per server, answered queries, system calls per query, and the
# calls that make them up (receives that found nothing — EAGAIN — counted apart).
# --profile DIR: then each server once more under callgrind (one thread per file), a warm-up
# pass and a counted one at 1,500 QPS, the files kept in DIR for `callgrind_annotate`.
# Loopback only. Root (tracepoints). Needs (Debian): knot, dnsperf, dnsdist, linux-perf,
# bind9-dnsutils.
set -u
CACHE=0 BIN=target/release/dnslens QPS=3000 B=15800 PROFILE=
while [ $# -gt 0 ]; do case $1 in
  --cache) CACHE=1; shift;; --dnslens) BIN=$2; shift 2;; --qps) QPS=$2; shift 2;;
  --base-port) B=$2; shift 2;; --profile) PROFILE=$(realpath -m "$2"); shift 2;; *) echo "unknown argument $1" >&2; exit 2;; esac; done
for tool in knotd dnsperf dnsdist perf dig; do
  command -v "$tool" >/dev/null || { echo "syscalls.sh: $tool is missing" >&2; exit 2; }
done
BIN=$(realpath "$BIN")
W=$(mktemp -d /tmp/syscalls.XXXXXX); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
mkdir -p "$W/zones" "$W/db"
# The zones and the query mix of ../shared/bench (instructions.sh, peers.sh).
awk 'BEGIN{ print "$TTL 300"; print "@ SOA ns hostmaster 1 3600 600 86400 300"; print "@ NS ns"; print "ns A 127.0.0.1"
  for (m = 0; m < 10; m++) for (n = 0; n < 100; n++) printf "svc-%d.ns-%d.svc A 10.96.%d.%d\n", n, m, m, n }' >"$W/zones/cluster.local.zone"
awk 'BEGIN{ print "$TTL 300"; print "@ SOA ns hostmaster 1 3600 600 86400 300"; print "@ NS ns"; print "ns A 127.0.0.1"
  for (n = 0; n < 1000; n++) printf "host-%d A 198.51.100.%d\nhost-%d AAAA 2001:db8::%x\n", n, n % 250 + 1, n, n }' >"$W/zones/example.com.zone"
printf '$TTL 300\n@ SOA ns.root. hostmaster.root. 1 3600 600 86400 300\n@ NS ns.root.\nns.root. A 127.0.0.1\n' >"$W/zones/root.zone"
awk 'function r(n) { s = (s * 16807) % 2147483647; return s % n }
  function q(x) { print x " A"; print x " AAAA" }
  BEGIN { s = 42
    for (i = 0; i < 5000; i++) {
      if (r(10) < 7) { x = "svc-" r(100) ".ns-" r(10); q(x ".default.svc.cluster.local"); q(x ".svc.cluster.local") }
      else { x = "host-" r(250) ".example.com"
        q(x ".default.svc.cluster.local"); q(x ".svc.cluster.local"); q(x ".cluster.local"); q(x) } } }' >"$W/q.txt"
cat >"$W/knot.conf" <<EOF
server:
    rundir: "$W"
    listen: 127.0.0.1@$B
log:
  - target: stderr
    any: error
database:
    storage: "$W/db"
template:
  - id: default
    storage: "$W/zones"
    file: "%s.zone"
    zonefile-sync: -1
    journal-content: none
zone:
  - domain: cluster.local
  - domain: example.com
  - domain: .
    file: root.zone
EOF
knotd -c "$W/knot.conf" >"$W/knot.log" 2>&1 & PIDS+=($!)
answers() { dig @127.0.0.1 -p "$1" +short +tries=1 +time=1 svc-7.ns-3.svc.cluster.local A 2>/dev/null; }
for i in $(seq 50); do [ "$(answers "$B")" = 10.96.3.7 ] && break; sleep 0.2; done

profile() {  # profile NAME PORT CMD...: callgrind files in $PROFILE
  local name=$1 port=$2; shift 2
  mkdir -p "$PROFILE"
  valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$PROFILE/callgrind.$name.%p" \
    "$@" >"$W/$name.cg.log" 2>&1 & local pid=$! i
  PIDS+=("$pid")
  for i in $(seq 300); do [ "$(answers "$port")" = 10.96.3.7 ] && break; sleep 0.2; done
  dnsperf -s 127.0.0.1 -p "$port" -d "$W/q.txt" -n 1 -Q 1500 -c 4 >/dev/null 2>&1 </dev/null
  dnsperf -s 127.0.0.1 -p "$port" -d "$W/q.txt" -n 1 -Q 1500 -c 4 >/dev/null 2>&1 </dev/null
  kill -TERM "$pid"; wait "$pid" 2>/dev/null
}
measure() {  # measure NAME PORT CMD...: one table row (and a profile with --profile)
  local name=$1 port=$2; shift 2
  [ -z "$PROFILE" ] || profile "$name" "$port" "$@"
  "$@" >"$W/$name.log" 2>&1 & local pid=$! i
  PIDS+=("$pid")
  for i in $(seq 100); do [ "$(answers "$port")" = 10.96.3.7 ] && break; sleep 0.1; done
  # A warm-up pass (caches filled when on, sockets and threads started), then the counted one.
  dnsperf -s 127.0.0.1 -p "$port" -d "$W/q.txt" -n 1 -Q "$QPS" -c 4 >/dev/null 2>&1 </dev/null
  local calls="recvfrom recvmsg recvmmsg sendto sendmsg sendmmsg epoll_wait epoll_pwait futex clock_nanosleep sched_yield"
  local events=(-e raw_syscalls:sys_enter) c
  for c in $calls; do events+=(-e "syscalls:sys_enter_$c"); done
  for c in recvfrom recvmsg recvmmsg; do events+=(-e "syscalls:sys_exit_$c" --filter 'ret == -11'); done
  perf stat -x, --no-big-num "${events[@]}" -p "$pid" -o "$W/$name.counts" & local sp=$!
  sleep 1
  dnsperf -s 127.0.0.1 -p "$port" -d "$W/q.txt" -n 1 -Q "$QPS" -c 4 >"$W/$name.perf" 2>&1 </dev/null
  sleep 0.5; kill -INT "$sp"; wait "$sp" 2>/dev/null
  kill -TERM "$pid"; wait "$pid" 2>/dev/null
  local done
  done=$(awk '/Queries completed:/ { print $3 }' "$W/$name.perf")
  # perf stat -x,: "count,unit,event,…"; a call that never happened reads 0.
  awk -F, -v name="$name" -v done="${done:-0}" '
    $3 == "raw_syscalls:sys_enter" { total = $1 }
    $3 ~ /^syscalls:sys_enter_/ { sc = substr($3, 20); c[sc] = $1; order[n++] = sc }
    $3 ~ /^syscalls:sys_exit_/ { e[substr($3, 19)] = $1 }
    END { if (done == 0 || total == "") { printf "| %s | %d | - | - |\n", name, done; exit }
      top = ""; shown = 0
      for (i = 0; i < n; i++) { s = order[i]; if (c[s] == 0) continue
        top = top sprintf("%s%s %.2f", (top == "" ? "" : ", "), s, c[s] / done); shown += c[s]
        if (e[s] > 0) top = top sprintf(" (%.2f EAGAIN)", e[s] / done) }
      top = top sprintf(", other %.2f", (total - shown) / done)
      printf "| %s | %d | %.2f | %s |\n", name, done, total / done, top }' "$W/$name.counts"
}
echo "| server | queries answered | system calls per query | most frequent, per query |"
echo "|---|---:|---:|---|"
if [ "$CACHE" = 1 ]; then printf 'cache:\n  enabled: true\n' >"$W/dnslens.yaml"; else printf 'cache:\n  enabled: false\n' >"$W/dnslens.yaml"; fi
measure dnslens $((B + 4)) "$BIN" serve --config "$W/dnslens.yaml" --listen 127.0.0.1:$((B + 4)) \
  --upstream 127.0.0.1:$B --metrics-listen 127.0.0.1:$((B + 9))
printf 'setSecurityPollSuffix("")\nsetLocal("127.0.0.1:%s")\nnewServer({address="127.0.0.1:%s"})\n' $((B + 3)) "$B" >"$W/dnsdist.conf"
[ "$CACHE" = 1 ] && echo 'getPool(""):setCache(newPacketCache(100000))' >>"$W/dnsdist.conf"
measure dnsdist $((B + 3)) dnsdist --supervised --disable-syslog -C "$W/dnsdist.conf"
