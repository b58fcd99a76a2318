#!/usr/bin/env bash
# The sample app's images built through Berth, as a developer's would be (make up, after the app
# exists): infra/sample-app committed into a local bare git repository, a build config `main` of
# app `sample` that compiles it in the Go compile image and pushes berth/sample-app, and one run
# per tag the region's tests and versions use (v1, v2), each waited for until it succeeded. The
# image the cells run is the one the builder-agent pushed and the API confirmed by digest.
# Idempotent: a commit whose images were built is not built again. With an anonymous registry
# (make test's) infra/images.sh pushes the sample instead and this does nothing.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=/dev/null # written by make up
for f in "$BERTH_LOCAL"/env.d/*.sh; do [[ -f $f ]] && source "$f"; done
API=${BERTH_API_URL:-http://127.0.0.1:7070}/api/v1
APP=sample
CONFIG=main
TAGS=(v1 v2)
REPO=$BERTH_DATA_DIR/git/sample-app.git
STAMP=$BERTH_DATA_DIR/images/sample-app.built # the commit whose images are in the registry
export DOCKER_HOST=${DOCKER_HOST:-unix://$BERTH_LOCAL/run/docker.sock}

[[ ${BERTH_REGISTRY_AUTH_MODE:-none} == token ]] || exit 0

api() { # METHOD PATH [BODY]: prints the body; fails with the API's message on HTTP >= 400
  local method=$1 path=$2 body=${3:-} out code
  local args=(-sS -m 10 -X "$method" -w '\n%{http_code}')
  [[ -n $body ]] && args+=(-H 'Content-Type: application/json' --data-binary @-)
  out=$(auth_curl "$BERTH_ADMIN_TOKEN" "${args[@]}" "$API$path" <<<"$body") || return 1
  code=${out##*$'\n'}
  printf '%s' "${out%$'\n'*}"
  ((code < 400))
}

# The repository: the sample's files as one commit with a fixed author and date, so the same
# files make the same commit (and the stamp stays true) whoever runs make up, and when.
mkdir -p "$(dirname "$REPO")" "$(dirname "$STAMP")"
[[ -d $REPO ]] || git init -q --bare -b main "$REPO"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$BERTH_ROOT/infra/sample-app/." "$work/"
(
  cd "$work"
  export GIT_AUTHOR_NAME=berth GIT_AUTHOR_EMAIL=make-up@berth.invalid GIT_AUTHOR_DATE='2026-01-01T00:00:00Z'
  export GIT_COMMITTER_NAME=berth GIT_COMMITTER_EMAIL=make-up@berth.invalid GIT_COMMITTER_DATE='2026-01-01T00:00:00Z'
  git init -q -b main
  git add -A
  git -c commit.gpgsign=false commit -q -m "the sample app (infra/sample-app)"
  git push -q -f "$REPO" main
)
commit=$(git -C "$work" rev-parse HEAD)

has_tags() {
  local tags
  tags=$(api GET "/image-groups/berth/repos/sample-app/tags" 2>/dev/null | jq -r '.items[].tag' 2>/dev/null) || return 1
  for t in "${TAGS[@]}"; do grep -qx "$t" <<<"$tags" || return 1; done
}
if [[ -f $STAMP && $(<"$STAMP") == "$commit" ]] && has_tags; then exit 0; fi

image=$(bash "$BERTH_ROOT/infra/images.sh" go-image) || die "cannot build the Go compile image"
config=$(jq -n --arg url "file://$REPO" --arg image "$image" '{
  name: "main", git: {url: $url, branch: "main"}, dockerfile: "Dockerfile", context: ".",
  compile: {image: $image, script: "go build -trimpath -ldflags=\"-s -w\" -o sample-app ."},
  cache: true, target: "berth/sample-app", autoDeploy: false}')
if api GET "/apps/$APP/build-configs/$CONFIG" >/dev/null 2>&1; then
  api PATCH "/apps/$APP/build-configs/$CONFIG" "$(jq 'del(.name)' <<<"$config")" >/dev/null ||
    die "cannot update build config $APP/$CONFIG"
else
  api POST "/apps/$APP/build-configs" "$config" >/dev/null || die "cannot create build config $APP/$CONFIG"
  log "build config $APP/$CONFIG: file://$REPO → berth/sample-app"
fi

for tag in "${TAGS[@]}"; do
  run=$(api POST "/apps/$APP/build-configs/$CONFIG/runs" "$(jq -n --arg t "$tag" --arg c "$commit" '{ref: $c, tag: $t}')" |
    jq -r '.id // empty') || die "cannot start the sample's build of $tag"
  [[ -n $run ]] || die "cannot start the sample's build of $tag"
  log "building berth/sample-app:$tag through Berth (run $run; logs: GET $API/builds/$run/logs?follow=false)"
  deadline=$((SECONDS + 300))
  while :; do
    state=$(api GET "/builds/$run" | jq -r '.state') || state=unknown
    case $state in
      succeeded) break ;;
      failed | cancelled)
        api GET "/builds/$run/logs?follow=false" | tail -20 >&2 || true
        die "the sample's build $run of $tag $state: $(api GET "/builds/$run" | jq -r '.reason')"
        ;;
    esac
    ((SECONDS < deadline)) || die "the sample's build $run of $tag is still $state after 300s (see $(logfile berth-builder-agent))"
    sleep 1
  done
  log "built berth/sample-app:$tag: $(api GET "/builds/$run" | jq -r '.image.digest')"
done
echo "$commit" >"$STAMP"
