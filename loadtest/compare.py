#!/usr/bin/env python3
"""Runs the comparison behind loadtest/compare.sh and prints a Markdown table.

Every target answers the same query mix (loopback only). Knot serves the demo zones and is
the upstream of every forwarder. On this 2-core machine the load generator (dnsperf) is
pinned to core 0, the server under test and Knot to core 1, so saturation QPS is similar for
everyone and *server CPU per query* is what separates them:

    cpu_us_per_query = (utime + stime of the server process over the run) / answered queries

For each target and round: a saturation run (dnsperf, 8 clients, 200 outstanding), then a
run at a fixed moderate rate for latency (mean and p99 from dnsperf -v per-query lines).
Peak RSS is VmHWM of the server process; idle RSS is VmRSS before any query. Targets run in
interleaved rounds; the table shows medians.

Instructions per query (repeatable where CPU time moves ±15% on a shared VM): each server
runs under `valgrind --tool=callgrind`, answers the query mix once to warm up, then five
passes with its counters dumped after each; the median pass's user-space instructions over
its answered queries (see `instructions`). `--instructions-only` prints just that column,
and `--profile DIR` keeps the callgrind files (callgrind_annotate reads them).
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZONES = ROOT / "proxy" / "src" / "demo"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVER_CPU, LOADGEN_CPU = "1", "0"

QUERIES = """kubernetes.default.svc.cluster.local A
web.default.svc.cluster.local AAAA
kube-dns.kube-system.svc.cluster.local A
_http._tcp.web.default.svc.cluster.local SRV
api.team-a.svc.cluster.local A
github.com A
example.org AAAA
www.example.org A
txt.example.org TXT
nosuch.example.org A
alauda.cn.default.svc.cluster.local A
"""


def free_port():
    while True:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        t = socket.socket()
        try:
            t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()


def dns_ready(port, timeout=10.0):
    """Waits until something answers a DNS query on 127.0.0.1:port."""
    query = bytes.fromhex("abcd01000001000000000000") + b"\x06github\x03com\x00\x00\x01\x00\x01"
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.1)
        try:
            s.sendto(query, ("127.0.0.1", port))
            if s.recv(4096)[:2] == b"\xab\xcd":
                return True
        except OSError:
            pass
        finally:
            s.close()
        time.sleep(0.05)
    return False


def stat_ticks(stat):
    """utime + stime from the text of a /proc stat file."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu_ticks(pid):
    return stat_ticks(Path(f"/proc/{pid}/stat").read_text())


def thread_ticks(pid):
    """CPU ticks per thread name (threads of one name summed)."""
    ticks = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        ticks[name] = ticks.get(name, 0) + stat_ticks(stat)
    return ticks


def span_counts(metrics_port):
    """(exported, dropped) spans from dnslens's /metrics, every series of each family summed."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()

    def family(name):
        return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(name))

    return family("dnslens_spans_exported_total"), family("dnslens_spans_dropped_total")


def status_kib(pid, key):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class Server:
    def __init__(self, name, argv, port, workdir, env=None, cpu=SERVER_CPU, check_dns=True, ready_timeout=10.0,
                 stop_timeout=10.0):
        self.name, self.port, self.stop_timeout = name, port, stop_timeout
        self.log = open(workdir / f"{name}.log", "w")
        self.proc = subprocess.Popen(["taskset", "-c", cpu] + argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        if check_dns and not dns_ready(port, ready_timeout):
            self.stop()
            raise RuntimeError(f"{name} did not answer on port {port}; see {workdir}/{name}.log")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def knot_argv(work, port):
    for zone in ("cluster.local.zone", "root.zone"):
        shutil.copy(ZONES / zone, work / zone)
    conf = work / "knot.conf"
    conf.write_text(f"""server:
  rundir: "{work}"
  pidfile: "{work}/knot.pid"
  listen: 127.0.0.1@{port}
  udp-workers: 1
  tcp-workers: 1
  background-workers: 1
log:
  - target: stderr
    any: warning
database:
  storage: "{work}"
template:
  - id: default
    storage: "{work}"
    zonefile-load: whole
    journal-content: none
zone:
  - domain: cluster.local
    file: cluster.local.zone
  - domain: .
    file: root.zone
""")
    return ["knotd", "-c", str(conf)]


def target_argv(kind, cache, work, port, upstream, dnslens, traced_yaml="", metrics_port=0, dnslens_yaml=""):
    up = f"127.0.0.1:{upstream}"
    if kind in ("dnslens", "dnslens-traced"):
        conf = work / f"dnslens-{port}.yaml"
        conf.write_text(f"cache:\n  enabled: {'true' if cache else 'false'}\n  max_entries: 200000\n"
                        + (dnslens_yaml + "\n" if dnslens_yaml else "")
                        + (traced_yaml + "\n" if kind == "dnslens-traced" else ""))
        return [dnslens, "serve", "--config", str(conf), "--listen", f"127.0.0.1:{port}", "--upstream", up,
                "--metrics-listen", f"127.0.0.1:{metrics_port or free_port()}", "--ndots", "5",
                "--search", "default.svc.cluster.local,svc.cluster.local,cluster.local"]
    if kind == "dnsdist":
        conf = work / f"dnsdist-{port}.conf"
        cache_lines = "pc = newPacketCache(200000)\ngetPool(''):setCache(pc)\n" if cache else ""
        conf.write_text(f"""setSecurityPollSuffix('')
setLocal('127.0.0.1:{port}')
newServer({{address='{up}', healthCheckMode='up'}})
{cache_lines}""")
        return ["dnsdist", "--supervised", "--disable-syslog", "-C", str(conf)]
    if kind == "unbound":
        conf = work / f"unbound-{port}.conf"
        no_cache = "" if cache else "  cache-max-ttl: 0\n  cache-max-negative-ttl: 0\n  msg-cache-size: 0\n  rrset-cache-size: 0\n"
        conf.write_text(f"""server:
  interface: 127.0.0.1@{port}
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{work}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  num-threads: 1
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  module-config: "iterator"
  local-zone: "local." nodefault
  domain-insecure: "."
{no_cache}forward-zone:
  name: "."
  forward-addr: {up.replace(':', '@')}
""")
        return ["unbound", "-d", "-c", str(conf)]
    if kind == "dnsmasq":
        return ["dnsmasq", "-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--user=root",
                f"--server=127.0.0.1#{upstream}", "--listen-address=127.0.0.1", "--bind-interfaces",
                f"--port={port}", f"--cache-size={10000 if cache else 0}", "--pid-file=", "--dns-forward-max=1000"]
    raise ValueError(kind)


def latency(line):
    """Seconds from a dnsperf -v line ('> NOERROR name type 0.000123'); None for timeouts."""
    try:
        return float(line.rsplit(None, 1)[1])
    except (IndexError, ValueError):
        return None


def dnsperf(port, qfile, seconds, rate=None, verbose=False, loops=None, outstanding=200):
    argv = ["taskset", "-c", LOADGEN_CPU, "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile),
            "-l", str(seconds), "-c", "8", "-q", str(outstanding), "-t", "2"]
    if loops:
        argv += ["-n", str(loops)]
    if rate:
        argv += ["-Q", str(rate)]
    if verbose:
        argv += ["-v"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    def stat(pattern):
        m = re.search(pattern, out)
        return float(m.group(1)) if m else 0.0

    result = {
        "qps": stat(r"Queries per second:\s+([\d.]+)"),
        "completed": stat(r"Queries completed:\s+(\d+)"),
        "lost": stat(r"Queries lost:\s+(\d+)"),
        "sent": stat(r"Queries sent:\s+(\d+)"),
    }
    if verbose:
        lat = sorted(v for v in (latency(l) for l in out.splitlines() if l.startswith("> ")) if v is not None)
        result["mean_us"] = statistics.fmean(lat) * 1e6 if lat else 0.0
        result["p99_us"] = lat[int(len(lat) * 0.99) - 1] * 1e6 if lat else 0.0
    return result


def lookups(port, model, seconds, args, work):
    """dnslens-load at a fixed lookup rate (open loop): what a pod's lookups feel."""
    out = work / f"load-{port}-{model}.json"
    subprocess.run(["taskset", "-c", LOADGEN_CPU, args.load, "--server", f"127.0.0.1:{port}", "--model", model,
                    "--rate", str(args.lookup_rate), "--duration", f"{seconds}s", "--timeout", "2s",
                    "--population", "1000", "--zipf", "1.0", "--quiet", "--json", str(out)],
                   check=True, capture_output=True, text=True)
    return json.loads(out.read_text())


def measure(target, work, upstream, qfile, args):
    kind, cache = target
    if kind == "knot":
        server, pid, port = None, args.knot_pid, upstream
    else:
        port, metrics_port = free_port(), free_port()
        name = f"{kind}-{'cache' if cache else 'nocache'}"
        endpoint = "" if args.control else f"http://127.0.0.1:{args.sink_port}"
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint} if kind == "dnslens-traced" else {}
        server = Server(name, target_argv(kind, cache, work, port, upstream, args.dnslens, args.traced_yaml, metrics_port,
                                          args.dnslens_yaml), port, work, env=env)
        pid = server.proc.pid
    try:
        idle_rss = status_kib(pid, "VmRSS")
        dnsperf(port, qfile, 1)  # warm-up (fills caches, opens sockets)
        before = cpu_ticks(pid)
        sat = dnsperf(port, qfile, args.seconds)
        cpu = (cpu_ticks(pid) - before) / CLK_TCK
        spans_before = span_counts(metrics_port) if kind == "dnslens-traced" else None
        threads_before = thread_ticks(pid)
        fixed = dnsperf(port, qfile, max(3, args.seconds // 2), rate=args.rate, verbose=True)
        if kind.startswith("dnslens"):
            spent = {n: t - threads_before.get(n, 0) for n, t in thread_ticks(pid).items()}
            total = max(sum(spent.values()), 1)
            print(f"  {kind} at {args.rate} QPS, CPU by thread: "
                  + ", ".join(f"{n} {100 * t / total:.0f}%" for n, t in sorted(spent.items(), key=lambda x: -x[1]) if t),
                  file=sys.stderr)
        if spans_before:
            after = span_counts(metrics_port)
            print(f"  {kind} at {args.rate} QPS: spans exported {after[0] - spans_before[0]:.0f}, "
                  f"dropped {after[1] - spans_before[1]:.0f}", file=sys.stderr)
        load = {model: lookups(port, model, max(3, args.seconds // 2), args, work) for model in ("glibc", "musl")}
        names_rss = 0.0
        if cache and args.names:
            # Peak RSS once 100k distinct names (wildcard answers) went through the cache.
            dnsperf(port, args.names_file, 60, rate=40000, loops=1)
            names_rss = status_kib(pid, "VmHWM") / 1024
        return {
            "qps": sat["qps"],
            "cpu_us": cpu * 1e6 / max(sat["completed"], 1),
            "lost_pct": 100.0 * (sat["lost"] + fixed["lost"]) / max(sat["sent"] + fixed["sent"], 1),
            "mean_us": fixed["mean_us"],
            "p99_us": fixed["p99_us"],
            "idle_rss_mib": idle_rss / 1024,
            "peak_rss_mib": status_kib(pid, "VmHWM") / 1024,
            "names_rss_mib": names_rss,
            "glibc_p50_us": load["glibc"]["lookup_latency_us"]["p50"],
            "glibc_p99_us": load["glibc"]["lookup_latency_us"]["p99"],
            "musl_failed_pct": 100.0 * load["musl"]["failed_lookups"] / max(load["musl"]["lookups"], 1),
            "load": load,
        }
    finally:
        if server:
            server.stop()


# Passes of the query mix per callgrind run: enough that per-query work dwarfs timers.
CALLGRIND_LOOPS = 400
# Measured passes per server; the median is reported.
CALLGRIND_PASSES = 5


def callgrind_total(path):
    """Instructions executed (Ir) in a callgrind output file: its `summary:` (or `totals:`) line."""
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def callgrind_dump(pid, out, number):
    """Dumps (and zeroes) the counters of the callgrind run `pid`; returns the dump file."""
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
    dump = Path(f"{out}.{number}")
    deadline = time.time() + 60
    while not dump.exists() or "totals:" not in dump.read_text():
        if time.time() > deadline:
            raise RuntimeError(f"callgrind did not write {dump}")
        time.sleep(0.2)
    return dump


def instructions(target, work, upstream, qfile, args):
    """User-space instructions per answered query: the server runs under callgrind, answers
    the query mix once to warm up, then CALLGRIND_PASSES passes, its counters dumped and zeroed
    after each (callgrind_control); the median pass over its answered queries. Dumping inside
    one process leaves start-up and shutdown out, and the median leaves out a pass that
    happened to close more lookups than the others (lookups end by time)."""
    kind, cache = target
    port = free_port()
    name = f"callgrind-{kind}-{'cache' if cache else 'nocache'}"
    out = Path(args.profile or work) / f"{name}.out"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + \
        target_argv(kind, cache, work, port, upstream, args.dnslens, dnslens_yaml=args.dnslens_yaml)
    server = Server(name, argv, port, work, ready_timeout=120, stop_timeout=120)
    per_query = []
    try:
        dnsperf(port, qfile, 300, loops=CALLGRIND_LOOPS, outstanding=20)  # warm-up pass
        # The process under valgrind is the child of taskset, which exec'd it: same pid.
        callgrind_dump(server.proc.pid, out, 1)
        for n in range(CALLGRIND_PASSES):
            answered = dnsperf(port, qfile, 300, loops=CALLGRIND_LOOPS, outstanding=20)["completed"]
            per_query.append(callgrind_total(callgrind_dump(server.proc.pid, out, n + 2)) / max(answered, 1))
    finally:
        server.stop()
    return statistics.median(per_query)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dnslens", required=True)
    ap.add_argument("--otlp-sink", required=True, help="the otlp_sink example binary (the collector)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rate", type=int, default=20000)
    ap.add_argument("--only", default="", help="comma-separated target kinds (dnslens-cache: dnslens with its cache)")
    ap.add_argument("--sink-cpu", default=LOADGEN_CPU,
                    help="core of the OTLP sink (default: the load generator's; the server's core charges "
                         "the collector's work to the proxy's latency instead)")
    ap.add_argument("--control", action="store_true",
                    help="run the traced target with tracing off: an A/A run, whose on/off ratios show the noise")
    ap.add_argument("--dnslens-yaml", default="",
                    help="extra dnslens config for every dnslens target, e.g. 'listener: {udp_workers: 2}'")
    ap.add_argument("--traced-yaml", default="",
                    help="extra dnslens config for the traced target, e.g. 'tracing: {sample_ratio: 0}'")
    ap.add_argument("--instructions-only", action="store_true",
                    help="only the callgrind measure: instructions per warm query, one run per target")
    ap.add_argument("--no-instructions", action="store_true", help="skip the callgrind measure")
    ap.add_argument("--profile", default="", help="directory to keep the callgrind files in")
    ap.add_argument("--load", default="", help="the dnslens-load binary (lookup latency columns)")
    ap.add_argument("--lookup-rate", type=int, default=500, help="lookups per second for dnslens-load")
    ap.add_argument("--results", default="", help="write the table and JSON as RESULTS.md / RESULTS.json")
    ap.add_argument("--names", type=int, default=100000,
                    help="distinct names pushed through each cache for the RSS column (0: skip)")
    args = ap.parse_args()

    targets = [("knot", False), ("dnslens", False), ("dnslens", True), ("dnslens-traced", True),
               ("dnsdist", False), ("dnsdist", True), ("unbound", False), ("unbound", True), ("dnsmasq", False),
               ("dnsmasq", True)]
    if args.only:
        keep = set(args.only.split(","))
        targets = [t for t in targets if t[0] in keep or t[0] == "knot"
                   or (t == ("dnslens", True) and "dnslens-cache" in keep)]
        if "dnslens-cache" in keep and "dnslens" not in keep:
            targets = [t for t in targets if t != ("dnslens", False)]
    if not any(t[0] == "dnsdist" and not t[1] for t in targets):
        print("note: without dnsdist (no cache) in the run there is no ratio column baseline", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="dnslens-compare-"))
    qfile = work / "queries.txt"
    qfile.write_text(QUERIES)
    args.names_file = work / "names.txt"
    args.names_file.write_text("".join(f"n{i}.bulk.example.org A\n" for i in range(args.names)))
    upstream = free_port()
    knot = Server("knot", knot_argv(work, upstream), upstream, work)
    args.knot_pid = knot.proc.pid
    args.sink_port = free_port()
    # Counting only: a sink that flattened and wrote every span took 1.4 ms stretches of the
    # load generator's core, which dnsperf measured as proxy latency (perf sched timehist).
    # Not under SCHED_IDLE either: it then starved while dnsperf saturated core 0, and spans
    # were dropped, so the traced proxy did less work than it should.
    span_count_file = work / "span-count.txt"
    sink = Server("otlp-sink", [args.otlp_sink, "--count", f"127.0.0.1:{args.sink_port}", f"127.0.0.1:{free_port()}",
                                str(span_count_file)], args.sink_port, work, cpu=args.sink_cpu, check_dns=False)
    results = {t: [] for t in targets}
    instr = {}
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    try:
        if not args.no_instructions:
            for t in targets:
                if t[0] in ("knot", "dnslens-traced"):
                    continue
                print(f"callgrind: {t[0]} cache={'on' if t[1] else 'off'}", file=sys.stderr)
                instr[t] = instructions(t, work, upstream, qfile, args)
                print(f"  {instr[t]:,.0f} instructions per query", file=sys.stderr)
        if args.instructions_only:
            print("| target | cache | instructions/query (callgrind, user space) |")
            print("|---|---|---:|")
            for (kind, cache), n in instr.items():
                print(f"| {kind} | {'on' if cache else 'off'} | {n:,.0f} |")
            return
        for r in range(args.rounds):
            for t in targets:
                print(f"round {r + 1}/{args.rounds}: {t[0]} cache={'on' if t[1] else 'off'}", file=sys.stderr)
                results[t].append(measure(t, work, upstream, qfile, args))
        time.sleep(0.5)  # the sink writes its count every 200 ms
        spans = int(span_count_file.read_text()) if span_count_file.exists() else 0
        print(f"otlp sink received {spans} spans from dnslens-traced", file=sys.stderr)
    finally:
        sink.stop()
        knot.stop()
        shutil.rmtree(work, ignore_errors=True)

    med = {t: {k: statistics.median(run[k] for run in runs) for k in runs[0] if k != "load"}
           for t, runs in results.items()}
    # The dnslens-load reports of the round with the median glibc lookup p99, for the plots.
    reports = {}
    for t, runs in results.items():
        ordered = sorted(runs, key=lambda run: run["glibc_p99_us"])
        reports[t] = ordered[len(ordered) // 2]["load"]
    plain, traced = med.get(("dnslens", True)), med.get(("dnslens-traced", True))
    if plain and traced:
        print(f"dnslens (cache on) tracing on / off: CPU per query x{traced['cpu_us'] / plain['cpu_us']:.2f}, "
              f"mean latency x{traced['mean_us'] / plain['mean_us']:.2f}, p99 x{traced['p99_us'] / plain['p99_us']:.2f}\n")
    cached = {kind: m for (kind, cache), m in med.items() if cache}
    if "dnslens" in cached and len(cached) > 1:
        best = min((m["cpu_us"], kind) for kind, m in cached.items() if kind not in ("dnslens", "dnslens-traced"))
        print(f"cache hot: dnslens CPU per query x{cached['dnslens']['cpu_us'] / best[0]:.2f} of the best peer "
              f"({best[1]}, {best[0]:.2f} µs)\n")
    cpu_info = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                     if l.startswith("model name")), "unknown CPU")
    machine = f"{os.cpu_count()} cores ({cpu_info})"
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {machine}, "
             f"medians of {args.rounds} interleaved rounds; dnsperf and dnslens-load on core {LOADGEN_CPU}, "
             f"server and Knot on core {SERVER_CPU}; query latency at {args.rate} QPS (dnsperf), lookup latency "
             f"at {args.lookup_rate} lookups/s (dnslens-load, open loop, built-in Kubernetes mix).\n",
             "| target | cache | QPS (saturation) | CPU µs/query | × best peer (same cache) | instructions/query | mean latency µs | p99 latency µs | glibc lookup p50 µs | glibc lookup p99 µs | musl lookups failed % | lost % | idle RSS MiB | peak RSS MiB | RSS MiB after 100k names |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    targets_json = []
    for (kind, cache), m in med.items():
        name = {"knot": "Knot (direct)", "dnslens-traced": "dnslens + cache, tracing on (default sampling, OTLP)"}.get(kind, kind)
        peers = [p["cpu_us"] for (k, c), p in med.items() if c == cache and k not in ("knot", "dnslens", "dnslens-traced")]
        ratio = f"{m['cpu_us'] / min(peers):.2f}" if peers and kind != "knot" else "-"
        cache_s = "-" if kind == "knot" else ("on" if cache else "off")
        names_rss = f"{m['names_rss_mib']:.1f}" if m["names_rss_mib"] else "-"
        n = instr.get((kind, cache))
        instr_s = f"{n:,.0f}" if n else "-"
        lines.append(f"| {name} | {cache_s} | {m['qps']:,.0f} | {m['cpu_us']:.2f} | {ratio} | {instr_s} | {m['mean_us']:.0f} | "
                     f"{m['p99_us']:.0f} | {m['glibc_p50_us']:.0f} | {m['glibc_p99_us']:.0f} | {m['musl_failed_pct']:.1f} | "
                     f"{m['lost_pct']:.2f} | {m['idle_rss_mib']:.1f} | {m['peak_rss_mib']:.1f} | {names_rss} |")
        label = {"knot": "Knot", "dnslens-traced": "dnslens traced"}.get(kind, kind) + \
            ("" if kind == "knot" else (" cache" if cache else ""))
        targets_json.append({"name": label, "cache": cache, "cpu_us_per_query": m["cpu_us"],
                             "peak_rss_kib": m["peak_rss_mib"] * 1024, "qps": m["qps"],
                             "instructions_per_query": n, "lookups": reports[(kind, cache)]})
    print("\n".join(lines))
    if args.results:
        Path(args.results + ".md").write_text("\n".join(lines) + "\n")
        Path(args.results + ".json").write_text(json.dumps(
            {"date": time.strftime("%Y-%m-%d"), "machine": machine, "targets": targets_json}, indent=1))


if __name__ == "__main__":
    main()
