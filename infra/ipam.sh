#!/usr/bin/env bash
# Berth's IPAM on this machine (docs/ipam.md):
#   infra/ipam.sh install   bundle the berth-ipam plugin (one JS file: no TypeScript stripping or
#                           module resolution at every pod start), install it into .local/bin and
#                           the CNI bin dir cell-a uses, install cnictl, add cell-a's pool, and
#                           export the IPAM section of cell-a's CNI conf (.local/env.d/15-ipam.sh).
# Idempotent: rebuilds only when the plugin's sources changed.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$BERTH_ROOT/infra/node.sh"

CNI_BIN_DIR=/usr/lib/cni
CELL=cell-a
POOL=198.18.0.0/16
GATEWAY=198.18.0.1
NODE_NAME=cell-a-node0
LIB=$BERTH_LOCAL/lib
SRC=$BERTH_ROOT/services/cni-ipam/src
ESBUILD=$BERTH_ROOT/services/cni-ipam/node_modules/.bin/esbuild

install_plugin() {
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
# berth-ipam: Berth's CNI IPAM plugin (installed by infra/ipam.sh from $BERTH_ROOT)
NODE_COMPILE_CACHE=$BERTH_CACHE/node-compile-cache exec $NODE --no-warnings $LIB/berth-ipam.mjs
LAUNCHER
  chmod 755 "$launcher"
  install -m 755 "$launcher" "$BERTH_BIN_DIR/berth-ipam"
  as_root install -m 755 "$launcher" "$CNI_BIN_DIR/berth-ipam"
  rm -f "$launcher"
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

ensure_pool() {
  export ETCD_ENDPOINTS=${ETCD_ENDPOINTS:-http://127.0.0.1:2379}
  if ! "$BERTH_BIN_DIR/cnictl" --cell "$CELL" --json pool list | jq -e --arg p "$POOL" 'any(.[]; .cidr == $p)' >/dev/null; then
    "$BERTH_BIN_DIR/cnictl" --cell "$CELL" pool add "$POOL" >/dev/null || die "cannot add pool $POOL to $CELL"
    log "added IP pool $POOL to $CELL"
  fi
}

write_env() {
  mkdir -p "$BERTH_LOCAL/env.d"
  cat >"$BERTH_LOCAL/env.d/15-ipam.sh" <<ENV
# cell-a's pods get their addresses from Berth's pools (infra/cells.sh reads this).
export BERTH_CELL_A_IPAM='{"type": "berth-ipam", "etcdEndpoints": "http://127.0.0.1:2379", "cell": "$CELL", "node": "$NODE_NAME", "gateway": "$GATEWAY", "routes": [{"dst": "0.0.0.0/0"}]}'
ENV
}

case ${1:-} in
  install)
    install_plugin
    install_cnictl
    ensure_pool
    write_env
    ;;
  *) die "usage: infra/ipam.sh install" ;;
esac
