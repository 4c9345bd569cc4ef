{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "llmtrain-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped name for every object; the release name alone when it already contains the chart name. */}}
{{- define "llmtrain-operator.fullname" -}}
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

{{- define "llmtrain-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llmtrain-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmtrain-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "llmtrain-operator.labels" -}}
helm.sh/chart: {{ include "llmtrain-operator.chart" . }}
{{ include "llmtrain-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llmtrain
{{- end }}

{{- define "llmtrain-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llmtrain-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "llmtrain-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "llmtrain-operator.trainerImage" -}}
{{- printf "%s:%s" .Values.trainerImage.repository (default .Chart.AppVersion .Values.trainerImage.tag) }}
{{- end }}

{{/*
What the operator does inside a namespace it manages. Keep in step with operator/llmtrain_operator/rbac.py:
tests/unit/ship/test_chart_render.py compares the rendered rules with it.
*/}}
{{- define "llmtrain-operator.namespacedRules" -}}
# The custom resource: watched, read, deleted when ttlSecondsAfterFinished expires; status written.
- apiGroups: ["llmtrain.dev"]
  resources: ["llmtrainingjobs"]
  verbs: ["get", "list", "watch", "delete"]
- apiGroups: ["llmtrain.dev"]
  resources: ["llmtrainingjobs/status"]
  verbs: ["get", "patch", "update"]
# blockOwnerDeletion on the children's ownerReferences: OwnerReferencesPermissionEnforcement requires it.
- apiGroups: ["llmtrain.dev"]
  resources: ["llmtrainingjobs/finalizers"]
  verbs: ["update"]
# The job's children.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create", "delete"]
# patch: a new attempt (gang restart, resume) re-renders the trainer config from the edited spec.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "delete", "patch"]
# Native gangs: one scheduling.k8s.io PodGroup per attempt (Kubernetes 1.37+, GenericWorkload).
- apiGroups: ["scheduling.k8s.io"]
  resources: ["podgroups"]
  verbs: ["get", "create", "delete"]
# Events for every transition (kopf posts its own errors too).
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
What the operator needs cluster-wide in both modes: kopf discovers the CRD and lists/watches namespaces even when it
is given explicit namespace names (without it, it retries and never starts watching jobs); the memory preflight
indexes nodes (GPUs, label nvidia.com/gpu.memory), which are cluster-scoped whatever namespaces are watched.
*/}}
{{- define "llmtrain-operator.discoveryRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/*
Leader election (two replicas): the Lease in the release namespace. Mirrors rbac.LEADER_ELECTION_RULES.
*/}}
{{- define "llmtrain-operator.leaderElectionRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "patch", "update"]
{{- end }}
