#!/usr/bin/env python3
"""What dnstap costs: dnslens's CPU per query with dnstap off and with client query and
response logging on, side by side in one run (rounds interleaved, medians reported), cache
off (every query forwarded to Knot) and on. The reader is Debian's `dnstap` decoding to
/dev/null on the load generator's core, as a log shipper would sit beside the proxy.

The load is a fixed rate (`--rate`, default 40k QPS), the same for both: at saturation the
reader shares the load generator's core with dnsperf, dnsperf then offers less to the
dnstap run, and CPU per query rises from the lower load alone; and a reader that cannot
keep up makes dnslens drop messages, which is cheaper than logging them. The table says how
many were dropped; a fair run drops none.

    loadtest/dnstap_cost.py --dnslens target/release/dnslens [--rounds 3] [--seconds 6] [--rate 40000]

Prints a Markdown table: CPU µs per query (server process, user + system) and the on/off
ratio; the target is at most 1.15.
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (the shared helpers: servers, dnsperf, CPU ticks)


def dropped(metrics_port):
    """dnslens_dnstap_dropped_total, every reason."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("dnslens_dnstap_dropped_total"))


def measure(args, work, upstream, qfile, cache, dnstap):
    port = compare.free_port()
    socket = work / f"dnstap-{port}.sock"
    reader = None
    extra = ""
    if dnstap:
        reader = subprocess.Popen(["taskset", "-c", compare.LOADGEN_CPU, "dnstap", "-u", str(socket), "-q",
                                   "-w", "/dev/null"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            if socket.exists():
                break
            time.sleep(0.05)
        extra = f"dnstap:\n  socket: {socket}\n  messages: [client_query, client_response]\n"
    name = f"dnslens-{'cache' if cache else 'nocache'}-{'dnstap' if dnstap else 'plain'}"
    metrics_port = compare.free_port()
    server = compare.Server(name, compare.target_argv("dnslens", cache, work, port, upstream, args.dnslens,
                                                      metrics_port=metrics_port, dnslens_yaml=extra), port, work)
    try:
        compare.dnsperf(port, qfile, 1, rate=args.rate)  # warm-up
        before = compare.cpu_ticks(server.proc.pid)
        dropped_before = dropped(metrics_port)
        run = compare.dnsperf(port, qfile, args.seconds, rate=args.rate)
        cpu = (compare.cpu_ticks(server.proc.pid) - before) / compare.CLK_TCK
        return {"qps": run["qps"], "cpu_us": cpu * 1e6 / max(run["completed"], 1),
                "dropped": dropped(metrics_port) - dropped_before}
    finally:
        server.stop()
        if reader:
            reader.terminate()
            reader.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dnslens", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--rate", type=int, default=40000, help="queries per second offered to both")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dnslens-dnstap-"))
    qfile = work / "queries.txt"
    qfile.write_text(compare.QUERIES)
    upstream = compare.free_port()
    knot = compare.Server("knot", compare.knot_argv(work, upstream), upstream, work)
    results = {}
    try:
        for _ in range(args.rounds):
            for cache in (False, True):
                for dnstap in (False, True):
                    m = measure(args, work, upstream, qfile, cache, dnstap)
                    results.setdefault((cache, dnstap), []).append(m)
                    print(f"  cache {'on' if cache else 'off'}, dnstap {'on' if dnstap else 'off'}: "
                          f"{m['cpu_us']:.2f} µs/query, {m['qps']:,.0f} QPS, {m['dropped']:.0f} dropped",
                          file=sys.stderr)
    finally:
        knot.stop()
    print(f"dnstap cost, {time.strftime('%Y-%m-%d')}, medians of {args.rounds} interleaved rounds of "
          f"{args.seconds} s at {args.rate:,} QPS (server on core {compare.SERVER_CPU}; dnsperf and the "
          f"dnstap reader on core {compare.LOADGEN_CPU})\n")
    print("| cache | dnstap | QPS answered | CPU µs/query | × off | messages dropped |")
    print("|---|---|---|---|---|---|")
    for cache in (False, True):
        off = statistics.median(m["cpu_us"] for m in results[(cache, False)])
        for dnstap in (False, True):
            runs = results[(cache, dnstap)]
            cpu = statistics.median(m["cpu_us"] for m in runs)
            qps = statistics.median(m["qps"] for m in runs)
            lost = max(m["dropped"] for m in runs)
            print(f"| {'on' if cache else 'off'} | {'client query + response' if dnstap else 'off'} | "
                  f"{qps:,.0f} | {cpu:.2f} | {cpu / off:.2f} | {lost:.0f} |")


if __name__ == "__main__":
    main()
