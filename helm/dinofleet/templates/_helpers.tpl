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
{{- if .Values.job.submit -}}
{{- $training := .Values.job.spec.spec.training -}}
{{- if and $training.steps $training.epochs -}}
{{- fail "job.spec.spec.training sets both steps and epochs: set the one you do not want to null" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.job.submit (eq .Values.coordinator.scaler "none") (gt (int .Values.job.spec.spec.fleet.workers) (int .Values.workers.replicas)) -}}
{{- fail (printf "job.spec.spec.fleet.workers (%d) is more than workers.replicas (%d) and coordinator.scaler is none: the job would wait for workers that never come" (int .Values.job.spec.spec.fleet.workers) (int .Values.workers.replicas)) -}}
{{- end -}}
{{- include "dinofleet.checkSecurity" . -}}
{{- end -}}

{{/*
Checks of tls, apiTokens and the job-submit hook's token (part of dinofleet.checkValues).
Messages name values and say what to do; they never echo a token or a key.
*/}}
{{- define "dinofleet.checkSecurity" -}}
{{- $tls := .Values.tls -}}
{{- $tokens := .Values.apiTokens -}}
{{- range $i, $token := $tokens.tokens -}}
{{- range $field := list "name" "scope" "sha256" -}}
{{- if hasPrefix "dft_" (toString (index $token $field)) -}}
{{- fail (printf "apiTokens.tokens[%d].%s holds an API token itself (dft_...): only its hash goes into values. Put the sha256:<hex> that `dinofleet token create` prints there, and treat this token as leaked (it is in your values and maybe in Helm's release history): create a new one" $i $field) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if regexMatch "dft_[A-Za-z0-9_-]{43}" (toJson .Values) -}}
{{- fail "the values hold an API token itself (dft_ and 43 characters): tokens never go into values (Helm keeps values in its release history). Put only the token's hash in apiTokens.tokens, the token in a Secret (job.tokenSecret for the job-submit hook), and treat this token as leaked: create a new one with `dinofleet token create`" -}}
{{- end -}}
{{- if $tls.enabled -}}
{{- $pem := compact (list $tls.cert $tls.key $tls.ca) -}}
{{- if and $tls.existingSecret $pem -}}
{{- fail "tls.existingSecret and tls.cert/tls.key/tls.ca exclude each other: name a Secret or give PEM, not both" -}}
{{- end -}}
{{- if and $pem (ne (len $pem) 3) -}}
{{- fail "tls.cert, tls.key and tls.ca go together (the fleet certificate, its private key and the CA that issued it); leave all three empty for a CA the chart generates, or name a Secret in tls.existingSecret" -}}
{{- end -}}
{{- if $pem -}}
{{- if not (contains "-----BEGIN CERTIFICATE-----" $tls.cert) -}}
{{- fail "tls.cert is not a PEM certificate (no -----BEGIN CERTIFICATE----- line)" -}}
{{- end -}}
{{- if not (contains "-----BEGIN CERTIFICATE-----" $tls.ca) -}}
{{- fail "tls.ca is not a PEM certificate (no -----BEGIN CERTIFICATE----- line)" -}}
{{- end -}}
{{- if not (regexMatch "-----BEGIN [A-Z ]*PRIVATE KEY-----" $tls.key) -}}
{{- fail "tls.key is not a PEM private key (no -----BEGIN ... PRIVATE KEY----- line)" -}}
{{- end -}}
{{- end -}}
{{- else if not $tls.insecureAcknowledged -}}
{{- fail "tls.enabled is false: every service would run with --insecure (plaintext, no authentication: anyone who reaches the pods can join the fleet, read gradients and submit jobs). Keep tls.enabled true (the chart can generate the certificates), or set tls.insecureAcknowledged=true to accept that on a trusted test network" -}}
{{- end -}}
{{- $seen := dict -}}
{{- range $i, $token := $tokens.tokens -}}
{{- if not (regexMatch "^(sha256:)?[0-9a-f]{64}$" $token.sha256) -}}
{{- fail (printf "apiTokens.tokens[%d].sha256 (token %s) must be sha256: and 64 lowercase hex digits, as `dinofleet token create` prints it" $i $token.name) -}}
{{- end -}}
{{- $hash := include "dinofleet.apiTokenHash" $token -}}
{{- if hasKey $seen (printf "name %s" $token.name) -}}
{{- fail (printf "apiTokens.tokens[%d]: the name %s appears twice (the coordinator refuses a tokens file with a repeated name)" $i $token.name) -}}
{{- end -}}
{{- if hasKey $seen (printf "hash %s" $hash) -}}
{{- fail (printf "apiTokens.tokens[%d] (token %s): the same hash appears twice (the coordinator refuses a tokens file with a repeated hash)" $i $token.name) -}}
{{- end -}}
{{- $_ := set $seen (printf "name %s" $token.name) true -}}
{{- $_ := set $seen (printf "hash %s" $hash) true -}}
{{- end -}}
{{- if and $tokens.existingSecret $tokens.tokens -}}
{{- fail "apiTokens.existingSecret and apiTokens.tokens exclude each other: name a Secret holding a tokens file, or list the tokens, not both" -}}
{{- end -}}
{{- $hasTokens := or (not (empty $tokens.existingSecret)) (not (empty $tokens.tokens)) -}}
{{- if and $tls.enabled (not $hasTokens) -}}
{{- fail "apiTokens.tokens or apiTokens.existingSecret is required when tls.enabled is true: the coordinator's job API accepts only bearer tokens. Create one with `dinofleet token create --name NAME --scope admin`, keep the token it prints (clients send it as DINOFLEET_TOKEN), and put the printed line's name, scope and sha256 into apiTokens.tokens (e.g. --set apiTokens.tokens[0].name=NAME,apiTokens.tokens[0].scope=admin,apiTokens.tokens[0].sha256=sha256:...) or the line into a Secret named by apiTokens.existingSecret (key apiTokens.existingSecretKey)" -}}
{{- end -}}
{{- if and (not $tls.enabled) $hasTokens -}}
{{- fail "apiTokens has no effect with tls.enabled false (plaintext carries no authentication: the coordinator runs with --insecure and every caller is admin): drop apiTokens.tokens/apiTokens.existingSecret, or enable TLS" -}}
{{- end -}}
{{- if and .Values.job.submit $tls.enabled (not .Values.job.tokenSecret) -}}
{{- fail "job.submit needs job.tokenSecret when tls.enabled is true: the name of a Secret holding an API token with submit scope under job.tokenSecretKey. Create the token with `dinofleet token create --name helm-submit --scope submit`, add its sha256 line to apiTokens.tokens, and store the token itself with `kubectl create secret generic NAME --from-literal=token=<token>`" -}}
{{- end -}}
{{- end -}}

{{/* The stored form of an apiTokens.tokens entry's hash: sha256:<hex>. */}}
{{- define "dinofleet.apiTokenHash" -}}
{{- if hasPrefix "sha256:" .sha256 -}}{{ .sha256 }}{{- else -}}sha256:{{ .sha256 }}{{- end -}}
{{- end -}}

{{/* Where the TLS Secret comes from: "existing" (tls.existingSecret), "values" (PEM) or "generated". */}}
{{- define "dinofleet.tlsSource" -}}
{{- if .Values.tls.existingSecret -}}existing
{{- else if or .Values.tls.cert .Values.tls.key .Values.tls.ca -}}values
{{- else -}}generated
{{- end -}}
{{- end -}}

{{/*
The data (base64) of the TLS Secret the chart generates (tls.enabled, neither existingSecret
nor PEM): the Secret already in the cluster when it holds all three files, so that an upgrade
keeps the CA that running pods trust; else a new CA and one fleet certificate for every member
(genSignedCert: RSA 2048, server and client auth). The CA's key is dropped: nobody can issue
more certificates of this CA. SANs name the Services and the workers' stable names, although
members check the chain only (ring peers dial pod IPs). Computed once per render and kept on
the root context, so that the Secret and the pods' checksum annotation see the same material.
Returns JSON.
*/}}
{{- define "dinofleet.generatedTlsData" -}}
{{- if not (hasKey . "dinofleetGeneratedTlsData") -}}
{{- $existing := (lookup "v1" "Secret" .Release.Namespace (include "dinofleet.tlsSecretName" .)).data | default dict -}}
{{- $data := dict -}}
{{- if and (index $existing "ca.crt") (index $existing "tls.crt") (index $existing "tls.key") -}}
{{- $data = pick $existing "ca.crt" "tls.crt" "tls.key" -}}
{{- else -}}
{{- $fullname := include "dinofleet.fullname" . -}}
{{- $namespace := .Release.Namespace -}}
{{- $domain := .Values.workers.clusterDomain -}}
{{- $hosts := list -}}
{{- range $service := list (include "dinofleet.coordinatorName" .) (include "dinofleet.teacherSyncName" .) -}}
{{- $hosts = concat $hosts (list $service (printf "%s.%s" $service $namespace) (printf "%s.%s.svc" $service $namespace) (printf "%s.%s.svc.%s" $service $namespace $domain)) -}}
{{- end -}}
{{- $workers := include "dinofleet.workerName" . -}}
{{- $hosts = concat $hosts (list (printf "*.%s.%s.svc" $workers $namespace) (printf "*.%s.%s.svc.%s" $workers $namespace $domain)) -}}
{{- $days := int .Values.tls.generated.validityDays -}}
{{- $ca := genCA (printf "%s fleet CA" $fullname) $days -}}
{{- $cert := genSignedCert $fullname nil $hosts $days $ca -}}
{{- $data = dict "ca.crt" (b64enc $ca.Cert) "tls.crt" (b64enc $cert.Cert) "tls.key" (b64enc $cert.Key) -}}
{{- end -}}
{{- $_ := set . "dinofleetGeneratedTlsData" $data -}}
{{- end -}}
{{- toJson (index . "dinofleetGeneratedTlsData") -}}
{{- end -}}

{{/* Where the TLS Secret is mounted: --tls-dir of the services, DINOFLEET_TLS_DIR of the CLI. */}}
{{- define "dinofleet.tlsDir" -}}/etc/dinofleet/tls{{- end -}}

{{/* The key of the tokens file in the API tokens Secret, and where the coordinator reads it. */}}
{{- define "dinofleet.apiTokensKey" -}}
{{- if .Values.apiTokens.existingSecret -}}{{ .Values.apiTokens.existingSecretKey }}{{- else -}}api-tokens{{- end -}}
{{- end -}}
{{- define "dinofleet.apiTokensFile" -}}/etc/dinofleet/api-tokens/{{ include "dinofleet.apiTokensKey" . }}{{- end -}}

{{/* The transport security flag every service gets: --tls-dir, or --insecure with tls off. */}}
{{- define "dinofleet.tlsArgs" -}}
{{- if .Values.tls.enabled -}}
- --tls-dir={{ include "dinofleet.tlsDir" . }}
{{- else -}}
- --insecure
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
Volumes and mounts of a dinofleet pod; call with (dict "root" $), plus "apiTokens" true for the
coordinator (the tokens file), "caOnly" true for a client that must not hold the fleet's
certificate and key (the job-submit hook), "tmpSize" for more than 1Gi of /tmp.
/tmp is writable (the root filesystem is read-only); TLS and API tokens are mounted with TLS on.
*/}}
{{- define "dinofleet.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .tmpSize | default "1Gi" }}
{{- if .root.Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "dinofleet.tlsSecretName" .root }}
    defaultMode: 288  # 0440 (the pod's fsGroup reads), in decimal: YAML 1.1 and 1.2 read 0440 differently
    {{- if .caOnly }}
    items:
      - key: ca.crt
        path: ca.crt
    {{- end }}
{{- if .apiTokens }}
- name: api-tokens
  secret:
    secretName: {{ include "dinofleet.apiTokensSecretName" .root }}
    defaultMode: 288  # 0440 (the pod's fsGroup reads), in decimal: YAML 1.1 and 1.2 read 0440 differently
    # Only the tokens file, whatever else an existing Secret holds.
    items:
      - key: {{ include "dinofleet.apiTokensKey" .root }}
        path: {{ include "dinofleet.apiTokensKey" .root }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "dinofleet.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .root.Values.tls.enabled }}
- name: tls
  mountPath: {{ include "dinofleet.tlsDir" .root }}
  readOnly: true
{{- if .apiTokens }}
- name: api-tokens
  mountPath: /etc/dinofleet/api-tokens
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{/* Checksums of the Secrets the chart creates (and of a generated CA), so that changing one rolls the pods. */}}
{{- define "dinofleet.secretChecksum" -}}
{{- $parts := list .Values.s3.credentials .Values.tls .Values.apiTokens .Values.redis.external .Values.redis.bundled.auth -}}
{{- if and .Values.tls.enabled (eq (include "dinofleet.tlsSource" .) "generated") -}}
{{- /* A new generated CA (first install, or its Secret deleted to rotate) restarts every pod onto it. */ -}}
{{- $parts = append $parts (omit (include "dinofleet.generatedTlsData" . | fromJson) "tls.key") -}}
{{- end -}}
{{- toJson $parts | sha256sum -}}
{{- end -}}

{{/*
Probes of a dinofleet service: gRPC health (grpc.health.v1.Health, service "") for start-up and
readiness (NOT_SERVING while draining), GET /healthz on the metrics port for liveness. Call with
(dict "root" $ "startupSeconds" N "livenessSeconds" M): N bounds the start (a worker loads its
compute backend first), M is how long /healthz may go unanswered (a long synchronous step blocks
a worker's event loop) before the container is restarted.
*/}}
{{- /*
Start-up and readiness: with TLS on, a TCP check of the gRPC port (the kubelet's gRPC probe
speaks plaintext only, and the port requires mutual TLS); insecure, the gRPC health service.
*/ -}}
{{- define "dinofleet.grpcProbe" -}}
{{- if .Values.tls.enabled }}
tcpSocket:
  port: grpc
{{- else }}
grpc:
  port: {{ .Values.ports.grpc }}
{{- end }}
{{- end -}}

{{- define "dinofleet.probes" -}}
startupProbe:
  {{- include "dinofleet.grpcProbe" .root | nindent 2 }}
  periodSeconds: 5
  failureThreshold: {{ div .startupSeconds 5 }}
readinessProbe:
  {{- include "dinofleet.grpcProbe" .root | nindent 2 }}
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
