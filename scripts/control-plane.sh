#!/usr/bin/env bash
# A Kubernetes control plane without nodes, on loopback, for the cluster tests and for trying
# dnslens by hand: etcd, kube-apiserver, kubectl, kube-proxy and CoreDNS built from their Go
# modules.
#
#   scripts/control-plane.sh build          build (or reuse) the pinned binaries; prints their dir
#   scripts/control-plane.sh path NAME      the cached binary NAME (etcd, kube-apiserver, kubectl,
#                                           kube-proxy, coredns)
#                                           or the CRD directory (crds)
#   scripts/control-plane.sh start DIR      certificates, etcd and kube-apiserver on free loopback
#                                           ports; writes DIR/kubeconfig and DIR/env; returns when ready
#   scripts/control-plane.sh stop DIR       stops what `start DIR` started
#   scripts/control-plane.sh stop-apiserver DIR / start-apiserver DIR
#                                           stops / starts again only kube-apiserver (same port)
#   scripts/control-plane.sh coredns DIR PORT [UPSTREAM]
#                                           CoreDNS on 127.0.0.1:PORT, its kubernetes plugin
#                                           watching DIR's API server, other names forwarded to
#                                           UPSTREAM or NXDOMAIN (background; pid in DIR)
#   scripts/control-plane.sh jaeger DIR     Jaeger all-in-one on free loopback ports (OTLP in,
#                                           query API out); writes DIR/jaeger.env; returns when
#                                           ready. stop-jaeger DIR stops it.
#
# Also Prometheus (`path prometheus`): Debian's is built without Kubernetes service discovery;
# and Jaeger all-in-one (`path jaeger`), the tracing backend the cluster-wide view reads.
# Binaries are pinned by version and cached outside the clone, in $DNSLENS_TOOLS_CACHE
# (default ~/.cache/dnslens-tools), so a CI run on the same machine reuses them. A cold build
# takes about 15 minutes on 2 cores (kube-apiserver is most of it), a warm one a second.
# There is no controller-manager and no kubelet: pods stay Pending until a client patches
# their status, and a namespace's `default` ServiceAccount is created by whoever needs it.
set -euo pipefail

ETCD_VERSION=v3.6.16
KUBERNETES_VERSION=v1.36.3
COREDNS_VERSION=v1.14.7
# Prometheus with kubernetes_sd_configs (Debian's package is built without Kubernetes
# service discovery): module v0.316.0 is Prometheus 3.16.
PROMETHEUS_VERSION=v0.316.0
# The Prometheus Operator's CRDs (PodMonitor, ServiceMonitor, PrometheusRule), from its module,
# so the chart's monitoring objects are validated by the API server against the real schemas.
PROMETHEUS_OPERATOR_VERSION=v0.85.0
# Jaeger all-in-one (OTLP in, in-memory storage, query API out) for the cluster-wide view.
JAEGER_VERSION=v1.75.0

CACHE=${DNSLENS_TOOLS_CACHE:-$HOME/.cache/dnslens-tools}
BIN=$CACHE/bin
export GOFLAGS=${GOFLAGS:--mod=mod}
export GOTOOLCHAIN=local

die() { echo "control-plane: $*" >&2; exit 1; }

# go_program NAME VERSION-KEY MODULE-DIR PACKAGE [LDFLAGS]: builds PACKAGE from the scratch
# module in MODULE-DIR into $BIN/NAME-KEY, once.
go_program() {
  local name=$1 key=$2 moddir=$3 pkg=$4 ldflags=${5:-} out=$BIN/$1-$2
  [[ -x $out ]] && return 0
  echo "control-plane: building $name $key (cached in $BIN)" >&2
  (cd "$moddir" && go build -trimpath -ldflags="-s -w $ldflags" -o "$out.tmp" "$pkg") || die "building $name failed"
  mv "$out.tmp" "$out"
}

build_etcd() {
  local dir=$CACHE/src/etcd-$ETCD_VERSION
  if [[ ! -f $dir/go.sum ]]; then
    mkdir -p "$dir"
    cat >"$dir/main.go" <<'EOF'
// etcd's server, built from its module: the same entry point as the etcd binary.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
    (cd "$dir" && rm -f go.mod && go mod init dnslens.test/etcd >/dev/null 2>&1 &&
      go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1 && go mod tidy >/dev/null 2>&1) ||
      die "resolving etcd $ETCD_VERSION failed"
  fi
  go_program etcd "$ETCD_VERSION" "$dir" .
}

build_kubernetes() {
  local dir=$CACHE/src/kubernetes-$KUBERNETES_VERSION staging=v0.${KUBERNETES_VERSION#v1.}
  if [[ ! -f $dir/go.sum ]]; then
    mkdir -p "$dir"
    cat >"$dir/tools.go" <<'EOF'
//go:build tools

// The programs this module builds: kube-apiserver, kubectl and kube-proxy from
// k8s.io/kubernetes.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
EOF
    (
      cd "$dir" && rm -f go.mod && go mod init dnslens.test/kubernetes >/dev/null 2>&1
      # k8s.io/kubernetes requires its staging modules at v0.0.0; pin each to its release.
      local gomod
      gomod=$(curl -fsS "https://proxy.golang.org/k8s.io/kubernetes/@v/$KUBERNETES_VERSION.mod" 2>/dev/null ||
        go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' | xargs cat)
      for m in $(grep -oE 'k8s.io/[a-z0-9-]+ => ./staging' <<<"$gomod" | awk '{print $1}'); do
        [[ $m == k8s.io/sample-* ]] && continue
        go mod edit -replace "$m=$m@$staging"
      done
      go get "k8s.io/kubernetes@$KUBERNETES_VERSION" >/dev/null 2>&1
      go mod tidy -e >/dev/null 2>&1
      go mod download >/dev/null 2>&1
    ) || die "resolving kubernetes $KUBERNETES_VERSION failed"
  fi
  # The version the binaries report (/version, kubectl version), as the release build sets it.
  local minor=${KUBERNETES_VERSION#v1.} x ldflags=""
  minor=${minor%%.*}
  for x in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $x.gitVersion=$KUBERNETES_VERSION -X $x.gitMajor=1 -X $x.gitMinor=$minor -X $x.gitTreeState=clean"
  done
  go_program kube-apiserver "$KUBERNETES_VERSION" "$dir" k8s.io/kubernetes/cmd/kube-apiserver "$ldflags"
  go_program kubectl "$KUBERNETES_VERSION" "$dir" k8s.io/kubernetes/cmd/kubectl "$ldflags"
  # kube-proxy (iptables mode): the Service tests run it in a network namespace of their own.
  go_program kube-proxy "$KUBERNETES_VERSION" "$dir" k8s.io/kubernetes/cmd/kube-proxy "$ldflags"
}

# module_program NAME VERSION MODULE PACKAGE WHAT: a scratch module requiring MODULE@VERSION,
# PACKAGE built from it (WHAT says what it is, in the module's only file).
module_program() {
  local name=$1 version=$2 module=$3 pkg=$4 what=$5 dir=$CACHE/src/$1-$2
  if [[ ! -f $dir/go.sum ]]; then
    mkdir -p "$dir"
    printf '//go:build tools\n\n// The program this module builds: %s.\npackage tools\n\nimport _ "%s"\n' \
      "$what" "$pkg" >"$dir/tools.go"
    (cd "$dir" && rm -f go.mod && go mod init "dnslens.test/$name" >/dev/null 2>&1 &&
      go get "$module@$version" >/dev/null 2>&1 && go mod tidy -e >/dev/null 2>&1) ||
      die "resolving $name $version failed"
  fi
  go_program "$name" "$version" "$dir" "$pkg"
}

build_coredns() {
  module_program coredns "$COREDNS_VERSION" github.com/coredns/coredns github.com/coredns/coredns \
    "CoreDNS with its default plugins"
}

build_prometheus() {
  module_program prometheus "$PROMETHEUS_VERSION" github.com/prometheus/prometheus \
    github.com/prometheus/prometheus/cmd/prometheus "the Prometheus server, every service discovery in"
}

build_jaeger() {
  module_program jaeger "$JAEGER_VERSION" github.com/jaegertracing/jaeger \
    github.com/jaegertracing/jaeger/cmd/jaeger "Jaeger all-in-one"
}

fetch_crds() {
  local out=$CACHE/crds/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION src
  [[ -f $out/monitoring.coreos.com_podmonitors.yaml ]] && return 0
  echo "control-plane: fetching the Prometheus Operator $PROMETHEUS_OPERATOR_VERSION CRDs" >&2
  src=$(cd "$CACHE" && go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p') || die "downloading the Prometheus Operator module failed"
  [[ -d $src ]] || die "the Prometheus Operator module has no directory"
  mkdir -p "$out.tmp"
  cp "$src"/example/prometheus-operator-crd/monitoring.coreos.com_{podmonitors,servicemonitors,prometheusrules}.yaml "$out.tmp/"
  mv "$out.tmp" "$out"
}

path_of() {
  case $1 in
    etcd) echo "$BIN/etcd-$ETCD_VERSION" ;;
    kube-apiserver | kubectl | kube-proxy) echo "$BIN/$1-$KUBERNETES_VERSION" ;;
    coredns) echo "$BIN/coredns-$COREDNS_VERSION" ;;
    prometheus) echo "$BIN/prometheus-$PROMETHEUS_VERSION" ;;
    jaeger) echo "$BIN/jaeger-$JAEGER_VERSION" ;;
    crds) echo "$CACHE/crds/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION" ;;
    *) die "unknown program $1" ;;
  esac
}

need() { local p; p=$(path_of "$1"); [[ -x $p ]] || die "$1 is not built: run scripts/control-plane.sh build"; echo "$p"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

gen_certs() {
  local d=$1/pki
  mkdir -p "$d"
  (
    cd "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=dnslens-test-ca 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n' >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 2 -extfile apiserver.ext 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=admin" 2>/dev/null
    # X.509 v3 (extensions), which rustls requires of a client certificate.
    printf 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n' >admin.ext
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt -days 2 -extfile admin.ext 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
}

# Starts kube-apiserver with the arguments `start` wrote (the same port and certificates:
# a restart is the same server coming back).
launch_apiserver() {
  local dir=$1 args=()
  mapfile -t args <"$dir/kube-apiserver.args"
  "$(need kube-apiserver)" "${args[@]}" >>"$dir/kube-apiserver.log" 2>&1 &
  echo $! >"$dir/kube-apiserver.pid"
}

wait_ready() {
  local dir=$1 port i
  port=$(grep -A1 -x -- --secure-port "$dir/kube-apiserver.args" | tail -1)
  for i in $(seq 1 300); do
    if curl -fsS --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" --key "$dir/pki/admin.key" \
      "https://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
      return 0
    fi
    running "$(cat "$dir/kube-apiserver.pid")" || { tail -20 "$dir/kube-apiserver.log" >&2; die "kube-apiserver exited"; }
    sleep 0.2
  done
  tail -20 "$dir/kube-apiserver.log" >&2
  die "kube-apiserver not ready after 60 s"
}

start() {
  local dir=$1 etcd apiserver client_port peer_port api_port
  etcd=$(need etcd) apiserver=$(need kube-apiserver)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  gen_certs "$dir"
  client_port=$(free_port) peer_port=$(free_port) api_port=$(free_port)
  "$etcd" --name dnslens-test --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$client_port" --advertise-client-urls "http://127.0.0.1:$client_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "dnslens-test=http://127.0.0.1:$peer_port" --log-level warn \
    --quota-backend-bytes 1073741824 --unsafe-no-fsync >"$dir/etcd.log" 2>&1 &
  echo $! >"$dir/etcd.pid"
  printf '%s\n' --etcd-servers "http://127.0.0.1:$client_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --endpoint-reconciler-type none --service-cluster-ip-range 10.96.0.0/16 \
    --tls-cert-file "$dir/pki/apiserver.crt" --tls-private-key-file "$dir/pki/apiserver.key" \
    --client-ca-file "$dir/pki/ca.crt" --authorization-mode Node,RBAC \
    --service-account-key-file "$dir/pki/sa.pub" --service-account-signing-key-file "$dir/pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --enable-admission-plugins NamespaceLifecycle,LimitRanger,ResourceQuota,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy \
    --disable-admission-plugins ServiceAccount \
    --watch-cache=true --v 0 >"$dir/kube-apiserver.args"
  launch_apiserver "$dir"
  cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $dir/pki/ca.crt
users:
- name: admin
  user:
    client-certificate: $dir/pki/admin.crt
    client-key: $dir/pki/admin.key
contexts:
- name: test
  context: {cluster: test, user: admin}
current-context: test
EOF
  cat >"$dir/env" <<EOF
KUBECONFIG=$dir/kubeconfig
KUBE_APISERVER=https://127.0.0.1:$api_port
ETCD=http://127.0.0.1:$client_port
KUBECTL=$(path_of kubectl)
EOF
  wait_ready "$dir"
  echo "control-plane: ready at https://127.0.0.1:$api_port (KUBECONFIG=$dir/kubeconfig)" >&2
}

# Whether PID runs (a zombie does not: nobody may reap it here, PID 1 does not).
running() { [[ -r /proc/$1/stat ]] && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]; }

stop_pid() {
  local f=$1 pid i
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do running "$pid" || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"
}

stop() {
  local dir=$1
  stop_pid "$dir/coredns.pid"
  stop_pid "$dir/jaeger.pid"
  stop_pid "$dir/kube-apiserver.pid"
  stop_pid "$dir/etcd.pid"
}

# CoreDNS as a cluster runs it: the kubernetes plugin for the cluster domain and the
# reverse zones, watching DIR's API server; every other name to UPSTREAM (ADDR:PORT), or
# NXDOMAIN when none is given (nothing leaves loopback).
coredns() {
  local dir=$1 port=$2 upstream=${3:-} bin rest
  bin=$(need coredns)
  dir=$(cd "$dir" && pwd)
  if [[ -n $upstream ]]; then
    rest="forward . $upstream"
  else
    rest=$'template ANY ANY {\n        rcode NXDOMAIN\n    }'
  fi
  cat >"$dir/Corefile" <<EOF
cluster.local:$port in-addr.arpa:$port ip6.arpa:$port {
    bind 127.0.0.1
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $dir/kubeconfig test
        pods insecure
        ttl 5
    }
}
.:$port {
    bind 127.0.0.1
    errors
    $rest
}
EOF
  "$bin" -conf "$dir/Corefile" >"$dir/coredns.log" 2>&1 &
  echo $! >"$dir/coredns.pid"
}

# Jaeger all-in-one as a tracing backend: OTLP in (gRPC and HTTP), the query API and UI out,
# in-memory storage, every port a free loopback one. Writes DIR/jaeger.env (JAEGER_OTLP_GRPC,
# JAEGER_OTLP_HTTP, JAEGER_QUERY: URLs) and returns once the query API answers.
jaeger() {
  local dir=$1 bin grpc http query health i
  bin=$(need jaeger)
  dir=$(cd "$dir" && pwd)
  grpc=$(free_port) http=$(free_port) query=$(free_port) health=$(free_port)
  cat >"$dir/jaeger.yaml" <<EOF
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    traces:
      level: none
    logs:
      level: warn
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:$query
    grpc:
      endpoint: 127.0.0.1:$(free_port)
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:$health
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$grpc
      http:
        endpoint: 127.0.0.1:$http
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
EOF
  "$bin" --config "$dir/jaeger.yaml" >"$dir/jaeger.log" 2>&1 &
  echo $! >"$dir/jaeger.pid"
  printf 'JAEGER_OTLP_GRPC=http://127.0.0.1:%s\nJAEGER_OTLP_HTTP=http://127.0.0.1:%s\nJAEGER_QUERY=http://127.0.0.1:%s\n' \
    "$grpc" "$http" "$query" >"$dir/jaeger.env"
  for i in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$query/api/services" >/dev/null 2>&1 && return 0
    running "$(cat "$dir/jaeger.pid")" || die "jaeger exited: $(tail -5 "$dir/jaeger.log")"
    sleep 0.1
  done
  die "jaeger did not answer on 127.0.0.1:$query in 30 s"
}

case ${1:-} in
  build)
    mkdir -p "$BIN"
    build_etcd
    build_kubernetes
    build_coredns
    build_prometheus
    build_jaeger
    fetch_crds
    echo "$BIN"
    ;;
  path) path_of "${2:?program}" ;;
  start) start "${2:?state directory}" ;;
  stop-apiserver) stop_pid "${2:?state directory}/kube-apiserver.pid" ;;
  start-apiserver) launch_apiserver "${2:?state directory}" && wait_ready "$2" ;;
  stop) stop "${2:?state directory}" ;;
  coredns) coredns "${2:?state directory}" "${3:?port}" "${4:-}" ;;
  jaeger) jaeger "${2:?state directory}" ;;
  stop-jaeger) stop_pid "${2:?state directory}/jaeger.pid" ;;
  *) sed -n '2,/^set -euo/{/^#/p}' "$0" >&2; exit 2 ;;
esac
