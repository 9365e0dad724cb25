#!/usr/bin/env bash
# `npm run bench -- <name> [args]`: runs bench/<name>/index.ts; its last line is one JSON object.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 1 ] || [ ! -f "$root/bench/$1/index.ts" ]; then
  echo "usage: npm run bench -- <name> [args]; benchmarks: $(cd "$root/bench" && ls -d */ | tr -d / | tr '\n' ' ')" >&2
  exit 2
fi
source "$root/scripts/ensure-deps.sh"
name="$1"; shift
cd "$root"
exec tsx "bench/$name/index.ts" "$@"
