#!/usr/bin/env bash
# Berth's own services, each `node services/<name>/src/index.ts` on Node 24, configured by env:
#   api 7070 · scheduler 7071 · builder-agent 7072 · lb-agent 7073 · discovery 7074 · cni-ipam 7075
#
#   infra/services.sh up [NAME…]     start what is not running; wait for each /healthz
#   infra/services.sh down [NAME…]   SIGTERM each (graceful), by pid file
#   infra/services.sh status         one row per service (health = /readyz)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$BERTH_ROOT/infra/node.sh"

SERVICES=(api scheduler builder-agent lb-agent discovery cni-ipam)
declare -A PORT=([api]=7070 [scheduler]=7071 [builder-agent]=7072 [lb-agent]=7073 [discovery]=7074 [cni-ipam]=7075)

load_env() {
  local f
  for f in "$BERTH_LOCAL"/env.d/*.sh; do
# shellcheck source=/dev/null # written by make up
    [[ -f $f ]] && source "$f"
  done
  return 0
}

# Per-service environment beyond the region's (one place for what each service needs).
service_env() {
  local name=$1
  echo "HTTP_ADDR=127.0.0.1:${PORT[$name]}"
  echo "LOG_LEVEL=${LOG_LEVEL:-info}"
  echo "BERTH_REGION=${BERTH_REGION:-local}"
  echo "ETCD_ENDPOINTS=$ETCD_ENDPOINTS"
  echo "NATS_URL=$NATS_URL"
  echo "REDIS_URL=$REDIS_URL"
  echo "REGISTRY_ADDR=${REGISTRY_ADDR:-127.0.0.1:5000}"
  echo "KUBECONFIG_DIR=$BERTH_LOCAL/cells"
  echo "BERTH_CELLS=${BERTH_CELLS:-}"
  # With the region's auth on, the service's own identity on etcd, NATS and Redis: paths to its
  # password files, never a password (infra/region-auth.sh, docs/security.md).
  [[ -f $BERTH_LOCAL/secrets/.region-auth ]] && BERTH_LB_GROUP=local bash "$BERTH_ROOT/infra/region-auth.sh" env "$name"
  [[ -f $BERTH_LOCAL/env.d/services/$name.sh ]] && sed -n 's/^export //p' "$BERTH_LOCAL/env.d/services/$name.sh"
  # Extra per-service settings from later parts of `make up` (e.g. the API's admin password file).
  local hook=$BERTH_ROOT/infra/services.d/$name.env.sh
  [[ -f $hook ]] && bash "$hook"
  return 0
}

healthz() { curl -fsS -m 2 -o /dev/null "http://127.0.0.1:${PORT[$1]}/healthz"; }
readyz() { curl -fsS -m 2 -o /dev/null "http://127.0.0.1:${PORT[$1]}/readyz"; }

start_service() {
  local name=$1 entry=$BERTH_ROOT/services/$1/src/index.ts
  [[ -f $entry ]] || {
    log "skipping $name: $entry does not exist"
    return 0
  }
  local env_args=() stamp=$BERTH_RUN_DIR/berth-$name.env.sha
  mapfile -t env_args < <(service_env "$name")
  # A running service keeps running unless its configuration changed (a later make up added a
  # setting): then it restarts with the new one. Only a hash of it is kept.
  local sum
  sum=$(printf '%s\n' "${env_args[@]}" | sha256sum | cut -d' ' -f1)
  if is_running "berth-$name"; then
    [[ -f $stamp && $(<"$stamp") == "$sum" ]] && return 0
    log "restarting berth-$name: its configuration changed"
    stop_daemon "berth-$name" 30
  fi
  # Not the operator's (tests) credentials from .local/env: only what service_env gives it.
  local unset_args=(-u ETCD_USERNAME -u ETCD_PASSWORD_FILE -u NATS_USER -u NATS_PASSWORD_FILE -u REDIS_USERNAME
    -u REDIS_PASSWORD_FILE)
  (cd "$BERTH_ROOT" && start_daemon "berth-$name" env "${unset_args[@]}" "${env_args[@]}" "$NODE" "$entry") || true
  echo "$sum" >"$stamp"
}

cmd_up() {
  load_env
  local names=("$@") name
  ((${#names[@]})) || names=("${SERVICES[@]}")
  for name in "${names[@]}"; do start_service "$name"; done
  for name in "${names[@]}"; do
    [[ -f $BERTH_ROOT/services/$name/src/index.ts ]] || continue
    wait_until "berth-$name" 60 healthz "$name"
  done
  mkdir -p "$BERTH_LOCAL/env.d"
  echo "export BERTH_API_URL=http://127.0.0.1:${PORT[api]}" >"$BERTH_LOCAL/env.d/30-services.sh"
}

cmd_down() {
  local names=("$@") name
  ((${#names[@]})) || names=("${SERVICES[@]}")
  for name in "${names[@]}"; do stop_daemon "berth-$name" 30 & done
  wait
}

cmd_status() {
  local name
  for name in "${SERVICES[@]}"; do
    status_line "berth-$name" "http://127.0.0.1:${PORT[$name]}" readyz "$name"
  done
}

case ${1:-} in
  up) shift && cmd_up "$@" ;;
  down) shift && cmd_down "$@" ;;
  status) cmd_status ;;
  *) die "usage: infra/services.sh up|down [NAME…] | status" ;;
esac
