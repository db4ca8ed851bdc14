#!/usr/bin/env bash
# A real Glance 25 (Debian's python3-glance) on loopback, to sit behind our proxy in conformance tests.
#
#   scripts/glance-local.sh install                  apt-get python3-glance if missing (Debian/Ubuntu)
#   scripts/glance-local.sh start <port> <statedir>  configure, db_sync, start glance-api on 127.0.0.1:<port>
#                                                    and wait until it answers; prints its URL on stdout
#   scripts/glance-local.sh status <port>            exit 0 when something answers on 127.0.0.1:<port>
#   scripts/glance-local.sh stop <statedir>          stop the glance-api started there (state is kept)
#
# Glance runs the trusted-auth paste pipeline: it believes the identity headers (X-Identity-Status: Confirmed,
# X-Roles, X-Project-Id, …) of whoever reaches it. So it binds 127.0.0.1 only and our proxy is the way in.
# Facts and gotchas behind every setting: shared/glance-notes.md. `start` on a running instance only prints
# its URL.
set -euo pipefail

packages=(python3-glance)
# Debian's services need Debian's python: the python3 on PATH may be another one (pyenv) that cannot see them,
# and a PYTHONPATH or OS_* variable inherited from the caller must not leak in.
# `exec`: a backgrounded call then keeps its pid all the way to python, so $! names the server itself.
clean_env() { exec env -i "PATH=/usr/sbin:/usr/bin:/sbin:/bin" "HOME=$1" "LANG=C.UTF-8" "${@:2}"; }

log() { printf 'glance-local: %s\n' "$*" >&2; }
usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

installed() {
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
  done
}

install_packages() {
  installed && return 0
  command -v apt-get >/dev/null || { log "apt-get not found: install ${packages[*]} yourself"; exit 1; }
  log "installing ${packages[*]} (about 64 packages, 20 s)"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  # Not glance-api/glance-common: they bring dbconfig-common and system services, none of which is needed.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" \
    >/dev/null
}

# Any HTTP answer counts (GET / is a 300 with the version list); 000 means nothing listens yet.
answers() {
  local code
  code="$(curl -sS -m 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/" 2>/dev/null || true)"
  [ -n "$code" ] && [ "$code" != "000" ]
}

running() { [ -f "$1/glance-api.pid" ] && kill -0 "$(cat "$1/glance-api.pid")" 2>/dev/null; }

write_config() { # $1: port, $2: state dir (absolute)
  local port="$1" dir="$2"
  mkdir -p "$dir/etc" "$dir/images" "$dir/staging" "$dir/locks" "$dir/policy.d"
  cat >"$dir/etc/glance-api.conf" <<EOF
[DEFAULT]
# Loopback only: anyone reaching Glance directly could claim X-Identity-Status: Confirmed and X-Roles: admin.
bind_host = 127.0.0.1
bind_port = $port
# 0: serve in this one process (no fork), so the pid file names the server and ~150 MB RSS is all it costs.
workers = 0
log_file = $dir/glance-api.log
use_stderr = false
node_staging_uri = file://$dir/staging
# Policy: the secure-RBAC defaults. Glance's legacy defaults let any Confirmed user of a project do almost
# anything, even one with only reader (it creates images: 201). With this and [oslo_policy]
# enforce_new_defaults (Glance refuses to start unless both are equal): reader may list and show; member may
# also create, upload, download and delete; only admin may publish (visibility=public). No policy file is
# needed for that, so none is written.
enforce_secure_rbac = true

[database]
connection = sqlite:///$dir/glance.sqlite

[glance_store]
stores = file
default_store = file
filesystem_store_datadir = $dir/images

[paste_deploy]
# Glance 25 ships no trusted-auth pipeline: it is written below into our own paste ini.
flavor = trusted-auth
config_file = $dir/etc/glance-api-paste.ini

[oslo_concurrency]
lock_path = $dir/locks

[oslo_policy]
enforce_new_defaults = true
# Our own path, never written: the defaults apply, and no policy.yaml under /etc/glance or ~ is read.
policy_file = $dir/etc/policy.yaml
# An empty directory: an empty value makes oslo.policy parse the paste ini as a policy file (500s).
policy_dirs = $dir/policy.d
EOF
  # Debian's glance-api-paste.ini, trimmed to what this pipeline uses, plus the trusted-auth pipeline:
  # `context` (ContextMiddleware) builds the request context from the identity headers the proxy sets.
  cat >"$dir/etc/glance-api-paste.ini" <<EOF
[pipeline:glance-api-trusted-auth]
pipeline = cors healthcheck http_proxy_to_wsgi versionnegotiation osprofiler context rootapp

[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[filter:healthcheck]
paste.filter_factory = oslo_middleware:Healthcheck.factory
backends = disable_by_file
disable_by_file_path = $dir/healthcheck_disable

[filter:versionnegotiation]
paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:context]
paste.filter_factory = glance.api.middleware.context:ContextMiddleware.factory

[filter:osprofiler]
paste.filter_factory = osprofiler.web:WsgiMiddleware.factory

# oslo_config_file: without it, cors would look for its [cors] options in /etc/glance, not in this state dir.
[filter:cors]
paste.filter_factory = oslo_middleware.cors:filter_factory
oslo_config_project = glance
oslo_config_program = glance-api
oslo_config_file = $dir/etc/glance-api.conf

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware:HTTPProxyToWSGI.factory
EOF
}

start() { # $1: port, $2: state dir
  local port="$1" dir
  [[ "$port" =~ ^[0-9]+$ ]] || { log "port must be a number, got '$port'"; exit 2; }
  mkdir -p "$2"
  dir="$(cd "$2" && pwd)"
  if running "$dir" && answers "$port"; then
    log "already running (pid $(cat "$dir/glance-api.pid"))"
    echo "http://127.0.0.1:$port"
    return 0
  fi
  installed || { log "python3-glance is not installed: run '$0 install' first"; exit 1; }
  if answers "$port"; then log "something else already answers on 127.0.0.1:$port"; exit 1; fi
  write_config "$port" "$dir"
  if [ ! -f "$dir/.db_synced" ]; then
    (clean_env "$dir" /usr/bin/python3 -m glance.cmd.manage --config-file "$dir/etc/glance-api.conf" \
      db_sync) >>"$dir/db_sync.log" 2>&1 || {
      log "db_sync failed:"; tail -n 20 "$dir/db_sync.log" >&2; exit 1
    }
    touch "$dir/.db_synced"
  fi
  # setsid: Glance must not get the caller's terminal signals; `stop` ends it by its pid file.
  clean_env "$dir" setsid /usr/bin/python3 -m glance.cmd.api --config-file "$dir/etc/glance-api.conf" \
    </dev/null >>"$dir/glance-api.stdout" 2>&1 &
  echo $! >"$dir/glance-api.pid"
  for _ in $(seq 1 120); do
    if answers "$port"; then
      log "running at http://127.0.0.1:$port (pid $(cat "$dir/glance-api.pid"), state in $dir)"
      echo "http://127.0.0.1:$port"
      return 0
    fi
    running "$dir" || break
    sleep 0.25
  done
  log "glance-api did not answer on 127.0.0.1:$port within 30 s; last lines of its logs:"
  tail -n 20 "$dir/glance-api.stdout" "$dir/glance-api.log" >&2 2>/dev/null || true
  stop "$dir"
  exit 1
}

stop() { # $1: state dir
  local dir="$1" pid
  [ -f "$dir/glance-api.pid" ] || return 0
  pid="$(cat "$dir/glance-api.pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    # eventlet's server usually exits at once on SIGTERM; one that does not within 10 s is killed.
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/glance-api.pid"
}

case "${1:-}" in
  install) install_packages ;;
  start) [ $# -eq 3 ] || usage; start "$2" "$3" ;;
  status) [ $# -eq 2 ] || usage; answers "$2" ;;
  stop) [ $# -eq 2 ] || usage; stop "$2" ;;
  *) usage ;;
esac
