# shellcheck shell=bash
# Shared helpers for Berth's local-region scripts. Source it; do not run it.
#
# Layout (see docs/local-region.md):
#   $BERTH_ROOT/.local/log/<name>.log    one log per process we start
#   $BERTH_ROOT/.local/run/<name>.pid    one pid file per process we start
#   $BERTH_ROOT/.local/data/<name>/      persistent data (kept by `make down`)
#   $BERTH_ROOT/.local/bin/              CLIs (berth, cnictl, berth-ipam)
#   $BERTH_ROOT/.local/env               sourceable shell env written by `make up`
#   $BERTH_CACHE/                        build caches outside the repo (node, pnpm, k8s, kwok)

set -euo pipefail

BERTH_ROOT=${BERTH_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
BERTH_LOCAL=${BERTH_LOCAL:-$BERTH_ROOT/.local}
BERTH_CACHE=${BERTH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/berth}
BERTH_LOG_DIR=$BERTH_LOCAL/log
BERTH_RUN_DIR=$BERTH_LOCAL/run
BERTH_DATA_DIR=$BERTH_LOCAL/data
BERTH_BIN_DIR=$BERTH_LOCAL/bin
export BERTH_ROOT BERTH_LOCAL BERTH_CACHE

mkdir -p "$BERTH_LOG_DIR" "$BERTH_RUN_DIR" "$BERTH_DATA_DIR" "$BERTH_BIN_DIR"
# Logs, pid files and sockets (docker.sock is root), and the region's data are the owner's only.
chmod 700 "$BERTH_LOG_DIR" "$BERTH_RUN_DIR" "$BERTH_DATA_DIR"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# as_root CMD...: run as root (the region needs root for dockerd, netns, containerd, kubelet).
as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo -n "$@"; fi
}

# ensure_packages PKG...: apt-get install the Debian packages that are not installed yet.
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  log "installing Debian packages: ${missing[*]}"
  local lock=$BERTH_CACHE/apt.lock
  mkdir -p "$BERTH_CACHE"
  (
    flock 9
    if [[ ! -f /var/lib/apt/lists/lock ]] || ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null ||
      [[ -n $(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages' -mmin +1440 -print -quit) ]]; then
      as_root apt-get update -qq >"$BERTH_LOG_DIR/apt.log" 2>&1 || die "apt-get update failed; see $BERTH_LOG_DIR/apt.log"
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
      >>"$BERTH_LOG_DIR/apt.log" 2>&1 || die "apt-get install ${missing[*]} failed; see $BERTH_LOG_DIR/apt.log"
  ) 9>"$lock"
}

pidfile() { echo "$BERTH_RUN_DIR/$1.pid"; }
logfile() { echo "$BERTH_LOG_DIR/$1.log"; }

# A pid file can outlive its process (a reboot, a crash) and its pid can then belong to an unrelated
# process, which must be neither taken for ours nor killed. start_daemon records the process's
# start time (in clock ticks since boot, so immune to clock changes) beside the pid file, as
# <name>.pid.start = "<pid> <ticks>"; a pid file without a matching record (written by another
# script) is trusted as before.
proc_start_ticks() {
  local stat fields
  read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
  read -ra fields <<<"${stat##*) }"
  echo "${fields[19]}"
}

# own_pid NAME: print the pid NAME's pid file names when that process exists (a zombie too) and is
# the one the file was written for.
own_pid() {
  local f pid rec
  f=$(pidfile "$1")
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ && -e /proc/$pid ]] || return 1
  if [[ -f $f.start ]]; then
    rec=$(<"$f.start")
    if [[ ${rec%% *} == "$pid" && ${rec#* } != "$(proc_start_ticks "$pid")" ]]; then return 1; fi
  fi
  echo "$pid"
}

# live_pid NAME: own_pid, except that a zombie (exited but not yet reaped) counts as stopped.
live_pid() {
  local pid stat
  pid=$(own_pid "$1") || return 1
  read -r stat 2>/dev/null <"/proc/$pid/stat" || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]] || return 1
  echo "$pid"
}

# is_running NAME: true when NAME's pid file names a live process of ours (see live_pid).
is_running() { live_pid "$1" >/dev/null; }

pid_of() { if [[ -f $(pidfile "$1") ]]; then cat "$(pidfile "$1")" || true; fi; }

# loggable_command CMD...: CMD as one line for a log, without the values of environment
# assignments (`env NAME=value …` → `NAME=…`) and of flags named like a secret
# (`--password=x`, `--token x`): a password or token never reaches a log file.
loggable_command() {
  local words=() arg flag eq hide=0
  for arg in "$@"; do
    if ((hide)); then
      words+=("…")
      hide=0
    elif [[ $arg =~ ^([A-Za-z_][A-Za-z0-9_]*)= ]]; then
      words+=("${BASH_REMATCH[1]}=…")
    elif [[ $arg =~ ^(--?[A-Za-z0-9-]*(pass|token|secret|credential)[A-Za-z0-9-]*)(=?) ]] &&
      flag=${BASH_REMATCH[1]} eq=${BASH_REMATCH[3]} && ! [[ $flag =~ -(file|path|dir)$ ]]; then
      if [[ -n $eq ]]; then words+=("$flag=…"); else
        words+=("$arg")
        hide=1
      fi
    else
      words+=("$arg")
    fi
  done
  printf '%s\n' "${words[*]}"
}

# start_daemon NAME CMD...: start CMD in its own session, output to NAME's log (mode 600), pid to
# NAME's pid file; the log names the command's environment variables, never their values.
# Does nothing when NAME is already running (make up is idempotent).
# Returns 0 when it started something and 1 when it was already running.
start_daemon() {
  local name=$1
  shift
  if is_running "$name"; then return 1; fi
  local lf
  lf=$(logfile "$name")
  (umask 077 && touch "$lf") && chmod 600 "$lf"
  printf '\n=== %s start %s: %s\n' "$name" "$(date -Is)" "$(loggable_command "$@")" >>"$lf"
  setsid "$@" >>"$lf" 2>&1 </dev/null &
  local pid=$!
  echo "$pid $(proc_start_ticks "$pid")" >"$(pidfile "$name").start"
  echo "$pid" >"$(pidfile "$name")"
  return 0
}

# stop_daemon NAME [TIMEOUT_S]: SIGTERM the process group, wait, then SIGKILL; remove the pid file.
# A pid file naming no process of ours (see own_pid) is only removed.
stop_daemon() {
  local name=$1 timeout=${2:-20} pid i
  if ! pid=$(own_pid "$name"); then
    rm -f "$(pidfile "$name")" "$(pidfile "$name").start"
    return 0
  fi
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < timeout * 10; i++)); do
    is_running "$name" || break
    sleep 0.1
  done
  if is_running "$name"; then
    log "$name did not stop in ${timeout}s; killing it"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$(pidfile "$name")" "$(pidfile "$name").start"
}

# wait_until NAME TIMEOUT_S CMD...: poll CMD every 0.2s until it succeeds. On timeout, or when
# NAME's process has died, fail with an error naming NAME and its log.
wait_until() {
  local name=$1 timeout=$2
  shift 2
  local deadline=$((SECONDS + timeout))
  while ! "$@" >/dev/null 2>&1; do
    if [[ -f $(pidfile "$name") ]] && ! is_running "$name"; then
      tail -n 20 "$(logfile "$name")" >&2 || true
      die "$name exited while starting; its log is $(logfile "$name")"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 20 "$(logfile "$name")" >&2 || true
      die "$name was not healthy after ${timeout}s; its log is $(logfile "$name")"
    fi
    sleep 0.2
  done
}

# auth_curl TOKEN CURL-ARGS...: curl with an `Authorization: Bearer TOKEN` header read from a
# file descriptor (curl's `-H @file`), so the token is in no process's argv (ps, /proc/*/cmdline).
auth_curl() {
  local token=$1
  shift
  curl -H @<(printf 'Authorization: Bearer %s\n' "$token") "$@"
}

# http_ok URL: true when URL answers 2xx.
http_ok() { curl -fsS -m 2 -o /dev/null "$1"; }

# status_line NAME ADDRESS HEALTH_CMD...: one row of `make status`.
status_line() {
  local name=$1 addr=$2 pid health
  shift 2
  pid=$(pid_of "$name")
  if is_running "$name"; then
    if "$@" >/dev/null 2>&1; then health=healthy; else health=unhealthy; fi
  else
    pid=-
    health=stopped
  fi
  printf '%-22s %-8s %-38s %s\n' "$name" "${pid:--}" "$addr" "$health"
}
