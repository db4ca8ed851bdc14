#!/usr/bin/env bash
# A real Keystone (Debian's python3-keystone) on loopback for conformance tests and local work.
#
#   scripts/keystone-local.sh start    install (apt, Debian/Ubuntu, as root) if needed, configure sqlite + fernet,
#                                      bootstrap, seed the fixtures, start memcached and two uwsgi instances
#   scripts/keystone-local.sh install  only install the Debian packages (Keystone, keystonemiddleware, uwsgi,
#                                      memcached, python3-memcache): `npm test` uses memcached and the Python
#                                      memcache-crypt reference too
#   scripts/keystone-local.sh env      print the environment the tests read (eval "$(scripts/keystone-local.sh env)")
#   scripts/keystone-local.sh status   exit 0 when Keystone answers
#   scripts/keystone-local.sh stop     stop the processes (state is kept; `start` again reuses it)
#   scripts/keystone-local.sh reset    stop and delete the state directory
#
# Idempotent: `start` on a running instance only prints where it is. Two instances share one database, one
# memcached and one set of fernet keys: :KEYSTONE_PORT issues 1-hour tokens, :KEYSTONE_SHORT_PORT issues tokens
# that expire after KEYSTONE_SHORT_LIFETIME seconds (for expiry tests); either validates the other's tokens.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
dir="${KEYSTONE_LOCAL_DIR:-$repo/.keystone-local}"
port="${KEYSTONE_PORT:-5000}"
short_port="${KEYSTONE_SHORT_PORT:-5001}"
short_lifetime="${KEYSTONE_SHORT_LIFETIME:-8}"
mc_port="${KEYSTONE_MEMCACHED_PORT:-11311}"
admin_password="${KEYSTONE_ADMIN_PASSWORD:-admin-secret}"
url="http://127.0.0.1:$port"
packages=(python3-keystone python3-keystonemiddleware uwsgi-core uwsgi-plugin-python3 memcached python3-memcache)

# Debian's services need Debian's python: the python3 on PATH may be another one (pyenv) that cannot see them.
clean_env=(env -i "PATH=/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin" "HOME=${HOME:-/root}" "LANG=C.UTF-8")

log() { printf 'keystone-local: %s\n' "$*" >&2; }

install_packages() {
  local missing=()
  for p in "${packages[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || { log "apt-get not found: install ${missing[*]} yourself"; exit 1; }
  log "installing ${missing[*]}"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
}

answers() { curl -fsS -m 1 -o /dev/null "$1/v3" 2>/dev/null; }

write_conf() { # $1: config dir, $2: token lifetime in seconds
  mkdir -p "$1"
  cat >"$1/keystone.conf" <<EOF
[DEFAULT]
log_file = $dir/keystone-$(basename "$1").log
[database]
connection = sqlite:///$dir/keystone.db
[token]
provider = fernet
expiration = $2
[fernet_tokens]
key_repository = $dir/fernet-keys
[fernet_receipts]
key_repository = $dir/fernet-keys
[credential]
key_repository = $dir/credential-keys
[identity]
# bcrypt's minimum: the default (12) costs about 0.25 s per password authentication.
password_hash_rounds = 4
[cache]
# Without its cache one validation costs Keystone about 430 SQL statements.
enabled = true
backend = oslo_cache.memcache_pool
memcache_servers = 127.0.0.1:$mc_port
EOF
}

manage() { "${clean_env[@]}" /usr/bin/keystone-manage --config-file "$dir/etc/keystone.conf" "$@"; }

configure() {
  [ -f "$dir/.configured" ] && return 0
  log "configuring in $dir"
  mkdir -p "$dir/fernet-keys" "$dir/credential-keys"
  write_conf "$dir/etc" 3600
  write_conf "$dir/etc-short" "$short_lifetime"
  manage db_sync
  # WAL, or concurrent writes hit "database is locked" and uwsgi answers with an empty reply.
  /usr/bin/python3 -c "import sqlite3,sys; sqlite3.connect(sys.argv[1]).execute('PRAGMA journal_mode=WAL')" "$dir/keystone.db"
  manage fernet_setup --keystone-user root --keystone-group root
  manage credential_setup --keystone-user root --keystone-group root
  manage bootstrap --bootstrap-password "$admin_password" --bootstrap-region-id RegionOne \
    --bootstrap-admin-url "$url/v3" --bootstrap-internal-url "$url/v3" --bootstrap-public-url "$url/v3"
  touch "$dir/.configured"
}

start_uwsgi() { # $1: name, $2: port, $3: config dir
  if [ -f "$dir/$1.pid" ] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; then return 0; fi
  # --http + --http-keepalive: --http-socket silently drops kept-alive connections, --http11-socket pins workers.
  "${clean_env[@]}" /usr/bin/uwsgi --plugins python3,http --http "127.0.0.1:$2" --http-keepalive \
    --processes 2 --lazy-apps --master --die-on-term --wsgi-file /usr/bin/keystone-wsgi-public \
    --env "OS_KEYSTONE_CONFIG_DIR=$3" --pidfile "$dir/$1.pid" --daemonize "$dir/$1.log"
}

start_processes() {
  if ! { [ -f "$dir/memcached.pid" ] && kill -0 "$(cat "$dir/memcached.pid")" 2>/dev/null; }; then
    /usr/bin/memcached -d -l 127.0.0.1 -p "$mc_port" -U 0 -m 64 -u "$(id -un)" -P "$dir/memcached.pid"
  fi
  start_uwsgi keystone "$port" "$dir/etc"
  start_uwsgi keystone-short "$short_port" "$dir/etc-short"
  for _ in $(seq 1 60); do
    answers "$url" && answers "http://127.0.0.1:$short_port" && return 0
    sleep 0.5
  done
  log "Keystone did not answer on $url within 60 s; see $dir/keystone.log"
  tail -n 30 "$dir/keystone.log" >&2 || true
  exit 1
}

seed() {
  [ -f "$dir/fixtures.json" ] && return 0
  log "seeding fixtures"
  node "$here/keystone-seed.mjs" "$url" "$admin_password" "$dir/fixtures.json"
}

print_env() {
  cat <<EOF
export KEYSTONE_URL=$url
export KEYSTONE_SHORT_URL=http://127.0.0.1:$short_port
export KEYSTONE_SHORT_LIFETIME=$short_lifetime
export KEYSTONE_ADMIN_PASSWORD=$admin_password
export KEYSTONE_FIXTURES=$dir/fixtures.json
export KEYSTONE_LOCAL_DIR=$dir
EOF
}

stop() {
  for name in keystone-short keystone memcached; do
    if [ -f "$dir/$name.pid" ]; then
      kill "$(cat "$dir/$name.pid")" 2>/dev/null || true
      rm -f "$dir/$name.pid"
    fi
  done
}

case "${1:-}" in
  start)
    mkdir -p "$dir"
    if answers "$url" && [ -f "$dir/fixtures.json" ] && answers "http://127.0.0.1:$short_port"; then
      log "already running at $url"
    else
      install_packages
      configure
      start_processes
      seed
      log "running at $url (short-lived tokens at :$short_port)"
    fi
    ;;
  install) install_packages ;;
  env) print_env ;;
  status) answers "$url" ;;
  stop) stop ;;
  reset) stop; rm -rf "$dir" ;;
  *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
