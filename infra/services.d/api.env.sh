#!/usr/bin/env bash
# Extra environment of the API in the local region (printed as NAME=value lines for services.sh).
# The admin password is generated once into .local/secrets (0600) and passed as a file, so it is
# never on a command line or in an environment listing.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
secrets=$BERTH_LOCAL/secrets
mkdir -p "$secrets"
chmod 700 "$secrets"
if [[ ! -s $secrets/admin-password ]]; then
  (umask 077 && openssl rand -base64 24 | tr -d '/+=\n' >"$secrets/admin-password")
fi
echo "BERTH_ADMIN_USER=admin"
echo "BERTH_ADMIN_PASSWORD_FILE=$secrets/admin-password"
# The key webhook secrets are derived from (docs/builds.md): made once, kept with the other secrets.
if [[ ! -s $secrets/build-webhook-key ]]; then
  (umask 077 && openssl rand -hex 32 >"$secrets/build-webhook-key")
fi
echo "BUILD_WEBHOOK_KEY_FILE=$secrets/build-webhook-key"
# The registry's token server (docs/registry.md): its signing key (the registry trusts its
# certificate), the robots' master key, and the registry as the API reads repositories and tags.
echo "REGISTRY_TOKEN_KEY_FILE=$(bash "$BERTH_ROOT/infra/registry-token-key.sh" "$secrets" | sed -n 1p)"
echo "REGISTRY_ROBOT_KEY_FILE=$(bash "$BERTH_ROOT/infra/registry-robot-keys.sh" master)"
echo "REGISTRY_URL=http://${REGISTRY_ADDR:-127.0.0.1:5000}"
# The secret the registry's notifications carry (who pushed each tag; its config.yml holds it too).
echo "REGISTRY_NOTIFY_TOKEN_FILE=$(bash "$BERTH_ROOT/infra/registry-notify-token.sh" "$secrets")"
# The API is the one service meant to face users: its /metrics needs this bearer token
# (docs/local-region.md). The other services listen on loopback only; theirs stay open.
if [[ ! -s $secrets/metrics-token ]]; then
  (umask 077 && openssl rand -hex 24 >"$secrets/metrics-token")
fi
echo "METRICS_TOKEN_FILE=$secrets/metrics-token"
# The keyring app secrets are sealed with (docs/secrets.md).
echo "BERTH_SECRETS_KEYS_FILE=$(bash "$BERTH_ROOT/infra/app-secrets-keys.sh")"
