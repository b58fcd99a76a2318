#!/usr/bin/env bash
# `make down`: stop everything `make up` started, by pid file, newest layer first. Data stays.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bash "$BERTH_ROOT/infra/services.sh" down
[[ -f $BERTH_ROOT/infra/cells.sh ]] && bash "$BERTH_ROOT/infra/cells.sh" down
bash "$BERTH_ROOT/infra/region.sh" down
# Anything else a pid file still names (a component a later script started).
for f in "$BERTH_RUN_DIR"/*.pid; do
  [[ -f $f ]] || continue
  name=$(basename "$f" .pid)
  [[ $name == *.own ]] && continue
  stop_daemon "$name"
done
log "down"
