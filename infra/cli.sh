#!/usr/bin/env bash
# The `berth` command line (packages/cli): `infra/cli.sh install` writes $BERTH_BIN_DIR/berth
# (.local/bin, on PATH after `source .local/env`), a wrapper that runs the CLI's TypeScript with
# this repository's Node 24. make up runs it; `pnpm berth …` works without it.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$BERTH_ROOT/infra/node.sh"

install_cli() {
  local target=$BERTH_BIN_DIR/berth
  cat >"$target.tmp" <<WRAPPER
#!/usr/bin/env bash
# Written by infra/cli.sh (make up): Berth's command line, packages/cli.
exec "$NODE" "$BERTH_ROOT/packages/cli/src/index.ts" "\$@"
WRAPPER
  chmod 755 "$target.tmp"
  mv "$target.tmp" "$target"
  log "berth: $target"
}

case ${1:-install} in
  install) install_cli ;;
  *) die "usage: infra/cli.sh install" ;;
esac
