#!/usr/bin/env bash
# `npm run demo`: installs what it needs (pnpm, the workspace, redis-server from Debian's
# packages when it is missing), then runs the whole system on loopback: Redis, s3rver,
# a coordinator, a teacher-sync and 2 worker processes train DINOv2 on Fashion-MNIST
# read from S3, and the trained teacher is evaluated with k-NN. Progress on stderr; the
# last line of stdout is one JSON object. Flags: --steps, --workers, --images, --batch-size,
# --knn-train, --knn-test (see packages/cli/src/demo.ts).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/ensure-deps.sh"
cd "$root"
exec tsx packages/cli/src/demo.ts "$@"
