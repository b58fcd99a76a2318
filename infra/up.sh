#!/usr/bin/env bash
# `make up`: the whole local region, idempotently. Installs what is missing, builds Kubernetes in
# the background while the region starts, brings up the cells and Berth's services, registers
# the region and deploys the sample app, and writes .local/env. A second run starts nothing.
#   infra/up.sh            everything
#   infra/up.sh --no-services   region and cells only (what tests need; they start services themselves)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WITH_SERVICES=1
[[ ${1:-} == --no-services ]] && WITH_SERVICES=0
started=$SECONDS
step() { log "$*"; }
run_if_present() {
  local script=$BERTH_ROOT/$1
  shift
  if [[ -f $script ]]; then bash "$script" "$@"; fi
}

step "bootstrap: Debian packages, Node.js 24, pnpm, npm dependencies"
bash "$BERTH_ROOT/infra/bootstrap.sh"

# A port held by another checkout's region (or any other process) would fail much later and far
# from its cause: check them all before starting anything (docs/local-region.md).
ports_args=()
((WITH_SERVICES)) || ports_args=(--no-services)
bash "$BERTH_ROOT/infra/ports.sh" check "${ports_args[@]}" || die "the ports above are taken; nothing was started"

if [[ -f $BERTH_ROOT/infra/k8s/build.sh ]] && ! bash "$BERTH_ROOT/infra/k8s/build.sh" --status >/dev/null 2>&1; then
  step "building Kubernetes and KWOK from Go modules in the background (log: $(logfile k8s-build))"
  bash "$BERTH_ROOT/infra/k8s/build.sh" --background
fi

step "region: etcd, NATS, Redis, dockerd, registry, nginx"
# The whole region's registry authenticates with the API's tokens; make test's (no services, no
# API) keeps whatever runs, or starts anonymous (docs/registry.md).
if ((WITH_SERVICES)); then
  BERTH_REGISTRY_AUTH=${BERTH_REGISTRY_AUTH:-token} bash "$BERTH_ROOT/infra/region.sh" up
else
  bash "$BERTH_ROOT/infra/region.sh" up
fi

if [[ -f $BERTH_ROOT/infra/k8s/build.sh ]]; then
  bash "$BERTH_ROOT/infra/k8s/build.sh" --status >/dev/null 2>&1 || step "waiting for the Kubernetes build"
  bash "$BERTH_ROOT/infra/k8s/build.sh" --wait
fi
step "images: pause (and, with an anonymous registry, sample-app)"
run_if_present infra/images.sh
step "IPAM: the berth-ipam plugin, cnictl, cell-a's pool"
run_if_present infra/ipam.sh install
step "cells"
# cell-a's CNI conf takes its IPAM section from the IPAM step.
# shellcheck source=/dev/null # written by make up
[[ -f $BERTH_LOCAL/env.d/15-ipam.sh ]] && source "$BERTH_LOCAL/env.d/15-ipam.sh"
run_if_present infra/cells.sh up

if ((WITH_SERVICES)); then
  step "Berth services"
  bash "$BERTH_ROOT/infra/services.sh" up
  run_if_present infra/api-bootstrap.sh
  run_if_present infra/deploy-sample.sh
fi

step "berth: the command line in .local/bin"
bash "$BERTH_ROOT/infra/cli.sh" install

# .local/env: every part's variables, then PATH.
{
  echo "# Written by make up. source .local/env"
  echo "export BERTH_ROOT=$BERTH_ROOT"
  for f in "$BERTH_LOCAL"/env.d/*.sh; do
    [[ -f $f ]] && cat "$f"
  done
  source "$BERTH_ROOT/infra/node.sh"
  echo "export PATH=$BERTH_BIN_DIR:$NODE_BIN_DIR:\$PATH"
} >"$BERTH_LOCAL/env.tmp"
chmod 600 "$BERTH_LOCAL/env.tmp"
mv "$BERTH_LOCAL/env.tmp" "$BERTH_LOCAL/env"

step "up in $((SECONDS - started))s; source .local/env to use it; make status shows every component"
