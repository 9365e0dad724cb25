#!/usr/bin/env bash
# Installs what dinofleet needs on a fresh machine with Node 20: pnpm (pinned, bootstrapped
# with npm because corepack's signature check fails against this machine's registry) and the
# workspace's packages. Cheap when nothing changed. Sourced or run; puts pnpm on PATH.
set -euo pipefail
export TURBO_TELEMETRY_DISABLED=1 DO_NOT_TRACK=1
# The pinned AWS SDK prints a multi-line notice on Node 20 in every process (future SDK
# releases will need Node 22); dinofleet pins its SDK version, so the notice is noise.
export AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED=true
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pnpm_version="$(node -p "require('$root/package.json').packageManager.split('@')[1]")"
pnpm_dir="$root/.cache/pnpm-$pnpm_version"
if [ ! -x "$pnpm_dir/node_modules/.bin/pnpm" ]; then
  echo "dinofleet: installing pnpm@$pnpm_version into .cache/" >&2
  npm install --silent --no-audit --no-fund --prefix "$pnpm_dir" "pnpm@$pnpm_version" >&2
fi
export PATH="$pnpm_dir/node_modules/.bin:$root/node_modules/.bin:$PATH"
stamp="$root/node_modules/.dinofleet-installed"
changed=""
if [ -f "$stamp" ]; then
  changed="$(find "$root/pnpm-lock.yaml" "$root/pnpm-workspace.yaml" "$root/package.json" "$root"/packages/*/package.json \
    "$root"/services/*/package.json "$root/bench/package.json" "$root/test/package.json" "$root/helm/package.json" -newer "$stamp" 2>/dev/null | head -n 1 || true)"
fi
if [ ! -f "$stamp" ] || [ -n "$changed" ]; then
  echo "dinofleet: installing workspace dependencies" >&2
  # CI installs exactly the lockfile; a developer who edited a package.json updates it.
  frozen=""; [ "${CI:-}" = "true" ] && [ -f "$root/pnpm-lock.yaml" ] && frozen="--frozen-lockfile"
  (cd "$root" && pnpm install $frozen --reporter=append-only >&2)
  touch "$stamp"
fi
# redis-server backs `dinofleet up` and the integration tests. Install it where we can;
# elsewhere only say how, since only the code that starts a Redis needs it (and says so).
if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "dinofleet: installing redis-server with apt-get" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2 ||
      echo "dinofleet: apt-get install redis-server failed; install it yourself or pass --redis-url" >&2
  else
    echo "dinofleet: redis-server not found; install it (apt-get install redis-server, brew install redis) or pass --redis-url to dinofleet up" >&2
  fi
fi
# prometheus and promtool back `dinofleet up --prometheus` and test/monitoring.test.ts; the same
# policy as redis-server (apt-get as root, else a message), in a script those two also run.
bash "$root/scripts/ensure-prometheus.sh" || true
