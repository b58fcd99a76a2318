#!/usr/bin/env bash
# Extra environment of the scheduler in the local region (NAME=value lines for services.sh): the
# key of the cells' registry pull credentials (docs/registry.md) and the app secrets keyring, as files.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
echo "REGISTRY_PULL_KEY_FILE=$(bash "$BERTH_ROOT/infra/registry-robot-keys.sh" cells)"
# The keyring it opens app secrets with, to write them into the cells (docs/secrets.md).
echo "BERTH_SECRETS_KEYS_FILE=$(bash "$BERTH_ROOT/infra/app-secrets-keys.sh")"
