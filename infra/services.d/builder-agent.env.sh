#!/usr/bin/env bash
# Extra environment of the region's one builder-agent (NAME=value lines for services.sh): its id
# and the key its runs' one-run registry push credentials are made with (docs/registry.md).
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
id=${BUILDER_ID:-local-1}
echo "BUILDER_ID=$id"
echo "BUILDER_REGISTRY_KEY_FILE=$(bash "$BERTH_ROOT/infra/registry-robot-keys.sh" agent "$id")"
