#!/usr/bin/env bash
# `make test`: sets up what the tests need (reusing a running region), then lint, format and type
# checks, then every test (vitest: unit, services against real servers, cross-service suites).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bash "$BERTH_ROOT/infra/test-tools.sh"
bash "$BERTH_ROOT/infra/up.sh" --no-services
source "$BERTH_ROOT/infra/node.sh"
set -a
source "$BERTH_LOCAL/env"
set +a
cd "$BERTH_ROOT"
log "lint, format, types"
$PNPM run check
log "tests"
$PNPM exec vitest run "$@"
