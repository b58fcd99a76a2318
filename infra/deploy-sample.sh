#!/usr/bin/env bash
# The last step of `make up`: the sample app deployed through Berth's own API, as a developer
# would: an app `sample`, its image built by Berth (infra/build-sample.sh), one version of
# berth/sample-app spread over cell-a and cell-b. Idempotent: an existing app and version are
# left as they are. Waits until its replicas are available.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=/dev/null # written by make up
for f in "$BERTH_LOCAL"/env.d/*.sh; do [[ -f $f ]] && source "$f"; done
API=${BERTH_API_URL:-http://127.0.0.1:7070}/api/v1
APP=sample

if ! auth_curl "$BERTH_ADMIN_TOKEN" -fsS -m 10 -o /dev/null "$API/apps/$APP" 2>/dev/null; then
  auth_curl "$BERTH_ADMIN_TOKEN" -fsS -m 10 -o /dev/null -H 'Content-Type: application/json' -X POST "$API/apps" -d "{
    \"name\": \"$APP\", \"region\": \"${BERTH_REGION:-local}\", \"image\": \"berth/sample-app\",
    \"description\": \"the sample app of make up\",
    \"healthCheck\": {\"path\": \"/healthz\", \"port\": 8080, \"initialDelaySeconds\": 0, \"periodSeconds\": 2},
    \"ports\": [{\"name\": \"http\", \"port\": 8080}], \"minCells\": 2 }" || die "cannot create the sample app"
  log "created app $APP"
fi
# Its images, built by the region's builder-agent from a git repository (token-auth registry).
bash "$BERTH_ROOT/infra/build-sample.sh"
if [[ $(auth_curl "$BERTH_ADMIN_TOKEN" -fsS -m 10 "$API/apps/$APP/versions" | jq '.items | length') == 0 ]]; then
  auth_curl "$BERTH_ADMIN_TOKEN" -fsS -m 10 -o /dev/null -H 'Content-Type: application/json' -X POST "$API/apps/$APP/versions" \
    -d '{"imageTag": "v1", "replicas": 2, "cpu": "50m", "memory": "32Mi", "env": {"APP_VERSION": "v1"}}' ||
    die "cannot create the sample app's first version"
  log "deployed app $APP (v1, 2 replicas)"
fi

available() {
  auth_curl "$BERTH_ADMIN_TOKEN" -fsS -m 5 "$API/apps/$APP/status" |
    jq -e '[.versions[] | select(.replicas > 0) | (.available >= .replicas)] | all and length > 0' >/dev/null
}
deadline=$((SECONDS + 120))
until available; do
  ((SECONDS < deadline)) || die "the sample app is not available after 120s: see make status and $(logfile berth-scheduler)"
  sleep 1
done
# Its domain, through the region's nginx (LB group local): discovery writes the endpoints, the
# lb-agent renders the domain and pushes the routes.
DOMAIN=sample.berth.test
LB=${BERTH_LB_URL:-http://127.0.0.1:8080}
if ! auth_curl "$BERTH_ADMIN_TOKEN" -fsS -m 10 -o /dev/null "$API/apps/$APP/domains/$DOMAIN" 2>/dev/null; then
  auth_curl "$BERTH_ADMIN_TOKEN" -fsS -m 10 -o /dev/null -H 'Content-Type: application/json' -X POST "$API/apps/$APP/domains" \
    -d "{\"domain\": \"$DOMAIN\", \"group\": \"local\", \"port\": \"http\"}" || die "cannot bind $DOMAIN to the sample app"
  log "bound $DOMAIN to app $APP (LB group local)"
fi
served() { curl -fsS -m 5 -H "Host: $DOMAIN" "$LB/" | jq -e '.app == "sample-app"' >/dev/null 2>&1; }
deadline=$((SECONDS + 60))
until served; do
  ((SECONDS < deadline)) || die "$DOMAIN is not served through $LB after 60s: see $(logfile berth-lb-agent) and $(logfile berth-discovery)"
  sleep 1
done
log "sample app served through nginx: curl -H 'Host: $DOMAIN' $LB/"
# shellcheck disable=SC2015 # no address (either step failing) is fine: the log says "?"
ip=$(auth_curl "$BERTH_ADMIN_TOKEN" -fsS -m 5 "$API/apps/$APP/status" >/dev/null && "$BERTH_BIN_DIR/kubectl" --kubeconfig "$BERTH_LOCAL/cells/cell-a.kubeconfig" -n "$APP" get pods -o jsonpath='{.items[0].status.podIP}' 2>/dev/null || true)
log "sample app available; in cell-a at http://${ip:-?}:8080/"
