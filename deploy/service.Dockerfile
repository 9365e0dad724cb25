# syntax=docker/dockerfile:1
# The coordinator or teacher-sync (one Dockerfile, the service chosen by SERVICE):
#   docker build -f deploy/service.Dockerfile --build-arg SERVICE=coordinator  -t dinofleet/coordinator:0.1.0 .
#   docker build -f deploy/service.Dockerfile --build-arg SERVICE=teacher-sync -t dinofleet/teacher-sync:0.1.0 .
# Services run from their TypeScript sources with tsx (`node --import tsx
# services/<name>/src/main.ts`, docs/cluster.md "Processes"), so the image is the workspace
# with its packages installed from the lockfile; nothing is compiled. The coordinator image
# also runs the dinofleet CLI (the Helm chart's job-submit hook). Not built in CI: see
# deploy/README.md.

ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS build
# The pnpm of package.json's packageManager, installed with npm as scripts/ensure-deps.sh does.
ARG PNPM_VERSION=12.4.2
RUN npm install --global --no-audit --no-fund "pnpm@${PNPM_VERSION}"
WORKDIR /app
# Packages first, from the lockfile alone, so this layer is reused until the lockfile changes.
COPY pnpm-lock.yaml pnpm-workspace.yaml ./
RUN pnpm fetch
COPY . .
RUN pnpm install --frozen-lockfile --offline

FROM ${NODE_IMAGE}
ARG SERVICE
RUN case "${SERVICE}" in coordinator|teacher-sync) ;; *) echo "build with --build-arg SERVICE=coordinator or SERVICE=teacher-sync" >&2; exit 1 ;; esac
# uid/gid 10001: the chart's podSecurityContext (runAsNonRoot, runAsUser 10001).
RUN groupadd --gid 10001 dinofleet && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin dinofleet
WORKDIR /app
COPY --from=build /app /app
# tsx keeps its transform cache under the temp directory: /tmp, an emptyDir in the chart
# (the root filesystem is read-only there). The listen addresses are defaults for
# `docker run`; flags (the chart's) win.
ENV DINOFLEET_SERVICE=${SERVICE} HOME=/tmp TMPDIR=/tmp \
  DINOFLEET_LISTEN=0.0.0.0:50051 DINOFLEET_METRICS_LISTEN=0.0.0.0:9090
USER 10001:10001
EXPOSE 50051 9090
ENTRYPOINT ["sh", "-c", "exec node --import tsx \"/app/services/${DINOFLEET_SERVICE}/src/main.ts\" \"$@\"", "--"]
