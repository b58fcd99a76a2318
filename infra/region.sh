#!/usr/bin/env bash
# The region's infrastructure on loopback, data under .local/ (docs/local-region.md):
#   etcd 127.0.0.1:2379 · NATS + JetStream 127.0.0.1:4222 (monitor 8222) · Redis 127.0.0.1:6379 (AOF)
#   dockerd unix://.local/run/docker.sock (bridge berth-docker0, 198.19.0.1/24)
#   registry 127.0.0.1:5000 · nginx + Lua 127.0.0.1:8080
#
#   infra/region.sh up       start what is not running; wait for each to be healthy
#                            (etcd, NATS and Redis with one identity per service,
#                            docs/security.md; BERTH_REGION_AUTH=off for a region without,
#                            until auth was on once: then it stays on)
#   infra/region.sh down     stop what up started (by pid file); data stays
#   infra/region.sh status   one row per component
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DOCKER_SOCK=$BERTH_RUN_DIR/docker.sock
DOCKER_BRIDGE=berth-docker0
DOCKER_BRIDGE_ADDR=198.19.0.1/24
# dockerd's exec root holds its containerd socket: keep the path short (unix socket limit 108).
DOCKER_EXEC_ROOT=/run/berth-docker-$(printf '%s' "$BERTH_ROOT" | sha256sum | cut -c1-8)
NGINX_PREFIX=$BERTH_LOCAL/nginx
# Docker's networks: its bridge and the networks builds create (docs/local-region.md).
DOCKER_RANGES=(198.19.0.0/24 198.19.16.0/20)
DOCKER_IPT_CHAIN=BERTH-DOCKER
SECRETS_DIR=$BERTH_LOCAL/secrets
REGION_AUTH=$BERTH_ROOT/infra/region-auth.sh
# The region's servers authenticate every client (docs/security.md, "Inside the region"), unless
# a region that never had it is started with BERTH_REGION_AUTH=off; once on, the marker keeps it
# on for every later make up and make test (etcd's auth is not turned off again).
REGION_AUTH_MARKER=$SECRETS_DIR/.region-auth
region_auth_on() { [[ ${BERTH_REGION_AUTH:-on} != off || -f $REGION_AUTH_MARKER ]]; }
region_auth() { BERTH_LB_GROUP=local BERTH_REGION=local bash "$REGION_AUTH" "$@"; }

etcd_healthy() { curl -fsS -m 2 http://127.0.0.1:2379/health | grep -q '"health":"true"'; }
nats_healthy() { curl -fsS -m 2 'http://127.0.0.1:8222/healthz?js-enabled-only=true' | grep -q ok; }
# With ACLs on, as the tests identity; the password goes through redis-cli's environment.
redis_cli() {
  if [[ -f $BERTH_LOCAL/redis/users.acl && -s $SECRETS_DIR/redis-tests.password ]]; then
    REDISCLI_AUTH=$(<"$SECRETS_DIR/redis-tests.password") redis-cli --no-auth-warning --user tests -h 127.0.0.1 -p 6379 "$@"
  else
    redis-cli -h 127.0.0.1 -p 6379 "$@"
  fi
}
redis_healthy() { [[ $(redis_cli ping 2>/dev/null) == PONG ]]; }
docker_healthy() { [[ $(curl -fsS -m 2 --unix-socket "$DOCKER_SOCK" http://docker/_ping 2>/dev/null) == OK ]]; }
# With token auth /v2/ answers 401 and a Bearer challenge: that is up, too.
registry_healthy() { [[ $(curl -sS -m 2 -o /dev/null -w '%{http_code}' http://127.0.0.1:5000/v2/ 2>/dev/null) =~ ^(200|401)$ ]]; }
nginx_healthy() { [[ $(curl -fsS -m 2 http://127.0.0.1:8080/healthz 2>/dev/null) == "ok lua" ]]; }

start_etcd() {
  mkdir -p "$BERTH_DATA_DIR/etcd"
  chmod 700 "$BERTH_DATA_DIR/etcd"
  start_daemon etcd etcd \
    --name berth-region \
    --data-dir "$BERTH_DATA_DIR/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster berth-region=http://127.0.0.1:2380 \
    --auto-compaction-mode periodic --auto-compaction-retention 1h \
    --quota-backend-bytes 4294967296 || true
}

start_nats() {
  mkdir -p "$BERTH_DATA_DIR/nats" "$BERTH_LOCAL/nats"
  local conf=$BERTH_LOCAL/nats/nats.conf auth=$BERTH_LOCAL/nats/auth.conf before=""
  before=$(cat "$conf" "$auth" 2>/dev/null | sha256sum) || true
  rm -f "$auth"
  region_auth_on && region_auth nats-conf "$auth"
  cat >"$conf" <<CONF
server_name: berth-local
listen: 127.0.0.1:4222
http: 127.0.0.1:8222
max_payload: 4MB
jetstream {
  store_dir: "$BERTH_DATA_DIR/nats"
  max_memory_store: 256MB
  max_file_store: 8GB
}
CONF
  # One user per service, with the subjects it may use (written by infra/region-auth.sh).
  [[ -f $auth ]] && echo 'include ./auth.conf' >>"$conf"
  if is_running nats; then
    # Users and permissions reload in place (no restart, JetStream stays up).
    [[ $(cat "$conf" "$auth" 2>/dev/null | sha256sum) == "$before" ]] && return 0
    log "reloading NATS: its users changed"
    kill -HUP "$(live_pid nats)"
    return 0
  fi
  start_daemon nats nats-server -c "$conf" || true
}

start_redis() {
  mkdir -p "$BERTH_DATA_DIR/redis" "$BERTH_LOCAL/redis"
  local acl=$BERTH_LOCAL/redis/users.acl acl_args=()
  if region_auth_on; then
    local before=""
    [[ -f $acl ]] && before=$(sha256sum <"$acl")
    region_auth redis-acl "$acl"
    acl_args=(--aclfile "$acl")
    if is_running redis; then
      # A Redis started before the ACLs restarts with them (its data is in the AOF); one that
      # has them reloads a changed file.
      if [[ -z $before || $(redis_cli CONFIG GET aclfile 2>/dev/null | sed -n 2p) != "$acl" ]]; then
        log "restarting Redis with ACL users"
        stop_daemon redis
      elif [[ $(sha256sum <"$acl") != "$before" ]]; then
        redis_cli ACL LOAD >/dev/null || die "Redis refused its new ACL file $acl"
        return 0
      fi
    fi
  fi
  start_daemon redis redis-server --bind 127.0.0.1 --port 6379 --dir "$BERTH_DATA_DIR/redis" \
    --daemonize no --appendonly yes --appendfsync everysec --save 3600 1 --protected-mode yes \
    --loglevel notice "${acl_args[@]}" || true
}

ensure_docker_bridge() {
  if ! ip link show "$DOCKER_BRIDGE" >/dev/null 2>&1; then
    as_root ip link add "$DOCKER_BRIDGE" type bridge
  fi
  ip -4 addr show dev "$DOCKER_BRIDGE" | grep -q "${DOCKER_BRIDGE_ADDR%/*}/" ||
    as_root ip addr add "$DOCKER_BRIDGE_ADDR" dev "$DOCKER_BRIDGE"
  as_root ip link set "$DOCKER_BRIDGE" up
}

# dockerd runs with --iptables=false (below), so nothing stops a container's packets to other
# addresses from being forwarded out of the default route once IP forwarding is on (the cells turn
# it on). The network rule allows only 198.18.0.0/15: one chain of ours refuses the rest here.
ensure_docker_firewall() {
  local r ok=1
  for r in "${DOCKER_RANGES[@]}"; do
    as_root iptables -w -C "$DOCKER_IPT_CHAIN" -s "$r" ! -d 198.18.0.0/15 -j REJECT --reject-with icmp-net-prohibited 2>/dev/null || ok=0
  done
  ((ok)) && as_root iptables -w -C FORWARD -j "$DOCKER_IPT_CHAIN" 2>/dev/null && return 0
  as_root iptables -w -N "$DOCKER_IPT_CHAIN" 2>/dev/null || true
  as_root iptables -w -F "$DOCKER_IPT_CHAIN"
  for r in "${DOCKER_RANGES[@]}"; do
    as_root iptables -w -A "$DOCKER_IPT_CHAIN" -s "$r" ! -d 198.18.0.0/15 -j REJECT --reject-with icmp-net-prohibited
  done
  as_root iptables -w -C FORWARD -j "$DOCKER_IPT_CHAIN" 2>/dev/null || as_root iptables -w -I FORWARD 1 -j "$DOCKER_IPT_CHAIN"
}

remove_docker_firewall() {
  if as_root iptables -w -C FORWARD -j "$DOCKER_IPT_CHAIN" 2>/dev/null; then as_root iptables -w -D FORWARD -j "$DOCKER_IPT_CHAIN"; fi
  as_root iptables -w -F "$DOCKER_IPT_CHAIN" 2>/dev/null || true
  as_root iptables -w -X "$DOCKER_IPT_CHAIN" 2>/dev/null || true
}

start_docker() {
  is_running dockerd && return 0
  ensure_docker_bridge
  mkdir -p "$BERTH_DATA_DIR/docker"
  as_root mkdir -p "$DOCKER_EXEC_ROOT"
  # No iptables, NAT or forwarding changes by dockerd: builds reach nothing but what we run here
  # (the network rule; see ensure_docker_firewall), and dockerd's FORWARD-chain DROP would cut the
  # cells' pod traffic.
  start_daemon dockerd dockerd \
    -H "unix://$DOCKER_SOCK" \
    --data-root "$BERTH_DATA_DIR/docker" \
    --exec-root "$DOCKER_EXEC_ROOT" \
    --pidfile "$BERTH_RUN_DIR/dockerd.own.pid" \
    --bridge "$DOCKER_BRIDGE" \
    --default-address-pool base=198.19.16.0/20,size=24 \
    --iptables=false --ip-forward=false --ip-masq=false \
    --insecure-registry 127.0.0.1:5000 \
    --storage-driver overlay2 \
    --log-level warn || true
}

# The registry's auth: BERTH_REGISTRY_AUTH=token (make up: the API is its token server,
# docs/registry.md), none (anonymous: what make test starts on a clean machine) or keep (the
# default: a running registry stays as it is, a stopped one starts anonymous). A changed mode
# restarts the registry; its data stays.
start_registry() {
  local mode=${BERTH_REGISTRY_AUTH:-keep} conf=$BERTH_LOCAL/registry/config.yml cert=""
  mkdir -p "$BERTH_DATA_DIR/registry" "$BERTH_LOCAL/registry"
  if [[ $mode == keep ]]; then
    is_running registry && [[ -f $conf ]] && return 0
    mode=none
  fi
  local notify=""
  if [[ $mode == token ]]; then
    cert=$(bash "$BERTH_ROOT/infra/registry-token-key.sh" "$BERTH_LOCAL/secrets" | sed -n 2p)
    notify=$(bash "$BERTH_ROOT/infra/registry-notify-token.sh" "$BERTH_LOCAL/secrets")
  fi
  # With token auth the config holds the notification secret: readable by us only.
  rm -f "$conf.new"
  (
    umask 077
    exec >"$conf.new"
    cat <<CONF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $BERTH_DATA_DIR/registry
  delete:
    enabled: true
http:
  addr: 127.0.0.1:5000
health:
  storagedriver:
    enabled: true
    interval: 30s
CONF
    if [[ $mode == token ]]; then
      cat <<CONF
auth:
  token:
    realm: http://127.0.0.1:7070/api/v1/registry/token
    service: berth-registry
    issuer: berth
    rootcertbundle: $cert
notifications:
  endpoints:
    - name: berth-api
      url: http://127.0.0.1:7070/api/v1/registry/notifications
      headers:
        Authorization: [Bearer $(cat "$notify")]
      timeout: 2s
      threshold: 5
      backoff: 2s
      ignoredmediatypes: [application/octet-stream]
CONF
    fi
  )
  if is_running registry; then
    if cmp -s "$conf.new" "$conf"; then
      rm -f "$conf.new"
      return 0
    fi
    log "restarting the registry (auth: $mode)"
    stop_daemon registry
  fi
  mv "$conf.new" "$conf"
  start_daemon registry docker-registry serve "$conf" || true
}

# registry_auth: the auth of the registry's config (token | none).
registry_auth() { if grep -q '^auth:' "$BERTH_LOCAL/registry/config.yml" 2>/dev/null; then echo token; else echo none; fi; }

start_nginx() {
  # The lb-agent's main config: its Lua, shared dicts, the control socket and `live/` (the
  # generation of domains the agent swaps in). It never changes while nginx runs; the agent
  # reloads only to swap generations (docs/traffic.md).
  source "$BERTH_ROOT/infra/node.sh"
  # Run as root, only the master keeps root: the workers that parse requests and run Lua are
  # nobody (the lb-agent, rendering the same file with NGINX_USER=root, gets the same).
  local user=()
  [[ $(id -u) == 0 ]] && user=(--user "nobody nogroup")
  "$NODE" --no-warnings "$BERTH_ROOT/services/lb-agent/src/nginx/write-main-conf.ts" --prefix "$NGINX_PREFIX" \
    --listen 127.0.0.1:8080 --pid "$BERTH_RUN_DIR/nginx.own.pid" --error-log "$BERTH_LOG_DIR/nginx-error.log" \
    --access-log "$BERTH_LOG_DIR/nginx-access.log" "${user[@]}" >/dev/null || die "cannot write nginx's main config"
  is_running nginx && return 0
  # A socket left by an nginx that was killed (a reboot, an ended session) makes the next one
  # fail to bind; no nginx of ours runs now, so it is nobody's.
  rm -f "$NGINX_PREFIX/run/control.sock"
  nginx -t -p "$NGINX_PREFIX" -c "$NGINX_PREFIX/nginx.conf" >"$(logfile nginx-test)" 2>&1 ||
    die "nginx config test failed; see $(logfile nginx-test)"
  start_daemon nginx nginx -p "$NGINX_PREFIX" -c "$NGINX_PREFIX/nginx.conf" || true
}

# auth_env: the region's credentials for its operator and make test's suites (the tests
# identity; services get their own, infra/services.sh). Paths only, never a password.
auth_env() {
  [[ -f $REGION_AUTH_MARKER ]] || return 0
  echo "# etcd, NATS and Redis authenticate every client (docs/security.md): as tests"
  echo "export BERTH_REGION_AUTH=on"
  echo "export ETCD_USERNAME=tests ETCD_PASSWORD_FILE=$SECRETS_DIR/etcd-tests.password"
  echo "export NATS_USER=tests NATS_PASSWORD_FILE=$SECRETS_DIR/nats-tests.password"
  echo "export REDIS_USERNAME=tests REDIS_PASSWORD_FILE=$SECRETS_DIR/redis-tests.password"
}

write_env() {
  mkdir -p "$BERTH_LOCAL/env.d"
  cat >"$BERTH_LOCAL/env.d/10-region.sh" <<ENV
export ETCD_ENDPOINTS=http://127.0.0.1:2379
export NATS_URL=nats://127.0.0.1:4222
export REDIS_URL=redis://127.0.0.1:6379
export REGISTRY_ADDR=127.0.0.1:5000
# none: anonymous (make test on a clean machine); token: the API is its token server (make up)
export BERTH_REGISTRY_AUTH_MODE=$(registry_auth)
export DOCKER_HOST=unix://$DOCKER_SOCK
export BERTH_REGION=local
# Where the region's nginx takes traffic: curl -H 'Host: sample.berth.test' \$BERTH_LB_URL/
export BERTH_LB_URL=http://127.0.0.1:8080
export BERTH_NGINX_PREFIX=$NGINX_PREFIX
$(auth_env)
ENV
}

cmd_up() {
  # Start all first, then wait: they come up side by side.
  ensure_docker_firewall
  region_auth_on && region_auth secrets
  start_etcd
  start_nats
  start_redis
  start_docker
  start_registry
  start_nginx
  wait_until etcd 30 etcd_healthy
  if region_auth_on; then
    region_auth etcd http://127.0.0.1:2379
    touch "$REGION_AUTH_MARKER"
  fi
  wait_until nats 30 nats_healthy
  wait_until redis 30 redis_healthy
  wait_until dockerd 60 docker_healthy
  wait_until registry 30 registry_healthy
  wait_until nginx 30 nginx_healthy
  write_env
}

cmd_down() {
  stop_daemon nginx
  stop_daemon registry
  stop_daemon dockerd 30
  stop_daemon redis
  stop_daemon nats
  stop_daemon etcd
  if ip link show "$DOCKER_BRIDGE" >/dev/null 2>&1; then as_root ip link del "$DOCKER_BRIDGE" || true; fi
  remove_docker_firewall
  # dockerd leaves its exec root's mounts (netns files) behind when killed.
  if [[ -d $DOCKER_EXEC_ROOT ]]; then
    { grep -o " ${DOCKER_EXEC_ROOT}[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do as_root umount -l "$m" || true; done
    as_root rm -rf "$DOCKER_EXEC_ROOT" || true
  fi
}

cmd_status() {
  status_line etcd http://127.0.0.1:2379 etcd_healthy
  status_line nats nats://127.0.0.1:4222 nats_healthy
  status_line redis redis://127.0.0.1:6379 redis_healthy
  status_line dockerd "unix://.local/run/docker.sock" docker_healthy
  status_line registry "127.0.0.1:5000 (auth: $(registry_auth))" registry_healthy
  status_line nginx http://127.0.0.1:8080 nginx_healthy
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) die "usage: infra/region.sh up|down|status" ;;
esac
