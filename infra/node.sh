# shellcheck shell=bash
# Node.js 24 and pnpm for every script, make target and test. Source after lib.sh; sets NODE, PNPM
# and puts Node 24's bin dir (with a `pnpm` shim) first on PATH. `infra/bootstrap.sh` installs them.

NODE_VERSION=$(tr -d ' \n' <"$BERTH_ROOT/.node-version")
NODE_MAJOR=${NODE_VERSION%%.*}
PNPM_VERSION=$(sed -n 's/.*"packageManager": *"pnpm@\([^"]*\)".*/\1/p' "$BERTH_ROOT/package.json")
NODE_HOME=$BERTH_CACHE/node/$NODE_VERSION
PNPM_HOME=$BERTH_CACHE/pnpm/$PNPM_VERSION
NODE_BIN_DIR=$NODE_HOME/bin

# The machine's node is used when it is already Node $NODE_MAJOR or newer.
system_node_ok() {
  local v
  v=$(command -v node >/dev/null && node -p 'process.versions.node' 2>/dev/null) || return 1
  [[ ${v%%.*} -ge $NODE_MAJOR && $(command -v node) != "$NODE_BIN_DIR/node" ]]
}

if system_node_ok; then
  NODE=$(command -v node)
else
  NODE=$NODE_BIN_DIR/node
fi
# shellcheck disable=SC2034 # for the scripts that source this file
PNPM="$NODE $PNPM_HOME/node_modules/pnpm/bin/pnpm.cjs"
export NODE PNPM_VERSION NODE_VERSION
export PATH="$NODE_BIN_DIR:$BERTH_ROOT/node_modules/.bin:$PATH"
