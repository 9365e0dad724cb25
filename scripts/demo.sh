#!/usr/bin/env bash
# `npm run demo`: installs what it needs, then shows dinofleet learning on real images.
# Until the cluster lands (coordinator, workers, teacher-sync), the demo is the
# one-process trainer: it trains on Fashion-MNIST for DEMO_MINUTES (default 3) and prints
# k-NN accuracy of the trained teacher against a random-init network and raw pixels.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/ensure-deps.sh"
cd "$root"
exec tsx bench/learn/index.ts --minutes "${DEMO_MINUTES:-3}" --knn-train 5000 "$@"
