#!/usr/bin/env bash
# The registry's robot keys (docs/registry.md, "Robot credentials"), made once into .local/secrets
# (mode 600) and printed as a path, never as a value:
#   infra/registry-robot-keys.sh master      the master key: the API's REGISTRY_ROBOT_KEY_FILE
#   infra/registry-robot-keys.sh cells       the scheduler's REGISTRY_PULL_KEY_FILE
#   infra/registry-robot-keys.sh agent ID    builder-agent ID's BUILDER_REGISTRY_KEY_FILE
# A derived key is derived again when the master changed (delete the master to rotate them all).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$BERTH_ROOT/infra/node.sh"
secrets=$BERTH_LOCAL/secrets
master=$secrets/registry-robot-key
mkdir -p "$secrets"
chmod 700 "$secrets"
[[ -s $master ]] || (umask 077 && openssl rand -hex 32 >"$master")

derive() { # OUT ARGS…: the derived key into OUT, unless it is there and younger than the master
  local out=$1
  shift
  if [[ ! -s $out || $out -ot $master ]]; then
    (umask 077 && "$NODE" --no-warnings "$BERTH_ROOT/packages/shared/src/registry/derive-key.ts" "$master" "$@" >"$out.tmp")
    mv "$out.tmp" "$out"
  fi
  echo "$out"
}

case ${1:-} in
  master) echo "$master" ;;
  cells) derive "$secrets/registry-pull-key" cells ;;
  agent)
    [[ ${2:-} =~ ^[A-Za-z0-9._-]+$ ]] || die "usage: $0 agent ID"
    derive "$secrets/builder-$2-registry-key" agent "$2"
    ;;
  *) die "usage: $0 master | cells | agent ID" ;;
esac
