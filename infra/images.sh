#!/usr/bin/env bash
# Images the local region builds from scratch (no pulls are possible here):
#   127.0.0.1:5000/berth/pause:<tag>           Kubernetes' pause.c, compiled statically
#   127.0.0.1:5000/berth/sample-app:v1, :v2    infra/sample-app, a static Go HTTP server
#
#   infra/images.sh              build and push every image that is missing or out of date (with
#                                a token-auth registry: load pause into dockerd, push nothing)
#   infra/images.sh go-image     build the Go compile image into dockerd; print its tag
#   infra/images.sh pause-tar    build the pause image as an OCI/docker archive; print its path
#                                (cells.sh imports it into each real cell's containerd, no registry)
#   infra/images.sh status       one line per image: pushed | missing
# Needs the region's Docker Engine and registry (infra/region.sh) except for pause-tar.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REGISTRY=${BERTH_REGISTRY:-127.0.0.1:5000}
export DOCKER_HOST=${DOCKER_HOST:-unix://$BERTH_LOCAL/run/docker.sock}
PAUSE_TAG=3.10.1
PAUSE_IMAGE=$REGISTRY/berth/pause:$PAUSE_TAG
SAMPLE_REPO=$REGISTRY/berth/sample-app
SAMPLE_TAGS=(v1 v2)
IMAGES_DIR=$BERTH_CACHE/images
STAMP_DIR=$BERTH_DATA_DIR/images # beside the registry's data: a wiped registry means a wiped stamp
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}

# k8s_source_dir: k8s.io/kubernetes at the version infra/k8s builds, from the Go module cache.
k8s_source_dir() {
  local version dir
  version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v1\./ { print $2; exit }' "$BERTH_ROOT/infra/k8s/go.mod")
  dir=$(cd "$BERTH_ROOT/infra/k8s" && "$GO" mod download -json "k8s.io/kubernetes@$version" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
  [[ -d $dir ]] || die "k8s.io/kubernetes@$version is not in the Go module cache"
  echo "$dir"
}

# write_image_archive DIR NAME LAYER_TAR CONFIG_JSON OUT: an archive that is both an OCI image
# layout (for `ctr images import`) and a `docker save` archive (manifest.json, for `docker load`).
write_image_archive() {
  local dir=$1 name=$2 layer=$3 config_json=$4 out=$5 layer_sha layer_size config_sha config_size
  local manifest manifest_sha manifest_size
  mkdir -p "$dir/blobs/sha256"
  layer_sha=$(sha256sum "$layer" | cut -d' ' -f1)
  layer_size=$(stat -c %s "$layer")
  mv "$layer" "$dir/blobs/sha256/$layer_sha"
  config_json=${config_json//@DIFF_ID@/sha256:$layer_sha}
  printf '%s' "$config_json" >"$dir/config.json"
  config_sha=$(sha256sum "$dir/config.json" | cut -d' ' -f1)
  config_size=$(stat -c %s "$dir/config.json")
  mv "$dir/config.json" "$dir/blobs/sha256/$config_sha"
  manifest=$(printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$config_sha" "$config_size" "$layer_sha" "$layer_size")
  printf '%s' "$manifest" >"$dir/manifest.oci"
  manifest_sha=$(sha256sum "$dir/manifest.oci" | cut -d' ' -f1)
  manifest_size=$(stat -c %s "$dir/manifest.oci")
  mv "$dir/manifest.oci" "$dir/blobs/sha256/$manifest_sha"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest_sha" "$manifest_size" "$name" "${name##*:}" >"$dir/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$dir/oci-layout"
  printf '[{"Config":"blobs/sha256/%s","RepoTags":["%s"],"Layers":["blobs/sha256/%s"]}]' \
    "$config_sha" "$name" "$layer_sha" >"$dir/manifest.json"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$dir" -cf "$out.tmp" \
    oci-layout index.json manifest.json blobs
  mv "$out.tmp" "$out"
}

# pause_tar: build the pause image archive once per Kubernetes version; print its path.
pause_tar() {
  local src out work version
  src=$(k8s_source_dir)
  version=${src##*@}
  out=$IMAGES_DIR/pause-$PAUSE_TAG-k8s-$version-${REGISTRY//[:/]/_}.tar # the name inside names the registry
  if [[ -f $out ]]; then
    echo "$out"
    return 0
  fi
  ensure_packages gcc libc6-dev
  mkdir -p "$IMAGES_DIR"
  work=$(mktemp -d "$IMAGES_DIR/pause.XXXXXX")
  mkdir -p "$work/rootfs"
  # The flags of build/pause/Makefile, so `pause -v` reports the same version string.
  gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_TAG-berth" -o "$work/rootfs/pause" "$src/build/pause/linux/pause.c"
  strip "$work/rootfs/pause"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work/rootfs" -cf "$work/layer.tar" pause
  write_image_archive "$work/image" "$PAUSE_IMAGE" "$work/layer.tar" \
    '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/pause"],"User":"65535:65535"},"rootfs":{"type":"layers","diff_ids":["@DIFF_ID@"]},"history":[{"created_by":"infra/images.sh: build/pause/linux/pause.c from k8s.io/kubernetes '"$version"'"}]}' \
    "$out"
  rm -rf "$work"
  echo "$out"
}

registry_has() { # registry_has REPO TAG
  curl -fs -m 5 -o /dev/null \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json' \
    "http://$REGISTRY/v2/$1/manifests/$2"
}

# pushed_current NAME HASH: the image was pushed from exactly these sources and is still there.
pushed_current() {
  local repo_tag=${1#"$REGISTRY"/}
  [[ -f $STAMP_DIR/${repo_tag//[\/:]/_} && $(<"$STAMP_DIR/${repo_tag//[\/:]/_}") == "$2" ]] &&
    registry_has "${repo_tag%:*}" "${repo_tag##*:}"
}
mark_pushed() {
  local repo_tag=${1#"$REGISTRY"/}
  mkdir -p "$STAMP_DIR"
  echo "$2" >"$STAMP_DIR/${repo_tag//[\/:]/_}"
}

need_region() {
  command -v docker >/dev/null || die "docker CLI not found; infra/region.sh installs Docker Engine"
  docker version >/dev/null 2>&1 || die "the region's Docker Engine does not answer at $DOCKER_HOST; run infra/region.sh up first"
  [[ $(curl -sS -m 5 -o /dev/null -w '%{http_code}' "http://$REGISTRY/v2/" 2>/dev/null) =~ ^(200|401)$ ]] ||
    die "the registry does not answer at http://$REGISTRY/v2/; run infra/region.sh up first"
}

# With token auth (make up) nothing is pushed from here: the sample app is built through Berth
# (infra/build-sample.sh), and the pause image only goes into dockerd.
registry_anonymous() { [[ $(curl -sS -m 5 -o /dev/null -w '%{http_code}' "http://$REGISTRY/v2/" 2>/dev/null) == 200 ]]; }

load_pause() {
  local tar
  tar=$(pause_tar)
  docker image inspect "$PAUSE_IMAGE" >/dev/null 2>&1 || docker load -q -i "$tar" >/dev/null
}

# go_image: the compile image of Go apps (the sample's build config names it), built FROM scratch
# into dockerd, never pushed: the host's Go toolchain (without tests and docs) and busybox for
# `sh`. Its Go caches live under HOME=/cache/home, the agent's per-config cache. Prints its tag.
go_image() {
  local goroot version tag ctx
  goroot=$("$GO" env GOROOT)
  version=$("$GO" env GOVERSION)
  tag=berth-local/go:$version
  if ! docker image inspect "$tag" >/dev/null 2>&1; then
    ensure_packages busybox-static
    ctx=$(mktemp -d)
    mkdir -p "$ctx/bin"
    cp /bin/busybox "$ctx/bin/busybox"
    ln -s "$goroot" "$ctx/go"
    cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY bin /bin
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /tmp && chmod 1777 /tmp
COPY go /usr/local/go
ENV PATH=/usr/local/go/bin:/bin GOTOOLCHAIN=local GOFLAGS=-mod=mod GOSUMDB=off CGO_ENABLED=0 \
    GOMODCACHE=/cache/home/go/pkg/mod GOCACHE=/cache/home/.cache/go-build
DOCKERFILE
    log "building the Go compile image $tag"
    # -h follows the symlink to GOROOT; what a build never reads stays out.
    tar -C "$ctx" -ch --exclude=./go/test --exclude=./go/doc --exclude=./go/api --exclude=./go/misc \
      --exclude=testdata --exclude='*_test.go' . | docker build -q -t "$tag" - >/dev/null
    rm -rf "$ctx"
  fi
  echo "$tag"
}

push_pause() {
  local tar hash
  tar=$(pause_tar)
  hash=$(sha256sum "$tar" | cut -c1-16)
  if pushed_current "$PAUSE_IMAGE" "$hash"; then return 0; fi
  log "pushing $PAUSE_IMAGE"
  docker load -q -i "$tar" >/dev/null
  docker push -q "$PAUSE_IMAGE" >/dev/null
  mark_pushed "$PAUSE_IMAGE" "$hash"
}

push_sample_app() {
  local src=$BERTH_ROOT/infra/sample-app hash tag ctx
  hash=$(cat "$src/go.mod" "$src/main.go" "$src/Dockerfile" | sha256sum | cut -c1-16)
  for tag in "${SAMPLE_TAGS[@]}"; do
    if pushed_current "$SAMPLE_REPO:$tag" "$hash"; then continue; fi
    log "building and pushing $SAMPLE_REPO:$tag"
    ctx=$(mktemp -d)
    (cd "$src" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w -X main.version=$tag" -o "$ctx/sample-app" .)
    cp "$src/Dockerfile" "$ctx/"
    docker build -q --build-arg "APP_VERSION=$tag" --label "dev.berth.source=$hash" -t "$SAMPLE_REPO:$tag" "$ctx" >/dev/null
    rm -rf "$ctx"
    docker push -q "$SAMPLE_REPO:$tag" >/dev/null
    mark_pushed "$SAMPLE_REPO:$tag" "$hash"
  done
}

case ${1:-all} in
  all)
    need_region
    if registry_anonymous; then
      push_pause
      push_sample_app
    else
      load_pause
    fi
    ;;
  go-image) go_image ;;
  pause-tar) pause_tar ;;
  status)
    for image in "$PAUSE_IMAGE" "${SAMPLE_TAGS[@]/#/$SAMPLE_REPO:}"; do
      rt=${image#"$REGISTRY"/}
      if registry_has "${rt%:*}" "${rt##*:}"; then s=pushed; else s=missing; fi
      printf '%-48s %s\n' "$image" "$s"
    done
    ;;
  *) die "usage: $0 [all|pause-tar|status]" ;;
esac
