{{/*
The chart name, or nameOverride; 63 characters at most (a label value's limit).
*/}}
{{- define "naiad.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of every resource: fullnameOverride, or the release name, followed by the chart name unless the
release name already contains it. 63 characters at most, as DNS names allow.
*/}}
{{- define "naiad.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
name-version of the chart, for the helm.sh/chart label.
*/}}
{{- define "naiad.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The labels that select the pods: stable across upgrades, so never the version.
*/}}
{{- define "naiad.selectorLabels" -}}
app.kubernetes.io/name: {{ include "naiad.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The labels of every resource: the selector labels, the chart, naiad's version, and commonLabels.
*/}}
{{- define "naiad.labels" -}}
helm.sh/chart: {{ include "naiad.chart" . }}
{{ include "naiad.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: inference-server
app.kubernetes.io/part-of: naiad
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The ServiceAccount the pods run as.
*/}}
{{- define "naiad.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "naiad.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image: repository, then @digest, or :tag (by default "cuda" with GPUs, "cpu" without).
*/}}
{{- define "naiad.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- $tag := .Values.image.tag | default (ternary "cuda" "cpu" (gt (int .Values.gpu.count) 0)) }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
The Secret holding the S3 access keys: existingSecret, the one the chart creates, or "" for none.
*/}}
{{- define "naiad.s3SecretName" -}}
{{- if .Values.s3.existingSecret }}
{{- .Values.s3.existingSecret }}
{{- else if .Values.s3.accessKeyId }}
{{- printf "%s-s3" (include "naiad.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the preStop sleep, naiad's drain (--exit-timeout-secs) and a margin for unloading.
Kubernetes counts the preStop hook inside the grace period, so all three must fit in it.
*/}}
{{- define "naiad.terminationGracePeriodSeconds" -}}
{{- add (int .Values.shutdown.preStopSleepSeconds) (int .Values.exitTimeoutSecs) (int .Values.shutdown.extraGraceSeconds) }}
{{- end }}

{{/*
The flags the chart builds itself; extraArgs may not repeat them.
*/}}
{{- define "naiad.managedFlags" -}}
model-control-mode repository-poll-secs load-model strict-readiness exit-timeout-secs model-load-thread-count http-port grpc-port metrics-port allow-metrics log-verbose log-format
{{- end }}

{{/*
The arguments of `naiad serve`, tritonserver's flag names, one per line as a YAML list.
*/}}
{{- define "naiad.args" -}}
- --model-repository={{ .Values.modelRepository.uri }}
- --model-control-mode={{ .Values.modelControlMode }}
{{- if eq .Values.modelControlMode "poll" }}
- --repository-poll-secs={{ .Values.repositoryPollSecs }}
{{- end }}
{{- range .Values.loadModels }}
- --load-model={{ . }}
{{- end }}
- --strict-readiness={{ .Values.strictReadiness }}
- --exit-timeout-secs={{ .Values.exitTimeoutSecs }}
- --model-load-thread-count={{ .Values.modelLoadThreadCount }}
- --http-port={{ .Values.containerPorts.http }}
- --grpc-port={{ .Values.containerPorts.grpc }}
- --metrics-port={{ .Values.containerPorts.metrics }}
- --allow-metrics={{ .Values.metrics.enabled }}
- --log-verbose={{ .Values.log.verbose }}
- --log-format={{ .Values.log.format }}
{{- range $index, $restriction := .Values.restrictedApis }}
- --http-restricted-api={{ join "," $restriction.apis }}:{{ $restriction.header }}=$(NAIAD_RESTRICTED_API_{{ $index }})
- --grpc-restricted-protocol={{ join "," $restriction.apis }}:{{ $restriction.header }}=$(NAIAD_RESTRICTED_API_{{ $index }})
{{- end }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
The PromQL label matchers that pick this release's pods out of Prometheus, as prometheus-operator labels the
targets of a ServiceMonitor: the Service's namespace and name.
*/}}
{{- define "naiad.promSelector" -}}
namespace="{{ .Release.Namespace }}",service="{{ include "naiad.fullname" . }}"
{{- end }}

{{/*
The KEDA query for one model ("" for all): pending requests or the rate of successful requests, summed over pods.
Called with (dict "root" $ "model" $model).
*/}}
{{- define "naiad.kedaQuery" -}}
{{- $root := .root }}
{{- $matchers := include "naiad.promSelector" $root }}
{{- if .model }}
{{- $matchers = printf "%s,model=\"%s\"" $matchers .model }}
{{- end }}
{{- if eq $root.Values.keda.metric "requestRate" }}
{{- printf "sum(rate(nv_inference_request_success{%s}[%s]))" $matchers $root.Values.keda.rateWindow }}
{{- else }}
{{- printf "sum(nv_inference_pending_request_count{%s})" $matchers }}
{{- end }}
{{- end }}

{{/*
Combinations values.schema.json cannot express, refused at render time with the value to change.
*/}}
{{- define "naiad.validate" -}}
{{- if and .Values.autoscaling.enabled .Values.keda.enabled }}
{{- fail "autoscaling.enabled and keda.enabled cannot both be true: KEDA creates its own HorizontalPodAutoscaler for the ScaledObject, and two autoscalers would fight over the Deployment's replicas. Enable only one." }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not (dig "requests" "cpu" "" .Values.resources)) }}
{{- fail "autoscaling.enabled scales on CPU utilization, a percentage of the pods' CPU request: set resources.requests.cpu." }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas is larger than autoscaling.maxReplicas." }}
{{- end }}
{{- if and .Values.keda.enabled (gt (int .Values.keda.minReplicas) (int .Values.keda.maxReplicas)) }}
{{- fail "keda.minReplicas is larger than keda.maxReplicas." }}
{{- end }}
{{- if and .Values.keda.enabled (not (kindIs "invalid" .Values.keda.idleReplicaCount)) (ge (int .Values.keda.idleReplicaCount) (int .Values.keda.minReplicas)) }}
{{- fail "keda.idleReplicaCount must be less than keda.minReplicas (KEDA refuses the ScaledObject otherwise)." }}
{{- end }}
{{- if and .Values.keda.enabled (not .Values.metrics.enabled) }}
{{- fail "keda.enabled scales on naiad's Prometheus metrics: it needs metrics.enabled." }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "serviceMonitor.enabled scrapes naiad's metrics port: it needs metrics.enabled." }}
{{- end }}
{{- $restricted := list }}
{{- range .Values.restrictedApis }}
{{- range .apis }}
{{- if has . $restricted }}
{{- fail (printf "restrictedApis: API %q appears in two entries; naiad takes one header per API." .) }}
{{- end }}
{{- $restricted = append $restricted . }}
{{- end }}
{{- end }}
{{- if and .Values.loadModels (ne .Values.modelControlMode "explicit") }}
{{- fail (printf "loadModels needs modelControlMode: explicit (it is %q); in none and poll modes naiad loads every model of the repository." .Values.modelControlMode) }}
{{- end }}
{{- if and (has "*" .Values.loadModels) (gt (len .Values.loadModels) 1) }}
{{- fail "loadModels: [\"*\"] loads every model and must be the only entry." }}
{{- end }}
{{- if and .Values.modelRepository.existingClaim (contains "://" .Values.modelRepository.uri) }}
{{- fail (printf "modelRepository.existingClaim is mounted at %s, but modelRepository.uri is the object-store URI %q: use one or the other." .Values.modelRepository.mountPath .Values.modelRepository.uri) }}
{{- end }}
{{- $mount := clean .Values.modelRepository.mountPath }}
{{- $uri := clean .Values.modelRepository.uri }}
{{- if and .Values.modelRepository.existingClaim (ne $uri $mount) (not (hasPrefix (printf "%s/" $mount) $uri)) }}
{{- fail (printf "modelRepository.uri %q is outside the claim's mountPath %q." .Values.modelRepository.uri .Values.modelRepository.mountPath) }}
{{- end }}
{{- if and .Values.s3.existingSecret (or .Values.s3.accessKeyId .Values.s3.secretAccessKey) }}
{{- fail "s3.existingSecret and s3.accessKeyId/secretAccessKey are both set: the keys come from one Secret, either yours (existingSecret) or the chart's. Remove one." }}
{{- end }}
{{- if ne (empty .Values.s3.accessKeyId) (empty .Values.s3.secretAccessKey) }}
{{- fail "s3.accessKeyId and s3.secretAccessKey go together: set both, or neither." }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (kindIs "invalid" .Values.podDisruptionBudget.minAvailable) (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable) }}
{{- fail "podDisruptionBudget.enabled needs minAvailable or maxUnavailable." }}
{{- end }}
{{- $managed := splitList " " (include "naiad.managedFlags" .) }}
{{- range .Values.extraArgs }}
{{- $flag := regexReplaceAll "^--?([^=]*).*$" (toString .) "${1}" }}
{{- if has $flag $managed }}
{{- fail (printf "extraArgs: --%s is set from the chart's values (see values.yaml); set the value instead of passing the flag." $flag) }}
{{- end }}
{{- end }}
{{- end }}
