#!/usr/bin/env bash
# infra/lib.sh's start_daemon (every process `make up` starts): its log line names the command's
# environment variables and secret flags without their values, while the process still gets them;
# logs and data are the owner's only (0700 directories, 0600 log). Needs no region.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tmp=$(mktemp -d)
trap 'stop_daemon start-daemon-test 5 2>/dev/null || true; rm -rf "$tmp"' EXIT
export BERTH_LOCAL=$tmp/.local
# shellcheck source=infra/lib.sh
source "$here/../../infra/lib.sh"
fail() {
  echo "start_daemon test: $*" >&2
  exit 1
}

secret=hunter2-$RANDOM$RANDOM
# shellcheck disable=SC2016 # the child expands it
start_daemon start-daemon-test env BERTH_TEST_SECRET="$secret" sh -c 'echo "got $BERTH_TEST_SECRET" >"$0"; exec sleep 30' \
  "$tmp/seen" --password "$secret" --token="$secret" --key-file=/some/path ||
  fail "start_daemon did not start"
for ((i = 0; i < 50; i++)); do
  [[ -s $tmp/seen ]] && break
  sleep 0.1
done
[[ $(<"$tmp/seen") == "got $secret" ]] || fail "the process did not get its environment"
lf=$(logfile start-daemon-test)
grep -q 'BERTH_TEST_SECRET=… sh -c' "$lf" || fail "the log does not name the variable: $(cat "$lf")"
grep -q -- '--password … --token=… --key-file=/some/path' "$lf" || fail "secret flags not hidden: $(cat "$lf")"
! grep -q "$secret" "$lf" || fail "the log holds the secret value: $(cat "$lf")"
for d in "$BERTH_LOG_DIR" "$BERTH_DATA_DIR" "$BERTH_RUN_DIR"; do
  [[ $(stat -c %a "$d") == 700 ]] || fail "$d is mode $(stat -c %a "$d"), not 700"
done
[[ $(stat -c %a "$lf") == 600 ]] || fail "$lf is mode $(stat -c %a "$lf"), not 600"
echo "start_daemon test: ok"
