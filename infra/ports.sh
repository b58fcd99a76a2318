#!/usr/bin/env bash
# The TCP ports the local region listens on (docs/local-region.md, "Addresses"), and a check that
# none is held by a process that is not ours. `make up` runs it before starting anything: another
# checkout's region on the same ports otherwise fails much later and obscurely (our clients reach
# the other region's servers and fail with "certificate signed by unknown authority").
#
#   infra/ports.sh check [--no-services]   one line per port held by someone else; exit 1 if any
#   infra/ports.sh list [--no-services]    "PORT COMPONENT" per port
# Source it for region_ports and check_ports (test/infra/check_ports.sh).
# shellcheck source=infra/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# region_ports [--no-services]: "PORT COMPONENT" for every port a component of `make up` listens on.
# The cells' ports follow infra/cells.sh (cell i, cell-a is 0; cell-a and cell-b are real cells
# with a kubelet each, on its node IP:10250 and healthz 127.0.0.1:(10248+100i); then
# BERTH_KWOK_CELLS KWOK cells) and the services' follow infra/services.sh.
region_ports() {
  local with_services=1 real_cells=2 kwok_cells=${BERTH_KWOK_CELLS:-0} i cell
  [[ ${1:-} == --no-services ]] && with_services=0
  printf '%s\n' '2379 etcd (region)' '2380 etcd (region, peer)' '2381 etcd-cells' '2382 etcd-cells (peer)' \
    '4222 nats' '8222 nats (monitor)' '6379 redis' '5000 registry' '8080 nginx'
  for ((i = 0; i < real_cells + kwok_cells; i++)); do
    cell=cell-$(printf '%b' "\\x$(printf %x $((97 + i)))")
    echo "$((6443 + i)) $cell-apiserver"
    echo "$((10257 + 100 * i)) $cell-controller-mgr"
    echo "$((10259 + 100 * i)) $cell-scheduler"
    if ((i < real_cells)); then
      echo "10250 $cell-kubelet"
      echo "$((10248 + 100 * i)) $cell-kubelet (healthz)"
    else
      echo "$((10247 + 100 * i)) $cell-kwok"
    fi
  done
  if ((with_services)); then
    printf '%s\n' '7070 berth-api' '7071 berth-scheduler' '7072 berth-builder-agent' '7073 berth-lb-agent' \
      '7074 berth-discovery' '7075 berth-cni-ipam'
  fi
}

# our_sessions: the pids of every live process our pid files name. start_daemon starts each in its
# own session (setsid), so a process of ours (nginx's workers, dockerd's children too) has one of
# these as its session id.
our_sessions() {
  local f name
  for f in "$BERTH_RUN_DIR"/*.pid; do
    [[ -f $f ]] || continue
    name=${f##*/}
    own_pid "${name%.pid}" || true
  done
}

# port_holders PORT: the pids listening on PORT (any address), one a line. A listener whose pid ss
# cannot see (another user's, when we are not root) is printed as "?".
port_holders() {
  local line pids
  while read -r line; do
    [[ -n $line ]] || continue
    pids=$(grep -o 'pid=[0-9]*' <<<"$line" | cut -d= -f2 | sort -u)
    if [[ -n $pids ]]; then echo "$pids"; else echo '?'; fi
  done < <(ss -ltnpH "sport = :$1" 2>/dev/null)
}

# checkout_of PID: the Berth checkout PID was started from, if any: BERTH_ROOT in its environment
# (lib.sh exports it to everything our scripts start), else a path of a .local/ in its working
# directory or command line (redis and nginx overwrite their environment with their titles).
checkout_of() {
  local pid=$1 root
  root=$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | sed -n 's/^BERTH_ROOT=//p' | head -1)
  [[ -n $root ]] || root=$({
    readlink "/proc/$pid/cwd" 2>/dev/null
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null
  } | grep -o '/[^ ]*/\.local' | head -1 | sed 's|/\.local$||')
  [[ -n $root && -f $root/infra/up.sh ]] && echo "$root"
  return 0
}

# holder_advice PID: what to do about PID holding a port.
holder_advice() {
  local pid=$1 root
  root=$(checkout_of "$pid")
  if [[ -n $root && $root != "$BERTH_ROOT" ]]; then
    echo "another Berth checkout's region: run \`make down\` in $root"
  elif [[ -n $root ]]; then
    echo "a process of this checkout that lost its pid file: stop it (kill $pid), then make up"
  else
    echo "stop it (kill $pid) or free the port, then make up"
  fi
}

# check_ports [--no-services]: print one line for each region port a process not ours holds
# (component, pid, command line, what to do); return 1 when there is any. Ports held by our own
# running region are fine: make up is idempotent.
# With BERTH_PORTS set ("PORT COMPONENT" lines), checks those instead (tests).
check_ports() {
  local ports sessions port component pid sid cmd foreign bad=0
  ports=${BERTH_PORTS:-$(region_ports "$@")}
  command -v ss >/dev/null || die "ss (Debian package iproute2) is needed to check the region's ports"
  sessions=" $(our_sessions | tr '\n' ' ') "
  while read -r port component; do
    [[ -n $port ]] || continue
    # The lowest foreign pid is named (nginx's master rather than its worker).
    foreign=
    while read -r pid; do
      [[ -n $pid ]] || continue
      if [[ $pid == '?' ]]; then
        foreign='?'
        break
      fi
      sid=$(ps -o sid= -p "$pid" 2>/dev/null | tr -d ' ')
      [[ $sessions == *" $pid "* || (-n $sid && $sessions == *" $sid "*) ]] && continue
      foreign=$pid
      break
    done < <(port_holders "$port" | sort -n)
    [[ -n $foreign ]] || continue
    bad=1
    if [[ $foreign == '?' ]]; then
      printf 'port %s (%s): held by a process of another user; run make up as root to see which\n' "$port" "$component"
      continue
    fi
    cmd=$(tr '\0\n' '  ' <"/proc/$foreign/cmdline" 2>/dev/null | sed 's/ *$//' | cut -c1-160)
    printf 'port %s (%s): held by pid %s (%s): %s\n' "$port" "$component" "$foreign" "$cmd" "$(holder_advice "$foreign")"
  done <<<"$ports"
  return "$bad"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  case ${1:-} in
    check) shift && check_ports "$@" ;;
    list) shift && region_ports "$@" ;;
    *) die "usage: infra/ports.sh check|list [--no-services]" ;;
  esac
fi
