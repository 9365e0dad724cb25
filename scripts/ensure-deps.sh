#!/usr/bin/env bash
# Installs what dinofleet needs on a fresh machine with Node 20: pnpm (pinned, bootstrapped
# with npm because corepack's signature check fails against this machine's registry) and the
# workspace's packages. Cheap when nothing changed. Sourced or run; puts pnpm on PATH.
set -euo pipefail
export TURBO_TELEMETRY_DISABLED=1 DO_NOT_TRACK=1
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pnpm_version="$(node -p "require('$root/package.json').packageManager.split('@')[1]")"
pnpm_dir="$root/.cache/pnpm-$pnpm_version"
if [ ! -x "$pnpm_dir/node_modules/.bin/pnpm" ]; then
  echo "dinofleet: installing pnpm@$pnpm_version into .cache/" >&2
  npm install --silent --no-audit --no-fund --prefix "$pnpm_dir" "pnpm@$pnpm_version" >&2
fi
export PATH="$pnpm_dir/node_modules/.bin:$root/node_modules/.bin:$PATH"
stamp="$root/node_modules/.dinofleet-installed"
if [ ! -f "$stamp" ] || [ "$root/pnpm-lock.yaml" -nt "$stamp" ] || [ "$root/package.json" -nt "$stamp" ]; then
  echo "dinofleet: installing workspace dependencies" >&2
  frozen="--frozen-lockfile"; [ -f "$root/pnpm-lock.yaml" ] || frozen=""
  (cd "$root" && pnpm install $frozen --reporter=append-only >&2)
  touch "$stamp"
fi
