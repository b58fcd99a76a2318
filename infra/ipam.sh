#!/usr/bin/env bash
# Berth's IPAM on this machine (docs/ipam.md):
#   infra/ipam.sh install   build the thin berth-ipam plugin (Go, services/cni-ipam/thin: forwards
#                           each call to the node's resident allocator) and install it into
#                           .local/bin and the CNI bin dir the real cells use; bundle the direct
#                           plugin it falls back to (one JS file: no TypeScript stripping or
#                           module resolution at every pod start) as berth-ipam-direct; install
#                           cnictl, add each real cell's pool (cell-a 198.18.0.0/16, cell-b
#                           198.19.32.0/21), and export the IPAM section of each one's CNI conf
#                           (.local/env.d/15-ipam.sh).
# Idempotent: rebuilds only when the plugins' sources changed.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$BERTH_ROOT/infra/node.sh"

CNI_BIN_DIR=/usr/lib/cni
# The real cells of infra/cells.sh (REAL_POD_CIDRS, REAL_NODE_IPS there): "CELL POOL GATEWAY",
# the gateway being the host's side of the cell's bridge. The node is <cell>-node0.
REAL_CELLS=("cell-a 198.18.0.0/16 198.18.0.1" "cell-b 198.19.32.0/21 198.19.32.1")
LIB=$BERTH_LOCAL/lib
SRC=$BERTH_ROOT/services/cni-ipam/src
ESBUILD=$BERTH_ROOT/services/cni-ipam/node_modules/.bin/esbuild
THIN_SRC=$BERTH_ROOT/services/cni-ipam/thin
# The resident allocator's socket in the local region (the cni-ipam service listens there).
IPAM_SOCKET=$BERTH_RUN_DIR/ipam/ipam.sock

# The direct plugin: allocates over etcd itself. The thin plugin runs it when no daemon answers.
install_direct_plugin() {
  mkdir -p "$LIB"
  local stamp want
  stamp=$LIB/berth-ipam.stamp
  # Every source the bundle may pull in: the plugin, the allocator and the shared modules they
  # import (store/lite, errors, keys).
  local shared=$BERTH_ROOT/packages/shared/src
  want=$(cat "$SRC"/plugin/*.ts "$SRC"/ipam/*.ts "$shared"/store/*.ts "$shared"/errors/*.ts "$shared"/keys/*.ts |
    sha256sum | cut -c1-16)
  if [[ ! -f $LIB/berth-ipam.mjs || ! -f $stamp || $(<"$stamp") != "$want" ]]; then
    "$ESBUILD" "$SRC/plugin/main.ts" --bundle --platform=node --format=esm --target=node24 \
      --outfile="$LIB/berth-ipam.mjs.tmp" --log-level=warning || die "bundling berth-ipam failed"
    mv "$LIB/berth-ipam.mjs.tmp" "$LIB/berth-ipam.mjs"
    echo "$want" >"$stamp"
  fi
  local launcher
  launcher=$(mktemp)
  cat >"$launcher" <<LAUNCHER
#!/bin/sh
# berth-ipam-direct: Berth's CNI IPAM plugin allocating over etcd itself, the thin berth-ipam's
# fallback (installed by infra/ipam.sh from $BERTH_ROOT)
NODE_COMPILE_CACHE=$BERTH_CACHE/node-compile-cache exec $NODE --no-warnings $LIB/berth-ipam.mjs
LAUNCHER
  chmod 755 "$launcher"
  install -m 755 "$launcher" "$LIB/berth-ipam-direct"
  install -m 755 "$launcher" "$BERTH_BIN_DIR/berth-ipam-direct"
  rm -f "$launcher"
}

find_go() {
  local go
  for go in "${GO:-}" "$(command -v go || true)" /usr/local/go/bin/go; do
    [[ -n $go && -x $go ]] && { echo "$go"; return 0; }
  done
  die "Go (>= 1.22) is needed to build the berth-ipam plugin; install it at /usr/local/go"
}

# The thin plugin containerd executes: a static Go binary (standard library only) whose start
# costs ~1 ms where Node's costs ~40 ms (docs/decisions.md). Its fallback's path is baked in.
install_thin_plugin() {
  local go want bin=$LIB/berth-ipam stamp=$LIB/berth-ipam.thin.stamp
  go=$(find_go)
  want=$(cat "$THIN_SRC"/go.mod "$THIN_SRC"/*.go <("$go" version) <(echo "$LIB/berth-ipam-direct") |
    sha256sum | cut -c1-16)
  if [[ ! -x $bin || ! -f $stamp || $(<"$stamp") != "$want" ]]; then
    # Go's caches under $BERTH_CACHE as the other builds' (and set: a machine without $HOME works).
    (cd "$THIN_SRC" && GOCACHE=$BERTH_CACHE/go/build GOMODCACHE=$BERTH_CACHE/go/mod GOFLAGS=-mod=mod \
      GOTOOLCHAIN=local CGO_ENABLED=0 "$go" build -trimpath -buildvcs=false \
      -ldflags "-s -w -X main.directPlugin=$LIB/berth-ipam-direct" -o "$bin.tmp" .) ||
      die "building the berth-ipam plugin failed"
    mv "$bin.tmp" "$bin"
    echo "$want" >"$stamp"
  fi
  install -m 755 "$bin" "$BERTH_BIN_DIR/berth-ipam"
  as_root install -m 755 "$bin" "$CNI_BIN_DIR/berth-ipam"
}

install_cnictl() {
  cat >"$BERTH_BIN_DIR/cnictl.tmp" <<LAUNCHER
#!/bin/sh
# cnictl: Berth's IP pools, blocks and addresses (installed by infra/ipam.sh)
[ -n "\$ETCD_ENDPOINTS" ] || . $BERTH_LOCAL/env.d/10-region.sh
export BERTH_ROOT=$BERTH_ROOT ETCD_ENDPOINTS
exec $NODE --no-warnings $SRC/cli/cnictl.ts "\$@"
LAUNCHER
  chmod 755 "$BERTH_BIN_DIR/cnictl.tmp"
  mv "$BERTH_BIN_DIR/cnictl.tmp" "$BERTH_BIN_DIR/cnictl"
}

# With the region's auth on (infra/region-auth.sh), cnictl is the IPAM service's identity and each
# cell's plugin its cell's: only that cell's IPAM keys.
SECRETS=$BERTH_LOCAL/secrets
auth_on() { [[ -f $SECRETS/.region-auth ]]; }

ensure_pool() { # ensure_pool CELL POOL
  local cell=$1 pool=$2
  export ETCD_ENDPOINTS=${ETCD_ENDPOINTS:-http://127.0.0.1:2379}
  if auth_on; then export ETCD_USERNAME=cni-ipam ETCD_PASSWORD_FILE=$SECRETS/etcd-cni-ipam.password; fi
  if ! "$BERTH_BIN_DIR/cnictl" --cell "$cell" --json pool list | jq -e --arg p "$pool" 'any(.[]; .cidr == $p)' >/dev/null; then
    "$BERTH_BIN_DIR/cnictl" --cell "$cell" pool add "$pool" >/dev/null || die "cannot add pool $pool to $cell"
    log "added IP pool $pool to $cell"
  fi
}

write_env() {
  local entry cell pool gateway var auth
  mkdir -p "$BERTH_LOCAL/env.d"
  {
    echo "# The real cells' pods get their addresses from Berth's pools (infra/cells.sh reads this)."
    echo "# cnictl stats asks the resident allocator on this socket (the cni-ipam service listens there)."
    echo "export IPAM_SOCKET=$IPAM_SOCKET"
    for entry in "${REAL_CELLS[@]}"; do
      read -r cell pool gateway <<<"$entry"
      var=BERTH_$(tr '[:lower:]-' '[:upper:]_' <<<"$cell")_IPAM
      auth=""
      auth_on && auth=", \"etcdUsername\": \"ipam-$cell\", \"etcdPasswordFile\": \"$SECRETS/etcd-ipam-$cell.password\""
      echo "export $var='{\"type\": \"berth-ipam\", \"socket\": \"$IPAM_SOCKET\", \"etcdEndpoints\": \"http://127.0.0.1:2379\"$auth, \"cell\": \"$cell\", \"node\": \"$cell-node0\", \"gateway\": \"$gateway\", \"routes\": [{\"dst\": \"0.0.0.0/0\"}]}'"
    done
  } >"$BERTH_LOCAL/env.d/15-ipam.sh.tmp"
  mv "$BERTH_LOCAL/env.d/15-ipam.sh.tmp" "$BERTH_LOCAL/env.d/15-ipam.sh"
}

case ${1:-} in
  install)
    install_direct_plugin
    install_thin_plugin
    install_cnictl
    for entry in "${REAL_CELLS[@]}"; do
      read -r cell pool _ <<<"$entry"
      ensure_pool "$cell" "$pool"
    done
    write_env
    ;;
  *) die "usage: infra/ipam.sh install" ;;
esac
