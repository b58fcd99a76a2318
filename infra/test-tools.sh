#!/usr/bin/env bash
# Tools the tests run besides Node: Schemathesis (PyPI) in its own venv under $BERTH_CACHE.
# Prints nothing when they are installed already.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SCHEMATHESIS_VERSION=4.32.5
VENV=$BERTH_CACHE/venv/schemathesis-$SCHEMATHESIS_VERSION

if [[ ! -x $VENV/bin/st ]]; then
  log "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  rm -rf "$VENV.tmp"
  /usr/bin/python3 -m venv "$VENV.tmp" >"$(logfile test-tools)" 2>&1 || die "python3 -m venv failed; see $(logfile test-tools)"
  "$VENV.tmp/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION" >>"$(logfile test-tools)" 2>&1 ||
    die "pip install schemathesis failed; see $(logfile test-tools)"
  rm -rf "$VENV"
  mv "$VENV.tmp" "$VENV"
  # The venv's scripts name the interpreter by the path they were installed at.
  sed -i "1s|$VENV.tmp|$VENV|" "$VENV"/bin/*
fi
mkdir -p "$BERTH_LOCAL/env.d"
echo "export BERTH_SCHEMATHESIS=$VENV/bin/st" >"$BERTH_LOCAL/env.d/50-test-tools.sh"
