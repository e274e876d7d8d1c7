{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "acs-identity-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the prefix of every namespaced and cluster-scoped object of a release. */}}
{{- define "acs-identity-operator.fullname" -}}
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

{{- define "acs-identity-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "acs-identity-operator.labels" -}}
helm.sh/chart: {{ include "acs-identity-operator.chart" . }}
{{ include "acs-identity-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: acs-identity-operator
{{- end }}

{{/* Selector labels: stable across upgrades (a Deployment's selector is immutable). */}}
{{- define "acs-identity-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "acs-identity-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "acs-identity-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "acs-identity-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "acs-identity-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The --default-service value: explicit, else the ClusterCommunicationService this
release creates, else empty. */}}
{{- define "acs-identity-operator.defaultService" -}}
{{- if .Values.defaultService }}
{{- .Values.defaultService }}
{{- else if .Values.clusterCommunicationService.create }}
{{- printf "ClusterCommunicationService/%s" .Values.clusterCommunicationService.name }}
{{- end }}
{{- end }}

{{/* The cluster resource namespace: where ClusterCommunicationService credentials live. */}}
{{- define "acs-identity-operator.clusterResourceNamespace" -}}
{{- .Values.clusterResourceNamespace | default .Release.Namespace }}
{{- end }}

{{/* Namespace of the chart-created ClusterCommunicationService's credential Secret: the
cluster resource namespace; any other would be refused by the operator. */}}
{{- define "acs-identity-operator.cssSecretNamespace" -}}
{{- $crn := include "acs-identity-operator.clusterResourceNamespace" . }}
{{- $ns := .Values.clusterCommunicationService.connectionStringSecretRef.namespace | default $crn }}
{{- if ne $ns $crn }}
{{- fail (printf "clusterCommunicationService.connectionStringSecretRef.namespace is %q, but ClusterCommunicationService credentials must live in the cluster resource namespace %q: leave it empty, or set clusterResourceNamespace" $ns $crn) }}
{{- end }}
{{- $ns }}
{{- end }}

{{/*
RBAC rules for namespaced resources: granted cluster-wide (ClusterRole) when every
namespace is watched, or per watched namespace (Role) when watchNamespaces is a list.
*/}}
{{- define "acs-identity-operator.namespacedRules" -}}
- apiGroups: ["acs-operator.dev"]
  resources: ["communicationidentities"]
  # patch covers the finalizer; no create/delete: identities belong to their teams.
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["acs-operator.dev"]
  resources: ["communicationidentities/status"]
  # Status is replaced with a PUT conditional on the resourceVersion (the operator alone
  # writes it); patch for operators older than 0.2 and clusters whose RBAC lacks update.
  verbs: ["get", "update", "patch"]
- apiGroups: ["acs-operator.dev"]
  resources: ["communicationidentities/finalizers"]
  # Needed to set blockOwnerDeletion on the token Secret's ownerReference.
  verbs: ["update"]
- apiGroups: ["acs-operator.dev"]
  resources: ["communicationservices"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["acs-operator.dev"]
  resources: ["communicationservices/status"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  # Token Secrets it owns (created, then server-side applied; watched by label; deleted by
  # the garbage collector with their identity, never by the operator) and the credential
  # Secrets of the namespace's own CommunicationServices (read). Kubernetes RBAC cannot
  # narrow list/watch by label, so this is every Secret of the namespace; the operator
  # reads ClusterCommunicationService credentials only from the cluster resource namespace.
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .Values.rolloutRestart.enabled }}
# spec.rolloutRestartTargets: the pod template's restarted-at annotation, nothing else
# (merge patch; no get, list or watch of workloads).
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["patch"]
{{- end }}
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  # One event per occurrence (warnings only for new problems): never patched.
  verbs: ["create"]
{{- end }}

{{/* RBAC rules that only a ClusterRole can grant: cluster-scoped resources. */}}
{{- define "acs-identity-operator.clusterRules" -}}
- apiGroups: ["acs-operator.dev"]
  resources: ["clustercommunicationservices"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["acs-operator.dev"]
  resources: ["clustercommunicationservices/status"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  resources: ["namespaces"]
  # Watches namespace labels (metadata only) for ClusterCommunicationService
  # namespaceSelectors, and whether a namespace is being deleted.
  verbs: ["get", "list", "watch"]
{{- end }}

{{/* Non-empty when the ClusterCommunicationService API is registered in the cluster
(or passed with helm template --api-versions). */}}
{{- define "acs-identity-operator.cssApiAvailable" -}}
{{- if .Capabilities.APIVersions.Has "acs-operator.dev/v1alpha1/ClusterCommunicationService" }}true{{ end }}
{{- end }}

{{/*
Container resources. With expectedIdentities > 0 the memory request and limit come from
the fleet size (docs/scaling.md): request = 32 MiB + 6 KiB per identity, limit = the
larger of 1.5 x request and 256 MiB (a new leader lists the whole fleet and peaks above
its steady state). Everything else in .Values.resources is kept as given.
*/}}
{{- define "acs-identity-operator.resources" -}}
{{- $r := deepCopy .Values.resources -}}
{{- $n := int64 (.Values.expectedIdentities | default 0) -}}
{{- if gt $n 0 -}}
{{- $request := add 32 (div (add (mul $n 6) 1023) 1024) -}}
{{- $limit := max 256 (div (mul $request 3) 2) -}}
{{- $requests := deepCopy ($r.requests | default dict) -}}
{{- $limits := deepCopy ($r.limits | default dict) -}}
{{- $_ := set $requests "memory" (printf "%dMi" $request) -}}
{{- $_ := set $limits "memory" (printf "%dMi" $limit) -}}
{{- $_ := set $r "requests" $requests -}}
{{- $_ := set $r "limits" $limits -}}
{{- end -}}
{{- toYaml $r -}}
{{- end -}}
