#!/usr/bin/env bash
# The region's servers with one identity per service (docs/security.md):
#   infra/region-auth.sh secrets          make the passwords that are missing: .local/secrets/
#                                         {etcd,nats,redis}-<identity>.password, mode 0600
#   infra/region-auth.sh nats-conf FILE   write NATS's `authorization` block (included by nats.conf)
#   infra/region-auth.sh redis-acl FILE   write Redis's ACL file (passwords as SHA-256 only)
#   infra/region-auth.sh etcd ENDPOINT    users and roles in etcd, then `auth enable`; idempotent
#                                         (a running etcd without auth is upgraded in place)
#   infra/region-auth.sh env IDENTITY     the service's credential variables (…_FILE: paths only)
# No password is ever on a command line or in a log: etcdctl reads them from stdin or from its
# environment (ETCDCTL_USER), the servers from files only we can read.
# BERTH_SECRETS_DIR, ETCD_PREFIX, EVENT_SUBJECT_ROOT, BERTH_REGION, BERTH_LB_GROUP and
# BERTH_IPAM_CELLS change what the identities are bound to (tests use them for a scratch region).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SECRETS=${BERTH_SECRETS_DIR:-$BERTH_LOCAL/secrets}
PREFIX=${ETCD_PREFIX:-/berth}
ROOT=${EVENT_SUBJECT_ROOT:-berth}
REGION=${BERTH_REGION:-local}
LB_GROUP=${BERTH_LB_GROUP:-default}
read -ra IPAM_CELLS <<<"${BERTH_IPAM_CELLS:-cell-a cell-b}"

# Who talks to which server. `tests` is what make test's suites use: every key, subject and Redis
# key (the tests make their own prefixes), and the operator's identity for etcdctl and redis-cli.
ETCD_IDS=(root tests api scheduler discovery lb-agent builder-agent cni-ipam "${IPAM_CELLS[@]/#/ipam-}")
NATS_IDS=(tests api scheduler lb-agent builder-agent cni-ipam)
REDIS_IDS=(tests api builder-agent)

password_file() { echo "$SECRETS/$1-$2.password"; } # SERVER IDENTITY

cmd_secrets() {
  mkdir -p "$SECRETS"
  chmod 700 "$SECRETS"
  local server id f
  for server in etcd nats redis; do
    local -n ids="${server^^}_IDS"
    for id in "${ids[@]}"; do
      f=$(password_file "$server" "$id")
      [[ -s $f ]] && continue
      (
        umask 077
        # Hex: safe in NATS's config and in an ACL line without quoting.
        od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"$f.tmp"
      )
      mv "$f.tmp" "$f"
    done
  done
}

need_secret() { [[ -s $1 ]] || die "missing $1: run infra/region-auth.sh secrets"; }

# ---- etcd --------------------------------------------------------------------------------------

# etcd_roles: "ROLE PERMISSION KEY-PREFIX" lines; ROLE is the identity's own name. Permissions
# are prefixes under the installation's prefix; a role gets only what its service's code reads
# and writes (docs/security.md lists why each one is there).
etcd_roles() {
  local p=$PREFIX cell
  echo "tests readwrite /"
  echo "api readwrite $p/"
  # Reads the desired state and cells; writes placements, status, availability; events go
  # through the outbox; leads through its election key.
  echo "scheduler read $p/apps/"
  echo "scheduler read $p/regions/"
  echo "scheduler readwrite $p/placements/"
  echo "scheduler readwrite $p/status/"
  echo "scheduler readwrite $p/availability/"
  echo "scheduler readwrite $p/outbox/"
  echo "scheduler readwrite $p/elections/scheduler"
  # Reads domain claims, cells and the load-balancer tree; writes only upstreams, per group.
  echo "discovery read $p/domains/"
  echo "discovery read $p/regions/"
  echo "discovery read $p/slb/"
  echo "discovery readwrite $p/elections/discovery"
  local group
  for group in $(lb_groups); do echo "discovery readwrite $p/slb/$group/upstreams/"; done
  # Its own group only: reads it, writes its agents' status; the app record names a failed
  # domain's owner in the event it emits.
  echo "lb-agent read $p/slb/$LB_GROUP/"
  echo "lb-agent readwrite $p/slb/$LB_GROUP/agents/"
  echo "lb-agent read $p/apps/"
  echo "lb-agent readwrite $p/outbox/"
  # Its registration, the runs it progresses, the build configs it reads.
  echo "builder-agent readwrite $p/builders/$REGION/"
  echo "builder-agent readwrite $p/builds/"
  echo "builder-agent read $p/apps/"
  echo "builder-agent readwrite $p/outbox/"
  # The IPAM service (leak checks, cnictl) over every cell; the plugin on a cell's nodes: that
  # cell's IPAM keys and nothing else (not users/, not tokens/).
  echo "cni-ipam readwrite $p/ipam/"
  echo "cni-ipam readwrite $p/outbox/"
  for cell in "${IPAM_CELLS[@]}"; do echo "ipam-$cell readwrite $p/ipam/$cell/"; done
}

# lb_groups: the groups discovery writes upstreams for: the local agent's, each group in etcd,
# and BERTH_LB_GROUPS. A group added later needs `make up` again (docs/security.md).
lb_groups() {
  {
    echo "$LB_GROUP"
    for g in ${BERTH_LB_GROUPS:-}; do echo "$g"; done
    etcdctl_as root get --prefix --keys-only "$PREFIX/lb-groups/" 2>/dev/null | sed -n "s|^$PREFIX/lb-groups/\([^/]*\)$|\1|p"
  } | sort -u
}

ETCD_ENDPOINT=""
AUTH_ON=0
# etcdctl_as IDENTITY ARGS…: as that identity once auth is on (password via the environment).
etcdctl_as() {
  local id=$1
  shift
  if ((AUTH_ON)); then
    ETCDCTL_USER="$id:$(<"$(password_file etcd "$id")")" ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINT" "$@"
  else
    ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINT" "$@"
  fi
}

cmd_etcd() {
  ETCD_ENDPOINT=${1:?usage: region-auth.sh etcd ENDPOINT}
  local id f
  for id in "${ETCD_IDS[@]}"; do need_secret "$(password_file etcd "$id")"; done
  # Auth is on when an anonymous request is refused.
  if ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINT" user list >/dev/null 2>&1; then AUTH_ON=0; else AUTH_ON=1; fi
  if ((AUTH_ON)) && ! etcdctl_as root user get root >/dev/null 2>&1; then
    die "etcd at $ETCD_ENDPOINT has auth on but refuses root's password in $(password_file etcd root)"
  fi
  local spec stamp=$SECRETS/.etcd-auth.sha
  spec=$(
    etcd_roles
    for id in "${ETCD_IDS[@]}"; do sha256sum "$(password_file etcd "$id")"; done
  )
  if ((AUTH_ON)) && [[ -f $stamp && $(<"$stamp") == "$(sha256sum <<<"$spec" | cut -c1-64)" ]]; then return 0; fi

  local users roles
  users=$(etcdctl_as root user list 2>/dev/null || true)
  roles=$(etcdctl_as root role list 2>/dev/null || true)
  for id in "${ETCD_IDS[@]}"; do
    f=$(password_file etcd "$id")
    # A password is set when the user is new or its file changed (a secrets file made again).
    local sum seen=$SECRETS/.etcd-$id.sha
    sum=$(sha256sum <"$f" | cut -c1-64)
    if ! grep -qx "$id" <<<"$users"; then
      etcdctl_as root user add "$id" --interactive=false <"$f" >/dev/null
    elif [[ ! -f $seen || $(<"$seen") != "$sum" ]]; then
      etcdctl_as root user passwd "$id" --interactive=false <"$f" >/dev/null
    fi
    echo "$sum" >"$seen"
    # Each identity has a role of its own name (root's is etcd's root role).
    grep -qx "$id" <<<"$roles" || etcdctl_as root role add "$id" >/dev/null
    etcdctl_as root user grant-role "$id" "$id" >/dev/null 2>&1 || true
  done
  local role perm key granted wanted
  wanted=$(etcd_roles)
  while read -r role perm key; do
    etcdctl_as root role grant-permission "$role" "$perm" "$key" --prefix=true >/dev/null
  done <<<"$wanted"
  # A grant the roles no longer list (a group that changed, a narrowed role) is revoked.
  for id in "${ETCD_IDS[@]}"; do
    [[ $id == root ]] && continue
    granted=$(etcdctl_as root role get "$id" | sed -n 's/.*(prefix \(.*\))$/\1/p' | sort -u)
    while read -r key; do
      [[ -n $key ]] || continue
      awk -v r="$id" -v k="$key" '$1 == r && $3 == k { found = 1 } END { exit !found }' <<<"$wanted" && continue
      etcdctl_as root role revoke-permission "$id" "$key" --prefix=true >/dev/null
      log "etcd: revoked $id's grant on $key"
    done <<<"$granted"
  done
  if ((!AUTH_ON)); then
    etcdctl_as root auth enable >/dev/null
    AUTH_ON=1
    log "etcd: authentication enabled (one role per service)"
  fi
  etcdctl_as root user get root >/dev/null || die "etcd refuses root after enabling auth"
  sha256sum <<<"$spec" | cut -c1-64 >"$stamp"
}

# ---- NATS --------------------------------------------------------------------------------------

# nats_permissions IDENTITY: its publish/subscribe allow lists. Every service may use JetStream's
# API but not delete or purge a stream; replies come back on _INBOX.
nats_permissions() {
  # shellcheck disable=SC2016 # NATS's subjects, not shell expansions
  local r=$ROOT js='"$JS.API.>", "$JS.ACK.>", "$JS.FC.>"' deny='"$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.PURGE.>"'
  case $1 in
    tests) echo 'publish = ">", subscribe = ">"' ;;
    # Events, build logs; cancels a run and asks agents to clear a cache.
    api) echo "publish = { allow: [\"$r.events.>\", \"$r.agents.>\", $js, \"_INBOX.>\"], deny: [$deny] }, subscribe = [\"_INBOX.>\"]" ;;
    scheduler | cni-ipam | lb-agent) echo "publish = { allow: [\"$r.events.>\", $js], deny: [$deny] }, subscribe = [\"_INBOX.>\"]" ;;
    # Events and its build logs; hears cancels and cache-clear requests, answers them.
    builder-agent) echo "publish = { allow: [\"$r.events.>\", \"$r.builds.*.log\", $js, \"_INBOX.>\"], deny: [$deny] }, subscribe = [\"$r.agents.*.cancel\", \"$r.agents.clear-cache\", \"_INBOX.>\"]" ;;
    *) die "no NATS permissions for $1" ;;
  esac
}

cmd_nats_conf() {
  local out=${1:?usage: region-auth.sh nats-conf FILE} id
  for id in "${NATS_IDS[@]}"; do need_secret "$(password_file nats "$id")"; done
  (
    umask 077
    {
      echo "# Written by infra/region-auth.sh: one user per service (docs/security.md)."
      echo "authorization {"
      echo "  users = ["
      for id in "${NATS_IDS[@]}"; do
        echo "    { user: \"$id\", password: \"$(<"$(password_file nats "$id")")\", permissions: { $(nats_permissions "$id") } }"
      done
      echo "  ]"
      echo "}"
    } >"$out.tmp"
  )
  mv "$out.tmp" "$out"
}

# ---- Redis -------------------------------------------------------------------------------------

cmd_redis_acl() {
  local out=${1:?usage: region-auth.sh redis-acl FILE} id hash
  for id in "${REDIS_IDS[@]}"; do need_secret "$(password_file redis "$id")"; done
  # BullMQ and ioredis need INFO and CLIENT SETNAME; nobody but tests gets admin commands,
  # KEYS, FLUSH* or Pub/Sub channels.
  local cmds='+@all -@admin -@dangerous +info +client|setname +client|getname +client|id +client|list'
  (
    umask 077
    {
      echo "user default off resetkeys resetchannels -@all"
      for id in "${REDIS_IDS[@]}"; do
        hash=$(tr -d '\n' <"$(password_file redis "$id")" | sha256sum | cut -c1-64)
        case $id in
          tests) echo "user tests on #$hash ~* &* +@all" ;;
          # Queues (BullMQ's bull:) and the login limits (berth:…).
          api) echo "user api on #$hash resetchannels ~bull:* ~berth:* $cmds" ;;
          builder-agent) echo "user builder-agent on #$hash resetchannels ~bull:* $cmds" ;;
        esac
      done
    } >"$out.tmp"
  )
  mv "$out.tmp" "$out"
}

# ---- Per-service variables ---------------------------------------------------------------------

# cmd_env IDENTITY: NAME=VALUE lines for the service (paths to password files, never a password).
cmd_env() {
  local id=${1:?usage: region-auth.sh env IDENTITY} etcd_id=$1
  [[ -s $(password_file etcd "$etcd_id") ]] && printf 'ETCD_USERNAME=%s\nETCD_PASSWORD_FILE=%s\n' "$etcd_id" "$(password_file etcd "$etcd_id")"
  [[ -s $(password_file nats "$id") ]] && printf 'NATS_USER=%s\nNATS_PASSWORD_FILE=%s\n' "$id" "$(password_file nats "$id")"
  [[ -s $(password_file redis "$id") ]] && printf 'REDIS_USERNAME=%s\nREDIS_PASSWORD_FILE=%s\n' "$id" "$(password_file redis "$id")"
  return 0
}

case ${1:-} in
  secrets) cmd_secrets ;;
  etcd) shift && cmd_etcd "$@" ;;
  nats-conf) shift && cmd_nats_conf "$@" ;;
  redis-acl) shift && cmd_redis_acl "$@" ;;
  env) shift && cmd_env "$@" ;;
  *) die "usage: infra/region-auth.sh secrets | etcd ENDPOINT | nats-conf FILE | redis-acl FILE | env IDENTITY" ;;
esac
