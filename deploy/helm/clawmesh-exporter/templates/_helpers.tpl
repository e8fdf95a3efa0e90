{{/* Chart name, truncated to the 63 characters a label value may hold. */}}
{{- define "clawmesh-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's object names. */}}
{{- define "clawmesh-exporter.fullname" -}}
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

{{- define "clawmesh-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "clawmesh-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "clawmesh-exporter.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "clawmesh-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: clawmesh
{{- end }}

{{- define "clawmesh-exporter.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* "true" when the workspaces come from a config file. */}}
{{- define "clawmesh-exporter.configMode" -}}
{{- if .Values.workspaces }}true{{ end }}
{{- end }}

{{/* "true" when the endpoint speaks TLS. */}}
{{- define "clawmesh-exporter.tls" -}}
{{- if and .Values.webConfig .Values.webConfig.tls_server_config }}true{{ end }}
{{- end }}

{{/* "true" when every client must show a certificate: the kubelet's probes cannot. */}}
{{- define "clawmesh-exporter.mtls" -}}
{{- if include "clawmesh-exporter.tls" . }}
{{- if has (.Values.webConfig.tls_server_config.client_auth_type | default "") (list "RequireAndVerifyClientCert" "RequireAnyClientCert") }}true{{ end }}
{{- end }}
{{- end }}

{{/* The exporter's config file (workspaces mode). */}}
{{- define "clawmesh-exporter.configFile" -}}
{{- $list := list }}
{{- range $i, $w := .Values.workspaces }}
{{- $entry := omit $w "secretKey" }}
{{- if $w.secretKey }}
{{- if or $w.api_key_file $w.api_key_env }}
{{- fail (printf "workspaces[%d]: give secretKey, api_key_file or api_key_env, only one" $i) }}
{{- end }}
{{- if not $.Values.existingSecret }}
{{- fail (printf "workspaces[%d].secretKey: set existingSecret, the Secret holding the key" $i) }}
{{- end }}
{{- $_ := set $entry "api_key_file" (printf "/etc/clawmesh-exporter/secrets/%s" $w.secretKey) }}
{{- else if not (or $w.api_key_file $w.api_key_env) }}
{{- fail (printf "workspaces[%d]: needs secretKey (a key of existingSecret), api_key_file or api_key_env" $i) }}
{{- end }}
{{- $list = append $list $entry }}
{{- end }}
{{- $cfg := dict "workspaces" $list }}
{{- with .Values.configDefaults }}
{{- $_ := set $cfg "defaults" . }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* The checks that need more than the values schema. */}}
{{- define "clawmesh-exporter.validate" -}}
{{- if and (gt (int .Values.sharding.replicas) 1) (not .Values.workspaces) }}
{{- fail "sharding.replicas > 1 needs workspaces: shards split workspaces, and one workspace is always polled by one replica" }}
{{- end }}
{{- if and .Values.persistence.enabled .Values.persistence.existingClaim (gt (int .Values.sharding.replicas) 1) }}
{{- fail "persistence.existingClaim cannot be shared by shards: each shard needs a volume of its own (leave it empty: the chart makes one claim per shard)" }}
{{- end }}
{{- if and (not .Values.existingSecret) (not .Values.workspaces) }}
{{- fail "existingSecret: name the Secret holding the API key (kubectl create secret generic clawmesh-exporter-api-key --from-file=api-key=./key)" }}
{{- end }}
{{- end }}

{{/* The spec of the checkpoint volume's claim (persistence). */}}
{{- define "clawmesh-exporter.pvcSpec" -}}
accessModes:
  {{- toYaml .Values.persistence.accessModes | nindent 2 }}
{{- with .Values.persistence.storageClass }}
storageClassName: {{ ternary "" . (eq . "-") | quote }}
{{- end }}
resources:
  requests:
    storage: {{ .Values.persistence.size | quote }}
{{- end }}
