{{/* Names ------------------------------------------------------------------------------- */}}

{{- define "gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-<chart>, or <release> alone when it already contains the chart name. */}}
{{- define "gateway.fullname" -}}
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

{{- define "gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels -------------------------------------------------------------------------------
Call with (dict "ctx" $ "component" "gateway"). */}}

{{- define "gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gateway.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "gateway.labels" -}}
helm.sh/chart: {{ include "gateway.chart" .ctx }}
{{ include "gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: llm-gateway
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Image, service account --------------------------------------------------------------- */}}

{{- define "gateway.image" -}}
{{- $image := .Values.image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag | toString) }}
{{- end }}
{{- end }}

{{- define "gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Routing file ------------------------------------------------------------------------- */}}

{{- define "gateway.routingConfigMapName" -}}
{{- default (printf "%s-routing" (include "gateway.fullname" .)) .Values.routing.existingConfigMap }}
{{- end }}

{{- define "gateway.routingPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.routing.mountPath) .Values.routing.key }}
{{- end }}

{{/* The pod-template annotation that rolls the pods when the rendered routing file changes. */}}
{{- define "gateway.routingChecksum" -}}
{{- if and .Values.routing.rollOnChange (not .Values.routing.existingConfigMap) }}
checksum/routing-config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end }}
{{- end }}

{{/* Secrets (references only: this chart never holds a secret value) --------------------- */}}

{{- define "gateway.secretName" -}}
{{- default (printf "%s-secrets" (include "gateway.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{/* One env entry read from a Secret. Call with (dict "ctx" $ "env" NAME "ref" ENTRY). */}}
{{- define "gateway.secretEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ default (include "gateway.secretName" .ctx) .ref.secretName }}
      key: {{ required (printf "a Secret key for %s" .env) .ref.key }}
      {{- if .ref.optional }}
      optional: true
      {{- end }}
{{- end }}

{{/* Settings --------------------------------------------------------------------------- */}}

{{/* Processes sharing the limits: explicit, else (max pods) x workers per pod. */}}
{{- define "gateway.limiterReplicas" -}}
{{- $gw := .Values.gateway }}
{{- if gt (int $gw.limiterReplicas) 0 }}
{{- $gw.limiterReplicas | int }}
{{- else }}
{{- $pods := ternary $gw.autoscaling.maxReplicas $gw.replicaCount $gw.autoscaling.enabled }}
{{- mul (int $pods) (int $gw.workers) }}
{{- end }}
{{- end }}

{{/* Plain process settings of every container (no secrets). */}}
{{- define "gateway.settingsEnv" -}}
- name: GATEWAY_REDIS_KEY_PREFIX
  value: {{ .Values.settings.redisKeyPrefix | quote }}
- name: GATEWAY_REDIS_CLUSTER
  value: {{ .Values.settings.redisCluster | toString | quote }}
- name: GATEWAY_LOG_LEVEL
  value: {{ .Values.settings.logLevel | quote }}
- name: GATEWAY_SPOOL_DIR
  value: {{ .Values.settings.spoolDir | quote }}
- name: HOME
  value: /tmp
{{- with .Values.settings.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The database and Redis URLs, from their Secrets. */}}
{{- define "gateway.databaseEnv" -}}
{{ include "gateway.secretEnv" (dict "ctx" . "env" "GATEWAY_DATABASE_URL" "ref" .Values.secrets.databaseUrl) }}
{{- end }}

{{- define "gateway.redisEnv" -}}
{{ include "gateway.secretEnv" (dict "ctx" . "env" "GATEWAY_REDIS_URL" "ref" .Values.secrets.redisUrl) }}
{{- end }}

{{/* The upstream credentials the routing file names (gateway pods only). */}}
{{- define "gateway.upstreamEnv" -}}
{{- range $env, $ref := .Values.upstreamApiKeys }}
{{ include "gateway.secretEnv" (dict "ctx" $ "env" $env "ref" $ref) }}
{{- end }}
{{- end }}

{{/* Volumes and mounts ------------------------------------------------------------------ */}}

{{- define "gateway.scratchVolumes" -}}
- name: spool
  emptyDir:
    {{- with .Values.volumes.spool.medium }}
    medium: {{ . }}
    {{- end }}
    {{- with .Values.volumes.spool.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
- name: tmp
  emptyDir:
    {{- with .Values.volumes.tmp.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- end }}

{{- define "gateway.scratchMounts" -}}
- name: spool
  mountPath: {{ .Values.settings.spoolDir }}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* Scheduling --------------------------------------------------------------------------
Call with (dict "ctx" $ "component" NAME "values" .Values.gateway). */}}

{{- define "gateway.affinity" -}}
{{- $v := .values }}
{{- if $v.affinity }}
affinity:
  {{- toYaml $v.affinity | nindent 2 }}
{{- else if eq $v.antiAffinity "soft" }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: {{ $v.antiAffinityTopologyKey }}
          labelSelector:
            matchLabels:
              {{- include "gateway.selectorLabels" . | nindent 14 }}
{{- else if eq $v.antiAffinity "hard" }}
affinity:
  podAntiAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: {{ $v.antiAffinityTopologyKey }}
        labelSelector:
          matchLabels:
            {{- include "gateway.selectorLabels" . | nindent 12 }}
{{- else if ne $v.antiAffinity "none" }}
{{- fail (printf "antiAffinity must be soft, hard or none (got %q)" $v.antiAffinity) }}
{{- end }}
{{- with $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- range . }}
  - {{- toYaml (omit . "labelSelector") | nindent 4 }}
    labelSelector:
      {{- if .labelSelector }}
      {{- toYaml .labelSelector | nindent 6 }}
      {{- else }}
      matchLabels:
        {{- include "gateway.selectorLabels" $ | nindent 8 }}
      {{- end }}
  {{- end }}
{{- end }}
{{- with $.ctx.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $.ctx.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $.ctx.Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{/* Checks --------------------------------------------------------------------------------
Every `api_key_env` of the rendered routing file must be mapped to a Secret key. */}}
{{- define "gateway.checkRouting" -}}
{{- if not .Values.routing.existingConfigMap }}
{{- $text := required "routing.config: give the routing file (or routing.existingConfigMap)" .Values.routing.config }}
{{- $config := fromYaml $text }}
{{- if hasKey $config "Error" }}
{{- fail (printf "routing.config is not valid YAML: %s" (get $config "Error")) }}
{{- end }}
{{- if not $config.deployments }}
{{- fail "routing.config: `deployments` is empty (see gateway/config.py)" }}
{{- end }}
{{- range $config.deployments }}
{{- if and .api_key_env (not (hasKey $.Values.upstreamApiKeys .api_key_env)) }}
{{- fail (printf "routing.config: deployment %q reads %s, which upstreamApiKeys does not map to a Secret key" .name .api_key_env) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
