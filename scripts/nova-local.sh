#!/usr/bin/env bash
# A real Nova 26 API (Debian's nova-api / python3-nova) on loopback, twice, for conformance tests and the demo.
#
#   scripts/nova-local.sh install           apt-get nova-api, python3-nova, python3-openstackclient, uwsgi if missing
#   scripts/nova-local.sh start             configure, sync the databases, start both instances and wait for them
#   scripts/nova-local.sh env               print NOVA_URL, NOVA_REFERENCE_URL, NOVA_LOCAL_DIR (eval "$(… env)")
#   scripts/nova-local.sh status            exit 0 when both instances answer
#   scripts/nova-local.sh register <url>    make <url> the only `compute` endpoint (public, internal) in Keystone
#   scripts/nova-local.sh unregister        remove the `compute` service and its endpoints from Keystone
#   scripts/nova-local.sh stop              stop both instances (state is kept; `start` again reuses it)
#   scripts/nova-local.sh reset             stop and delete the state directory
#
# Two instances of the same Nova, each with its own sqlite databases, differing only in the paste pipeline:
#   :NOVA_PORT (8810)            trusted-auth: the pipeline without `authtoken`. `keystonecontext` builds the request
#                                context from the identity headers of whoever reaches it: loopback only, our proxy
#                                in front is the way in.
#   :NOVA_REFERENCE_PORT (8811)  the unmodified pipeline: keystonemiddleware in-process, [keystone_authtoken]
#                                pointing at the local Keystone (the reference to compare against).
# Both are nova-api-wsgi under uwsgi with 2 processes, the production shape. Needs the local Keystone
# (scripts/keystone-local.sh start): KEYSTONE_URL and KEYSTONE_FIXTURES as `keystone-local.sh env` prints them.
# Facts behind the settings: shared/nova-notes.md.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
dir="${NOVA_LOCAL_DIR:-$repo/.nova-local}"
port="${NOVA_PORT:-8810}"
ref_port="${NOVA_REFERENCE_PORT:-8811}"
keystone_url="${KEYSTONE_URL:-http://127.0.0.1:${KEYSTONE_PORT:-5000}}"
fixtures="${KEYSTONE_FIXTURES:-${KEYSTONE_LOCAL_DIR:-$repo/.keystone-local}/fixtures.json}"
packages=(nova-api python3-nova python3-openstackclient python3-keystonemiddleware uwsgi-core uwsgi-plugin-python3)

# Debian's services need Debian's python: the python3 on PATH may be another one (pyenv) that cannot see them,
# and a PYTHONPATH or OS_* variable inherited from the caller must not leak in.
clean_env=(env -i "PATH=/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin" "HOME=${HOME:-/root}" "LANG=C.UTF-8")

log() { printf 'nova-local: %s\n' "$*" >&2; }
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

missing_packages() {
  local p
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

install_packages() {
  local missing
  missing="$(missing_packages)"
  [ -z "$missing" ] && return 0
  command -v apt-get >/dev/null || { log "apt-get not found: install ${packages[*]} yourself"; exit 1; }
  log "installing $(echo $missing) (about a minute)"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  # nova-api only for its dependencies and /usr/bin/nova-api; no service is started (policy-rc.d, no systemd).
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
}

# Any HTTP answer counts (GET / is the version list); 000 means nothing listens yet.
answers() {
  local code
  code="$(curl -sS -m 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/" 2>/dev/null || true)"
  [ -n "$code" ] && [ "$code" != "000" ]
}

running() { [ -f "$dir/$1/uwsgi.pid" ] && kill -0 "$(cat "$dir/$1/uwsgi.pid")" 2>/dev/null; }

fixture() { # $1: python expression on the fixtures object `f`
  [ -f "$fixtures" ] || { log "no Keystone fixtures at $fixtures: run scripts/keystone-local.sh start first"; exit 1; }
  /usr/bin/python3 -c "import json,sys; f=json.load(open(sys.argv[1])); print($1)" "$fixtures"
}

write_config() { # $1: instance (trusted|reference), $2: port
  local name="$1" at="$dir/$1"
  mkdir -p "$at/etc" "$at/state" "$at/log" "$at/lock"
  cat >"$at/etc/nova.conf" <<EOF
[DEFAULT]
# No message bus: only the API-only resources (flavors, keypairs, quotas, limits, server lists, zones) work.
transport_url = fake://
enabled_apis = osapi_compute
state_path = $at/state
log_dir = $at/log
log_file = nova-api.log
use_stderr = false
[api]
auth_strategy = keystone
[wsgi]
api_paste_config = $at/etc/api-paste.ini
[api_database]
connection = sqlite:///$at/api.db
[database]
connection = sqlite:///$at/nova.db
[oslo_concurrency]
lock_path = $at/lock
[oslo_policy]
# The secure-RBAC defaults: reader may list, member manages its keypairs, only admin manages flavors.
enforce_new_defaults = true
enforce_scope = true
policy_file = $at/etc/policy.yaml
EOF
  if [ "$name" = trusted ]; then
    cat >>"$at/etc/nova.conf" <<EOF
[keystone]
# Without keystonemiddleware in the pipeline Nova has no catalog entry for identity: its own calls to Keystone
# (e.g. quota-sets checking a project id) need the endpoint. With /v3, or the lookup answers 404.
endpoint_override = $keystone_url/v3
EOF
  else
    cat >>"$at/etc/nova.conf" <<EOF
[keystone_authtoken]
# The same account and Keystone the proxy validates with, so both sides have the same rights.
www_authenticate_uri = $keystone_url
auth_url = $keystone_url
auth_type = password
username = $(fixture "f['service']['user']")
password = $(fixture "f['service']['password']")
user_domain_id = default
project_name = $(fixture "f['service']['project']")
project_domain_id = default
service_type = compute
EOF
  fi
  # Debian's api-paste.ini; for trusted-auth `authtoken` goes from both v2.1 pipelines, `keystonecontext` stays.
  if [ "$name" = trusted ]; then
    sed -e 's/ authtoken keystonecontext / keystonecontext /' /etc/nova/api-paste.ini >"$at/etc/api-paste.ini"
    if grep -q ' authtoken ' "$at/etc/api-paste.ini"; then log "could not take authtoken out of the pipeline"; exit 1; fi
  else
    cp /etc/nova/api-paste.ini "$at/etc/api-paste.ini"
  fi
  # The healthcheck's disable file and cors' config file point at /etc/nova otherwise.
  sed -i -e "s|^disable_by_file_path = .*|disable_by_file_path = $at/healthcheck_disable|" \
    -e "s|^oslo_config_project = nova$|oslo_config_project = nova\noslo_config_file = $at/etc/nova.conf|" \
    "$at/etc/api-paste.ini"
}

manage() { # $1: instance, rest: nova-manage arguments
  local at="$dir/$1"; shift
  "${clean_env[@]}" /usr/bin/nova-manage --config-file "$at/etc/nova.conf" "$@" >>"$at/manage.log" 2>&1 || {
    log "nova-manage $* failed:"; tail -n 20 "$at/manage.log" >&2; exit 1
  }
}

wal() { /usr/bin/python3 -c "import sqlite3,sys; sqlite3.connect(sys.argv[1]).execute('PRAGMA journal_mode=WAL')" "$1"; }

sync_databases() { # $1: instance
  local at="$dir/$1"
  [ -f "$at/.synced" ] && return 0
  log "$1: syncing the databases (about 12 s)"
  manage "$1" api_db sync
  manage "$1" cell_v2 map_cell0 --database_connection "sqlite:///$at/cell0.db"
  manage "$1" db sync
  manage "$1" cell_v2 create_cell --name cell1
  # WAL: two uwsgi processes write (service records at start-up, flavors, keypairs); without it sqlite locks.
  local db
  for db in api nova cell0; do wal "$at/$db.db"; done
  touch "$at/.synced"
}

start_instance() { # $1: instance, $2: port
  local at="$dir/$1"
  if running "$1" && answers "$2"; then return 0; fi
  if answers "$2"; then log "something else already answers on 127.0.0.1:$2"; exit 1; fi
  write_config "$1" "$2"
  sync_databases "$1"
  # --http + --http-keepalive: --http-socket drops kept-alive connections, --http11-socket pins a worker per
  # connection (shared/keystone-notes.md). 2 processes, lazy-apps: each worker its own database connections.
  "${clean_env[@]}" /usr/bin/uwsgi --plugins python3,http --http "127.0.0.1:$2" --http-keepalive \
    --processes 2 --lazy-apps --master --die-on-term --enable-threads --buffer-size 65535 \
    --wsgi-file /usr/bin/nova-api-wsgi --env "OS_NOVA_CONFIG_DIR=$at/etc" \
    --pidfile "$at/uwsgi.pid" --daemonize "$at/uwsgi.log"
}

wait_for() { # $1: instance, $2: port
  local at="$dir/$1"
  for _ in $(seq 1 120); do
    # GET /v2.1/flavors answers once a worker has loaded the app (GET / may come from the router alone).
    local code
    code="$(curl -sS -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$2/v2.1/flavors" 2>/dev/null || true)"
    if [ "$code" = 401 ]; then return 0; fi
    sleep 0.5
  done
  log "$1 Nova did not answer on 127.0.0.1:$2 within 60 s; last lines of its logs:"
  tail -n 30 "$at/uwsgi.log" "$at/log/nova-api.log" >&2 2>/dev/null || true
  exit 1
}

start() {
  [ -z "$(missing_packages)" ] || { log "packages missing: run '$0 install' first"; exit 1; }
  curl -fsS -m 2 -o /dev/null "$keystone_url/v3" ||
    { log "Keystone does not answer at $keystone_url: run scripts/keystone-local.sh start first"; exit 1; }
  mkdir -p "$dir"
  start_instance trusted "$port"
  start_instance reference "$ref_port"
  wait_for trusted "$port"
  wait_for reference "$ref_port"
  log "trusted-auth Nova at http://127.0.0.1:$port, keystonemiddleware Nova at http://127.0.0.1:$ref_port (state in $dir)"
}

stop_instance() { # $1: instance
  local pidfile="$dir/$1/uwsgi.pid" pid
  [ -f "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

print_env() {
  cat <<EOF
export NOVA_URL=http://127.0.0.1:$port
export NOVA_REFERENCE_URL=http://127.0.0.1:$ref_port
export NOVA_LOCAL_DIR=$dir
EOF
}

catalog() { # $@: register <url> | unregister
  local password
  password="$(fixture "f['admin']['password']")"
  node "$here/nova-catalog.mjs" "$keystone_url" "$password" "$@"
}

case "${1:-}" in
  install) install_packages ;;
  start) start ;;
  env) print_env ;;
  status) answers "$port" && answers "$ref_port" ;;
  register) [ $# -eq 2 ] || usage; catalog register "$2" ;;
  unregister) catalog unregister ;;
  stop) stop_instance trusted; stop_instance reference ;;
  reset) stop_instance trusted; stop_instance reference; rm -rf "$dir" ;;
  *) usage ;;
esac
