#!/usr/bin/env bash
# Re-captures the seed corpus in fuzz/seeds/ (committed): real queries from glibc, musl,
# Go, dnspython and dig and Knot's real answers, kept by fuzz/capture_relay.py between
# dnslens and Knot (the integration test fuzz_seeds::capture, in a network namespace: run
# as root); the example configurations; AdmissionReviews as the API server sends them.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
capture=$(mktemp -d)
trap 'rm -rf "$capture"' EXIT
DNSLENS_SEED_CAPTURE="$capture" cargo test --locked -p dnslens --test integration \
  fuzz_seeds::capture -- --ignored --exact

seeds=fuzz/seeds
rm -rf "$seeds"
mkdir -p "$seeds"/{client_datagram,tcp_stream,upstream_response,cache,search,config,webhook}
python3 - "$capture" "$seeds" <<'PY'
import glob, json, os, struct, sys
capture, seeds = sys.argv[1], sys.argv[2]

def files(kind):
    return sorted(glob.glob(os.path.join(capture, kind, "*")), key=os.path.getmtime)

def write(target, name, data):
    with open(os.path.join(seeds, target, name), "wb") as f:
        f.write(data)

def qname(message):
    labels, pos = [], 12
    while pos < len(message) and message[pos]:
        n = message[pos]
        labels.append(message[pos + 1:pos + 1 + n])
        pos += 1 + n
    qtype = message[pos + 1:pos + 3]
    return b".".join(labels), int.from_bytes(qtype, "big") if len(qtype) == 2 else 1

queries = [open(p, "rb").read() for p in files("queries")]
answers = [open(p, "rb").read() for p in files("answers")]
for i, q in enumerate(queries):
    write("client_datagram", f"query-{i:03}", q)
    write("tcp_stream", f"query-{i:03}", struct.pack("!H", len(q)) + q)
# Pipelined: a glibc-like pair, and a run of eight.
for i in range(0, len(queries) - 8, 8):
    run = b"".join(struct.pack("!H", len(q)) + q for q in queries[i:i + 8])
    write("tcp_stream", f"pipelined-{i:03}", run)
for i, a in enumerate(answers):
    write("upstream_response", f"answer-{i:03}", a)
    write("cache", f"answer-{i:03}", a)
# The tracker's input: [client, qtype bits, name length, name] per query, in capture order.
for i in range(0, len(queries), 8):
    seed = b""
    for q in queries[i:i + 8]:
        name, qtype = qname(q)
        seed += bytes([i % 4, 0 if qtype == 1 else 1, len(name) & 0xFF]) + name[:255]
    write("search", f"walk-{i:03}", seed)

pods = [
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-"},
     "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}},
    {"apiVersion": "v1", "kind": "Pod",
     "metadata": {"name": "alpine", "annotations": {"dnslens.io/inject": "true"}},
     "spec": {"dnsPolicy": "ClusterFirst", "dnsConfig": {"options": [{"name": "ndots", "value": "2"}]},
              "initContainers": [{"name": "setup", "image": "busybox"}],
              "containers": [{"name": "app", "image": "alpine:3.20", "ports": [{"containerPort": 8080}]}]}},
    {"apiVersion": "v1", "kind": "Pod",
     "metadata": {"name": "opted-out", "annotations": {"dnslens.io/inject": "false"}},
     "spec": {"hostNetwork": True, "containers": [{"name": "app", "image": "golang:1.23"}]}},
]
for i, pod in enumerate(pods):
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
              "request": {"uid": f"b7f1c0de-0000-4000-8000-00000000000{i}",
                          "kind": {"group": "", "version": "v1", "kind": "Pod"},
                          "resource": {"group": "", "version": "v1", "resource": "pods"},
                          "namespace": "shop", "operation": "CREATE",
                          "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                          "object": pod, "dryRun": False}}
    write("webhook", f"review-{i}", json.dumps(review).encode())
PY
for f in config/sidecar.yaml config/node-local.yaml; do
  cp "$f" "$seeds/config/$(basename "$f")"
done
printf 'mode: sidecar\ncache:\n  enabled: true\n---env\nDNSLENS_UPSTREAMS=10.96.0.10,10.96.0.11:53\nDNSLENS_UPSTREAM_TIMEOUT=2s\nDNSLENS_NDOTS=5\nDNSLENS_SEARCH=default.svc.cluster.local,svc.cluster.local\n' \
  >"$seeds/config/with-env.yaml"
find "$seeds" -type f | sed 's|/[^/]*$||' | sort | uniq -c
