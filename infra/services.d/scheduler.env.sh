#!/usr/bin/env bash
# Extra environment of the scheduler in the local region (NAME=value lines for services.sh): the
# key of the cells' registry pull credentials (docs/registry.md), as a file.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
echo "REGISTRY_PULL_KEY_FILE=$(bash "$BERTH_ROOT/infra/registry-robot-keys.sh" cells)"
