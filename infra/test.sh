#!/usr/bin/env bash
# `make test`: sets up what the tests need (reusing a running region), then lint, format, type and
# shell checks, then the unit tests (vitest project `unit`), then the integration tests (project
# `integration`: services against real servers, cross-service suites; then `integration-alone`:
# the tests that stop a cell's kubelet, one at a time). Arguments go to every run.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bash "$BERTH_ROOT/infra/test-tools.sh"
bash "$BERTH_ROOT/infra/up.sh" --no-services
source "$BERTH_ROOT/infra/node.sh"
set -a
# shellcheck source=/dev/null # written by make up
source "$BERTH_LOCAL/env"
set +a
cd "$BERTH_ROOT"
log "lint, format, types, shellcheck"
$PNPM run check
# A file filter given by hand may match only one tier's files.
filter=()
(($#)) && filter=(--passWithNoTests)
log "unit tests"
$PNPM exec vitest run --project unit "${filter[@]}" "$@"
log "integration tests"
$PNPM exec vitest run --project integration "${filter[@]}" "$@"
log "integration tests that stop a cell's kubelet, one at a time"
$PNPM exec vitest run --project integration-alone --passWithNoTests "$@"
