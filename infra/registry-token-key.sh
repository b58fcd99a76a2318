#!/usr/bin/env bash
# Makes the key that signs the registry's bearer tokens (docs/registry.md), once:
#   DIR/registry-token.pem   EC P-256 private key + its self-signed certificate, mode 600:
#                            the API reads it from REGISTRY_TOKEN_KEY_FILE
#   DIR/registry-token.crt   the certificate alone, mode 644: the registry's rootcertbundle
# DIR defaults to .local/secrets. An existing key is kept (tokens signed by it stay valid); pass
# --rotate to make a new one. Nothing is printed but the two paths: the key never reaches a log.
#
#   infra/registry-token-key.sh [--rotate] [DIR]
set -euo pipefail

rotate=0
if [[ ${1:-} == --rotate ]]; then
  rotate=1
  shift
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${1:-$root/.local/secrets}
key=$dir/registry-token.pem
cert=$dir/registry-token.crt

if [[ ! -d $dir ]]; then
  mkdir -p "$dir"
  chmod 700 "$dir"
fi
if [[ $rotate == 0 && -s $key && -s $cert ]]; then
  printf '%s\n%s\n' "$key" "$cert"
  exit 0
fi

umask 077
tmp=$(mktemp -d "$dir/.registry-token.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/key.pem" 2>/dev/null
# A self-signed certificate of the key: the registry trusts it (rootcertbundle) and tokens carry
# it in x5c. Ten years: rotation is by a new key (--rotate), not by expiry.
openssl req -new -x509 -key "$tmp/key.pem" -out "$tmp/cert.pem" -days 3650 -sha256 \
  -subj "/CN=berth registry token signer" 2>/dev/null
cat "$tmp/key.pem" "$tmp/cert.pem" >"$tmp/bundle.pem"
chmod 600 "$tmp/bundle.pem"
chmod 644 "$tmp/cert.pem"
mv -f "$tmp/bundle.pem" "$key"
mv -f "$tmp/cert.pem" "$cert"
printf '%s\n%s\n' "$key" "$cert"
