#!/usr/bin/env bash
# A quick end-to-end check of running cells with kubectl only (test/cells/cells.test.ts is the full
# suite): cell-a's node is Ready on containerd, a sample Deployment becomes Available in cell-a and
# in cell-b (each a real kubelet) and their pods answer on their pod IPs; both Services list ready
# endpoints. Works in a namespace of its own and deletes it.
#   infra/k8s/smoke.sh [IMAGE]      (default $BERTH_SAMPLE_IMAGE or 127.0.0.1:5000/berth/sample-app:v1)
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
eval "$("$BERTH_ROOT/infra/k8s/build.sh" --print-env)"

IMAGE=${1:-${BERTH_SAMPLE_IMAGE:-127.0.0.1:5000/berth/sample-app:v1}}
NS=smoke-$RANDOM
k() { local cell=$1; shift; "$K8S_BIN/kubectl" --kubeconfig "$BERTH_LOCAL/cells/$cell.kubeconfig" "$@"; }
cleanup() { for c in cell-a cell-b; do k "$c" delete ns "$NS" --wait=false >/dev/null 2>&1 || true; done; }
trap cleanup EXIT
check() { printf '%-62s' "$1"; }
ok() { echo ok; }

check "cell-a: node Ready on containerd"
k cell-a get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status} {.status.nodeInfo.containerRuntimeVersion}{"\n"}{end}' |
  grep -q '^True containerd://' || die "no Ready containerd node in cell-a"
ok

for cell in cell-a cell-b; do
  k "$cell" create ns "$NS" >/dev/null
  k "$cell" -n "$NS" create deployment sample --image="$IMAGE" --replicas=2 --port=8080 >/dev/null
  k "$cell" -n "$NS" expose deployment sample --port=80 --target-port=8080 >/dev/null
done
for cell in cell-a cell-b; do
  check "$cell: Deployment Available"
  k "$cell" -n "$NS" wait --for=condition=Available deployment/sample --timeout=90s >/dev/null ||
    die "the Deployment in $cell did not become Available"
  ok
done

for cell in cell-a cell-b; do
  check "$cell: pods answer HTTP on their pod IPs"
  for ip in $(k "$cell" -n "$NS" get pods -l app=sample -o jsonpath='{.items[*].status.podIP}'); do
    curl -fsS -m 3 "http://$ip:8080/" | grep -q '"hostname"' || die "pod $ip did not answer"
  done
  ok
done

for cell in cell-a cell-b; do
  check "$cell: EndpointSlice lists 2 ready endpoints"
  # shellcheck disable=SC2016 # expanded by the inner bash, from its arguments
  wait_until "$cell-apiserver" 30 bash -c '[[ $("$0" --kubeconfig "$1" -n "$2" get endpointslices -l kubernetes.io/service-name=sample \
    -o jsonpath="{range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]}{\"\n\"}{end}" | grep -c .) -eq 2 ]]' \
    "$K8S_BIN/kubectl" "$BERTH_LOCAL/cells/$cell.kubeconfig" "$NS"
  ok
done
echo "cells smoke check passed"
