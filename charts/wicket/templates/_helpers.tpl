{{/* The chart name, or nameOverride. */}}
{{- define "wicket.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, else the release name
when it contains the chart name, else RELEASE-CHART. At most 52 characters,
so that suffixes such as "-admission-create" keep names within 63.
*/}}
{{- define "wicket.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "wicket.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "wicket.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wicket.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{/* Labels of every object (the component is added by each template). */}}
{{- define "wicket.baseLabels" -}}
helm.sh/chart: {{ include "wicket.chart" . }}
app.kubernetes.io/name: {{ include "wicket.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "wicket.labels" -}}
{{ include "wicket.baseLabels" . }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "wicket.admissionLabels" -}}
{{ include "wicket.baseLabels" . }}
app.kubernetes.io/component: admission-webhook
{{- end }}

{{- define "wicket.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "wicket.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "wicket.electionId" -}}
{{- default (printf "%s-leader" (include "wicket.fullname" .)) .Values.electionId }}
{{- end }}

{{/* Names of the admission webhook's objects. */}}
{{- define "wicket.admission" -}}
{{- printf "%s-admission" (include "wicket.fullname" .) }}
{{- end }}
{{- define "wicket.webhookName" -}}
validate-ingress.wicket.dev
{{- end }}

{{/* An image reference from {repository, tag, digest}, tag defaulting to appVersion. */}}
{{- define "wicket.imageRef" -}}
{{- $img := index . 0 }}{{- $ctx := index . 1 }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default $ctx.Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{- define "wicket.image" -}}
{{- include "wicket.imageRef" (list .Values.image .) }}
{{- end }}

{{- define "wicket.certgenImage" -}}
{{- $c := .Values.webhook.certgen.image }}
{{- if $c.repository }}
{{- include "wicket.imageRef" (list $c .) }}
{{- else }}
{{- include "wicket.image" . }}
{{- end }}
{{- end }}

{{/* Whether nginx listens on a port below 1024 in the pod. */}}
{{- define "wicket.privilegedPorts" -}}
{{- $low := or (lt (int .Values.containerPorts.http) 1024) (lt (int .Values.containerPorts.https) 1024) }}
{{- range $port, $_ := merge (dict) (default (dict) .Values.tcp) (default (dict) .Values.udp) }}
{{- if lt (int $port) 1024 }}{{ $low = true }}{{ end }}
{{- end }}
{{- if $low }}true{{ end }}
{{- end }}

{{/*
The nginx binary: Debian's, which needs no capability; for ports below 1024
the image's copy with the file capability cap_net_bind_service.
*/}}
{{- define "wicket.nginxBinary" -}}
{{- if include "wicket.privilegedPorts" . }}/usr/local/lib/wicket/nginx-low-ports{{ else }}/usr/sbin/nginx{{ end }}
{{- end }}

{{/*
The container's securityContext: the values, plus, for ports below 1024,
NET_BIND_SERVICE (the copy of nginx with the file capability cannot start
without it in the bounding set) and allowPrivilegeEscalation (no_new_privs
would cancel the file capability).
*/}}
{{- define "wicket.securityContext" -}}
{{- $sc := deepCopy .Values.securityContext }}
{{- if include "wicket.privilegedPorts" . }}
{{- $caps := default (dict) $sc.capabilities }}
{{- $add := default (list) $caps.add }}
{{- if not (has "NET_BIND_SERVICE" $add) }}
{{- $add = append $add "NET_BIND_SERVICE" }}
{{- end }}
{{- $_ := set $caps "add" $add }}
{{- $_ := set $sc "capabilities" $caps }}
{{- $_ := set $sc "allowPrivilegeEscalation" true }}
{{- end }}
{{- toYaml $sc }}
{{- end }}

{{/* The restricted securityContext of the hook Jobs. */}}
{{- define "wicket.jobSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
{{- end }}
