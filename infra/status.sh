#!/usr/bin/env bash
# `make status`: every component of the local region: name, pid, address, health.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
printf '%-22s %-8s %-38s %s\n' COMPONENT PID ADDRESS HEALTH
bash "$BERTH_ROOT/infra/region.sh" status
[[ -f $BERTH_ROOT/infra/cells.sh ]] && bash "$BERTH_ROOT/infra/cells.sh" status
bash "$BERTH_ROOT/infra/services.sh" status
