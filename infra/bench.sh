#!/usr/bin/env bash
# `make bench`: every benchmark under test/bench, each printing its figures and ratios.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bash "$BERTH_ROOT/infra/up.sh" --no-services
source "$BERTH_ROOT/infra/node.sh"
set -a
# shellcheck source=/dev/null # written by make up
source "$BERTH_LOCAL/env"
set +a
cd "$BERTH_ROOT"
shopt -s nullglob
for bench in test/bench/*.ts; do
  log "bench: $bench"
  "$NODE" "$bench"
done
