#!/usr/bin/env bash
# Makes, once, the secret the registry sends with its notifications to the API (docs/registry.md,
# "Who pushed a tag"): DIR/registry-notify-token, 64 hex digits, mode 600. The registry's
# config.yml carries it as a header, the API reads it from REGISTRY_NOTIFY_TOKEN_FILE. DIR
# defaults to .local/secrets. Nothing is printed but the path: the token never reaches a log.
#
#   infra/registry-notify-token.sh [DIR]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${1:-$root/.local/secrets}
file=$dir/registry-notify-token

if [[ ! -d $dir ]]; then
  mkdir -p "$dir"
  chmod 700 "$dir"
fi
if [[ ! -s $file ]]; then
  umask 077
  tmp=$(mktemp "$dir/.registry-notify-token.XXXXXX")
  trap 'rm -f "$tmp"' EXIT
  openssl rand -hex 32 >"$tmp"
  mv "$tmp" "$file"
fi
printf '%s\n' "$file"
