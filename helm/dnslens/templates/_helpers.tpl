{{/* Names and labels shared by every object. */}}
{{- define "dnslens.name" -}}
{{- .Values.fullnameOverride | default .Release.Name | trunc 55 | trimSuffix "-" -}}
{{- end -}}

{{- define "dnslens.labels" -}}
app.kubernetes.io/name: dnslens
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "dnslens.selector" -}}
app.kubernetes.io/name: dnslens
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- /* repository:tag, or repository@digest when image.digest pins it. */ -}}
{{- define "dnslens.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* Kubernetes 1.29+ (native sidecars: the injected sidecar and node-local's setup), or
     a clear refusal. */}}
{{- define "dnslens.requireKube" -}}
{{- if not (semverCompare ">=1.29-0" (include "dnslens.kubeVersion" .)) }}
{{- fail (printf "dnslens needs Kubernetes 1.29 or newer (native sidecars); this cluster is %s. Before 1.29 an injected sidecar would be a regular container, and a Job's pod would never complete." (include "dnslens.kubeVersion" .)) }}
{{- end }}
{{- end -}}

{{/* The Kubernetes version injected pods run on, MAJOR.MINOR. */}}
{{- define "dnslens.kubeVersion" -}}
{{- if .Values.sidecar.kubeVersion -}}
{{ .Values.sidecar.kubeVersion }}
{{- else -}}
{{ .Capabilities.KubeVersion.Major }}.{{ .Capabilities.KubeVersion.Minor | trimSuffix "+" }}
{{- end -}}
{{- end -}}

{{/* The cluster DNS Service's address: the value clusterDNS, else the ClusterIP of the
     Service clusterDNSService looked up at install time; empty when neither is known
     (`helm template` has no cluster to look in). */}}
{{- define "dnslens.clusterDNS" -}}
{{- if .Values.clusterDNS -}}
{{ .Values.clusterDNS }}
{{- else -}}
{{- $svc := lookup "v1" "Service" .Values.clusterDNSService.namespace .Values.clusterDNSService.name -}}
{{- if and $svc $svc.spec $svc.spec.clusterIP -}}
{{ $svc.spec.clusterIP }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Node-local's upstream: the cluster DNS address, or — rendered without a cluster and
     installed in the Service's own namespace — its service variable, which Kubernetes
     expands in the container's arguments. Fails with the way out otherwise. */}}
{{- define "dnslens.nodeLocalUpstream" -}}
{{- $addr := include "dnslens.clusterDNS" . -}}
{{- if $addr -}}
{{ $addr }}
{{- else if eq .Release.Namespace .Values.clusterDNSService.namespace -}}
$({{ .Values.clusterDNSService.name | upper | replace "-" "_" }}_SERVICE_HOST)
{{- else -}}
{{- fail (printf "clusterDNS is not set and the Service %s/%s was not found: set clusterDNS to your cluster DNS Service's ClusterIP (kubectl -n %s get service %s -o jsonpath='{.spec.clusterIP}'), or install node-local into %s" .Values.clusterDNSService.namespace .Values.clusterDNSService.name .Values.clusterDNSService.namespace .Values.clusterDNSService.name .Values.clusterDNSService.namespace) -}}
{{- end -}}
{{- end -}}

{{/* Whether TLS comes from cert-manager. */}}
{{- define "dnslens.certManager" -}}
{{- $mode := toString .Values.sidecar.tls.certManager -}}
{{- if eq $mode "true" -}}true
{{- else if eq $mode "false" -}}
{{- else if .Capabilities.APIVersions.Has "cert-manager.io/v1" -}}true
{{- end -}}
{{- end -}}

{{/* The securityContext every dnslens container runs with. */}}
{{- define "dnslens.securityContext" -}}
runAsNonRoot: {{ ne (int .runAsUser) 0 }}
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsUser }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
  add: [NET_BIND_SERVICE]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Downward-API variables behind the k8s.* resource attributes of traces, and OTLP. */}}
{{- define "dnslens.env" -}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: NODE_NAME
  valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
{{- with include "dnslens.resourceAttributes" . }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* tracing.resourceAttributes as OTEL_RESOURCE_ATTRIBUTES: k=v,k=v (sorted). */}}
{{- define "dnslens.resourceAttributes" -}}
{{- $pairs := list }}
{{- range $k, $v := .Values.tracing.resourceAttributes }}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) }}
{{- end }}
{{- join "," $pairs }}
{{- end -}}

{{- /* Placement and pull secrets of a pod spec (DaemonSet and webhook Deployment);
       `defaultTolerations` applies when the tolerations value is empty. */ -}}
{{- define "dnslens.podPlacement" -}}
{{- $v := .root.Values }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with ($v.tolerations | default .defaultTolerations) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpread }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- /* The user's extra pod labels and annotations (podLabels, podAnnotations). */ -}}
{{- define "dnslens.podLabels" -}}
{{- with .Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}
{{- define "dnslens.podAnnotations" -}}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The kube-dns address node-local binds when it intercepts it: needed at render time. */}}
{{- define "dnslens.interceptAddress" -}}
{{- include "dnslens.clusterDNS" . | required "nodeLocal.linkLocal.interceptClusterDNS binds the cluster DNS address on every node: set clusterDNS (kubectl -n kube-system get service kube-dns -o jsonpath='{.spec.clusterIP}')" -}}
{{- end -}}

{{- /* Every series gets `workload`: the Deployment, StatefulSet, DaemonSet or CronJob that
       owns the pod (the pod's name for a bare pod), so the alerts aggregate a fleet of
       sidecars into one alert per workload. */ -}}
{{- define "dnslens.workloadRelabelings" -}}
- sourceLabels: [__meta_kubernetes_pod_name]
  targetLabel: workload
- sourceLabels: [__meta_kubernetes_pod_controller_name]
  regex: (.+)
  targetLabel: workload
- sourceLabels: [__meta_kubernetes_pod_controller_kind, __meta_kubernetes_pod_controller_name]
  regex: ReplicaSet;(.+)-[a-z0-9]+
  targetLabel: workload
- sourceLabels: [__meta_kubernetes_pod_controller_kind, __meta_kubernetes_pod_controller_name]
  regex: Job;(.+)-[0-9]+
  targetLabel: workload
{{- end -}}
