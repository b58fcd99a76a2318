#!/usr/bin/env bash
# Build Kubernetes (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl) from
# the Go module in infra/k8s, and KWOK and etcd 3.5 from their own modules, into the cache outside
# the repo:  $BERTH_CACHE/k8s/<version>/bin/  $BERTH_CACHE/kwok/<version>/bin/  $BERTH_CACHE/etcd/<version>/bin/
# A stamp file per version means a second run does nothing; a lock means two runs at once build
# once. Progress goes to .local/log/k8s-build.log.
#
#   infra/k8s/build.sh               build in the foreground (no-op when cached)
#   infra/k8s/build.sh --background  start the build detached and return at once
#   infra/k8s/build.sh --wait        wait for a build (started here or elsewhere) to finish
#   infra/k8s/build.sh --status      print ready | building | missing; exit 0 only when ready
#   infra/k8s/build.sh --print-env   print K8S_VERSION, K8S_BIN, KWOK_VERSION, KWOK_BIN, ETCD_VERSION, ETCD_BIN
# Versions: k8s.io/kubernetes in infra/k8s/go.mod, etcd in infra/k8s/etcd/go.mod, KWOK_VERSION
# (default v0.8.0). BERTH_K8S_BUILD_P sets `go build -p` (default 2; 1 if a link runs out of memory).
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

K8S_MODULE_DIR=$BERTH_ROOT/infra/k8s
K8S_VERSION=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v1\./ { print $2; exit }' "$K8S_MODULE_DIR/go.mod")
[[ -n $K8S_VERSION ]] || die "no k8s.io/kubernetes version in $K8S_MODULE_DIR/go.mod"
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
# etcd for the cells' API servers: 3.5, not Debian's 3.4.23, which lacks the watch progress
# requests (3.4.31+/3.5.13+) that streaming lists need; see docs/cells.md.
ETCD_VERSION=$(awk '{ for (i = 1; i < NF; i++) if ($i == "go.etcd.io/etcd/server/v3") { print $(i + 1); exit } }' "$K8S_MODULE_DIR/etcd/go.mod")
[[ -n $ETCD_VERSION ]] || die "no go.etcd.io/etcd/server/v3 version in $K8S_MODULE_DIR/etcd/go.mod"
ETCD_DIR=$BERTH_CACHE/etcd/$ETCD_VERSION
ETCD_BIN=$ETCD_DIR/bin
K8S_DIR=$BERTH_CACHE/k8s/$K8S_VERSION
K8S_BIN=$K8S_DIR/bin
KWOK_DIR=$BERTH_CACHE/kwok/$KWOK_VERSION
KWOK_BIN=$KWOK_DIR/bin
# Upstream commands, plus berth-cri (./cmd/berth-cri: lists and removes pod sandboxes through CRI,
# used by `cells.sh down`; cri-tools' crictl is not on the module proxy).
K8S_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl berth-cri)
BUILD_LOG=$(logfile k8s-build)
BUILD_LOCK=$BERTH_CACHE/k8s/build.lock

# The stamp names the version built; another version builds into its own directory. A missing
# binary is built on its own (the Go build cache makes that quick).
k8s_stamp_want() { echo "$K8S_VERSION"; }
k8s_ready() {
  [[ -f $K8S_DIR/stamp && $(<"$K8S_DIR/stamp") == "$(k8s_stamp_want)" ]] || return 1
  local c
  for c in "${K8S_COMMANDS[@]}"; do [[ -x $K8S_BIN/$c ]] || return 1; done
}
# The stamp also names Berth's own stages, so editing one rebuilds (seconds, from the Go cache).
KWOK_STAMP="$KWOK_VERSION stages=fast+$(cat "$K8S_MODULE_DIR"/kwok-stages/*.yaml | sha256sum | cut -c1-12)"
kwok_ready() { [[ -f $KWOK_DIR/stamp && $(<"$KWOK_DIR/stamp") == "$KWOK_STAMP" && -x $KWOK_BIN/kwok && -f $KWOK_BIN/stages.yaml ]]; }
etcd_ready() { [[ -f $ETCD_DIR/stamp && $(<"$ETCD_DIR/stamp") == "$ETCD_VERSION" && -x $ETCD_BIN/etcd ]]; }
all_ready() { k8s_ready && kwok_ready && etcd_ready; }
# Running: the lock is held, or a background build was just started and has not taken it yet.
build_running() {
  mkdir -p "$(dirname "$BUILD_LOCK")"
  ! flock -n "$BUILD_LOCK" true || is_running k8s-build
}

find_go() {
  local go
  for go in "${GO:-}" "$(command -v go || true)" /usr/local/go/bin/go; do
    [[ -n $go && -x $go ]] && { echo "$go"; return 0; }
  done
  die "Go (>= 1.24) is needed to build Kubernetes; install it at /usr/local/go"
}

build_k8s() {
  local go=$1 c i=0 major minor ld pkg t0
  [[ $K8S_VERSION =~ ^v([0-9]+)\.([0-9]+)\. ]] && major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]}
  ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  done
  rm -f "$K8S_DIR/stamp"
  mkdir -p "$K8S_BIN"
  for c in "${K8S_COMMANDS[@]}"; do
    i=$((i + 1))
    [[ -x $K8S_BIN/$c ]] && continue
    pkg=k8s.io/kubernetes/cmd/$c
    [[ -d $K8S_MODULE_DIR/cmd/$c ]] && pkg=./cmd/$c
    log "building $c $K8S_VERSION ($i/${#K8S_COMMANDS[@]})"
    t0=$SECONDS
    (cd "$K8S_MODULE_DIR" && CGO_ENABLED=0 "$go" build -v -p "${BERTH_K8S_BUILD_P:-2}" -trimpath \
      -ldflags "$ld" -o "$K8S_BIN/$c.tmp" "$pkg")
    mv "$K8S_BIN/$c.tmp" "$K8S_BIN/$c"
    log "built $c in $((SECONDS - t0))s"
  done
  k8s_stamp_want >"$K8S_DIR/stamp"
}

build_kwok() {
  local go=$1 tmp t0=$SECONDS
  log "building kwok $KWOK_VERSION"
  tmp=$KWOK_DIR/bin.tmp
  rm -rf "$tmp" && mkdir -p "$tmp"
  # Outside any module, so that KWOK builds with its own go.mod, not infra/k8s's.
  (cd "$tmp" && GOBIN=$tmp CGO_ENABLED=0 GOFLAGS=-buildvcs=false "$go" install -v -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION")
  # KWOK does nothing without stages; take them from the same module, so they always match the
  # binary: nodes become Ready at once and heartbeat through leases; pods become Ready at once
  # (the "fast" set: no simulated start-up delay, which would only blur benchmark figures). Then
  # Berth's own (infra/k8s/kwok-stages/).
  local stages f
  stages=$("$go" env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    [[ -f $stages/$f ]] || die "KWOK stage $f is not in $stages"
    printf -- '---\n' && cat "$stages/$f"
  done >"$tmp/stages.yaml"
  for f in "$K8S_MODULE_DIR"/kwok-stages/*.yaml; do
    printf -- '---\n' && cat "$f"
  done >>"$tmp/stages.yaml"
  rm -rf "$KWOK_BIN" && mv "$tmp" "$KWOK_BIN"
  echo "$KWOK_STAMP" >"$KWOK_DIR/stamp"
  log "built kwok in $((SECONDS - t0))s"
}

build_etcd() {
  local go=$1 t0=$SECONDS
  log "building etcd $ETCD_VERSION"
  mkdir -p "$ETCD_BIN"
  # From infra/k8s/etcd, a module requiring etcd's server (its own go.mod has replace directives,
  # which `go install …@version` refuses). Its go.mod names a newer patch toolchain as well; any
  # Go 1.26 builds it, so never fetch a toolchain.
  (cd "$K8S_MODULE_DIR/etcd" && GOTOOLCHAIN=local CGO_ENABLED=0 "$go" build -v -trimpath \
    -ldflags "-s -w" -o "$ETCD_BIN/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$ETCD_BIN/etcd.tmp" "$ETCD_BIN/etcd"
  echo "$ETCD_VERSION" >"$ETCD_DIR/stamp"
  log "built etcd in $((SECONDS - t0))s"
}

# build: the locked part. Two concurrent runs serialise here; the second finds the stamp.
build() {
  mkdir -p "$K8S_DIR" "$KWOK_DIR" "$ETCD_DIR"
  exec 9>"$BUILD_LOCK"
  if ! flock -n 9; then
    log "another Kubernetes build is running; waiting for it (log: $BUILD_LOG)"
    flock 9
  fi
  if all_ready; then return 0; fi
  local go t0=$SECONDS
  go=$(find_go)
  # In a subshell of its own (not under `||`), so that `set -e` stops the build at the first error.
  (
    set -e
    printf '\n=== k8s-build start %s: kubernetes %s, kwok %s, etcd %s, %s\n' "$(date -Is)" "$K8S_VERSION" "$KWOK_VERSION" "$ETCD_VERSION" "$("$go" version)"
    k8s_ready || build_k8s "$go"
    kwok_ready || build_kwok "$go"
    etcd_ready || build_etcd "$go"
    log "build done in $((SECONDS - t0))s"
  ) >>"$BUILD_LOG" 2>&1 &
  if ! wait $!; then
    tail -n 30 "$BUILD_LOG" >&2
    die "Kubernetes build failed; its log is $BUILD_LOG"
  fi
  # Everything else in Berth finds kubectl on PATH through .local/bin.
  ln -sfn "$K8S_BIN/kubectl" "$BERTH_BIN_DIR/kubectl"
}

wait_for_build() {
  local last=0 line
  while ! all_ready; do
    if ! build_running; then
      all_ready && break
      tail -n 20 "$BUILD_LOG" >&2 2>/dev/null || true
      die "Kubernetes $K8S_VERSION is not built and no build is running; run infra/k8s/build.sh (log: $BUILD_LOG)"
    fi
    if ((SECONDS - last >= 30)); then
      line=$(grep -E '^\[[0-9:]+\] ' "$BUILD_LOG" 2>/dev/null | tail -n 1 || true)
      log "waiting for the Kubernetes $K8S_VERSION build (${line:-starting}); log: $BUILD_LOG"
      last=$SECONDS
    fi
    sleep 2
  done
  ln -sfn "$K8S_BIN/kubectl" "$BERTH_BIN_DIR/kubectl"
}

# main, then exit on the same line: bash reads a script as it runs it, and this one may be
# edited (a git pull) while it runs; nothing after this line is read late.
main() {
  case ${1:-} in
    "") build ;;
    --background)
      if all_ready; then
        ln -sfn "$K8S_BIN/kubectl" "$BERTH_BIN_DIR/kubectl"
        exit 0
      fi
      if build_running; then
        log "Kubernetes $K8S_VERSION build already running; log: $BUILD_LOG"
        exit 0
      fi
      # The build's own lock (not a pid file) says whether it runs, so a crashed build never blocks.
      setsid "$0" >>"$BUILD_LOG" 2>&1 </dev/null &
      echo $! >"$(pidfile k8s-build)"
      log "Kubernetes $K8S_VERSION build started in the background (pid $!); log: $BUILD_LOG"
      ;;
    --wait) wait_for_build ;;
    --status)
      if all_ready; then echo ready; elif build_running; then echo building; exit 1; else echo missing; exit 1; fi
      ;;
    --print-env)
      printf 'K8S_VERSION=%s\nK8S_BIN=%s\nKWOK_VERSION=%s\nKWOK_BIN=%s\nETCD_VERSION=%s\nETCD_BIN=%s\n' \
        "$K8S_VERSION" "$K8S_BIN" "$KWOK_VERSION" "$KWOK_BIN" "$ETCD_VERSION" "$ETCD_BIN"
      ;;
    *) die "usage: $0 [--background|--wait|--status|--print-env]" ;;
  esac
}
main "$@"; exit
