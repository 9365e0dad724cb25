#!/usr/bin/env bash
# Installs Debian's `prometheus` package (prometheus and promtool) where it is missing, the way
# ensure-deps.sh installs redis-server: with apt-get when running as root, otherwise it only
# says how. `dinofleet up --prometheus` and test/monitoring.test.ts need it (both run this
# script when they do not find prometheus); nothing else does. Exits 0 when both binaries are
# there afterwards, 1 otherwise. Never starts the packaged service.
set -euo pipefail
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/bin/$1" ]; }
if have prometheus && have promtool; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "dinofleet: installing prometheus with apt-get (for dinofleet up --prometheus and the monitoring test)" >&2
  # policy-rc.d keeps the package's init script from starting a Prometheus on :9090 where an
  # init system is running; the dinofleet tools start their own with a generated config.
  policy=/usr/sbin/policy-rc.d
  made_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
  fi
  status=0
  { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2; } || status=$?
  [ -n "$made_policy" ] && rm -f "$policy"
  if [ "$status" != "0" ]; then
    echo "dinofleet: apt-get install prometheus failed; install Prometheus 2.x (prometheus and promtool on PATH) yourself" >&2
    exit 1
  fi
else
  echo "dinofleet: prometheus not found; install it (as root: apt-get install prometheus; or put Prometheus 2.x's prometheus and promtool on PATH); only dinofleet up --prometheus and test/monitoring.test.ts need it" >&2
  exit 1
fi
have prometheus && have promtool
