# syntax=docker/dockerfile:1
# The worker on an NVIDIA CUDA base with the TensorFlow compute backend:
#   docker build -f deploy/worker.Dockerfile -t dinofleet/worker:0.1.0 .
# @tensorflow/tfjs-node-gpu 4.22.0 (the version of the workspace's @tensorflow/tfjs-core, so
# there is one tfjs-core and one backend registry) links libtensorflow 2.9.1, built for CUDA
# 11.2 and cuDNN 8.1; CUDA 11.8 with cuDNN 8 runs it (CUDA 11 minor-version compatibility).
# The worker selects the backend with DINOFLEET_BACKEND=tensorflow (or --backend); packages/
# compute loads tfjs-node-gpu by name at run time. Not built in CI: see deploy/README.md.

ARG CUDA_IMAGE=nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04
ARG NODE_IMAGE=node:20-bookworm-slim

# Node 20 comes from the official image: its binary is the nodejs.org release build, which
# runs on Ubuntu 22.04's glibc.
FROM ${NODE_IMAGE} AS node

FROM ${CUDA_IMAGE} AS build
ARG PNPM_VERSION=12.4.2
# ca-certificates for the downloads of tfjs-node-gpu's install script (libtensorflow and the
# prebuilt addon); python3, make and g++ only if node-pre-gyp has to build the addon.
RUN apt-get update \
  && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates python3 make g++ \
  && rm -rf /var/lib/apt/lists/*
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules /usr/local/lib/node_modules
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
  && npm install --global --no-audit --no-fund "pnpm@${PNPM_VERSION}"
WORKDIR /app
COPY pnpm-lock.yaml pnpm-workspace.yaml ./
RUN pnpm fetch
COPY . .
RUN pnpm install --frozen-lockfile --offline
# Added at the workspace root, where packages/compute's import('@tensorflow/tfjs-node-gpu')
# finds it; its install script (allowed here only) downloads libtensorflow for the GPU.
RUN pnpm add --workspace-root --allow-build=@tensorflow/tfjs-node-gpu @tensorflow/tfjs-node-gpu@4.22.0 \
  && ls node_modules/@tensorflow/tfjs-node-gpu/lib/napi-v*/tfjs_binding.node

FROM ${CUDA_IMAGE}
COPY --from=node /usr/local/bin/node /usr/local/bin/node
# uid/gid 10001: the chart's podSecurityContext (runAsNonRoot, runAsUser 10001).
RUN groupadd --gid 10001 dinofleet && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin dinofleet
WORKDIR /app
COPY --from=build /app /app
# HOME and TMPDIR: tsx's cache; CUDA_CACHE_PATH: PTX compiled for GPUs newer than
# libtensorflow 2.9's kernels (sm_90 and up). All under /tmp, an emptyDir in the chart.
# The listen addresses are defaults for `docker run`; flags (the chart's) win. Peers need
# --advertise-host (the pod IP in Kubernetes).
ENV DINOFLEET_BACKEND=tensorflow HOME=/tmp TMPDIR=/tmp CUDA_CACHE_PATH=/tmp/cuda-cache \
  DINOFLEET_LISTEN=0.0.0.0:50051 DINOFLEET_DATA_LISTEN=0.0.0.0:50052 DINOFLEET_METRICS_LISTEN=0.0.0.0:9090
USER 10001:10001
EXPOSE 50051 50052 9090
ENTRYPOINT ["node", "--import", "tsx", "/app/services/worker/src/main.ts"]
