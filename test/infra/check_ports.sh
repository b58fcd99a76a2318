#!/usr/bin/env bash
# infra/ports.sh's check_ports (run by `make check`): a port held by a process that is not ours is
# reported with its pid, command line and advice, and fails the check; the same process is fine
# once a pid file of ours names it (our own running region); a free port is fine. Needs no region.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tmp=$(mktemp -d)
holder=
cleanup() {
  [[ -n $holder ]] && kill "$holder" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
export BERTH_LOCAL=$tmp/.local
# shellcheck source=infra/ports.sh
source "$here/../../infra/ports.sh"
set +e
fail() {
  echo "check_ports test: $*" >&2
  exit 1
}

# A listener on a free port, reported on stdout once it listens.
python3 -c '
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
time.sleep(120)
' >"$tmp/port" &
holder=$!
for ((i = 0; i < 100; i++)); do
  [[ -s $tmp/port ]] && break
  sleep 0.05
done
port=$(<"$tmp/port")
[[ $port =~ ^[0-9]+$ ]] || fail "the test listener did not start"

out=$(BERTH_PORTS="$port test-component" check_ports)
rc=$?
((rc == 1)) || fail "a foreign holder: want exit 1, got $rc"
[[ $out == "port $port (test-component): held by pid $holder ("*"python3 -c "* ]] || fail "unexpected report: $out"
[[ $out == *"kill $holder"* ]] || fail "no advice in: $out"

echo "$holder" >"$BERTH_RUN_DIR/test-component.pid"
out=$(BERTH_PORTS="$port test-component" check_ports)
rc=$?
if ((rc != 0)) || [[ -n $out ]]; then fail "our own holder: want exit 0 and no output, got $rc: $out"; fi

kill "$holder"
wait "$holder" 2>/dev/null
holder=
out=$(BERTH_PORTS="$port test-component" check_ports)
rc=$?
if ((rc != 0)) || [[ -n $out ]]; then fail "a free port: want exit 0 and no output, got $rc: $out"; fi
echo "check_ports: ok"
