#!/usr/bin/env bash
# The keyring app secrets are sealed with (docs/secrets.md): made once into
# .local/secrets/app-secrets-keys (mode 600) as `id:hex64`, the form of BERTH_SECRETS_KEYS, and
# printed as a path, never as a value. The API seals with it and the scheduler opens with it.
# To rotate, put a new `id:hex64` first (comma-separated), restart both, and drop the old one once
# every secret was written again.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
secrets=$BERTH_LOCAL/secrets
file=$secrets/app-secrets-keys
mkdir -p "$secrets"
chmod 700 "$secrets"
if [[ ! -s $file ]]; then
  (umask 077 && printf 'k%s:%s\n' "$(date -u +%Y%m%d)" "$(openssl rand -hex 32)" >"$file")
fi
echo "$file"
