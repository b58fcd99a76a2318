#!/usr/bin/env bash
# `make test`: sets up what the tests need, the whole region as `make up` leaves it (reusing a
# running one: some suites drive make up's API, sample app and its build), then lint, format, type and
# shell checks, then the unit tests (vitest project `unit`), then the integration tests (project
# `integration`: services against real servers, cross-service suites; then `integration-alone`:
# the tests that stop a cell's kubelet, one at a time). Arguments go to every run.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bash "$BERTH_ROOT/infra/test-tools.sh"
bash "$BERTH_ROOT/infra/up.sh"
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
# Each tier also writes a JSON report; when a tier fails, the last lines of the output name every
# failed test with the first lines of its error (a CI log is often read from its end only).
tier() { # NAME VITEST-ARGS…
  local name=$1 report=$BERTH_LOG_DIR/vitest-$1.json
  shift
  rm -f "$report"
  if $PNPM exec vitest run --project "$name" --reporter=default --reporter=json --outputFile.json="$report" "$@"; then
    return 0
  fi
  if [[ -s $report ]]; then
    echo "---- failed in $name (report: $report) ----"
    jq -r --arg root "$BERTH_ROOT/" '.testResults[] | (.name | ltrimstr($root)) as $file |
      (if (.message // "") != "" then "- \($file): \(.message | split("\n")[0:3] | join(" | "))" else empty end),
      (.assertionResults[] | select(.status == "failed") |
        "- \($file) > \(.fullName): \((.failureMessages[0] // "") | split("\n") |
          map(select(test("^\\s+at ") | not)) | .[0:4] | join(" | ") | .[0:600])")' \
      "$report" || true
  fi
  return 1
}
log "unit tests"
tier unit "${filter[@]}" "$@"
log "integration tests"
tier integration "${filter[@]}" "$@"
log "integration tests that stop a cell's kubelet, one at a time"
tier integration-alone --passWithNoTests "$@"
