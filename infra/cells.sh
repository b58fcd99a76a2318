#!/usr/bin/env bash
# The region's Kubernetes cells (docs/cells.md):
#   cell-a, cell-b  real cells: API server, controller manager, scheduler, and a kubelet node on the
#                   cell's own containerd running real containers on its own bridge:
#                   cell-a berth-cell-a0 (198.18.0.0/16), cell-b berth-cell-b0 (198.19.32.0/21)
#   cell-c, cell-d… KWOK cells (BERTH_KWOK_CELLS of them): API server, controller manager,
#                   scheduler and kwok simulating nodes
# All API servers keep their state in one etcd (127.0.0.1:2381), each under its own prefix.
#
#   infra/cells.sh up       start what is not running, wait until every cell is ready
#   infra/cells.sh up cell-a   the same for the named cells only (a test restarting cell-a's kubelet)
#   infra/cells.sh down     stop every process of every cell, the kubelets' containers too, and free
#                           the network devices and cgroups; data (etcd, images, certificates) stays
#   infra/cells.sh status   one row per component
# Env: BERTH_KWOK_CELLS (default 0: KWOK cells after the real ones), BERTH_KWOK_NODES (default 3),
#      BERTH_KWOK_NODE_CPU (32), BERTH_KWOK_NODE_MEMORY (128Gi), BERTH_KWOK_NODE_PODS (110),
#      BERTH_CELL_A_IPAM, BERTH_CELL_B_IPAM (the IPAM section of a real cell's CNI conf; by default
#      what infra/ipam.sh wrote into .local/env.d/15-ipam.sh, else host-local).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$BERTH_ROOT/infra/k8s/pki.sh"

KWOK_CELLS=${BERTH_KWOK_CELLS:-0}
KWOK_NODES=${BERTH_KWOK_NODES:-3}
KWOK_NODE_CPU=${BERTH_KWOK_NODE_CPU:-32}
KWOK_NODE_MEMORY=${BERTH_KWOK_NODE_MEMORY:-128Gi}
KWOK_NODE_PODS=${BERTH_KWOK_NODE_PODS:-110}
[[ $KWOK_CELLS =~ ^[0-9]+$ && $KWOK_CELLS -le 16 ]] || die "BERTH_KWOK_CELLS must be 0..16 (one /21 of 198.19.128.0/17 each)"
[[ $KWOK_NODES =~ ^[0-9]+$ && $KWOK_NODES -ge 1 ]] || die "BERTH_KWOK_NODES must be a number >= 1"

CELLS_DIR=$BERTH_LOCAL/cells
ETCD_URL=http://127.0.0.1:2381
SERVICE_CIDR=198.19.64.0/18
# The real cells, by index (cell-a is 0): each one's pod range, on its own bridge, whose first
# address is the host's side of the bridge and the kubelet's node IP. cell-b's /21 sits between
# docker's networks (198.19.16.0/20) and the IPAM tests' pools (198.19.40.0/21); docs/cells.md.
REAL_POD_CIDRS=(198.18.0.0/16 198.19.32.0/21)
REAL_NODE_IPS=(198.18.0.1 198.19.32.1)
REAL_CELLS=${#REAL_POD_CIDRS[@]}
LAST_CELL=$((REAL_CELLS + 16 - 1)) # cell-r: at most 16 KWOK cells after the real ones
REGISTRY=${BERTH_REGISTRY:-127.0.0.1:5000}
PAUSE_IMAGE=$REGISTRY/berth/pause:3.10.1
DOCKER_HOST=${DOCKER_HOST:-unix://$BERTH_RUN_DIR/docker.sock}
CNI_BIN_DIR=/usr/lib/cni
CGROUP_FS=/sys/fs/cgroup
IPT_CHAIN=BERTH-CELLS
# Ranges nothing on this machine answers: make traffic to them fail here instead of leaving by
# the default route (the network rule: 198.18.0.0/15 only, and only what we created).
UNREACHABLE_ROUTES=(198.19.64.0/18 198.19.128.0/17 198.19.48.0/24)

eval "$("$BERTH_ROOT/infra/k8s/build.sh" --print-env)"

cell_name() { printf 'cell-%b\n' "\\x$(printf %x $((97 + $1)))"; }
cell_index() { local c=${1#cell-}; echo $(($(printf %d "'$c") - 97)); }
is_real() { (($1 < REAL_CELLS)); }
apiserver_port() { echo $((6443 + $1)); }
controller_manager_port() { echo $((10257 + 100 * $1)); }
scheduler_port() { echo $((10259 + 100 * $1)); }
kwok_port() { echo $((10247 + 100 * $1)); }
# KWOK cell i owns the /21 number i-REAL_CELLS of 198.19.128.0/17 for its pods.
kwok_pod_cidr() { echo "198.19.$((128 + 8 * ($1 - REAL_CELLS))).0/21"; }
# The address an API server writes into its `kubernetes` Service: a real cell's node IP (bound),
# 198.19.48.i for a KWOK cell (never bound). Nothing dials it (no kube-proxy): a cell-b API server
# certificate made when cell-b was a KWOK cell names 198.19.48.1 instead, and that is harmless.
advertise_address() { if is_real "$1"; then node_ip "$1"; else echo "198.19.48.$1"; fi; }

# Real cell i's node: name, IP, pod range, bridge, containerd socket, kubelet healthz port, cgroup root.
node_name() { echo "$(cell_name "$1")-node0"; }
node_ip() { echo "${REAL_NODE_IPS[$1]}"; }
pod_cidr() { echo "${REAL_POD_CIDRS[$1]}"; }
bridge_name() { echo "berth-$(cell_name "$1")0"; }
containerd_sock() { echo "$BERTH_RUN_DIR/$(cell_name "$1")-containerd.sock"; }
kubelet_healthz_port() { echo $((10248 + 100 * $1)); }
# Each kubelet has a cgroup root of its own: a kubelet treats every pod cgroup under its root that
# it does not know as orphaned and kills its processes, so two kubelets under one root would kill
# each other's pods.
cgroup_root() { echo "/berth-$(cell_name "$1")"; }

configured_cells() {
  local i
  for ((i = 0; i < REAL_CELLS + KWOK_CELLS; i++)); do cell_name "$i"; done
}
# The configured cells and any other cell with a process (down and status must see the cells a
# benchmark started with a larger BERTH_KWOK_CELLS).
known_cells() {
  {
    configured_cells
    find "$BERTH_RUN_DIR" -maxdepth 1 -name 'cell-?-*.pid' -printf '%f\n' 2>/dev/null | cut -c1-6
  } | sort -u
}

# write_file FILE: stdin into FILE, atomically and only when it differs (containerd watches the CNI
# directory and would read a half-written file; unchanged files keep their mtime).
write_file() {
  local tmp
  tmp=$(mktemp "$1.XXXXXX")
  cat >"$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else chmod 644 "$tmp" && mv "$tmp" "$1"; fi
}

# start_component NAME CMD...: start_daemon, except that a pid file naming a process that has
# exited but is not reaped yet (a zombie, e.g. a killed kubelet) counts as stopped, as it is.
start_component() {
  local pid
  pid=$(pid_of "$1")
  if [[ -n $pid && $(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null) == Z ]]; then rm -f "$(pidfile "$1")"; fi
  start_daemon "$@" || true
}

kubectl_cell() { "$K8S_BIN/kubectl" --kubeconfig "$CELLS_DIR/$1.kubeconfig" "${@:2}"; }

# The identities of Berth's services in every cell (make_cell_pki, apply_berth_rbac).
BERTH_IDENTITIES=(scheduler discovery ipam api)
# apply_berth_rbac CELL: the ClusterRoles and bindings of those identities, with the admin's kubeconfig.
apply_berth_rbac() {
  kubectl_cell "$1" apply --server-side --field-manager=berth-cells -f "$BERTH_ROOT/infra/k8s/berth-rbac.yaml" >/dev/null
}

# ---------------------------------------------------------------- certificates and configs

make_cell_pki() {
  local cell=$1 i=$2 pki=$CELLS_DIR/$1/pki adv port
  adv=$(advertise_address "$i")
  port=$(apiserver_port "$i")
  mkdir -p "$pki"
  pki_ca "$pki" "berth-$cell-ca"
  pki_sa_key "$pki"
  pki_cert "$pki" apiserver kube-apiserver "" server \
    "IP:127.0.0.1,IP:$adv,IP:198.19.64.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  pki_cert "$pki" apiserver-kubelet-client kube-apiserver-kubelet-client system:masters client
  pki_cert "$pki" admin berth-admin system:masters client
  pki_cert "$pki" controller-manager system:kube-controller-manager "" client
  pki_cert "$pki" scheduler system:kube-scheduler "" client
  local server=https://127.0.0.1:$port
  write_kubeconfig "$CELLS_DIR/$cell.kubeconfig" "$cell" "$server" "$pki/ca.crt" "$pki/admin.crt" "$pki/admin.key"
  write_kubeconfig "$CELLS_DIR/$cell/controller-manager.kubeconfig" "$cell" "$server" "$pki/ca.crt" "$pki/controller-manager.crt" "$pki/controller-manager.key"
  write_kubeconfig "$CELLS_DIR/$cell/scheduler.kubeconfig" "$cell" "$server" "$pki/ca.crt" "$pki/scheduler.crt" "$pki/scheduler.key"
  # One narrow identity per Berth service (user berth-<name>, in no group; its ClusterRole is in
  # infra/k8s/berth-rbac.yaml): <cell>.<name>.kubeconfig. <cell>.kubeconfig stays the admin's.
  local id
  for id in "${BERTH_IDENTITIES[@]}"; do
    pki_cert "$pki" "berth-$id" "berth-$id" "" client
    write_kubeconfig "$CELLS_DIR/$cell.$id.kubeconfig" "$cell" "$server" "$pki/ca.crt" "$pki/berth-$id.crt" "$pki/berth-$id.key"
  done
  if is_real "$i"; then
    local node ip
    node=$(node_name "$i")
    ip=$(node_ip "$i")
    pki_cert "$pki" kubelet "system:node:$node" system:nodes client
    pki_cert "$pki" kubelet-serving "$node" "" server "IP:$ip,IP:127.0.0.1,DNS:$node"
    write_kubeconfig "$CELLS_DIR/$cell/kubelet.kubeconfig" "$cell" "$server" "$pki/ca.crt" "$pki/kubelet.crt" "$pki/kubelet.key"
  else
    # kwok writes the status and leases of many nodes; it is not one node, so NodeRestriction's
    # per-node identity does not fit it.
    pki_cert "$pki" kwok kwok system:masters client
    write_kubeconfig "$CELLS_DIR/$cell/kwok.kubeconfig" "$cell" "$server" "$pki/ca.crt" "$pki/kwok.crt" "$pki/kwok.key"
  fi
  write_file "$CELLS_DIR/$cell/scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $CELLS_DIR/$cell/scheduler.kubeconfig
  qps: 100
  burst: 200
leaderElection:
  leaderElect: false
EOF
}

# ipam_section I: the IPAM section of real cell I's CNI conf: BERTH_CELL_<X>_IPAM (a JSON
# object; infra/ipam.sh writes Berth's berth-ipam section into .local/env.d/15-ipam.sh, read when
# the variable is not set), else host-local over the cell's pod range.
ipam_section() {
  local i=$1 cell var value
  cell=$(cell_name "$i")
  var=BERTH_$(tr '[:lower:]-' '[:upper:]_' <<<"$cell")_IPAM
  value=${!var-}
  if [[ -z $value && -f $BERTH_LOCAL/env.d/15-ipam.sh ]]; then
    # shellcheck source=/dev/null # written by infra/ipam.sh
    value=$(source "$BERTH_LOCAL/env.d/15-ipam.sh" && echo "${!var-}")
  fi
  if [[ -n $value ]]; then
    echo "$value"
    return 0
  fi
  cat <<EOF
{
        "type": "host-local",
        "dataDir": "$BERTH_DATA_DIR/$cell/cni-host-local",
        "ranges": [[{ "subnet": "$(pod_cidr "$i")", "gateway": "$(node_ip "$i")" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
EOF
}

# The one file that says how a real cell's pods get their network: the bridge plugin on the
# cell's own bridge, with the IPAM section above (Berth's berth-ipam in the region).
write_cni_config() {
  local i=$1 cell dir
  cell=$(cell_name "$i")
  dir=$CELLS_DIR/$cell/cni/net.d
  mkdir -p "$dir"
  write_file "$dir/10-berth-$cell.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "berth-$cell",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$(bridge_name "$i")",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": $(ipam_section "$i")
    }
  ]
}
EOF
}

write_containerd_config() {
  local i=$1 cell dir data sock
  cell=$(cell_name "$i")
  dir=$CELLS_DIR/$cell
  data=$BERTH_DATA_DIR/$cell/containerd
  sock=$(containerd_sock "$i")
  mkdir -p "$dir/certs.d/$REGISTRY" "$data"
  write_file "$dir/certs.d/$REGISTRY/hosts.toml" <<EOF
# The region's registry speaks plain http on loopback.
server = "http://$REGISTRY"

[host."http://$REGISTRY"]
  capabilities = ["pull", "resolve", "push"]
EOF
  write_file "$dir/containerd.toml" <<EOF
# $cell's own containerd (Debian's 1.6): its own root, state and socket; CRI for the kubelet.
version = 2
root = "$data"
state = "$BERTH_RUN_DIR/$cell-containerd"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "$sock"

[ttrpc]
  address = "$sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  # This machine's root lacks CAP_SYS_RESOURCE: nothing may lower its oom_score_adj, so the
  # kubelet's values (-998 for sandboxes) are clamped to containerd's own instead of failing runc.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$dir/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$dir/certs.d"
EOF
}

write_kubelet_config() {
  local i=$1 cell dir data
  cell=$(cell_name "$i")
  dir=$CELLS_DIR/$cell
  data=$BERTH_DATA_DIR/$cell
  mkdir -p "$data/kubelet" "$data/pod-logs"
  write_file "$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $(node_ip "$i")
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $(kubelet_healthz_port "$i")
tlsCertFile: $dir/pki/kubelet-serving.crt
tlsPrivateKeyFile: $dir/pki/kubelet-serving.key
authentication:
  anonymous: { enabled: false }
  webhook: { enabled: true }
  x509: { clientCAFile: $dir/pki/ca.crt }
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$(containerd_sock "$i")
# This machine: cgroup v1, no systemd, no swap accounting.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
memorySwap: {}
# Every kubelet on this machine has its own cgroup root (pods under $(cgroup_root "$i")/kubepods).
cgroupRoot: $(cgroup_root "$i")
# No cluster DNS and no host resolv.conf: pods resolve nothing outside (network rule).
resolvConf: ""
clusterDomain: cluster.local
podLogsDir: $data/pod-logs
volumePluginDir: $data/kubelet/volume-plugins
serializeImagePulls: false
maxPods: 110
podPidsLimit: -1
rotateCertificates: false
serverTLSBootstrap: false
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
imageGCHighThresholdPercent: 95
imageGCLowThresholdPercent: 90
EOF
}

# ---------------------------------------------------------------- host network and mounts

# prepare_host: what every real cell needs of the host: shared mounts, /dev/kmsg, the unreachable
# routes, and the BERTH-CELLS chain covering every real cell's bridge (also those not up yet).
prepare_host() {
  # The kubelet and containerd need mount propagation from the host into pods (kind does the same).
  if [[ $(findmnt -no PROPAGATION /) != shared ]]; then as_root mount --make-rshared /; fi
  [[ -e /dev/kmsg ]] || as_root mknod /dev/kmsg c 1 11
  local r i bridge
  for r in "${UNREACHABLE_ROUTES[@]}"; do as_root ip route replace unreachable "$r"; done
  # dockerd sets FORWARD's policy to DROP; pod-to-pod traffic crosses FORWARD when br_netfilter
  # is loaded. Accept each bridge's own traffic and the benchmark range; refuse the rest.
  as_root iptables -w -N "$IPT_CHAIN" 2>/dev/null || true
  as_root iptables -w -F "$IPT_CHAIN"
  for ((i = 0; i < REAL_CELLS; i++)); do
    bridge=$(bridge_name "$i")
    as_root iptables -w -A "$IPT_CHAIN" -i "$bridge" -o "$bridge" -j ACCEPT
    as_root iptables -w -A "$IPT_CHAIN" -i "$bridge" -d 198.18.0.0/15 -j ACCEPT
    as_root iptables -w -A "$IPT_CHAIN" -o "$bridge" -s 198.18.0.0/15 -j ACCEPT
    as_root iptables -w -A "$IPT_CHAIN" -i "$bridge" -j REJECT --reject-with icmp-net-prohibited
  done
  as_root iptables -w -C FORWARD -j "$IPT_CHAIN" 2>/dev/null || as_root iptables -w -I FORWARD 1 -j "$IPT_CHAIN"
}

release_host() {
  local r
  if as_root iptables -w -C FORWARD -j "$IPT_CHAIN" 2>/dev/null; then as_root iptables -w -D FORWARD -j "$IPT_CHAIN"; fi
  as_root iptables -w -F "$IPT_CHAIN" 2>/dev/null || true
  as_root iptables -w -X "$IPT_CHAIN" 2>/dev/null || true
  for r in "${UNREACHABLE_ROUTES[@]}"; do as_root ip route del unreachable "$r" 2>/dev/null || true; done
}

# cgroup_dirs I: real cell I's cgroup root in every cgroup hierarchy of this machine (the v1
# controllers, and the hybrid `unified` v2 tree, where runc also makes its cgroups).
cgroup_dirs() {
  local root h
  root=$(cgroup_root "$1")
  for h in "$CGROUP_FS"/*/; do
    h=${h%/}
    if [[ -f $h/cgroup.procs && ! -L $h ]]; then echo "$h$root"; fi
  done
}

# prepare_node_host I: real cell I's bridge, with the node IP on it (before the kubelet, so that
# its node IP is on a host interface; the CNI bridge plugin finds it and adds pods' veths to it),
# and its cgroup root (the kubelet refuses a cgroupRoot that does not exist).
prepare_node_host() {
  local i=$1 bridge ip prefix d
  bridge=$(bridge_name "$i")
  ip=$(node_ip "$i")
  prefix=$(pod_cidr "$i")
  prefix=${prefix#*/}
  if ! ip link show "$bridge" >/dev/null 2>&1; then
    as_root ip link add "$bridge" type bridge
  fi
  ip -4 addr show dev "$bridge" | grep -q "inet $ip/$prefix" || as_root ip addr add "$ip/$prefix" dev "$bridge"
  as_root ip link set "$bridge" up
  for d in $(cgroup_dirs "$i"); do
    [[ -d $d ]] && continue
    as_root mkdir -p "$d"
    # A new cpuset cgroup has no CPUs or memory nodes: take the parent's, or nothing can join it.
    if [[ -f $d/cpuset.cpus ]]; then
      as_root tee "$d/cpuset.cpus" <"$(dirname "$d")/cpuset.cpus" >/dev/null
      as_root tee "$d/cpuset.mems" <"$(dirname "$d")/cpuset.mems" >/dev/null
    fi
  done
}

# release_node_host I: real cell I's bridge and its leftover ports, and its (empty) cgroups.
release_node_host() {
  local i=$1 bridge port d sub
  bridge=$(bridge_name "$i")
  # Pods' veths went with their network namespaces; any left over are the bridge's ports.
  for port in $(ip -o link show master "$bridge" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    as_root ip link del "$port" 2>/dev/null || true
  done
  as_root ip link del "$bridge" 2>/dev/null || true
  # The kubelet leaves its QoS and pod cgroups behind; with every process gone they are empty.
  for d in $(cgroup_dirs "$i"); do
    [[ -d $d ]] || continue
    find "$d" -depth -type d -print0 2>/dev/null | while IFS= read -r -d '' sub; do
      as_root rmdir "$sub" 2>/dev/null || true
    done
  done
}

# unmount_under DIR...: unmount everything mounted below DIR, deepest first.
unmount_under() {
  local d m
  for d in "$@"; do
    [[ -d $d ]] || continue
    d=$(realpath "$d")
    awk -v d="$d/" 'index($2 "/", d) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
      as_root umount "$m" 2>/dev/null || as_root umount -l "$m" 2>/dev/null || true
    done
  done
}

# ---------------------------------------------------------------- components

start_etcd() {
  if curl -fsS -m 2 "$ETCD_URL/health" 2>/dev/null | grep -q '"health":"true"'; then return 0; fi
  mkdir -p "$BERTH_DATA_DIR/etcd-cells"
  start_component etcd-cells "$ETCD_BIN/etcd" --name berth-cells --data-dir "$BERTH_DATA_DIR/etcd-cells" \
    --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls http://127.0.0.1:2382 --initial-advertise-peer-urls http://127.0.0.1:2382 \
    --initial-cluster berth-cells=http://127.0.0.1:2382 --initial-cluster-state new \
    --quota-backend-bytes 8589934592 --max-request-bytes 10485760 \
    --experimental-watch-progress-notify-interval 5s
  wait_until etcd-cells 60 etcd_healthy
}
etcd_healthy() { curl -fsS -m 2 "$ETCD_URL/health" | grep -q '"health":"true"'; }

# The cells' Secrets are encrypted at rest in etcd-cells (docs/secrets.md, "What the cells
# store"): every API server reads one EncryptionConfiguration, secretbox with a key made once into
# .local/secrets/cells-encryption-key, then identity, so Secrets stored in clear before still read
# (the first `up` with it rewrites them encrypted). Both files hold the key: mode 600, in a 700
# directory, and the key is never on a command line.
ENCRYPTION_CONFIG=$BERTH_LOCAL/secrets/cells-encryption.yaml
write_encryption_config() {
  local dir=$BERTH_LOCAL/secrets key tmp
  mkdir -p "$dir"
  chmod 700 "$dir"
  if [[ ! -s $dir/cells-encryption-key ]]; then
    tmp=$(mktemp "$dir/cells-encryption-key.XXXXXX") # mktemp makes it 600
    head -c 32 /dev/urandom | base64 -w0 >"$tmp"
    mv "$tmp" "$dir/cells-encryption-key"
  fi
  key=$(<"$dir/cells-encryption-key")
  tmp=$(mktemp "$ENCRYPTION_CONFIG.XXXXXX")
  cat >"$tmp" <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - secretbox:
          keys:
            - name: key1
              secret: $key
      - identity: {}
EOF
  if cmp -s "$tmp" "$ENCRYPTION_CONFIG"; then rm -f "$tmp"; else mv "$tmp" "$ENCRYPTION_CONFIG"; fi
}

# start_apiserver CELL I: start CELL's API server. One already running restarts when its flags or
# its encryption config changed since it started (the stamp in the cell's directory says), so an
# `up` on a running region applies them; its clients (controller manager, scheduler, kubelet,
# Berth's services) reconnect by themselves.
start_apiserver() {
  local cell=$1 i=$2 pki=$CELLS_DIR/$1/pki stamp=$CELLS_DIR/$1/apiserver.stamp want
  # The commas below separate values of one flag, not array elements.
  # shellcheck disable=SC2054
  local args=(
    --etcd-servers="$ETCD_URL" --etcd-prefix="/cells/$cell"
    --bind-address=127.0.0.1 --secure-port="$(apiserver_port "$i")" --advertise-address="$(advertise_address "$i")"
    --service-cluster-ip-range="$SERVICE_CIDR"
    --client-ca-file="$pki/ca.crt" --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key"
    --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" --kubelet-client-key="$pki/apiserver-kubelet-client.key"
    --kubelet-preferred-address-types=InternalIP,Hostname
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key"
    --service-account-issuer=https://kubernetes.default.svc --api-audiences=https://kubernetes.default.svc
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction --allow-privileged=true
    --max-requests-inflight=800 --max-mutating-requests-inflight=400
    --profiling=false --event-ttl=1h
    --encryption-provider-config="$ENCRYPTION_CONFIG"
  )
  want=$({
    printf '%s\n' "${args[@]}"
    sha256sum <"$ENCRYPTION_CONFIG"
  } | sha256sum | cut -d' ' -f1)
  if is_running "$cell-apiserver" && [[ $(cat "$stamp" 2>/dev/null) != "$want" ]]; then
    log "restarting $cell-apiserver: its flags or its encryption config changed"
    stop_daemon "$cell-apiserver"
  fi
  if ! is_running "$cell-apiserver"; then
    # Secrets stored before this config are rewritten once it serves (reencrypt_secrets).
    [[ $(cat "$stamp" 2>/dev/null) == "$want" ]] || touch "$CELLS_DIR/$cell/reencrypt-secrets"
    echo "$want" >"$stamp"
  fi
  start_component "$cell-apiserver" "$K8S_BIN/kube-apiserver" "${args[@]}"
}
# reencrypt_secrets CELL: after a new encryption config, read every Secret and write it back, so
# the API server stores it with the first provider (Kubernetes' documented way). Kept for the next
# `up` when it fails.
reencrypt_secrets() {
  local marker=$CELLS_DIR/$1/reencrypt-secrets
  [[ -e $marker ]] || return 0
  if kubectl_cell "$1" get secrets --all-namespaces -o json | kubectl_cell "$1" replace -f - >/dev/null; then
    rm -f "$marker"
  else
    log "$1: some Secrets were not rewritten encrypted; the next infra/cells.sh up tries again"
  fi
}
apiserver_ready() { curl -fsSk -m 3 "https://127.0.0.1:$(apiserver_port "$1")/readyz" >/dev/null; }

start_controller_manager() {
  local cell=$1 i=$2 dir=$CELLS_DIR/$1
  start_component "$cell-controller-mgr" "$K8S_BIN/kube-controller-manager" \
    --kubeconfig="$dir/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$dir/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$dir/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$(controller_manager_port "$i")" \
    --leader-elect=false --cluster-name="$cell" \
    --service-account-private-key-file="$dir/pki/sa.key" --root-ca-file="$dir/pki/ca.crt" \
    --use-service-account-credentials=true \
    --cluster-signing-cert-file="$dir/pki/ca.crt" --cluster-signing-key-file="$dir/pki/ca.key" \
    --kube-api-qps=100 --kube-api-burst=200 --profiling=false
}
controller_manager_healthy() { curl -fsSk -m 3 "https://127.0.0.1:$(controller_manager_port "$1")/healthz" >/dev/null; }

start_scheduler() {
  local cell=$1 i=$2 dir=$CELLS_DIR/$1
  start_component "$cell-scheduler" "$K8S_BIN/kube-scheduler" --config="$dir/scheduler.yaml" \
    --authentication-kubeconfig="$dir/scheduler.kubeconfig" --authorization-kubeconfig="$dir/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$(scheduler_port "$i")" --profiling=false
}
scheduler_healthy() { curl -fsSk -m 3 "https://127.0.0.1:$(scheduler_port "$1")/healthz" >/dev/null; }

start_kwok() {
  local cell=$1 i=$2
  if ! is_running "$cell-kwok"; then
    # A new kwok process has a new holder identity and would wait for the old one's node leases
    # to expire (40 s) before it manages those nodes and their pods again.
    # Every node lease of a KWOK cell is kwok's: delete them in one request.
    kubectl_cell "$cell" delete --raw /apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases >/dev/null
  fi
  start_component "$cell-kwok" "$KWOK_BIN/kwok" --kubeconfig="$CELLS_DIR/$cell/kwok.kubeconfig" \
    --config="$KWOK_BIN/stages.yaml" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --cidr="$(kwok_pod_cidr "$i")" --node-ip=127.0.0.1 --node-lease-duration-seconds=40 \
    --server-address="127.0.0.1:$(kwok_port "$i")"
}
kwok_healthy() { curl -fsS -m 3 "http://127.0.0.1:$(kwok_port "$1")/healthz" >/dev/null; }

# kwok_nodes_yaml CELL: the simulated nodes. kwok manages only nodes with its annotation.
kwok_nodes_yaml() {
  local cell=$1 n name
  echo "apiVersion: v1"
  echo "kind: List"
  echo "items:"
  for ((n = 0; n < KWOK_NODES; n++)); do
    name=$cell-node$n
    cat <<EOF
- apiVersion: v1
  kind: Node
  metadata:
    name: $name
    annotations:
      kwok.x-k8s.io/node: fake
      node.alpha.kubernetes.io/ttl: "0"
    labels:
      type: kwok
      berth.dev/cell: $cell
      kubernetes.io/arch: amd64
      kubernetes.io/hostname: $name
      kubernetes.io/os: linux
  status:
    allocatable: { cpu: "$KWOK_NODE_CPU", memory: "$KWOK_NODE_MEMORY", pods: "$KWOK_NODE_PODS" }
    capacity: { cpu: "$KWOK_NODE_CPU", memory: "$KWOK_NODE_MEMORY", pods: "$KWOK_NODE_PODS" }
EOF
  done
}

apply_kwok_nodes() {
  local cell=$1 extra
  kwok_nodes_yaml "$cell" | kubectl_cell "$cell" apply --server-side --field-manager=berth-cells -f - >/dev/null
  # Sizes changed through env reach existing nodes through their status.
  kwok_nodes_yaml "$cell" | kubectl_cell "$cell" apply --server-side --field-manager=berth-cells \
    --subresource=status --force-conflicts -f - >/dev/null
  # Fewer nodes than last time: remove the rest.
  extra=$(kubectl_cell "$cell" get nodes -l type=kwok -o name | sed 's|node/||' |
    awk -v c="$cell-node" -v n="$KWOK_NODES" 'index($0, c) == 1 && substr($0, length(c) + 1) + 0 >= n')
  local names
  mapfile -t names <<<"$extra"
  [[ -z $extra ]] || kubectl_cell "$cell" delete node --wait=false "${names[@]}" >/dev/null
}

ready_nodes() { # ready_nodes CELL SELECTOR: how many nodes are Ready
  kubectl_cell "$1" get nodes -l "$2" \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null | grep -c '^True$'
}
kwok_nodes_ready() { [[ $(ready_nodes "$1" type=kwok) -ge $KWOK_NODES ]]; }
kubelet_node_ready() { [[ $(ready_nodes "$(cell_name "$1")" "kubernetes.io/hostname=$(node_name "$1")") -ge 1 ]]; }
kubelet_healthy() { curl -fsS -m 3 "http://127.0.0.1:$(kubelet_healthz_port "$1")/healthz" >/dev/null; }
containerd_healthy() {
  local sock
  sock=$(containerd_sock "$1")
  [[ -S $sock ]] && ctr --connect-timeout 2s --address "$sock" version >/dev/null 2>&1
}

start_containerd() {
  local i=$1 cell sock
  cell=$(cell_name "$i")
  sock=$(containerd_sock "$i")
  start_component "$cell-containerd" containerd --config "$CELLS_DIR/$cell/containerd.toml"
  wait_until "$cell-containerd" 60 containerd_healthy "$i"
  # The sandbox image comes from this machine, not from a pull: import it once.
  if [[ -z $(ctr --address "$sock" -n k8s.io images ls -q "name==$PAUSE_IMAGE") ]]; then
    local tar
    tar=$("$BERTH_ROOT/infra/images.sh" pause-tar)
    ctr --address "$sock" -n k8s.io images import --no-unpack "$tar" >/dev/null
    log "imported $PAUSE_IMAGE into $cell's containerd"
  fi
}

start_kubelet() {
  local i=$1 cell data
  cell=$(cell_name "$i")
  data=$BERTH_DATA_DIR/$cell
  start_component "$cell-kubelet" "$K8S_BIN/kubelet" --config="$CELLS_DIR/$cell/kubelet.yaml" \
    --kubeconfig="$CELLS_DIR/$cell/kubelet.kubeconfig" --root-dir="$data/kubelet" \
    --cert-dir="$data/kubelet/pki" --hostname-override="$(node_name "$i")" --node-ip="$(node_ip "$i")" \
    --node-labels="berth.dev/cell=$cell"
}

write_env() {
  local cells i kubeconfigs="" cell var
  cells=$(configured_cells | paste -sd, -)
  mkdir -p "$BERTH_LOCAL/env.d"
  {
    echo "# Written by infra/cells.sh up."
    echo "export BERTH_CELLS=$cells"
    echo "export BERTH_CELLS_DIR=$CELLS_DIR"
    echo "# <dir>/<cell>.kubeconfig for Berth's services (packages/shared cellsEnv)"
    echo "export KUBECONFIG_DIR=$CELLS_DIR"
    echo "export BERTH_K8S_VERSION=$K8S_VERSION"
    echo "export BERTH_SAMPLE_IMAGE=$REGISTRY/berth/sample-app:v1"
    for cell in $(configured_cells); do
      var=BERTH_KUBECONFIG_$(echo "${cell//-/_}" | tr '[:lower:]' '[:upper:]')
      echo "export $var=$CELLS_DIR/$cell.kubeconfig"
      kubeconfigs+="${kubeconfigs:+:}$CELLS_DIR/$cell.kubeconfig"
    done
    echo "# kubectl sees every cell; pick one with --context cell-b. The first is the default."
    echo "export KUBECONFIG=$kubeconfigs"
  } >"$BERTH_LOCAL/env.d/20-cells.sh.tmp"
  mv "$BERTH_LOCAL/env.d/20-cells.sh.tmp" "$BERTH_LOCAL/env.d/20-cells.sh"
  ln -sfn "$K8S_BIN/kubectl" "$BERTH_BIN_DIR/kubectl"
}

# ---------------------------------------------------------------- up / down / status

# stop_node I: real cell I's kubelet, its pods (through CRI, so CNI frees their addresses and
# veths), containerd, the shims it leaves behind, the mounts under its directories, its bridge
# and its cgroups.
stop_node() {
  local i=$1 cell sock
  cell=$(cell_name "$i")
  sock=$(containerd_sock "$i")
  stop_daemon "$cell-kubelet" 30
  if containerd_healthy "$i" && [[ -x $K8S_BIN/berth-cri ]]; then
    "$K8S_BIN/berth-cri" -endpoint "unix://$sock" remove-pods >>"$(logfile "$cell-containerd")" 2>&1 ||
      log "some of $cell's pods were not removed through CRI; see $(logfile "$cell-containerd")"
  fi
  stop_daemon "$cell-containerd" 30
  # Shims outlive containerd; any left belong to this containerd (its socket is in their args).
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $sock( |$)" || true); do
    as_root kill -KILL "$pid" 2>/dev/null || true
  done
  unmount_under "$BERTH_DATA_DIR/$cell/kubelet" "$BERTH_RUN_DIR/$cell-containerd" "$BERTH_DATA_DIR/$cell/containerd"
  release_node_host "$i"
}

# stop_cell CELL: every process of CELL. Each takes a second or two to shut down gracefully, and
# none needs another to stop, so they stop side by side. kwok too for a real cell: cell-b was a
# KWOK cell once.
stop_cell() {
  local cell=$1 i name
  i=$(cell_index "$cell")
  if is_real "$i"; then stop_node "$i" & fi
  for name in kwok scheduler controller-mgr apiserver; do stop_daemon "$cell-$name" & done
  wait
}

# finish_cell CELL I: wait for CELL's controller manager and scheduler, then its nodes.
finish_cell() {
  local cell=$1 i=$2
  reencrypt_secrets "$cell"
  wait_until "$cell-controller-mgr" 60 controller_manager_healthy "$i"
  wait_until "$cell-scheduler" 60 scheduler_healthy "$i"
  if is_real "$i"; then
    wait_until "$cell-kubelet" 120 kubelet_healthy "$i"
    wait_until "$cell-kubelet" 120 kubelet_node_ready "$i"
  else
    wait_until "$cell-kwok" 60 kwok_healthy "$i"
    apply_kwok_nodes "$cell"
    wait_until "$cell-kwok" 120 kwok_nodes_ready "$cell"
  fi
}

# cmd_up [CELL...]: bring up every configured cell, or only the named ones (then cells beyond
# BERTH_KWOK_CELLS are left alone and the env file is not rewritten).
cmd_up() {
  local t0=$SECONDS cell i cells real=()
  cells=$(if (($#)); then printf '%s\n' "$@"; else configured_cells; fi)
  for cell in $cells; do
    if ! [[ $cell =~ ^cell-[a-z]$ ]] || (($(cell_index "$cell") > LAST_CELL)); then
      die "unknown cell $cell (cell-a … $(cell_name "$LAST_CELL"))"
    fi
  done
  ensure_packages containerd runc containernetworking-plugins iptables iproute2 openssl curl gcc libc6-dev
  if ! "$BERTH_ROOT/infra/k8s/build.sh" --status >/dev/null; then
    "$BERTH_ROOT/infra/k8s/build.sh" --background
    "$BERTH_ROOT/infra/k8s/build.sh" --wait
  fi
  # Cells beyond BERTH_KWOK_CELLS (left by a benchmark) stop.
  (($#)) || for cell in $(known_cells); do
    if (($(cell_index "$cell") >= REAL_CELLS + KWOK_CELLS)); then
      log "stopping $cell (BERTH_KWOK_CELLS=$KWOK_CELLS)"
      stop_cell "$cell" &
    fi
  done
  wait

  mkdir -p "$CELLS_DIR"
  chmod 700 "$CELLS_DIR" # keys and kubeconfigs
  for cell in $cells; do
    i=$(cell_index "$cell")
    make_cell_pki "$cell" "$i"
    if is_real "$i"; then real+=("$i"); fi
  done
  if ((${#real[@]})); then
    prepare_host
    for i in "${real[@]}"; do
      write_cni_config "$i"
      write_containerd_config "$i"
      write_kubelet_config "$i"
      prepare_node_host "$i"
    done
  fi

  log "starting etcd-cells, then the API servers of ${cells//$'\n'/ }"
  start_etcd
  write_encryption_config
  for cell in $cells; do start_apiserver "$cell" "$(cell_index "$cell")"; done
  # Side by side. Waited for by pid: a bare `wait` would also wait for the API servers and etcd,
  # which this shell started and which never exit.
  local starting=() pid
  for i in "${real[@]}"; do
    start_containerd "$i" &
    starting+=($!)
  done
  for pid in "${starting[@]}"; do wait "$pid" || true; done
  for i in "${real[@]}"; do containerd_healthy "$i" || die "$(cell_name "$i")'s containerd did not start"; done
  log "waiting for the API servers; then controller managers, schedulers, kubelets and kwok"
  for cell in $cells; do
    i=$(cell_index "$cell")
    wait_until "$cell-apiserver" 120 apiserver_ready "$i"
    apply_berth_rbac "$cell" || die "could not apply infra/k8s/berth-rbac.yaml to $cell"
    start_controller_manager "$cell" "$i"
    start_scheduler "$cell" "$i"
    if is_real "$i"; then
      # Simulated nodes of the cell's KWOK days would take its pods: they go.
      if ! is_running "$cell-kubelet"; then
        kubectl_cell "$cell" delete nodes -l type=kwok --wait=false >/dev/null 2>&1 || true
      fi
      start_kubelet "$i"
    else
      start_kwok "$cell" "$i"
    fi
  done
  # Each cell's remaining waits (and its KWOK nodes) side by side.
  local pids=() failed=0
  for cell in $cells; do
    finish_cell "$cell" "$(cell_index "$cell")" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  ((failed == 0)) || die "some cells did not come up; see the errors above"
  # The sample app's images (and the pause image) in the region's registry, when it is up (an
  # anonymous one answers 200, a token-auth one 401 with its challenge).
  if [[ $(curl -sS -m 5 -o /dev/null -w '%{http_code}' "http://$REGISTRY/v2/" 2>/dev/null) =~ ^(200|401)$ ]] &&
    [[ -S ${DOCKER_HOST#unix://} ]]; then
    "$BERTH_ROOT/infra/images.sh" || log "infra/images.sh failed; the cells run, the sample image may be missing"
  else
    log "the region's registry or Docker is not up: sample images not pushed (run infra/images.sh later)"
  fi
  (($#)) || write_env
  log "cells ready in $((SECONDS - t0))s: ${cells//$'\n'/ } (kubeconfigs in $CELLS_DIR)"
}

cmd_down() {
  local cell
  local t0=$SECONDS
  for cell in $(known_cells); do stop_cell "$cell" & done
  wait
  release_host
  stop_daemon etcd-cells
  log "cells stopped in $((SECONDS - t0))s"
}

cmd_status() {
  local cell i
  status_line etcd-cells 127.0.0.1:2381 etcd_healthy
  for cell in $(known_cells); do
    i=$(cell_index "$cell")
    status_line "$cell-apiserver" "https://127.0.0.1:$(apiserver_port "$i")" apiserver_ready "$i"
    status_line "$cell-controller-mgr" "https://127.0.0.1:$(controller_manager_port "$i")" controller_manager_healthy "$i"
    status_line "$cell-scheduler" "https://127.0.0.1:$(scheduler_port "$i")" scheduler_healthy "$i"
    if is_real "$i"; then
      status_line "$cell-containerd" ".local/run/$cell-containerd.sock" containerd_healthy "$i"
      status_line "$cell-kubelet" "https://$(node_ip "$i"):10250 ($(node_name "$i"))" kubelet_node_ready "$i"
    else
      status_line "$cell-kwok" "127.0.0.1:$(kwok_port "$i"), pods $(kwok_pod_cidr "$i")" kwok_healthy "$i"
    fi
  done
}

# main, then exit on the same line: bash reads a script as it runs it, and this one may be
# edited (a git pull) while it runs; nothing after this line is read late.
main() {
  case ${1:-} in
    up) shift && cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) die "usage: $0 up|down|status" ;;
  esac
}
main "$@"; exit
