#!/usr/bin/env bash
# After the API is up (make up): a personal access token for the admin in .local/env.d/40-api.sh
# (BERTH_ADMIN_TOKEN, made only when the one there no longer works), and the local region with
# every cell registered. Idempotent.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=/dev/null # written by make up
for f in "$BERTH_LOCAL"/env.d/*.sh; do [[ -f $f ]] && source "$f"; done
API=${BERTH_API_URL:-http://127.0.0.1:7070}/api/v1
ENV_FILE=$BERTH_LOCAL/env.d/40-api.sh

api() { # METHOD PATH [BODY]: prints the body, returns non-zero on HTTP >= 400
  local method=$1 path=$2 body=${3:-}
  local args=(-sS -m 10 -X "$method" -w '\n%{http_code}')
  [[ -n $body ]] && args+=(-H 'Content-Type: application/json' --data-binary @-)
  local out code
  out=$(auth_curl "$TOKEN" "${args[@]}" "$API$path" <<<"$body") || return 1
  code=${out##*$'\n'}
  printf '%s' "${out%$'\n'*}"
  ((code < 400))
}

# Ready means started: the admin from config exists by then.
wait_until berth-api 60 http_ok "${BERTH_API_URL:-http://127.0.0.1:7070}/readyz"

# A token that still works is kept.
TOKEN=
[[ -f $ENV_FILE ]] && TOKEN=$(sed -n 's/^export BERTH_ADMIN_TOKEN=//p' "$ENV_FILE")
if [[ -z $TOKEN ]] || ! api GET /users/me >/dev/null 2>&1; then
  # The password goes from its file through jq's stdin to curl's: never in an argv (ps) or a log.
  session=$(jq -Rn '{username: "admin", password: input}' <"$BERTH_LOCAL/secrets/admin-password" |
    curl -sS -m 10 -X POST "$API/auth/login" -H 'Content-Type: application/json' --data-binary @- | jq -r '.token // empty')
  [[ -n $session ]] || die "cannot sign in as admin at $API (see $(logfile berth-api))"
  TOKEN=$session
  expires=$(date -u -d '+365 days' +%Y-%m-%dT%H:%M:%SZ)
  # A token that outlives the session needs the password again (docs/api.md); it goes from its
  # file through jq into the request body on curl's stdin, never into an argv.
  body=$(jq -Rn --arg e "$expires" '{name: "make up", scopes: ["admin"], expiresAt: $e, password: input}' \
    <"$BERTH_LOCAL/secrets/admin-password")
  pat=$(api POST /tokens "$body" | jq -r '.token // empty')
  body=
  [[ -n $pat ]] || die "cannot create the admin's access token"
  TOKEN=$pat
  (umask 077 && echo "export BERTH_ADMIN_TOKEN=$pat" >"$ENV_FILE")
  log "admin access token written to $ENV_FILE"
fi

region=${BERTH_REGION:-local}
api GET "/regions/$region" >/dev/null 2>&1 || api POST /regions "{\"name\":\"$region\",\"description\":\"the local region of make up\"}" >/dev/null ||
  die "cannot register region $region"
IFS=, read -ra cells <<<"${BERTH_CELLS:-}"
for cell in "${cells[@]}"; do
  [[ -n $cell ]] || continue
  api GET "/regions/$region/cells/$cell" >/dev/null 2>&1 && continue
  server=$(sed -n 's/^ *server: *//p' "$BERTH_LOCAL/cells/$cell.kubeconfig" | head -1)
  api POST "/regions/$region/cells" "{\"name\":\"$cell\",\"apiServer\":\"$server\"}" >/dev/null || die "cannot register cell $cell"
  log "registered cell $cell ($server)"
done

# The region's nginx is LB group `local` (its lb-agent serves it; docs/traffic.md).
api GET /lb-groups/local >/dev/null 2>&1 ||
  api POST /lb-groups '{"name":"local","description":"the nginx of make up (BERTH_LB_URL)","vips":["127.0.0.1"]}' >/dev/null ||
  die "cannot create LB group local"

# The sample app's images live in the public image group `berth` (anyone pulls, so make test's
# cells and the ones of make up pull them alike; docs/registry.md).
api GET /image-groups/berth >/dev/null 2>&1 ||
  api POST /image-groups '{"name":"berth","public":true,"description":"images of make up: the sample app"}' >/dev/null ||
  die "cannot create image group berth"
