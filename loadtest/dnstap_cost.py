#!/usr/bin/env python3
"""What dnstap costs: dnslens's CPU per query with dnstap off and with client query and
response logging on, side by side in one run (rounds interleaved, medians reported), cache
off (every query forwarded to Knot) and on. The reader is Debian's `dnstap` decoding to
/dev/null on the load generator's core, as a log shipper would sit beside the proxy.

    loadtest/dnstap_cost.py --dnslens target/release/dnslens [--rounds 3] [--seconds 6]

Prints a Markdown table: CPU µs per query (server process, user + system) and the on/off
ratio; the target is at most 1.15.
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (the shared helpers: servers, dnsperf, CPU ticks)


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
    server = compare.Server(name, compare.target_argv("dnslens", cache, work, port, upstream, args.dnslens,
                                                      dnslens_yaml=extra), port, work)
    try:
        compare.dnsperf(port, qfile, 1)  # warm-up
        before = compare.cpu_ticks(server.proc.pid)
        run = compare.dnsperf(port, qfile, args.seconds)
        cpu = (compare.cpu_ticks(server.proc.pid) - before) / compare.CLK_TCK
        return {"qps": run["qps"], "cpu_us": cpu * 1e6 / max(run["completed"], 1)}
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
                          f"{m['cpu_us']:.2f} µs/query, {m['qps']:,.0f} QPS", file=sys.stderr)
    finally:
        knot.stop()
    print(f"dnstap cost, {time.strftime('%Y-%m-%d')}, medians of {args.rounds} interleaved rounds "
          f"(server on core {compare.SERVER_CPU}; dnsperf and the dnstap reader on core {compare.LOADGEN_CPU})\n")
    print("| cache | dnstap | QPS (saturation) | CPU µs/query | × off |")
    print("|---|---|---|---|---|")
    for cache in (False, True):
        off = statistics.median(m["cpu_us"] for m in results[(cache, False)])
        for dnstap in (False, True):
            runs = results[(cache, dnstap)]
            cpu = statistics.median(m["cpu_us"] for m in runs)
            qps = statistics.median(m["qps"] for m in runs)
            print(f"| {'on' if cache else 'off'} | {'client query + response' if dnstap else 'off'} | "
                  f"{qps:,.0f} | {cpu:.2f} | {cpu / off:.2f} |")


if __name__ == "__main__":
    main()
