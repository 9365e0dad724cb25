#!/usr/bin/env bash
# `npm test`: installs what it needs, then typechecks, lints and runs every test: the unit
# tests of every package first, then the integration tests against real processes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/ensure-deps.sh"
cd "$root"
turbo run typecheck lint --output-logs=errors-only
vitest run --project unit "$@"
vitest run --project integration "$@"
