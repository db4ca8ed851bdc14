#!/usr/bin/env bash
# A real Prometheus (Debian's `prometheus` package) on loopback, for the monitoring tests and local work.
#
#   scripts/prometheus-local.sh install          install Debian's prometheus (promtool comes with it) when missing
#   scripts/prometheus-local.sh start <config>   start /usr/bin/prometheus with that config on 127.0.0.1:PROMETHEUS_PORT,
#                                                data in PROMETHEUS_LOCAL_DIR/data; waits until /-/ready answers
#   scripts/prometheus-local.sh url              print its base URL
#   scripts/prometheus-local.sh status           exit 0 when it answers
#   scripts/prometheus-local.sh stop             stop it (the pid it wrote at start, nothing else)
#
# PROMETHEUS_PORT (default 9390) and PROMETHEUS_LOCAL_DIR (default .prometheus-local in the checkout) let several
# instances run side by side. The TSDB is wiped at every start: each run sees only the series it scraped.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
dir="${PROMETHEUS_LOCAL_DIR:-$repo/.prometheus-local}"
port="${PROMETHEUS_PORT:-9390}"
url="http://127.0.0.1:$port"
bin="${PROMETHEUS_BIN:-/usr/bin/prometheus}"

log() { printf 'prometheus-local: %s\n' "$*" >&2; }

install_packages() {
  if [ -x "$bin" ] && command -v promtool >/dev/null; then return 0; fi
  command -v apt-get >/dev/null || { log "apt-get not found: install Prometheus (prometheus, promtool) yourself"; exit 1; }
  log "installing prometheus"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
}

answers() { curl -fsS -m 1 -o /dev/null "$url/-/ready" 2>/dev/null; }

running_pid() {
  [ -f "$dir/prometheus.pid" ] || return 1
  local pid; pid="$(cat "$dir/prometheus.pid")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

start() {
  local config="${1:-}"
  [ -n "$config" ] || { log "usage: $0 start <prometheus.yml>"; exit 2; }
  [ -f "$config" ] || { log "config not found: $config"; exit 2; }
  [ -x "$bin" ] || { log "$bin not found: run '$0 install' first"; exit 1; }
  if running_pid >/dev/null; then log "already running at $url (stop it first)"; exit 1; fi
  # A bad config must fail here with promtool's message, not as a Prometheus that never becomes ready.
  promtool check config "$config" >&2 || { log "promtool check config failed: $config"; exit 1; }
  rm -rf "$dir/data"
  mkdir -p "$dir/data"
  # --web.enable-lifecycle: tests reload the config (POST /-/reload) instead of restarting.
  setsid "$bin" --config.file="$config" --storage.tsdb.path="$dir/data" \
    --web.listen-address="127.0.0.1:$port" --web.enable-lifecycle \
    --storage.tsdb.retention.time=1d >"$dir/prometheus.log" 2>&1 </dev/null &
  echo $! >"$dir/prometheus.pid"
  for _ in $(seq 1 100); do
    if answers; then log "ready at $url (log: $dir/prometheus.log)"; return 0; fi
    running_pid >/dev/null || { log "prometheus exited; its log:"; tail -20 "$dir/prometheus.log" >&2; exit 1; }
    sleep 0.2
  done
  log "not ready after 20 s; its log:"; tail -20 "$dir/prometheus.log" >&2
  stop; exit 1
}

stop() {
  local pid
  if pid="$(running_pid)"; then
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    log "stopped ($pid)"
  fi
  rm -f "$dir/prometheus.pid"
}

case "${1:-}" in
  install) install_packages ;;
  start) shift; start "$@" ;;
  url) echo "$url" ;;
  status) answers ;;
  stop) stop ;;
  *) log "usage: $0 install | start <config> | url | status | stop"; exit 2 ;;
esac
