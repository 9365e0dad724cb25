{{/*
Names. The fullname is cut to 40 characters so that "<fullname>-teacher-sync" and the worker
StatefulSet's pod names (whose controller-revision-hash label must fit in 63) always fit.
*/}}
{{- define "dinofleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "dinofleet.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "dinofleet.coordinatorName" -}}{{ include "dinofleet.fullname" . }}-coordinator{{- end -}}
{{- define "dinofleet.teacherSyncName" -}}{{ include "dinofleet.fullname" . }}-teacher-sync{{- end -}}
{{- define "dinofleet.workerName" -}}{{ include "dinofleet.fullname" . }}-worker{{- end -}}
{{- define "dinofleet.redisName" -}}{{ include "dinofleet.fullname" . }}-redis{{- end -}}
{{- define "dinofleet.jobSubmitName" -}}{{ include "dinofleet.fullname" . }}-job-submit{{- end -}}

{{/* host:port of the coordinator and teacher-sync Services, as workers and clients dial them. */}}
{{- define "dinofleet.coordinatorAddress" -}}
{{ include "dinofleet.coordinatorName" . }}.{{ .Release.Namespace }}.svc:{{ .Values.ports.grpc }}
{{- end -}}
{{- define "dinofleet.teacherSyncAddress" -}}
{{ include "dinofleet.teacherSyncName" . }}.{{ .Release.Namespace }}.svc:{{ .Values.ports.grpc }}
{{- end -}}

{{- define "dinofleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object; call with (dict "root" $ "component" "worker"). */}}
{{- define "dinofleet.labels" -}}
helm.sh/chart: {{ include "dinofleet.chart" .root }}
{{ include "dinofleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: dinofleet
{{- end -}}

{{- define "dinofleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dinofleet.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* image reference; call with (dict "root" $ "image" .Values.images.worker). */}}
{{- define "dinofleet.image" -}}
{{ .image.repository }}:{{ default .root.Chart.AppVersion .image.tag }}
{{- end -}}

{{- define "dinofleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ default (include "dinofleet.fullname" .) .Values.serviceAccount.name }}
{{- else -}}
{{ default "default" .Values.serviceAccount.name }}
{{- end -}}
{{- end -}}

{{- define "dinofleet.coordinatorServiceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ default (include "dinofleet.coordinatorName" .) .Values.serviceAccount.coordinatorName }}
{{- else -}}
{{ default "default" .Values.serviceAccount.coordinatorName }}
{{- end -}}
{{- end -}}

{{/* Secrets: an existing one named in values, or the one the chart creates. */}}
{{- define "dinofleet.s3SecretName" -}}
{{ default (printf "%s-s3" (include "dinofleet.fullname" .)) .Values.s3.credentials.existingSecret }}
{{- end -}}
{{- define "dinofleet.s3HasCredentials" -}}
{{- if or .Values.s3.credentials.existingSecret .Values.s3.credentials.accessKeyId -}}true{{- end -}}
{{- end -}}
{{- define "dinofleet.redisUrlSecretName" -}}
{{ default (printf "%s-redis-url" (include "dinofleet.fullname" .)) .Values.redis.external.existingSecret }}
{{- end -}}
{{- define "dinofleet.redisAuthSecretName" -}}
{{ default (printf "%s-redis-auth" (include "dinofleet.fullname" .)) .Values.redis.bundled.auth.existingSecret }}
{{- end -}}
{{- define "dinofleet.tlsSecretName" -}}
{{ default (printf "%s-tls" (include "dinofleet.fullname" .)) .Values.tls.existingSecret }}
{{- end -}}
{{- define "dinofleet.apiTokensSecretName" -}}
{{ default (printf "%s-api-tokens" (include "dinofleet.fullname" .)) .Values.apiTokens.existingSecret }}
{{- end -}}

{{/*
Checks across values that values.schema.json cannot express. Included by every workload so
that `helm template` and `helm install` stop with a message naming the values.
*/}}
{{- define "dinofleet.checkValues" -}}
{{- if and (eq .Values.redis.mode "external") (not .Values.redis.external.url) (not .Values.redis.external.existingSecret) -}}
{{- fail "redis.external.url or redis.external.existingSecret is required when redis.mode is external" -}}
{{- end -}}
{{- if and (eq .Values.redis.mode "bundled") .Values.redis.bundled.auth.enabled (not .Values.redis.bundled.auth.password) (not .Values.redis.bundled.auth.existingSecret) -}}
{{- fail "redis.bundled.auth.password or redis.bundled.auth.existingSecret is required when redis.bundled.auth.enabled is true" -}}
{{- end -}}
{{- if and (not .Values.s3.credentials.existingSecret) (ne (empty .Values.s3.credentials.accessKeyId) (empty .Values.s3.credentials.secretAccessKey)) -}}
{{- fail "s3.credentials.accessKeyId and s3.credentials.secretAccessKey must be set together (or use s3.credentials.existingSecret)" -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) (or (not .Values.tls.cert) (not .Values.tls.key)) -}}
{{- fail "tls.cert and tls.key (or tls.existingSecret) are required when tls.enabled is true" -}}
{{- end -}}
{{- if and .Values.apiTokens.enabled (not .Values.apiTokens.existingSecret) (empty .Values.apiTokens.tokens) -}}
{{- fail "apiTokens.tokens (or apiTokens.existingSecret) is required when apiTokens.enabled is true" -}}
{{- end -}}
{{- if .Values.job.submit -}}
{{- $training := .Values.job.spec.spec.training -}}
{{- if and $training.steps $training.epochs -}}
{{- fail "job.spec.spec.training sets both steps and epochs: set the one you do not want to null" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.job.submit (eq .Values.coordinator.scaler "none") (gt (int .Values.job.spec.spec.fleet.workers) (int .Values.workers.replicas)) -}}
{{- fail (printf "job.spec.spec.fleet.workers (%d) is more than workers.replicas (%d) and coordinator.scaler is none: the job would wait for workers that never come" (int .Values.job.spec.spec.fleet.workers) (int .Values.workers.replicas)) -}}
{{- end -}}
{{- end -}}

{{/* Environment of every service that reads S3 (docs/cluster.md: resolveS3Config). */}}
{{- define "dinofleet.s3Env" -}}
{{- if .Values.s3.endpoint }}
- name: DINOFLEET_S3_ENDPOINT
  value: {{ .Values.s3.endpoint | quote }}
{{- end }}
{{- if .Values.s3.region }}
- name: AWS_REGION
  value: {{ .Values.s3.region | quote }}
{{- end }}
{{- if kindIs "bool" .Values.s3.forcePathStyle }}
- name: DINOFLEET_S3_FORCE_PATH_STYLE
  value: {{ .Values.s3.forcePathStyle | quote }}
{{- end }}
{{- if include "dinofleet.s3HasCredentials" . }}
{{- $existing := .Values.s3.credentials.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "dinofleet.s3SecretName" . }}
      key: {{ if $existing }}{{ .Values.s3.credentials.accessKeyIdKey }}{{ else }}AWS_ACCESS_KEY_ID{{ end }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "dinofleet.s3SecretName" . }}
      key: {{ if $existing }}{{ .Values.s3.credentials.secretAccessKeyKey }}{{ else }}AWS_SECRET_ACCESS_KEY{{ end }}
{{- end }}
{{- end -}}

{{/* Node's temporary files (tsx's transform cache) go to the /tmp emptyDir. */}}
{{- define "dinofleet.runtimeEnv" -}}
- name: HOME
  value: /tmp
- name: TMPDIR
  value: /tmp
{{- end -}}

{{/*
Volumes and mounts of a dinofleet pod; call with (dict "root" $ "apiTokens" true|false), and
"tmpSize" for more than 1Gi of /tmp.
/tmp is writable (the root filesystem is read-only); TLS and API tokens are mounted when on.
*/}}
{{- define "dinofleet.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .tmpSize | default "1Gi" }}
{{- if .root.Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "dinofleet.tlsSecretName" .root }}
    defaultMode: 0440
{{- end }}
{{- if and .apiTokens .root.Values.apiTokens.enabled }}
- name: api-tokens
  secret:
    secretName: {{ include "dinofleet.apiTokensSecretName" .root }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "dinofleet.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .root.Values.tls.enabled }}
- name: tls
  mountPath: /etc/dinofleet/tls
  readOnly: true
{{- end }}
{{- if and .apiTokens .root.Values.apiTokens.enabled }}
- name: api-tokens
  mountPath: /etc/dinofleet/api-tokens
  readOnly: true
{{- end }}
{{- end -}}

{{/* Checksums of the Secrets the chart creates, so that changing one rolls the pods. */}}
{{- define "dinofleet.secretChecksum" -}}
{{- $parts := list .Values.s3.credentials .Values.tls .Values.apiTokens .Values.redis.external .Values.redis.bundled.auth -}}
{{- toJson $parts | sha256sum -}}
{{- end -}}

{{/*
Probes of a dinofleet service: gRPC health (grpc.health.v1.Health, service "") for start-up and
readiness (NOT_SERVING while draining), GET /healthz on the metrics port for liveness. Call with
(dict "root" $ "startupSeconds" N "livenessSeconds" M): N bounds the start (a worker loads its
compute backend first), M is how long /healthz may go unanswered (a long synchronous step blocks
a worker's event loop) before the container is restarted.
*/}}
{{- define "dinofleet.probes" -}}
startupProbe:
  grpc:
    port: {{ .root.Values.ports.grpc }}
  periodSeconds: 5
  failureThreshold: {{ div .startupSeconds 5 }}
readinessProbe:
  grpc:
    port: {{ .root.Values.ports.grpc }}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 20
  timeoutSeconds: 10
  failureThreshold: {{ div .livenessSeconds 20 }}
{{- end -}}

{{- define "dinofleet.containerPorts" -}}
- name: grpc
  containerPort: {{ .Values.ports.grpc }}
  protocol: TCP
- name: metrics
  containerPort: {{ .Values.ports.metrics }}
  protocol: TCP
{{- end -}}
